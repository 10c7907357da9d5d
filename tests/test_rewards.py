"""Answer extraction, the format gate and the exact-match reward, including hostile model output."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmrl.contracts import Reward
from mmrl.errors import ConfigError, MMRLError
from rewards import ANSWER_MODES, exact_match, extract_answer, format_ok, normalize_answer

# --------------------------------------------------------------------------------------------------
# extract_answer


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<answer>red</answer>", "red"),
        ("<think>looks warm</think><answer>red</answer>", "red"),
        ("<answer>red</answer> then <answer>blue</answer>", "blue"),  # the last pair wins
        ("<answer>red</answer><answer>blue", "red"),  # the last *complete* pair
        ("<answer>red", None),  # unterminated
        ("red</answer>", None),
        ("<answer>a<answer>b</answer>", "b"),  # nested/stray opening tag
        ("<answer>a<answer>b</answer>c</answer>", "b"),
        ("<answer>  Red \n</answer>", "Red"),  # stripped, case kept (the reward normalises)
        ("<answer></answer>", ""),  # found but empty
        ("", None),
        ("The colour is red.", None),  # prose without tags
        ("<ANSWER>red</ANSWER>", None),  # tags are case-sensitive, as the prompt spells them
        ("<answer>rouge ✓ 红</answer>", "rouge ✓ 红"),
    ],
)
def test_extract_answer_tag(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected
    assert extract_answer(text, "answer_tag") == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\boxed{3}", "3"),
        ("so \\boxed{a{b}c} it is", "a{b}c"),  # balanced inner braces are kept
        ("\\boxed{1} and \\boxed{ 2 }", "2"),  # the last one
        ("\\boxed{1} and \\boxed{2", "1"),  # an unbalanced last one is skipped
        ("\\boxed{a \\boxed{b}}", "b"),  # nested: the last opened
        ("\\boxed{", None),
        ("}}} \\boxed{x}", "x"),  # stray closing braces are ignored
        ("no box here {x}", None),
        ("", None),
    ],
)
def test_extract_boxed(text: str, expected: str | None) -> None:
    assert extract_answer(text, "boxed") == expected


def test_extract_raw() -> None:
    assert extract_answer("  Red \n", "raw") == "Red"
    assert extract_answer("   \n\t", "raw") is None
    assert extract_answer("<answer>red</answer>", "raw") == "<answer>red</answer>"


@pytest.mark.parametrize("garbage", [None, 42, b"<answer>red</answer>", ["<answer>red</answer>"], object()])
def test_non_string_output_is_no_answer(garbage: object) -> None:
    for mode in ANSWER_MODES:
        assert extract_answer(garbage, mode) is None  # type: ignore[arg-type]
        assert format_ok(garbage, mode) is False  # type: ignore[arg-type]
        assert exact_match(garbage, "red", mode=mode) == Reward(0.0, {"format": 0.0, "accuracy": 0.0})  # type: ignore[arg-type]


def test_unknown_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="answer_tag, boxed, raw"):
        extract_answer("x", "xml")  # type: ignore[arg-type]
    assert issubclass(ConfigError, MMRLError)


# --------------------------------------------------------------------------------------------------
# format_ok


@pytest.mark.parametrize(
    "text, ok",
    [
        ("<answer>red</answer>", True),
        ("  <answer>red</answer>\n", True),
        ("<think>big yellow area</think>\n<answer>yellow</answer>", True),
        ("<think></think><answer>red</answer>", True),
        ("<answer>red</answer> because it is big", False),  # trailing prose
        ("I think <answer>red</answer>", False),  # leading prose
        ("<answer>red</answer><answer>blue</answer>", False),  # two blocks
        ("<answer>a<answer>b</answer>", False),
        ("<answer>   </answer>", False),  # blank answer
        ("<answer>red", False),
        ("<think>hmm<answer>red</answer>", False),  # unclosed think
        ("<think>a</think><think>b</think><answer>red</answer>", False),  # one think block only
        ("<answer>red</answer><think>late</think>", False),
        ("<think><answer>blue</answer></think><answer>red</answer>", False),  # answer hidden in think
        ("", False),
    ],
)
def test_format_gate_answer_tag(text: str, ok: bool) -> None:
    assert format_ok(text) is ok
    assert format_ok(text, "answer_tag") is ok


def test_format_gate_boxed_and_raw() -> None:
    assert format_ok("The answer is \\boxed{3}.", "boxed")
    assert format_ok("<think>count</think> \\boxed{3}", "boxed")
    assert not format_ok("\\boxed{ }", "boxed")
    assert not format_ok("\\boxed{3", "boxed")
    assert not format_ok("\\boxed{3} <think>x</think>", "boxed")
    assert format_ok("red", "raw")
    assert not format_ok(" \n ", "raw")


# --------------------------------------------------------------------------------------------------
# exact_match and Reward


def test_exact_match_scores_and_parts() -> None:
    right = exact_match("<answer>Red</answer>", "red")
    assert right == Reward(1.0, {"format": 1.0, "accuracy": 1.0})
    wrong = exact_match("<answer>blue</answer>", "red")
    assert wrong.parts == {"format": 1.0, "accuracy": 0.0} and wrong.score == pytest.approx(0.1)
    outside = exact_match("it is <answer>red</answer>!", "red")  # right answer, format gate failed
    assert outside.parts == {"format": 0.0, "accuracy": 1.0} and outside.score == pytest.approx(0.9)
    assert exact_match("red", "red").score == 0.0  # no tags: no answer in answer_tag mode
    assert exact_match("red", "red", mode="raw").score == 1.0
    assert exact_match("\\boxed{ 7 }", 7, mode="boxed").score == 1.0  # answers compare as strings
    assert exact_match("<answer>red</answer>", "red", accuracy_weight=0.5).score == 1.0
    assert exact_match("<answer>blue</answer>", "red", accuracy_weight=0.5).score == 0.5


def test_normalize_answer() -> None:
    assert normalize_answer("  Dark \t RED\n") == "dark red"
    assert normalize_answer("") == ""


def test_reward_is_frozen_and_zero_has_parts() -> None:
    reward = Reward.zero("format", "accuracy")
    assert reward.score == 0.0 and reward.parts == {"format": 0.0, "accuracy": 0.0}
    with pytest.raises(dataclasses.FrozenInstanceError):
        reward.score = 1.0  # type: ignore[misc]


# --------------------------------------------------------------------------------------------------
# Hostile output: long, repetitive, unbalanced. Must finish (linear scans) and score 0, never raise.

PATHOLOGICAL = [
    "<answer>" * 5000,
    "</answer>" * 5000,
    "<answer" * 5000 + ">",
    "<answer><" * 5000,
    "<think>" * 5000 + "<answer>",
    "\\boxed{" * 5000,
    "{" * 10000 + "\\boxed{",
    "}" * 10000,
    "<" * 10000,
    "a" * 10000,
    "\x00\ufffd" * 5000,
    "红色" * 5000,
    " " * 10000,
    "<answer>" + "x" * 10000,  # unterminated after a long body
]


@pytest.mark.parametrize("text", PATHOLOGICAL, ids=range(len(PATHOLOGICAL)))
def test_pathological_output_scores_zero(text: str) -> None:
    for mode in ("answer_tag", "boxed"):
        assert not extract_answer(text, mode)
        assert format_ok(text, mode) is False
        reward = exact_match(text, "red", mode=mode)
        assert reward.score == 0.0 and reward.parts == {"format": 0.0, "accuracy": 0.0}


def test_long_output_with_a_real_answer_at_the_end() -> None:
    noise = "".join("<answer>x</answer" if i % 3 else "{\\boxed{" for i in range(700))  # ~10k characters
    assert extract_answer(noise + "<answer>green</answer>") == "green"
    assert extract_answer(noise + "\\boxed{green}", "boxed") == "green"
    assert exact_match(noise + "<answer>green</answer>", "green").parts == {"format": 0.0, "accuracy": 1.0}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(["<answer>", "</answer>", "<think>", "</think>", "\\boxed{", "{", "}", "red", " ", "é"]),
        max_size=40,
    ).map("".join)
    | st.text(max_size=300)
)
def test_never_raises_on_arbitrary_text(text: str) -> None:
    for mode in ANSWER_MODES:
        answer = extract_answer(text, mode)
        assert answer is None or isinstance(answer, str)
        reward = exact_match(text, "red", mode=mode)
        assert 0.0 <= reward.score <= 1.0
        assert set(reward.parts) == {"format", "accuracy"}
        if format_ok(text, mode):  # whatever passes the gate has an extractable, non-blank answer
            assert extract_answer(text, mode)
