"""Group advantage estimators against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from mmrl.grpo.advantages import ESTIMATORS, group_advantages, zero_variance_groups

# Two groups, interleaved on purpose: a = rewards [0, 0, 3] (items 0, 2, 3), b = [2, 4] (items 1, 4).
#   a: mean 1, deviations (-1, -1, 2), population var (1 + 1 + 4) / 3 = 2, std sqrt(2)
#   b: mean 3, deviations (-1, 1),     population var (1 + 1) / 2 = 1,     std 1
REWARDS = np.array([0.0, 2.0, 0.0, 3.0, 4.0])
GROUPS = ["a", "b", "a", "a", "b"]
SQRT2 = np.sqrt(2.0)

EXPECTED = {
    # (R - mean_g) / std_g: a -> (-1, -1, 2) / sqrt 2, b -> (-1, 1) / 1
    "grpo": [-1 / SQRT2, -1.0, -1 / SQRT2, 2 / SQRT2, 1.0],
    # R - mean_g
    "dr_grpo": [-1.0, -1.0, -1.0, 2.0, 1.0],
    # R_i - mean of the others: a: 0 - (0 + 3)/2 = -1.5, 0 - 1.5 = -1.5, 3 - (0 + 0)/2 = 3;  b: 2 - 4, 4 - 2
    "rloo": [-1.5, -2.0, -1.5, 3.0, 2.0],
    # batch mean 9/5 = 1.8; squared deviations 3.24 + 3.24 + 1.44 + 0.04 + 4.84 = 12.8; var 2.56, std 1.6
    # (R - mean_g) / 1.6 = (-1, -1, -1, 2, 1) / 1.6
    "batch_std": [-0.625, -0.625, -0.625, 1.25, 0.625],
}


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_hand_computed_two_groups(estimator: str) -> None:
    adv = group_advantages(REWARDS, GROUPS, estimator, eps=0.0)
    np.testing.assert_allclose(adv, EXPECTED[estimator], rtol=1e-12, atol=1e-12)


def test_default_eps_is_added_to_std() -> None:
    adv = group_advantages(REWARDS, GROUPS, "grpo")  # eps = 1e-6
    # b: (4 - 3) / (1 + 1e-6)
    assert adv[4] == pytest.approx(1.0 / (1.0 + 1e-6), rel=1e-12)
    assert adv[4] < 1.0


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_constant_groups_get_exact_zero(estimator: str) -> None:
    # 0.1 * 3 / 3 != 0.1 in floating point: the zero must be exact anyway; group "y" carries signal.
    rewards = np.array([0.1, 0.1, 0.1, 1.0, 0.0, 1.0])
    groups = ["x", "x", "x", "y", "y", "y"]
    adv = group_advantages(rewards, groups, estimator)
    assert np.all(adv[:3] == 0.0)
    assert np.all(adv[3:] != 0.0)
    assert zero_variance_groups(rewards, groups) == {"x"}


def test_zero_variance_groups_counts_singletons_and_mixed() -> None:
    rewards = np.array([1.0, 1.0, 0.0, 1.0, 0.5, 7.0])
    groups = [0, 0, 1, 1, 2, 3]  # 0 constant, 1 mixed, 2 and 3 singletons
    assert zero_variance_groups(rewards, groups) == {0, 2, 3}


def test_positive_scaling_leaves_grpo_but_scales_dr_grpo() -> None:
    scaled = 5.0 * REWARDS
    np.testing.assert_allclose(
        group_advantages(scaled, GROUPS, "grpo"), group_advantages(REWARDS, GROUPS, "grpo"), rtol=1e-5
    )
    np.testing.assert_allclose(group_advantages(scaled, GROUPS, "dr_grpo"), 5.0 * np.array(EXPECTED["dr_grpo"]))


def test_rloo_group_of_one_is_zero() -> None:
    adv = group_advantages(np.array([3.0, 1.0, 2.0]), ["solo", "pair", "pair"], "rloo")
    # solo: no other member -> 0; pair: 1 - 2 = -1, 2 - 1 = 1
    np.testing.assert_array_equal(adv, [0.0, -1.0, 1.0])


def test_unknown_estimator_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="grpo, dr_grpo, rloo, batch_std"):
        group_advantages(REWARDS, GROUPS, "ppo")


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="group ids"):
        group_advantages(REWARDS, GROUPS[:-1])
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(REWARDS.reshape(5, 1), GROUPS)
    with pytest.raises(ValueError, match="finite"):
        group_advantages(np.array([0.0, np.nan]), [0, 0])
