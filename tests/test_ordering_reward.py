"""The ordering reward (Visual Jigsaw): hand-made cases for every branch, numbers worked out in comments."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from mmrl.contracts import Reward
from mmrl.errors import ConfigError
from rewards.ordering import (
    PARTS,
    OrderingParams,
    answer_text,
    example_labels,
    footrule_distance,
    has_repeated_lines,
    is_valid_permutation,
    ordering_reward,
    parse_permutation,
)

G4 = [2, 4, 1, 3]  # the worked example of docs/visual_jigsaw.md: order (2, 0, 3, 1) -> labels (2, 4, 1, 3)
G9 = [3, 9, 2, 5, 8, 1, 7, 6, 4]
ZERO = Reward(0.0, {p: 0.0 for p in PARTS})
LONG_LINE = "The tile in the corner shows part of the sky"  # 10 words


def tag(payload: str) -> str:
    return f"<answer>{payload}</answer>"


# --------------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize(
    "text, k, expected",
    [
        ("<answer>2, 4, 1, 3</answer>", 4, [2, 4, 1, 3]),
        ("<answer>2,4,1,3</answer>", 4, [2, 4, 1, 3]),
        ("<answer>\n 2 ,  4,1 , 3 \n</answer>", 4, [2, 4, 1, 3]),
        ("<answer>+2, 4, 1, 3</answer>", 4, [2, 4, 1, 3]),
        ("<answer>2, 4, 1, 3, 5</answer>", 4, [2, 4, 1, 3, 5]),  # longer: returned whole (lenient rule)
        ("<answer>-1, 0, 7, 3</answer>", 4, [-1, 0, 7, 3]),  # parses; validity is checked later
        ("<answer>2, 4, 1</answer>", 4, None),  # fewer than K items can never be valid
        ("<answer>[2, 4, 1, 3]</answer>", 4, None),  # bracketed list: the released parser fails too
        ("<answer>(2, 4, 1, 3)</answer>", 4, None),
        ("<answer>2, 4, 1, 3,</answer>", 4, None),  # trailing comma: an empty piece
        ("<answer>2, 4,, 1, 3</answer>", 4, None),
        ("<answer>2 4 1 3</answer>", 4, None),  # no commas: one piece "2 4 1 3"
        ("<answer>2.0, 4, 1, 3</answer>", 4, None),
        ("<answer>two, 4, 1, 3</answer>", 4, None),
        ("<answer>٢, 4, 1, 3</answer>", 4, None),  # non-ASCII digits (int() would accept them)
        ("<answer>1_0, 4, 1, 3</answer>", 4, None),  # int() would read 10
        ("<answer></answer>", 4, None),
        ("<answer>2, 4, 1, 3", 4, None),  # unterminated tag
        ("2, 4, 1, 3", 4, None),  # no tag in answer_tag mode
        ("<answer>" + "9" * 5000 + ", 1, 2, 3</answer>", 4, None),  # too many digits for int()
    ],
)
def test_parse_permutation(text: str, k: int, expected: list[int] | None) -> None:
    assert parse_permutation(text, k) == expected


def test_parse_permutation_modes() -> None:
    assert parse_permutation("so \\boxed{2, 4, 1, 3}.", 4, mode="boxed") == [2, 4, 1, 3]
    assert parse_permutation("<answer>2, 4, 1, 3</answer>", 4, mode="boxed") is None
    assert parse_permutation(" 2, 4, 1, 3 \n", 4, mode="raw") == [2, 4, 1, 3]
    assert parse_permutation(None, 4) is None  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        parse_permutation("<answer>1</answer>", 0)


def test_validity_rules() -> None:
    assert is_valid_permutation([2, 4, 1, 3], 4) and is_valid_permutation([2, 4, 1, 3], 4, lenient=True)
    assert not is_valid_permutation([2, 4, 1, 5], 4)  # 5 is not a label
    assert is_valid_permutation([2, 4, 1, 5], 4, lenient=True)  # 4 distinct integers: released rule
    assert not is_valid_permutation([2, 4, 1, 3, 3], 4)  # 5 items
    assert is_valid_permutation([2, 4, 1, 3, 3], 4, lenient=True)  # still 4 distinct values
    assert not is_valid_permutation([2, 2, 1, 3], 4, lenient=True)


# --------------------------------------------------------------------------------------------------
# Accuracy branches


def test_exact_answer_scores_one() -> None:
    # raw = 0.2 (format) + 1.0 (exact) = 1.2; unit = 1.2 / 1.2 = 1.0
    assert ordering_reward(tag("2, 4, 1, 3"), G4) == Reward(
        1.0, {"format": 0.2, "accuracy": 1.0, "repetition": 0.0, "exact": 1.0}
    )
    assert ordering_reward(tag("2, 4, 1, 3"), G4, scale="raw").score == pytest.approx(1.2)
    assert ordering_reward(tag(" 2,4,1,3 ") + "\n", G4).score == 1.0


def test_well_formed_wrong_answer_scores_format_only() -> None:
    # K = 4 < partial_min_k = 5: no partial credit even with 2 of 4 positions right.
    # raw = 0.2 + 0 = 0.2; unit = 0.2 / 1.2 = 1/6
    r = ordering_reward(tag("2, 4, 3, 1"), G4)
    assert r.score == pytest.approx(1 / 6)
    assert r.parts == {"format": 0.2, "accuracy": 0.0, "repetition": 0.0, "exact": 0.0}
    assert ordering_reward(tag("2, 4, 3, 1"), G4, scale="raw").score == pytest.approx(0.2)


def test_partial_credit_k9() -> None:
    # o and g agree at positions 0, 3, 6 only (3 of 9), and o is a permutation of 1..9.
    o = [3, 1, 9, 5, 2, 8, 7, 4, 6]
    assert sum(a == b for a, b in zip(o, G9)) == 3 and sorted(o) == list(range(1, 10))
    r = ordering_reward(tag(", ".join(map(str, o))), G9)
    # accuracy = γ · 3/9 = 0.2/3 ≈ 0.0667; raw = 0.2 + 0.0667 = 0.2667; unit = 0.2667 / 1.2 ≈ 0.2222
    assert r.parts["accuracy"] == pytest.approx(0.2 * 3 / 9)
    assert r.score == pytest.approx((0.2 + 0.2 * 3 / 9) / 1.2)
    assert ordering_reward(tag(", ".join(map(str, o))), G9, scale="raw").score == pytest.approx(0.2 + 0.2 / 3)
    # γ scales it: γ = 0.5 -> (0.2 + 0.5·3/9)/1.2
    assert ordering_reward(tag(", ".join(map(str, o))), G9, gamma=0.5).score == pytest.approx((0.2 + 0.5 / 3) / 1.2)


def test_partial_credit_threshold() -> None:
    # K = 4 with 2 right: 0 by default (released: K > 4 only); partial_min_k = 2 gives the paper's formula:
    # accuracy = 0.2 · 2/4 = 0.1; unit = (0.2 + 0.1)/1.2 = 0.25
    assert ordering_reward(tag("2, 4, 3, 1"), G4).parts["accuracy"] == 0.0
    assert ordering_reward(tag("2, 4, 3, 1"), G4, partial_min_k=2).score == pytest.approx(0.25)
    # K = 5 is the first K with partial credit by default: 3 of 5 right -> (0.2 + 0.2·3/5)/1.2 = 0.2667
    assert ordering_reward(tag("1, 2, 3, 5, 4"), [1, 2, 3, 4, 5]).score == pytest.approx((0.2 + 0.12) / 1.2)


def test_zero_positions_right_is_format_only() -> None:
    # a derangement of the truth: valid permutation, 0 right -> accuracy 0, unit 1/6
    assert ordering_reward(tag("9, 2, 5, 8, 1, 7, 6, 4, 3"), G9).score == pytest.approx(1 / 6)


def test_strict_versus_lenient_validity() -> None:
    g = [1, 2, 3, 5, 4]
    # o = 1, 2, 3, 4, 6: five distinct integers but 6 is no label.
    # strict: invalid -> accuracy 0, unit 1/6.  lenient: 3 right (positions 0-2) -> (0.2 + 0.2·3/5)/1.2
    assert ordering_reward(tag("1, 2, 3, 4, 6"), g).score == pytest.approx(1 / 6)
    assert ordering_reward(tag("1, 2, 3, 4, 6"), g, lenient_validity=True).score == pytest.approx(0.32 / 1.2)
    # A longer list with 5 distinct values, whose first 5 equal g: not exact (the list differs),
    # strict: invalid (6 items) -> 1/6;  lenient: 5 of 5 right -> (0.2 + 0.2)/1.2 = 1/3 (the released behaviour)
    assert ordering_reward(tag("1, 2, 3, 5, 4, 4"), g).score == pytest.approx(1 / 6)
    lenient = ordering_reward(tag("1, 2, 3, 5, 4, 4"), g, lenient_validity=True)
    assert lenient.score == pytest.approx(1 / 3) and lenient.parts["exact"] == 0.0
    # Duplicates inside the compared prefix: 1, 1, 2, 3, 4, 5 has 5 distinct values (lenient ok);
    # first five 1, 1, 2, 3, 4 vs g 1, 2, 3, 5, 4 agree at positions 0 and 4 -> (0.2 + 0.2·2/5)/1.2
    assert ordering_reward(tag("1, 1, 2, 3, 4, 5"), g, lenient_validity=True).score == pytest.approx(0.28 / 1.2)
    # A repeated label is invalid under both rules when only K items are given: 1, 1, 2, 3, 4 has 4 distinct.
    assert ordering_reward(tag("1, 1, 2, 3, 4"), g, lenient_validity=True).score == pytest.approx(1 / 6)


def test_bracketed_list_gets_no_accuracy() -> None:
    # The format gate passes (one answer block), but the payload does not parse: accuracy 0, unit 1/6.
    r = ordering_reward(tag("[2, 4, 1, 3]"), G4)
    assert r.score == pytest.approx(1 / 6) and r.parts["accuracy"] == 0.0 and r.parts["exact"] == 0.0


# --------------------------------------------------------------------------------------------------
# Footrule


def test_footrule_distance_and_its_maximum() -> None:
    # o = 2, 1, 3, 4 vs g = 1, 2, 3, 4: label 1 moved by 1, label 2 by 1 -> D = 2
    assert footrule_distance([2, 1, 3, 4], [1, 2, 3, 4]) == 2
    # reversal of 4: |3-0| + |2-1| + |1-2| + |0-3| = 8 = ⌊16/2⌋
    assert footrule_distance([4, 3, 2, 1], [1, 2, 3, 4]) == 8
    for k in range(2, 7):
        truth = list(range(1, k + 1))
        worst = max(footrule_distance(list(p), truth) for p in itertools.permutations(truth))
        assert worst == k * k // 2


def test_footrule_accuracy() -> None:
    g = [1, 2, 3, 4]
    # D = 2 -> accuracy = 1 − 2/8 = 0.75; unit = (0.2 + 0.75)/1.2 ≈ 0.7917 (K = 4: footrule ignores partial_min_k)
    r = ordering_reward(tag("2, 1, 3, 4"), g, footrule=True)
    assert r.parts["accuracy"] == pytest.approx(0.75) and r.score == pytest.approx(0.95 / 1.2)
    # reversal: D = 8 = max -> accuracy 0 -> unit 1/6
    assert ordering_reward(tag("4, 3, 2, 1"), g, footrule=True).score == pytest.approx(1 / 6)
    # K = 3 reversal: D = 2 + 0 + 2 = 4 = ⌊9/2⌋ -> 0;  one swap 2, 1, 3: D = 2 -> 1 − 2/4 = 0.5
    assert ordering_reward(tag("3, 2, 1"), [1, 2, 3], footrule=True).parts["accuracy"] == 0.0
    assert ordering_reward(tag("2, 1, 3"), [1, 2, 3], footrule=True).parts["accuracy"] == pytest.approx(0.5)
    # exact stays 1.0; an invalid list stays 0 (strict) -> 1/6
    assert ordering_reward(tag("1, 2, 3, 4"), g, footrule=True).score == 1.0
    assert ordering_reward(tag("1, 2, 3, 5"), g, footrule=True).score == pytest.approx(1 / 6)
    # lenient: the first K items must be a permutation of 1..K for the footrule to apply
    assert ordering_reward(tag("2, 1, 3, 4, 4"), g, footrule=True, lenient_validity=True).parts[
        "accuracy"
    ] == pytest.approx(0.75)
    assert ordering_reward(tag("2, 1, 3, 5"), g, footrule=True, lenient_validity=True).parts["accuracy"] == 0.0


# --------------------------------------------------------------------------------------------------
# Repetition, format gate, think, modes


def test_repetition_detector() -> None:
    four = "\n".join([LONG_LINE] * 4)
    assert has_repeated_lines(four)
    assert not has_repeated_lines("\n".join([LONG_LINE] * 3))  # a run of 3 is allowed
    assert has_repeated_lines("\n\n".join([LONG_LINE, LONG_LINE.upper(), LONG_LINE, LONG_LINE.lower()]))
    # A short line between copies does not break the run (the released reward's loophole, closed).
    assert has_repeated_lines("\n".join([LONG_LINE, LONG_LINE, "short line", LONG_LINE, LONG_LINE]))
    assert has_repeated_lines("\n".join([LONG_LINE, "ok", LONG_LINE, "ok", LONG_LINE, "ok", LONG_LINE]))
    assert not has_repeated_lines("\n".join([LONG_LINE, LONG_LINE, "short line", LONG_LINE]))  # still 3
    assert not has_repeated_lines("\n".join([LONG_LINE, LONG_LINE, "another long line of seven words here", LONG_LINE]))
    assert not has_repeated_lines("\n".join(["one two three four five six"] * 10))  # 6 words: too short
    assert has_repeated_lines("\n".join(["one two three four five six seven"] * 4))  # 7 words


def test_repetition_penalty() -> None:
    think = "<think>\n" + "\n".join([LONG_LINE] * 4) + "\n</think>\n"
    # exact answer with the penalty: raw = 0.2 + 1.0 − 0.5 = 0.7; unit = 0.7/1.2 ≈ 0.5833
    r = ordering_reward(think + tag("2, 4, 1, 3"), G4)
    assert r.score == pytest.approx(0.7 / 1.2) and r.parts["repetition"] == -0.5
    # wrong answer with the penalty: raw = 0.2 − 0.5 = −0.3; unit clips to 0
    assert ordering_reward(think + tag("1, 2, 3, 4"), G4).score == 0.0
    assert ordering_reward(think + tag("1, 2, 3, 4"), G4, scale="raw").score == pytest.approx(-0.3)
    # penalty 0 disables it; a failed gate gives 0 without a penalty part
    assert ordering_reward(think + tag("2, 4, 1, 3"), G4, repetition_penalty=0.0).score == 1.0
    assert ordering_reward(think + "2, 4, 1, 3", G4, scale="raw") == ZERO
    # a run of 3 identical lines costs nothing
    ok = "<think>\n" + "\n".join([LONG_LINE] * 3) + "\n</think>\n"
    assert ordering_reward(ok + tag("2, 4, 1, 3"), G4).score == 1.0


def test_format_gate() -> None:
    for bad in [
        "2, 4, 1, 3",  # no tag
        "The answer is <answer>2, 4, 1, 3</answer>",  # prose before the block
        tag("2, 4, 1, 3") + " done",  # prose after the block
        tag("2, 4, 1, 3") + tag("2, 4, 1, 3"),  # two blocks
        tag("   "),  # blank answer
        "<answer>2, 4, 1, 3",  # unterminated
        "<think>unterminated " + tag("2, 4, 1, 3"),
    ]:
        assert ordering_reward(bad, G4) == ZERO, bad


def test_think_requirement() -> None:
    plain = tag("2, 4, 1, 3")
    thought = "<think>\nlook at the edges\n</think>\n" + plain
    assert ordering_reward(plain, G4).score == 1.0  # think optional by default
    assert ordering_reward(thought, G4).score == 1.0
    assert ordering_reward(plain, G4, require_think=True) == ZERO
    assert ordering_reward(thought, G4, require_think=True).score == 1.0
    assert ordering_reward("<think></think>" + plain, G4, require_think=True) == ZERO  # an empty think is no reasoning
    assert ordering_reward("<think> \n </think>\n" + plain, G4, require_think=True) == ZERO
    assert ordering_reward("<think>4 before 1</think>" + plain, G4, require_think=True).score == 1.0
    assert ordering_reward("<think>a</think><think>b</think>" + plain, G4, require_think=True) == ZERO
    with pytest.raises(ConfigError):
        ordering_reward("2, 4, 1, 3", G4, mode="raw", require_think=True)


def test_boxed_and_raw_modes() -> None:
    assert ordering_reward("<think>edges</think> so \\boxed{2, 4, 1, 3}.", G4, mode="boxed").score == 1.0
    assert ordering_reward("\\boxed{2, 4, 1, 3}", G4, mode="boxed", require_think=True) == ZERO
    assert ordering_reward(tag("2, 4, 1, 3"), G4, mode="boxed") == ZERO  # wrong wrapper: gate fails
    assert ordering_reward("\\boxed{[2, 4, 1, 3]}", G4, mode="boxed").score == pytest.approx(1 / 6)
    assert ordering_reward("2, 4, 1, 3", G4, mode="raw").score == 1.0
    assert ordering_reward("2, 4, 3, 1", G4, mode="raw").score == pytest.approx(1 / 6)
    with pytest.raises(ConfigError):
        ordering_reward(tag("1, 2"), [2, 1], mode="xml")  # type: ignore[arg-type]


def test_garbage_never_raises_and_scores_zero() -> None:
    rng = np.random.default_rng(0)
    noise = "".join(chr(int(c)) for c in rng.integers(32, 0x2FFF, 10_000))
    cases = [
        "",
        "blah",
        None,
        12,
        "<answer>" * 5000,
        "</answer>" * 5000,
        "\\boxed{" * 3000,
        "\ufffd" * 10_000,
        noise,
        "<think>" * 2000 + "<answer>2, 4, 1, 3</answer>",
        "<answer>2, 4, 1, 3</answer" + "x" * 10_000,
    ]
    t0 = time.perf_counter()
    for text in cases:
        for mode in ("answer_tag", "boxed"):
            assert ordering_reward(text, G4, mode=mode).score == 0.0  # type: ignore[arg-type]
    # well-formed but absurd payloads: the gate passes, accuracy 0 (unit 1/6)
    huge = tag(", ".join(["1"] * 5000))
    assert ordering_reward(huge, G4).score == pytest.approx(1 / 6)
    assert ordering_reward(tag("9" * 10_000), G4).score == pytest.approx(1 / 6)
    assert time.perf_counter() - t0 < 5  # linear-time parsing: no pathological backtracking


# --------------------------------------------------------------------------------------------------
# Helpers shared with the tasks


def test_answer_text_and_examples() -> None:
    assert answer_text([2, 4, 1, 3]) == "<answer>2, 4, 1, 3</answer>"
    assert answer_text([2, 4, 1, 3], "boxed") == "\\boxed{2, 4, 1, 3}"
    assert answer_text([2, 4, 1, 3], "raw") == "2, 4, 1, 3"
    assert example_labels(4) == [2, 4, 1, 3] and example_labels(2) == [2, 1]
    for k in range(2, 13):
        ex = example_labels(k)
        assert sorted(ex) == list(range(1, k + 1)) and ex != sorted(ex)
        for mode in ("answer_tag", "boxed", "raw"):
            assert ordering_reward(answer_text(ex, mode), ex, mode=mode).score == 1.0  # type: ignore[arg-type]


def test_ordering_params_checks() -> None:
    assert OrderingParams().think and OrderingParams().answer_mode == "answer_tag"
    with pytest.raises(ConfigError, match="raw"):
        OrderingParams(answer_mode="raw", think=True)
    with pytest.raises(ConfigError, match="gamma"):
        OrderingParams(gamma=2.0)
    with pytest.raises(ConfigError, match="partial_min_k"):
        OrderingParams(partial_min_k=1)
    with pytest.raises(ConfigError):
        OrderingParams(answer_mode="xml")  # type: ignore[arg-type]
