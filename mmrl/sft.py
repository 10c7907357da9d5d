"""`mmrl sft`: supervised cold start on reference completions.

A random-init or weak policy almost never samples the answer format a task asks for, so every
GRPO reward is 0 and nothing is learned. A short SFT pass on reference completions fixes that.
The examples come from the run's producer (`make_producer`), `producer.sft_examples(step, n)`:
for tasks, Samples with their answers (`TaskProducer.sft_examples`; with `sft.shuffle_answers`,
each prompt gets the answer of another Sample of the batch: the model learns the format and the
answer vocabulary but not the task, accuracy stays at chance, which is what an honest RL
experiment wants as its starting point); for the spy game, the turns of games scripted without a
model, with true clues and chance-level votes (`games.spy_sft`).

Loss: mean negative log-likelihood of the reference completion tokens (stop token included):
    L = - (1 / Σ_i |y_i|) Σ_i Σ_t log π_θ(y_{i,t} | x_i, y_{i,<t})
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from mmrl.config import RunConfig, from_dict, to_dict
from mmrl.contracts import EncodedPrompt
from mmrl.errors import MMRLError
from mmrl.grpo.trainer import (
    checkpoint,
    optimizer_step_if_finite,
    prepare_run_dir,
    restore,
    save_final,
    setup_policy,
)
from mmrl.logging import CONFIG_FILE, RunLogger
from mmrl.producers import make_producer
from mmrl.rollout.forward import collate, completion_logprobs


def completion_ids(tokenizer, text: str) -> list[int]:
    """Token ids of `text` followed by the end-of-turn token the engine stops at."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return list(ids) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def sft(cfg: RunConfig) -> Path:
    """Run supervised fine-tuning as configured; returns the run folder (model in `<out>/final`).

    A step whose loss or gradient norm is NaN/inf is skipped (metric `nonfinite_skipped`) and
    `train.max_nonfinite_steps` of them in a row stop the run, as in GRPO (`optimizer_step_if_finite`).
    """
    run_dir = Path(cfg.sft.out_dir)
    prepare_run_dir(run_dir, cfg.train, "sft.out_dir")
    policy = setup_policy(cfg, cfg.sft.steps, lr=cfg.sft.lr)
    tokenizer = policy.processor.tokenizer
    producer = make_producer(cfg, policy.processor, rank=policy.accelerator.process_index)
    resumed = restore(policy, producer, cfg.train.resume, run_dir)
    start = resumed or 0
    main = policy.accelerator.is_main_process
    logger = RunLogger(run_dir, cfg.log, total_steps=cfg.sft.steps, resume_step=resumed) if main else None
    if logger:
        logger.log_config(to_dict(cfg))
    device = policy.accelerator.device
    policy.model.train()
    for step in range(start, cfg.sft.steps):
        t0 = time.perf_counter()
        examples = producer.sft_examples(step, cfg.sft.batch_size)
        prompts = [prompt for prompt, _ in examples]
        targets = [completion_ids(tokenizer, text) for _, text in examples]
        loss, tokens = _nll_step(policy, prompts, targets, device, cfg.train.micro_batch_size)
        grad_norm = float(policy.accelerator.clip_grad_norm_(policy.model.parameters(), cfg.train.grad_clip or 1e9))
        done = step + 1
        applied = optimizer_step_if_finite(
            policy, math.isfinite(loss), grad_norm, cfg.train.max_nonfinite_steps, f"SFT step {done}"
        )
        if logger:
            logger.log(done, {"loss/sft": loss, "grad_norm": grad_norm, "lr": policy.scheduler.get_last_lr()[0],
                              "tokens": tokens, "nonfinite_skipped": float(not applied),
                              "time/step": time.perf_counter() - t0})  # fmt: skip
        if done % cfg.train.save_every == 0 or done == cfg.sft.steps:
            checkpoint(policy, producer, run_dir, done, cfg)
    save_final(policy, run_dir / "final")  # every rank: under FSDP the weights are gathered first
    if logger:
        logger.close()
    policy.accelerator.wait_for_everyone()  # every rank may load `final` next (cold start)
    return run_dir


