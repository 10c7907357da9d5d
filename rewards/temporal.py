"""Rewards for VideoSSR's anomaly grounding (temporal IoU) and object counting (relative error).

Source: He et al. 2025, *VideoSSR* (arXiv 2511.06281) and its released reward (`lcqysl/VideoSSR`);
docs/videossr.md. Temporal jigsaw is an ordering task: its footrule
reward lives in `rewards.ordering` (`ordering_reward(..., footrule=True)`).

Both rewards are smooth and, as in VideoSSR, have **no format term**: the `format` part is logged
(1 when the answer has the stated shape and `rewards.extract.format_ok` passes) but never added to
the score. The answer is first extracted with `rewards.extract.extract_answer(completion, mode)`
(`raw` is VideoSSR's default: the whole stripped reply is the answer; never run `raw` on replies
that contain reasoning).

Grounding answer format (the one the prompt states): `start-end` in seconds, each a non-negative
decimal number of ASCII digits with an optional fractional part (`3`, `3.1`, `14.25`), optional
spaces or tabs around the `-`, and nothing else: `14.5-26.2` and `14.5 - 26.2` parse; `3.1 to 4.0`,
`3.1-4.0 s`, `-1-2`, `.5-1`, `1e3-2e3` and prose do not. A reversed interval (start > end) is
rejected; start = end (an empty interval) is allowed and scores 0 against any real segment.

Counting answer format: the counts in the prompt's order (circles, squares, triangles by default),
e.g. `3,1,4`. As in the released reward the parser is lenient about the text around them: the
prediction is every integer in the answer, in order, and it counts only if there are exactly K.
Ours: a minus sign directly before digits makes a negative integer, which rejects the answer
(counts are never negative), instead of the released parser silently dropping the sign.

All parsing is a single regular-expression pass with no nested quantifiers, so a 10k-character
completion costs linear time; nothing here raises on model output.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from mmrl.contracts import Reward
from rewards.extract import AnswerMode, check_mode, extract_answer, format_ok, parse_int

GROUNDING_PARTS = ("format", "iou")
"""Named parts of the grounding reward (both present; 0 when the answer does not parse)."""
COUNTING_PARTS = ("format", "accuracy", "exact")
"""Named parts of the counting reward (all present; 0 when the answer does not parse)."""

EPS = 1e-9
"""The released code's epsilon: a union below it is degenerate; relative error divides by |g| + EPS."""

_NUMBER = r"([0-9]+(?:\.[0-9]+)?)"
_INTERVAL = re.compile(_NUMBER + r"[ \t]*-[ \t]*" + _NUMBER)
_INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits only: int() would also take "٣" or "1_0"


def parse_interval(text: str) -> tuple[float, float] | None:
    """The `(start, end)` seconds of an answer in the stated `start-end` format, else None.

    `text` is the answer itself (already extracted); surrounding whitespace is ignored and the
    whole rest must match `<number>[ \\t]*-[ \\t]*<number>` with `<number> = [0-9]+(\\.[0-9]+)?`.
    Reversed (start > end), negative, non-finite (thousands of digits), worded ("3.1 to 4.0"),
    unit-suffixed ("3.1-4.0 s"), empty or non-string input gives None. Never raises.

    >>> parse_interval("14.5 - 26.2")
    (14.5, 26.2)
    >>> parse_interval("4-3") is None
    True
    """
    if not isinstance(text, str):
        return None
    match = _INTERVAL.fullmatch(text.strip())
    if match is None:
        return None
    start, end = float(match.group(1)), float(match.group(2))
    if not (math.isfinite(start) and math.isfinite(end)) or start > end:
        return None
    return start, end


