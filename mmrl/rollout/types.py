"""The objects that cross the rollout boundary: encoded prompts, completions, rollouts, the engine.

Shapes are per item (no batch dimension): batching is the job of `mmrl.rollout.forward.collate`
and of the engines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch


@dataclass
class SamplingParams:
    max_new_tokens: int = 32
    """Most tokens generated per completion."""
    min_new_tokens: int = 0
    """Generate at least this many tokens before a stop token is allowed (for speed benchmarks at fixed
    length). While it holds, stop tokens are masked out of the sampled distribution, so the engine's
    log-probs of those steps exclude the stop tokens' mass and differ slightly from the trainer's."""
    temperature: float = 1.0
    """Softmax temperature; logprobs are reported under this tempered distribution."""
    top_p: float = 1.0
    """Nucleus threshold (1.0: off)."""
    top_k: int = 0
    """Top-k (0: off)."""
    seed: int | None = None
    """Seed of this call's sampling (None: continue the engine's own generator)."""


@dataclass
class EncodedPrompt:
    """One prompt after the chat template and the processor, ready for generation and for the trainer.

    `input_ids` is (T,) long. `vision` holds the processor's visual tensors for this prompt only:
    `pixel_values` (N_patches, D) + `image_grid_thw` (N_images, 3), and/or `pixel_values_videos` +
    `video_grid_thw` (+ `second_per_grid_ts` for Qwen2.5-VL), plus `mm_token_type_ids` (T,) where
    the processor returns it. Media are processed once per prompt and shared by the whole group.
    """

    input_ids: torch.Tensor
    vision: dict[str, torch.Tensor] = field(default_factory=dict)
    text: str = ""
    """The templated prompt text (for logs)."""
    num_visual_tokens: int = 0
    """Image/video placeholder tokens inside `input_ids`."""
    media: dict[str, list] = field(default_factory=dict)
    """The loaded media, for engines that run their own processor (vLLM): `image` -> RGB PIL images,
    `video` -> ((T, H, W, 3) uint8 frames, processor video metadata) pairs, in prompt order."""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class Completion:
    """One sampled continuation of a prompt."""

    token_ids: list[int]
    """Generated tokens, padding removed, the stop token included when one was generated."""
    logprobs: list[float]
    """Log-probability of each generated token under the engine's (tempered) sampling distribution."""
    text: str
    """Decoded completion, special tokens skipped."""
    finish_reason: Literal["stop", "length"]
    """`stop`: ended with a stop token; `length`: cut at max_new_tokens."""


@dataclass
class Rollout:
    """One completion with everything the trainer needs: made by Producers, consumed by the Trainer."""

    prompt: EncodedPrompt
    """Shared (same object) by every rollout of the group."""
    completion: Completion
    reward: float
    """Scalar reward used for the advantage (the sum of the task's reward parts)."""
    advantage: float
    group_id: str
    """Rollouts with the same group id were sampled from the same prompt in the same step."""
    sample_id: str
    task: str
    reward_parts: dict[str, float] = field(default_factory=dict)
    role: str = "policy"
    """Player role for multi-role games; `policy` for single-turn tasks."""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def truncated(self) -> bool:
        return self.completion.finish_reason == "length"


class Engine(Protocol):
    """A generation engine. `hf` runs everywhere; `vllm` is for GPUs."""

    def generate(self, prompts: list[EncodedPrompt], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        """`n` completions for each prompt: result[i][j] is the j-th sample of prompts[i]."""
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from `model`'s current weights."""
        ...
