"""Importers of mobile GUI datasets (AndroidControl, AITW, GUI Odyssey) into a pair folder.

Coordinates (UIShift sheet §9; `pretext_tasks.gui_import` has the shared machinery and the CLI entry):

    androidcontrol  absolute pixels (x, y); a click's bbox = the smallest accessibility node whose boundsInScreen
                    {left, top, right, bottom} contains the point (identity)
    aitw            points (y, x) in [0, 1], boxes (y, x, h, w) in [0, 1]: x = x_n · W, y = y_n · H,
                    box = [x·W, y·H, (x + w)·W, (y + h)·H]; a tap iff the touch-lift distance ≤ 0.04, else a swipe
    guiodyssey      points (x, y) on [0, 1000]: x = x_k · W / 1000, y = y_k · H / 1000; no element boxes

Swipes (AITW, GUI Odyssey) are finger motions and become content-convention scrolls (`finger_to_content`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mmrl.errors import MediaError, MMRLError
from pretext_tasks.gui_import import (
    OPPOSITE,
    Action,
    ImportOptions,
    Screen,
    Trajectory,
    bytes_screen,
    checked_screen,
    file_screen,
    finger_to_content,
    json_files,
    missing_screen,
    read_json,
    smallest_containing,
)
from pretext_tasks.gui_pairs import CONTENT

AITW_TAP_DISTANCE = 0.04
"""AITW: a dual-point gesture whose touch and lift points are at most this far apart (normalised) is a tap."""
AITW_TYPES = {3: "type", 4: "dual_point", 5: "press_back", 6: "press_home", 7: "press_enter", 10: "complete",
              11: "impossible"}  # fmt: skip
ODYSSEY_GRID = 1000.0


# --------------------------------------------------------------------------------------------------
# AndroidControl


def _bounds(node: Mapping[str, Any]) -> list[float] | None:
    """A node's boundsInScreen as [left, top, right, bottom]; protobuf's JSON form omits fields equal to 0."""
    b = node.get("boundsInScreen") or node.get("bounds_in_screen")
    if not isinstance(b, Mapping):
        return None
    vals = [b.get(key, 0) for key in ("left", "top", "right", "bottom")]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in vals):
        return None
    return [float(v) for v in vals]


def _forest_boxes(forest: Any) -> list[list[float]]:
    """Every node's bounds of one AndroidAccessibilityForest in JSON form: {"windows": [{"tree": {"nodes"}}]}."""
    out = []
    windows = forest.get("windows", []) if isinstance(forest, Mapping) else []
    for window in windows if isinstance(windows, list) else []:
        nodes = (window.get("tree") or {}).get("nodes", []) if isinstance(window, Mapping) else []
        for node in nodes if isinstance(nodes, list) else []:
            box = _bounds(node) if isinstance(node, Mapping) else None
            if box is not None and box[2] > box[0] and box[3] > box[1]:
                out.append(box)
    return out


def android_action(raw: Any, forest: Any, options: ImportOptions) -> Action | str:
    """One AndroidControl action (a JSON string) as a canonical action, or the reason it is dropped."""
    try:
        act = json.loads(raw) if isinstance(raw, str) else raw
    except (ValueError, RecursionError):
        return "bad_action_json"
    kind = act.get("action_type") if isinstance(act, Mapping) else None
    if kind in ("click", "long_press"):
        x, y = act.get("x"), act.get("y")
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
            return "bad_point"
        box = smallest_containing((x, y), _forest_boxes(forest))
        if box is None:
            return "no_containing_node"
        return {"action_type": kind, "x": float(x), "y": float(y), "bbox": box}
    if kind == "scroll":
        direction = str(act.get("direction", "")).lower()
        if direction not in OPPOSITE:
            return "bad_direction"
        return {"action_type": "scroll", "direction": OPPOSITE[direction] if options.android_scroll == "finger"
                else direction}  # fmt: skip
    if kind == "open_app":
        return {"action_type": "open_app", "app_name": str(act.get("app_name", ""))}
    if kind in ("input_text", "type"):
        return {"action_type": "input_text", "text": str(act.get("text", ""))}
    if kind in ("navigate_back", "navigate_home", "wait"):
        return {"action_type": kind}
    return f"unsupported_action:{kind}"


