"""The helpers every built-in task shares (the task contract itself is `mmrl.task.Task`).

The prompt helpers live here once, so every task words the answer format the same way and the wording
always matches what `rewards.extract` parses; `OrderingTask` is the one implementation of the reward and
hooks of the four tasks whose answer is an order (image, video, depth and temporal jigsaw).

Degenerate settings. Every built-in task refuses, in its `Params` checks, a setting whose answer is
constant or nearly so (docs/writing_a_task.md#rules-that-keep-a-task-usable): fewer than
`MIN_ANSWERS` possible answers, one answer with probability above 1/2, or one fixed reply that scores
above 1/2 on every sample. `degenerate` words the error.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mmrl.contracts import Reward
from mmrl.errors import ConfigError
from mmrl.sample import Sample
from mmrl.task import Task
from rewards.extract import AnswerMode, check_mode
from rewards.ordering import OrderingParams

if TYPE_CHECKING:
    from mmrl.corpus import Corpus


def answer_instruction(mode: AnswerMode = "answer_tag", placeholder: str = "answer", *, think: bool = False) -> str:
    """The sentence telling the model the exact reply format, worded to match `rewards.extract`.

    `placeholder` names what goes in the slot (`"colour"` → `<answer>colour</answer>`). With `think`,
    the model is asked to reason in `<think>…</think>` first (not available for `raw`, where the
    whole reply is the answer).

    >>> answer_instruction("answer_tag", "colour")
    'Answer with only <answer>colour</answer>.'
    >>> answer_instruction("boxed", "number", think=True)
    'Think inside <think></think>, then answer with \\\\boxed{number}.'
    """
    check_mode(mode)
    if mode == "raw":
        if think:
            raise ConfigError("answer mode 'raw' cannot ask for <think> reasoning: the whole reply is the answer")
        return f"Answer with only the {placeholder}."
    slot = f"<answer>{placeholder}</answer>" if mode == "answer_tag" else f"\\boxed{{{placeholder}}}"
    if think:
        return f"Think inside <think></think>, then answer with {slot}."
    return f"Answer with only {slot}."


MIN_ANSWERS = 3
"""Fewest possible answers a task setting may have; fewer is a degenerate setting (the answer is constant or
a coin flip, so a model can reach the reward without looking at the input)."""


def degenerate(task: str, setting: str, why: str, fix: str) -> ConfigError:
    """The error a task's Params checks raise for a degenerate setting: names the parameter(s), says why, and
    says what to change, e.g. `image_jigsaw: rows x cols = 1x2 is a degenerate setting: ...`."""
    return ConfigError(f"{task}: {setting} is a degenerate setting: {why}; {fix} (docs/writing_a_task.md)")


def check_order_size(task: str, setting: str, k: int) -> None:
    """Refuse an ordering of K < `MIN_ANSWERS` elements. With K = 2 the shuffle (never the identity) is always
    the swap, so the answer would always be `2, 1`; K = 3 has 5 equally likely answers."""
    if k < 2:
        raise ConfigError(f"{task}: {setting} gives {k} element(s) to order; use at least {MIN_ANSWERS}")
    if k < MIN_ANSWERS:
        raise degenerate(
            task, setting, "the shuffle is never the identity, so the answer would always be 2, 1",
            f"use at least {MIN_ANSWERS} elements",
        )  # fmt: skip


def options_text(options: Sequence[str]) -> str:
    """A list of options in prose: `red, green, blue or yellow` (one option: itself)."""
    options = [str(o) for o in options]
    if len(options) <= 1:
        return "".join(options)
    return ", ".join(options[:-1]) + " or " + options[-1]


def item_path(item: Any) -> tuple[str, Path]:
    """(source id, path) of a source item: a corpus item's `id` and `path`, or a plain path and its file name.

    The file name keeps its extension, as corpus ids do (`mmrl.corpus`): `b.mp4` and `b.avi` are two sources.
    """
    if isinstance(item, (str, Path)):
        return Path(item).name, Path(item)
    return item.id, Path(item.path)


def video_sources(task_name: str, corpus: Corpus | str | Path | None) -> Sequence[Any]:
    """The videos of the default corpus, or every video under a folder path (for video tasks' `sources`)."""
    if corpus is None:
        raise ConfigError(f"{task_name} needs source videos: the default corpus or a folder of videos")
    if isinstance(corpus, (str, Path)):
        from mmrl.corpus import video_folder  # mmrl.corpus imports open3d: only when needed

        return video_folder(corpus)
    return corpus.videos


@dataclass(frozen=True)
class Shuffle:
    """K elements shown in a shuffled order under labels 1..K (Visual Jigsaw's convention).

    `order[j]` is the true index (0-based, in true order: raster, chronological, nearest first) of
    the element shown under label j+1. The answer `labels[i]` is the label that true element i was
    shown under, so listing `labels` walks the elements in their true order.
    Worked example (K=4): order = (2, 0, 3, 1) -> labels = (2, 4, 1, 3).
    """

    order: tuple[int, ...]
    """True index of the element shown under each label (label j+1 at position j)."""

    @property
    def labels(self) -> tuple[int, ...]:
        """Ground truth: for each element in true order, the 1-based label it was shown under."""
        return tuple(self.order.index(i) + 1 for i in range(len(self.order)))

    def shown(self, elements: Sequence[Any]) -> list[Any]:
        """`elements` (in true order) rearranged into the order they are shown in."""
        if len(elements) != len(self.order):
            raise ValueError(f"shuffle of {len(self.order)} elements applied to {len(elements)}")
        return [elements[i] for i in self.order]


def labelled_items(label: str, items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Prompt content showing `items` under labels 1..K: `"{label} 1: "`, item 1, `"\n{label} 2: "`, item 2, ...

    Each label starts its own line, after the previous item (the ordering tasks' `Tile j:` / `Clip j:`).
    """
    content: list[dict[str, Any]] = []
    for j, item in enumerate(items, start=1):
        newline = "\n" if j > 1 else ""
        content.append({"type": "text", "text": f"{newline}{label} {j}: "})
        content.append(item)
    return content


def shuffle_and_label(k: int, rng: np.random.Generator, *, allow_identity: bool = False) -> Shuffle:
    """Draw the shown order of `k` elements; by default never the identity (it would give the answer away)."""
    if k < 2:
        raise ValueError(f"an ordering task needs at least 2 elements, got {k}")
    while True:
        order = tuple(int(i) for i in rng.permutation(k))
        if allow_identity or order != tuple(range(k)):
            return Shuffle(order)


class OrderingTask(Task):
    """Reward and hooks of a task whose answer is the order of K shown elements (labels 1..K, `Shuffle`).

    `params` is an `OrderingParams` (the answer format and the reward knobs); the reward is
    `OrderingParams.score` (rewards.ordering: format gate, exact match, γ partial credit or footrule).
    """

    params: OrderingParams
    reference_thought: ClassVar[str] = "I compare the elements and put them in order."
    """The reasoning sentence of the SFT reference when the prompt asks for <think> (a task may override
    `thought` to make it depend on the sample)."""

    def reward(self, completion: str, sample: Sample) -> Reward:
        """`OrderingParams.score`: `ordering_reward` against the labels stored in the Sample, in the answer format
        and think requirement its prompt asked for, with this task's reward knobs."""
        return self.params.score(completion, sample)

    def thought(self, sample: Sample) -> str:
        """The <think> sentence of the reference completion of `sample`."""
        return self.reference_thought

    def reference_completion(self, sample: Sample) -> str:
        """The SFT target: the labels in the asked format, after a short <think> block when the prompt asked."""
        return self.params.reference(sample, self.thought(sample))

    def random_answer(self, sample: Sample, rng: np.random.Generator) -> str:
        """A uniformly random permutation of the labels, stated like the reference."""
        labels = [int(x) + 1 for x in rng.permutation(len(sample.answer))]
        return self.reference_completion(dataclasses.replace(sample, answer=labels))

    def constant_answer(self, sample: Sample) -> str:
        """The reversed order K..1: a fixed permutation that can be right (the identity never is: a shuffle
        is never the identity), scoring like any fixed permutation in expectation."""
        return self.reference_completion(dataclasses.replace(sample, answer=list(range(len(sample.answer), 0, -1))))


__all__ = [
    "MIN_ANSWERS",
    "OrderingTask",
    "Shuffle",
    "answer_instruction",
    "check_order_size",
    "degenerate",
    "item_path",
    "labelled_items",
    "options_text",
    "shuffle_and_label",
    "video_sources",
]
