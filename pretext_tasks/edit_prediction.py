"""`edit_prediction` (ViPER Stage 2, "visual-operation predicting"): an image and an edited copy of it; the answer
is the list of editing operations, one sentence each (Zhang et al. 2025, arXiv 2510.24285; docs/viper.md).

Procedural backend (the default): a scene of `mmrl.scenes`, then 1-3 edits of `mmrl.scene_edits` on distinct
objects (`random_edits`: recolour, reshape, resize, move, remove, add), both scenes ray-cast by open3d. Every
operation is exact from the scene graph: the answer is the edits' own descriptions ("The small red cube became
blue.", "The large cyan torus was moved to the left.", "A medium white cone was added."), in the order applied.
Diffusers backend: an instruction editor edits the image (`pretext_tasks.viper_diffusion`); the answer is the
list of instructions it applied.

Prompt (our words, sheet §4): the second image is an edited copy of the first; list every operation, one
sentence each, reasoning in <think> first. Reward: `rewards.statements.statement_reward` against the answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mmrl.errors import ConfigError, SkipItem
from mmrl.sample import Sample
from mmrl.task import Panel
from pretext_tasks import evidence
from pretext_tasks.base import MIN_ANSWERS, degenerate
from pretext_tasks.viper_scenes import (
    StatementsTask,
    ViperSceneParams,
    base_meta,
    check_image,
    draw_scene,
    format_sentence,
    marked,
    numbered,
    pair_panel,
)

if TYPE_CHECKING:
    from PIL import Image

    from mmrl.scenes import Scene

NAME = "edit_prediction"
EDIT_KINDS: tuple[str, ...] = ("recolor", "reshape", "resize", "move", "remove", "add")
"""`mmrl.scene_edits.EDIT_KINDS`, spelled out: that module loads open3d, which this one imports only when a scene
is drawn (a test checks the two are equal)."""
MOVE_DIRECTIONS = 8
"""Direction phrases a move's description can take (left/right, closer/farther, and the four pairs of them)."""


@dataclass
class EditPredictionParams(ViperSceneParams):
    min_edits: int = 1
    """Fewest edits between the two images."""
    max_edits: int = 3
    """Most edits between the two images (each on a different object); the count is uniform in between."""
    kinds: tuple[str, ...] = EDIT_KINDS
    """Edit kinds drawn from (`mmrl.scene_edits.EDIT_KINDS`); each edit's kind is uniform over the feasible ones."""

    def __post_init__(self) -> None:
        self.check(NAME)
        self.kinds = tuple(self.kinds)
        bad = [k for k in self.kinds if k not in EDIT_KINDS]
        if bad or not self.kinds or len(set(self.kinds)) != len(self.kinds):
            raise ConfigError(
                f"{NAME}: kinds must be distinct values of {', '.join(EDIT_KINDS)}, got {list(self.kinds)}"
            )
        if not 1 <= self.min_edits <= self.max_edits <= 5:
            raise ConfigError(
                f"{NAME}: need 1 <= min_edits <= max_edits <= 5, got {self.min_edits}, {self.max_edits} "
                "(no edit leaves nothing to predict)"
            )
        if self.max_edits > self.objects[0] and "add" not in self.kinds:
            raise ConfigError(
                f"{NAME}: max_edits = {self.max_edits} distinct objects to edit but a scene may hold only "
                f"{self.objects[0]}; raise objects' min or add the kind 'add'"
            )
        answers = self.single_edit_sentences
        if answers < MIN_ANSWERS:
            raise degenerate(
                NAME, f"kinds = {list(self.kinds)} with {len(self.sizes)} size(s), {len(self.colors)} colour(s) and "
                f"{len(self.shapes)} shape(s)", f"an edit can be described in only {answers} way(s)",
                "allow more kinds, colours, shapes or sizes",
            )  # fmt: skip

    @property
    def single_edit_sentences(self) -> int:
        """How many different sentences one edit can have: each of the T (size, colour, shape) objects recoloured
        into C - 1 colours, reshaped into S - 1 shapes, resized into Z - 1 sizes, moved in 8 directions, removed
        or added."""
        t = self.combinations
        per_kind = {
            "recolor": t * (len(self.colors) - 1),
            "reshape": t * (len(self.shapes) - 1),
            "resize": t * (len(self.sizes) - 1),
            "move": t * MOVE_DIRECTIONS,
            "remove": t,
            "add": t,
        }
        return sum(per_kind[k] for k in self.kinds)


