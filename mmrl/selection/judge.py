"""The selection's verifier and prompt codec on real components: a task's own reward, a model's processor.

`TaskVerifier` judges a reply with the sample's task (reached by name through the registry, built with
the parameters the sample was generated with: `mmrl.baselines.TaskCache`):

    solved = Reward.is_exact                       (default: the `exact`/`accuracy` part is 1)
    solved = task.reward(reply, sample).score >= t (when a threshold t is set for the task)

and calls a reply final once the task's answer format can be read from it (`extract_answer` in the
sample's answer mode; `raw` replies end only at the policy's end of turn or the step limit).

`ProcessorCodec` encodes a Sample's chat with the model's processor (`encode_prompt`), optionally with a
step instruction appended to the last user message, and decodes token ids with the tokenizer.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from mmrl.baselines import TaskCache
from mmrl.config import ModelConfig
from mmrl.contracts import EncodedPrompt
from mmrl.rollout.encode import encode_prompt
from mmrl.sample import Sample
from mmrl.task import score_completion
from rewards.extract import extract_answer

STEP_INSTRUCTION = (
    "Work it out in short steps, one step per line, and give the final answer in the format asked above "
    "on the last line."
)
"""Appended to the question for MCTS (our wording): steps end at a newline, the answer keeps the task's format."""


class TaskVerifier:
    """Judge replies with each sample's own task reward (see the module docstring for the rule)."""

    def __init__(self, thresholds: Mapping[str, float] | None = None) -> None:
        self.thresholds = dict(thresholds or {})
        """Task name -> least reward score that counts as solved; tasks not listed use `Reward.is_exact`."""
        self.tasks = TaskCache()
        self.errors = 0
        """Replies whose reward raised (a task bug): counted, judged unsolved."""

    def is_final(self, sample: Sample, text: str) -> bool:
        mode = self.tasks.of(sample).answer_mode(sample)
        return mode != "raw" and extract_answer(text, mode) is not None

    def solves(self, sample: Sample, text: str) -> bool:
        reward, error = score_completion(self.tasks.of(sample), text, sample)
        if error is not None:
            self.errors += 1
            return False
        threshold = self.thresholds.get(sample.task)
        return reward.is_exact if threshold is None else reward.score >= threshold


class ProcessorCodec:
    """Encode Samples with a model's processor (media loaded, chat template applied) and decode token ids."""

    def __init__(self, processor: Any, model_cfg: ModelConfig, *, max_prompt_tokens: int = 4096,
                 instruction: str = "", keep_media: bool = False) -> None:  # fmt: skip
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.model_cfg = model_cfg
        self.max_prompt_tokens = max_prompt_tokens
        self.instruction = instruction
        self.keep_media = keep_media

    def messages(self, sample: Sample) -> list[dict[str, Any]]:
        """The sample's chat with the instruction appended as a text item of its last user message."""
        if not self.instruction:
            return sample.messages
        messages = copy.copy(sample.messages)
        for i in range(len(messages) - 1, -1, -1):
            if messages[i].get("role") == "user":
                content = messages[i]["content"]
                items = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
                messages[i] = {**messages[i], "content": [*items, {"type": "text", "text": " " + self.instruction}]}
                break
        return messages

    def encode(self, sample: Sample) -> EncodedPrompt:
        return encode_prompt(self.processor, self.messages(sample), self.model_cfg,
                             max_prompt_tokens=self.max_prompt_tokens, keep_media=self.keep_media)  # fmt: skip

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)


__all__ = ["STEP_INSTRUCTION", "ProcessorCodec", "TaskVerifier"]
