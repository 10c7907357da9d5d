"""Sample: one verifiable prompt; datasets of Samples on disk as `samples.jsonl` + `media/`.

A Sample's `messages` are chat messages in the processor's own format: each content item is
`{"type": "text", "text": str}`, `{"type": "image", "image": PIL.Image | path}` or
`{"type": "video", "video": path | list of frames}` (frames are PIL images or HxWx3 uint8 arrays;
an optional `"fps"` and `"timestamps"` travel with them).

On disk, media live in `media/` and are referenced by paths relative to the dataset folder:
images as PNG (lossless), frame lists as a folder of PNG frames (lossless, so a perturbed frame
stays exactly as generated), video files copied in as they are. Reading resolves the paths back
to absolute ones, so a loaded Sample feeds the processor directly.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmrl.errors import DatasetError

SAMPLES_FILE = "samples.jsonl"
MEDIA_DIR = "media"
ROLES = ("system", "user", "assistant")
CONTENT_TYPES = ("text", "image", "video")


@dataclass
class Sample:
    id: str
    """Unique within a dataset; also names the sample's media files."""
    task: str
    """Registry name of the task that made it (e.g. `image_jigsaw`); selects the reward."""
    messages: list[dict[str, Any]]
    """Chat messages, `{"role": ..., "content": str | list of content items}`."""
    answer: Any
    """JSON-serialisable ground truth the reward compares against."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Generator parameters, source, difficulty, seed: anything needed to explain or redo the sample."""

    def media(self) -> list[dict[str, Any]]:
        """The image and video content items, in prompt order."""
        return [item for _, item in _media_items(self.messages)]


# --------------------------------------------------------------------------------------------------
# Writing


