"""The supervised cold start (`mmrl.sft`) on both producers: task examples and answer shuffling, resume."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mmrl.config import RunConfig, load_config
from mmrl.models import load_processor
from mmrl.producers import TaskProducer
from mmrl.sft import sft

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
SPY = ROOT / "configs" / "spy_tiny.yaml"


def test_task_examples_are_deterministic_and_shuffling_only_permutes_the_answers() -> None:
    cfg = load_config(RunConfig, QUICKSTART, ["sft.shuffle_answers=false"])
    processor = load_processor(cfg.model)
    plain = TaskProducer(cfg, processor).sft_examples(3, 16)
    again = TaskProducer(cfg, processor).sft_examples(3, 16)
    assert len(plain) == 16
    assert [(p.input_ids.tolist(), t) for p, t in plain] == [(p.input_ids.tolist(), t) for p, t in again]
    assert all("<answer>" in t for _, t in plain)  # the task's answer format
    cfg.sft.shuffle_answers = True
    shuffled = TaskProducer(cfg, processor).sft_examples(3, 16)
    assert [p.input_ids.tolist() for p, _ in shuffled] == [p.input_ids.tolist() for p, _ in plain]  # same prompts
    assert Counter(t for _, t in shuffled) == Counter(t for _, t in plain)  # the same answers ...
    assert [t for _, t in shuffled] != [t for _, t in plain]  # ... given to other prompts


@pytest.mark.parametrize("recipe", [QUICKSTART, SPY], ids=["task", "spy"])
@pytest.mark.slow
def test_resumed_cold_start_ends_with_the_uninterrupted_model(tmp_path, recipe) -> None:
    def run(out: Path, steps: int, *extra: str) -> dict[str, torch.Tensor]:
        overrides = [f"sft.out_dir={out}", f"sft.steps={steps}", "sft.batch_size=4", "train.save_every=2",
                     "log.progress=false", "log.tensorboard=false", *extra]  # fmt: skip
        sft(load_config(RunConfig, recipe, overrides))
        return load_file(out / "final" / "model.safetensors")

    full = run(tmp_path / "full", 4)
    run(tmp_path / "part", 2)  # stops after its checkpoint at step 2, as a killed run would have saved it
    resumed = run(tmp_path / "part", 4, "train.resume=auto")
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert not torch.equal(full["lm_head.weight"], run(tmp_path / "short", 2)["lm_head.weight"])  # it trained on
