"""The task contract: what a pretext task is, what the engine calls, and the defaults of the optional hooks.

A task turns one source item (a photo, a video, a 3D scene, an index) into one verifiable Sample, and owns
the reward of its Samples. Subclass `Task` (dataclass subclasses are the usual form) and declare the class
under the entry-point group `mmrl.tasks` (docs/writing_a_task.md). The engine reaches a task only by name,
through `mmrl.registry`, and calls only what is listed here.

Required:
    name                         the registry name, also the `task` of every Sample it makes
    Params                       a dataclass of the task's parameters, one docstring per field
    params                       this instance's parameters; the class is built as `cls(params)`
    sources(corpus)              the source items `make` consumes, in a deterministic order
    make(item, rng)              one Sample, every random choice drawn from `rng` (same seed, same bytes)
    reward(completion, sample)   a `Reward` in [0, 1]; never raises on the completion

Optional hooks, with the defaults below:
    reference_completion(sample) the ideal reply: the SFT cold start's target, and `mmrl eval`'s check
                                 that the scoring path gives the reference accuracy 1
    random_answer(sample, rng)   a reply of the right form drawn at random: the `random` baseline row of
                                 `mmrl eval` (None: eval shuffles the dataset's reference answers instead)
    constant_answer(sample)      the one reply that scores best when given to every sample: the
                                 best-constant baseline (None: the task names none)
    evidence(sample)             the proof of the answer for people, as titled pictures (`Panel`s) that
                                 `mmrl generate --preview` draws under the prompt and the answer (the
                                 grounded segment marked on a frame timeline, a jigsaw reassembled);
                                 made from the sample's own media and meta only, never by redoing the
                                 random draw, so a sheet shows what the model was shown ([]: none)

Reward part names with a meaning outside the task (`format`, `accuracy`, `exact`) are listed in
`mmrl.contracts.REWARD_PARTS`.

Random keys: the engine seeds every draw of a task's Samples with a key that holds `task_key(name)`, so two
tasks given the same seed do not pick the same source item with the same generator state.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mmrl.contracts import Reward
from mmrl.errors import MMRLError
from mmrl.sample import Sample
from rewards.extract import AnswerMode, answer_payload, extract_answer, wrap_answer
from rewards.match import normalize_answer

if TYPE_CHECKING:
    from pathlib import Path

    from PIL import Image

    from mmrl.corpus import Corpus

PANEL_MAX_WIDTH = 1060
"""Widest evidence picture drawn at its own size on a preview sheet; wider ones are scaled down to it."""


@dataclass(frozen=True)
class Panel:
    """One piece of a sample's evidence on its preview sheet: a picture under a short title."""

    title: str
    """What the picture shows, in a line or two (`Clips in the answer's order`)."""
    image: Image.Image
    """The picture, RGB, at most `PANEL_MAX_WIDTH` px wide to be drawn unscaled."""


