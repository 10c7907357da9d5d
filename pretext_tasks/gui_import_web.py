"""Importers of web trajectory datasets (Mind2Web, BrowserGym traces) into a pair folder.

Both give element-level ground truth in CSS pixels; the canonical action is a click at the element box's
centre with that box (UIShift sheet §9):

    mind2web    box "x,y,w,h" in CSS px of the FULL page (`bounding_box_rect`; "-1,-1,-1,-1" = not rendered).
                Screenshots are full-page captures (screenshot px = CSS px · dpr). A viewport window of
                W x H CSS px is cut from both screenshots of a pair: the window a reader scrolling by whole
                screens would see the element in, scroll offset oy = H · floor(y / H) (clamped to the page):
                    box = ([x, y − oy, x + w, y + h − oy] clipped to the window) · dpr
    browsergym  `extra_element_properties[bid].bbox` = [x, y, w, h] CSS px of the viewport:
                    box = [x, y, x + w, y + h] · dpr, clipped to the screenshot

Mind2Web's CLICK becomes click, TYPE input_text (the value); SELECT and the HOVER / ENTER original ops have no
counterpart among the eight action types and are dropped. BrowserGym's click(bid), fill(bid, text),
scroll(dx, dy) (wheel: dy > 0 reveals content below, `down`) and go_back() are kept; other actions and steps
holding several actions are dropped. Action strings are read with `ast` as literals only, never evaluated.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from mmrl.errors import MMRLError
from pretext_tasks.gui_import import Action, ImportOptions, Screen, Trajectory, file_screen, json_files, read_json
from pretext_tasks.gui_pairs import inside

# --------------------------------------------------------------------------------------------------
# Mind2Web


def rect(value: Any) -> list[float] | None:
    """Mind2Web's `bounding_box_rect` "x,y,w,h" as [x, y, w, h]; None when missing, malformed or not rendered."""
    try:
        nums = [float(v) for v in str(value).split(",")]
    except ValueError:
        return None
    if len(nums) != 4 or not all(math.isfinite(v) for v in nums) or nums[2] <= 0 or nums[3] <= 0 or nums[0] < 0:
        return None
    return nums


def _attributes(candidate: Any) -> Mapping[str, Any]:
    """A candidate's `attributes`: Mind2Web stores them as a JSON *string*; a mapping is taken as is."""
    attrs = candidate.get("attributes") if isinstance(candidate, Mapping) else None
    if isinstance(attrs, str):
        try:
            attrs = json.loads(attrs)
        except (ValueError, RecursionError):
            return {}
    return attrs if isinstance(attrs, Mapping) else {}


def mind2web_window(css_box: list[float], page_height: float, viewport: tuple[int, int]) -> tuple[float, float]:
    """The scroll offset (ox, oy) in CSS px of the window the element is shown in (module docstring)."""
    oy = viewport[1] * math.floor(css_box[1] / viewport[1])
    return 0.0, max(0.0, min(oy, page_height - viewport[1]))


def mind2web_action(action: Mapping[str, Any], dpr: float, viewport: tuple[int, int], page_height: float):
    """(canonical action in the window, scroll offset in CSS px), or (reason, None)."""
    op = action.get("operation") if isinstance(action.get("operation"), Mapping) else {}
    kind = str(op.get("original_op") or op.get("op") or "").upper()
    if kind not in ("CLICK", "TYPE"):
        return f"unsupported_action:{kind.lower() or 'none'}", None
    boxes = [rect(_attributes(c).get("bounding_box_rect")) for c in action.get("pos_candidates") or []]
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return "element_not_rendered", None
    x, y, w, h = boxes[0]
    offset = mind2web_window([x, y, w, h], page_height, viewport)
    x1, y1 = max(0.0, x - offset[0]), max(0.0, y - offset[1])
    x2, y2 = min(float(viewport[0]), x + w - offset[0]), min(float(viewport[1]), y + h - offset[1])
    if x2 <= x1 or y2 <= y1:
        return "element_outside_viewport", None
    if kind == "TYPE":
        return {"action_type": "input_text", "text": str(op.get("value", ""))}, offset
    box = [x1 * dpr, y1 * dpr, x2 * dpr, y2 * dpr]
    return {"action_type": "click", "x": (box[0] + box[2]) / 2, "y": (box[1] + box[3]) / 2, "bbox": box}, offset


