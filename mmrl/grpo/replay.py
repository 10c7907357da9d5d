"""Selective Sample Replay (SSR; VL-Rethinker, Wang et al. 2025, arXiv 2504.08837; trainers.md §8).

As training saturates, more groups get uniform rewards and zero advantage ("vanishing advantages").
SSR builds each training set from the rollout buffer by dropping the zero-advantage samples and
drawing the rest with probability growing with |A|: samples at the capability boundary (a correct
answer to a mostly failed prompt) are replayed more often.

The selection is a pure function of the step's advantages and the caller's generator: it keeps no
state across steps, so a checkpoint needs only the generator's state (`rng.bit_generator.state`).
Replayed items are off-policy after their first update: keep their behaviour log-probs and train
with the clipped ratio (`mmrl.grpo.loss`).
"""

from __future__ import annotations

import numpy as np


def select_replay(
    advantages: np.ndarray,
    rng: np.random.Generator,
    *,
    alpha: float = 1.0,
    refill_factor: int = 2,
    eps: float = 1e-4,
    max_zero_frac: float = 0.1,
) -> np.ndarray:
    """Indices (int64, in random order, repeats allowed) into the buffer of the step's training set.

    With N = len(advantages) and target size K = N // refill_factor:

    1. Candidates: every item with A_j != 0. Non-zero items are *scarce* when there are fewer of them
       than K (they cannot fill the training set once). Only then are zero-advantage items admitted,
       drawn uniformly without replacement, at most floor(max_zero_frac * #nonzero) of them and never
       more than needed to reach K. With no non-zero item the result is empty (nothing to learn).
    2. P(j) = (|A_j| + eps)^alpha / sum_k (|A_k| + eps)^alpha over the candidates (alpha = 0: uniform).
    3. The whole candidate set is repeated floor(K / C) times (C candidates); the remaining
       K mod C items are drawn by P without replacement.

    The result has exactly K indices unless it is empty. `len(np.unique(idx)) / len(idx)` is the
    unique-item fraction worth logging.
    """
    a = np.abs(np.asarray(advantages, dtype=np.float64))  # (N,)
    if a.ndim != 1:
        raise ValueError(f"advantages must be 1-D (N,), got shape {a.shape}")
    if refill_factor < 1:
        raise ValueError(f"refill_factor must be >= 1, got {refill_factor}")
    if alpha < 0 or eps <= 0 or not 0 <= max_zero_frac <= 1:
        raise ValueError(f"need alpha >= 0, eps > 0, 0 <= max_zero_frac <= 1; got {alpha}, {eps}, {max_zero_frac}")
    target = len(a) // refill_factor
    nonzero = np.flatnonzero(a != 0)  # (M,)
    if target == 0 or len(nonzero) == 0:
        return np.zeros(0, dtype=np.int64)

    candidates = nonzero
    if len(nonzero) < target:  # scarce: admit a few zero-advantage items
        zeros = np.flatnonzero(a == 0)
        n_admit = min(len(zeros), int(max_zero_frac * len(nonzero)), target - len(nonzero))
        if n_admit > 0:
            candidates = np.concatenate([nonzero, rng.choice(zeros, size=n_admit, replace=False)])

    repeats, remainder = divmod(target, len(candidates))
    weights = (a[candidates] + eps) ** alpha  # (C,)
    extra = rng.choice(candidates, size=remainder, replace=False, p=weights / weights.sum())
    picked = np.concatenate([np.tile(candidates, repeats), extra]).astype(np.int64)  # (K,)
    return rng.permutation(picked)
