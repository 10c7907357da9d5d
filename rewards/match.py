"""Exact-match reward for answers from a closed set (a colour, a yes/no, an option letter, a word).

Rule-based format + accuracy reward in the style of DeepSeek-R1 (Guo et al. 2025, *DeepSeek-R1:
Incentivizing Reasoning Capability in LLMs via Reinforcement Learning*); the weighting is ours.
"""

from __future__ import annotations

from typing import Any

from mmrl.contracts import Reward
from rewards.extract import AnswerMode, check_mode, extract_answer, format_ok

PARTS = ("format", "accuracy")


def normalize_answer(text: str) -> str:
    """Comparison form of an answer: lower-cased, outer whitespace stripped, inner runs of whitespace
    collapsed to one space (`"  Dark  Red "` → `"dark red"`)."""
    return " ".join(text.split()).lower()


def exact_match(
    completion: str, answer: Any, *, mode: AnswerMode = "answer_tag", accuracy_weight: float = 0.9
) -> Reward:
    """Score `completion` against the ground truth `answer` (compared as `str(answer)`).

        format   = 1[format_ok(completion, mode)]
        accuracy = 1[normalize(extract_answer(completion, mode)) = normalize(str(answer))]
        score    = w · accuracy + (1 − w) · format,   w = accuracy_weight (default 0.9)

    So a right answer in the asked format scores 1.0, a wrong one in format 0.1, a right answer
    found outside the exact format (e.g. prose around the tags) 0.9, and garbage 0. Accuracy does
    not depend on the gate: the format part is a small, separately logged shaping term. Never
    raises on `completion`; non-string output scores 0. `score` ∈ [0, 1] for w ∈ [0, 1].
    """
    check_mode(mode)
    if not isinstance(completion, str):
        return Reward.zero(*PARTS)
    fmt = 1.0 if format_ok(completion, mode) else 0.0
    extracted = extract_answer(completion, mode)
    accuracy = 1.0 if extracted is not None and normalize_answer(extracted) == normalize_answer(str(answer)) else 0.0
    score = accuracy_weight * accuracy + (1.0 - accuracy_weight) * fmt
    return Reward(score, {"format": fmt, "accuracy": accuracy})


__all__ = ["exact_match", "normalize_answer"]