def _window(screen: Screen, offset: tuple[float, float], viewport: tuple[int, int], dpr: float) -> Screen:
    def load() -> Image.Image:
        page = screen()
        left, top = round(offset[0] * dpr), round(offset[1] * dpr)
        right, bottom = left + round(viewport[0] * dpr), top + round(viewport[1] * dpr)
        if right > page.width or bottom > page.height:  # a short page: pad like an empty viewport would show
            canvas = Image.new("RGB", (max(right, page.width), max(bottom, page.height)), (255, 255, 255))
            canvas.paste(page, (0, 0))
            page = canvas
        return page.crop((left, top, right, bottom))

    return load


def mind2web(root: str | Path, options: ImportOptions) -> list[Trajectory]:
    """Mind2Web tasks: JSON files under `root` holding a task or a list of tasks (`annotation_id`, `actions[]`
    with `action_uid`, `operation`, `pos_candidates`), full-page before-screenshots at
    `root/screenshots/<annotation_id>/<action_uid>.png`. Each pair's window follows its own action, so every
    pair is its own trajectory piece: (S_t, S_t+k) cut at step t's window."""
    root = Path(root)
    out = []
    for path in json_files(root):
        if path.is_relative_to(root / "screenshots"):
            continue
        tasks = read_json(path)
        for task in tasks if isinstance(tasks, list) else [tasks]:
            if not isinstance(task, Mapping) or not isinstance(task.get("actions"), list):
                raise MMRLError(f"{path}: not a Mind2Web task (needs annotation_id and actions)")
            out.extend(_mind2web_task(root, path, task, options))
    return out


def _mind2web_task(root: Path, path: Path, task: Mapping[str, Any], options: ImportOptions) -> list[Trajectory]:
    aid = str(task.get("annotation_id", path.stem))
    actions = task["actions"]
    pages = [
        file_screen(root, f"screenshots/{aid}/{a.get('action_uid')}.png", f"{path} task {aid} action {i}")
        for i, a in enumerate(actions)
    ]
    out = []
    for t, action in enumerate(actions[:-1]):
        # One trajectory per step t: the window depends on the element of step t, and a later pair (t, t+k)
        # must be cut at that same window; its screens t..t+k are all cut there.
        try:
            height = _page_height(pages[t]) / options.dpr
        except MMRLError:
            height = None
        if height is None:
            acts: list[Action | str | None] = ["unreadable_image"]
            offset = None
        else:
            act, offset = mind2web_action(action, options.dpr, options.viewport, height)
            acts = [act]
        span = max(options.k_values)
        shown = pages[t : t + span + 1]
        screens = [_window(s, offset, options.viewport, options.dpr) for s in shown] if offset else shown
        acts += [None] * (len(screens) - 1 - len(acts))
        extras = [{"scroll_offset": list(offset), "dpr": options.dpr}] if offset else []
        out.append(Trajectory(f"{aid}-{t}", "mind2web", screens, acts, extras=extras))
    return out


def _page_height(screen: Screen) -> float:
    from mmrl.errors import MediaError

    try:
        return float(screen().height)
    except MediaError as e:
        raise MMRLError(str(e)) from None


# --------------------------------------------------------------------------------------------------
# BrowserGym


