"""The GRPO training loop.

    for step in steps:
        rollouts = producer.produce(engine, step)     # generate, score, group advantages
        update_policy(rollouts)                       # PPO-clip/GSPO epochs over mini-batches
        engine.sync_weights(policy)                   # the engine samples from the new weights
        log, evaluate, checkpoint

The loop knows nothing about tasks or games: a Producer hands it Rollouts with advantages. It runs
unchanged under `accelerate launch` (DDP): every rank produces its own prompts, gradients are
averaged by DDP, and token counts that normalise the loss are summed over ranks first (R12 in
docs/requirements.md; docs/grpo.md). Under FSDP (`configs/accelerate/fsdp.yaml`) each rank holds a
shard of the weights and optimizer state, so every forward pass is collective: all ranks evaluate,
and checkpoints (sharded) and the final model (gathered) are written by all ranks together
(docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmrl.config import RunConfig, TrainConfig, to_dict
from mmrl.contracts import Producer, Rollout
from mmrl.errors import MMRLError
from mmrl.grpo.checkpoint import CHECKPOINTS, load_checkpoint, resolve_resume, save_checkpoint
from mmrl.grpo.loss import policy_loss
from mmrl.logging import METRICS_FILE, RunLogger, peak_memory
from mmrl.models import load_policy
from mmrl.producers import make_producer
from mmrl.rollout import make_engine
from mmrl.rollout.forward import collate, completion_logprobs
from mmrl.rollout.hf import logprob_agreement


@dataclasses.dataclass
class Policy:
    """Everything the update touches; built by `setup_policy`."""

    model: torch.nn.Module
    """The trainable model (DDP-wrapped under accelerate)."""
    processor: Any
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    accelerator: Any
    ref_model: torch.nn.Module | None = None
    """Frozen reference; only loaded when the KL weight is non-zero."""
    nonfinite_streak: int = 0
    """Optimiser steps skipped in a row for a NaN/inf loss or gradient (`optimizer_step_if_finite`)."""

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    @property
    def sharded(self) -> bool:
        """Whether the weights are sharded over ranks (FSDP): forward passes and saving then involve every rank."""
        return is_sharded(self.accelerator)

    @property
    def pad_id(self) -> int:
        return int(self.processor.tokenizer.pad_token_id)


# --------------------------------------------------------------------------------------------------
# Setup


def setup_policy(cfg: RunConfig, total_optimizer_steps: int, *, lr: float | None = None) -> Policy:
    """Load the policy, apply freezing / LoRA / checkpointing, and build optimiser and schedule."""
    from accelerate import Accelerator

    cuda = torch.cuda.is_available()
    accelerator = Accelerator(cpu=not cuda, mixed_precision=cfg.train.mixed_precision if cuda else "no")
    _fsdp_on_cpu(accelerator)
    if is_sharded(accelerator) and not accelerator.is_fsdp2:
        raise MMRLError("FSDP version 1 is not supported: set fsdp_version: 2 (configs/accelerate/fsdp.yaml)")
    if is_sharded(accelerator) and cfg.train.lora_rank > 0:
        raise MMRLError(
            "train.lora_rank > 0 under FSDP is not supported: the adapter is small, launch with DDP "
            "(configs/accelerate/ddp.yaml) instead"
        )
    torch.manual_seed(cfg.train.seed)  # model-side randomness (LoRA init); sampling is seeded per call
    model, processor = load_policy(cfg.model, device=accelerator.device)
    freeze_parts(model, vision=cfg.train.freeze_vision, projector=cfg.train.freeze_projector)
    if cfg.train.lora_rank > 0:
        model = add_lora(model, cfg.train.lora_rank, cfg.train.lora_alpha)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    ref_model = None
    if cfg.algorithm.kl_coef > 0:
        ref_model, _ = load_policy(cfg.model, device=accelerator.device)
        ref_model.requires_grad_(False).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise MMRLError("nothing to train: every parameter is frozen (check train.freeze_* and lora settings)")
    optimizer = torch.optim.AdamW(params, lr=lr or cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.train.schedule, cfg.train.warmup_steps, total_optimizer_steps)
    )
    # from_pretrained returns eval mode, where transformers skips gradient checkpointing (and dropout).
    model.train()
    model, optimizer = accelerator.prepare(model, optimizer)
    return Policy(model, processor, optimizer, scheduler, accelerator, ref_model)


def is_sharded(accelerator: Any) -> bool:
    """Whether `accelerator` shards the model over ranks (FSDP, version 1 or 2)."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def _fsdp_on_cpu(accelerator: Any) -> None:
    """Honour an FSDP launch config on CPU workers (gloo).

    accelerate turns FSDP on only for accelerator devices; CPU workers silently fall back to plain
    data parallelism. FSDP2 itself runs on CPU, so we switch the shared state to FSDP the way
    accelerate does on GPUs, with the plugin it builds from the launcher's FSDP_* variables. This is
    what lets the two-process CPU test (tests/test_fsdp.py) run the sharded code path.
    """
    from accelerate import FullyShardedDataParallelPlugin, PartialState
    from accelerate.utils import DistributedType

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return
    if accelerator.distributed_type != DistributedType.MULTI_CPU:
        return
    accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()  # reads FSDP_* as set by the launcher
    accelerator.state.distributed_type = DistributedType.FSDP
    # Every later AcceleratorState() copies the process-level state over its own: set it there too, as
    # accelerate does when it picks FSDP itself.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


