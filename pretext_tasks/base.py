"""What a pretext task is, and the helpers every task shares.

A task is a small class (usually a dataclass holding its parameters) with:

- `name`: its registry name (set by `pretext_tasks.registry.register`);
- `params`: an instance of its parameter dataclass (`Params`, one docstring per field);
- `sources(corpus)`: the source items it consumes (photos, videos, RGB-D scenes, or plain indices);
- `make(item, rng)`: one Sample from one source item, every random choice drawn from `rng`, so the
  same item and the same seed give the same Sample, byte for byte;
- `reward(completion, sample)`: the task's own reward (a task owns its reward), from `rewards/`.

The shared prompt helpers live here once, so every task words the answer format the same way and
the wording always matches what `rewards.extract` parses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from mmrl.errors import ConfigError
from mmrl.sample import Sample
from rewards.base import Reward
from rewards.extract import AnswerMode, check_mode

if TYPE_CHECKING:
    from mmrl.corpus import Corpus


@runtime_checkable
class PretextTask(Protocol):
    """The interface the engine uses; tasks implement it structurally (no base class needed)."""

    name: ClassVar[str]
    """Registry name, e.g. `dominant_color`; also the `task` field of every Sample it makes."""
    Params: ClassVar[type]
    """The parameter dataclass; `get_task(name, **params)` builds it and checks the keys."""
    params: Any
    """This instance's parameters (an instance of `Params`)."""

    def sources(self, corpus: Corpus | str | Path | None = None) -> Sequence[Any]:
        """The source items `make` consumes, in a deterministic order (a corpus, a folder, or none)."""
        ...

    def make(self, source_item: Any, rng: np.random.Generator) -> Sample:
        """One Sample from `source_item`, every random choice drawn from `rng`."""
        ...

    def reward(self, completion: str, sample: Sample) -> Reward:
        """Score one completion of `sample`; never raises on the completion."""
        ...


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


def options_text(options: Sequence[str]) -> str:
    """A list of options in prose: `red, green, blue or yellow` (one option: itself)."""
    options = [str(o) for o in options]
    if len(options) <= 1:
        return "".join(options)
    return ", ".join(options[:-1]) + " or " + options[-1]


def item_path(item: Any) -> tuple[str, Path]:
    """(source id, path) of a source item: a corpus item's `id` and `path`, or a plain path and its stem."""
    if isinstance(item, (str, Path)):
        return Path(item).stem, Path(item)
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


def shuffle_and_label(k: int, rng: np.random.Generator, *, allow_identity: bool = False) -> Shuffle:
    """Draw the shown order of `k` elements; by default never the identity (it would give the answer away)."""
    if k < 2:
        raise ValueError(f"an ordering task needs at least 2 elements, got {k}")
    while True:
        order = tuple(int(i) for i in rng.permutation(k))
        if allow_identity or order != tuple(range(k)):
            return Shuffle(order)


__all__ = [
    "PretextTask",
    "Shuffle",
    "answer_instruction",
    "item_path",
    "options_text",
    "shuffle_and_label",
    "video_sources",
]
