"""VideoSSR grounding (temporal IoU) and counting rewards: hand-made cases, numbers worked out in comments."""

from __future__ import annotations

import time

import pytest

from mmrl.contracts import Reward
from mmrl.errors import ConfigError
from rewards.temporal import (
    COUNTING_PARTS,
    GROUNDING_PARTS,
    counting_reward,
    grounding_reward,
    parse_counts,
    parse_interval,
    temporal_iou,
)

G_ZERO = Reward.zero(*GROUNDING_PARTS)
C_ZERO = Reward.zero(*COUNTING_PARTS)
GARBAGE = ("3.1-4.0 <answer>" + "1" * 50 + "-" + " x-" * 30) * 70  # > 10k chars of near-misses


def tag(payload: str) -> str:
    return f"<answer>{payload}</answer>"


# --------------------------------------------------------------------------------------------------
# Interval parsing


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3.1-4.0", (3.1, 4.0)),
        ("14.5 - 26.2", (14.5, 26.2)),  # spaces around "-"
        ("  3\t-\t4  ", (3.0, 4.0)),  # integers, tabs, surrounding whitespace
        ("2.5-2.5", (2.5, 2.5)),  # empty interval is allowed
        ("0-12.25", (0.0, 12.25)),  # more than one decimal still parses
    ],
)
def test_parse_interval_accepts_stated_format(text, expected):
    assert parse_interval(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "4-3",  # reversed
        "4.0-3.1",  # reversed
        "3.1 to 4.0",  # not the stated format
        "from 3.1 to 4.0",
        "3.1-4.0 s",  # unit suffix
        "3.1s-4.0s",
        "-1-2",  # negative start
        "1--2",  # negative end
        "3.1-4.0-5.0",
        ".5-1",  # no leading digit
        "3.-4",
        "1e3-2e3",
        "3,1-4,0",
        "",
        "   ",
        "The anomaly happens between 3.1 and 4.0 seconds.",
        "3.1\n-4.0",  # newline is not a space
        "١-٢",  # non-ASCII digits
        "1" * 400 + "-" + "2" * 400,  # float overflow -> inf, rejected
        None,
        42,
    ],
)
def test_parse_interval_rejects(text):
    assert parse_interval(text) is None


def test_parse_interval_is_linear_on_garbage():
    samples = [GARBAGE, "1" * 10_000, "1-" + "1" * 10_000 + "x", " " * 5000 + "1" + " " * 5000 + "-x", "-" * 10_000]
    start = time.perf_counter()
    for text in samples:
        assert len(text) >= 10_000
        assert parse_interval(text) is None
    assert time.perf_counter() - start < 0.5


# --------------------------------------------------------------------------------------------------
# Temporal IoU


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ((2, 4), (2, 4), 1.0),  # identical
        ((3, 5), (2, 4), 1 / 3),  # inter [3,4]=1, union 2+2-1=3
        ((2, 3), (2, 4), 0.5),  # contained: inter 1, union 2
        ((0, 10), (4, 6), 0.2),  # contains: inter 2, union 10
        ((5, 6), (2, 4), 0.0),  # disjoint
        ((4, 6), (2, 4), 0.0),  # touching at one point: inter 0
        ((14.5, 26.2), (14.5, 20.0), 5.5 / 11.7),  # inter 5.5, union 11.7
        ((3, 3), (2, 4), 0.0),  # empty prediction: inter 0, union 2
        ((3, 3), (3, 3), 1.0),  # both empty at the same point: degenerate union, they touch
        ((3, 3), (4, 4), 0.0),  # both empty, apart
    ],
)
def test_temporal_iou(a, b, expected):
    assert temporal_iou(a, b) == pytest.approx(expected)
    assert temporal_iou(b, a) == pytest.approx(expected)  # symmetric


@pytest.mark.parametrize("bad", [(4, 3), (float("nan"), 1), (0, float("inf"))])
def test_temporal_iou_rejects_bad_intervals(bad):
    with pytest.raises(ValueError):
        temporal_iou(bad, (0, 1))


# --------------------------------------------------------------------------------------------------
# Grounding reward (gt 2-4 s unless stated)


@pytest.mark.parametrize(
    "completion, score",
    [
        (tag("2-4"), 1.0),
        (tag("2.0 - 4.0"), 1.0),
        ("<think>the colours swap near 3 s</think><answer>3-5</answer>", 1 / 3),
        (tag("2-3"), 0.5),
        (tag("1-5"), 0.5),  # inter 2, union 4
        (tag("5-6"), 0.0),  # disjoint: parses, format 1, iou 0
    ],
)
def test_grounding_reward_scores_iou(completion, score):
    reward = grounding_reward(completion, (2, 4))
    assert reward.score == pytest.approx(score)
    assert reward.parts == {"format": 1.0, "iou": pytest.approx(score)}


@pytest.mark.parametrize(
    "completion",
    [
        tag("4-3"),
        tag("3.1 to 4.0"),
        tag(""),
        "",
        "The change starts at 2 seconds and ends at 4 seconds.",
        "2-4",  # no answer tag in answer_tag mode
        "<answer>2-4",  # unterminated
        tag("2-4 seconds"),
        GARBAGE,
        None,
    ],
)
def test_grounding_reward_malformed_scores_zero(completion):
    assert grounding_reward(completion, (2, 4)) == G_ZERO


def test_grounding_reward_format_is_logged_not_added():
    # Trailing prose breaks format_ok but the last answer block still parses: score = IoU, format 0.
    reward = grounding_reward(tag("2-4") + " hope that helps", (2, 4))
    assert reward == Reward(1.0, {"format": 0.0, "iou": 1.0})


