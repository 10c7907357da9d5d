"""`object_detection` (OVD): a list of categories and an image; the answer is every box of those categories.

Sources (docs/grounding.md): procedural scenes (`source: default`; categories are shape names) or a COCO
detection file of the user's own images (`source: path/to/instances.json`, `pretext_tasks.grounding_import`).

Asked categories: k ~ U{categories_per_prompt}; with probability `empty_share` all k are absent from the
image (answer `[]`), otherwise one present category is drawn first and the rest from the present and
absent ones. A procedural category whose objects are too hidden or too small to label is never asked.
Prompt: `Find every cone or cube in the image.` + the coordinate sentence + the exact reply format, a JSON
list `[{"label": "cube", "box": [x1, y1, x2, y2]}, ...]`, with an example.
Reward (`rewards.boxes.ovd_reward`): 0.9 · F1 at IoU 0.5 (Hungarian one-to-one matching) + 0.1 · format.
"""

from __future__ import annotations

import json
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
from pretext_tasks.base import degenerate, options_text
from pretext_tasks.grounding import GroundingParams
from pretext_tasks.grounding_import import ImportedImage, load_coco
from rewards.boxes import answer_boxes, ovd_reward, truth_model_box

if TYPE_CHECKING:
    from mmrl.corpus import Corpus

NAME = "object_detection"


