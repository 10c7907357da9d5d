"""The pair folder: GUI transitions (screenshot before, screenshot after, first action) on disk.

    <folder>/pairs.jsonl     one JSON object per line (UIShift sheet §10), e.g.
        {"id": "...", "source": "web-playwright", "traj_id": "...", "step": 3, "k": 1,
         "url_before": "...", "url_after": "...", "viewport": [640, 400], "dpr": 1,
         "image_before": "media/.../t3.png", "image_after": "media/.../t4.png",
         "action": {"action_type": "click", "x": 412, "y": 233, "bbox": [380, 220, 470, 246]},
         "scroll_convention": "content", "diff_ratio": 0.087, "phash_before": "...", "phash_after": "..."}
    <folder>/media/          the PNG screenshots, paths in records relative to <folder>

`action` is the FIRST action of the k that lead from the before to the after screenshot, in canonical
coordinates (`rewards.gui`): absolute pixels of the screenshot, x first, `bbox` [x1, y1, x2, y2]. `viewport`
is the screenshot's pixel size [W, H]. `scroll_convention` says what a scroll's `direction` means: `content`
(the canonical one) or the source's own tag when it is unverified.

Importers (`pretext_tasks.gui_import`) and the web explorer write this format with `PairWriter`; the task
`gui_inverse_dynamics` reads it with `read_pairs`. Paths in a record may never leave the folder (refused with
`MMRLError` naming the line); JSON is only ever parsed with `json.loads`. Records that do not validate are
skipped and counted by reason.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from mmrl.errors import MMRLError
from mmrl.image_hash import diff_ratio, phash
from rewards.gui import ACTION_TYPES, POINT_ACTIONS, SCROLL_DIRECTIONS, TEXT_FIELDS, point_in_box

PAIRS_FILE = "pairs.jsonl"
MEDIA_DIR = "media"
CONTENT = "content"
"""The canonical scroll convention: `down` reveals content further down."""
REQUIRED_KEYS = ("id", "source", "traj_id", "step", "k", "viewport", "image_before", "image_after", "action")


@dataclass(frozen=True)
class PairItem:
    """One record of a pair folder, a source item of `gui_inverse_dynamics`."""

    folder: Path
    """The pair folder the record's paths are relative to."""
    record: dict
    """The validated JSON record."""

    @property
    def before(self) -> Path:
        return self.folder / self.record["image_before"]

    @property
    def after(self) -> Path:
        return self.folder / self.record["image_after"]


@dataclass
class PairFolder:
    """The usable records of a pair folder and the count of each reason a line was skipped."""

    items: list[PairItem]
    skipped: Counter = field(default_factory=Counter)


# --------------------------------------------------------------------------------------------------
# Validation


def _finite(values: Any, n: int) -> list[float] | None:
    if not isinstance(values, (list, tuple)) or len(values) != n:
        return None
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        return None
    nums = [float(v) for v in values]
    return nums if all(math.isfinite(v) for v in nums) else None


def action_problem(action: Any, size: Sequence[int]) -> str | None:
    """Why `action` is not a valid canonical action on a W x H screenshot (a reason tag), or None."""
    if not isinstance(action, Mapping) or action.get("action_type") not in ACTION_TYPES:
        return "bad_action_type"
    kind = action["action_type"]
    if kind in POINT_ACTIONS:
        point = _finite([action.get("x"), action.get("y")], 2)
        if point is None or not (0 <= point[0] <= size[0] and 0 <= point[1] <= size[1]):
            return "bad_point"
        if "bbox" in action:
            box = _finite(action["bbox"], 4)
            if box is None or box[0] > box[2] or box[1] > box[3]:
                return "bad_bbox"
    elif kind == "scroll" and action.get("direction") not in SCROLL_DIRECTIONS:
        return "bad_direction"
    elif kind in TEXT_FIELDS and not isinstance(action.get(TEXT_FIELDS[kind]), str):
        return "bad_text"
    return None


def filter_problem(
    action: Mapping[str, Any],
    size: Sequence[int],
    *,
    max_box_coverage: float = 0.5,
    min_box_area: float = 1.0,
    point_in_bbox: bool = True,
) -> str | None:
    """The sheet's filters (§4) on a valid click / long_press: `no_bbox`, `box_area_below_min` (area <
    `min_box_area` px²), `box_covers_too_much` (area > `max_box_coverage` · W·H), `point_outside_box`; None
    when the action passes (other action types always pass)."""
    if action.get("action_type") not in POINT_ACTIONS:
        return None
    box = action.get("bbox")
    if box is None:
        return "no_bbox"
    area = (box[2] - box[0]) * (box[3] - box[1])
    if area < min_box_area or area <= 0:
        return "box_area_below_min"
    if area > max_box_coverage * size[0] * size[1]:
        return "box_covers_too_much"
    if point_in_bbox and not point_in_box((action["x"], action["y"]), box):
        return "point_outside_box"
    return None


