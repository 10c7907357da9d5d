"""Rewards: pure functions (completion text, Sample) -> score in [0, 1] with named parts."""

from rewards.extract import ANSWER_MODES, AnswerMode, extract_answer, format_ok
from rewards.match import exact_match, normalize_answer

__all__ = ["ANSWER_MODES", "AnswerMode", "exact_match", "extract_answer", "format_ok", "normalize_answer"]
