"""GUI actions: the canonical action record, parsing a model's JSON action, and the UIShift reward.

Action space (GUI-Shift's unified eight types; UIShift sheet §2), one JSON object per action:

    {"action_type": "click", "x": 412, "y": 233}            also "long_press"; the truth adds "bbox"
    {"action_type": "scroll", "direction": "down"}          up | down | left | right, content convention
    {"action_type": "input_text", "text": "hello"}
    {"action_type": "open_app", "app_name": "Clock"}
    {"action_type": "navigate_back"}   {"action_type": "navigate_home"}   {"action_type": "wait"}

Canonical coordinates (what a Sample's `answer` stores): absolute pixels of the screenshot as the Sample holds
it, x first, boxes `[x1, y1, x2, y2]`. A model answers in its family's convention (`rewards.boxes`): pixels of
the processor's resized image for qwen2.5-vl, a 0-1000 grid for qwen2-vl / qwen3-vl; `to_model_point` and
`from_model_point` are the point forms of `to_model_box` / `from_model_box`. Scroll directions use the
*content* convention: "down" moves the viewport down over the content, revealing what lies further down
(a mouse wheel turned down, a finger swiped up).

Reward (Gao et al. 2025, *UIShift*, arXiv 2505.12493, released rule reward; GUI-Shift v3 action space):

    format = 1[the reply has the asked shape (`format_ok`) and its payload parses as one action object]
    action = 0 on a parse error, a missing or unknown action_type, or a type mismatch (case-insensitive); else
             click, long_press   1[x1 ≤ x ≤ x2 and y1 ≤ y ≤ y2], (x, y) the reply's point mapped to canonical
                                 pixels, the truth's bbox inclusive; without a bbox, the reply's point equals
                                 the truth's rounded model point
             scroll              1[direction equal after strip + lower-case]
             open_app            1[app_name equal after normalisation (`normalize_answer`)]
             input_text          1[text equal after normalisation]; `text_match="f1"`: 1[token F1 ≥ threshold]
             navigate_back, navigate_home, wait   1 (the type matched)
    score  = (format + action) / 2,   parts format, action, accuracy = action, exact = action

The released code sums format and action (total in {0, 1, 2}); halving keeps the score in [0, 1] and gives
the same group-normalised advantages. There is no partial credit for a near miss, as in both papers. The
action is read from the `<answer>` block only; `allow_untagged=True` reads the whole reply when there is no
block (what the released parser does). Nothing here raises on model output.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

from mmrl.contracts import Reward
from rewards.boxes import from_model_box, to_model_box
from rewards.extract import AnswerMode, check_mode, extract_answer, format_ok
from rewards.match import normalize_answer

ActionType = Literal[
    "click", "long_press", "open_app", "input_text", "scroll", "navigate_back", "navigate_home", "wait"
]  # fmt: skip
ACTION_TYPES: tuple[str, ...] = get_args(ActionType)
POINT_ACTIONS = ("click", "long_press")
TEXT_FIELDS = {"input_text": "text", "open_app": "app_name"}
"""Action types with a text parameter, and its key."""
SCROLL_DIRECTIONS = ("up", "down", "left", "right")
TextMatch = Literal["exact", "f1"]
TEXT_MATCHES: tuple[str, ...] = get_args(TextMatch)
PARTS = ("format", "action", "accuracy", "exact")
MAX_PAYLOAD_CHARS = 20_000
"""Longest answer payload that is parsed; a longer one is malformed (no action is that long)."""

FENCE = "```"

Action = dict[str, Any]


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        f = float(v)
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def _strip_fence(text: str) -> str:
    """`text` without one surrounding Markdown code fence (```json ... ```); string slicing, no regex."""
    if text.startswith(FENCE) and text.endswith(FENCE) and len(text) >= 2 * len(FENCE):
        text = text[len(FENCE) : -len(FENCE)]
        if text[:4].lower() == "json":
            text = text[4:]
    return text.strip()


def parse_action(payload: str | None) -> Action | None:
    """The action of an answer payload, normalised, or None when the payload is not one valid action.

    Accepts one JSON object, optionally inside a Markdown code fence; `action_type` is matched
    case-insensitively against `ACTION_TYPES`. Returns `{"action_type": t, ...}` with only the keys the type
    uses: `x`, `y` (finite numbers) for click / long_press, `direction` (one of `SCROLL_DIRECTIONS`,
    lower-cased) for scroll, `text` / `app_name` (strings) for input_text / open_app. A missing or wrongly
    typed parameter gives None. Never raises.
    """
    if not isinstance(payload, str) or len(payload) > MAX_PAYLOAD_CHARS:
        return None
    text = _strip_fence(payload.strip())
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("action_type"), str):
        return None
    kind = obj["action_type"].strip().lower()
    if kind not in ACTION_TYPES:
        return None
    if kind in POINT_ACTIONS:
        x, y = _number(obj.get("x")), _number(obj.get("y"))
        return None if x is None or y is None else {"action_type": kind, "x": x, "y": y}
    if kind == "scroll":
        direction = obj.get("direction")
        if not isinstance(direction, str) or direction.strip().lower() not in SCROLL_DIRECTIONS:
            return None
        return {"action_type": kind, "direction": direction.strip().lower()}
    if kind in TEXT_FIELDS:
        value = obj.get(TEXT_FIELDS[kind])
        return {"action_type": kind, TEXT_FIELDS[kind]: value} if isinstance(value, str) else None
    return {"action_type": kind}


def to_model_point(point: Sequence[float], meta: Mapping[str, Any]) -> tuple[float, float]:
    """A canonical point in the sample's model coordinates (exact floats; `rewards.boxes.to_model_box`)."""
    x, y = float(point[0]), float(point[1])
    mx, my, _, _ = to_model_box([x, y, x, y], meta["image_size"], meta["model_size"], meta["coords"])
    return mx, my


