"""Scoring completions of a set of Samples with their own tasks, and the two baselines every result is read against.

`score(samples, completions)` scores completions with each sample's task (built with the parameters it was
generated with); `random_baseline` averages answers of the right form drawn at random (the task's
`random_answer`, else another sample's reference answer); `constant_completions` finds, per task, the one
reply with the best mean reward on the set. `mmrl eval` prints them as its `random` and `constant` rows, and
the trainer's held-out evaluation logs them next to the policy's reward (`eval/random_reward`, ...).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmrl import registry
from mmrl.errors import MMRLError
from mmrl.sample import Sample
from mmrl.task import Task, answer_key, score_completion

log = logging.getLogger(__name__)

MAX_CONSTANT_CANDIDATES = 64
"""The best constant answer of a task is searched among this many of its most common reference answers
(plus the task's own `constant_answer`)."""


@dataclass
class Scored:
    """One scored completion."""

    id: str
    task: str
    completion: str
    reward: float
    accuracy: float
    """1.0 for an exact answer, else 0.0 (a mean over draws for the random baseline)."""
    answer: str = ""
    """The answer the completion gives (`mmrl.task.answer_key`), for the answer spread."""
    parts: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Scoring


class TaskCache(dict):
    """Task objects by registry name, built on first use with default parameters."""

    def __missing__(self, name: str) -> Task:
        self[name] = task = registry.get_task(name)
        return task

    def of(self, sample: Sample) -> Task:
        """The task that scores `sample`: built with the parameters it was generated with
        (`meta["params"]`, when present and still valid), else with the defaults."""
        params = sample.meta.get("params")
        if not isinstance(params, dict):
            return self[sample.task]
        key = f"{sample.task}:{json.dumps(params, sort_keys=True, default=str)}"
        if key not in self:
            try:
                self[key] = registry.get_task(sample.task, **params)
            except MMRLError as e:
                if "unknown task" in str(e):
                    raise
                log.warning("task %s: meta params no longer valid (%s); scoring with defaults", sample.task, e)
                self[key] = self[sample.task]
        return self[key]


def answer_completion(task: Task, sample: Sample, answer: Any) -> str:
    """The completion that states `answer` instead of the sample's own: the task's `reference_completion` of
    a copy of the sample carrying `answer`."""
    return task.reference_completion(dataclasses.replace(sample, answer=answer))


def indices_by_task(samples: Sequence[Sample]) -> list[list[int]]:
    """The positions of each task's samples, one list per task, tasks in name order."""
    by_task: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_task.setdefault(s.task, []).append(i)
    return [by_task[task] for task in sorted(by_task)]


def reference_completions(samples: Sequence[Sample], tasks: TaskCache | None = None) -> list[str]:
    """Each sample's ground truth as a completion (scores accuracy 1.0 when the scoring path is right)."""
    tasks = TaskCache() if tasks is None else tasks
    return [tasks.of(s).reference_completion(s) for s in samples]


def random_completions(samples: Sequence[Sample], rng: np.random.Generator, tasks: dict | None = None) -> list[str]:
    """One random-guess completion per sample, as described in the module docstring."""
    tasks = TaskCache() if tasks is None else tasks
    out = [""] * len(samples)
    for indices in indices_by_task(samples):
        shuffled = [indices[j] for j in rng.permutation(len(indices))]  # the fallback: a shuffle of answers
        for i, other in zip(indices, shuffled):
            sample = samples[i]
            task = tasks.of(sample)
            guess = task.random_answer(sample, rng)
            out[i] = guess if guess is not None else answer_completion(task, sample, samples[other].answer)
    return out


def score(samples: Sequence[Sample], completions: Sequence[str], tasks: TaskCache | None = None) -> list[Scored]:
    """Score `completions[i]` for `samples[i]` with the sample's task reward (a raising reward scores 0)."""
    if len(samples) != len(completions):
        raise ValueError(f"{len(samples)} samples but {len(completions)} completions")
    tasks = TaskCache() if tasks is None else tasks
    scored = []
    for sample, completion in zip(samples, completions):
        reward, error = score_completion(tasks.of(sample), completion, sample)
        if error is not None:
            log.warning("reward of task %s raised %s on sample %s; scored 0", sample.task, error, sample.id)
        parts = {k: float(v) for k, v in reward.parts.items()}
        answer = answer_key(tasks.of(sample), completion, sample)
        scored.append(
            Scored(sample.id, sample.task, completion, float(reward.score), float(reward.is_exact), answer, parts)
        )
    return scored


def random_baseline(samples: Sequence[Sample], draws: int, seed: int, tasks: TaskCache | None = None) -> list[Scored]:
    """The random row: per sample, reward and exactness averaged over `draws` random completions."""
    tasks = TaskCache() if tasks is None else tasks
    rng = np.random.default_rng([seed, 7])
    runs = [score(samples, random_completions(samples, rng, tasks), tasks) for _ in range(draws)]
    merged = []
    for i, sample in enumerate(samples):
        row = [run[i] for run in runs]
        merged.append(
            Scored(
                sample.id,
                sample.task,
                row[0].completion,
                float(np.mean([r.reward for r in row])),
                float(np.mean([r.accuracy for r in row])),
                row[0].answer,
            )
        )
    return merged


NUMBER = re.compile(r"(\d+(?:\.\d+)?)")


def central_answers(answers: Sequence[Any]) -> list[Any]:
    """Per-position median and mode of answers made of the same number of numbers in the same form: number
    lists (`[3, 1, 2]`) or texts that differ only in their numbers (counts `"3,2,3"`, intervals `"5.5-19.0"`);
    [] for anything else. Answers keep their form: lists stay lists, texts keep their separators and each
    position's decimals; integer positions stay integers (the median rounded half to even)."""
    if not answers:
        return []
    if all(isinstance(a, str) for a in answers):
        parts = [NUMBER.split(a) for a in answers]  # text, number, text, number, ..., text
        if len({tuple(p[0::2]) for p in parts}) != 1:
            return []
        columns = [[p[i] for p in parts] for i in range(1, len(parts[0]), 2)]
        if not columns:
            return []
        places = [max(len(x.partition(".")[2]) for x in c) for c in columns]
        table = np.array([[float(x) for x in c] for c in columns]).T  # (answers, positions)

        def as_answer(values: Sequence[float]) -> str:
            out = list(parts[0])
            for i, (v, d) in enumerate(zip(values, places)):
                out[2 * i + 1] = f"{v:.{d}f}"
            return "".join(out)

    elif all(isinstance(a, (list, tuple)) and a for a in answers):
        if len({len(a) for a in answers}) != 1 or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for a in answers for x in a
        ):
            return []
        table = np.array(answers, dtype=float)  # (answers, positions)
        integer = all(isinstance(x, int) for a in answers for x in a)

        def as_answer(values: Sequence[float]) -> list[float | int]:
            return [int(round(v)) for v in values] if integer else [float(v) for v in values]

    else:
        return []
    median = np.median(table, axis=0)
    mode = [Counter(column.tolist()).most_common(1)[0][0] for column in table.T]
    return [as_answer(median), as_answer(mode)]


