"""Importers of GUI trajectory datasets into a pair folder (`pretext_tasks.gui_pairs`), from local files.

    mmrl import-gui --format androidcontrol --in DIR --out PAIRS [--k 1,2] [--max-box-coverage 0.5]

Each importer reads one dataset's published layout (exported to plain files: screenshots as images, records
as JSON; nothing is ever unpickled) into trajectories of screenshots and the action between consecutive ones,
maps every coordinate to canonical pixels (UIShift sheet §9), and writes one pair per (t, k) with the action
of step t. This module holds what they share and `import_gui`; the readers live in `gui_import_mobile` and
`gui_import_web`. Formats and their conversions (docs/uishift.md#importers):

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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from mmrl.errors import MediaError, MMRLError
from mmrl.media import load_image
from pretext_tasks.gui_pairs import CONTENT, PairWriter, action_problem, filter_problem, inside, k_windows

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


def missing_screen() -> Image.Image:
    """The screen of a step missing from its episode: pairs that span it are dropped as `missing_step`."""
    raise MediaError("step missing from the episode")


def checked_screen(screen: Screen, size: Any) -> Screen:
    """`screen`, raising MediaError when the image is not the (W, H) the record states (None: unchecked)."""
    if size is None:
        return screen

    def load() -> Image.Image:
        im = screen()
        if list(im.size) != [int(size[0]), int(size[1])]:
            raise MediaError(f"screenshot is {im.size[0]}x{im.size[1]}, the record says {size[0]}x{size[1]}")
        return im

    return load


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


def import_gui(fmt: str, in_dir: str | Path, out_dir: str | Path, options: ImportOptions | None = None) -> ImportReport:
    """Import the dataset `in_dir` in format `fmt` into the pair folder `out_dir` (module docstring)."""
    from pretext_tasks import gui_import_mobile, gui_import_web

    readers = gui_import_mobile.FORMATS | gui_import_web.FORMATS
    if fmt not in readers:
        raise MMRLError(f"unknown GUI dataset format {fmt!r}; valid: {', '.join(sorted(readers))}")
    options = options or ImportOptions()
    return write_pairs(readers[fmt](Path(in_dir).expanduser(), options), out_dir, options)


__all__ = [
    "ImportOptions",
    "ImportReport",
    "Trajectory",
    "bytes_screen",
    "file_screen",
    "OPPOSITE",
    "finger_to_content",
    "import_gui",
    "checked_screen",
    "json_files",
    "missing_screen",
    "read_json",
    "smallest_containing",
    "write_pairs",
]