@dataclass
class ObjectDetectionParams(GroundingParams):
    categories_per_prompt: tuple[int, int] = (1, 3)
    """Range (inclusive) of how many categories one prompt asks for (fewer when the source has fewer)."""
    empty_share: float = 0.1
    """Probability that every asked category is absent, so the answer is the empty list. At most 1/2: above
    it the empty reply is the likeliest answer (a degenerate setting)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.categories_per_prompt = (int(self.categories_per_prompt[0]), int(self.categories_per_prompt[1]))
        lo, hi = self.categories_per_prompt
        if not 1 <= lo <= hi:
            raise ConfigError(f"{NAME}: categories_per_prompt must satisfy 1 <= min <= max, got {lo}, {hi}")
        if not 0.0 <= self.empty_share <= 1.0:
            raise ConfigError(f"{NAME}: empty_share must be in [0, 1], got {self.empty_share}")
        if self.empty_share > 0.5:
            raise degenerate(
                NAME, f"empty_share = {self.empty_share}",
                "the empty answer [] would be drawn with probability above 1/2", "use empty_share <= 0.5",
            )  # fmt: skip


def choose_categories(
    present: Sequence[str], absent: Sequence[str], params: ObjectDetectionParams, rng: np.random.Generator
) -> list[str]:
    """The asked categories (see the module docstring); `present` are those that may be labelled. Draws, in
    order: k, the empty coin, then the categories. Raises SkipItem when nothing can be asked."""
    lo, hi = params.categories_per_prompt
    k = int(rng.integers(lo, hi + 1))
    empty = float(rng.random()) < params.empty_share
    if (empty or not present) and absent:
        picks = rng.choice(len(absent), size=min(k, len(absent)), replace=False)
        return [absent[int(i)] for i in picks]
    if not present:
        raise SkipItem("no_category_to_ask", "no labelable category present and none absent")
    first = present[int(rng.integers(len(present)))]
    rest = [c for c in (*present, *absent) if c != first]
    picks = rng.choice(len(rest), size=min(k - 1, len(rest)), replace=False) if rest and k > 1 else []
    return [first, *(rest[int(i)] for i in picks)]


def prompt_text(params: GroundingParams, categories: Sequence[str], meta: dict[str, Any]) -> str:
    """The question: the categories, the coordinate convention and the exact reply format with an example."""
    slot = '[{"label": "' + categories[0] + '", "box": [x1, y1, x2, y2]}, ...]'
    example = json.dumps([{"label": categories[0], "box": grounding.example_box(meta)}])
    coordinates = grounding.coordinate_sentence(meta["coords"], meta["model_size"])
    return (
        f"Find every {options_text(categories)} in the image. {coordinates} "
        "List each object once, labelled with its category exactly as written here; if there is none, the "
        f"list is []. {grounding.instruction(params, slot, example)}"
    )


@dataclass
class ObjectDetection(Task):
    """Find every object of the asked categories; answer the list of labelled boxes."""

    Params: ClassVar[type[ObjectDetectionParams]] = ObjectDetectionParams
    name: ClassVar[str] = NAME
    params: ObjectDetectionParams = field(default_factory=ObjectDetectionParams)
    """Scene, prompt and reward parameters."""

    def sources(self, corpus: Corpus | str | Path | None = None) -> Sequence[Any]:
        """Procedural scene indices (default corpus or None), or the images of a COCO file (a path to it, or to
        the folder holding it)."""
        if isinstance(corpus, (str, Path)):
            return load_coco(corpus).items
        return range(self.params.num_sources)

    def make(self, source_item: int | ImportedImage, rng: np.random.Generator) -> Sample:
        if isinstance(source_item, ImportedImage):
            return self._make_imported(source_item, rng)
        return self._make_scene(int(source_item), rng)

    def _make_scene(self, index: int, rng: np.random.Generator) -> Sample:
        p = self.params
        seed, scene, rendering = grounding.rendered_scene(p, rng)
        in_scene = {o.shape for o in scene.objects}
        clean = [s for s in p.shapes if s in in_scene and all(
            grounding.usable(o.id, rendering, p) for o in scene.objects if o.shape == s)]  # fmt: skip
        absent = [s for s in p.shapes if s not in in_scene]
        categories = _in_order(choose_categories(clean, absent, p, rng), p.shapes)
        labelled = sorted((o for o in scene.objects if o.shape in categories), key=lambda o: rendering.boxes[o.id])
        image = Image.fromarray(rendering.rgb)
        meta = grounding.base_meta(p, image.size, to_dict(p))
        ids = [o.id for o in labelled]
        meta |= {"categories": categories, "scene": scene.to_graph(), "label_ids": ids, "keep_ids": ids, "seed": seed}
        answer = {"objects": [{"label": o.shape, "box": list(rendering.boxes[o.id])} for o in labelled]}
        text = prompt_text(p, categories, meta)
        return Sample(f"{NAME}-{index:08d}", NAME, grounding.messages(image, text), answer, meta)

    def _make_imported(self, item: ImportedImage, rng: np.random.Generator) -> Sample:
        image = grounding.imported_photo(item)
        present = sorted({label for label, _ in item.boxes})
        absent = [c for c in item.categories if c not in present]
        categories = sorted(choose_categories(present, absent, self.params, rng))
        objects = sorted(((label, list(box)) for label, box in item.boxes if label in categories), key=lambda b: b[1])
        meta = grounding.base_meta(self.params, image.size, to_dict(self.params))
        meta |= {"categories": categories, "source": item.source_id}
        tag = int(rng.integers(2**63))
        answer = {"objects": [{"label": label, "box": box} for label, box in objects]}
        text = prompt_text(self.params, categories, meta)
        return Sample(f"{NAME}-{item.source_id}-{tag:016x}", NAME, grounding.messages(image, text), answer, meta)

    def reward(self, completion: str, sample: Sample) -> Reward:
        """`rewards.boxes.ovd_reward`: 0.9 · F1 at IoU 0.5 (one-to-one matching) + 0.1 · format."""
        return ovd_reward(completion, sample.answer, sample.meta, mode=self.answer_mode(sample))

    def reference_completion(self, sample: Sample) -> str:
        """Every labelled box in the sample's model coordinates, as the JSON list the prompt shows."""
        found = [
            {"label": label, "box": truth_model_box(box, sample.meta)} for label, box in answer_boxes(sample.answer)
        ]
        return grounding.reply(sample, json.dumps(found), "I look for each asked category and box every instance.")

    def random_answer(self, sample: Sample, rng: np.random.Generator) -> str:
        """0 to 3 boxes uniform over the model frame, each labelled with a random asked category."""
        categories = sample.meta.get("categories") or ["object"]
        guesses = [
            {
                "label": categories[int(rng.integers(len(categories)))],
                "box": grounding.random_model_box(sample.meta, rng),
            }
            for _ in range(int(rng.integers(4)))
        ]
        return grounding.reply(sample, json.dumps(guesses), "A guess.")

    def constant_answer(self, sample: Sample) -> str:
        """The empty list: right on every sample whose categories are all absent (`empty_share` of them);
        a fixed box is right almost never, and every extra box lowers precision."""
        return grounding.reply(sample, "[]", "I see none of them.")

    def evidence(self, sample: Sample) -> list[Panel]:
        """The image with every answer box outlined and labelled, titled with the asked categories."""
        (image,) = evidence.images(sample)[:1] or [None]
        if image is None:
            return []
        boxes = answer_boxes(sample.answer)
        asked = options_text(sample.meta.get("categories", []))
        title = f"Asked for {asked}: {len(boxes)} object{'s' * (len(boxes) != 1)} in the answer"
        return [Panel(title, grounding.boxes_panel(image, boxes))]


def _in_order(categories: Sequence[str], vocabulary: Sequence[str]) -> list[str]:
    return [c for c in vocabulary if c in categories]


__all__ = ["ObjectDetection", "ObjectDetectionParams", "choose_categories", "prompt_text"]
