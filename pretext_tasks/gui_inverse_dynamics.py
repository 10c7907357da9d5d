"""`gui_inverse_dynamics` (UIShift / GUI-Shift): two screenshots, before and after; the answer is the first action.

Source items are the records of a pair folder (`pretext_tasks.gui_pairs`): `source: path/to/pairs` (a pair
folder or a folder of them; `mmrl import-gui` writes one from AndroidControl, AITW, GUI Odyssey, Mind2Web or
BrowserGym files) or `source: default`, the pairs the web explorer collects from the small web apps shipped in
`data/webapps/` (`mmrl.web_explorer.default_pairs`, built once into the cache).

Prompt (UIShift sheet §5, our words): both screenshots first, then: what they show (one action, or k actions
for k > 1, of which the first is asked), the screenshot size and coordinate convention of the model's family
(`rewards.boxes`), the eight action types with their JSON shapes, the scroll convention, and the exact reply
`<answer>{"action_type": ...}</answer>` with an example. Reward (`rewards.gui.gui_reward`):
score = (format + action) / 2, action = type-gated match (click / long_press: the point inside the box).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image, ImageDraw

from mmrl.config import ModelConfig, default_cache_dir, to_dict
from mmrl.contracts import Reward
from mmrl.errors import ConfigError, MMRLError, SkipItem
from mmrl.media import load_image
from mmrl.sample import Sample
from mmrl.task import PANEL_MAX_WIDTH, Panel, Task
from pretext_tasks import evidence
from pretext_tasks.base import answer_instruction, degenerate
from pretext_tasks.gui_pairs import CONTENT, PairItem, filter_problem, pair_folders, read_pairs
from rewards.boxes import COORD_FAMILIES, CoordFamily, meta_frame, model_size
from rewards.extract import AnswerMode, check_mode, wrap_answer
from rewards.gui import (
    ACTION_TYPES,
    POINT_ACTIONS,
    SCROLL_DIRECTIONS,
    TEXT_MATCHES,
    TextMatch,
    action_text,
    gui_reward,
    model_point_for,
)

if TYPE_CHECKING:
    from mmrl.corpus import Corpus

NAME = "gui_inverse_dynamics"
_DEFAULT_MODEL = ModelConfig()
SHAPES = {
    "click": '{"action_type": "click", "x": X, "y": Y}',
    "long_press": '{"action_type": "long_press", "x": X, "y": Y}',
    "input_text": '{"action_type": "input_text", "text": "..."}',
    "scroll": '{"action_type": "scroll", "direction": "up|down|left|right"}',
    "open_app": '{"action_type": "open_app", "app_name": "..."}',
    "navigate_back": '{"action_type": "navigate_back"}',
    "navigate_home": '{"action_type": "navigate_home"}',
    "wait": '{"action_type": "wait"}',
}
"""Each action type's JSON shape, as the prompt lists them (GUI-Shift's eight types)."""
RANDOM_WORDS = ("hello", "search", "settings", "new item", "alice@example.com", "42")
RANDOM_APPS = ("Clock", "Camera", "Chrome", "Settings", "Gmail", "Maps")


@dataclass
class GuiInverseDynamicsParams:
    k: tuple[int, ...] = (1,)
    """Action distances used: a record is a source item when its `k` (after = before + k actions) is listed."""
    coords: CoordFamily = "qwen2.5-vl"
    """Coordinate convention of the prompt and the reply: `qwen2.5-vl` (pixels of the image after the processor's
    resize), `qwen2-vl` or `qwen3-vl` (integers on a 0-1000 grid). Match it to the model."""
    min_pixels: int = _DEFAULT_MODEL.min_pixels
    """Pixel budget's lower bound the model's processor resizes with (`model.min_pixels`; must match it)."""
    max_pixels: int = _DEFAULT_MODEL.max_pixels
    """Pixel budget's upper bound the model's processor resizes with (`model.max_pixels`; must match it)."""
    max_side: int = 1280
    """Screenshots whose longer side exceeds this are downscaled (Lanczos) before the processor sees them; the
    action's point and box are scaled by exactly the same factors."""
    text_match: TextMatch = "exact"
    """input_text: `exact` (equal after normalisation, as the paper) or `f1` (token F1 >= f1_threshold)."""
    f1_threshold: float = 0.5
    """Least token F1 of an input_text reply that counts with `text_match: f1`."""
    allow_untagged: bool = False
    """Read the action from the whole reply when it has no <answer> block (the released parser); format is 0."""
    answer_mode: AnswerMode = "answer_tag"
    """Reply format: `answer_tag` (<answer>{...}</answer>), `boxed` or `raw`."""
    max_box_coverage: float = 0.5
    """Skip a click whose box covers more of the screenshot than this share (the sheet's 50 %)."""
    min_box_area: float = 1.0
    """Skip a click whose box is smaller than this many square pixels (zero-area boxes always)."""
    require_point_in_box: bool = True
    """Skip a click whose logged point lies outside its box."""
    default_pairs: int = 200
    """`source: default`: how many pairs the web explorer collects from the shipped web apps."""
    default_seed: int = 0
    """`source: default`: the explorer's seed (same seed, same pairs)."""

    def __post_init__(self) -> None:
        self.k = tuple(int(v) for v in (self.k if isinstance(self.k, (list, tuple)) else (self.k,)))
        if not self.k or min(self.k) < 1 or max(self.k) > 10 or len(set(self.k)) != len(self.k):
            raise ConfigError(f"{NAME}: k must be distinct integers in [1, 10], got {list(self.k)}")
        if self.coords not in COORD_FAMILIES:
            raise ConfigError(f"{NAME}: coords must be one of {', '.join(COORD_FAMILIES)}, got {self.coords!r}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ConfigError(f"{NAME}: need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        if self.max_side < 64:
            raise ConfigError(f"{NAME}: max_side must be >= 64, got {self.max_side}")
        if self.text_match not in TEXT_MATCHES:
            raise ConfigError(f"{NAME}: text_match must be one of {', '.join(TEXT_MATCHES)}, got {self.text_match!r}")
        if not 0.0 < self.f1_threshold <= 1.0:
            raise ConfigError(f"{NAME}: f1_threshold must be in (0, 1], got {self.f1_threshold}")
        check_mode(self.answer_mode)
        if not 0.0 < self.max_box_coverage <= 1.0:
            raise ConfigError(f"{NAME}: max_box_coverage must be in (0, 1], got {self.max_box_coverage}")
        if self.max_box_coverage > 0.5:
            raise degenerate(
                NAME, f"max_box_coverage = {self.max_box_coverage}",
                "a click box over half the screen is hit by a click at its centre however the screens look, "
                "so such pairs reward not looking",
                "keep it at most 0.5",
            )  # fmt: skip
        if self.min_box_area < 0 or self.default_pairs < 1:
            raise ConfigError(f"{NAME}: need min_box_area >= 0 and default_pairs >= 1")


def point_sentence(coords: str, image_size: Sequence[int]) -> str:
    """How the reply states a point in the family's convention (the point form of
    `pretext_tasks.grounding.coordinate_sentence`); `image_size` is the screenshot as the model sees it."""
    w, h = image_size
    if coords == "qwen2.5-vl":
        return (
            f"Both screenshots are {w}x{h} pixels as you see them; points (x, y) are in those pixels, x to the "
            "right and y down from the top-left corner."
        )
    return (
        f"Both screenshots are {w}x{h} pixels as you see them, but points (x, y) are integers on a 0-1000 grid "
        "over them: 0 is the left or top edge, 1000 the right or bottom edge."
    )


def prompt_text(params: GuiInverseDynamicsParams, meta: dict[str, Any]) -> str:
    """The question (sheet §5): depends on the screen size, k and the parameters, never on the answer."""
    k = meta["k"]
    if k == 1:
        what = (
            "The first image is a screenshot of an app or web page; the second is the same screen right after one "
            "GUI action. Which action caused the change?"
        )
    else:
        what = (
            f"The first image is a screenshot of an app or web page; the second is the screen after {k} "
            "consecutive GUI actions. Which action came first?"
        )
    frame = point_sentence(meta["coords"], meta["model_size"])
    shapes = "; ".join(SHAPES[t] for t in ACTION_TYPES)
    fx, fy = meta_frame(meta)
    example = wrap_answer(
        f'{{"action_type": "click", "x": {round(0.3 * fx)}, "y": {round(0.6 * fy)}}}', params.answer_mode
    )
    return (
        f"{what} {frame} Possible actions, one JSON object each: {shapes}. A scroll's direction is the way the "
        "view moves over the content: down shows what lies further down. "
        f"{answer_instruction(params.answer_mode, 'one JSON action')} For example: {example}"
    )


@dataclass
class GuiInverseDynamics(Task):
    """Given the screens before and after, name the first GUI action (UIShift's inverse dynamics)."""

    Params: ClassVar[type[GuiInverseDynamicsParams]] = GuiInverseDynamicsParams
    name: ClassVar[str] = NAME
    params: GuiInverseDynamicsParams = field(default_factory=GuiInverseDynamicsParams)
    """Prompt, filter and reward parameters."""

    @staticmethod
    def import_dataset(fmt: str, in_dir: str | Path, out_dir: str | Path, **options: Any) -> Any:
        """Convert a GUI dataset in its published layout into a pair folder this task reads (`mmrl import-gui`
        reaches the importers through here, by the task's name): `pretext_tasks.gui_import.import_gui` with
        `ImportOptions(**options)`; returns its report."""
        from pretext_tasks.gui_import import ImportOptions, import_gui

        return import_gui(fmt, in_dir, out_dir, ImportOptions(**options))

    def sources(self, corpus: Corpus | str | Path | None = None) -> Sequence[PairItem]:
        """The records of a pair folder (or of every pair folder under a folder) whose k is asked; for the
        default corpus (or None), the explorer's pairs of the shipped web apps."""
        if isinstance(corpus, (str, Path)) and str(corpus) != "default":
            folders = pair_folders(corpus)
        else:
            folders = [self._default_folder()]
        items, skipped = [], Counter()
        for folder in folders:
            read = read_pairs(folder)
            items += [item for item in read.items if item.record["k"] in self.params.k]
            skipped.update(read.skipped)
        if not items:
            detail = f" (skipped: {dict(skipped)})" if skipped else ""
            raise MMRLError(f"{NAME}: no pair with k in {list(self.params.k)} under {corpus}{detail}")
        return items

    def _default_folder(self) -> Path:
        try:
            from mmrl.web_explorer import default_pairs  # the explorer: only when `default` is asked for
        except ImportError as e:
            raise MMRLError(
                f"{NAME}: `source: default` needs the web explorer, whose browser driver is not installed here "
                f"({e}): run scripts/setup.sh (playwright and Debian's chromium), or pass a pair folder instead "
                "(mmrl import-gui writes one)"
            ) from None
        p = self.params
        return Path(default_pairs(default_cache_dir(), seed=p.default_seed, n=p.default_pairs,
                                  k_values=p.k))  # fmt: skip

    def make(self, source_item: PairItem, rng: np.random.Generator) -> Sample:
        p, record = self.params, source_item.record
        before, after = load_image(source_item.before), load_image(source_item.after)
        size = [int(v) for v in record["viewport"]]
        if list(before.size) != size or list(after.size) != size:
            raise SkipItem("size_mismatch", f"{source_item.before}: {before.size}, record viewport {size}")
        action = dict(record["action"])
        if action["action_type"] == "scroll" and record.get("scroll_convention", CONTENT) != CONTENT:
            raise SkipItem(
                "scroll_convention_unverified", f"scroll labelled in the {record['scroll_convention']} convention"
            )
        problem = filter_problem(action, size, max_box_coverage=p.max_box_coverage, min_box_area=p.min_box_area,
                                 point_in_bbox=p.require_point_in_box)  # fmt: skip
        if problem:
            raise SkipItem(problem, f"pair {record['id']}")
        scale = min(1.0, p.max_side / max(size))
        if scale < 1.0:
            new = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
            sx, sy = new[0] / size[0], new[1] / size[1]
            before = before.resize(new, Image.Resampling.LANCZOS)
            after = after.resize(new, Image.Resampling.LANCZOS)
            action = _scaled(action, sx, sy)
        w, h = before.size
        meta: dict[str, Any] = {
            "params": to_dict(p),
            "image_size": [w, h],
            "original_size": size,
            "coords": p.coords,
            "model_size": model_size([w, h], p.coords, p.min_pixels, p.max_pixels),
            "answer_mode": p.answer_mode,
            "k": int(record["k"]),
            "action_type": action["action_type"],
            "split": action["action_type"],
            "source": record["source"],
            "pair_id": record["id"],
        }
        if action["action_type"] in POINT_ACTIONS and model_point_for(action, meta) is None:
            raise SkipItem("box_below_model_resolution", f"pair {record['id']}: no model point falls in the box")
        tag = int(rng.integers(2**63))
        content = [{"type": "image", "image": before}, {"type": "image", "image": after},
                   {"type": "text", "text": prompt_text(p, meta)}]  # fmt: skip
        return Sample(f"{NAME}-{record['id']}-{tag:016x}", NAME, [{"role": "user", "content": content}], action, meta)

    def reward(self, completion: str, sample: Sample) -> Reward:
        """`rewards.gui.gui_reward`: (format + action) / 2, parts format, action, accuracy, exact."""
        p = self.params
        return gui_reward(completion, sample.answer, sample.meta, mode=self.answer_mode(sample),
                          text_match=p.text_match, f1_threshold=p.f1_threshold,
                          allow_untagged=p.allow_untagged)  # fmt: skip

    def reference_completion(self, sample: Sample) -> str:
        """The logged action in the sample's model coordinates (a click at an integer point inside the box)."""
        return wrap_answer(action_text(sample.answer, sample.meta), self.answer_mode(sample))

    def random_answer(self, sample: Sample, rng: np.random.Generator) -> str:
        """An action of a type drawn uniformly from the eight, with uniform parameters (point in the frame)."""
        kind = ACTION_TYPES[int(rng.integers(len(ACTION_TYPES)))]
        fw, fh = meta_frame(sample.meta)
        action: dict[str, Any] = {"action_type": kind}
        if kind in POINT_ACTIONS:
            action |= {"x": int(rng.integers(int(fw) + 1)), "y": int(rng.integers(int(fh) + 1))}
        elif kind == "scroll":
            action["direction"] = SCROLL_DIRECTIONS[int(rng.integers(len(SCROLL_DIRECTIONS)))]
        elif kind == "input_text":
            action["text"] = RANDOM_WORDS[int(rng.integers(len(RANDOM_WORDS)))]
        elif kind == "open_app":
            action["app_name"] = RANDOM_APPS[int(rng.integers(len(RANDOM_APPS)))]
        return wrap_answer(action_text(action), self.answer_mode(sample))

    def constant_answer(self, sample: Sample) -> str:
        """A click at the centre of the frame: clicks are most of every source (89 % of UIShift's set, about 85 %
        of explored web steps), and the centre is the point that the most click boxes can contain."""
        fw, fh = meta_frame(sample.meta)
        return wrap_answer(action_text({"action_type": "click", "x": round(fw / 2), "y": round(fh / 2)}),
                           self.answer_mode(sample))  # fmt: skip

    def evidence(self, sample: Sample) -> list[Panel]:
        """Before and after side by side; on the before screen the click box (green) and the point (red)."""
        shots = evidence.images(sample)[:2]
        if len(shots) != 2:
            return []
        half = (PANEL_MAX_WIDTH - evidence.GAP) // 2
        before = evidence.fit(shots[0], half, 480)
        scale = before.width / shots[0].width
        a = sample.answer
        if a.get("action_type") in POINT_ACTIONS:
            before = before.copy()
            draw = ImageDraw.Draw(before)
            if "bbox" in a:
                draw.rectangle([v * scale for v in a["bbox"]], outline=(0, 170, 0), width=2)
            x, y, r = a["x"] * scale, a["y"] * scale, 4
            draw.ellipse([x - r, y - r, x + r, y + r], outline=(220, 0, 0), width=2)
        pair = evidence.row([evidence.captioned(before, "before", above=True),
                             evidence.captioned(evidence.fit(shots[1], half, 480), "after", above=True)])  # fmt: skip
        return [Panel(f"first action: {action_text(a)}", pair)]


def _scaled(action: dict[str, Any], sx: float, sy: float) -> dict[str, Any]:
    """A canonical action on a screenshot resized by (sx, sy): x' = x·sx, y' = y·sy, box corners alike."""
    if action["action_type"] not in POINT_ACTIONS:
        return action
    out = action | {"x": action["x"] * sx, "y": action["y"] * sy}
    if "bbox" in action:
        x1, y1, x2, y2 = action["bbox"]
        out["bbox"] = [x1 * sx, y1 * sy, x2 * sx, y2 * sy]
    return out


__all__ = ["GuiInverseDynamics", "GuiInverseDynamicsParams", "prompt_text"]
