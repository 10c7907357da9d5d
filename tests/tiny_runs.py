"""Helpers of the tests that run the producer and the trainer on the tiny model (test_producers.py, test_prefetch.py,
test_trainer.py, test_user_files.py): a test task, small datasets, the quickstart config shrunk into a temp folder,
the CLI in a subprocess, and what two runs that should agree are compared on."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from mmrl.config import RunConfig, load_config
from mmrl.contracts import Reward
from mmrl.models import resolve_model_path
from mmrl.sample import Sample, write_dataset
from mmrl.task import Task

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


class ParityTask(Task):
    """Test task: even source items always score 0.5 (a zero-variance group, which dynamic sampling replaces);
    odd ones score the parity of the completion's length, so their groups usually have variance. Not registered
    here: each test module registers a subclass under its own name (its Samples carry that name)."""

    @dataclass
    class Params:
        size: int = 32
        """Image side."""
        broken_every: int = 0
        """When > 0, `make` raises ValueError for source items divisible by it (a bug in a task)."""

    def __init__(self, params):
        self.params = params

    def sources(self, corpus=None):
        return range(1000)

    def make(self, index, rng):
        if self.params.broken_every and index % self.params.broken_every == 0:
            raise ValueError(f"cannot make item {index}")
        image = Image.fromarray(rng.integers(0, 256, (self.params.size, self.params.size, 3), dtype=np.uint8))
        content = [{"type": "image", "image": image}, {"type": "text", "text": "Say anything."}]
        return Sample(f"p{index}", self.name, [{"role": "user", "content": content}], answer=None,
                      meta={"even": bool(index % 2 == 0)})  # fmt: skip

    def reward(self, completion, sample):
        if sample.meta["even"]:
            return Reward(0.5, {"constant": 1.0})
        return Reward(float(len(completion) % 2), {"constant": 0.0})


def write_task_dataset(task: Task, count: int, folder: Path) -> Path:
    """Samples 0..count-1 of `task` (item i made with `default_rng(i)`), ids s0, s1, ..., as a dataset in `folder`."""
    samples = [task.make(i, np.random.default_rng(i)) for i in range(count)]
    for i, s in enumerate(samples):
        s.id = f"s{i}"
    write_dataset(samples, folder)
    return folder


def quickstart_config(tmp_path: Path, *overrides: str) -> RunConfig:
    """configs/quickstart.yaml with its run in tmp_path/run, its SFT model in tmp_path/sft, no progress bar,
    then `overrides`."""
    return load_config(
        RunConfig,
        QUICKSTART,
        [f"train.out_dir={tmp_path / 'run'}", f"sft.out_dir={tmp_path / 'sft'}", "log.progress=false", *overrides],
    )


def mmrl_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m mmrl.cli ARGS` from the repository root, its output captured."""
    return subprocess.run([sys.executable, "-m", "mmrl.cli", *args], capture_output=True, text=True, cwd=ROOT)


def sample_ids(run: Path) -> dict[int, list[str]]:
    """step -> the ids of the samples it trained on, in the order the run's samples.jsonl lists them."""
    steps: dict[int, list[str]] = {}
    for line in (run / "samples.jsonl").read_text().splitlines():
        row = json.loads(line)
        steps.setdefault(row["step"], []).append(row["sample_id"])
    return steps


def assert_same_trained_weights(a: Path, b: Path) -> None:
    """Runs `a` and `b` (from tiny:qwen2.5-vl) end with the same weights, and training moved them (the comparison
    is not vacuous)."""
    wa = load_file(a / "final" / "model.safetensors")
    wb = load_file(b / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-5, atol=1e-6, msg=name)
    initial = load_file(Path(resolve_model_path("tiny:qwen2.5-vl")) / "model.safetensors")
    assert initial.keys() == wa.keys()
    assert any(not torch.allclose(initial[k], wa[k]) for k in wa)
