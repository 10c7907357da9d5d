"""Boxes for the grounding tasks: parsing replies, IoU, coordinate conventions, and the REC and OVD rewards.

Canonical boxes (what a Sample's `answer` stores) are `[x1, y1, x2, y2]` in pixels of the sample's own image,
x first, x2/y2 exclusive, so a box's area is (x2 − x1)(y2 − y1). A model answers in its family's convention
(`COORD_FAMILIES`, docs/grounding.md):

    qwen2.5-vl   absolute pixels of the image after the processor's resize (W' x H', `smart_resize`):
                 x' = x · W'/W,  y' = y · H'/H
    qwen2-vl,    integers on a 0-1000 grid over the image, whatever its size:
    qwen3-vl     x' = x · 1000/W,  y' = y · 1000/H

`to_model_box` / `from_model_box` are exact inverses (floats); a reply is compared in model coordinates
against the truth rounded to integers there (`truth_model_box`), the only values a model can write, so the
reference reply scores exactly 1.

Rewards (VLM-R1-style rule rewards: Shen et al. 2025, *VLM-R1*, arXiv 2504.07615; Syn-GRPO sheet §3.5):

    REC   accuracy = 1[IoU(pred, gt) ≥ 0.5]   (continuous: accuracy = IoU)
          score    = 0.9 · accuracy + 0.1 · format
    OVD   TP = size of a largest one-to-one matching of predicted to true boxes with the same label and
               IoU ≥ 0.5 (Hungarian: `scipy.optimize.linear_sum_assignment`)
          F1 = 2·TP / (|pred| + |gt|)   (1 when both are empty)
          score    = 0.9 · F1 + 0.1 · format

One-to-one matching is what punishes duplicates (two copies of a right box: TP = 1, F1 = 2/3 for one true
object) and one whole-image box (IoU with each small object is far below 0.5). A reply that does not parse,
or holds a malformed box (x2 ≤ x1, y2 ≤ y1, NaN/inf, outside the model's frame by more than
`BOUNDS_TOLERANCE` of a side, not exactly 4 numbers, a REC reply that is not exactly one box, an OVD list
longer than `MAX_PREDICTED_BOXES`), scores 0 with every part present. Nothing here raises on model output.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import numpy as np

from mmrl.contracts import Reward
from mmrl.media import QWEN2_VL_FACTOR, QWEN3_VL_FACTOR, smart_resize
from rewards.extract import AnswerMode, check_mode, extract_answer, format_ok
from rewards.match import normalize_answer

CoordFamily = Literal["qwen2.5-vl", "qwen2-vl", "qwen3-vl"]
COORD_FAMILIES: tuple[str, ...] = get_args(CoordFamily)
PIXEL_FAMILIES: tuple[str, ...] = ("qwen2.5-vl",)
"""Families whose boxes are pixels of the resized image, so they depend on the processor's pixel budget."""
GRID = 1000
"""Side of the normalised grid of Qwen2-VL and Qwen3-VL boxes: (0, 0) top-left, (1000, 1000) bottom-right."""
FACTORS = {"qwen2.5-vl": QWEN2_VL_FACTOR, "qwen2-vl": QWEN2_VL_FACTOR, "qwen3-vl": QWEN3_VL_FACTOR}
"""Side that a family's resized images are multiples of (patch x merge: 14 x 2 or 16 x 2)."""
IOU_THRESHOLD = 0.5
ACCURACY_WEIGHT = 0.9
BOUNDS_TOLERANCE = 0.02
"""How far (share of the frame's side) a predicted box may reach outside the model's frame before it is
malformed; a little slack for rounding and for models that write the far edge as W' instead of W' − 1."""
MAX_PREDICTED_BOXES = 100
"""Longest OVD list that is scored; longer replies are malformed (and would cost O(n³) to match)."""
REC_PARTS = ("format", "accuracy", "iou", "exact")
OVD_PARTS = ("format", "accuracy", "precision", "recall", "exact")

Box = list[float]


def check_family(coords: str) -> None:
    """Raise ValueError naming the valid families if `coords` is not one."""
    if coords not in COORD_FAMILIES:
        raise ValueError(f"unknown coordinate family {coords!r}; valid: {', '.join(COORD_FAMILIES)}")