@contextlib.contextmanager
def gathered_for_generation(policy: Policy):
    """Under FSDP, hold the full weights on every rank while the engine generates; a no-op otherwise.

    Two reasons. transformers' `generate` encodes images and videos before the model's forward (outside
    the root module's FSDP hooks, which would all-gather the patch embedding), and decoding with sharded
    layers would all-gather every layer again for every new token. So every FSDP unit is all-gathered
    once here and kept (no resharding after each forward) until generation ends: rollouts cost the
    memory of one full model copy per rank, the update keeps FSDP's sharded memory. The root's lazy
    initialisation runs first: FSDP elects as root the first unit that runs, and the vision blocks
    run before the root's forward. `generate` keeps ranks in step itself (`synced_gpus`).
    """
    if not policy.sharded:
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    root = policy.model
    root._get_fsdp_state()._lazy_init()  # private: FSDP2 offers no public way to fix the root early
    units = [m for m in root.modules() if isinstance(m, FSDPModule)]
    root.set_reshard_after_forward(False)
    for unit in units:
        unit.unshard()
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
        root.set_reshard_after_forward(bool(policy.accelerator.state.fsdp_plugin.reshard_after_forward))
        root.set_reshard_after_forward(False, recurse=False)  # FSDP's own choice for the root


def lr_lambda(schedule: str, warmup: int, total: int):
    """Multiplier of the peak lr at optimiser step s: linear warm-up, then constant/linear/cosine decay."""

    def factor(s: int) -> float:
        if warmup and s < warmup:
            return (s + 1) / warmup
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


def freeze_parts(model: torch.nn.Module, *, vision: bool, projector: bool) -> None:
    """Freeze the vision tower (blocks + patch embedding) and/or the projector (Qwen's `merger`)."""
    for name, param in model.named_parameters():
        in_visual = ".visual." in f".{name}"
        is_merger = ".merger." in name or ".deepstack_merger" in name
        if (vision and in_visual and not is_merger) or (projector and in_visual and is_merger):
            param.requires_grad_(False)


def add_lora(model: torch.nn.Module, rank: int, alpha: int) -> torch.nn.Module:
    """LoRA on the language model's attention and MLP projections (the vision tower stays as set: R8)."""
    from peft import LoraConfig, get_peft_model

    targets = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
    return get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0))


# --------------------------------------------------------------------------------------------------
# Update


