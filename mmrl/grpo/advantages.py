"""Group-relative advantage estimators: one scalar reward per sequence in, one advantage per sequence out.

Each prompt is sampled G times; the G completions form a group (`group_ids` names it). The advantage
of a completion compares its reward with the other rewards of its group (trainers.md §1). Groups with
identical rewards carry no signal: their advantages are exactly 0 for every estimator, and
`zero_variance_groups` names them (dynamic sampling, the `frac_zero_std_groups` metric).

Everything here is NumPy on the host: rewards are a handful of floats per step.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

ESTIMATORS = ("grpo", "dr_grpo", "rloo", "batch_std")


def _group_index(group_ids: Sequence[Hashable], n: int) -> tuple[np.ndarray, list[Hashable]]:
    """Map each group id to 0..G-1 in order of first appearance. Returns (index (N,), ids (G,))."""
    if len(group_ids) != n:
        raise ValueError(f"got {n} rewards but {len(group_ids)} group ids")
    slots: dict[Hashable, int] = {}
    index = np.fromiter((slots.setdefault(g, len(slots)) for g in group_ids), dtype=np.int64, count=n)
    return index, list(slots)


def _as_rewards(rewards: np.ndarray) -> np.ndarray:
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {r.shape}")
    if not np.all(np.isfinite(r)):
        raise ValueError("rewards must be finite (got NaN or inf)")
    return r


def _constant_groups(r: np.ndarray, index: np.ndarray, num_groups: int) -> np.ndarray:
    """(G,) bool: True where every reward of the group is equal (exact comparison, no tolerance)."""
    gmax = np.full(num_groups, -np.inf)
    gmin = np.full(num_groups, np.inf)
    np.maximum.at(gmax, index, r)
    np.minimum.at(gmin, index, r)
    return gmax == gmin


def group_advantages(
    rewards: np.ndarray,
    group_ids: Sequence[Hashable],
    estimator: str = "grpo",
    eps: float = 1e-6,
) -> np.ndarray:
    """Per-sequence advantages (N,) from per-sequence rewards (N,) and their group ids (N,).

    With mean_g, std_g the mean and population std (ddof=0) of the rewards of i's group g, n_g its size:

    - `grpo` (Shao et al. 2024, DeepSeekMath):   A_i = (R_i - mean_g) / (std_g + eps)
    - `dr_grpo` (Liu et al. 2025, Dr.GRPO):      A_i = R_i - mean_g
    - `rloo` (Ahmadian et al. 2024, RLOO):       A_i = R_i - (1/(n_g-1)) sum_{j in g, j != i} R_j
                                                     = n_g/(n_g-1) * (R_i - mean_g);   A_i = 0 if n_g = 1
    - `batch_std` (LitePPO, Liu et al. 2025):    A_i = (R_i - mean_g) / (std_batch + eps),
      std_batch = population std of all N rewards of the batch.

    Groups whose rewards are all equal get exactly 0 (not a rounding residue such as 1e-17 / 1e-6),
    so `A == 0` reliably marks "no signal" for replay and filtering. Positive rescaling R -> kR leaves
    `grpo` unchanged (up to eps) and scales `dr_grpo`/`rloo` by k.

    Returns float64 (N,). Raises ValueError for an unknown estimator or mismatched lengths.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")
    r = _as_rewards(rewards)  # (N,)
    index, ids = _group_index(group_ids, len(r))  # (N,)
    num_groups = len(ids)
    if len(r) == 0:
        return np.zeros(0)

    count = np.bincount(index, minlength=num_groups).astype(np.float64)  # (G,)
    mean = np.bincount(index, weights=r, minlength=num_groups) / count  # (G,)
    centred = r - mean[index]  # (N,)

    if estimator == "grpo":
        var = np.bincount(index, weights=centred**2, minlength=num_groups) / count  # (G,) population
        adv = centred / (np.sqrt(var)[index] + eps)
    elif estimator == "dr_grpo":
        adv = centred
    elif estimator == "rloo":
        n = count[index]  # (N,)
        adv = np.where(n > 1, centred * n / np.maximum(n - 1, 1), 0.0)
    else:  # batch_std
        adv = centred / (r.std() + eps)

    adv[_constant_groups(r, index, num_groups)[index]] = 0.0
    return adv


def zero_variance_groups(rewards: np.ndarray, group_ids: Sequence[Hashable]) -> set[Hashable]:
    """Group ids whose rewards are all equal (a group of one included): their advantages are 0.

    `len(zero_variance_groups(r, g)) / len(set(g))` is the logged `frac_zero_std_groups`; DAPO's
    dynamic sampling (Yu et al. 2025) drops these groups and refills the batch.
    """
    r = _as_rewards(rewards)
    index, ids = _group_index(group_ids, len(r))
    constant = _constant_groups(r, index, len(ids))  # (G,)
    return {g for g, c in zip(ids, constant) if c}