def model_size(image_size: Sequence[int], coords: str, min_pixels: int, max_pixels: int) -> list[int]:
    """[W', H']: the size the family's processor resizes a W x H image to under this pixel budget
    (`mmrl.media.smart_resize` with the family's factor, 28 or 32)."""
    check_family(coords)
    w, h = int(image_size[0]), int(image_size[1])
    rh, rw = smart_resize(h, w, FACTORS[coords], min_pixels, max_pixels)
    return [rw, rh]


def model_frame(model_size: Sequence[int], coords: str) -> tuple[float, float]:
    """(width, height) of the frame model boxes live in: W' x H' for qwen2.5-vl, 1000 x 1000 for the grid."""
    check_family(coords)
    if coords == "qwen2.5-vl":
        return float(model_size[0]), float(model_size[1])
    return float(GRID), float(GRID)


def _scales(image_size: Sequence[int], model_size: Sequence[int], coords: str) -> tuple[float, float]:
    fw, fh = model_frame(model_size, coords)
    return fw / float(image_size[0]), fh / float(image_size[1])


def to_model_box(box: Sequence[float], image_size: Sequence[int], model_size: Sequence[int], coords: str) -> Box:
    """Canonical box -> the family's coordinates, exact floats: x' = x · sx, y' = y · sy with
    (sx, sy) = (W'/W, H'/H) for qwen2.5-vl and (1000/W, 1000/H) for qwen2-vl / qwen3-vl."""
    sx, sy = _scales(image_size, model_size, coords)
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1 * sx, y1 * sy, x2 * sx, y2 * sy]


def from_model_box(box: Sequence[float], image_size: Sequence[int], model_size: Sequence[int], coords: str) -> Box:
    """The inverse of `to_model_box`: x = x' / sx, y = y' / sy."""
    sx, sy = _scales(image_size, model_size, coords)
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1 / sx, y1 / sy, x2 / sx, y2 / sy]


def truth_model_box(box: Sequence[float], meta: Mapping[str, Any]) -> list[int]:
    """A canonical box of a Sample in its model coordinates, rounded to the integers a reply can state."""
    model = to_model_box(box, meta["image_size"], meta["model_size"], meta["coords"])
    return [round(v) for v in model]


def box_text(box: Sequence[float]) -> str:
    """The reply form of one box: `[12, 40, 96, 130]`."""
    return "[" + ", ".join(str(int(v)) if float(v).is_integer() else str(v) for v in box) + "]"


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two `[x1, y1, x2, y2]` boxes (x2/y2 exclusive); 0 when the union is empty.

    inter = max(0, min(ax2, bx2) − max(ax1, bx1)) · max(0, min(ay2, by2) − max(ay1, by1))
    IoU   = inter / (area(a) + area(b) − inter)
    """
    ax1, ay1, ax2, ay2 = (float(v) for v in a)
    bx1, by1, bx2, by2 = (float(v) for v in b)
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = max(0.0, ax2 - ax1) * max(0.0, ay2 - ay1) + max(0.0, bx2 - bx1) * max(0.0, by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def answer_boxes(answer: Any) -> list[tuple[str, Box]]:
    """(label, canonical box) of every box in a grounding answer: REC `{"box", "label"}` gives one, OVD
    `{"objects": [...]}` one per object; anything else gives []. Never raises."""
    if not isinstance(answer, Mapping):
        return []
    if "objects" in answer:
        items = answer["objects"] if isinstance(answer["objects"], list) else []
    else:
        items = [answer]
    out = []
    for item in items:
        box = _box(item.get("box")) if isinstance(item, Mapping) else None
        if box is not None:
            out.append((str(item.get("label", "")), box))
    return out


def transform_answer_boxes(answer: Any, scale: float, offset: tuple[float, float]) -> dict:
    """A new answer of the same shape with every box mapped to box' = scale · box + (dx, dy) (the canvas
    transform of a synthesised image, Syn-GRPO sheet §3.2); other keys are copied. A malformed answer raises
    ValueError (answers are ground truth, not model output)."""
    dx, dy = float(offset[0]), float(offset[1])

    def move(item: Mapping) -> dict:
        box = _box(item.get("box"))
        if box is None:
            raise ValueError(f"not a box: {item.get('box')!r}")
        x1, y1, x2, y2 = box
        return {**item, "box": [scale * x1 + dx, scale * y1 + dy, scale * x2 + dx, scale * y2 + dy]}

    if not isinstance(answer, Mapping):
        raise ValueError(f"a grounding answer is a mapping, got {type(answer).__name__}")
    if "objects" in answer:
        return {**answer, "objects": [move(o) for o in answer["objects"]]}
    return move(answer)


# --------------------------------------------------------------------------------------------------
# Parsing replies


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:  # an int too large for a float
        return None
    return f if math.isfinite(f) else None


def _box(value: Any) -> Box | None:
    """Four finite numbers (ints or floats; not bools, not strings) as floats, else None."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    nums = [_number(v) for v in value]
    return None if any(v is None for v in nums) else nums  # type: ignore[return-value]


