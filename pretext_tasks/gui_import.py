"""Importers of GUI trajectory datasets into a pair folder (`pretext_tasks.gui_pairs`), from local files.

    mmrl import-gui --format androidcontrol --in DIR --out PAIRS [--k 1,2] [--max-box-coverage 0.5]

Each importer reads one dataset's published layout (exported to plain files: screenshots as images, records
as JSON; nothing is ever unpickled) into trajectories of screenshots and the action between consecutive ones,
maps every coordinate to canonical pixels (UIShift sheet §9), and writes one pair per (t, k) with the action
of step t. Formats and their conversions (docs/uishift.md#importers):

    androidcontrol  episode JSONs; abs px (x, y); click bbox = the smallest a11y node whose boundsInScreen
                    {left, top, right, bottom} contains the point (identity)
    aitw            JSONL of steps; points (y, x) in [0, 1], boxes (y, x, h, w) in [0, 1]:
                    x = x_n · W, y = y_n · H, box = [x·W, y·H, (x + w)·W, (y + h)·H]; tap iff the touch-lift
                    distance ≤ 0.04, else a swipe, whose finger direction is turned into the content convention
    guiodyssey      episode JSONs; points on [0, 1000]: x = x_k · W / 1000, y = y_k · H / 1000; no element boxes
    mind2web        task JSONs + full-page screenshots (`pretext_tasks.gui_import_web`)
    browsergym      per-episode step JSONL + screenshots (`pretext_tasks.gui_import_web`)

The sheet's filters (§4) drop clicks without a box, with a zero-area box, a box over `max_box_coverage` of the
screen, or a point outside its box; every dropped pair is counted by reason in the `ImportReport`.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from mmrl.errors import MediaError, MMRLError
from mmrl.media import load_image
from pretext_tasks.gui_pairs import CONTENT, PairWriter, action_problem, filter_problem, inside, k_windows

AITW_TAP_DISTANCE = 0.04
"""AITW: a dual-point gesture whose touch and lift points are at most this far apart (normalised) is a tap."""
AITW_TYPES = {3: "type", 4: "dual_point", 5: "press_back", 6: "press_home", 7: "press_enter", 10: "complete",
              11: "impossible"}  # fmt: skip
ODYSSEY_GRID = 1000.0

Action = dict[str, Any]
Screen = Callable[[], Image.Image]
"""Loads one screenshot (raises MediaError when it cannot)."""


@dataclass
class ImportOptions:
    """What an importer keeps and how it converts."""

    k_values: tuple[int, ...] = (1,)
    """Pairs (S_t, S_t+k) are written for each k."""
    max_box_coverage: float = 0.5
    """Drop a click whose box covers more than this share of the screen (the sheet's 50 % for datasets)."""
    min_box_area: float = 1.0
    """Drop a click whose box is smaller than this many square pixels (zero-area boxes always)."""
    point_in_box: bool = True
    """Drop a click whose point lies outside its box."""
    android_scroll: str = "source"
    """AndroidControl's scroll labels: `source` keeps them tagged `androidcontrol` (their meaning is unverified,
    sheet §2), `finger` inverts them (they name the swipe), `content` takes them as content directions."""
    point_box: float = 0.05
    """GUI Odyssey has no element boxes: a click's box is its point ± this share of the screen's width and
    height (records say `bbox_source: point_tolerance`); 0 drops those clicks."""
    dpr: float = 1.0
    """Mind2Web / BrowserGym: device pixel ratio of the screenshots (screenshot px per CSS px)."""
    viewport: tuple[int, int] = (1280, 720)
    """Mind2Web: the window [W, H] (CSS px) cut from each full-page screenshot around the target element."""

    def __post_init__(self) -> None:
        self.k_values = tuple(int(k) for k in self.k_values)
        if not self.k_values or min(self.k_values) < 1 or len(set(self.k_values)) != len(self.k_values):
            raise MMRLError(f"k values must be distinct integers >= 1, got {self.k_values}")
        if not 0.0 < self.max_box_coverage <= 1.0:
            raise MMRLError(f"max_box_coverage must be in (0, 1], got {self.max_box_coverage}")
        if self.android_scroll not in ("source", "finger", "content"):
            raise MMRLError(f"android_scroll must be source, finger or content, got {self.android_scroll!r}")
        if not 0.0 <= self.point_box < 0.5 or self.dpr <= 0:
            raise MMRLError(f"need 0 <= point_box < 0.5 and dpr > 0, got {self.point_box}, {self.dpr}")


@dataclass
class Trajectory:
    """Screenshots in order and the action between each and the next (an action dict, or why it is dropped)."""

    traj_id: str
    source: str
    screens: list[Screen]
    actions: list[Action | str | None]
    """Action t leads from screen t to t + 1: a dict, the reason it is dropped, or None (no pair starts at t)."""
    scroll_convention: str = CONTENT
    extras: list[dict] = field(default_factory=list)
    """Per screenshot: keys copied into the records of pairs starting there; `url` (a web page's) becomes the
    records' url_before, and the url of the pair's last screen its url_after."""


@dataclass
class ImportReport:
    """What an import wrote: pairs per action type, and dropped pairs by reason."""

    pairs: int = 0
    action_types: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.action_types.items())) or "none"
        drops = ", ".join(f"{k} {v}" for k, v in sorted(self.dropped.items())) or "none"
        return f"{self.pairs} pairs ({kinds}); dropped: {drops}"