def update_policy(policy: Policy, rollouts: list[Rollout], cfg: RunConfig, step: int) -> dict[str, float]:
    """`ppo_epochs` passes over the rollouts, each split into `mini_batches` optimiser steps.

    An optimiser step whose loss or gradient norm is NaN/inf is skipped (`optimizer_step_if_finite`);
    metric `nonfinite_skipped` counts them, and `grad_norm` averages the applied steps only.
    """
    algo = cfg.algorithm
    acc = policy.accelerator
    multi_pass = algo.ppo_epochs > 1 or algo.mini_batches > 1
    old = behaviour_logprobs(policy, rollouts, cfg) if multi_pass else None
    ref = reference_logprobs(policy, rollouts, cfg) if policy.ref_model is not None else None
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    skipped = 0
    rng = np.random.default_rng([cfg.train.seed, step, 7])
    for epoch in range(algo.ppo_epochs):
        order = rng.permutation(len(rollouts)) if multi_pass else np.arange(len(rollouts))
        for mini_index, mini in enumerate(np.array_split(order, algo.mini_batches)):
            if len(mini) == 0:
                continue
            # Normalisers of the whole optimiser step, summed over ranks (R12 / token-mean pitfall).
            local = torch.tensor(
                [sum(len(rollouts[i].completion.token_ids) for i in mini), len(mini)], dtype=torch.float64
            )
            num_tokens, num_seqs = acc.reduce(local.to(acc.device), reduction="sum").tolist()
            micro = [mini[i : i + cfg.train.micro_batch_size] for i in range(0, len(mini), cfg.train.micro_batch_size)]
            loss_finite = True
            for k, idx in enumerate(micro):
                batch = [rollouts[i] for i in idx]
                with acc.no_sync(policy.model) if k < len(micro) - 1 else contextlib.nullcontext():
                    metrics, weight, micro_loss_finite = _micro_step(
                        policy,
                        batch,
                        cfg,
                        old=[old[i] for i in idx] if old is not None else None,
                        ref=[ref[i] for i in idx] if ref is not None else None,
                        num_tokens=num_tokens,
                        num_seqs=num_seqs,
                    )
                loss_finite = loss_finite and micro_loss_finite
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value * weight
                    counts[key] = counts.get(key, 0.0) + weight
            grad_norm = _clip(policy, cfg.train.grad_clip)
            where = f"step {step + 1}, epoch {epoch + 1}, mini-batch {mini_index + 1}"
            if optimizer_step_if_finite(policy, loss_finite, grad_norm, cfg.train.max_nonfinite_steps, where):
                sums["grad_norm"] = sums.get("grad_norm", 0.0) + grad_norm
                counts["grad_norm"] = counts.get("grad_norm", 0.0) + 1
            else:
                skipped += 1
    out = {k: sums[k] / counts[k] for k in sums}
    out["nonfinite_skipped"] = float(skipped)
    out["lr"] = policy.scheduler.get_last_lr()[0]
    return out


def _micro_step(
    policy: Policy, batch: list[Rollout], cfg: RunConfig, *, old, ref, num_tokens, num_seqs
) -> tuple[dict[str, float], float, bool]:
    """Forward and backward of one micro-batch; returns its metrics, their weight (its token count) and whether
    its loss is finite.

    Under FSDP the vision tower runs inside the model's forward (no features shared per group): encoded
    outside it, the root module's sharded weights (patch embedding, merger) would not be gathered.

    The backward runs even for a NaN/inf loss: under DDP every rank must join the gradient all-reduce,
    and the step is then skipped on all ranks together (`optimizer_step_if_finite`).
    """
    algo = cfg.algorithm
    device = policy.accelerator.device
    inputs = _to(collate([r.prompt for r in batch], [r.completion.token_ids for r in batch], policy.pad_id), device)
    logprobs, entropy, mask = completion_logprobs(
        policy.model,
        inputs,
        temperature=cfg.rollout.temperature,
        with_entropy=True,
        share_vision=not policy.sharded,
        vision_chunk_frames=cfg.train.vision_chunk_frames,
        vision_checkpointing=cfg.train.vision_checkpointing,
        prompt_once=cfg.train.prompt_once,
    )  # (B, Lc) each
    width = logprobs.shape[1]
    old_lp = old_logprobs(batch, _pad_stack(old, width, device) if old is not None else logprobs.detach())
    ref_lp = _pad_stack(ref, width, device) if ref is not None else None
    advantages = torch.tensor([r.advantage for r in batch], dtype=torch.float32, device=device)  # (B,)
    loss, metrics = policy_loss(
        logprobs,
        old_lp,
        advantages,
        mask,
        algo,
        ref_logprobs=ref_lp,
        entropy=entropy.detach() if algo.entropy_coef == 0 else entropy,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        max_len=cfg.rollout.max_new_tokens,
    )
    # DDP averages gradients over ranks; the normalisers above are global sums, so undo the mean.
    policy.accelerator.backward(loss * policy.accelerator.num_processes)
    engine_lp = _pad_stack([r.completion.logprobs for r in batch], width, device)
    metrics["logprob_diff"] = logprob_agreement(engine_lp, logprobs.detach(), mask)
    weight = metrics.pop("num_tokens")  # the micro-batch's token count: the weight of its metrics in the step's mean
    return metrics, weight, bool(torch.isfinite(loss.detach()))


