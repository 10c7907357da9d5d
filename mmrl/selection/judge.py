"""The selection's verifier and prompt codec on real components: a task's own reward, a model's processor.

`TaskVerifier` judges a reply with the sample's task (reached by name through the registry, built with
the parameters the sample was generated with: `mmrl.baselines.TaskCache`):

    solved = Reward.is_exact                       (default: the `exact`/`accuracy` part is 1)
    solved = task.reward(reply, sample).score >= t (when a threshold t is set for the task)

and calls a reply final once the task's answer format can be read from it (`extract_answer` in the
sample's answer mode; `raw` replies end only at the policy's end of turn or the step limit).

`CriticVerifier` is the paper's optional LLM judge: a local model reads the question, the reference
answer and the reply, and answers in one sentence whether the reply's final answer is right
(`CRITIC_PROMPT`, our wording of the sheet's critic). The verdict is the first "true" or "false" word of
that reply's first sentence (`critic_verdict`); a reply with neither counts as unsolved and is counted.
Whether a reply is final still follows the task's answer format, as for `TaskVerifier`.

`ProcessorCodec` encodes a Sample's chat with the model's processor (`encode_prompt`), optionally with a
step instruction appended to the last user message, and decodes token ids with the tokenizer.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

from mmrl.baselines import TaskCache
from mmrl.config import ModelConfig
from mmrl.contracts import EncodedPrompt, Engine, SamplingParams
from mmrl.rollout.encode import encode_prompt
from mmrl.sample import Sample
from mmrl.task import score_completion
from rewards.extract import answer_payload, extract_answer

STEP_INSTRUCTION = (
    "Work it out in short steps, one step per line, and give the final answer in the format asked above "
    "on the last line."
)
"""Appended to the question for MCTS (our wording): steps end at a newline, the answer keeps the task's format."""


def holds_final_answer(tasks: TaskCache, sample: Sample, text: str) -> bool:
    """Whether `text` already holds an answer in the sample's answer format (never for `raw` replies)."""
    mode = tasks.of(sample).answer_mode(sample)
    return mode != "raw" and extract_answer(text, mode) is not None


class TaskVerifier:
    """Judge replies with each sample's own task reward (see the module docstring for the rule)."""

    def __init__(self, thresholds: Mapping[str, float] | None = None) -> None:
        self.thresholds = dict(thresholds or {})
        """Task name -> least reward score that counts as solved; tasks not listed use `Reward.is_exact`."""
        self.tasks = TaskCache()
        self.errors = 0
        """Replies whose reward raised (a task bug): counted, judged unsolved."""

    def is_final(self, sample: Sample, text: str) -> bool:
        return holds_final_answer(self.tasks, sample, text)

    def solves(self, sample: Sample, text: str) -> bool:
        reward, error = score_completion(self.tasks.of(sample), text, sample)
        if error is not None:
            self.errors += 1
            return False
        threshold = self.thresholds.get(sample.task)
        return reward.is_exact if threshold is None else reward.score >= threshold

    def solves_all(self, replies: Sequence[tuple[Sample, str]]) -> list[bool]:
        return [self.solves(sample, text) for sample, text in replies]


CRITIC_PROMPT = (
    "You are grading a student's reply against a reference answer.\n\n"
    "Question:\n{question}\n\n"
    "Reference answer: {reference}\n\n"
    "Student's reply (reasoning, then the final answer):\n{reply}\n\n"
    "Is the student's final answer the same as the reference answer? Answer with one sentence that begins "
    "with True or False."
)
"""The critic's prompt (our wording of the sheet's critic: question, ground truth, generated rationale and
answer; one sentence saying whether the answer is true or false)."""

_FIRST_SENTENCE = re.compile(r"^\s*(.*?)(?:[.!?\n]|$)", re.S)
_VERDICT_WORD = re.compile(r"\b(true|false)\b", re.I)


def critic_verdict(reply: str) -> bool | None:
    """True / False from the first "true" or "false" word of the critic's first sentence; None if it has neither.

    The paper counts a sample solved when "true" appears in the critic's first sentence; taking the first
    verdict word instead keeps "False, it is not true that ..." from counting as solved."""
    first = _FIRST_SENTENCE.match(reply)
    word = _VERDICT_WORD.search(first.group(1) if first else "")
    return None if word is None else word.group(1).lower() == "true"


def question_text(sample: Sample) -> str:
    """The text of the sample's last user message (its media items left out)."""
    for message in reversed(sample.messages):
        if message.get("role") == "user":
            content = message["content"]
            if isinstance(content, str):
                return content
            return " ".join(item["text"] for item in content if item.get("type") == "text").strip()
    return ""


class CriticVerifier:
    """Judge replies with a local critic model (the paper's LLM judge); see the module docstring.

    `engine` generates with the critic (greedy, `max_new_tokens`); `encode` turns a chat (a list of
    messages) into the critic's EncodedPrompt. Verdicts are cached per (sample id, reply): MCTS reaches
    the same final reply along several paths. `solves_all` judges a batch of replies (a pass-rate batch:
    samples × n) in one engine call instead of one call per reply."""

    def __init__(self, engine: Engine, encode: Any, *, max_new_tokens: int = 64) -> None:
        self.engine = engine
        self.encode = encode
        self.max_new_tokens = max_new_tokens
        self.tasks = TaskCache()
        self.calls = 0
        """Critic generations run (cache hits are not counted)."""
        self.unreadable = 0
        """Critic replies with no true/false verdict in their first sentence: judged unsolved."""
        self._verdicts: dict[tuple[str, str], bool] = {}

    def is_final(self, sample: Sample, text: str) -> bool:
        return holds_final_answer(self.tasks, sample, text)

    def critic_prompt(self, sample: Sample, text: str) -> str:
        return CRITIC_PROMPT.format(question=question_text(sample), reference=answer_payload(sample.answer),
                                    reply=text.strip())  # fmt: skip

    def solves(self, sample: Sample, text: str) -> bool:
        return self.solves_all([(sample, text)])[0]

    def solves_all(self, replies: Sequence[tuple[Sample, str]]) -> list[bool]:
        """Verdicts for many (sample, reply) pairs; the ones not cached yet are judged in one greedy engine call
        (the engine splits it by its batch size)."""
        todo = list(dict.fromkeys((s.id, t) for s, t in replies if (s.id, t) not in self._verdicts))
        if todo:
            samples = {s.id: s for s, _ in replies}
            prompts = [self.encode([{"role": "user", "content": self.critic_prompt(samples[i], t)}]) for i, t in todo]
            sampling = SamplingParams(max_new_tokens=self.max_new_tokens, temperature=0.0, seed=0)
            outputs = self.engine.generate(prompts, 1, sampling)
            self.calls += len(todo)
            for key, (out,) in zip(todo, outputs):
                verdict = critic_verdict(out.text)
                self.unreadable += verdict is None
                self._verdicts[key] = bool(verdict)
        return [self._verdicts[(s.id, t)] for s, t in replies]


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


__all__ = [
    "CRITIC_PROMPT",
    "STEP_INSTRUCTION",
    "CriticVerifier",
    "ProcessorCodec",
    "TaskVerifier",
    "critic_verdict",
    "question_text",
]