def write_pairs(trajectories: Iterable[Trajectory], out_dir: str | Path, options: ImportOptions) -> ImportReport:
    """Write the pairs of every trajectory (for each k) into the pair folder `out_dir`, filters applied."""
    report = ImportReport()
    with PairWriter(out_dir) as writer:
        for traj in trajectories:
            cache: dict[int, Image.Image | None] = {}

            def screen(i: int, traj: Trajectory = traj, cache: dict = cache) -> Image.Image | None:
                if i not in cache:
                    try:
                        cache[i] = traj.screens[i]()
                    except MediaError:
                        cache[i] = None
                return cache[i]

            for t, k in k_windows(len(traj.screens), options.k_values):
                if traj.actions[t] is None:  # not a pair start of this trajectory (a Mind2Web window piece)
                    continue
                reason = _pair_problem(traj, t, k, screen, options)
                if reason:
                    report.dropped[reason] += 1
                    continue
                action = traj.actions[t]
                record = {"id": f"{traj.source}-{traj.traj_id}-{t}-k{k}", "source": traj.source,
                          "traj_id": traj.traj_id, "step": t, "k": k, "action": action}  # fmt: skip
                if action["action_type"] == "scroll":
                    record["scroll_convention"] = traj.scroll_convention
                extra = dict(traj.extras[t]) if t < len(traj.extras) else {}
                if "url" in extra:
                    record["url_before"] = extra.pop("url")
                    record["url_after"] = traj.extras[t + k].get("url") if t + k < len(traj.extras) else None
                record |= extra
                name = f"{traj.source}/{_safe(traj.traj_id)}"
                writer.add(record, (f"{name}/{t}", screen(t)), (f"{name}/{t + k}", screen(t + k)))
                report.pairs += 1
                report.action_types[action["action_type"]] += 1
    return report


def _pair_problem(traj: Trajectory, t: int, k: int, screen: Callable, options: ImportOptions) -> str | None:
    action = traj.actions[t]
    if isinstance(action, str):
        return action
    if any(traj.screens[i] is missing_screen for i in range(t, t + k + 1)):
        return "missing_step"
    before, after = screen(t), screen(t + k)
    if before is None or after is None:
        return "unreadable_image"
    if before.size != after.size:
        return "screen_size_changed"
    return action_problem(action, before.size) or filter_problem(
        action, before.size, max_box_coverage=options.max_box_coverage, min_box_area=options.min_box_area,
        point_in_bbox=options.point_in_box,
    )  # fmt: skip


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))[:80] or "_"


def file_screen(root: Path, value: Any, where: str) -> Screen:
    """A loader of the screenshot at `root / value` (a relative path that must stay inside `root`)."""
    path = root / inside(root, value, where)
    return lambda: load_image(path)