class Task:
    """Base class of every task: the required parts raise until a subclass defines them; the hooks have defaults."""

    name: ClassVar[str]
    Params: ClassVar[type]
    params: Any

    def sources(self, corpus: Corpus | str | Path | None = None) -> Sequence[Any]:
        """The source items `make` consumes: from the default corpus, a folder, or none (self-made items)."""
        raise NotImplementedError(f"task {self.name} must define sources(corpus)")

    def make(self, source_item: Any, rng: np.random.Generator) -> Sample:
        """One Sample from `source_item`, every random choice drawn from `rng`."""
        raise NotImplementedError(f"task {self.name} must define make(source_item, rng)")

    def reward(self, completion: str, sample: Sample) -> Reward:
        """Score one completion of `sample`; never raises on the completion."""
        raise NotImplementedError(f"task {self.name} must define reward(completion, sample)")

    def reward_group(self, completions: Sequence[str], sample: Sample) -> list[Reward]:
        """Score a group of completions of one `sample` (the rollouts of one prompt). Default: `reward` of each;
        a task whose reward runs a model (e.g. a sentence embedder) overrides it to batch that model's calls."""
        return [self.reward(completion, sample) for completion in completions]

    def answer_mode(self, sample: Sample) -> AnswerMode:
        """The reply format the sample's prompt asked for: `meta["answer_mode"]`, else the task's parameter."""
        return sample.meta.get("answer_mode") or getattr(self.params, "answer_mode", "answer_tag")

    def reference_completion(self, sample: Sample) -> str:
        """Default: the answer's text (`answer_payload`) wrapped in the sample's answer format."""
        return wrap_answer(answer_payload(sample.answer), self.answer_mode(sample))

    def random_answer(self, sample: Sample, rng: np.random.Generator) -> str | None:
        """Default: None (`mmrl eval` then draws another sample's reference answer)."""
        return None

    def constant_answer(self, sample: Sample) -> str | None:
        """Default: None (no best-constant baseline)."""
        return None

    def evidence(self, sample: Sample) -> list[Panel]:
        """Default: no panels (the preview sheet shows the prompt and the answer only)."""
        return []


def answer_key(task: Task, completion: str, sample: Sample) -> str:
    """The answer a completion gives, normalised (`rewards.match.normalize_answer`), for counting how many
    different answers a policy gives: the text inside the sample's answer format, else the whole reply."""
    extracted = extract_answer(completion, task.answer_mode(sample)) if isinstance(completion, str) else None
    return normalize_answer(extracted if extracted is not None else str(completion).strip())


def answer_spread(keys: Sequence[str]) -> tuple[float, float]:
    """(spread, top share) of a list of answers: distinct answers / answers, and the share of the most common one.

    A policy that collapsed onto one reply (the same interval for every grounding prompt) has a spread near
    1/n and a top share near 1, whatever its reward; a varied policy has a spread near the task's own.
    """
    if not keys:
        return 0.0, 0.0
    counts = Counter(keys)
    return len(counts) / len(keys), max(counts.values()) / len(keys)


def task_key(name: str) -> int:
    """A stable integer of a task name, mixed into the random keys of its draws (`mmrl generate`, live sources).

    CRC-32 of the UTF-8 name: the same on every machine, Python version and process (Python's `hash` of a
    string is salted per process, so it must never be used for this).

    >>> task_key("video_jigsaw") == task_key("video_jigsaw") != task_key("temporal_jigsaw")
    True
    """
    return zlib.crc32(name.encode("utf-8"))


def score_completion(task: Task, completion: str, sample: Sample) -> tuple[Reward, str | None]:
    """`task.reward(completion, sample)`, the one place a task's reward is called by the engine.

    A reward must never raise on model output; one that does anyway is a bug of the task, and must not
    take a run down: it scores 0 with no parts, and the error's text comes back for the caller to count
    and report. An `MMRLError` (e.g. a sample naming an unknown task) is the user's to fix and propagates.
    """
    try:
        return task.reward(completion, sample), None
    except MMRLError:
        raise
    except Exception as e:
        return Reward(0.0, {}), f"{type(e).__name__}: {e}"


def score_group(task: Task, completions: Sequence[str], sample: Sample) -> list[tuple[Reward, str | None]]:
    """`task.reward_group(completions, sample)`, with `score_completion`'s guarantees: if the batched call raises
    (other than an `MMRLError`), or returns the wrong number of rewards, each completion is scored alone, so one
    bad completion costs only its own reward."""
    try:
        rewards = task.reward_group(list(completions), sample)
    except MMRLError:
        raise
    except Exception:
        rewards = None
    if rewards is not None and len(rewards) == len(completions):
        return [(reward, None) for reward in rewards]
    return [score_completion(task, completion, sample) for completion in completions]


__all__ = [
    "PANEL_MAX_WIDTH",
    "Panel",
    "Task",
    "answer_key",
    "answer_spread",
    "score_completion",
    "score_group",
    "task_key",
]
