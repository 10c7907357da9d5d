"""`referring_grounding` (REC): a referring expression and an image; the answer is the one box it names.

Sources (docs/grounding.md): procedural scenes (`source: default`; the expression is built from the scene
graph by `pretext_tasks.referring` and checked for uniqueness on every object) or a RefCOCO-style annotation
file of the user's own images (`source: path/to/refs.jsonl`, `pretext_tasks.grounding_import`).

Prompt: `Locate the small red cube left of the sphere in the image.` + the family's coordinate sentence +
`Answer with only <answer>[x1, y1, x2, y2]</answer>. For example: <answer>[22, 34, 78, 92]</answer>`.
Reward (`rewards.boxes.rec_reward`): 0.9 · 1[IoU ≥ 0.5] (or 0.9 · IoU with `continuous_iou`) + 0.1 · format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from mmrl.config import to_dict
from mmrl.contracts import Reward
from mmrl.errors import ConfigError, SkipItem
from mmrl.sample import Sample
from mmrl.task import Panel, Task
from pretext_tasks import evidence, grounding
from pretext_tasks.grounding import GroundingParams
from pretext_tasks.grounding_import import ImportedImage, load_referring
from pretext_tasks.referring import Expression, RelationMargins, choose_expression
from rewards.boxes import box_text, model_frame, rec_reward

if TYPE_CHECKING:
    from mmrl.corpus import Corpus

NAME = "referring_grounding"
SLOT = "[x1, y1, x2, y2]"


@dataclass
class ReferringGroundingParams(GroundingParams):
    relation_share: float = 0.5
    """Probability that a procedural expression uses a spatial relation (when one names the target uniquely);
    otherwise the shortest unique attribute description is used."""
    continuous_iou: bool = False
    """Accuracy = IoU instead of 1[IoU >= 0.5] (a denser signal; `exact` stays 1[IoU >= 0.5])."""
    horizontal_margin: float = 0.08
    """left of / right of: least difference of projected centres, as a share of the image width."""
    depth_margin: float = 0.6
    """in front of / behind: least difference of camera depth of the centres, in metres."""
    nearest_ratio: float = 1.5
    """nearest to: every other candidate is at least this many times farther from the anchor."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.objects[0] < 2:
            raise ConfigError(
                f"{NAME}: objects = {self.objects} allows a scene of one object, where the expression names "
                "nothing to tell apart; use objects with min >= 2"
            )
        if not 0.0 <= self.relation_share <= 1.0:
            raise ConfigError(f"{NAME}: relation_share must be in [0, 1], got {self.relation_share}")
        if self.horizontal_margin <= 0 or self.depth_margin <= 0 or self.nearest_ratio <= 1:
            raise ConfigError(f"{NAME}: horizontal_margin and depth_margin must be > 0 and nearest_ratio > 1")

    @property
    def margins(self) -> RelationMargins:
        return RelationMargins(self.horizontal_margin, self.depth_margin, self.nearest_ratio)


def prompt_text(params: GroundingParams, expression: str, meta: dict[str, Any]) -> str:
    """The question: the expression, the coordinate convention, the exact reply format with an example."""
    example = box_text(grounding.example_box(meta))
    return (
        f"Locate {expression} in the image. {grounding.coordinate_sentence(meta['coords'], meta['model_size'])} "
        f"{grounding.instruction(params, SLOT, example)}"
    )


