"""`dominant_color`: the CartPole of mmrl — which colour covers most of a synthetic image?

A diagnostic task for checking that the whole loop learns at all: it needs no corpus, every answer
is a single short word, the answer is fully determined by the pixels, and a random policy scores
about 1/K on accuracy (K = palette size), so a reward curve that climbs above that proves the
gradient reaches the vision path. A tiny random-init Qwen-VL should learn it with GRPO on a CPU.

The image: a canvas filled with the dominant colour, then distractor rectangles and ellipses in the
other palette colours until they cover about `1 − f` of it (f drawn from `dominant_fraction`), then
a sprinkle of single off-colour pixels (`speckle`) and a little per-pixel intensity noise that
never moves a pixel closer to another palette colour. Images whose dominant colour does not beat
the runner-up by `min_margin` (share of the canvas) are redrawn, so the answer is never ambiguous.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from mmrl.config import to_dict
from mmrl.contracts import Reward
from mmrl.errors import ConfigError
from mmrl.sample import Sample
from mmrl.task import Panel, Task
from pretext_tasks import evidence
from pretext_tasks.base import MIN_ANSWERS, answer_instruction, degenerate, options_text
from rewards.extract import AnswerMode, check_mode, wrap_answer
from rewards.match import exact_match

if TYPE_CHECKING:
    from mmrl.corpus import Corpus

NAME = "dominant_color"

# sRGB values chosen far apart; every name is a word the tiny tokenizer knows.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 30),
    "orange": (245, 130, 20),
    "purple": (130, 50, 170),
    "pink": (245, 140, 190),
    "cyan": (40, 200, 220),
    "brown": (120, 70, 30),
    "black": (20, 20, 20),
    "white": (240, 240, 240),
    "gray": (128, 128, 128),
}

QUESTION = "Which colour covers most of the image"

_COVERAGE_TOLERANCE = 0.01  # patches stop within ±1 % of the canvas of their target coverage
_MAX_PATCH_DRAWS = 400
_MAX_IMAGE_ATTEMPTS = 50


@dataclass
class DominantColorParams:
    palette: tuple[str, ...] = ("red", "green", "blue", "yellow")
    """Colour names the image is painted with and the answer is drawn from (uniformly); names from
    `COLOURS`: red, green, blue, yellow, orange, purple, pink, cyan, brown, black, white, gray. At least 3
    distinct colours: with 1 the answer is constant, with 2 a coin flip (a degenerate setting)."""
    image_size: int = 112
    """Canvas width and height in pixels (112 = 4×28: 16 visual tokens after Qwen's 2×2 merge)."""
    dominant_fraction: tuple[float, float] = (0.55, 0.8)
    """Range of f, the target share of the canvas in the dominant colour; f ~ U(low, high).
    Must satisfy 1/K < low ≤ high ≤ 1 − speckle. Lower values make the task harder."""
    min_margin: float = 0.1
    """Least lead of the dominant colour over the runner-up, as a share of the canvas; images that
    fall short are redrawn."""
    patch_size: tuple[float, float] = (0.1, 0.35)
    """Range of a distractor patch's width and height, as fractions of `image_size`."""
    speckle: float = 0.02
    """Share of pixels recoloured to a random non-dominant colour after the patches (salt noise)."""
    pixel_noise: int = 8
    """Per-channel intensity noise amplitude: each channel moves by an integer in [−a, a]. Must stay
    below half the distance between palette colours divided by √3, so every pixel keeps its colour."""
    answer_mode: AnswerMode = "answer_tag"
    """Reply format asked for and parsed: `answer_tag` (<answer>red</answer>), `boxed` or `raw`."""
    list_options: bool = True
    """Name the palette in the question (the same list, in palette order, for every sample)."""
    system_prompt: str | None = None
    """Optional system message; None sends none (the prompt stays short for tiny models)."""
    num_sources: int = 1_000_000
    """How many source indices `sources()` offers (the task needs no corpus; each index is one sample)."""

    def __post_init__(self) -> None:
        self.palette = tuple(self.palette)
        self.dominant_fraction = (float(self.dominant_fraction[0]), float(self.dominant_fraction[1]))
        self.patch_size = (float(self.patch_size[0]), float(self.patch_size[1]))
        unknown = [c for c in self.palette if c not in COLOURS]
        if unknown:
            raise ConfigError(f"dominant_color: unknown palette colour(s) {unknown}; valid: {', '.join(COLOURS)}")
        if len(set(self.palette)) != len(self.palette):
            raise ConfigError(f"dominant_color: palette colours must be distinct, got {list(self.palette)}")
        if len(self.palette) < MIN_ANSWERS:
            why = {
                0: "there is no colour to answer",
                1: f"the answer would always be {self.palette[0] if self.palette else ''}",
            }.get(len(self.palette), "only 2 answers are possible, so a constant reply is right half the time")
            raise degenerate(NAME, f"palette = {list(self.palette)}", why, f"name at least {MIN_ANSWERS} colours")
        if not 8 <= self.image_size <= 2048:
            raise ConfigError(f"dominant_color: image_size must be in [8, 2048], got {self.image_size}")
        if not 0.0 <= self.speckle < 0.5:
            raise ConfigError(f"dominant_color: speckle must be in [0, 0.5), got {self.speckle}")
        low, high = self.dominant_fraction
        if not 1.0 / len(self.palette) < low <= high <= 1.0 - self.speckle:
            raise ConfigError(
                f"dominant_color: dominant_fraction must satisfy 1/K < low <= high <= 1 - speckle "
                f"(K = {len(self.palette)}, speckle = {self.speckle}), got {self.dominant_fraction}"
            )
        if not 0.0 < self.min_margin < 1.0:
            raise ConfigError(f"dominant_color: min_margin must be in (0, 1), got {self.min_margin}")
        if not 0.0 < self.patch_size[0] <= self.patch_size[1] <= 1.0:
            raise ConfigError(f"dominant_color: patch_size must satisfy 0 < low <= high <= 1, got {self.patch_size}")
        gap = min_colour_distance(self.palette)
        if not 0 <= self.pixel_noise * math.sqrt(3) < gap / 2:
            raise ConfigError(
                f"dominant_color: pixel_noise {self.pixel_noise} would blur palette colours into each other "
                f"(need 0 <= pixel_noise < {gap / 2 / math.sqrt(3):.1f} for this palette)"
            )
        if self.num_sources < 1:
            raise ConfigError(f"dominant_color: num_sources must be >= 1, got {self.num_sources}")
        check_mode(self.answer_mode)


def min_colour_distance(palette: Sequence[str]) -> float:
    """Smallest Euclidean RGB distance between two colours of `palette`."""
    rgb = [np.asarray(COLOURS[c], dtype=float) for c in palette]
    return min(float(np.linalg.norm(a - b)) for a, b in itertools.combinations(rgb, 2))


def prompt_text(params: DominantColorParams) -> str:
    """The question; it depends on the parameters only, never on the sample's answer."""
    question = f"{QUESTION}: {options_text(params.palette)}?" if params.list_options else f"{QUESTION}?"
    return f"{question} {answer_instruction(params.answer_mode, 'colour')}"


def draw_image(params: DominantColorParams, rng: np.random.Generator) -> tuple[Image.Image, dict[str, Any]]:
    """One image and its facts: `dominant` (colour name), measured `colour_fractions`, `margin`, ...

    Every random choice comes from `rng`; `draw_image(params, np.random.default_rng(meta["seed"]))`
    redraws a Sample's image exactly.
    """
    size, palette = params.image_size, params.palette
    dominant = int(rng.integers(len(palette)))
    others = np.array([k for k in range(len(palette)) if k != dominant])
    target = float(rng.uniform(*params.dominant_fraction))
    for _ in range(_MAX_IMAGE_ATTEMPTS):
        labels = np.full((size, size), dominant, dtype=np.uint8)
        # Speckle later recolours about `speckle` of the dominant pixels, so patches leave f / (1 − s).
        patches = _paint_patches(labels, dominant, others, 1.0 - target / (1.0 - params.speckle), params, rng)
        hit = rng.random((size, size)) < params.speckle
        labels[hit] = others[rng.integers(len(others), size=int(hit.sum()))]
        shares = np.bincount(labels.ravel(), minlength=len(palette)) / labels.size
        margin = float(shares[dominant] - shares[others].max())
        if margin >= params.min_margin:
            break
    else:
        raise ConfigError(
            f"dominant_color: no image reached min_margin {params.min_margin} in {_MAX_IMAGE_ATTEMPTS} attempts; "
            "raise dominant_fraction or lower min_margin"
        )
    table = np.array([COLOURS[c] for c in palette], dtype=np.int16)
    noise = rng.integers(-params.pixel_noise, params.pixel_noise + 1, size=(size, size, 3), dtype=np.int16)
    pixels = np.clip(table[labels] + noise, 0, 255).astype(np.uint8)
    facts = {
        "dominant": palette[dominant],
        "target_dominant_fraction": round(target, 4),
        "colour_fractions": {c: round(float(s), 4) for c, s in zip(palette, shares)},
        "margin": round(margin, 4),
        "patches": patches,
    }
    return Image.fromarray(pixels), facts


def _paint_patches(
    labels: np.ndarray,
    dominant: int,
    others: np.ndarray,
    target: float,
    params: DominantColorParams,
    rng: np.random.Generator,
) -> int:
    """Paint rectangles/ellipses of non-dominant colours into `labels` (in place) until they cover
    `target` ± 1 % of the canvas; a patch that would overshoot is skipped. Returns the patch count."""
    size = labels.shape[0]
    low, high = (target - _COVERAGE_TOLERANCE) * labels.size, (target + _COVERAGE_TOLERANCE) * labels.size
    covered, painted = 0, 0
    for _ in range(_MAX_PATCH_DRAWS):
        if covered >= low:
            break
        h, w = np.clip(np.round(size * rng.uniform(*params.patch_size, size=2)), 2, size).astype(int)
        y0, x0 = int(rng.integers(size - h + 1)), int(rng.integers(size - w + 1))
        colour = int(others[rng.integers(len(others))])
        mask = _ellipse_mask(h, w) if rng.random() < 0.5 else np.ones((h, w), dtype=bool)
        region = labels[y0 : y0 + h, x0 : x0 + w]  # a view: writes land in `labels`
        gain = int(np.count_nonzero(mask & (region == dominant)))
        if covered + gain > high:
            continue
        region[mask] = colour
        covered += gain
        painted += 1
    return painted


def _ellipse_mask(h: int, w: int) -> np.ndarray:
    """Pixels of an h×w box inside the inscribed ellipse ((y − cy)/ry)² + ((x − cx)/rx)² ≤ 1."""
    y, x = np.ogrid[:h, :w]
    return ((y + 0.5 - h / 2) / (h / 2)) ** 2 + ((x + 0.5 - w / 2) / (w / 2)) ** 2 <= 1.0


@dataclass
class DominantColorTask(Task):
    """Which palette colour covers most of a synthetic image? Answer: the colour's name."""

    Params: ClassVar[type[DominantColorParams]] = DominantColorParams
    name: ClassVar[str] = NAME
    params: DominantColorParams = field(default_factory=DominantColorParams)
    """The generator and prompt parameters."""

    def sources(self, corpus: Corpus | str | Path | None = None) -> Sequence[int]:
        """Sample indices `0 .. num_sources − 1`; the task draws its own images, so `corpus` is unused."""
        return range(self.params.num_sources)

    def make(self, source_item: int, rng: np.random.Generator) -> Sample:
        """The Sample for index `source_item`: one image and the question; answer = dominant colour name.

        One seed is drawn from `rng` and stored in `meta["seed"]`; the image comes from a generator
        seeded with it, so the image can be redrawn from the Sample alone.
        """
        index = int(source_item)
        seed = int(rng.integers(2**63))
        image, facts = draw_image(self.params, np.random.default_rng(seed))
        messages: list[dict[str, Any]] = []
        if self.params.system_prompt:
            messages.append({"role": "system", "content": self.params.system_prompt})
        content = [{"type": "image", "image": image}, {"type": "text", "text": prompt_text(self.params)}]
        messages.append({"role": "user", "content": content})
        answer = facts.pop("dominant")
        meta = {"index": index, "seed": seed, "answer_mode": self.params.answer_mode, **facts}
        meta["params"] = to_dict(self.params)
        return Sample(id=f"{NAME}-{index:08d}", task=NAME, messages=messages, answer=answer, meta=meta)

    def reward(self, completion: str, sample: Sample) -> Reward:
        """`rewards.match.exact_match` in the sample's answer mode:
        score = 0.9 · 1[answer = colour] + 0.1 · 1[format ok], in [0, 1]."""
        mode = sample.meta.get("answer_mode", self.params.answer_mode)
        return exact_match(completion, sample.answer, mode=mode, accuracy_weight=0.9)

    def constant_answer(self, sample: Sample) -> str:
        """The palette's first colour: the dominant colour is drawn uniformly, so every constant is right 1/K
        of the time and the first is as good as any."""
        return wrap_answer(self.params.palette[0], self.answer_mode(sample))

    def evidence(self, sample: Sample) -> list[Panel]:
        """The colour shares measured on the drawn image (`meta["colour_fractions"]`) as one bar, largest first."""
        shares = sample.meta.get("colour_fractions") or {}
        if not shares:
            return []
        bar = evidence.share_bar(shares, {name: COLOURS.get(name, (0, 0, 0)) for name in shares})
        margin = sample.meta.get("margin")
        lead = f", {100 * margin:.1f} points ahead of the next" if margin is not None else ""
        return [Panel(f"Share of the image in each colour: {sample.answer} covers the most{lead}", bar)]


__all__ = ["COLOURS", "DominantColorParams", "DominantColorTask", "draw_image", "prompt_text"]