def temporal_iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Temporal IoU of two intervals `(start, end)` with start ≤ end (the released formula):

        inter = max(0, min(e_a, e_b) − max(s_a, s_b))
        union = (e_a − s_a) + (e_b − s_b) − inter
        IoU   = inter / union

    If union < 1e-9 (both intervals empty) the IoU is 1 when they touch (max(s_a, s_b) ≤
    min(e_a, e_b), i.e. the same point) and 0 otherwise. Result in [0, 1]. Raises `ValueError`
    for a reversed or non-finite interval (a caller error: parsed answers never are).
    """
    (s_a, e_a), (s_b, e_b) = (float(x) for x in a), (float(x) for x in b)
    for s, e in ((s_a, e_a), (s_b, e_b)):
        if not (math.isfinite(s) and math.isfinite(e)) or s > e:
            raise ValueError(f"not a finite interval with start <= end: ({s}, {e})")
    inter = max(0.0, min(e_a, e_b) - max(s_a, s_b))
    union = (e_a - s_a) + (e_b - s_b) - inter
    if union < EPS:
        return 1.0 if max(s_a, s_b) <= min(e_a, e_b) else 0.0
    return min(1.0, inter / union)


def grounding_reward(completion: str, interval_gt: Sequence[float], *, mode: AnswerMode = "answer_tag") -> Reward:
    """Score an anomaly-grounding answer against the ground-truth `(start, end)` seconds.

        interval = parse_interval(extract_answer(completion, mode))
        score    = temporal_iou(interval, interval_gt)   (0 if the interval is None)
        parts    = {"format": 1 if the interval parsed and format_ok(completion, mode) else 0,
                    "iou": score}

    `format` is logged only and adds nothing (VideoSSR's has no format term). Worked numbers with
    gt (2, 4): "2-4" → 1.0; "3-5" → inter 1, union 3 → 1/3; "5-6" → 0; "4-3", "3.1 to 4.0",
    "" → 0. Never raises on `completion`; an unknown `mode` raises `ConfigError`, a bad
    `interval_gt` `ValueError`.
    """
    check_mode(mode)
    start, end = (float(x) for x in interval_gt)
    temporal_iou((start, end), (start, end))  # validates the ground truth
    if not isinstance(completion, str):
        return Reward.zero(*GROUNDING_PARTS)
    interval = parse_interval(extract_answer(completion, mode) or "")
    if interval is None:
        return Reward.zero(*GROUNDING_PARTS)
    iou = temporal_iou(interval, (start, end))
    return Reward(iou, {"format": float(format_ok(completion, mode)), "iou": iou})


def parse_counts(text: str, k: int) -> list[int] | None:
    """The K counts an answer gives, in order, or None.

    `text` is the answer itself (already extracted). Every integer in it (`-?[0-9]+`, maximal
    runs) is taken in order, whatever the text around them ("3,1,4", "3, 1, 4",
    "circles 3 squares 1 triangles 4" all give [3, 1, 4]); the answer counts only if there are
    exactly K and none is negative. Decimals split into two integers ("1.5" → 1, 5), so they
    usually change the count and give None. Never raises on `text`.

    >>> parse_counts("3,1,4", 3)
    [3, 1, 4]
    >>> parse_counts("3,1,4,1", 3) is None
    True
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not isinstance(text, str):
        return None
    counts = []
    for token in _INTEGER.finditer(text):
        if len(counts) == k or token.group().startswith("-"):
            return None
        count = parse_int(token.group())
        if count is None:  # more digits than int() converts (sys.int_max_str_digits)
            return None
        counts.append(count)
    return counts if len(counts) == k else None


def counting_reward(completion: str, counts_gt: Sequence[int], *, mode: AnswerMode = "answer_tag") -> Reward:
    """Score an object-counting answer against the ground-truth counts (same order as the prompt).

    With p = parse_counts(extract_answer(completion, mode), K), g = counts_gt, K = len(g):

        r_i   = 1                                  if p_i = g_i
              = max(0, 1 − |p_i − g_i| / (g_i + 1e-9))   otherwise
        score = (1/K) Σ_i r_i                      (0 if p is None: wrong number of counts,
                                                    a negative count, no answer)

    So g_i = 0 scores by exact match (any p_i ≠ 0 gives 0); VideoSSR's builder never makes it.
    Parts: `format` (1 if p parsed and format_ok; logged only, not added), `accuracy` (= score),
    `exact` (1 if p = g). Worked numbers with g = (3, 1, 4): "3,1,4" → 1; "3,2,4" →
    (1 + 0 + 1)/3 = 2/3; "2,1,4" → (2/3 + 1 + 1)/3 = 8/9. Never raises on `completion`; an
    unknown `mode` raises `ConfigError`, empty or negative `counts_gt` `ValueError`.
    """
    check_mode(mode)
    truth = [int(x) for x in counts_gt]
    if not truth or min(truth) < 0:
        raise ValueError(f"counts_gt must be a non-empty list of non-negative counts, got {truth}")
    if not isinstance(completion, str):
        return Reward.zero(*COUNTING_PARTS)
    answer = parse_counts(extract_answer(completion, mode) or "", len(truth))
    if answer is None:
        return Reward.zero(*COUNTING_PARTS)
    # |p - g| >= g already scores 0; checking first keeps a 400-digit p from overflowing the division.
    per_kind = [
        1.0 if p == g else 1.0 - abs(p - g) / (g + EPS) if abs(p - g) < g else 0.0 for p, g in zip(answer, truth)
    ]
    score = sum(per_kind) / len(per_kind)
    parts = {"format": float(format_ok(completion, mode)), "accuracy": score, "exact": float(answer == truth)}
    return Reward(score, parts)


__all__ = [
    "COUNTING_PARTS",
    "GROUNDING_PARTS",
    "counting_reward",
    "grounding_reward",
    "parse_counts",
    "parse_interval",
    "temporal_iou",
]