def _json(text: str) -> Any:
    """JSON of `text`, or None when it is not JSON (NaN/Infinity pass here and fail `_box`)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # bad JSON, too many digits, nesting too deep
        return None


def _in_frame(box: Box, frame: tuple[float, float]) -> bool:
    """x1 < x2, y1 < y2, and the box inside [0, W] x [0, H] give or take `BOUNDS_TOLERANCE` of a side."""
    x1, y1, x2, y2 = box
    tw, th = BOUNDS_TOLERANCE * frame[0], BOUNDS_TOLERANCE * frame[1]
    return x1 < x2 and y1 < y2 and x1 >= -tw and y1 >= -th and x2 <= frame[0] + tw and y2 <= frame[1] + th


def parse_rec_box(payload: str | None, frame: tuple[float, float]) -> Box | None:
    """The one box of a REC answer payload `[x1, y1, x2, y2]` (whitespace free, ints or floats), valid in
    `frame`; None for anything else (two boxes, 3 or 5 numbers, strings, NaN, x2 ≤ x1, outside the frame)."""
    if not isinstance(payload, str):
        return None
    box = _box(_json(payload))
    return box if box is not None and _in_frame(box, frame) else None


def parse_ovd_boxes(payload: str | None, frame: tuple[float, float]) -> list[tuple[str, Box]] | None:
    """The (label, box) pairs of an OVD payload, a JSON list `[{"label": "cube", "box": [..]}, ...]` (`[]`
    for none); None when it is not such a list, an entry lacks a string label or a valid box, or it holds
    more than `MAX_PREDICTED_BOXES` entries."""
    if not isinstance(payload, str):
        return None
    items = _json(payload)
    if not isinstance(items, list) or len(items) > MAX_PREDICTED_BOXES:
        return None
    out = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("label"), str):
            return None
        box = _box(item.get("box"))
        if box is None or not _in_frame(box, frame):
            return None
        out.append((normalize_answer(item["label"]), box))
    return out


# --------------------------------------------------------------------------------------------------
# Rewards


def meta_frame(meta: Mapping[str, Any]) -> tuple[float, float]:
    """(width, height) of the frame a sample's replies live in: `model_frame` of its meta's `model_size`, `coords`."""
    return model_frame(meta["model_size"], meta["coords"])


def rec_reward(
    completion: str,
    answer: Mapping[str, Any],
    meta: Mapping[str, Any],
    *,
    mode: AnswerMode = "answer_tag",
    continuous: bool = False,
    accuracy_weight: float = ACCURACY_WEIGHT,
) -> Reward:
    """Referring-expression reward of one reply (VLM-R1's REC reward, normalised to [0, 1]).

        iou      = IoU(pred, gt), both in the sample's model coordinates (gt rounded to integers)
        accuracy = 1[iou ≥ 0.5], or iou when `continuous`
        format   = 1[format_ok(completion, mode)] (the box parsed too)
        exact    = 1[iou ≥ 0.5]
        score    = w · accuracy + (1 − w) · format,  w = accuracy_weight (0.9)

    `meta` needs `image_size`, `model_size` and `coords` (the Sample's meta). A reply whose answer is not one
    valid box scores 0 with every part 0.
    """
    check_mode(mode)
    pred = parse_rec_box(extract_answer(completion, mode), meta_frame(meta)) if isinstance(completion, str) else None
    truth = _box(answer.get("box")) if isinstance(answer, Mapping) else None
    if pred is None or truth is None:
        return Reward.zero(*REC_PARTS)
    overlap = iou(pred, truth_model_box(truth, meta))
    hit = 1.0 if overlap >= IOU_THRESHOLD else 0.0
    accuracy = overlap if continuous else hit
    fmt = 1.0 if format_ok(completion, mode) else 0.0
    score = accuracy_weight * accuracy + (1.0 - accuracy_weight) * fmt
    return Reward(score, {"format": fmt, "accuracy": accuracy, "iou": overlap, "exact": hit})


def match_count(pred: Sequence[tuple[str, Box]], truth: Sequence[tuple[str, Box]]) -> int:
    """TP: the size of a largest one-to-one matching of `pred` to `truth` in which a pair may match when
    the labels are equal (normalised) and IoU ≥ 0.5. Hungarian assignment on the 0/1 match matrix
    (`scipy.optimize.linear_sum_assignment`, maximise) finds it exactly."""
    if not pred or not truth:
        return 0
    from scipy.optimize import linear_sum_assignment

    ok = np.array(
        [[float(pl == normalize_answer(tl) and iou(pb, tb) >= IOU_THRESHOLD) for tl, tb in truth] for pl, pb in pred]
    )
    rows, cols = linear_sum_assignment(ok, maximize=True)
    return int(ok[rows, cols].sum())


def f1_score(tp: int, predicted: int, true: int) -> tuple[float, float, float]:
    """(F1, precision, recall) with F1 = 2·TP / (predicted + true); all 1 when both counts are 0."""
    if predicted == 0 and true == 0:
        return 1.0, 1.0, 1.0
    precision = tp / predicted if predicted else 0.0
    recall = tp / true if true else 0.0
    return 2.0 * tp / (predicted + true), precision, recall


def ovd_reward(
    completion: str,
    answer: Mapping[str, Any],
    meta: Mapping[str, Any],
    *,
    mode: AnswerMode = "answer_tag",
    accuracy_weight: float = ACCURACY_WEIGHT,
) -> Reward:
    """Open-vocabulary detection reward of one reply: F1 at IoU 0.5 with one-to-one matching.

        TP       = match_count(pred, gt), gt in the sample's model coordinates (rounded to integers)
        accuracy = F1 = 2·TP / (|pred| + |gt|)  (1 when both are empty)
        format   = 1[format_ok(completion, mode)] (the list parsed too)
        exact    = 1[F1 = 1]
        score    = w · accuracy + (1 − w) · format,  w = accuracy_weight (0.9)

    Parts `precision` = TP/|pred| and `recall` = TP/|gt| are logged too. A reply that is not a valid list
    (any malformed entry) scores 0 with every part 0.
    """
    check_mode(mode)
    pred = parse_ovd_boxes(extract_answer(completion, mode), meta_frame(meta)) if isinstance(completion, str) else None
    if pred is None or not isinstance(answer, Mapping):
        return Reward.zero(*OVD_PARTS)
    truth = [(label, truth_model_box(box, meta)) for label, box in answer_boxes(answer)]
    f1, precision, recall = f1_score(match_count(pred, truth), len(pred), len(truth))
    fmt = 1.0 if format_ok(completion, mode) else 0.0
    score = accuracy_weight * f1 + (1.0 - accuracy_weight) * fmt
    return Reward(score, {"format": fmt, "accuracy": f1, "precision": precision, "recall": recall,
                          "exact": 1.0 if f1 >= 1.0 else 0.0})  # fmt: skip


__all__ = [
    "ACCURACY_WEIGHT",
    "BOUNDS_TOLERANCE",
    "COORD_FAMILIES",
    "FACTORS",
    "GRID",
    "IOU_THRESHOLD",
    "MAX_PREDICTED_BOXES",
    "OVD_PARTS",
    "PIXEL_FAMILIES",
    "REC_PARTS",
    "CoordFamily",
    "answer_boxes",
    "box_text",
    "check_family",
    "f1_score",
    "from_model_box",
    "iou",
    "match_count",
    "meta_frame",
    "model_frame",
    "model_size",
    "ovd_reward",
    "parse_ovd_boxes",
    "parse_rec_box",
    "rec_reward",
    "to_model_box",
    "transform_answer_boxes",
    "truth_model_box",
]
