"""What the two ViPER tasks share (`caption_refine`, `edit_prediction`; docs/viper.md): parameters of the
procedural scenes, the check that throws away bad generator outputs, the meta every Sample starts with, the
statement-list reply, the reward call and the hooks built on them (`StatementsTask`), and the drawing of evidence
panels.

Both tasks answer a list of statements, one sentence per line inside `<answer>…</answer>` (after a
`<think>…</think>` block when asked), scored by `rewards.statements.statement_reward` (length-weighted F1 of
sentence matches under a sentence-embedding model, with agreement checks on numbers, colours and sides).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from PIL import Image, ImageDraw

from mmrl.config import to_dict
from mmrl.contracts import Reward
from mmrl.errors import ConfigError, SkipItem
from mmrl.sample import Sample
from mmrl.scenes import COLORS, SHAPES, SIZES, Scene, random_scene
from mmrl.task import Task
from pretext_tasks import evidence
from pretext_tasks.base import answer_instruction
from rewards.extract import wrap_answer

if TYPE_CHECKING:
    from mmrl.corpus import Corpus

Backend = Literal["procedural", "diffusers"]
BACKENDS: tuple[str, ...] = ("procedural", "diffusers")


@dataclass
class ViperSceneParams:
    """Parameters both ViPER tasks have (each task's Params adds its own)."""

    backend: Backend = "procedural"
    """Who makes the images: `procedural` (open3d scenes, every difference exact from the scene graph) or
    `diffusers` (text-to-image and instruction editing pipelines, `mmrl.diffusion`; `diffusion` configures them)."""
    width: int = 224
    """Width in pixels of a procedural scene's image."""
    height: int = 168
    """Height in pixels of a procedural scene's image."""
    objects: tuple[int, int] = (3, 6)
    """Range (inclusive) of the number of objects in a procedural scene."""
    shapes: tuple[str, ...] = SHAPES
    """Shape kinds a scene may hold."""
    colors: tuple[str, ...] = tuple(COLORS)
    """Colour names a scene may use."""
    sizes: tuple[str, ...] = tuple(SIZES)
    """Size names a scene may use."""
    min_visible: float = 0.3
    """Least unoccluded share of every object of a scene, and of every edited object before and after."""
    min_image_std: float = 4.0
    """A generated image whose pixel standard deviation (grey levels, all channels) is below this is a blank
    render: skipped and counted (`blank_render`); one with a non-finite value is skipped as `nan_image`."""
    think: bool = True
    """Ask for reasoning inside <think></think> before the answer (the sheet's format)."""
    num_sources: int = 1_000_000
    """How many procedural scenes `sources()` offers."""
    diffusion: dict = field(default_factory=dict)
    """`backend: diffusers`: the fields of `mmrl.diffusion.DiffusionParams` (pipelines, steps, guidance)."""
    reward: dict = field(default_factory=dict)
    """The fields of `rewards.statements.StatementRewardParams` (tau, mode, matching, slot_check, w_format...);
    empty: its defaults."""

    def check(self, task: str) -> None:
        """Raise ConfigError naming the field for a value out of range (each task's `__post_init__` calls it)."""
        self.objects = (int(self.objects[0]), int(self.objects[1]))
        self.shapes, self.colors, self.sizes = tuple(self.shapes), tuple(self.colors), tuple(self.sizes)
        if self.backend not in BACKENDS:
            raise ConfigError(f"{task}: backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if not (32 <= self.width <= 2048 and 32 <= self.height <= 2048):
            raise ConfigError(f"{task}: width and height must be in [32, 2048], got {self.width}x{self.height}")
        if not 1 <= self.objects[0] <= self.objects[1] <= 12:
            raise ConfigError(f"{task}: objects must satisfy 1 <= min <= max <= 12, got {list(self.objects)}")
        for name, values, vocab in (("shapes", self.shapes, SHAPES), ("colors", self.colors, COLORS),
                                    ("sizes", self.sizes, SIZES)):  # fmt: skip
            if not values or len(set(values)) != len(values) or any(v not in vocab for v in values):
                raise ConfigError(f"{task}: {name} must be distinct values of {', '.join(vocab)}, got {list(values)}")
        if self.combinations < self.objects[1] + 1:
            raise ConfigError(
                f"{task}: {self.combinations} (size, colour, shape) combinations cannot give {self.objects[1]} "
                "distinct objects plus a new one; allow more shapes, colours or sizes, or fewer objects"
            )
        if not 0.0 < self.min_visible <= 1.0:
            raise ConfigError(f"{task}: min_visible must be in (0, 1], got {self.min_visible}")
        if self.min_image_std < 0:
            raise ConfigError(f"{task}: min_image_std must be >= 0, got {self.min_image_std}")
        if self.num_sources < 1:
            raise ConfigError(f"{task}: num_sources must be >= 1, got {self.num_sources}")

    @property
    def combinations(self) -> int:
        """Distinct (size, colour, shape) triples the vocabularies allow: every object of a scene is one."""
        return len(self.shapes) * len(self.colors) * len(self.sizes)


# --------------------------------------------------------------------------------------------------
# Scenes and generator outputs


def draw_scene(params: ViperSceneParams, seed: int) -> Scene:
    """The procedural scene of `seed` (`mmrl.scenes.random_scene`, distinct objects); an unplaceable one is
    skipped (`scene_placement_failed`)."""
    try:
        return random_scene(
            np.random.default_rng(seed),
            n_objects=params.objects,
            width=params.width,
            height=params.height,
            shapes=params.shapes,
            colors=params.colors,
            sizes=params.sizes,
            min_visible=params.min_visible,
        )
    except ValueError as e:
        raise SkipItem("scene_placement_failed", str(e)) from None


def check_image(image: Image.Image | np.ndarray, what: str, min_std: float) -> Image.Image:
    """`image` as RGB PIL, or SkipItem for a bad generator output: `nan_image` (a non-finite value: a float
    array from a diffusion decoder gone wrong) or `blank_render` (pixel standard deviation below `min_std`
    grey levels: a uniform picture, e.g. a camera that sees only sky, or a black decoder output)."""
    pixels = np.asarray(image)
    if pixels.dtype.kind == "f":
        if not np.isfinite(pixels).all():
            raise SkipItem("nan_image", f"{what}: non-finite pixel values")
        scale = 255.0 if pixels.size and float(np.nanmax(np.abs(pixels))) <= 1.0 else 1.0
        pixels = np.clip(pixels * scale, 0, 255).astype(np.uint8)
    std = float(pixels.astype(np.float32).std()) if pixels.size else 0.0
    if std < min_std:
        raise SkipItem("blank_render", f"{what}: pixel standard deviation {std:.2f} < {min_std}")
    picture = image if isinstance(image, Image.Image) else Image.fromarray(pixels)
    return picture.convert("RGB")


def image_columns(scene: Scene) -> dict[int, float]:
    """Object id -> the image column (u, pixels) its centre projects to: what "left" and "right" mean here."""
    if not scene.objects:
        return {}
    uv, _ = scene.camera.project([o.position for o in scene.objects])
    return {o.id: float(u) for o, u in zip(scene.objects, uv[:, 0])}


def number_word(n: int) -> str:
    """`three` for 3 (zero to twelve), digits above."""
    words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve")
    return words[n] if 0 <= n < len(words) else str(n)


def article(phrase: str) -> str:
    """`a small red cube`, `an orange cone`."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def base_meta(params: ViperSceneParams) -> dict[str, Any]:
    """The meta every ViPER Sample starts with (each task adds its own keys after these)."""
    return {"params": to_dict(params), "answer_mode": "answer_tag", "think": params.think, "backend": params.backend}


# --------------------------------------------------------------------------------------------------
# The reply and the reward


def format_sentence(think: bool) -> str:
    """The reply format: one statement per line in the answer block, after a think block when asked."""
    return (
        f"{answer_instruction('answer_tag', 'one sentence per line', think=think)} Write each sentence on its own "
        "line and state each point once."
    )


def statements_reply(statements: Sequence[str], thought: str, think: bool) -> str:
    """`statements` one per line inside <answer>, after `<think>thought</think>` when `think`."""
    body = wrap_answer("\n".join(statements), "answer_tag")
    return f"<think>{thought}</think>{body}" if think else body


def statement_scores(completions: Sequence[str], sample: Sample, params: ViperSceneParams) -> list[Reward]:
    """`rewards.statements.statement_rewards` of `completions` (one prompt's group) against the sample's
    statements (`sample.answer`), with the process's embedder (`rewards.embedding.default_embedder`, loaded once;
    one batched embedding call for the group's distinct sentences) and `StatementRewardParams(**params.reward)`;
    the think block is required exactly when the prompt asked for it (`sample.meta["think"]`, else
    `params.think`), unless `params.reward` says otherwise."""
    think = bool(sample.meta.get("think", params.think))
    reward_params, references = params.reward, sample.answer
    from rewards.embedding import default_embedder  # the sentence-embedding model: only when scoring
    from rewards.statements import StatementRewardParams, statement_rewards

    # Lone surrogates (model output can hold any code point) break the tokenizer.
    cleaned = [c.encode("utf-8", "replace").decode("utf-8") if isinstance(c, str) else c for c in completions]
    known = {f.name for f in dataclasses.fields(StatementRewardParams)}
    params = StatementRewardParams(
        **(({"require_think": think} if "require_think" in known else {}) | dict(reward_params))
    )
    return statement_rewards(cleaned, [list(references)] * len(cleaned), default_embedder(), params)


class StatementsTask(Task):
    """Sources, reward and reference of a ViPER task: procedural scene indices in, a list of statements
    (`sample.answer`) out, replied one per line (`statements_reply`) and scored by `statement_scores`.

    `params` is a `ViperSceneParams`; a task sets `reference_thought`.
    """

    params: ViperSceneParams
    reference_thought: ClassVar[str]
    """The reasoning sentence of the SFT reference when the prompt asks for <think>."""

    def sources(self, corpus: Corpus | str | Path | None = None) -> Sequence[Any]:
        """Procedural scene indices (the default corpus or None: scenes are drawn, not read); any other source is
        refused."""
        if isinstance(corpus, (str, Path)) and str(corpus) != "default":
            raise ConfigError(f"{self.name}: source must be `default` (procedural scenes), got {corpus}")
        return range(self.params.num_sources)

    def reward(self, completion: str, sample: Sample) -> Reward:
        """`rewards.statements.statement_reward`: w_format · format + w_correct · length-weighted F1 of the stated
        sentences against the sample's (the corrections or the operations; sentence matches above τ with agreeing
        numbers, colours, sides)."""
        return statement_scores([completion], sample, self.params)[0]

    def reward_group(self, completions: Sequence[str], sample: Sample) -> list[Reward]:
        """`reward` of each completion, with one embedding call for the group's sentences."""
        return statement_scores(completions, sample, self.params)

    def reference_completion(self, sample: Sample) -> str:
        """Every statement of the answer, one per line, after `reference_thought` when the prompt asked."""
        return self.reply(sample, sample.answer, self.reference_thought)

    def reply(self, sample: Sample, statements: Sequence[str], thought: str) -> str:
        """`statements_reply` with a think block exactly when the sample's prompt asked for one (`meta["think"]`,
        else `params.think`)."""
        return statements_reply(statements, thought, bool(sample.meta.get("think", self.params.think)))


# --------------------------------------------------------------------------------------------------
# Evidence


def marked(image: Image.Image, boxes: Sequence[tuple[int, str, Sequence[float]]], width: int = 500) -> Image.Image:
    """`image` enlarged to about `width` px with each (colour index, label, box) outlined in colour
    `evidence.KIND_COLOURS[index]` (cycled) and tagged with its label."""
    big = evidence.fit(image, width, width).copy()
    scale = big.width / image.width
    draw = ImageDraw.Draw(big)
    colours = evidence.KIND_COLOURS
    corners = [[v * scale for v in box] for _, _, box in boxes]
    for (k, _, _), (x1, y1, x2, y2) in zip(boxes, corners):
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=colours[k % len(colours)], width=2)
    for (k, label, _), c in zip(boxes, corners):  # tags last: over every box
        tag = evidence.tag(label, colours[k % len(colours)], evidence.WHITE)
        big.paste(tag, (max(0, round(c[0])), max(0, round(c[1]) - tag.height)))
    return big


def pair_panel(left: Image.Image, left_title: str, right: Image.Image, right_title: str) -> Image.Image:
    """Two pictures side by side, each under its title, together at most a panel wide."""
    half = (evidence.PANEL_MAX_WIDTH - evidence.GAP) // 2
    return evidence.row(
        [
            evidence.captioned(evidence.fit(left, half, 420), left_title, above=True),
            evidence.captioned(evidence.fit(right, half, 420), right_title, above=True),
        ]
    )


def numbered(statements: Sequence[str]) -> str:
    """`1. first\n2. second` for a panel of statements."""
    return "\n".join(f"{k}. {s}" for k, s in enumerate(statements, 1)) or "(none)"


__all__ = [
    "BACKENDS",
    "Backend",
    "StatementsTask",
    "ViperSceneParams",
    "article",
    "base_meta",
    "check_image",
    "draw_scene",
    "format_sentence",
    "image_columns",
    "marked",
    "number_word",
    "numbered",
    "pair_panel",
    "statement_scores",
    "statements_reply",
]
