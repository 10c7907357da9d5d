"""Checks every synthesized sample passes before it reaches training; each failure raises `Rejected(reason)`.

Reasons (counted by the backend as `dataserver/rejected/<reason>`):

    empty_description    the description is blank (nothing to condition on)
    bad_image            the image does not decode, is not RGB of the seed's canvas size, exceeds the pixel
                         budget, holds NaN, or is blank (one flat colour: a diverged generator)
    foreground_changed   the kept objects' pixels moved away from the seed's (shadows of new props, occlusion)
    labels_moved         a label box differs by more than 1 px from `s * box + (dx, dy)` of the seed's
    new_instance         an object of a referred / annotated category appears outside the labelled boxes

Box helpers read the grounding answers of the Sample contract (docs/syn_grpo.md, "Grounding Samples"):
REC `{"box": [x1, y1, x2, y2], "label": c}`, OVD `{"objects": [{"label": c, "box": [...]}, ...]}`, boxes in
the pixels of the sample's own image, x first, x2/y2 exclusive; reading and moving them is `rewards.boxes`
(`answer_boxes`, `transform_answer_boxes`: box' = s * box + (dx, dy), every coordinate).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from mmrl.dataserver.protocol import Rejected
from mmrl.errors import MMRLError
from mmrl.media import load_image
from mmrl.sample import Sample

BOX_TOLERANCE_PX = 1.0
"""Most a synthesized label box may differ from its transformed seed box, per coordinate (the contract)."""
MAX_PIXELS = 4096 * 4096
"""Default largest canvas a synthesizer may return."""


# -- answers -------------------------------------------------------------------------------------------


def replace_answer_boxes(answer: Any, boxes: Sequence[Sequence[float]]) -> Any:
    """A copy of `answer` whose boxes, in `rewards.boxes.answer_boxes` order, are `boxes` (labels kept)."""
    out = copy.deepcopy(answer)
    items = [out] if isinstance(out, dict) and "box" in out else (out or {}).get("objects", [])
    if len(items) != len(boxes):
        raise ValueError(f"answer has {len(items)} boxes, got {len(boxes)} replacements")
    for item, box in zip(items, boxes):
        item["box"] = [float(v) for v in box]
    return out


def referred_categories(meta: dict[str, Any]) -> set[str]:
    """The categories the labels depend on: REC `target_category`, OVD `categories` (empty for other tasks)."""
    cats = set(meta.get("categories") or [])
    if meta.get("target_category"):
        cats.add(str(meta["target_category"]))
    return cats


def seed_image(sample: Sample) -> Image.Image:
    """The first image of `sample`'s messages as RGB (in memory or loaded from its path); `bad_image` if none."""
    for item in sample.media():
        if item.get("type") == "image":
            value = item["image"]
            try:
                return value.convert("RGB") if isinstance(value, Image.Image) else load_image(value)
            except MMRLError as e:
                raise Rejected("bad_image", str(e)) from e
    raise Rejected("bad_image", f"seed sample {sample.id} has no image")


def with_image(sample: Sample, image: Image.Image, *, new_id: str, answer: Any, meta: dict[str, Any]) -> Sample:
    """A copy of `sample` whose first image is `image` (text items untouched, so the prompt is the same),
    with `new_id`, `answer` and `meta`."""
    messages = [{**m, "content": [dict(item) for item in m["content"]] if isinstance(m["content"], list)
                 else m["content"]} for m in sample.messages]  # fmt: skip
    for message in messages:
        for item in message["content"] if isinstance(message["content"], list) else []:
            if item.get("type") == "image":
                item["image"] = image
                return Sample(new_id, sample.task, messages, answer, meta)
    raise Rejected("bad_image", f"seed sample {sample.id} has no image")


# -- checks --------------------------------------------------------------------------------------------


def check_description(description: str) -> str:
    """The description stripped; `empty_description` when blank or not text."""
    if not isinstance(description, str) or not description.strip():
        raise Rejected("empty_description")
    return description.strip()


def check_image(image: Any, size: tuple[int, int], max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The image as (H, W, 3) uint8, or `bad_image`: not an RGB image of `size` = (W, H), over `max_pixels`,
    with non-finite values, or blank (every pixel within 1 level of the mean: a collapsed generator)."""
    try:
        array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    except Exception as e:
        raise Rejected("bad_image", f"does not decode: {e}") from e
    if array.ndim != 3 or array.shape[2] != 3 or (array.shape[1], array.shape[0]) != tuple(size):
        raise Rejected("bad_image", f"shape {array.shape}, expected {tuple(size)[::-1]} x 3")
    if array.shape[0] * array.shape[1] > max_pixels:
        raise Rejected("bad_image", f"{array.shape[1]}x{array.shape[0]} exceeds the budget of {max_pixels} pixels")
    if not np.isfinite(array.astype(np.float64)).all():
        raise Rejected("bad_image", "non-finite pixels")
    if np.abs(array.astype(np.float64) - array.mean(axis=(0, 1))).max() <= 1.0:
        raise Rejected("bad_image", "blank image")
    return np.clip(array, 0, 255).astype(np.uint8)


def check_kept_region(
    before: np.ndarray, after: np.ndarray, mask: np.ndarray, *, mad: float = 2.0, changed_share: float = 0.01
) -> float:
    """Mean absolute difference (0-255 levels, over channels) of the kept pixels `mask`; `foreground_changed`
    when it exceeds `mad`, or when more than `changed_share` of them moved by over 24 levels (a shadow
    across a small part of an object barely moves the mean). An empty mask passes."""
    if not mask.any():
        return 0.0
    diff = np.abs(before[mask].astype(np.int16) - after[mask].astype(np.int16))  # (N, 3)
    mean = float(diff.mean())
    share = float((diff.max(axis=1) > 24).mean())
    if mean > mad or share > changed_share:
        raise Rejected("foreground_changed", f"mean |diff| {mean:.2f} levels, {share:.1%} of kept pixels moved")
    return mean


def check_labels(
    expected: Iterable[Sequence[float]], found: Iterable[Sequence[float] | None], tolerance: float = BOX_TOLERANCE_PX
) -> None:
    """`labels_moved` unless each found box equals its expected (transformed) box within `tolerance` px per
    coordinate; a label whose object is no longer visible (None) counts as moved."""
    for i, (want, got) in enumerate(zip(expected, found, strict=True)):
        if got is None or np.abs(np.subtract(want, got, dtype=np.float64)).max() > tolerance:
            raise Rejected("labels_moved", f"label {i}: expected {list(want)}, found {got}")


def check_no_new_instance(instance: np.ndarray, categories: dict[int, str], referred: set[str],
                          labelled: set[int]) -> None:  # fmt: skip
    """Exact check on an instance mask: `new_instance` if a visible object whose category (`categories`: id ->
    category) is referred is not one of the `labelled` ids."""
    visible = {int(i) for i in np.unique(instance) if i >= 0}
    intruders = sorted(i for i in visible - labelled if categories.get(i) in referred)
    if intruders:
        raise Rejected("new_instance", f"objects {intruders} of a referred category ({sorted(referred)}) are visible")


__all__ = [
    "BOX_TOLERANCE_PX",
    "MAX_PIXELS",
    "check_description",
    "check_image",
    "check_kept_region",
    "check_labels",
    "check_no_new_instance",
    "referred_categories",
    "replace_answer_boxes",
    "seed_image",
    "with_image",
]
