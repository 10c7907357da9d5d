"""Rollouts: encode prompts, generate completions (HF or vLLM engine), score them in the trainer's forward.

`encode_prompt` turns chat messages into an `EncodedPrompt` once per prompt; an `Engine` samples
`n` completions per prompt; `collate` + `completion_logprobs` give the trainer's log-probs of the
same tokens, and `logprob_agreement` compares the two (R6; R-numbers are the requirements in docs/requirements.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mmrl.contracts import Completion, EncodedPrompt, Engine, Rollout, SamplingParams
from mmrl.errors import ConfigError
from mmrl.rollout.encode import encode_prompt
from mmrl.rollout.forward import batch_vision, collate, completion_logprobs, suppressed_token_ids
from mmrl.rollout.hf import HFEngine, logprob_agreement

if TYPE_CHECKING:
    import torch
    from transformers import ProcessorMixin

    from mmrl.config import RolloutConfig

__all__ = [
    "Completion",
    "EncodedPrompt",
    "Engine",
    "HFEngine",
    "Rollout",
    "SamplingParams",
    "batch_vision",
    "collate",
    "completion_logprobs",
    "encode_prompt",
    "logprob_agreement",
    "make_engine",
    "sampling_params",
    "suppressed_token_ids",
]


def make_engine(cfg: RolloutConfig, model: torch.nn.Module, processor: ProcessorMixin, *, seed: int = 0) -> Engine:
    """The engine `cfg.engine` names, sampling from `model` (vLLM: a colocated copy, synced once here)."""
    if cfg.engine == "hf":
        return HFEngine(model, processor, batch_size=cfg.batch_size, seed=seed, decode=cfg.decode)
    if cfg.engine == "vllm":
        from mmrl.rollout.vllm import VLLMEngine  # imports vllm lazily; clear error when absent

        return VLLMEngine.from_model(model, processor, cfg, seed=seed)
    raise ConfigError(f"rollout.engine '{cfg.engine}' is not one of: hf, vllm")


def sampling_params(cfg: RolloutConfig, *, seed: int | None = None) -> SamplingParams:
    """SamplingParams from the rollout config (every generation field of it, R11)."""
    return SamplingParams(
        max_new_tokens=cfg.max_new_tokens,
        min_new_tokens=cfg.min_new_tokens,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        seed=seed,
    )