def inside(folder: Path, value: Any, where: str) -> str:
    """A record's relative media path, refused (MMRLError naming `where`) when absolute or leaving `folder`."""
    if not isinstance(value, str) or not value:
        raise ValueError("bad_image_path")
    rel = Path(value)
    if rel.is_absolute() or not (folder / rel).resolve().is_relative_to(folder.resolve()):
        raise MMRLError(
            f"{where}: image path {value!r} leaves the folder {folder}; paths must be relative and stay inside it"
        )
    return value


def record_problem(record: Any, folder: Path, where: str) -> str | None:
    """Why a parsed line is not a usable record (a reason tag), or None; a path leaving the folder raises."""
    if not isinstance(record, dict):
        return "not_an_object"
    missing = [k for k in REQUIRED_KEYS if k not in record]
    if missing:
        return "missing_" + missing[0]
    size = _finite(record["viewport"], 2)
    if size is None or min(size) < 1:
        return "bad_viewport"
    if isinstance(record["k"], bool) or not isinstance(record["k"], int) or record["k"] < 1:
        return "bad_k"
    try:
        for key in ("image_before", "image_after"):
            inside(folder, record[key], where)
    except ValueError:
        return "bad_image_path"
    if not ((folder / record["image_before"]).is_file() and (folder / record["image_after"]).is_file()):
        return "missing_image"
    return action_problem(record["action"], size)


def read_pairs(folder: str | Path) -> PairFolder:
    """The records of `<folder>/pairs.jsonl` that validate, in file order; others skipped and counted by reason.

    Raises MMRLError when the file is missing or unreadable, or a record's path leaves the folder.
    """
    folder = Path(folder).expanduser()
    path = folder / PAIRS_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise MMRLError(f"cannot read the pair file {path}: {e}") from None
    out = PairFolder([])
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            out.skipped["bad_json"] += 1
            continue
        problem = record_problem(record, folder, f"{path} line {number}")
        if problem:
            out.skipped[problem] += 1
        else:
            out.items.append(PairItem(folder, record))
    return out


def pair_folders(root: str | Path) -> list[Path]:
    """`root` when it holds `pairs.jsonl`, else its sub-folders (sorted, any depth) that do; MMRLError if none."""
    root = Path(root).expanduser()
    if (root / PAIRS_FILE).is_file():
        return [root]
    found = sorted(p.parent for p in root.rglob(PAIRS_FILE)) if root.is_dir() else []
    if not found:
        raise MMRLError(f"{root} holds no {PAIRS_FILE}: pass a pair folder or a folder of pair folders")
    return found


# --------------------------------------------------------------------------------------------------
# Writing


class PairWriter:
    """Writes a pair folder: PNG screenshots under `media/` (each written once) and one record per pair.

    Use as a context manager; `add` computes `viewport`, `dpr` (1 unless given), `diff_ratio` and the hashes.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).expanduser()
        (self.folder / MEDIA_DIR).mkdir(parents=True, exist_ok=True)
        self._file = (self.folder / PAIRS_FILE).open("w", encoding="utf-8")
        self._hashes: dict[str, str] = {}
        self.count = 0

    def image(self, name: str, image: Image.Image) -> str:
        """Save `image` as `media/<name>.png` once; returns the relative path (later calls reuse it)."""
        rel = f"{MEDIA_DIR}/{name}.png"
        if rel not in self._hashes:
            path = self.folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            image.convert("RGB").save(path, format="PNG")
            self._hashes[rel] = phash(image)
        return rel

    def add(
        self,
        record: Mapping[str, Any],
        before: tuple[str, Image.Image],
        after: tuple[str, Image.Image],
    ) -> dict:
        """Write one pair: `record` holds id, source, traj_id, step, k, action (and optional keys such as
        url_before, element, scroll_convention); `before` / `after` are (media name, screenshot)."""
        if before[1].size != after[1].size:
            raise ValueError(f"pair {record.get('id')}: before {before[1].size} and after {after[1].size} differ")
        rel_before, rel_after = self.image(*before), self.image(*after)
        out = {"dpr": 1, "scroll_convention": CONTENT, **record}
        out |= {
            "viewport": list(before[1].size),
            "image_before": rel_before,
            "image_after": rel_after,
            "diff_ratio": round(diff_ratio(before[1], after[1]), 6),
            "phash_before": self._hashes[rel_before],
            "phash_after": self._hashes[rel_after],
        }
        self._file.write(json.dumps(out, ensure_ascii=False, sort_keys=True) + "\n")
        self.count += 1
        return out

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> PairWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def k_windows(length: int, k_values: Sequence[int]) -> Iterator[tuple[int, int]]:
    """(t, k) of every pair a trajectory of `length` screenshots yields: t + k < length, for each k in order."""
    for k in k_values:
        for t in range(length - k):
            yield t, k


__all__ = [
    "CONTENT",
    "MEDIA_DIR",
    "PAIRS_FILE",
    "PairFolder",
    "PairItem",
    "PairWriter",
    "action_problem",
    "filter_problem",
    "inside",
    "k_windows",
    "pair_folders",
    "read_pairs",
    "record_problem",
]