def androidcontrol(root: str | Path, options: ImportOptions) -> list[Trajectory]:
    """AndroidControl episodes: JSON files under `root`, each one episode with `episode_id`, `screenshots`
    (image paths relative to the JSON's folder), `screenshot_widths`, `screenshot_heights`,
    `accessibility_trees` (one forest per screenshot, protobuf JSON form) and `actions` (JSON strings, one
    fewer than the screenshots)."""
    out = []
    convention = "androidcontrol" if options.android_scroll == "source" else CONTENT
    for path in json_files(Path(root)):
        ep = read_json(path)
        if not isinstance(ep, Mapping) or not isinstance(ep.get("screenshots"), list):
            raise MMRLError(f"{path}: not an AndroidControl episode (needs episode_id, screenshots, actions)")
        shots, actions = ep["screenshots"], list(ep.get("actions") or [])
        trees = list(ep.get("accessibility_trees") or [])
        screens = [file_screen(path.parent, s, f"{path} screenshot {i}") for i, s in enumerate(shots)]
        sizes = list(zip(ep.get("screenshot_widths") or [], ep.get("screenshot_heights") or []))
        screens = [checked_screen(s, sizes[i] if i < len(sizes) else None) for i, s in enumerate(screens)]
        acts = [android_action(a, trees[i] if i < len(trees) else None, options) for i, a in enumerate(actions)]
        acts += ["missing_action"] * (len(screens) - 1 - len(acts))
        out.append(Trajectory(str(ep.get("episode_id", path.stem)), "androidcontrol", screens, acts, convention))
    return out


# --------------------------------------------------------------------------------------------------
# AITW


def aitw_action(step: Mapping[str, Any], width: int, height: int) -> Action | str:
    """One AITW step's `results/*` as a canonical action, or the reason it is dropped (module docstring)."""
    kind = AITW_TYPES.get(step.get("results/action_type"))
    if kind == "type":
        return {"action_type": "input_text", "text": str(step.get("results/type_action", ""))}
    if kind == "press_back":
        return {"action_type": "navigate_back"}
    if kind == "press_home":
        return {"action_type": "navigate_home"}
    if kind != "dual_point":
        return f"unsupported_action:{kind or step.get('results/action_type')}"
    touch, lift = step.get("results/yx_touch"), step.get("results/yx_lift")
    if not (_pair_of_numbers(touch) and _pair_of_numbers(lift)):
        return "bad_point"
    (ty, tx), (ly, lx) = touch, lift
    if math.hypot(ly - ty, lx - tx) > AITW_TAP_DISTANCE:
        return {"action_type": "scroll", "direction": finger_to_content(lx - tx, ly - ty)}
    x, y = tx * width, ty * height
    flat = step.get("image/ui_annotations_positions") or []
    boxes = [
        [bx * width, by * height, (bx + bw) * width, (by + bh) * height]
        for by, bx, bh, bw in (flat[i : i + 4] for i in range(0, len(flat) - len(flat) % 4, 4))
    ]
    box = smallest_containing((x, y), boxes)
    return "no_containing_box" if box is None else {"action_type": "click", "x": x, "y": y, "bbox": box}


def _pair_of_numbers(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(a, (int, float)) for a in v)