def test_grounding_reward_modes():
    assert grounding_reward("The segment is \\boxed{2-3}.", (2, 4), mode="boxed").score == pytest.approx(0.5)
    assert grounding_reward("\\boxed{4-3}", (2, 4), mode="boxed") == G_ZERO
    assert grounding_reward("  2 - 4\n", (2, 4), mode="raw") == Reward(1.0, {"format": 1.0, "iou": 1.0})
    # raw: the whole reply must be the interval (VideoSSR's strict default)
    assert grounding_reward("Answer: 2-4", (2, 4), mode="raw") == G_ZERO
    assert grounding_reward("from 3.1 to 4.0", (2, 4), mode="raw") == G_ZERO
    assert grounding_reward("", (2, 4), mode="raw") == G_ZERO


def test_grounding_reward_bad_config():
    with pytest.raises(ConfigError):
        grounding_reward(tag("2-4"), (2, 4), mode="json")
    with pytest.raises(ValueError):
        grounding_reward(tag("2-4"), (4, 2))


# --------------------------------------------------------------------------------------------------
# Counting


@pytest.mark.parametrize(
    "text, expected",
    [
        ("3,1,4", [3, 1, 4]),
        (" 3 , 1 , 4 ", [3, 1, 4]),
        ("circles 3, squares 1, triangles 4", [3, 1, 4]),  # lenient about surrounding text
        ("0,0,9", [0, 0, 9]),
        ("3,1,4,1", None),  # too many counts
        ("3,1", None),  # too few
        ("3,-1,4", None),  # negative
        ("1.5,2,3", None),  # decimal splits into two integers -> 4 integers
        ("three, one, four", None),
        ("", None),
        ("9" * 5000 + ",1,1", None),  # too many digits for int()
        (None, None),
    ],
)
def test_parse_counts(text, expected):
    assert parse_counts(text, 3) == expected


def test_parse_counts_rejects_bad_k():
    with pytest.raises(ValueError):
        parse_counts("1", 0)


@pytest.mark.parametrize(
    "payload, score, exact",
    [
        ("3,1,4", 1.0, 1.0),
        ("3,2,4", 2 / 3, 0.0),  # squares 2 vs 1: 1 - 1/1 = 0 -> (1 + 0 + 1)/3
        ("2,1,4", 8 / 9, 0.0),  # circles 2 vs 3: 1 - 1/3 = 2/3 -> (2/3 + 1 + 1)/3
        ("4,1,5", (2 / 3 + 1 + 3 / 4) / 3, 0.0),  # off by one: 2/3, 1, 1 - 1/4 = 3/4
        ("6,3,9", 0.0, 0.0),  # p >= 2g everywhere: 0, 0, max(0, 1 - 5/4) = 0
        ("0,0,0", 0.0, 0.0),  # |p - g| = g: 1 - g/(g + 1e-9) ~ 0
    ],
)
def test_counting_reward_scores(payload, score, exact):
    reward = counting_reward(tag(payload), [3, 1, 4])
    assert reward.score == pytest.approx(score, abs=1e-8)
    assert reward.parts == {"format": 1.0, "accuracy": pytest.approx(score, abs=1e-8), "exact": exact}


@pytest.mark.parametrize(
    "completion",
    [
        tag("3,1,4,1"),  # too many counts
        tag("3,1"),
        tag("3,-1,4"),  # negative
        tag(""),
        tag("I count three circles, one square and four triangles"),
        "3,1,4",  # no answer tag
        GARBAGE,
        tag("9" * 5000 + ",1,1"),
        None,
    ],
)
def test_counting_reward_malformed_scores_zero(completion):
    assert counting_reward(completion, [3, 1, 4]) == C_ZERO


def test_counting_reward_huge_count_does_not_overflow():
    # 400 digits converts to int but not to float: the |p - g| >= g guard scores it 0 without dividing.
    reward = counting_reward(tag("9" * 400 + ",1,4"), [3, 1, 4])
    assert reward.score == pytest.approx(2 / 3)


def test_counting_reward_zero_ground_truth_is_exact_match():
    assert counting_reward(tag("0,1,4"), [0, 1, 4]).score == 1.0
    assert counting_reward(tag("1,1,4"), [0, 1, 4]).score == pytest.approx(2 / 3)  # 1 vs 0 scores 0


def test_counting_reward_modes_and_config():
    assert counting_reward("There are \\boxed{3,1,4} shapes.", [3, 1, 4], mode="boxed").score == 1.0
    assert counting_reward("3, 1, 4", [3, 1, 4], mode="raw").score == 1.0
    # raw mode is lenient about prose too, but every integer counts
    assert counting_reward("3 circles, 1 square, 4 triangles", [3, 1, 4], mode="raw").score == 1.0
    assert counting_reward("In 48 frames: 3, 1, 4", [3, 1, 4], mode="raw") == C_ZERO
    with pytest.raises(ConfigError):
        counting_reward("3,1,4", [3, 1, 4], mode="json")
    with pytest.raises(ValueError):
        counting_reward(tag("3,1,4"), [3, -1, 4])
    with pytest.raises(ValueError):
        counting_reward(tag("3,1,4"), [])


def test_rewards_fast_on_long_inputs():
    long_tagged = "<think>" + "x" * 10_000 + "</think>" + tag("2-4")
    start = time.perf_counter()
    assert grounding_reward(long_tagged, (2, 4)).score == 1.0
    assert counting_reward(GARBAGE, [3, 1, 4], mode="raw") == C_ZERO
    assert counting_reward("<answer>" * 5000, [3, 1, 4]) == C_ZERO
    assert time.perf_counter() - start < 0.5
