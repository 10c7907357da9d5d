"""FSDP (configs/accelerate/fsdp.yaml): sharded checkpoints, and two CPU processes (gloo) that train like DDP.

The fast tests run the sharded checkpoint format in one process (torch.distributed.checkpoint works
without a process group). The slow test launches the tiny model three times under `accelerate
launch`: DDP, FSDP, and FSDP resumed from the FSDP run's step-2 checkpoint, and compares them.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmrl.errors import MMRLError
from mmrl.grpo.checkpoint import SHARDED, checkpoint_dir, load_checkpoint, resolve_resume, save_checkpoint
from mmrl.logging import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def _trained_pair(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A small model and an AdamW that has taken one step (so it has moments to save)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 6)).square().sum().backward()
    optimizer.step()
    return model, optimizer


def test_sharded_checkpoint_round_trip_in_one_process(tmp_path):
    model, optimizer = _trained_pair(seed=0)
    path = save_checkpoint(
        tmp_path, 2, model=model, optimizer=optimizer, scheduler=None, producer_state={"counters": [5]}, sharded=True
    )
    meta = json.loads((path / "meta.json").read_text())
    assert meta["model"] == SHARDED and meta["model_class"] == "Sequential"
    assert any(name.startswith(f"{SHARDED}/") and name.endswith(".distcp") for name in meta["files"])
    assert not (path / "optimizer.pt").exists() and not (path / "model").exists()
    assert resolve_resume("auto", tmp_path) == path  # the shard files are checksummed like any other file

    fresh, fresh_optimizer = _trained_pair(seed=1)  # other weights and other moments, to be overwritten
    state = load_checkpoint(path, model=fresh, optimizer=fresh_optimizer, scheduler=None)
    assert state["step"] == 2 and state["producer_state"] == {"counters": [5]}
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    saved, loaded = optimizer.state_dict()["state"], fresh_optimizer.state_dict()["state"]
    for key in saved:
        assert torch.equal(saved[key]["exp_avg_sq"], loaded[key]["exp_avg_sq"])
        assert float(saved[key]["step"]) == float(loaded[key]["step"])


def test_full_checkpoint_refused_by_a_sharded_model(tmp_path):
    model, optimizer = _trained_pair(seed=0)
    path = save_checkpoint(tmp_path, 1, model=model, optimizer=optimizer, scheduler=None, producer_state={})
    with pytest.raises(MMRLError, match="under FSDP.*ddp.yaml"):
        load_checkpoint(path, model=model, optimizer=optimizer, scheduler=None, sharded=True)


def test_sharded_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    model, optimizer = _trained_pair(seed=0)
    path = save_checkpoint(
        tmp_path, 1, model=model, optimizer=optimizer, scheduler=None, producer_state={}, sharded=True
    )
    other = torch.nn.Sequential(torch.nn.Linear(6, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))
    with pytest.raises(MMRLError, match="sharded model/optimizer state does not fit"):
        load_checkpoint(path, model=other, optimizer=None, scheduler=None)


# --------------------------------------------------------------------------------------------------
# Two processes on CPU


def _launch(config: str, out_dir: Path, *overrides: str) -> None:
    """`accelerate launch --config_file configs/accelerate/<config>` of a 3-step tiny run (2 CPU processes)."""
    out = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch",
         "--config_file", str(ROOT / "configs" / "accelerate" / config), "--num_processes", "2",
         "-m", "mmrl.cli", "train", "--config", str(ROOT / "configs" / "quickstart.yaml"),
         "train.cold_start=false", "train.steps=3", "data.prompts_per_step=4", "rollout.n=4", "data.eval_samples=4",
         "log.progress=false", "algorithm.entropy_coef=0.01", f"train.out_dir={out_dir}", *overrides],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]


def _by_step(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(run_dir)}


@pytest.mark.slow  # three two-process launches
def test_fsdp_trains_like_ddp_and_resumes_exactly(tmp_path):
    from transformers import AutoModelForImageTextToText

    ddp, fsdp, resumed = tmp_path / "ddp", tmp_path / "fsdp", tmp_path / "resumed"
    _launch("ddp.yaml", ddp, "train.save_every=3")
    _launch("fsdp.yaml", fsdp, "train.save_every=2")
    _launch("fsdp.yaml", resumed, f"train.resume={checkpoint_dir(fsdp, 2)}")

    # Same losses as DDP. The random-init model earns no reward (every group has zero spread), so the
    # gradient is the entropy bonus's: the entropy and gradient norm at steps 2 and 3 depend on the updates
    # (the entropy moves by ~1e-4 relative per step; FSDP and DDP agree to ~1e-7).
    ddp_rows, fsdp_rows = _by_step(ddp), _by_step(fsdp)
    assert sorted(fsdp_rows) == [0, 1, 2, 3]
    for step in (1, 2, 3):
        assert fsdp_rows[step]["world_size"] == 2
        for key in ("entropy", "grad_norm", "loss/policy"):
            assert fsdp_rows[step][key] == pytest.approx(ddp_rows[step][key], rel=1e-5, abs=1e-9), (step, key)

    # Sharded checkpoints: one file per rank.
    meta = json.loads((checkpoint_dir(fsdp, 2) / "meta.json").read_text())
    assert meta["model"] == SHARDED
    assert sum(name.endswith(".distcp") for name in meta["files"]) == 2

    # Resumed from step 2: step 3 is the uninterrupted run's step 3.
    resumed_rows = _by_step(resumed)
    assert sorted(resumed_rows) == [3]
    for key in ("entropy", "grad_norm", "loss/policy", "reward/mean", "eval/reward"):
        assert resumed_rows[3][key] == pytest.approx(fsdp_rows[3][key], rel=1e-6, abs=1e-9), key

    # `final/` is a plain model folder that transformers loads, with the weights DDP trained.
    final = AutoModelForImageTextToText.from_pretrained(fsdp / "final")
    assert not any(isinstance(p, torch.distributed.tensor.DTensor) for p in final.parameters())
    fsdp_weights, ddp_weights, resumed_weights = (
        load_file(run / "final" / "model.safetensors") for run in (fsdp, ddp, resumed)
    )
    assert set(fsdp_weights) == set(ddp_weights) == set(resumed_weights)
    for name, tensor in fsdp_weights.items():
        assert torch.allclose(tensor, ddp_weights[name], atol=1e-5), name
        assert torch.allclose(tensor, resumed_weights[name], atol=1e-6), name