@dataclass
class ReferringGrounding(Task):
    """Find the object a referring expression names; answer its box `[x1, y1, x2, y2]`."""

    Params: ClassVar[type[ReferringGroundingParams]] = ReferringGroundingParams
    name: ClassVar[str] = NAME
    params: ReferringGroundingParams = field(default_factory=ReferringGroundingParams)
    """Scene, prompt and reward parameters."""

    def sources(self, corpus: Corpus | str | Path | None = None) -> Sequence[Any]:
        """Procedural scene indices (default corpus or None), or the records of a RefCOCO-style file (a path to
        it, or to the folder holding it)."""
        if isinstance(corpus, (str, Path)):
            return load_referring(corpus).items
        return range(self.params.num_sources)

    def make(self, source_item: int | ImportedImage, rng: np.random.Generator) -> Sample:
        if isinstance(source_item, ImportedImage):
            return self._make_imported(source_item, rng)
        return self._make_scene(int(source_item), rng)

    def _make_scene(self, index: int, rng: np.random.Generator) -> Sample:
        p = self.params
        seed, scene, rendering = grounding.rendered_scene(p, rng)
        eligible = [o.id for o in scene.objects if grounding.usable(o.id, rendering, p)]
        if not eligible:
            raise SkipItem("target_too_occluded_or_small", f"no object at least {p.min_visible:.0%} visible")
        expression = None
        for k in rng.permutation(len(eligible)):
            target = eligible[int(k)]
            expression = choose_expression(target, scene, eligible, rng, p.relation_share, p.margins)
            if expression is not None:
                break
        if expression is None:
            raise SkipItem("no_unique_expression", "no object can be named uniquely")
        anchor = _anchor_id(expression, scene)
        image = Image.fromarray(rendering.rgb)
        box = list(rendering.boxes[target])
        meta = grounding.base_meta(p, image.size, to_dict(p))
        meta |= {
            "expression": expression.text,
            "expression_parts": expression.to_dict(),
            "target_category": scene.object(target).shape,
            "scene": scene.to_graph(),
            "target_id": target,
            "label_ids": [target],
            "keep_ids": [target] if anchor is None else [target, anchor],
            "seed": seed,
        }
        if anchor is not None:
            meta["anchor_box"] = list(rendering.boxes[anchor])
        answer = {"box": box, "label": scene.object(target).shape}
        text = prompt_text(p, expression.text, meta)
        return Sample(f"{NAME}-{index:08d}", NAME, grounding.messages(image, text), answer, meta)

    def _make_imported(self, item: ImportedImage, rng: np.random.Generator) -> Sample:
        image = grounding.imported_photo(item)
        (label, box), expression = item.boxes[0], str(item.expression)
        meta = grounding.base_meta(self.params, image.size, to_dict(self.params))
        meta |= {"expression": expression, "target_category": label, "source": item.source_id}
        tag = int(rng.integers(2**63))
        answer = {"box": list(box), "label": label}
        text = prompt_text(self.params, expression, meta)
        return Sample(f"{NAME}-{item.source_id}-{tag:016x}", NAME, grounding.messages(image, text), answer, meta)

    def reward(self, completion: str, sample: Sample) -> Reward:
        """`rewards.boxes.rec_reward`: 0.9 · accuracy + 0.1 · format, accuracy = 1[IoU ≥ 0.5] (or IoU)."""
        return rec_reward(
            completion, sample.answer, sample.meta, mode=self.answer_mode(sample), continuous=self.params.continuous_iou
        )

    def reference_completion(self, sample: Sample) -> str:
        """The box in the sample's model coordinates, after a short thought when the prompt asked."""
        thought = f"I look for {sample.meta.get('expression', 'the object')} and read off its box."
        return grounding.reply(sample, grounding.model_box_text(sample.answer["box"], sample.meta), thought)

    def random_answer(self, sample: Sample, rng: np.random.Generator) -> str:
        """A box with integer corners uniform over the model frame."""
        return grounding.reply(sample, box_text(grounding.random_model_box(sample.meta, rng)), "A guess.")

    def constant_answer(self, sample: Sample) -> str:
        """A central box a quarter of the frame wide and high: the camera looks at the scene's centre, so
        objects gather around the middle of the image, and this is about the size of a large object's box."""
        fw, fh = model_frame(sample.meta["model_size"], sample.meta["coords"])
        box = [round(0.375 * fw), round(0.375 * fh), round(0.625 * fw), round(0.625 * fh)]
        return grounding.reply(sample, box_text(box), "The object is near the middle.")

    def evidence(self, sample: Sample) -> list[Panel]:
        """The image with the target's box (and the anchor's, for a relation), titled with the expression."""
        (image,) = evidence.images(sample)[:1] or [None]
        if image is None:
            return []
        boxes = [(f"target: {sample.answer.get('label', '')}", sample.answer["box"])]
        if "anchor_box" in sample.meta:
            boxes.append(("anchor", sample.meta["anchor_box"]))
        title = f'"{sample.meta.get("expression", "")}": the box it names'
        return [
            Panel(title + (" and the anchor object" if len(boxes) > 1 else ""), grounding.boxes_panel(image, boxes))
        ]


def _anchor_id(expression: Expression, scene: Any) -> int | None:
    if expression.anchor is None:
        return None
    (anchor,) = [o.id for o in scene.objects if expression.anchor.fits(o)]
    return anchor


__all__ = ["ReferringGrounding", "ReferringGroundingParams", "prompt_text"]