def from_model_point(point: Sequence[float], meta: Mapping[str, Any]) -> tuple[float, float]:
    """The inverse of `to_model_point`: a point of a reply in canonical pixels of the sample's image."""
    x, y = float(point[0]), float(point[1])
    cx, cy, _, _ = from_model_box([x, y, x, y], meta["image_size"], meta["model_size"], meta["coords"])
    return cx, cy


EDGE_TOLERANCE = 1e-6
"""Pixels a point may lie past a box's edge and still be on it: absorbs the float round-off of mapping a model
point back (44.8 / 1.12 = 39.99999...), far below anything a reply can state."""


def point_in_box(point: Sequence[float], box: Sequence[float]) -> bool:
    """x1 ≤ x ≤ x2 and y1 ≤ y ≤ y2 (both edges inclusive, as the released reward; `EDGE_TOLERANCE` slack)."""
    x, y = point
    e = EDGE_TOLERANCE
    return box[0] - e <= x <= box[2] + e and box[1] - e <= y <= box[3] + e


def model_point_for(action: Mapping[str, Any], meta: Mapping[str, Any]) -> tuple[int, int] | None:
    """The integer model point a reply should state for a canonical click: the truth's point rounded in model
    coordinates, moved to the nearest integer point whose canonical image lies inside the bbox when rounding
    pushed it out; None when no integer model point maps inside the bbox (a box below the model's resolution)."""
    mx, my = to_model_point((action["x"], action["y"]), meta)
    point = (round(mx), round(my))
    box = action.get("bbox")
    if box is None or point_in_box(from_model_point(point, meta), box):
        return point
    lo = to_model_point(box[:2], meta)
    hi = to_model_point(box[2:], meta)
    px = min(max(point[0], math.ceil(lo[0])), math.floor(hi[0]))
    py = min(max(point[1], math.ceil(lo[1])), math.floor(hi[1]))
    if point_in_box(from_model_point((px, py), meta), box):
        return px, py
    return None