SFT_SETTINGS = ("model", "sft", "data.sources", "data.seed", "game", "train.seed", "train.lora_rank",
                "train.lora_alpha", "train.freeze_vision", "train.freeze_projector", "train.warmup_steps",
                "train.grad_clip")  # fmt: skip
"""Config keys (and sections) the cold-start model depends on: a folder made with other values is not reused."""
_NOT_SETTINGS = ("sft.out_dir", "model.allow_download")  # where it is written, how it may be fetched


def cold_start(cfg: RunConfig) -> Path:
    """The model GRPO starts from when `train.cold_start` is on: `<sft.out_dir>/final`.

    An existing final model is reused only when the SFT run's `config.yaml` agrees with `cfg` on every
    key of `SFT_SETTINGS`; otherwise it is retrained with `train.overwrite=true`, else refused, with the
    differing keys named. Without a final model, SFT runs first.
    """
    run_dir = Path(cfg.sft.out_dir)
    warm = run_dir / "final"
    if not (warm / "config.json").exists():
        print(f"cold start: supervised fine-tuning into {warm}")
        sft(cfg)
        return warm
    changes = sft_setting_changes(run_dir / CONFIG_FILE, to_dict(cfg))
    if not changes:
        print(f"cold start: reusing {warm} (made from the same model and SFT settings)")
        return warm
    listed = "; ".join(changes[:4]) + (f"; and {len(changes) - 4} more" if len(changes) > 4 else "")
    if not cfg.train.overwrite:
        raise MMRLError(
            f"cold start: {warm} was made with other settings ({listed}); set sft.out_dir to a new folder, "
            "or train.overwrite=true to retrain it there"
        )
    print(f"cold start: retraining {warm}, its settings differ ({listed})")
    sft(cfg)
    return warm


def sft_setting_changes(saved_config: Path, wanted: dict[str, Any]) -> list[str]:
    """`key: saved -> wanted` for each `SFT_SETTINGS` value that differs between a run's config.yaml and `wanted`."""
    try:
        saved = yaml.safe_load(saved_config.read_text())
    except (OSError, yaml.YAMLError) as e:
        return [f"its settings are unknown ({saved_config}: {getattr(e, 'strerror', None) or e})"]
    if not isinstance(saved, dict):
        return [f"its settings are unknown ({saved_config} holds no mapping)"]
    try:  # a key added to the config since that run (e.g. data.sources[i].steps) has its default there
        saved = to_dict(from_dict(RunConfig, saved, str(saved_config)))
    except (MMRLError, TypeError, ValueError):
        pass  # a config this version cannot read: compared as written, so its differences are named
    before, after = _flatten(saved), _flatten(wanted)
    keys = sorted(k for k in before.keys() | after.keys() if _is_sft_setting(k))
    missing = "(unset)"
    return [
        f"{k}: {before.get(k, missing)!r} -> {after.get(k, missing)!r}" for k in keys if before.get(k) != after.get(k)
    ]


def _is_sft_setting(key: str) -> bool:
    return key not in _NOT_SETTINGS and any(key == s or key.startswith(s + ".") for s in SFT_SETTINGS)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config dicts -> {"a.b": value}; lists (e.g. data.sources) stay whole values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _nll_step(
    policy, prompts: list[EncodedPrompt], targets: list[list[int]], device, micro: int
) -> tuple[float, float]:
    """Backward of the token-mean NLL over the whole batch (micro-batched); returns (loss, tokens)."""
    total_tokens = sum(len(t) for t in targets)
    total = 0.0
    for i in range(0, len(prompts), micro):
        inputs = collate(prompts[i : i + micro], targets[i : i + micro], policy.pad_id)
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        logprobs, _, mask = completion_logprobs(policy.model, inputs, share_vision=not policy.sharded)  # (B, Lc)
        loss = -torch.where(mask, logprobs, 0.0).sum() / total_tokens  # selected: a padded NaN/-inf adds nothing
        policy.accelerator.backward(loss)
        total += float(loss.detach())
    return total, float(total_tokens)
