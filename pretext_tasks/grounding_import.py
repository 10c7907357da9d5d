"""Importers of a user's own annotated images for the grounding tasks (docs/grounding.md#your-own-images).

- `load_coco`: a COCO detection JSON (`images`, `annotations` with `bbox` = [x, y, w, h], `categories`) ->
  one `ImportedImage` per image, every non-crowd box with its category name (object_detection).
- `load_referring`: RefCOCO-style records, a JSON list or JSONL, each `{"image": path, "expression": text,
  "bbox": [x, y, w, h]}` or `"box": [x1, y1, x2, y2]` (`"sentence"`, `"sent"`, `"caption"` alias
  `"expression"`; an optional `"category"` or `"label"` names the object) -> one item per record
  (referring_grounding). RefCOCO's own `refs(*).p` files are pickles and are not read: nothing here ever
  unpickles anything; convert them to JSON first.

Image paths are relative to the annotation file's folder and may never leave it: an absolute path or one
that resolves outside the folder refuses the whole file, naming the record. Bad records (missing or
unreadable image, a box that is not 4 finite numbers, zero area, a box more than `BOX_TOLERANCE` px outside
the image, an unknown image or category id, crowd boxes) are skipped and counted by reason
(`ImportResult.skipped`); a file that is not JSON, has the wrong layout or yields no usable item raises
`MMRLError` naming the file (and the line, for JSONL).
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from mmrl.errors import MMRLError

BOX_TOLERANCE = 1.0
"""Pixels a box may reach outside its image (annotation tools round); within it the box is clipped."""
EXPRESSION_KEYS = ("expression", "sentence", "sent", "caption")
ANNOTATION_SUFFIXES = (".json", ".jsonl")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImportedImage:
    """One source item of an imported annotation file."""

    path: Path
    """The image file."""
    source_id: str
    """`<annotation file name>#<record index>` (REC) or `#image<id>` (COCO): where the item came from."""
    size: tuple[int, int]
    """(W, H) of the image file as stored."""
    boxes: tuple[tuple[str, tuple[float, float, float, float]], ...]
    """(label, canonical box [x1, y1, x2, y2]) of each annotated object."""
    expression: str | None = None
    """The referring expression (REC records); None for detection."""
    categories: tuple[str, ...] = ()
    """Every category name of the file (detection: what may be asked besides the present ones)."""


@dataclass
class ImportResult:
    """The usable items of an annotation file and the count of each reason a record was skipped."""

    items: list[ImportedImage]
    skipped: Counter = field(default_factory=Counter)
    file: Path | None = None


def annotation_file(source: str | Path) -> Path:
    """The annotation file of a source: the path itself, or the one `.json` / `.jsonl` file in a folder."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise MMRLError(f"annotation source {path} does not exist")
    found = sorted(p for p in path.iterdir() if p.suffix.lower() in ANNOTATION_SUFFIXES and p.is_file())
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise MMRLError(f"{path} must hold exactly one .json or .jsonl annotation file (found: {names}); pass the file")
    return found[0]


def _records(path: Path) -> tuple[Any, Counter]:
    """The parsed JSON of `path`; for .jsonl the list of records (unparseable lines skipped and counted)."""
    skipped: Counter = Counter()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise MMRLError(f"cannot read annotation file {path}: {e}") from None
    if path.suffix.lower() == ".jsonl":
        out = []
        for line in text.splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except (ValueError, RecursionError):
                    out.append(None)  # keeps record indices equal to line numbers of non-blank lines
        return out, skipped
    try:
        return json.loads(text), skipped
    except (ValueError, RecursionError) as e:
        raise MMRLError(f"annotation file {path} is not valid JSON: {e}") from None


def image_path(root: Path, value: Any, file: Path, where: str) -> Path:
    """`root / value`, refused (MMRLError naming the record) when absolute or resolving outside `root`."""
    if not isinstance(value, str) or not value:
        raise ValueError("bad_image_path")
    rel = Path(value)
    target = (root / rel).resolve()
    if rel.is_absolute() or not target.is_relative_to(root.resolve()):
        raise MMRLError(
            f"{file} {where}: image path {value!r} points outside the annotation file's folder {root}; "
            "image paths must be relative to it and stay inside it"
        )
    return target


def image_size(path: Path) -> tuple[int, int] | None:
    """(W, H) from the file's header, None when it is missing or not an image."""
    if not path.is_file():
        return None
    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except Exception:  # PIL raises OSError, SyntaxError, ValueError...
        return None


def _finite4(value: Any) -> list[float] | None:
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
        return None
    nums = [float(v) for v in value]
    return nums if all(math.isfinite(v) for v in nums) else None


def check_box(box: Sequence[float], size: tuple[int, int]) -> tuple[float, float, float, float] | str:
    """The box clipped to the image, or the reason it is unusable (`zero_area`, `box_outside_image`)."""
    x1, y1, x2, y2 = box
    w, h = size
    if x2 <= x1 or y2 <= y1:
        return "zero_area"
    t = BOX_TOLERANCE
    if x1 < -t or y1 < -t or x2 > w + t or y2 > h + t:
        return "box_outside_image"
    clipped = (max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2))
    return clipped if clipped[2] > clipped[0] and clipped[3] > clipped[1] else "zero_area"