def token_f1(predicted: str, truth: str) -> float:
    """Token-level F1 of two texts after `normalize_answer` (SQuAD-style bag of whitespace tokens):
    F1 = 2·|common| / (|pred tokens| + |truth tokens|), 1 when both are empty."""
    p, t = normalize_answer(predicted).split(), normalize_answer(truth).split()
    if not p and not t:
        return 1.0
    common = sum((Counter(p) & Counter(t)).values())
    return 2.0 * common / (len(p) + len(t))


def action_match(
    pred: Mapping[str, Any],
    truth: Mapping[str, Any],
    meta: Mapping[str, Any],
    *,
    text_match: TextMatch = "exact",
    f1_threshold: float = 0.5,
) -> bool:
    """Whether a parsed reply `pred` (model coordinates) is the canonical `truth` action (module docstring)."""
    kind = str(truth.get("action_type", "")).lower()
    if pred.get("action_type") != kind:
        return False
    if kind in POINT_ACTIONS:
        box = truth.get("bbox")
        if box is None:
            return model_point_for(truth, meta) == (pred["x"], pred["y"])
        return point_in_box(from_model_point((pred["x"], pred["y"]), meta), box)
    if kind == "scroll":
        return pred["direction"] == str(truth.get("direction", "")).strip().lower()
    if kind in TEXT_FIELDS:
        said, wanted = pred[TEXT_FIELDS[kind]], str(truth.get(TEXT_FIELDS[kind], ""))
        if kind == "input_text" and text_match == "f1":
            return token_f1(said, wanted) >= f1_threshold
        return normalize_answer(said) == normalize_answer(wanted)
    return True


def gui_reward(
    completion: str,
    answer: Mapping[str, Any],
    meta: Mapping[str, Any],
    *,
    mode: AnswerMode = "answer_tag",
    text_match: TextMatch = "exact",
    f1_threshold: float = 0.5,
    allow_untagged: bool = False,
) -> Reward:
    """The UIShift reward of one reply (module docstring): score = (format + action) / 2.

    `meta` needs `image_size`, `model_size` and `coords` (the Sample's meta). Non-string or unparseable
    replies score 0 with every part present; never raises on `completion`.
    """
    check_mode(mode)
    if not isinstance(completion, str) or not isinstance(answer, Mapping):
        return Reward.zero(*PARTS)
    payload = extract_answer(completion, mode)
    if payload is None and allow_untagged and mode != "raw":
        payload = extract_answer(completion, "raw")
    pred = parse_action(payload)
    if pred is None:
        return Reward.zero(*PARTS)
    fmt = 1.0 if format_ok(completion, mode) else 0.0
    hit = 1.0 if action_match(pred, answer, meta, text_match=text_match, f1_threshold=f1_threshold) else 0.0
    return Reward((fmt + hit) / 2.0, {"format": fmt, "action": hit, "accuracy": hit, "exact": hit})


def action_text(action: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> str:
    """An action as the reply states it: compact JSON without the bbox, the point in model coordinates when
    `meta` is given (`model_point_for`), else canonical."""
    out: dict[str, Any] = {"action_type": action["action_type"]}
    if action["action_type"] in POINT_ACTIONS:
        point = model_point_for(action, meta) if meta is not None else (action["x"], action["y"])
        if point is None:  # below resolution: the closest a reply can say
            point = tuple(round(v) for v in to_model_point((action["x"], action["y"]), meta))  # type: ignore[arg-type]
        out["x"], out["y"] = (int(v) if float(v).is_integer() else v for v in point)
    for key in ("direction", "text", "app_name"):
        if key in action:
            out[key] = action[key]
    return json.dumps(out, ensure_ascii=False)


__all__ = [
    "ACTION_TYPES",
    "PARTS",
    "POINT_ACTIONS",
    "SCROLL_DIRECTIONS",
    "TEXT_FIELDS",
    "TEXT_MATCHES",
    "ActionType",
    "TextMatch",
    "action_match",
    "action_text",
    "from_model_point",
    "gui_reward",
    "model_point_for",
    "parse_action",
    "point_in_box",
    "to_model_point",
    "token_f1",
]