def write_dataset(samples: Iterable[Sample], out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write `samples` as `out_dir/samples.jsonl` + `out_dir/media/`; returns `out_dir`.

    Rewriting the same Samples gives byte-identical files. The JSONL is written to a temporary
    name and renamed, so a reader never sees half a dataset.
    """
    out = Path(out_dir)
    if (out / SAMPLES_FILE).exists() and not overwrite:
        raise DatasetError(f"{out / SAMPLES_FILE} already exists (pass overwrite=True to replace it)")
    (out / MEDIA_DIR).mkdir(parents=True, exist_ok=True)
    tmp = out / (SAMPLES_FILE + ".tmp")
    seen: set[str] = set()
    with tmp.open("w", encoding="utf-8") as f:
        for sample in samples:
            if sample.id in seen:
                raise DatasetError(f"duplicate sample id '{sample.id}' while writing {out}")
            seen.add(sample.id)
            f.write(json.dumps(sample_to_record(sample, out), ensure_ascii=False) + "\n")
    tmp.replace(out / SAMPLES_FILE)
    return out


def sample_to_record(sample: Sample, root: Path) -> dict[str, Any]:
    """The JSON record of `sample`, saving its in-memory media under `root/media/`."""
    messages = []
    counter = 0
    for message in sample.messages:
        content = message["content"]
        if isinstance(content, list):
            items = []
            for item in content:
                if item.get("type") in ("image", "video"):
                    item = _save_media_item(item, root, f"{_safe(sample.id)}_{counter}")
                    counter += 1
                items.append(item)
            content = items
        messages.append({**message, "content": content})
    return {"id": sample.id, "task": sample.task, "messages": messages, "answer": sample.answer, "meta": sample.meta}


def _save_media_item(item: dict[str, Any], root: Path, stem: str) -> dict[str, Any]:
    kind = item["type"]
    value = item.get(kind)
    media = root / MEDIA_DIR
    if isinstance(value, Image.Image):
        rel = f"{MEDIA_DIR}/{stem}.png"
        _save_png(value, root / rel)
        return {**item, kind: rel}
    if kind == "video" and isinstance(value, (list, tuple, np.ndarray)):
        (media / stem).mkdir(parents=True, exist_ok=True)
        frames = []
        for i, frame in enumerate(value):
            if isinstance(frame, (str, Path)):  # frames already on disk (a loaded dataset)
                frames.append(_copy_in(Path(frame), root, f"{MEDIA_DIR}/{stem}/{i:05d}", stem))
                continue
            rel = f"{MEDIA_DIR}/{stem}/{i:05d}.png"
            _save_png(frame if isinstance(frame, Image.Image) else Image.fromarray(np.asarray(frame)), root / rel)
            frames.append(rel)
        return {**item, kind: frames}
    if isinstance(value, (str, Path)):
        return {**item, kind: _copy_in(Path(value), root, f"{MEDIA_DIR}/{stem}", stem)}
    raise DatasetError(f"cannot save {kind} item of type {type(value).__name__} (sample media '{stem}')")


def _copy_in(src: Path, root: Path, rel_stem: str, sample: str) -> str:
    """Copy an absolute media path into the dataset; a relative one already belongs to it."""
    if not src.is_absolute():
        return src.as_posix()
    if not src.is_file():
        raise DatasetError(f"media file {src} referenced by sample media '{sample}' does not exist")
    rel = rel_stem + src.suffix.lower()
    shutil.copyfile(src, root / rel)
    return rel


def _save_png(image: Image.Image, path: Path) -> None:
    # zlib level 1: 3-4x faster than the default 6 for a few % more bytes (PNG encoding dominates
    # dataset writing); no metadata and a fixed level: the same pixels give the same bytes.
    image.save(path, format="PNG", compress_level=1)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# --------------------------------------------------------------------------------------------------
# Reading and validation


def read_dataset(path: str | Path) -> list[Sample]:
    """Read and validate a dataset folder (or a `samples.jsonl` file). Errors name file and line."""
    return list(iter_dataset(path))


def iter_dataset(path: str | Path) -> Iterator[Sample]:
    """Stream a dataset's Samples, validating each record; media paths come back absolute."""
    file = Path(path)
    if file.is_dir():
        file = file / SAMPLES_FILE
    if not file.is_file():
        raise DatasetError(f"no dataset at {path}: {file} does not exist")
    root = file.parent
    seen: dict[str, int] = {}
    with file.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{file}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            sample = record_to_sample(record, root, where)
            if sample.id in seen:
                raise DatasetError(f"{where}: duplicate sample id '{sample.id}' (first on line {seen[sample.id]})")
            seen[sample.id] = lineno
            yield sample


def record_to_sample(record: Any, root: Path, where: str) -> Sample:
    """Validate one JSON record and turn it into a Sample with absolute media paths."""
    problem = validate_record(record, root)
    if problem:
        raise DatasetError(f"{where}: {problem}")
    messages = []
    for message in record["messages"]:
        content = message["content"]
        if isinstance(content, list):
            content = [_absolute(item, root) for item in content]
        messages.append({**message, "content": content})
    return Sample(record["id"], record["task"], messages, record["answer"], record.get("meta") or {})


def validate_record(record: Any, root: Path) -> str | None:
    """Why `record` is not a valid Sample record, or None when it is."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    for key, kind in (("id", str), ("task", str), ("messages", list)):
        if key not in record:
            return f"missing required field '{key}'"
        if not isinstance(record[key], kind):
            return f"field '{key}' must be a {kind.__name__}, got {type(record[key]).__name__}"
    if "answer" not in record:
        return "missing required field 'answer'"
    if not isinstance(record.get("meta", {}), dict):
        return "field 'meta' must be an object"
    unknown = set(record) - {"id", "task", "messages", "answer", "meta"}
    if unknown:
        return f"unknown field(s) {sorted(unknown)}"
    if not record["messages"]:
        return "field 'messages' is empty"
    for i, message in enumerate(record["messages"]):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return f"message {i} must be an object with a role in {ROLES}"
        content = message.get("content")
        if isinstance(content, str):
            continue
        if not isinstance(content, list):
            return f"message {i} content must be a string or a list of items"
        for j, item in enumerate(content):
            kind = item.get("type") if isinstance(item, dict) else None
            if kind not in CONTENT_TYPES:
                return f"message {i} item {j}: type must be one of {CONTENT_TYPES}"
            if kind == "text":
                if not isinstance(item.get("text"), str):
                    return f"message {i} item {j}: text item needs a string 'text'"
                continue
            value = item.get(kind)
            paths = value if kind == "video" and isinstance(value, list) else [value]
            if not paths or not all(isinstance(p, str) for p in paths):
                return f"message {i} item {j}: {kind} must be a path (or, for video, a list of frame paths)"
            for p in paths:
                if not _inside(root, p):
                    return f"message {i} item {j}: media path '{p}' points outside the dataset folder {root}"
                if not (root / p).is_file():
                    return f"message {i} item {j}: media file {root / p} does not exist"
    return None


def _inside(root: Path, rel: str) -> bool:
    """Whether `root/rel` stays inside `root` once `..`, absolute paths and symlinks are resolved: a dataset
    is data, and may not make a reader open files elsewhere on the machine."""
    base = root.resolve()
    return (base / rel).resolve().is_relative_to(base)


def _absolute(item: dict[str, Any], root: Path) -> dict[str, Any]:
    kind = item.get("type")
    if kind not in ("image", "video"):
        return item
    value = item[kind]
    if isinstance(value, list):
        return {**item, kind: [str(root / p) for p in value]}
    return {**item, kind: str(root / value)}


def content_items(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A message's content as a list of items (a plain string becomes one text item)."""
    content = message["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _media_items(messages: list[dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
    for i, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, list):
            for item in content:
                if isinstance(item, dict) and item.get("type") in ("image", "video"):
                    yield i, item