def aitw(root: str | Path, options: ImportOptions) -> list[Trajectory]:
    """AITW steps: JSONL files under `root`, one step per line with the TFRecord's feature names
    (`episode_id`, `step_id`, `image/width`, `image/height`, `image/encoded` as base64 or `image/path` relative
    to the file, `image/ui_annotations_positions`, `results/action_type`, `results/yx_touch`, ...). Steps are
    grouped by episode and ordered by step_id; a missing step id breaks the pairs that would span it."""
    episodes: dict[str, dict[int, tuple[Mapping, Path]]] = {}
    for path in json_files(Path(root), "*.jsonl"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                step = json.loads(line)
                episodes.setdefault(str(step["episode_id"]), {})[int(step["step_id"])] = (step, path, number)
            except (ValueError, RecursionError, KeyError, TypeError):
                raise MMRLError(f"{path} line {number}: not an AITW step (JSON with episode_id, step_id)") from None
    out = []
    for episode_id in sorted(episodes):
        steps = episodes[episode_id]
        ids = range(min(steps), max(steps) + 1)
        screens, acts = [], []
        for sid in ids:
            if sid not in steps:
                screens.append(missing_screen)
                acts.append("missing_step")
                continue
            step, path, number = steps[sid]
            where = f"{path} line {number}"
            if "image/encoded" in step:
                screen = bytes_screen(str(step["image/encoded"]), where)
            else:
                screen = file_screen(path.parent, step.get("image/path"), where)
            w, h = int(step.get("image/width", 0)), int(step.get("image/height", 0))
            screens.append(checked_screen(screen, (w, h)))
            acts.append(aitw_action(step, w, h))
        out.append(Trajectory(episode_id, "aitw", screens, acts[:-1] if acts else []))
    return out


# --------------------------------------------------------------------------------------------------
# GUI Odyssey


def odyssey_action(step: Mapping[str, Any], width: int, height: int, options: ImportOptions) -> Action | str:
    """One GUI Odyssey step (`action`, `info`) as a canonical action, or the reason it is dropped."""
    kind, info = str(step.get("action", "")).upper(), step.get("info")
    sx, sy = width / ODYSSEY_GRID, height / ODYSSEY_GRID
    if kind in ("CLICK", "LONG_PRESS"):
        if not (isinstance(info, list) and info and _pair_of_numbers(info[0])):
            return "bad_point"
        x, y = info[0][0] * sx, info[0][1] * sy
        if options.point_box <= 0:
            return "no_bbox"
        hw, hh = options.point_box * width, options.point_box * height
        box = [max(0.0, x - hw), max(0.0, y - hh), min(float(width), x + hw), min(float(height), y + hh)]
        return {"action_type": "click" if kind == "CLICK" else "long_press", "x": x, "y": y, "bbox": box}
    if kind == "SCROLL":
        if not (isinstance(info, list) and len(info) == 2 and all(_pair_of_numbers(p) for p in info)):
            return "bad_point"
        (x1, y1), (x2, y2) = info
        return {"action_type": "scroll", "direction": finger_to_content((x2 - x1) * sx, (y2 - y1) * sy)}
    if kind == "TYPE":
        return {"action_type": "input_text", "text": str(info if isinstance(info, str) else "")}
    if kind == "BACK":
        return {"action_type": "navigate_back"}
    if kind == "HOME":
        return {"action_type": "navigate_home"}
    return f"unsupported_action:{kind.lower()}"


def guiodyssey(root: str | Path, options: ImportOptions) -> list[Trajectory]:
    """GUI Odyssey: `root/annotations/*.json` (one episode each: `episode_id`, `device_info{w, h}`,
    `step_info` (or `steps`) with `screenshot` file names in `root/screenshots/`, `action`, `info`)."""
    root = Path(root)
    out = []
    for path in json_files(root / "annotations" if (root / "annotations").is_dir() else root):
        ep = read_json(path)
        steps = ep.get("step_info", ep.get("steps")) if isinstance(ep, Mapping) else None
        if not isinstance(steps, list):
            raise MMRLError(f"{path}: not a GUI Odyssey episode (needs step_info with screenshot, action, info)")
        shots = root / "screenshots"
        screens = [file_screen(shots, s.get("screenshot"), f"{path} step {i}") for i, s in enumerate(steps)]
        sizes = [_size_of(screen) for screen in screens]
        acts: list[Action | str] = []
        for step, size in zip(steps[:-1], sizes):
            acts.append("unreadable_image" if size is None else odyssey_action(step, size[0], size[1], options))
        traj = Trajectory(str(ep.get("episode_id", path.stem)), "guiodyssey", screens, acts)
        out.append(traj)
    return out


def _size_of(screen: Screen) -> tuple[int, int] | None:
    """The screenshot's size (normalised points scale with the image actually stored, not `device_info`)."""
    try:
        return screen().size
    except MediaError:
        return None


FORMATS: dict[str, Callable[[str | Path, ImportOptions], list[Trajectory]]] = {
    "androidcontrol": androidcontrol,
    "aitw": aitw,
    "guiodyssey": guiodyssey,
}

__all__ = [
    "AITW_TAP_DISTANCE",
    "FORMATS",
    "aitw",
    "aitw_action",
    "android_action",
    "androidcontrol",
    "guiodyssey",
    "odyssey_action",
]
