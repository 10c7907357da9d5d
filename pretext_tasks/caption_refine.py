"""`caption_refine` (ViPER Stage 1, "caption self-refining"): an image and a description of it that has mistakes;
the answer is the list of corrections, one sentence each (Zhang et al. 2025, arXiv 2510.24285; docs/viper.md).

The loop of the paper, with exact parts (procedural backend, the default; the captioner, the generator's scene
and the comparer are `pretext_tasks.caption_graph`):

1. captioner: writes the scene graph of a procedural scene as a caption C_g ("There are 4 objects: a small red
   cube, ... The small red cube is to the left of the large blue sphere.") with 1..k injected mistakes of the
   kinds a VLM makes: a wrong colour, shape or size, a wrong count, a flipped left/right relation, an omitted
   object, a hallucinated object (`inject_errors`, seeded). The caption's own graph (`CaptionGraph`) is kept.
2. generator: builds the scene the caption describes (its objects in a row, ordered to satisfy its relations)
   and renders it with open3d (`caption_scene`); with `backend: diffusers`, a text-to-image pipeline renders
   the caption text instead. The rendering is shown on the preview (and, with `show_rendering`, to the model).
3. comparer: diffs the true scene graph against the caption's graph (`compare`) and writes one correcting
   sentence per difference ("The small blue cube is actually red, not blue."). `apply_corrections` is its
   inverse: applying the corrections to the caption graph gives the true graph.

The model sees the image and C_g and must state the corrections. Reward: `rewards.statements.statement_reward`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image

from mmrl.errors import ConfigError, SkipItem
from mmrl.sample import Sample
from mmrl.scenes import Scene
from mmrl.task import Panel
from pretext_tasks import evidence
from pretext_tasks.base import degenerate
from pretext_tasks.caption_graph import (
    ERROR_KINDS,
    caption_scene,
    caption_text,
    compare,
    inject_errors,
    truthful_caption,
)
from pretext_tasks.viper_scenes import (
    StatementsTask,
    ViperSceneParams,
    base_meta,
    check_image,
    draw_scene,
    format_sentence,
    numbered,
    pair_panel,
)

log = logging.getLogger(__name__)

NAME = "caption_refine"


@dataclass
class CaptionRefineParams(ViperSceneParams):
    min_errors: int = 1
    """Fewest mistakes injected into a caption."""
    max_errors: int = 3
    """Most mistakes injected into a caption (each on a different object); the number is uniform in between,
    capped by what the scene allows."""
    error_kinds: tuple[str, ...] = ERROR_KINDS
    """Mistake kinds drawn from (`ERROR_KINDS`); each mistake's kind is uniform over the feasible ones."""
    relations: int = 2
    """Left/right relation sentences in a caption (between pairs whose centres are well apart in the image)."""
    relation_margin: float = 0.1
    """A pair is related only when its centres' image columns differ by at least this share of the width."""
    show_rendering: bool = False
    """Also show the model the rendering of the caption (after the image), as the paper's critique step does;
    off: the image and the caption only (the paper's Stage-1 training input)."""
    captioner: Literal["procedural", "policy"] = "procedural"
    """Who writes the caption C_g: `procedural` (the scene graph with injected mistakes) or `policy` (the closed
    loop, `pretext_tasks.viper_loop`: the policy captions, the generator renders, the corrections come from the
    scene-graph diff, or from the policy as a two-sample critic with `backend: diffusers`). With `policy`
    training draws from a pool the producer rebuilds from the current weights (`refresh_every`); held-out and
    cold-start Samples keep the procedural captioner, so evaluations compare across refreshes."""
    refresh_every: int = 0
    """`captioner: policy`: rebuild the pool every this many optimiser steps, counted from the start of the
    source's `steps` window (the stage boundary, where it is always built); 0: only there."""
    pool_size: int = 64
    """`captioner: policy`: images captioned per (re)build; those without a correction are dropped."""
    caption_max_new_tokens: int = 96
    """`captioner: policy`: most tokens of one policy caption."""
    caption_temperature: float = 1.0
    """`captioner: policy`: sampling temperature of the captions (0: greedy)."""
    loop_images: Literal["scenes", "photos"] = "scenes"
    """`captioner: policy`: the images captioned: `scenes` (procedural, exact ground truth) or `photos`
    (scikit-image's photos; needs `backend: diffusers`, whose critic states the corrections)."""

    def __post_init__(self) -> None:
        self.check(NAME)
        self.error_kinds = tuple(self.error_kinds)
        bad = [k for k in self.error_kinds if k not in ERROR_KINDS]
        if bad or not self.error_kinds or len(set(self.error_kinds)) != len(self.error_kinds):
            raise ConfigError(
                f"{NAME}: error_kinds must be distinct values of {', '.join(ERROR_KINDS)}, got {list(self.error_kinds)}"
            )
        if not 1 <= self.min_errors <= self.max_errors <= 5:
            raise ConfigError(
                f"{NAME}: need 1 <= min_errors <= max_errors <= 5, got {self.min_errors}, {self.max_errors} "
                "(a caption without mistakes has no correction to state)"
            )
        if not 0 <= self.relations <= 4 or not 0.0 < self.relation_margin < 1.0:
            raise ConfigError(f"{NAME}: need 0 <= relations <= 4 and 0 < relation_margin < 1")
        if self.captioner not in ("procedural", "policy") or self.loop_images not in ("scenes", "photos"):
            raise ConfigError(f"{NAME}: captioner must be procedural or policy and loop_images scenes or photos, "
                              f"got {self.captioner!r} and {self.loop_images!r}")  # fmt: skip
        if self.refresh_every < 0 or self.pool_size < 1 or self.caption_max_new_tokens < 1:
            raise ConfigError(f"{NAME}: need refresh_every >= 0, pool_size >= 1 and caption_max_new_tokens >= 1, got "
                              f"{self.refresh_every}, {self.pool_size}, {self.caption_max_new_tokens}")  # fmt: skip
        if self.caption_temperature < 0:
            raise ConfigError(f"{NAME}: caption_temperature must be >= 0, got {self.caption_temperature}")
        if self.loop_images == "photos" and self.backend != "diffusers":
            raise ConfigError(f"{NAME}: loop_images: photos has no scene graph to diff; it needs backend: diffusers")
        if "relation" in self.error_kinds and self.relations == 0 and len(self.error_kinds) == 1:
            raise ConfigError(f"{NAME}: error_kinds ['relation'] needs relations >= 1")
        if set(self.error_kinds) <= {"count"} and self.objects[0] == self.objects[1]:
            raise degenerate(
                NAME, f"error_kinds = ['count'] with objects = {list(self.objects)}",
                f"every answer is 'There are {self.objects[0]} objects, not {self.objects[0]} ± 1': two answers",
                "add other error kinds or let the number of objects vary",
            )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# The task