def old_logprobs(batch: list[Rollout], old: torch.Tensor) -> torch.Tensor:
    """The PPO ratio's denominator per row: `old` (the trainer's own π_old, or the current log-probs detached
    in a single pass), except for rollouts flagged `meta["off_policy"]` (sampled by an older policy, e.g. the
    matured descriptions of Syn-GRPO), whose ratio is taken against their behaviour log-probs, the engine's
    `completion.logprobs`: ratio = π_θ / π_behaviour."""
    stale = [i for i, r in enumerate(batch) if r.meta.get("off_policy")]
    if not stale:
        return old
    old = old.clone()
    old[stale] = _pad_stack([batch[i].completion.logprobs for i in stale], old.shape[1], old.device)
    return old


@torch.no_grad()
def behaviour_logprobs(policy: Policy, rollouts: list[Rollout], cfg: RunConfig) -> list[torch.Tensor]:
    """π_old log-probs recomputed by the trainer before the update (needed for several passes)."""
    return _logprobs_of(policy.model, policy, rollouts, cfg)


@torch.no_grad()
def reference_logprobs(policy: Policy, rollouts: list[Rollout], cfg: RunConfig) -> list[torch.Tensor]:
    return _logprobs_of(policy.ref_model, policy, rollouts, cfg)


def _logprobs_of(model, policy: Policy, rollouts: list[Rollout], cfg: RunConfig) -> list[torch.Tensor]:
    out = []
    size = cfg.train.micro_batch_size
    for i in range(0, len(rollouts), size):
        batch = rollouts[i : i + size]
        inputs = _to(collate([r.prompt for r in batch], [r.completion.token_ids for r in batch], policy.pad_id),
                     policy.accelerator.device)  # fmt: skip
        logprobs, _, mask = completion_logprobs(model, inputs, temperature=cfg.rollout.temperature,
                                                share_vision=not policy.sharded,
                                                vision_chunk_frames=cfg.train.vision_chunk_frames,
                                                prompt_once=cfg.train.prompt_once)  # fmt: skip
        out += [lp[m.bool()] for lp, m in zip(logprobs, mask)]
    return out


