"""Reward for ordering answers: a permutation of the labels 1..K, written as `3, 1, 2`.

Shared by every ordering task: image, video and 3D (depth) jigsaw, and VideoSSR's temporal jigsaw.
The convention (see `pretext_tasks.base.Shuffle`): K elements were shown under labels 1..K in a
shuffled order; the ground truth `g` lists, for each element in its true order (raster,
chronological, nearest first), the label it was shown under. The model answers `o`, a list of labels.

Source: Wu et al. 2025, *Visual Jigsaw Post-Training Improves MLLMs* (arXiv 2509.25190), §3.1.1,
and its released reward (`penghao-wu/visual_jigsaw`). With γ = 0.2:

    R_acc(o, g) = 1                                if o = g
                = γ · (1/K) · Σ_i 1[o_i = g_i]     if o is a valid permutation, o ≠ g, K ≥ partial_min_k
                = 0                                otherwise
    R = R_fmt + R_acc + R_rep,   R_fmt = 0.2 if the format gate passes (else R = 0 outright)

The released code gives partial credit only for K > 4 (`partial_min_k = 5`; 2 gives the paper's
formula literally) and subtracts 0.5 for degenerate repetition (`R_rep`, not in the paper). mmrl
reports `R / 1.2` clipped to [0, 1] by default, so an exact answer scores 1.0 and a well-formed
wrong one 1/6 (plus partial credit).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mmrl.contracts import Reward
from mmrl.errors import ConfigError
from rewards.extract import (
    THINK_CLOSE,
    THINK_OPEN,
    AnswerMode,
    check_mode,
    extract_answer,
    format_ok,
    labels_text,
    parse_int,
    wrap_answer,
)

if TYPE_CHECKING:
    from mmrl.sample import Sample

PARTS = ("format", "accuracy", "repetition", "exact")
"""Named parts of every ordering reward (all present, 0 when the format gate fails)."""

FORMAT_SCORE = 0.2
"""R_fmt: the format part when the gate passes (the paper's and the released code's value)."""
MAX_RAW_SCORE = FORMAT_SCORE + 1.0
"""The best raw score (format + exact); `scale="unit"` divides by it."""

REPEAT_MIN_WORDS = 7
"""A line counts towards a repetition run only if it has at least this many words (released code)."""
REPEAT_MAX_RUN = 3
"""More than this many identical long lines in a row is degenerate repetition (released code)."""


def parse_permutation(text: str, k: int, *, mode: AnswerMode = "answer_tag") -> list[int] | None:
    """The list of integers the completion answers with, or None when it does not parse as one.

    The answer is extracted with `rewards.extract.extract_answer(text, mode)`, split on commas, and
    each stripped piece must be an ASCII integer (`[+-]?[0-9]+`): `"5, 1, 3"` → `[5, 1, 3]`.
    A bracketed list (`"[5, 1, 3]"`), an empty piece (`"5,,1"`, a trailing comma), words, or
    decimals give None, as in the released parser. Lists shorter than `k` give None too (they can
    never be a permutation of K labels under either validity rule); longer lists come back whole,
    because the lenient rule compares only their first K positions. Never raises on `text`.

    >>> parse_permutation("<answer>2, 4, 1, 3</answer>", 4)
    [2, 4, 1, 3]
    >>> parse_permutation("<answer>[2, 4, 1, 3]</answer>", 4) is None
    True
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    payload = extract_answer(text, mode)
    if not payload:
        return None
    pieces = payload.split(",")
    if len(pieces) < k:
        return None
    values = []
    for piece in pieces:
        value = parse_int(piece.strip())  # None for words, decimals, "٣" and numbers past int()'s digit limit
        if value is None:
            return None
        values.append(value)
    return values


def is_valid_permutation(values: Sequence[int], k: int, *, lenient: bool = False) -> bool:
    """Whether `values` counts as a permutation of K labels.

    Strict (mmrl default): exactly K items and `set(values) == {1, …, K}`.
    Lenient (the released code): exactly K *distinct* integers among the items, whatever their
    range and however long the list (only the first K positions are then compared).
    """
    if lenient:
        return len(set(values)) == k
    return len(values) == k and set(values) == set(range(1, k + 1))


def footrule_distance(answer: Sequence[int], truth: Sequence[int]) -> int:
    """Spearman's footrule between two permutations of 1..K: D = Σ_i |pos_o(i) − pos_g(i)|,
    where pos_x(i) is the position of label i in x. D = 0 iff equal; its maximum is ⌊K²/2⌋."""
    pos_o = {label: i for i, label in enumerate(answer)}
    pos_g = {label: i for i, label in enumerate(truth)}
    return sum(abs(pos_o[label] - pos_g[label]) for label in pos_g)


