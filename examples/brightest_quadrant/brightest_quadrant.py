"""Example task plugin: which quadrant of a noisy grey image is the brightest? Answer: `top-left`, ...

Everything a task needs: a name, a `Params` dataclass (one docstring per field), `sources`, `make` (every
random choice from the rng it is given) and `reward`; the optional hooks of `mmrl.task.Task` give the
`mmrl eval` baselines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from PIL import Image

from mmrl.contracts import Reward
from mmrl.sample import Sample
from mmrl.task import Task
from rewards.extract import AnswerMode, wrap_answer
from rewards.match import exact_match

QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")


@dataclass
class BrightestQuadrantParams:
    image_size: int = 56
    """Width and height of the image in pixels (even)."""
    contrast: int = 40
    """How much brighter the chosen quadrant is than the others, in grey levels (harder when small)."""
    answer_mode: AnswerMode = "answer_tag"
    """Reply format: `answer_tag` (<answer>top-left</answer>), `boxed` or `raw`."""


@dataclass
class BrightestQuadrant(Task):
    """Which quadrant of the image is the brightest?"""

    name: ClassVar[str] = "brightest_quadrant"
    Params: ClassVar[type] = BrightestQuadrantParams
    params: BrightestQuadrantParams = field(default_factory=BrightestQuadrantParams)

    def sources(self, corpus=None) -> range:
        """The task draws its own images: a source item is just an index."""
        return range(1_000_000)

    def make(self, source_item: int, rng: np.random.Generator) -> Sample:
        size, half = self.params.image_size, self.params.image_size // 2
        pixels = rng.integers(60, 140, size=(size, size), dtype=np.int16)  # grey noise
        answer = int(rng.integers(4))
        row, col = divmod(answer, 2)
        pixels[row * half : (row + 1) * half, col * half : (col + 1) * half] += self.params.contrast
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).convert("RGB")
        question = "Which quadrant of the image is the brightest: top-left, top-right, bottom-left or bottom-right?"
        slot = wrap_answer("quadrant", self.params.answer_mode)
        content = [{"type": "image", "image": image}, {"type": "text", "text": f"{question} Answer with {slot}."}]
        return Sample(
            id=f"{self.name}-{source_item}",
            task=self.name,
            messages=[{"role": "user", "content": content}],
            answer=QUADRANTS[answer],
            meta={"answer_mode": self.params.answer_mode},
        )

    def reward(self, completion: str, sample: Sample) -> Reward:
        """0.9 · [right quadrant] + 0.1 · [asked format], with parts `accuracy` and `format`."""
        return exact_match(completion, sample.answer, mode=self.answer_mode(sample))

    def random_answer(self, sample: Sample, rng: np.random.Generator) -> str:
        return wrap_answer(QUADRANTS[int(rng.integers(4))], self.answer_mode(sample))

    def constant_answer(self, sample: Sample) -> str:
        return wrap_answer(QUADRANTS[0], self.answer_mode(sample))