def _pad_stack(rows, width: int, device) -> torch.Tensor:
    out = torch.zeros(len(rows), width, dtype=torch.float32, device=device)
    for i, row in enumerate(rows):
        row = torch.as_tensor(row, dtype=torch.float32)
        out[i, : len(row)] = row[:width]
    return out


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def _clip(policy: Policy, max_norm: float) -> float:
    """Total gradient norm before clipping (NaN/inf when any gradient is); clips to `max_norm` when > 0.

    A non-finite norm turns every clipped gradient into NaN; `optimizer_step_if_finite` then drops them.
    """
    params = [p for p in policy.model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    if max_norm > 0 or policy.sharded:  # sharded gradients: only the clip reduces their norm over ranks
        return float(policy.accelerator.clip_grad_norm_(params, max_norm if max_norm > 0 else math.inf))
    return float(torch.norm(torch.stack([p.grad.detach().norm() for p in params])))


def optimizer_step_if_finite(
    policy: Policy, loss_finite: bool, grad_norm: float, max_in_a_row: int, where: str
) -> bool:
    """Apply the optimiser and lr-scheduler step, unless the loss or gradient norm is NaN/inf on any rank.

    Ranks agree: each rank's two flags (loss, gradient norm) are summed over ranks first. DDP already
    gives every rank the same gradients, but each rank has its own loss, and a NaN loss can come with
    finite gradients (e.g. a NaN log-prob inside a clamp, whose gradient is 0), so the norm alone
    would let that step through.

    A skipped step drops the gradients and leaves the weights, the AdamW moments and step count, and
    the lr schedule as they were: the schedule counts applied updates, so warm-up and decay are not
    spent on updates that did not happen. `policy.nonfinite_streak` counts skipped steps in a row
    (an applied step resets it); at `max_in_a_row` (`train.max_nonfinite_steps`; <= 1: the first
    skipped step) an MMRLError stops the run, naming what was non-finite and `where` (the step).
    Returns whether the step was applied.
    """
    acc = policy.accelerator
    local = torch.tensor([not loss_finite, not math.isfinite(grad_norm)], dtype=torch.float32, device=acc.device)
    bad_loss_ranks, bad_grad_ranks = acc.reduce(local, reduction="sum").tolist()
    if not bad_loss_ranks and not bad_grad_ranks:
        policy.optimizer.step()
        policy.scheduler.step()
        policy.optimizer.zero_grad(set_to_none=True)
        policy.nonfinite_streak = 0
        return True
    policy.optimizer.zero_grad(set_to_none=True)
    policy.nonfinite_streak += 1
    if policy.nonfinite_streak >= max_in_a_row:
        what = []
        if bad_loss_ranks:
            ranks = f" on {int(bad_loss_ranks)} of {acc.num_processes} ranks" if acc.num_processes > 1 else ""
            what.append(f"the loss was NaN/inf{ranks}")
        if bad_grad_ranks:
            what.append(f"the gradient norm was {grad_norm}")
        raise MMRLError(
            f"{policy.nonfinite_streak} optimiser steps in a row were skipped as non-finite, the limit "
            f"train.max_nonfinite_steps={max_in_a_row}; at the last one ({where}) {' and '.join(what)}. "
            "Look for NaN/inf in the model weights, the rewards/advantages, or a too high lr"
        )
    return False


# --------------------------------------------------------------------------------------------------
# The loop


def prepare_run_dir(run_dir: Path, train_cfg: TrainConfig, key: str) -> None:
    """Refuse to start a fresh run in a folder that already holds one, unless told what to do with it.

    A fresh run (empty `train.resume`) would prune the old checkpoints, cut `metrics.jsonl` and
    replace `final/`. With `train.overwrite` the old checkpoints and final model are deleted first
    (by rank 0), so that a later `resume=auto` cannot pick up a checkpoint of the replaced run.
    """
    if train_cfg.resume.strip() or not run_dir.is_dir():
        return
    found = [name for name in (CHECKPOINTS, "final") if (run_dir / name).is_dir() and any((run_dir / name).iterdir())]
    if (run_dir / METRICS_FILE).is_file() and (run_dir / METRICS_FILE).stat().st_size > 0:
        found.append(METRICS_FILE)
    if not found:
        return
    if not train_cfg.overwrite:
        raise MMRLError(
            f"{key}={run_dir} already holds a run ({', '.join(found)}); continue it with train.resume=auto, "
            f"choose a new {key}, or set train.overwrite=true to replace it"
        )
    if os.environ.get("RANK", "0") == "0":
        for name in (CHECKPOINTS, "final"):
            shutil.rmtree(run_dir / name, ignore_errors=True)


def train(cfg: RunConfig) -> Path:
    """Run GRPO as configured; returns the run folder."""
    run_dir = Path(cfg.train.out_dir)
    prepare_run_dir(run_dir, cfg.train, "train.out_dir")
    total_updates = cfg.train.steps * cfg.algorithm.ppo_epochs * cfg.algorithm.mini_batches
    policy = setup_policy(cfg, total_updates)
    acc = policy.accelerator
    main = acc.is_main_process
    engine = make_engine(cfg.rollout, policy.unwrapped, policy.processor, seed=cfg.train.seed)
    producer = make_producer(cfg, policy.processor, rank=acc.process_index)

    resumed = restore(policy, producer, cfg.train.resume, run_dir)
    start = resumed or 0
    if resumed is not None:
        engine.sync_weights(policy.unwrapped)
    if start_prefetch := getattr(producer, "start_prefetch", None):  # workers start up while we evaluate
        start_prefetch(start)
    logger = RunLogger(run_dir, cfg.log, total_steps=cfg.train.steps, resume_step=resumed) if main else None
    evaluates = main or policy.sharded  # FSDP: every rank takes part in each forward pass; rank 0 logs
    if logger:
        logger.log_config(to_dict(cfg))
    if start == 0 and evaluates:
        with gathered_for_generation(policy):
            before = producer.evaluate(engine)
        if logger and before:
            logger.log(0, before)

    try:
        for step in range(start, cfg.train.steps):
            t_step = time.perf_counter()
            with gathered_for_generation(policy):
                rollouts, metrics = producer.produce(engine, step)
            t_update = time.perf_counter()
            metrics |= update_policy(policy, rollouts, cfg, step)
            engine.sync_weights(policy.unwrapped)
            metrics["time/update"] = time.perf_counter() - t_update
            metrics["time/step"] = time.perf_counter() - t_step
            if "time/wait_prompts" in metrics:  # the share of the step spent waiting for its prompts (data.prefetch)
                metrics["time/wait_prompts_share"] = metrics["time/wait_prompts"] / max(metrics["time/step"], 1e-9)
            metrics["tokens_per_s"] = metrics["tokens_generated"] / max(metrics["time/generate"], 1e-9)
            metrics |= peak_memory()
            metrics["world_size"] = acc.num_processes
            done = step + 1
            if evaluates and (done == cfg.train.steps or (cfg.train.eval_every and done % cfg.train.eval_every == 0)):
                with gathered_for_generation(policy):
                    metrics |= producer.evaluate(engine)
            if logger:
                logger.log(done, metrics)
                if cfg.log.samples_every and done % cfg.log.samples_every == 0:
                    logger.log_samples(done, [_sample_row(r) for r in _first_of_each_group(rollouts)])
            if done % cfg.train.save_every == 0 or done == cfg.train.steps:
                checkpoint(policy, producer, run_dir, done, cfg)
    finally:  # a producer with threads or connections (the Syn-GRPO data server's client) stops them
        if close := getattr(producer, "close", None):
            close()
    save_final(policy, run_dir / "final")
    if logger:
        logger.close()
    acc.wait_for_everyone()
    return run_dir


def restore(policy: Policy, producer: Producer, resume: str, run_dir: Path) -> int | None:
    """Load the checkpoint `resume` names (`auto`, a folder, or empty: none) into the policy and
    producer; returns its step, or None when starting fresh."""
    path = resolve_resume(resume, run_dir) if resume else None
    if path is None:
        return None
    model = policy.model if policy.sharded else policy.unwrapped
    state = load_checkpoint(path, model=model, optimizer=policy.optimizer, scheduler=policy.scheduler,
                            sharded=policy.sharded)  # fmt: skip
    producer.load_state_dict(state["producer_state"])
    return int(state["step"])


def checkpoint(policy: Policy, producer: Producer, run_dir: Path, step: int, cfg: RunConfig) -> None:
    """Save an atomic checkpoint of everything a resume needs (rank 0 writes, or under FSDP every rank its
    shard of the model and optimizer state; all ranks wait)."""
    policy.accelerator.wait_for_everyone()
    if policy.accelerator.is_main_process or policy.sharded:
        model = policy.model if policy.sharded else policy.unwrapped
        save_checkpoint(run_dir, step, model=model, optimizer=policy.optimizer, scheduler=policy.scheduler,
                        producer_state=producer.state_dict(), extra={"config": to_dict(cfg)},
                        keep=cfg.train.keep_checkpoints, sharded=policy.sharded)  # fmt: skip


def save_final(policy: Policy, out: Path) -> None:
    """The trained model as a plain checkpoint folder (LoRA merged in) that `model.path` can point at.

    Every rank calls it; rank 0 writes. Under FSDP the full weights are first gathered (a collective)
    to rank 0's CPU memory, so the folder is the same as a single-process run's.
    """
    model = policy.unwrapped
    state = policy.accelerator.get_state_dict(policy.model) if policy.sharded else None
    if not policy.accelerator.is_main_process:
        return
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    model.save_pretrained(out, state_dict=state)
    policy.processor.save_pretrained(out)


def _first_of_each_group(rollouts: list[Rollout]) -> list[Rollout]:
    seen: dict[str, Rollout] = {}
    for r in rollouts:
        seen.setdefault(r.group_id, r)
    return list(seen.values())


def _sample_row(r: Rollout) -> dict[str, Any]:
    return {"sample_id": r.sample_id, "task": r.task, "completion": r.completion.text, "reward": r.reward,
            "advantage": r.advantage, "parts": r.reward_parts}  # fmt: skip


__all__ = [
    "Policy",
    "checkpoint",
    "gathered_for_generation",
    "is_sharded",
    "old_logprobs",
    "optimizer_step_if_finite",
    "prepare_run_dir",
    "restore",
    "save_final",
    "setup_policy",
    "train",
    "update_policy",
]
