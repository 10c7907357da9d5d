"""Selective Sample Replay: candidate set, size, |A|-weighting, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from mmrl.grpo.replay import select_replay


def test_zero_advantage_items_excluded_and_size() -> None:
    adv = np.array([0.0, 0.0, 1.0, -2.0, 0.5, 0.0, 0.3, -0.1, 0.0, 0.7])  # 6 non-zero >= target 5
    for seed in range(50):
        idx = select_replay(adv, np.random.default_rng(seed))
        assert len(idx) == 10 // 2
        assert idx.dtype == np.int64
        assert np.all(adv[idx] != 0.0)
        assert len(np.unique(idx)) == len(idx)  # 5 draws without replacement from 6 candidates


def test_refill_factor_sets_size() -> None:
    adv = np.linspace(-1.0, 1.0, 12) + 0.05  # no exact zero
    assert len(select_replay(adv, np.random.default_rng(0), refill_factor=3)) == 4
    assert len(select_replay(adv, np.random.default_rng(0), refill_factor=1)) == 12


def test_candidates_repeated_while_they_fit() -> None:
    adv = np.array([0.0, 2.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0])  # 2 non-zero, target 4
    # max_zero_frac 0.1 * 2 non-zero -> floor(0.2) = 0 zeros admitted; 4 // 2 = 2 full copies, no remainder
    idx = select_replay(adv, np.random.default_rng(0))
    assert sorted(idx.tolist()) == [1, 1, 4, 4]


def test_scarce_nonzero_admits_few_zero_items() -> None:
    adv = np.zeros(40)
    adv[:10] = np.arange(1, 11) / 10.0  # 10 non-zero < target 20: scarce
    for seed in range(20):
        idx = select_replay(adv, np.random.default_rng(seed))
        assert len(idx) == 20
        # at most floor(0.1 * 10) = 1 distinct zero-advantage item; candidates 11 -> one full copy + 9 by P
        assert len({i for i in idx.tolist() if adv[i] == 0.0}) == 1
        assert set(range(10)) <= set(idx.tolist())
    idx = select_replay(adv, np.random.default_rng(0), max_zero_frac=0.0)
    assert np.all(adv[idx] != 0.0)


def test_all_zero_gives_empty() -> None:
    assert len(select_replay(np.zeros(16), np.random.default_rng(0))) == 0
    assert len(select_replay(np.array([1.0]), np.random.default_rng(0))) == 0  # 1 // 2 = 0


def test_probability_follows_abs_advantage_power_alpha() -> None:
    # N = 2, target 1, one draw: P(item 0) = (3 + 1e-4) / (3 + 1e-4 + 1 + 1e-4) ~ 0.75;
    # with alpha = 2: 9 / (9 + 1) = 0.9. Sampling sd over 4000 seeds is ~0.007.
    adv = np.array([3.0, -1.0])
    for alpha, expected in [(1.0, 0.75), (2.0, 0.9)]:
        hits = sum(select_replay(adv, np.random.default_rng(s), alpha=alpha)[0] == 0 for s in range(4000))
        assert abs(hits / 4000 - expected) < 0.03


def test_high_abs_advantage_drawn_more_often() -> None:
    adv = np.array([0.1, 1.0, -0.1, -1.0, 0.1, 1.0, -0.1, -1.0])  # |A| = 1 at odd indices
    counts = {1.0: np.zeros(8), 0.0: np.zeros(8)}
    for alpha in counts:
        for seed in range(500):
            counts[alpha] += np.bincount(select_replay(adv, np.random.default_rng(seed), alpha=alpha), minlength=8)
        counts[alpha] /= 500
    assert counts[1.0][1::2].min() > 0.7 and counts[1.0][0::2].max() < 0.3
    np.testing.assert_allclose(counts[0.0], 0.5, atol=0.1)  # alpha = 0: uniform, 4 of 8


def test_deterministic_for_same_seed() -> None:
    adv = np.random.default_rng(123).normal(size=64)
    a = select_replay(adv, np.random.default_rng(7))
    b = select_replay(adv, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    outputs = {tuple(select_replay(adv, np.random.default_rng(s))) for s in range(5)}
    assert len(outputs) > 1


def test_bad_arguments() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="refill_factor"):
        select_replay(np.ones(4), rng, refill_factor=0)
    with pytest.raises(ValueError, match="eps > 0"):
        select_replay(np.ones(4), rng, eps=0.0)
    with pytest.raises(ValueError, match="1-D"):
        select_replay(np.ones((2, 2)), rng)