def parse_call(text: str) -> tuple[str, list[Any]] | None:
    """`name(arg, ...)` of one BrowserGym action string with literal arguments, else None (never evaluated)."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        return None
    try:
        args = [ast.literal_eval(a) for a in call.args]
    except (ValueError, SyntaxError, RecursionError):
        return None
    return call.func.id, args


def browsergym_action(text: Any, properties: Mapping[str, Any], size: tuple[int, int], dpr: float) -> Action | str:
    """One BrowserGym action string as a canonical action, or the reason it is dropped (module docstring)."""
    if not isinstance(text, str) or not text.strip():
        return "no_action"
    lines = [line for line in text.strip().splitlines() if line.strip() and not line.strip().startswith("#")]
    if len(lines) != 1:
        return "multi_action"
    parsed = parse_call(lines[0])
    if parsed is None:
        return "bad_action"
    name, args = parsed
    if name == "go_back" and not args:
        return {"action_type": "navigate_back"}
    if name == "scroll" and len(args) == 2 and all(isinstance(a, (int, float)) for a in args):
        dx, dy = args
        if dx == dy == 0:
            return "empty_scroll"
        direction = ("down" if dy > 0 else "up") if abs(dy) >= abs(dx) else ("right" if dx > 0 else "left")
        return {"action_type": "scroll", "direction": direction}
    if name == "fill" and len(args) == 2 and isinstance(args[1], str):
        return {"action_type": "input_text", "text": args[1]}
    if name == "click" and args and isinstance(args[0], str):
        prop = properties.get(args[0]) if isinstance(properties, Mapping) else None
        bbox = prop.get("bbox") if isinstance(prop, Mapping) else None
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            return "element_not_rendered"
        if float(prop.get("visibility", 1.0)) < 0.5:
            return "element_not_visible"
        x, y, w, h = (float(v) * dpr for v in bbox)
        box = [max(0.0, x), max(0.0, y), min(float(size[0]), x + w), min(float(size[1]), y + h)]
        if box[2] <= box[0] or box[3] <= box[1]:
            return "element_outside_viewport"
        return {"action_type": "click", "x": (box[0] + box[2]) / 2, "y": (box[1] + box[3]) / 2, "bbox": box}
    return f"unsupported_action:{name}"


def browsergym(root: str | Path, options: ImportOptions) -> list[Trajectory]:
    """BrowserGym traces: each folder under `root` holding `steps.jsonl` is one episode; a line is one step
    (`step`, `url`, `screenshot` relative to the folder, default `screenshot_step_<step>.png`, `action` taken
    from that screen, `extra_element_properties`, optional `device_pixel_ratio`)."""
    out = []
    for path in json_files(Path(root), "steps.jsonl"):
        folder, steps = path.parent, []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    steps.append(json.loads(line))
                except (ValueError, RecursionError):
                    raise MMRLError(f"{path} line {number}: not JSON") from None
        steps.sort(key=lambda s: int(s.get("step", 0)) if isinstance(s, Mapping) else 0)
        screens, acts, extras = [], [], []
        for i, step in enumerate(steps):
            where = f"{path} step {step.get('step', i)}"
            shot = step.get("screenshot", f"screenshot_step_{step.get('step', i)}.png")
            screens.append(file_screen(folder, inside(folder, shot, where), where))
            dpr = float(step.get("device_pixel_ratio", options.dpr))
            extras.append({"dpr": dpr} | ({"url": step["url"]} if isinstance(step.get("url"), str) else {}))
            if i + 1 < len(steps):
                try:
                    size = screens[-1]().size
                except Exception:
                    acts.append("unreadable_image")
                    continue
                acts.append(browsergym_action(step.get("action"), step.get("extra_element_properties") or {},
                                              size, dpr))  # fmt: skip
        traj = Trajectory(folder.name, "browsergym", screens, acts, extras=extras)
        out.append(traj)
    return out


FORMATS = {"mind2web": mind2web, "browsergym": browsergym}

__all__ = ["FORMATS", "browsergym", "browsergym_action", "mind2web", "mind2web_action", "parse_call", "rect"]