def prompt_text(params: EditPredictionParams) -> str:
    """The question (sheet §4, our words); the same for every sample of a setting, never hinting at the answer."""
    return (
        "The second image is an edited copy of the first one: some objects were changed in colour, shape, size "
        "or position, removed, or added. Compare the two images and list every editing operation that turns the "
        "first image into the second, one sentence per operation, naming each object as it looks in the first "
        f"image (for an added object, as it looks in the second). {format_sentence(params.think)}"
    )


@dataclass
class EditPrediction(StatementsTask):
    """Two images, the second an edited copy of the first; state every editing operation, one sentence each."""

    Params: ClassVar[type[EditPredictionParams]] = EditPredictionParams
    name: ClassVar[str] = NAME
    reference_thought: ClassVar[str] = (
        "I compare the two images object by object and note every object that changed, appeared or vanished."
    )
    params: EditPredictionParams = field(default_factory=EditPredictionParams)
    """Scene, edit, prompt and reward parameters."""

    def make(self, source_item: int, rng: np.random.Generator) -> Sample:
        from mmrl.scene_edits import random_edits  # open3d: only when scenes are drawn
        from mmrl.scene_render import render

        p = self.params
        seed = int(rng.integers(2**63))
        scene = draw_scene(p, seed)
        count = int(rng.integers(p.min_edits, p.max_edits + 1))
        before_render = render(scene)
        before = check_image(before_render.rgb, "before image", p.min_image_std)
        meta = base_meta(p) | {"seed": seed, "image_size": [p.width, p.height]}
        if p.backend == "diffusers":
            after, statements = self._diffusers_edit(before, scene, rng)
            meta |= {"scene_before": scene.to_graph(), "edits": [{"kind": "instruction", "description": s}
                                                                 for s in statements]}  # fmt: skip
        else:
            try:
                edited, edits = random_edits(scene, rng, count, p.kinds, min_visible=p.min_visible)
            except ValueError as e:
                raise SkipItem("no_valid_edits", str(e)) from None
            after_render = render(edited)
            after = check_image(after_render.rgb, "after image", p.min_image_std)
            if np.array_equal(before_render.rgb, after_render.rgb):
                raise SkipItem("no_visible_change", "the edits changed no pixel")
            statements = [e.description for e in edits]
            meta |= {
                "scene_before": scene.to_graph(),
                "scene_after": edited.to_graph(),
                "edits": [e.to_dict() for e in edits],
                "boxes_before": {str(k): list(v) for k, v in before_render.boxes.items()},
                "boxes_after": {str(k): list(v) for k, v in after_render.boxes.items()},
            }
        meta["split"] = "+".join(sorted(e["kind"] for e in meta["edits"]))
        content = [{"type": "image", "image": before}, {"type": "image", "image": after},
                   {"type": "text", "text": prompt_text(p)}]  # fmt: skip
        return Sample(f"{NAME}-{int(source_item):08d}", NAME, [{"role": "user", "content": content}], statements, meta)

    def _diffusers_edit(
        self, image: Image.Image, scene: Scene, rng: np.random.Generator
    ) -> tuple[Image.Image, list[str]]:
        """The instruction editor's output and the instructions it applied (SkipItem for a bad output); the
        instructions name the scene's objects ("the small red cube"), as the paper's hard entities."""
        from pretext_tasks.viper_diffusion import DiffusionParams, diffusion_edit_pairs  # diffusers: only when asked

        p = self.params
        entities = [f"the {o.describe()}" for o in scene.objects]
        (out,) = diffusion_edit_pairs([image], [rng], DiffusionParams(**p.diffusion), (p.min_edits, p.max_edits),
                                      [entities])  # fmt: skip
        if isinstance(out, SkipItem):
            raise out
        edited, statements = out
        return check_image(edited, "edited image", p.min_image_std), list(statements)

    def random_answer(self, sample: Sample, rng: np.random.Generator) -> str:
        """As many plausible operations as the sample has, each of a random kind on a random object of the first
        scene (an addition: a random new object), worded like the real descriptions."""
        graph = sample.meta.get("scene_before", {})
        objects = [_words(o) for o in graph.get("objects", [])] or [("small", "red", "cube")]
        p = self.params
        lines = []
        for _ in range(max(1, len(sample.answer))):
            kind = p.kinds[int(rng.integers(len(p.kinds)))]
            size, color, shape = objects[int(rng.integers(len(objects)))]
            thing = f"{size} {color} {shape}"
            pick = _picker(rng)
            if kind == "recolor":
                lines.append(f"The {thing} became {pick([c for c in p.colors if c != color] or [color])}.")
            elif kind == "reshape":
                lines.append(f"The {thing} became a {pick([s for s in p.shapes if s != shape] or [shape])}.")
            elif kind == "resize":
                lines.append(f"The {thing} became {pick([s for s in p.sizes if s != size] or [size])}.")
            elif kind == "move":
                lines.append(f"The {thing} was moved {pick(['to the left', 'to the right', 'closer to the camera'])}.")
            elif kind == "remove":
                lines.append(f"The {thing} was removed.")
            else:
                lines.append(f"A {pick(list(p.sizes))} {pick(list(p.colors))} {pick(list(p.shapes))} was added.")
        return self.reply(sample, lines, "A guess.")

    def constant_answer(self, sample: Sample) -> str:
        """One fixed operation sentence, "The medium red cube was moved to the left.". Under one-to-one matching
        with colour and side checks no fixed reply scores much on any setting with several objects and kinds:
        it is right only when that exact object made that exact move. The kinds are drawn uniformly, so no
        sentence form is commoner than another; this one names the middle size."""
        return self.reply(sample, ["The medium red cube was moved to the left."], "A fixed guess.")

    def evidence(self, sample: Sample) -> list[Panel]:
        """Before and after side by side with each edited object's box (same colour on both), and the
        operations numbered in the same colours' order."""
        shots = evidence.images(sample)[:2]
        if len(shots) != 2:
            return []
        edits = sample.meta.get("edits", [])
        before_boxes, after_boxes = sample.meta.get("boxes_before", {}), sample.meta.get("boxes_after", {})
        marks_before, marks_after = [], []
        for k, e in enumerate(edits, 1):
            oid = str(e.get("object_id"))
            if e.get("before") is not None and oid in before_boxes:
                marks_before.append((k - 1, f"{k}", before_boxes[oid]))
            if e.get("after") is not None and oid in after_boxes:
                marks_after.append((k - 1, f"{k}", after_boxes[oid]))
        pair = pair_panel(marked(shots[0], marks_before), "before (edited objects boxed)",
                          marked(shots[1], marks_after), "after")  # fmt: skip
        text = evidence.text_image(numbered(sample.answer), width=pair.width)
        kinds = Counter(e.get("kind") for e in edits)
        title = f"{len(edits)} operation(s): " + ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        return [Panel(title, evidence.column([pair, text]))]


def _words(obj: dict[str, Any]) -> tuple[str, str, str]:
    def name(v: Any) -> str:
        return v["name"] if isinstance(v, dict) else str(v)

    return name(obj["size"]), name(obj["color"]), str(obj["shape"])


def _picker(rng: np.random.Generator) -> Callable[[list[str]], str]:
    """A uniform choice among options, drawn from `rng`."""

    def pick(options: list[str]) -> str:
        return options[int(rng.integers(len(options)))]

    return pick


__all__ = ["EditPrediction", "EditPredictionParams", "prompt_text"]