def xywh_to_xyxy(b: Sequence[float]) -> list[float]:
    """COCO's [x, y, w, h] as [x1, y1, x2, y2]."""
    return [b[0], b[1], b[0] + b[2], b[1] + b[3]]


def load_coco(source: str | Path) -> ImportResult:
    """The images of a COCO detection file with their non-crowd boxes (see the module docstring)."""
    file = annotation_file(source)
    data, skipped = _records(file)
    if not isinstance(data, Mapping) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        raise MMRLError(f"{file} is not a COCO detection file: it needs 'images' and 'annotations' lists")
    categories = data.get("categories") or []
    names = {c.get("id"): str(c.get("name")) for c in categories if isinstance(c, Mapping) and "name" in c}
    root = file.parent
    images: dict[Any, tuple[Path, tuple[int, int]]] = {}
    for k, im in enumerate(data["images"]):
        if not isinstance(im, Mapping) or "id" not in im:
            skipped["bad_image_record"] += 1
            continue
        try:
            path = image_path(root, im.get("file_name"), file, f"images[{k}]")
        except ValueError:
            skipped["bad_image_record"] += 1
            continue
        size = image_size(path)
        if size is None:
            skipped["missing_image"] += 1
            continue
        if (im.get("width"), im.get("height")) not in ((None, None), size):
            skipped["size_mismatch"] += 1
            continue
        images[im["id"]] = (path, size)
    boxes: dict[Any, list[tuple[str, tuple[float, float, float, float]]]] = {i: [] for i in images}
    for a in data["annotations"]:
        reason = _coco_annotation(a, images, names, boxes)
        if reason:
            skipped[reason] += 1
    vocab = tuple(sorted(set(names.values())))
    items = [
        ImportedImage(path, f"{file.name}#image{i}", size, tuple(boxes[i]), None, vocab)
        for i, (path, size) in images.items()
    ]
    if not items:
        raise MMRLError(f"{file}: no usable image ({_reasons(skipped)})")
    return _report(ImportResult(items, skipped, file))


def _coco_annotation(a: Any, images: Mapping, names: Mapping, boxes: dict) -> str | None:
    """Add one annotation to `boxes`; the reason it is skipped, or None."""
    if not isinstance(a, Mapping):
        return "bad_record"
    if a.get("iscrowd"):
        return "crowd"
    if a.get("image_id") not in images:
        return "unknown_image"
    if a.get("category_id") not in names:
        return "unknown_category"
    raw = _finite4(a.get("bbox"))
    if raw is None:
        return "bad_box"
    box = check_box(xywh_to_xyxy(raw), images[a["image_id"]][1])
    if isinstance(box, str):
        return box
    boxes[a["image_id"]].append((names[a["category_id"]], box))
    return None


def load_referring(source: str | Path) -> ImportResult:
    """The records of a RefCOCO-style file, one item each (see the module docstring)."""
    file = annotation_file(source)
    data, skipped = _records(file)
    if isinstance(data, Mapping) and isinstance(data.get("annotations"), list):
        data = data["annotations"]
    if not isinstance(data, list):
        raise MMRLError(f"{file} must be a JSON list (or JSONL) of referring records {{image, expression, bbox}}")
    items = []
    for k, record in enumerate(data):
        item = _referring_record(record, k, file)
        if isinstance(item, str):
            skipped[item] += 1
        else:
            items.append(item)
    if not items:
        raise MMRLError(f"{file}: no usable record ({_reasons(skipped) or 'the file is empty'})")
    return _report(ImportResult(items, skipped, file))


def _referring_record(record: Any, k: int, file: Path) -> ImportedImage | str:
    """One REC item, or the reason the record is skipped."""
    if not isinstance(record, Mapping):
        return "bad_record"
    expression = next((record[key] for key in EXPRESSION_KEYS if isinstance(record.get(key), str)), "")
    if not expression.strip():
        return "missing_expression"
    try:
        path = image_path(file.parent, record.get("image", record.get("file_name")), file, f"record {k}")
    except ValueError:
        return "bad_image_path"
    if "box" in record:
        raw = _finite4(record["box"])
    else:
        raw = _finite4(record.get("bbox"))
        raw = None if raw is None else xywh_to_xyxy(raw)
    if raw is None:
        return "bad_box"
    size = image_size(path)
    if size is None:
        return "missing_image"
    box = check_box(raw, size)
    if isinstance(box, str):
        return box
    label = record.get("category", record.get("label", "object"))
    return ImportedImage(path, f"{file.name}#{k}", size, ((str(label), box),), " ".join(expression.split()))


def _report(result: ImportResult) -> ImportResult:
    if result.skipped:
        log.warning("%s: %d usable items; skipped %s", result.file, len(result.items), _reasons(result.skipped))
    return result


def _reasons(skipped: Counter) -> str:
    return ", ".join(f"{reason} {count}" for reason, count in sorted(skipped.items()))


__all__ = [
    "ImportResult",
    "ImportedImage",
    "annotation_file",
    "check_box",
    "image_path",
    "load_coco",
    "load_referring",
    "xywh_to_xyxy",
]
