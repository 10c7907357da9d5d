"""Who-is-the-spy scoring: parsers on hand-made completions, rewards and baselines worked out by hand."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from games.scoring import (
    ABSTAIN,
    INVALID,
    RoleBaselines,
    Vote,
    clue_rewards,
    count_kinds,
    decision_advantages,
    decision_rewards,
    has_format,
    parse_clue,
    parse_vote,
    role_advantages,
    vote_counts,
)
from mmrl.errors import ConfigError


def P(k: int) -> Vote:
    return Vote("player", k)


# Sheet §4 worked example: 4 players, spy = 2, votes {1: 2, 2: 5, 3: 0, 4: 0} and one N/A.
EXAMPLE_VOTES = [P(1), P(2), P(2), P(1), P(2), ABSTAIN, P(2), P(2)]
REASONING = "Player 2 mentioned a cylinder that nobody else saw, so they are the odd one out."


# --------------------------------------------------------------------------------------------------
# parse_clue


@pytest.mark.parametrize(
    "text, clue, thinking",
    [
        ("The cube is red. \\boxed{There is a red cube.}", "There is a red cube.", "The cube is red."),
        # nested braces: the released code's non-greedy regex would have stopped at the first "}"
        (
            "look \\boxed{a {big} cube with \\textbf{two} spheres} tail",
            "a {big} cube with \\textbf{two} spheres",
            "look",
        ),
        # the first box wins; thinking ends where it starts
        ("a \\boxed{first} b \\boxed{second}", "first", "a"),
        # an unclosed box is skipped, a complete one after it is used
        ("x \\boxed{never closed \\boxed{inner}", "inner", "x \\boxed{never closed"),
        # <think> content is the thinking when present
        ("<think> compare colours </think> so: \\boxed{metal sphere}", "metal sphere", "compare colours"),
        # <answer> fallback; thinking is the text before it
        ("I see a cylinder. <answer> A green cylinder </answer>", "A green cylinder", "I see a cylinder."),
        # a blank box falls back to <answer>
        ("hm \\boxed{  } <answer>blue</answer>", "blue", "hm \\boxed{  }"),
        # no clue at all: thinking is the whole text, think tags removed
        ("<think>just rambling with no box", None, "just rambling with no box"),
        ("", None, ""),
        ("   \n ", None, ""),
        ("\\boxed{}", None, "\\boxed{}"),
    ],
)
def test_parse_clue(text: str, clue: str | None, thinking: str) -> None:
    assert parse_clue(text) == (clue, thinking)


def test_parse_clue_non_string() -> None:
    assert parse_clue(None) == (None, "")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# parse_vote


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Player 2 is odd. \\boxed{2}", P(2)),
        ("\\boxed{Player 3}", P(3)),
        ("\\boxed{P4}", P(4)),
        ("\\boxed{3.}", P(3)),
        ("\\boxed{ 1 }", P(1)),
        ("\\boxed{N/A}", ABSTAIN),
        ("\\boxed{n/a}", ABSTAIN),
        ("\\boxed{NA}", ABSTAIN),
        ("\\boxed{ Na. }", ABSTAIN),
        ("\\boxed{N / A}", ABSTAIN),
        ("\\boxed{\\text{N/A}}", ABSTAIN),
        # out of range, zero, multi-digit: invalid (never a later digit)
        ("\\boxed{7}", INVALID),
        ("\\boxed{0}", INVALID),
        ("\\boxed{12}", INVALID),
        ("\\boxed{5 or maybe 2}", INVALID),
        # the first box decides; the first number inside it decides
        ("\\boxed{3} no wait \\boxed{1}", P(3)),
        ("\\boxed{Player 2, not player 4}", P(2)),
        # nested braces inside the box
        ("\\boxed{\\text{Player {2}}}", P(2)),
        # JSON fallback: no box, or a box with neither N/A nor a number
        ('My answer: {"spy": 4}', P(4)),
        ('{"reason": "vague clue", "spy": "1"}', P(1)),
        ('{"spy": "N/A"}', ABSTAIN),
        ("{'spy': '2'}", P(2)),
        ('{"spy": 9}', INVALID),
        ('\\boxed{the vague one} {"spy": 3}', P(3)),
        ('\\boxed{2} {"spy": 3}', P(2)),
        # nothing usable
        ("\\boxed{nobody}", INVALID),
        ("I think it is player 2", INVALID),
        ("\\boxed{2", INVALID),
        ("", INVALID),
    ],
)
def test_parse_vote(text: str, expected: Vote) -> None:
    assert parse_vote(text, 4) == expected


def test_parse_vote_respects_n_players() -> None:
    assert parse_vote("\\boxed{5}", 5) == P(5)
    assert parse_vote("\\boxed{5}", 4) == INVALID
    assert parse_vote("\\boxed{10}", 10) == P(10)
    assert parse_vote(None, 4) == INVALID  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        parse_vote("\\boxed{1}", 0)


@pytest.mark.parametrize(
    "garbage",
    [
        "\\boxed{" * 1500,
        "{" * 10_000,
        "}" * 10_000,
        "<answer>" * 1250,
        "<think>" * 1400,
        '"spy": ' * 1400,
        "\\boxed{" + "{" * 10_000,
    ],
)
def test_parsers_linear_on_10k_garbage(garbage: str) -> None:
    start = time.perf_counter()
    vote = parse_vote(garbage, 4)
    clue, _ = parse_clue(garbage)
    assert time.perf_counter() - start < 0.5
    assert vote == INVALID
    assert clue is None


def test_parsers_on_random_text() -> None:
    rng = np.random.default_rng(0)
    alphabet = list('\\boxed{}<>/answerthink"spy: 0123456789NA \n')
    for _ in range(50):
        text = "".join(rng.choice(alphabet, size=10_000))
        vote = parse_vote(text, 4)
        assert vote.kind in ("player", "abstain", "invalid")
        assert vote.player is None or 1 <= vote.player <= 4
        clue, thinking = parse_clue(text)
        assert clue is None or clue.strip() == clue
        assert isinstance(thinking, str)


def test_vote_validation() -> None:
    with pytest.raises(ValueError):
        Vote("player")
    with pytest.raises(ValueError):
        Vote("abstain", 2)
    with pytest.raises(ValueError):
        Vote("player", 0)
    with pytest.raises(ValueError):
        Vote("maybe")  # type: ignore[arg-type]
    with pytest.raises(AttributeError):
        P(1).player = 2  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------
# Vote counting and clue rewards


def test_vote_counts_and_kinds() -> None:
    votes = [*EXAMPLE_VOTES, INVALID, INVALID]
    assert vote_counts(votes, 4).tolist() == [2, 5, 0, 0]
    assert count_kinds(votes) == {"player": 7, "abstain": 1, "invalid": 2}
    with pytest.raises(ValueError):
        vote_counts([P(5)], 4)


def test_clue_rewards_worked_example() -> None:
    # v̄_c = 2/3, v_s - v̄_c = 13/3; spy -0.1 * 13/3; P1 0.1/3 * 13/3 - 0.1 * (2 - 2/3)
    r = clue_rewards(EXAMPLE_VOTES, spy=2, n_players=4)
    np.testing.assert_allclose(r, [0.011, -0.433, 0.211, 0.211], atol=1e-3)
    np.testing.assert_allclose(r, [13 / 90 - 4 / 30, -13 / 30, 13 / 90 + 2 / 30, 13 / 90 + 2 / 30], atol=1e-12)
    assert abs(r.sum()) < 1e-12


def test_clue_rewards_ignores_abstain_and_invalid() -> None:
    base = clue_rewards(EXAMPLE_VOTES, 2, 4)
    noisy = clue_rewards([*EXAMPLE_VOTES, ABSTAIN, INVALID, INVALID], 2, 4)
    np.testing.assert_array_equal(base, noisy)
    np.testing.assert_array_equal(clue_rewards([ABSTAIN, INVALID], 3, 4), np.zeros(4))


def test_clue_rewards_beta_lambda_roles() -> None:
    # all votes on civilian 1 (spy 3, 3 players): v = (4, 0, 0), v̄_c = 2, v_s - v̄_c = -2
    r = clue_rewards([P(1)] * 4, spy=3, n_players=3, beta=0.5, lam=0.25)
    # spy +0.5*2 = 1; civ1: 0.5/2*(-2) - 0.25*(4-2) = -1; civ2: -0.5 - 0.25*(0-2) = 0
    np.testing.assert_allclose(r, [-1.0, 0.0, 1.0], atol=1e-12)


def test_clue_rewards_seeded_random_games_are_zero_sum() -> None:
    rng = np.random.default_rng(1234)
    for _ in range(2000):
        n = int(rng.integers(2, 9))
        spy = int(rng.integers(1, n + 1))
        kinds = rng.choice(3, size=int(rng.integers(0, 17)), p=[0.7, 0.2, 0.1])
        votes = [P(int(rng.integers(1, n + 1))) if k == 0 else ABSTAIN if k == 1 else INVALID for k in kinds]
        beta, lam = rng.uniform(0, 1, size=2)
        r = clue_rewards(votes, spy, n, beta=beta, lam=lam)
        assert r.shape == (n,)
        assert abs(r.sum()) < 1e-12


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(2, 9),
    data=st.data(),
    beta=st.floats(0, 10, allow_nan=False),
    lam=st.floats(0, 10, allow_nan=False),
)
def test_clue_rewards_zero_sum_property(n: int, data: st.DataObject, beta: float, lam: float) -> None:
    spy = data.draw(st.integers(1, n))
    seats = data.draw(st.lists(st.integers(1, n), max_size=40))
    r = clue_rewards([P(k) for k in seats], spy, n, beta=beta, lam=lam)
    assert abs(r.sum()) <= 1e-9 * (1 + beta + lam) * (1 + len(seats))
    # more votes on the spy never helps the spy
    more = clue_rewards([P(k) for k in seats] + [P(spy)], spy, n, beta=beta, lam=lam)
    assert more[spy - 1] <= r[spy - 1] + 1e-12


def test_clue_rewards_bad_seats() -> None:
    with pytest.raises(ValueError):
        clue_rewards([], spy=5, n_players=4)
    with pytest.raises(ValueError):
        clue_rewards([], spy=1, n_players=1)


# --------------------------------------------------------------------------------------------------
# Role baselines (RAE)


def test_role_baselines_follow_the_ema_by_hand() -> None:
    rb = RoleBaselines(alpha=0.95)
    # step 1: spy mean -0.3, civ mean 0.15 -> b_s = 0.05 * -0.3 = -0.015, b_c = 0.05 * 0.15 = 0.0075
    rb.update([-0.4, -0.2], [0.1, 0.2, 0.0, 0.3])
    assert (rb.b_spy, rb.b_civ) == pytest.approx((-0.015, 0.0075), abs=1e-15)
    # step 2: b_s = 0.95 * -0.015 + 0.05 * 0.2 = -0.00425, b_c = 0.95 * 0.0075 + 0.05 * -0.1 = 0.002125
    rb.update([0.2], [-0.1])
    assert (rb.b_spy, rb.b_civ) == pytest.approx((-0.00425, 0.002125), abs=1e-15)
    # step 3: b_s = 0.95 * -0.00425 + 0.05 * 0.5 = 0.0209625, b_c = 0.95 * 0.002125 + 0.05 * 0.4 = 0.02201875
    rb.update([1.0, 0.0], [0.4, 0.4])
    assert (rb.b_spy, rb.b_civ) == pytest.approx((0.0209625, 0.02201875), abs=1e-15)
    assert rb.updates == 3
    # advantages subtract the role's baseline: seat 3 is the spy
    adv = rb.advantages(np.array([0.1, 0.2, -0.3, 0.0]), spy_seat=3)
    np.testing.assert_allclose(adv, [0.1 - 0.02201875, 0.2 - 0.02201875, -0.3 - 0.0209625, -0.02201875], atol=1e-15)


def test_role_advantages_per_step_updates_once_then_subtracts() -> None:
    g1 = clue_rewards(EXAMPLE_VOTES, 2, 4)  # spy -13/30, civilians (1/90, 19/90, 19/90)
    g2 = np.array([0.3, -0.1, -0.1, -0.1])  # spy seat 1
    rb = RoleBaselines(alpha=0.9)
    adv = role_advantages([g1, g2], [2, 1], rb, mode="per_step")
    # spy mean (-13/30 + 0.3) / 2 = -1/15; civilian mean (39/90 - 0.3) / 6 = (2/15) / 6 = 1/45
    b_s, b_c = 0.1 * (-1 / 15), 0.1 * (1 / 45)
    assert rb.updates == 1
    assert (rb.b_spy, rb.b_civ) == pytest.approx((b_s, b_c), abs=1e-15)
    np.testing.assert_allclose(adv[0], g1 - np.array([b_c, b_s, b_c, b_c]), atol=1e-15)
    np.testing.assert_allclose(adv[1], g2 - np.array([b_s, b_c, b_c, b_c]), atol=1e-15)


def test_role_advantages_per_game_updates_in_order() -> None:
    g1 = np.array([0.0, -0.4, 0.2, 0.2])  # spy 2
    g2 = np.array([0.3, -0.1, -0.1, -0.1])  # spy 1
    rb = RoleBaselines(alpha=0.9)
    adv = role_advantages([g1, g2], [2, 1], rb, mode="per_game")
    # game 1: b_s = 0.1 * -0.4 = -0.04, b_c = 0.1 * 0.4/3
    b_s1, b_c1 = -0.04, 0.1 * 0.4 / 3
    np.testing.assert_allclose(adv[0], g1 - np.array([b_c1, b_s1, b_c1, b_c1]), atol=1e-15)
    # game 2: b_s = 0.9 * -0.04 + 0.1 * 0.3 = -0.006, b_c = 0.9 * b_c1 + 0.1 * -0.1
    b_s2, b_c2 = -0.006, 0.9 * b_c1 - 0.01
    np.testing.assert_allclose(adv[1], g2 - np.array([b_s2, b_c2, b_c2, b_c2]), atol=1e-15)
    assert rb.updates == 2
    assert (rb.b_spy, rb.b_civ) == pytest.approx((b_s2, b_c2), abs=1e-15)


def test_role_advantages_one_game_same_in_both_modes_and_edge_cases() -> None:
    g = clue_rewards(EXAMPLE_VOTES, 2, 4)
    a, b = RoleBaselines(), RoleBaselines()
    np.testing.assert_array_equal(
        role_advantages([g], [2], a, "per_step")[0], role_advantages([g], [2], b, "per_game")[0]
    )
    assert role_advantages([], [], a) == [] and a.updates == 1
    with pytest.raises(ValueError):
        role_advantages([g], [2, 3], a)
    with pytest.raises(ConfigError):
        role_advantages([g], [2], a, mode="weekly")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        a.update([], [0.1])
    with pytest.raises(ValueError):
        a.update([float("nan")], [0.1])


def test_role_baselines_alpha_one_freezes_and_bad_alpha_rejected() -> None:
    rb = RoleBaselines(alpha=1.0)
    rb.update([5.0], [-5.0])
    assert (rb.b_spy, rb.b_civ) == (0.0, 0.0)
    with pytest.raises(ConfigError):
        RoleBaselines(alpha=1.5)


def test_role_baselines_state_dict_round_trip() -> None:
    rng = np.random.default_rng(7)
    games = [(rng.normal(size=4), int(rng.integers(1, 5))) for _ in range(12)]
    a = RoleBaselines(alpha=0.9)
    role_advantages([g for g, _ in games[:5]], [s for _, s in games[:5]], a)
    b = RoleBaselines(alpha=0.9)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for g, s in games[5:]:
        np.testing.assert_array_equal(
            role_advantages([g], [s], a, "per_game")[0], role_advantages([g], [s], b, "per_game")[0]
        )
    assert a.state_dict() == b.state_dict()


# --------------------------------------------------------------------------------------------------
# Decision rewards and advantages


def test_decision_rewards_paper() -> None:
    votes = [P(2), ABSTAIN, P(1), INVALID, P(2)]
    np.testing.assert_array_equal(decision_rewards(votes, spy=2), [1.0, -0.5, -1.0, -1.0, 1.0])


def test_decision_rewards_shaped_values() -> None:
    def reasoned(answer: str) -> str:
        return f"{REASONING} \\boxed{{{answer}}}"

    cases = [
        (P(2), reasoned("2"), 2.49),  # correct + fmt
        (ABSTAIN, reasoned("N/A"), -0.30),  # N/A + fmt
        (P(3), reasoned("3"), -0.90),  # wrong + fmt
        (P(2), "\\boxed{2}", 1.89),  # correct, no reasoning
        (P(1), "\\boxed{1}", -1.50),  # wrong, no reasoning
        (INVALID, REASONING, -1.50),  # invalid, no box
        (ABSTAIN, "\\boxed{N/A}", -0.90),  # N/A without fmt
    ]
    votes, texts, expected = zip(*cases)
    assert [parse_vote(t, 4) for t in texts] == list(votes)
    np.testing.assert_allclose(decision_rewards(votes, 2, "shaped", texts), expected, atol=1e-12)


def test_has_format_boundary() -> None:
    assert not has_format("0123456789 \\boxed{2}")  # exactly 10 characters of reasoning
    assert has_format("0123456789a \\boxed{2}")  # 11
    assert not has_format(f"{REASONING} \\boxed{{ }}")  # blank box
    assert not has_format(f"{REASONING} \\boxed{{2")  # unclosed box
    assert not has_format(REASONING)
    assert has_format(f"<think>{REASONING}</think> \\boxed{{2}}")


def test_decision_rewards_errors() -> None:
    with pytest.raises(ValueError):
        decision_rewards([P(1)], 1, "shaped")
    with pytest.raises(ValueError):
        decision_rewards([P(1)], 1, "shaped", ["a", "b"])
    with pytest.raises(ConfigError):
        decision_rewards([P(1)], 1, "bonus")  # type: ignore[arg-type]


def test_decision_advantages_group_normalisation() -> None:
    r = decision_rewards([P(2), P(2), P(1), ABSTAIN], spy=2)  # 1, 1, -1, -0.5
    # mean 0.125; deviations .875 .875 -1.125 -.625; population var 3.1875 / 4 = 0.796875
    std = np.sqrt(0.796875)
    np.testing.assert_allclose(decision_advantages(r), (r - 0.125) / (std + 1e-8), atol=1e-12)
    adv = decision_advantages(r)
    assert abs(adv.mean()) < 1e-12 and adv.std() == pytest.approx(1.0, abs=1e-7)
    # a game where every sample scored the same carries no signal: exact zeros
    assert np.all(decision_advantages(np.full(8, 2.49)) == 0.0)
    # several games at once, each its own group
    both = decision_advantages(np.concatenate([r, np.full(3, -1.0)]), group_ids=[0] * 4 + [1] * 3)
    np.testing.assert_allclose(both[:4], adv, atol=1e-12)
    assert np.all(both[4:] == 0.0)
