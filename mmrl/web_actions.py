"""Choosing the explorer's next action on a page: novelty-weighted candidates, a re-hit-tested click
point, typed text from field-type templates, wheel scrolls, and the filters applied before acting.

Every choice is drawn from the walk's `numpy.random.Generator`, in a fixed order, so the same page
state and generator state give the same action. An action is returned twice over: `executed` (what
the browser does: points, wheel deltas, the focus click) and `label` (the canonical ground truth of
the pair record: absolute screenshot pixels, x first, `bbox` = [x1, y1, x2, y2]).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmrl.web_browser import page_js

# Visible text that marks an action whose side effects we do not want, even on a local site.
DESTRUCTIVE = re.compile(
    r"\b(delete|remove|log ?out|sign ?out|pay|buy|checkout|check ?out|submit order|place order|unsubscribe)\b",
    re.IGNORECASE,
)
MAX_BOX_SHARE = 0.40  # a click box wider than this share of the viewport makes the reward trivial (sheet §10)
CLICK_MARGIN = 0.15  # the click point is drawn inside the box shrunk by this share on each side
SCROLL_SHARE = 0.6  # a wheel scroll moves 0.6 x the height (or width) of what it scrolls
MIN_SCROLL_PX = 24  # a direction with less room left than this moves too little to learn from
# Action-type weights before the ones that are impossible on the page are removed (sheet §10: click ~85 %).
TYPE_WEIGHTS = {"click": 0.80, "input_text": 0.10, "scroll": 0.06, "navigate_back": 0.04}

_DIRECTIONS = ("down", "up", "right", "left")
_NAMES = ["ana", "li.wei", "sam", "noor", "tomas", "ines", "kofi", "mara"]
_PHRASES = [
    "Buy bread",
    "Call Sam at noon",
    "Book the dentist",
    "Fix the bike light",
    "Send the report",
    "Plan the trip",
    "Pick up the parcel",
    "Water the garden",
]
_WORDS = ["bread", "flour", "yeast", "settings", "garden", "music", "travel", "recipes"]


@dataclass
class Choice:
    executed: dict[str, Any]
    """What the browser does (mmrl.web_browser.execute's record)."""
    label: dict[str, Any]
    """The canonical action of the pair record."""
    element: dict[str, Any] | None = None
    """The element acted on (tag, role, name, selector, href), for click and input_text."""


@dataclass
class Novelty:
    """How often each element (page path + selector) was acted on so far; weight = 1 / (1 + count)."""

    visits: Counter = field(default_factory=Counter)

    def weights(self, page: str, candidates: list[dict[str, Any]]) -> np.ndarray:
        w = np.array([1.0 / (1 + self.visits[(page, c["selector"])]) for c in candidates])
        return w / w.sum()

    def visit(self, page: str, candidate: dict[str, Any]) -> None:
        self.visits[(page, candidate["selector"])] += 1


def fill_text(rng: np.random.Generator, field_info: dict[str, Any]) -> str:
    """Text for one field, from a template chosen by its type and name (drawn from `rng`)."""
    kind = field_info.get("type", "")
    hint = field_info.get("name", "").lower()
    if kind == "email" or "mail" in hint:
        return f"{_NAMES[rng.integers(len(_NAMES))]}@example.org"
    if kind == "number" or "age" in hint:
        return str(int(rng.integers(1, 100)))
    if kind == "tel" or "phone" in hint:
        return f"+1 555 01{int(rng.integers(10, 100))}"
    if kind == "url":
        return f"https://example.org/{_WORDS[rng.integers(len(_WORDS))]}"
    if kind == "search":
        return _WORDS[rng.integers(len(_WORDS))]
    if "name" in hint:
        return _NAMES[rng.integers(len(_NAMES))].split(".")[0].capitalize()
    return _PHRASES[rng.integers(len(_PHRASES))]


def element_record(c: dict[str, Any]) -> dict[str, Any]:
    return {"tag": c["tag"], "role": c["role"], "name": c["name"], "selector": c["selector"], "href": c["href"]}


def _pick(rng: np.random.Generator, novelty: Novelty, page: str, pool: list[dict[str, Any]]) -> dict[str, Any]:
    return pool[int(rng.choice(len(pool), p=novelty.weights(page, pool)))]


def _click_point(rng: np.random.Generator, page: Any, c: dict[str, Any]) -> tuple[int, int, dict] | None:
    """A point inside the candidate's box shrunk by 15 % that still hits it (3 draws, then the centre)."""
    x1, y1, x2, y2 = c["bbox"]
    mx, my = CLICK_MARGIN * (x2 - x1), CLICK_MARGIN * (y2 - y1)
    lo_x, hi_x = math.ceil(x1 + mx), math.floor(x2 - mx) - 1
    lo_y, hi_y = math.ceil(y1 + my), math.floor(y2 - my) - 1
    tries = [(int(rng.integers(lo_x, hi_x + 1)), int(rng.integers(lo_y, hi_y + 1))) for _ in range(3)]
    tries = tries if lo_x <= hi_x and lo_y <= hi_y else []
    tries.append(((x1 + x2) // 2, (y1 + y2) // 2))
    for x, y in tries:
        hit = page_js(page, "hitTest", c["selector"], x, y)
        if hit.get("ok"):
            return x, y, hit
    return None


def choose(
    rng: np.random.Generator,
    page: Any,
    page_key: str,
    novelty: Novelty,
    can_go_back: bool,
    viewport: tuple[int, int],
    drops: Counter,
) -> Choice | None:
    """The next action on `page`, or None when nothing can be done. Filtered picks count in `drops`."""
    candidates = page_js(page, "candidates")
    scrollables = [s for s in page_js(page, "scrollables") if max(s[d] for d in _DIRECTIONS) >= MIN_SCROLL_PX]
    inputs = [c for c in candidates if c["text_input"]]
    possible = {
        "click": bool(candidates),
        "input_text": bool(inputs),
        "scroll": bool(scrollables),
        "navigate_back": can_go_back,
    }
    types = [t for t in TYPE_WEIGHTS if possible[t]]
    if not types:
        return None
    w = np.array([TYPE_WEIGHTS[t] for t in types])
    kind = types[int(rng.choice(len(types), p=w / w.sum()))]
    if kind == "navigate_back":
        return Choice({"action_type": "navigate_back"}, {"action_type": "navigate_back"})
    if kind == "scroll":
        return _scroll(rng, scrollables, viewport)
    if kind == "input_text":
        c = _pick(rng, novelty, page_key, inputs)
        novelty.visit(page_key, c)
        text = fill_text(rng, c)
        x1, y1, x2, y2 = c["bbox"]
        focus = [(x1 + x2) // 2, (y1 + y2) // 2]
        executed = {"action_type": "input_text", "text": text, "focus": focus}
        return Choice(executed, {"action_type": "input_text", "text": text}, element_record(c))
    return _click(rng, page, page_key, novelty, candidates, viewport, drops)


def _click(
    rng: np.random.Generator,
    page: Any,
    page_key: str,
    novelty: Novelty,
    candidates: list[dict[str, Any]],
    viewport: tuple[int, int],
    drops: Counter,
) -> Choice | None:
    pool = list(candidates)
    while pool:
        c = _pick(rng, novelty, page_key, pool)
        pool.remove(c)
        if DESTRUCTIVE.search(c["name"]) or DESTRUCTIVE.search(c["href"]):
            drops["destructive"] += 1
            continue
        point = _click_point(rng, page, c)
        if point is None:
            drops["not_hit"] += 1
            continue
        x, y, hit = point
        bx1, by1, bx2, by2 = hit["bbox"]
        area = (bx2 - bx1) * (by2 - by1)
        if area <= 0 or not (bx1 <= x <= bx2 and by1 <= y <= by2):
            drops["empty_box"] += 1
            continue
        if area > MAX_BOX_SHARE * viewport[0] * viewport[1]:
            drops["box_too_large"] += 1
            continue
        novelty.visit(page_key, c)
        label = {"action_type": "click", "x": x, "y": y, "bbox": [bx1, by1, bx2, by2]}
        return Choice(dict(label), label, element_record(c))
    return None


def _scroll(rng: np.random.Generator, scrollables: list[dict[str, Any]], viewport: tuple[int, int]) -> Choice:
    """A wheel scroll over the page or a container, in a direction it can still move.

    Content convention: "down" is a wheel turn towards the user (deltaY > 0), which reveals content
    further down, whatever the platform's finger convention is.
    """
    target = scrollables[int(rng.integers(len(scrollables)))]
    directions = [d for d in _DIRECTIONS if target[d] >= MIN_SCROLL_PX]
    direction = directions[int(rng.integers(len(directions)))]
    x1, y1, x2, y2 = target["bbox"]
    if target["selector"]:
        point = [(x1 + x2) // 2, (y1 + y2) // 2]
    else:  # over the page, away from every container (a wheel over one would scroll it instead)
        inner = [s["bbox"] for s in scrollables if s["selector"]]
        free = [
            (x, y)
            for x, y in ((viewport[0] * fx // 8, viewport[1] * fy // 8) for fx in range(1, 8) for fy in range(1, 8))
            if not any(a <= x <= c and b <= y <= d for a, b, c, d in inner)
        ]
        point = list(free[int(rng.integers(len(free)))]) if free else [viewport[0] // 2, viewport[1] // 2]
    step_y = round(SCROLL_SHARE * (y2 - y1))
    step_x = round(SCROLL_SHARE * (x2 - x1))
    delta = {"down": [0, step_y], "up": [0, -step_y], "right": [step_x, 0], "left": [-step_x, 0]}[direction]
    executed = {"action_type": "scroll", "direction": direction, "point": point, "delta": delta}
    return Choice(executed, {"action_type": "scroll", "direction": direction})


__all__ = ["DESTRUCTIVE", "MAX_BOX_SHARE", "Choice", "Novelty", "choose", "fill_text"]
