"""Helpers of the jigsaw tasks' tests (tests/test_image_jigsaw.py, tests/test_video_jigsaw.py): the prompt texts
of a Sample, and the digest of Samples written as a dataset (the same-seed-same-bytes checks)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from mmrl.sample import Sample, write_dataset
from mmrl.task import Task


def texts_of(sample: Sample) -> list[str]:
    """The text items of the prompt, in order."""
    return [i["text"] for m in sample.messages for i in m["content"] if i["type"] == "text"]


def dataset_digest(root: Path) -> str:
    """sha256 over every file under `root`: its relative path, then its bytes, in sorted path order."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def write_samples(task: Task, source: Any, out: Path, seed: int, *, n: int) -> str:
    """`n` Samples of `source` (sample i from `default_rng([seed, i])`, id `s{i}`) written as a dataset in
    `out`; returns its digest."""
    samples = []
    for i in range(n):
        sample = task.make(source, np.random.default_rng([seed, i]))
        sample.id = f"s{i}"
        samples.append(sample)
    return dataset_digest(write_dataset(samples, out))