def bytes_screen(data: str, where: str) -> Screen:
    """A loader of a base64-encoded image (TFRecord exports keep `image/encoded` as bytes)."""

    def load() -> Image.Image:
        try:
            with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as im:
                return im.convert("RGB")
        except Exception as e:  # binascii.Error, PIL's OSError...
            raise MediaError(f"{where}: cannot decode image/encoded ({e})") from e

    return load


def json_files(root: Path, pattern: str = "*.json") -> list[Path]:
    """The files matching `pattern` under `root` (any depth, sorted); MMRLError when there are none."""
    if not root.is_dir():
        raise MMRLError(f"import source {root} is not a folder")
    found = sorted(p for p in root.rglob(pattern) if p.is_file())
    if not found:
        raise MMRLError(f"{root} holds no {pattern} files")
    return found


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise MMRLError(f"cannot read {path} as JSON: {e}") from None


def smallest_containing(point: Sequence[float], boxes: Iterable[Sequence[float]]) -> list[float] | None:
    """The smallest-area box [x1, y1, x2, y2] that contains `point` (edges inclusive), None if none does."""
    x, y = point
    best, best_area = None, math.inf
    for b in boxes:
        area = (b[2] - b[0]) * (b[3] - b[1])
        if b[0] <= x <= b[2] and b[1] <= y <= b[3] and area < best_area:
            best, best_area = [float(v) for v in b], area
    return best


def finger_to_content(dx: float, dy: float) -> str:
    """The content-convention direction of a finger swipe by (dx, dy) (screen axes, y down): the main axis
    wins, and the content direction is the opposite of the finger's (a swipe up reveals content below)."""
    if abs(dy) >= abs(dx):
        return "down" if dy < 0 else "up"
    return "right" if dx < 0 else "left"


OPPOSITE = {"up": "down", "down": "up", "left": "right", "right": "left"}


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
        screens = [_checked(s, sizes[i] if i < len(sizes) else None) for i, s in enumerate(screens)]
        acts = [android_action(a, trees[i] if i < len(trees) else None, options) for i, a in enumerate(actions)]
        acts += ["missing_action"] * (len(screens) - 1 - len(acts))
        out.append(Trajectory(str(ep.get("episode_id", path.stem)), "androidcontrol", screens, acts, convention))
    return out


def _checked(screen: Screen, size: Any) -> Screen:
    """`screen`, raising MediaError when the image is not the size the record states."""
    if size is None:
        return screen

    def load() -> Image.Image:
        im = screen()
        if list(im.size) != [int(size[0]), int(size[1])]:
            raise MediaError(f"screenshot is {im.size[0]}x{im.size[1]}, the record says {size[0]}x{size[1]}")
        return im

    return load


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
            screens.append(_checked(screen, (w, h)))
            acts.append(aitw_action(step, w, h))
        out.append(Trajectory(episode_id, "aitw", screens, acts[:-1] if acts else []))
    return out


def missing_screen() -> Image.Image:
    """The screen of a step missing from its episode: pairs that span it are dropped as `missing_step`."""
    raise MediaError("step missing from the episode")


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


def import_gui(fmt: str, in_dir: str | Path, out_dir: str | Path, options: ImportOptions | None = None) -> ImportReport:
    """Import the dataset `in_dir` in format `fmt` into the pair folder `out_dir` (module docstring)."""
    from pretext_tasks import gui_import_web

    readers = FORMATS | gui_import_web.FORMATS
    if fmt not in readers:
        raise MMRLError(f"unknown GUI dataset format {fmt!r}; valid: {', '.join(sorted(readers))}")
    options = options or ImportOptions()
    return write_pairs(readers[fmt](Path(in_dir).expanduser(), options), out_dir, options)


__all__ = [
    "AITW_TAP_DISTANCE",
    "FORMATS",
    "ImportOptions",
    "ImportReport",
    "Trajectory",
    "aitw",
    "aitw_action",
    "android_action",
    "androidcontrol",
    "bytes_screen",
    "file_screen",
    "finger_to_content",
    "guiodyssey",
    "import_gui",
    "json_files",
    "odyssey_action",
    "read_json",
    "smallest_containing",
    "write_pairs",
]
