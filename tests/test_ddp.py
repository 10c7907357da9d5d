"""The unchanged training loop under `accelerate launch` with two CPU processes (gloo DDP).

On a machine without CUDA, `--multi_gpu` makes accelerate start torchrun workers that fall back to
CPU + gloo (`--cpu` would start a single process).
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmrl.grpo.checkpoint import latest_checkpoint
from mmrl.logging import read_metrics

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # two processes under accelerate launch


def test_two_process_training(tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    assert accelerate, "accelerate's launcher is installed with the package"
    out = subprocess.run(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "mmrl.cli", "train",
         "--config", str(ROOT / "configs" / "quickstart.yaml"),
         "train.cold_start=false", "train.steps=3", "train.save_every=3", "data.prompts_per_step=4", "rollout.n=4",
         "data.eval_samples=4", "log.progress=false", "algorithm.entropy_coef=0.01", f"train.out_dir={tmp_path}"],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert all(r["world_size"] == 2 for r in records[1:])
    assert all(r["grad_norm"] > 0 for r in records[1:])
    assert latest_checkpoint(tmp_path).name == "step-0000003"
    assert (tmp_path / "final" / "model.safetensors").exists()