def prompt_text(params: CaptionRefineParams, caption: str) -> str:
    """The question (sheet §4, our words): the caption, the kinds of mistakes it may have, the reply format."""
    shown = ("The first image is the scene; the second was drawn from the description alone. "
             if params.show_rendering else "")  # fmt: skip
    return (
        f'{shown}Here is a description of the image written by a captioning model: "{caption}" '
        "The description may be wrong or incomplete: a wrong colour, shape or size, a wrong number of objects, "
        "a wrong left/right relation (as seen in the image), an object it leaves out or one that is not there. "
        "Compare it with the image and write one sentence that corrects each mistake or omission, naming each "
        f"object as the description does. {format_sentence(params.think)}"
    )


@dataclass
class CaptionRefine(StatementsTask):
    """An image and a flawed description of it; state every correction, one sentence each."""

    Params: ClassVar[type[CaptionRefineParams]] = CaptionRefineParams
    name: ClassVar[str] = NAME
    reference_thought: ClassVar[str] = (
        "I check every object, attribute, the count and each left/right relation of the description against the image."
    )
    params: CaptionRefineParams = field(default_factory=CaptionRefineParams)
    """Scene, captioner, prompt and reward parameters."""
    pool: list[dict] = field(default_factory=list, init=False, repr=False)
    """`captioner: policy`: the closed loop's entries (`viper_loop.build_pool`), served while `serving`."""
    pool_step: int | None = field(default=None, init=False)
    """The optimiser step whose weights built `pool` (None: not built yet)."""
    serving: bool = field(default=False, init=False)
    """Whether `make` draws from the pool (the producer sets it around training draws only)."""
    loop_counts: dict = field(default_factory=dict, init=False, repr=False)
    """Totals over all builds (`viper_loop.build_pool` counts, plus `refreshes`)."""

    @property
    def closed_loop(self) -> bool:
        """Whether the policy writes the captions (`captioner: policy`): the producer then refreshes the pool."""
        return self.params.captioner == "policy"

    @property
    def refresh_every(self) -> int:
        return self.params.refresh_every

    def refresh_pool(self, roles: Any, seed_key: Sequence[int], step: int) -> dict[str, float]:
        """Rebuild the pool with the policy `roles` (`viper_loop.PolicyRoles`) runs; the draws follow
        `seed_key`. Returns this build's counts as metrics (`loop/<count>`)."""
        from pretext_tasks.viper_loop import build_pool

        self.pool, counts = build_pool(self.params, roles, seed_key)
        self.pool_step = step
        if not self.pool:  # every caption dropped: training draws use the procedural captioner until the next build
            log.warning("%s: the closed loop kept none of %d captions at step %d (%s); serving procedural captions "
                        "until the next refresh", NAME, counts["built"], step, dict(counts))  # fmt: skip
        counts["refreshes"] = 1
        for k, v in counts.items():
            self.loop_counts[k] = self.loop_counts.get(k, 0) + int(v)
        metrics = {f"loop/{k}": float(v) for k, v in counts.items() if k != "refreshes"}
        metrics["loop/refreshes"] = float(self.loop_counts["refreshes"])
        return metrics | {"loop/pool_size": float(len(self.pool))}

    def pool_state(self) -> dict[str, Any]:
        """The pool as JSON (for the producer's checkpoint state): entries, the step that built them, totals."""
        return {"pool": self.pool, "pool_step": self.pool_step, "counts": dict(self.loop_counts)}

    def load_pool_state(self, state: dict[str, Any]) -> None:
        self.pool, self.pool_step = list(state["pool"]), state["pool_step"]
        self.loop_counts = dict(state.get("counts", {}))

    def make(self, source_item: int, rng: np.random.Generator) -> Sample:
        if self.serving and self.pool:
            return self._pool_sample(source_item, rng)
        from mmrl.scene_render import render  # open3d: only when scenes are drawn

        p = self.params
        seed = int(rng.integers(2**63))
        scene = draw_scene(p, seed)
        image = check_image(render(scene).rgb, "scene image", p.min_image_std)
        truth = truthful_caption(scene, rng, p)
        caption = inject_errors(truth, scene, rng, int(rng.integers(p.min_errors, p.max_errors + 1)), p)
        corrections = compare(scene, caption)
        if not corrections:
            raise SkipItem("caption_without_mistakes", "the injected mistakes cancelled out")
        text = caption_text(caption)
        drawn = caption_scene(caption, p.width, p.height)
        if p.backend == "diffusers":
            from pretext_tasks.viper_diffusion import DiffusionParams, diffusion_render_captions

            (rendering,) = diffusion_render_captions([text], [rng], DiffusionParams(**p.diffusion))
            if isinstance(rendering, SkipItem):
                raise rendering
        else:
            rendering = render(drawn).rgb
        rendering = check_image(rendering, "caption rendering", p.min_image_std)
        meta = base_meta(p) | {
            "seed": seed, "image_size": list(image.size), "scene": scene.to_graph(), "caption": text,
            "caption_graph": caption.to_dict(), "caption_scene": drawn.to_graph(), "corrections": corrections,
            "split": "+".join(sorted({c["kind"] for c in corrections})), "captioner": "procedural",
        }  # fmt: skip
        return self._sample(source_item, image, rendering, text, corrections, meta)

    def _sample(self, source_item: int, image: Image.Image, rendering: Image.Image | None, caption: str,
                corrections: Sequence[dict[str, Any]], meta: dict[str, Any]) -> Sample:  # fmt: skip
        content: list[dict[str, Any]] = [{"type": "image", "image": image}]
        if self.params.show_rendering and rendering is not None:
            content.append({"type": "image", "image": rendering})
        content.append({"type": "text", "text": prompt_text(self.params, caption)})
        answer = [c["text"] for c in corrections]
        return Sample(f"{NAME}-{int(source_item):08d}", NAME, [{"role": "user", "content": content}], answer, meta)

    def _pool_sample(self, source_item: int, rng: np.random.Generator) -> Sample:
        """A Sample of the closed loop (`viper_loop.pool_sample_parts`): a pool entry drawn by `rng`, with the
        POLICY's caption and the entry's corrections."""
        from pretext_tasks.viper_loop import pool_sample_parts

        entry = self.pool[int(rng.integers(len(self.pool)))]
        image, rendering, meta = pool_sample_parts(self.params, entry)
        meta = base_meta(self.params) | {"pool_step": self.pool_step, **meta}
        return self._sample(source_item, image, rendering, entry["caption"], entry["corrections"], meta)

    def random_answer(self, sample: Sample, rng: np.random.Generator) -> str:
        """The corrections of another, randomly flawed caption of the same scene: plausible sentences about the
        right objects that mostly fix mistakes this caption does not have."""
        try:
            scene = Scene.from_graph(sample.meta["scene"])
            p = self.params
            other = inject_errors(truthful_caption(scene, rng, p), scene, rng, max(1, len(sample.answer)), p)
            lines = [c["text"] for c in compare(scene, other)]
        except (KeyError, SkipItem):
            lines = ["There are 4 objects, not 3."]
        return self.reply(sample, lines, "A guess.")

    def constant_answer(self, sample: Sample) -> str:
        """One fixed count correction, the one sentence form every sample can have: "There are 4 objects, not 5."
        (4 is the middle of the default 3-6 objects)."""
        return self.reply(sample, ["There are 4 objects, not 5."], "A fixed guess.")

    def evidence(self, sample: Sample) -> list[Panel]:
        """The image next to the rendering of its caption (the generator's picture), then the caption and the
        corrections."""
        shots = evidence.images(sample)
        if not shots:
            return []
        rendering = shots[1] if len(shots) > 1 else None
        if (
            rendering is None
            and sample.meta.get("backend", "procedural") == "procedural"
            and "caption_scene" in sample.meta
        ):
            from mmrl.scene_render import render  # a stored scene graph, rendered again: no random draw

            rendering = Image.fromarray(render(Scene.from_graph(sample.meta["caption_scene"])).rgb)
        if rendering is None:
            rendering = evidence.text_image("(the caption's rendering is not stored)")
        pair = pair_panel(shots[0], "the image", rendering, "the caption, rendered")
        text = evidence.text_image(
            f"Caption: {sample.meta.get('caption', '')}\n\nCorrections:\n{numbered(sample.answer)}", width=pair.width
        )
        return [
            Panel(f"{len(sample.answer)} correction(s): {sample.meta.get('split', '')}", evidence.column([pair, text]))
        ]


__all__ = ["ERROR_KINDS", "CaptionRefine", "CaptionRefineParams", "prompt_text"]