def has_repeated_lines(text: str, *, min_words: int = REPEAT_MIN_WORDS, max_run: int = REPEAT_MAX_RUN) -> bool:
    """Whether `text` has more than `max_run` consecutive identical lines of ≥ `min_words` words.

    Lines are stripped and compared case-insensitively. Blank lines and lines shorter than
    `min_words` words are ignored: they neither count nor break a run. (The released reward lets a
    short line break the run, so one short line between copies escaped the penalty.) Linear in the
    length of `text`.
    """
    previous, run = None, 0
    for raw in text.splitlines():
        line = raw.strip()
        if len(line.split()) < min_words:
            continue
        key = line.casefold()
        run = run + 1 if key == previous else 1
        previous = key
        if run > max_run:
            return True
    return False


def answer_text(labels: Sequence[int], mode: AnswerMode = "answer_tag") -> str:
    """A labels list wrapped the way `mode` asks for it: `<answer>2, 4, 1, 3</answer>`,
    `\\boxed{2, 4, 1, 3}` or the bare `2, 4, 1, 3` (used for prompt examples and SFT targets)."""
    return wrap_answer(labels_text(labels), mode)


def ordering_reward(
    completion: str,
    labels: Sequence[int],
    *,
    mode: AnswerMode = "answer_tag",
    require_think: bool = False,
    gamma: float = 0.2,
    partial_min_k: int = 5,
    lenient_validity: bool = False,
    repetition_penalty: float = 0.5,
    scale: Literal["unit", "raw"] = "unit",
    footrule: bool = False,
    format_score: float = FORMAT_SCORE,
) -> Reward:
    """Score an ordering answer against the ground-truth `labels` (Visual Jigsaw's reward).

    Format gate: `rewards.extract.format_ok(completion, mode)` (with `answer_tag`, the whole reply
    is an optional `<think>…</think>` then one `<answer>…</answer>`); with `require_think` the reply
    must also open with a `<think>…</think>` block, as the released gate demands. A failed gate
    scores 0 with every part 0. Otherwise, with o = `parse_permutation(completion, K, mode=mode)`,
    g = `labels`, K = len(g):

        format     = format_score (0.2; VideoSSR's temporal jigsaw: 0)
        accuracy   = 1                                   if o = g
                   = 1 − D(o, g) / ⌊K²/2⌋                if footrule and o is valid
                   = γ · (1/K) · Σ_i 1[o_i = g_i]        if o is valid and K ≥ partial_min_k
                   = 0                                   otherwise (unparseable, invalid, K small)
        repetition = −repetition_penalty if `has_repeated_lines(completion)` else 0
        raw        = format + accuracy + repetition      ∈ [−0.5, 1.2] with the defaults
        score      = clip(raw / (format_score + 1), 0, 1)   (`scale="unit"`; `"raw"` keeps `raw`)

    D is Spearman's footrule (`footrule_distance`); with `footrule` it replaces the γ partial
    credit for every K (γ and `partial_min_k` are then unused), and its maximum ⌊K²/2⌋ makes the
    farthest permutation score 0. "Valid" is `is_valid_permutation(o, K, lenient=lenient_validity)`:
    strict by default, the released "K distinct integers" with `lenient_validity`; under the
    lenient rule the first K positions are compared (footrule needs them to be a permutation of
    1..K). Partial credit never reaches the exact score: o ≠ g differs in at least 2 positions.

    Worked numbers (unit scale): exact → 1.2/1.2 = 1.0; well-formed but wrong (K ≤ 4, or no valid
    permutation) → 0.2/1.2 = 1/6; K = 9 with 3 positions right → (0.2 + 0.2·3/9)/1.2 ≈ 0.222.

    Parts (unscaled, the released code's units): `format`, `accuracy`, `repetition`, and `exact`
    (1 for o = g, so its mean is the exact-match rate). Never raises on `completion`, whatever its
    length or content; non-string completions score 0.
    """
    check_mode(mode)
    if mode == "raw" and require_think:
        raise ConfigError("answer mode 'raw' cannot require a <think> block: the whole reply is the answer")
    if scale not in ("unit", "raw"):
        raise ConfigError(f"reward scale must be 'unit' or 'raw', got {scale!r}")
    truth = [int(x) for x in labels]
    k = len(truth)
    if k < 1:
        raise ValueError("an ordering reward needs at least one label")
    if not isinstance(completion, str) or not _gate(completion, mode, require_think):
        return Reward.zero(*PARTS)

    answer = parse_permutation(completion, k, mode=mode)
    exact = answer == truth
    accuracy = 0.0
    if exact:
        accuracy = 1.0
    elif answer is not None and is_valid_permutation(answer, k, lenient=lenient_validity):
        compared = answer[:k]
        if footrule:
            if set(compared) == set(range(1, k + 1)):
                accuracy = 1.0 - footrule_distance(compared, truth) / max(1, k * k // 2)
        elif k >= partial_min_k:
            accuracy = gamma * sum(o == g for o, g in zip(compared, truth)) / k
    repetition = -repetition_penalty if repetition_penalty and has_repeated_lines(completion) else 0.0
    raw = format_score + accuracy + repetition
    score = raw if scale == "raw" else min(1.0, max(0.0, raw / (format_score + 1.0)))
    parts = {"format": format_score, "accuracy": accuracy, "repetition": repetition, "exact": float(exact)}
    return Reward(score, parts)


def example_labels(k: int) -> list[int]:
    """A fixed, non-identity example answer of length K for prompts: the even labels, then the odd
    ones (K=4 → 2, 4, 1, 3; K=9 → 2, 4, 6, 8, 1, 3, 5, 7, 9). It depends on K only, so the prompt
    text never depends on (or hints at) the sample's answer."""
    return list(range(2, k + 1, 2)) + list(range(1, k + 1, 2))


@dataclass
class OrderingParams:
    """Answer format and reward knobs shared by every ordering task (a base for their `Params`)."""

    answer_mode: AnswerMode = "answer_tag"
    """Reply format asked for and parsed: `answer_tag` (<answer>2, 4, 1, 3</answer>), `boxed`
    (\\boxed{2, 4, 1, 3}, what the released checkpoints were trained with) or `raw`."""
    think: bool = True
    """Ask for reasoning inside <think></think> before the answer, and require that block in the
    format gate (the paper's recipe). Tiny CPU recipes turn it off; `raw` mode cannot use it."""
    gamma: float = 0.2
    """γ, the weight of partial credit: γ × (share of positions right) for a valid, wrong permutation."""
    partial_min_k: int = 5
    """Give partial credit only when K is at least this (5: the released code's K > 4; 2: the paper)."""
    lenient_validity: bool = False
    """Count any K distinct integers as a valid permutation (the released code) instead of exactly
    the labels 1..K once each."""
    repetition_penalty: float = 0.5
    """Subtracted when a reply repeats a long line more than 3 times in a row (0 disables)."""
    reward_scale: Literal["unit", "raw"] = "unit"
    """`unit`: score = clip(raw / 1.2, 0, 1), exact = 1.0; `raw`: the released code's 0-1.2 (−0.5) scale."""
    footrule: bool = False
    """Replace γ partial credit by the Spearman-footrule score 1 − D/⌊K²/2⌋ for valid permutations."""
    format_score: float = FORMAT_SCORE
    """R_fmt, added when the format gate passes (0.2: Visual Jigsaw; 0: VideoSSR, no format term)."""

    def __post_init__(self) -> None:
        check_mode(self.answer_mode)
        if self.answer_mode == "raw" and self.think:
            raise ConfigError("answer_mode 'raw' cannot ask for <think> reasoning; set think: false")
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"gamma must be in [0, 1], got {self.gamma}")
        if self.partial_min_k < 2:
            raise ConfigError(f"partial_min_k must be >= 2, got {self.partial_min_k}")
        if self.repetition_penalty < 0:
            raise ConfigError(f"repetition_penalty must be >= 0, got {self.repetition_penalty}")
        if not 0.0 <= self.format_score <= 1.0:
            raise ConfigError(f"format_score must be in [0, 1], got {self.format_score}")

    def score(self, completion: str, sample: Sample) -> Reward:
        """`ordering_reward` of `completion` against `sample.answer` (the labels stored when the
        Sample was made; the shuffle is never recomputed). The answer format and the think
        requirement come from the Sample's meta (what its prompt asked for); the reward knobs
        from these parameters, so a config can rescore a dataset differently."""
        mode = sample.meta.get("answer_mode", self.answer_mode)
        think = bool(sample.meta.get("think", self.think)) and mode != "raw"
        return ordering_reward(
            completion,
            sample.answer,
            mode=mode,
            require_think=think,
            gamma=self.gamma,
            partial_min_k=self.partial_min_k,
            lenient_validity=self.lenient_validity,
            repetition_penalty=self.repetition_penalty,
            scale=self.reward_scale,
            footrule=self.footrule,
            format_score=self.format_score,
        )

    def reference(self, sample: Sample, thought: str) -> str:
        """The ideal completion of `sample` (the SFT cold-start target): the answer wrapped as the
        prompt asked, after `<think>thought</think>` when the prompt asked for reasoning."""
        mode = sample.meta.get("answer_mode", self.answer_mode)
        answer = answer_text(sample.answer, mode)
        if sample.meta.get("think", self.think) and mode != "raw":
            return f"{THINK_OPEN}{thought}{THINK_CLOSE}\n{answer}"
        return answer

    def example(self, k: int) -> str:
        """The format example the prompt shows: `example_labels(k)` wrapped in the answer format."""
        return answer_text(example_labels(k), self.answer_mode)


def _gate(completion: str, mode: AnswerMode, require_think: bool) -> bool:
    if not format_ok(completion, mode):
        return False
    if require_think:
        # format_ok already allows think tags only as one leading block; here it must be present and say
        # something: an empty <think></think> is not reasoning.
        stripped = completion.lstrip()
        if not (stripped.startswith(THINK_OPEN) and THINK_CLOSE in stripped):
            return False
        return bool(stripped[len(THINK_OPEN) : stripped.index(THINK_CLOSE)].strip())
    return True


__all__ = [
    "FORMAT_SCORE",
    "MAX_RAW_SCORE",
    "PARTS",
    "OrderingParams",
    "answer_text",
    "example_labels",
    "footrule_distance",
    "has_repeated_lines",
    "is_valid_permutation",
    "ordering_reward",
    "parse_permutation",
]
