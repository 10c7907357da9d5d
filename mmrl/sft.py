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

import time
from pathlib import Path

import torch

from mmrl.config import RunConfig, to_dict
from mmrl.grpo.trainer import checkpoint, restore, save_final, setup_policy
from mmrl.logging import RunLogger
from mmrl.producers import make_producer
from mmrl.rollout.forward import collate, completion_logprobs
from mmrl.rollout.types import EncodedPrompt


def completion_ids(tokenizer, text: str) -> list[int]:
    """Token ids of `text` followed by the end-of-turn token the engine stops at."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return list(ids) + [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def sft(cfg: RunConfig) -> Path:
    """Run supervised fine-tuning as configured; returns the run folder (model in `<out>/final`)."""
    run_dir = Path(cfg.sft.out_dir)
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
        policy.optimizer.step()
        policy.scheduler.step()
        policy.optimizer.zero_grad(set_to_none=True)
        done = step + 1
        if logger:
            logger.log(done, {"loss/sft": loss, "grad_norm": grad_norm, "lr": policy.scheduler.get_last_lr()[0],
                              "tokens": tokens, "time/step": time.perf_counter() - t0})  # fmt: skip
        if done % cfg.train.save_every == 0 or done == cfg.sft.steps:
            checkpoint(policy, producer, run_dir, done, cfg)
    if logger:
        save_final(policy, run_dir / "final")
        logger.close()
    policy.accelerator.wait_for_everyone()  # every rank may load `final` next (cold start)
    return run_dir


def _nll_step(
    policy, prompts: list[EncodedPrompt], targets: list[list[int]], device, micro: int
) -> tuple[float, float]:
    """Backward of the token-mean NLL over the whole batch (micro-batched); returns (loss, tokens)."""
    total_tokens = sum(len(t) for t in targets)
    total = 0.0
    for i in range(0, len(prompts), micro):
        inputs = collate(prompts[i : i + micro], targets[i : i + micro], policy.pad_id)
        inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        logprobs, _, mask = completion_logprobs(policy.model, inputs)  # (B, Lc)
        loss = -(logprobs * mask).sum() / total_tokens
        policy.accelerator.backward(loss)
        total += float(loss.detach())
    return total, float(total_tokens)
