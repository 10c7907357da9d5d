"""The mmrl-vs-TRL benchmarks (benchmarks/grpo_vs_trl.py, benchmarks/video_scaling.py) take their model sizes and
equal-work settings from one place, benchmarks/peer.py, and TRL's config there says what mmrl's says."""

from __future__ import annotations

import importlib

import pytest

from mmrl.config import RolloutConfig


def test_both_benchmarks_import_and_share_the_peer_settings() -> None:
    peer = importlib.import_module("benchmarks.peer")
    grpo = importlib.import_module("benchmarks.grpo_vs_trl")
    video = importlib.import_module("benchmarks.video_scaling")
    for name in ("mmrl_config", "trl_config", "require_trl", "build_checkpoint"):
        assert getattr(video, name) is getattr(peer, name)
        assert getattr(grpo, name) is getattr(peer, name)
    assert grpo.parse_args([]).configs.split(",") == list(peer.SPECS)


def test_mmrl_config_is_one_float32_update_per_step(tmp_path) -> None:
    from benchmarks.peer import mmrl_config

    rollout = RolloutConfig(n=8, max_new_tokens=16)
    cfg = mmrl_config(tmp_path / "model", rollout, steps=5, lr=2e-3, sequences=32, seed=3, out_dir=tmp_path / "run",
                      prompt_once=True)  # fmt: skip
    assert cfg.rollout is rollout
    assert (cfg.model.path, cfg.model.dtype) == (str(tmp_path / "model"), "float32")
    a = cfg.algorithm
    assert (a.advantage, a.loss, a.aggregation, a.kl_coef) == ("grpo", "ppo_clip", "token-mean", 0.0)
    t = cfg.train
    assert (t.steps, t.lr, t.micro_batch_size, t.grad_clip, t.seed) == (5, 2e-3, 32, 1.0, 3)
    assert (t.out_dir, t.prompt_once, t.gradient_checkpointing) == (str(tmp_path / "run"), True, False)


def test_trl_config_says_what_mmrl_config_says(tmp_path) -> None:
    pytest.importorskip("trl")  # only in the `bench` extra
    from benchmarks.peer import mmrl_config, trl_config

    cfg = mmrl_config(tmp_path / "model", RolloutConfig(n=4), steps=7, lr=5e-4, sequences=12, seed=2, out_dir=tmp_path)
    trl = trl_config(output_dir=tmp_path / "trl", sequences=12, group=4, completion_tokens=16, lr=5e-4, steps=7, seed=2)
    a, t = cfg.algorithm, cfg.train
    pairs = {
        "learning_rate": t.lr,
        "max_steps": t.steps,
        "seed": t.seed,
        "per_device_train_batch_size": t.micro_batch_size,  # one forward/backward per step on both sides
        "num_generations": cfg.rollout.n,
        "max_grad_norm": t.grad_clip,
        "weight_decay": t.weight_decay,
        "warmup_steps": t.warmup_steps,
        "lr_scheduler_type": t.schedule,
        "gradient_checkpointing": t.gradient_checkpointing,
        "beta": a.kl_coef,
        "epsilon": a.clip_low,
    }
    assert {k: getattr(trl, k) for k in pairs} == pairs  # TRL's scheduler type is a str enum
    assert a.clip_high == a.clip_low
    assert (trl.loss_type, trl.scale_rewards, trl.num_iterations, trl.gradient_accumulation_steps) == (
        "dapo",  # token mean: mmrl's aggregation "token-mean"
        "group",  # (r - group mean) / group std: mmrl's advantage "grpo"
        1,
        1,
    )
    assert (a.aggregation, a.advantage) == ("token-mean", "grpo")
    assert not trl.bf16 and not trl.shuffle_dataset