def constant_completions(samples: Sequence[Sample], tasks: TaskCache | None = None) -> list[str]:
    """Per sample, the best constant completion of its task: the one reply that, given to every sample of the
    task in `samples`, has the highest mean reward. Searched among the `MAX_CONSTANT_CANDIDATES` most common
    reference completions of the task, the task's own `constant_answer` and, for answers that are number
    vectors, their per-position median and mode (`central_answers`: the best constant count vector or
    interval is often no sample's answer); ties go to the more common one.

    It is the bar a policy must clear to show it reads the input: a constant interval covering the middle of
    most videos, or the most common count vector, already earns partial credit without looking.
    """
    tasks = TaskCache() if tasks is None else tasks
    out = [""] * len(samples)
    for indices in indices_by_task(samples):
        group = [samples[i] for i in indices]
        task = tasks.of(group[0])
        references = Counter(task.reference_completion(s) for s in group)
        candidates = [c for c, _ in references.most_common(MAX_CONSTANT_CANDIDATES)]
        proposed = [task.constant_answer(group[0])]
        proposed += [answer_completion(task, group[0], v) for v in central_answers([s.answer for s in group])]
        candidates += [c for c in dict.fromkeys(proposed) if c is not None and c not in candidates]
        means = [float(np.mean([r.reward for r in score(group, [c] * len(group), tasks)])) for c in candidates]
        best = candidates[int(np.argmax(means))]
        for i in indices:
            out[i] = best
    return out


__all__ = [
    "MAX_CONSTANT_CANDIDATES",
    "Scored",
    "TaskCache",
    "answer_completion",
    "central_answers",
    "constant_completions",
    "random_baseline",
    "random_completions",
    "reference_completions",
    "score",
]
