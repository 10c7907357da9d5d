"""What the mmrl-vs-TRL benchmarks (`grpo_vs_trl.py`, `video_scaling.py`) share: the model sizes and the
settings under which both trainers do equal work, so that the two benchmarks cannot drift apart on them.

Equal work per rollout batch, on both sides: one forward/backward over all its sequences and one AdamW (torch)
step, learning rate constant with no warm-up, weight decay 0, grad clip 1.0, PPO clip 0.2, token-mean loss
(TRL `loss_type="dapo"`), group-normalised advantages (TRL `scale_rewards="group"`, mmrl `advantage: grpo`),
no KL (`beta=0`, `kl_coef=0`), no gradient checkpointing (TRL's default is on, mmrl's off), float32 on the CPU.
Sampling and data settings stay with each benchmark: they differ (one generates, the other feeds fixed
completions).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trl import GRPOConfig

    from mmrl.config import RolloutConfig, RunConfig

SPECS: dict[str, dict[str, int]] = {
    # The default tiny build (what `tiny:qwen2.5-vl` is).
    "tiny": {},
    # About 5M parameters: 4 text layers of width 256, a 4-block vision tower of width 128
    # (5,199,488 parameters, 1,205,632 of them in the vision tower).
    "5m": dict(
        hidden_size=256,
        intermediate_size=768,
        num_layers=4,
        num_heads=8,
        num_kv_heads=4,
        vision_hidden_size=128,
        vision_intermediate_size=256,
        vision_depth=4,
        vision_heads=4,
    ),
}
"""`mmrl.tiny.TinySpec` fields of each model size, by the name `--configs` takes."""


def build_checkpoint(name: str, root: Path, seed: int) -> Path:
    """The random-init Qwen2.5-VL checkpoint of size `name` (`SPECS`), written to `root/model-<name>`."""
    from mmrl.tiny import TinySpec, build_tiny

    return build_tiny("qwen2.5-vl", root / f"model-{name}", seed=seed, spec=TinySpec(**SPECS[name]))


def mmrl_config(
    model_path: str | Path,
    rollout: RolloutConfig,
    *,
    steps: int,
    lr: float,
    sequences: int,
    seed: int,
    out_dir: str | Path,
    **train: Any,
) -> RunConfig:
    """mmrl's `RunConfig` for the peer comparison: the checkpoint in float32, `rollout` as given, the shared
    algorithm and one `micro_batch_size = sequences` update per step; `train` adds `TrainConfig` fields."""
    from mmrl.config import AlgorithmConfig, RunConfig, TrainConfig

    cfg = RunConfig()
    cfg.model = dataclasses.replace(cfg.model, path=str(model_path), dtype="float32")
    cfg.rollout = rollout
    cfg.algorithm = AlgorithmConfig(advantage="grpo", loss="ppo_clip", aggregation="token-mean", kl_coef=0.0)
    cfg.train = TrainConfig(steps=steps, lr=lr, micro_batch_size=sequences,  # one forward/backward per step
                            grad_clip=1.0, seed=seed, out_dir=str(out_dir), **train)  # fmt: skip
    return cfg


def trl_config(
    *,
    output_dir: str | Path,
    sequences: int,
    group: int,
    completion_tokens: int,
    lr: float,
    steps: int,
    seed: int,
    **extra: Any,
) -> GRPOConfig:
    """TRL's `GRPOConfig` with the settings of `mmrl_config`; `extra` adds `GRPOConfig` fields (sampling)."""
    from trl import GRPOConfig

    return GRPOConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=sequences,  # TRL counts completions: prompts x group, all in one step
        gradient_accumulation_steps=1,
        num_generations=group,
        num_iterations=1,
        max_completion_length=completion_tokens,
        learning_rate=lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        optim="adamw_torch",
        max_grad_norm=1.0,
        beta=0.0,
        loss_type="dapo",  # token-mean over the batch: mmrl's `aggregation: token-mean`
        scale_rewards="group",  # (r - group mean) / group std: mmrl's `advantage: grpo`
        epsilon=0.2,  # mmrl's clip_low = clip_high = 0.2
        max_steps=steps,
        gradient_checkpointing=False,  # GRPOConfig defaults to True; mmrl's default is False
        bf16=False,
        fp16=False,
        use_cpu=True,
        shuffle_dataset=False,  # keep the dataset's order (each benchmark lays it out as mmrl draws)
        seed=seed,
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        **extra,
    )


def require_trl() -> ModuleType | None:
    """The `trl` module, or None after saying how to install it (TRL is only in the `bench` extra)."""
    try:
        import trl
    except ImportError:
        print("TRL is not installed: .venv/bin/pip install -e '.[bench]'", file=sys.stderr)
        return None
    return trl
