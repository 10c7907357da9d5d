"""Every parser and reward in `rewards/`, `games/` and the built-in tasks survives hostile model output.

The contract (DESIGN "Reward"; issue 10): whatever a model writes, a parser or reward never raises,
returns a value of its documented type, a reward's score is a finite float in its documented range
([0, 1]; game rewards are the documented signed exception) with every named part present and finite,
and one call on 100k characters takes under 50 ms (a bound against quadratic or exponential scans,
not a benchmark). Inputs: random text, structured fragments (tags, braces, numbers in every spelling)
and fixed pathological texts of 100k characters.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skimage
from hypothesis import given, settings
from hypothesis import strategies as st

from games.scoring import INVALID, Vote, clue_rewards, decision_rewards, has_format, parse_clue, parse_vote
from mmrl import media, scenes
from mmrl.contracts import Reward
from mmrl.corpus import camera_motion_frames
from mmrl.registry import get_task, task_class, task_names
from mmrl.sample import Sample
from mmrl.video import write_video
from pretext_tasks.gui_pairs import PairWriter
from rewards import boxes, gui, match, ordering, statements, temporal
from rewards.extract import BOXED_OPEN, MAX_INT_DIGITS, boxed_span, extract_answer, format_ok, parse_int

N = 100_000
"""Length of the long pathological inputs (the issue's 100k characters)."""
TIME_LIMIT_S = 0.050
"""The issue's bound for one call on 100k characters."""
CHELSEA = Path(skimage.__file__).parent / "data" / "chelsea.png"
LABELS = [2, 4, 1, 5, 3]  # K = 5: the partial-credit branch of the ordering reward is reachable
COUNTS = [3, 1, 4]
SEATS = 4
GUI_CLICK = {"action_type": "click", "x": 50.0, "y": 40.0, "bbox": [40.0, 30.0, 80.0, 50.0]}
GUI_META = {"image_size": [200, 100], "model_size": [224, 112], "coords": "qwen2.5-vl"}


# --------------------------------------------------------------------------------------------------
# What each function must return


def reward_check(parts: tuple[str, ...], lo: float = 0.0, hi: float = 1.0) -> Callable[[str, Any], None]:
    """A Reward with a finite float score in [lo, hi] and exactly the named parts, each finite."""

    def check(text: str, r: Any) -> None:
        assert isinstance(r, Reward)
        assert isinstance(r.score, float) and math.isfinite(r.score) and lo <= r.score <= hi, r
        assert set(r.parts) == set(parts), r.parts
        assert all(isinstance(v, float) and math.isfinite(v) for v in r.parts.values()), r.parts

    return check


def optional_str(text: str, r: Any) -> None:
    assert r is None or isinstance(r, str)


def boolean(text: str, r: Any) -> None:
    assert isinstance(r, bool)


def string(text: str, r: Any) -> None:
    assert isinstance(r, str)


def box_span(text: str, r: Any) -> None:
    if r is not None:
        start, end = r
        assert text[start - len(BOXED_OPEN) : start] == BOXED_OPEN and text[end] == "}" and start <= end


def small_int(text: str, r: Any) -> None:
    assert r is None or (type(r) is int and len(str(abs(r))) <= MAX_INT_DIGITS)


def int_list(k: int, *, exact: bool, nonnegative: bool = False) -> Callable[[str, Any], None]:
    def check(text: str, r: Any) -> None:
        if r is not None:
            assert all(type(v) is int for v in r) and (len(r) == k if exact else len(r) >= k)
            assert not nonnegative or min(r) >= 0

    return check


def interval(text: str, r: Any) -> None:
    if r is not None:
        start, end = r
        assert all(isinstance(v, float) and math.isfinite(v) for v in r) and 0.0 <= start <= end


def clue(text: str, r: Any) -> None:
    said, thinking = r
    assert (said is None or (isinstance(said, str) and said == said.strip() and said)) and isinstance(thinking, str)


def vote(text: str, r: Any) -> None:
    assert isinstance(r, Vote) and (r.player is None or 1 <= r.player <= SEATS)


def signed_rewards(allowed: tuple[float, ...]) -> Callable[[str, Any], None]:
    """Game rewards: finite and one of the documented values (paper Eq. 4 or the shaped variant)."""

    def check(text: str, r: Any) -> None:
        assert r.shape == (1,) and np.all(np.isfinite(r))
        assert any(math.isclose(float(r[0]), a, abs_tol=1e-9) for a in allowed), r

    return check


def zero_sum(text: str, r: Any) -> None:
    assert r.shape == (SEATS,) and np.all(np.isfinite(r)) and abs(float(r.sum())) <= 1e-12


@dataclass(frozen=True)
class Target:
    """One function under test, called on model output only (every other argument fixed)."""

    call: Callable[[str], Any]
    check: Callable[[str, Any], None]


def _decision(text: str, mode: str) -> np.ndarray:
    return decision_rewards([parse_vote(text, SEATS)], 2, mode, [text])  # type: ignore[arg-type]


MODES = ("answer_tag", "boxed", "raw")
ORDERING = reward_check(ordering.PARTS)
PURE: dict[str, Target] = {
    # rewards.extract
    "boxed_span[first]": Target(lambda t: boxed_span(t, "first"), box_span),
    "boxed_span[last]": Target(lambda t: boxed_span(t, "last"), box_span),
    "parse_int": Target(parse_int, small_int),
    # rewards.match
    "normalize_answer": Target(match.normalize_answer, string),
    # rewards.ordering
    "has_repeated_lines": Target(ordering.has_repeated_lines, boolean),
    "ordering_reward": Target(lambda t: ordering.ordering_reward(t, LABELS), ORDERING),
    "ordering_reward[boxed,think]": Target(
        lambda t: ordering.ordering_reward(t, LABELS, mode="boxed", require_think=True), ORDERING
    ),
    "ordering_reward[raw,footrule]": Target(
        lambda t: ordering.ordering_reward(t, LABELS, mode="raw", footrule=True, format_score=0.0), ORDERING
    ),
    "ordering_reward[lenient]": Target(
        lambda t: ordering.ordering_reward(t, LABELS, lenient_validity=True, partial_min_k=2), ORDERING
    ),
    "ordering_reward[raw scale]": Target(  # the documented raw range [-0.5, 1.2]
        lambda t: ordering.ordering_reward(t, LABELS, scale="raw"), reward_check(ordering.PARTS, -0.5, 1.2)
    ),
    # rewards.temporal
    "parse_interval": Target(temporal.parse_interval, interval),
    "parse_counts": Target(lambda t: temporal.parse_counts(t, 3), int_list(3, exact=True, nonnegative=True)),
    # games.scoring (signed rewards: the documented exception to [0, 1])
    "parse_clue": Target(parse_clue, clue),
    "parse_vote": Target(lambda t: parse_vote(t, SEATS), vote),
    "has_format": Target(has_format, boolean),
    "decision_rewards[paper]": Target(lambda t: _decision(t, "paper"), signed_rewards((1.0, -0.5, -1.0))),
    "decision_rewards[shaped]": Target(
        lambda t: _decision(t, "shaped"), signed_rewards((2.49, 1.89, -0.3, -0.9, -1.5))
    ),
    "clue_rewards": Target(lambda t: clue_rewards([parse_vote(t, SEATS)] * 3, 2, SEATS), zero_sum),
    # rewards.gui
    "parse_action": Target(gui.parse_action, lambda text, r: r is None or isinstance(r, dict)),
}
for _m in MODES:  # every answer mode of every mode-taking function
    PURE[f"extract_answer[{_m}]"] = Target(lambda t, m=_m: extract_answer(t, m), optional_str)
    PURE[f"format_ok[{_m}]"] = Target(lambda t, m=_m: format_ok(t, m), boolean)
    PURE[f"exact_match[{_m}]"] = Target(lambda t, m=_m: match.exact_match(t, "red", mode=m), reward_check(match.PARTS))
    PURE[f"parse_permutation[{_m}]"] = Target(
        lambda t, m=_m: ordering.parse_permutation(t, 5, mode=m), int_list(5, exact=False)
    )
    PURE[f"grounding_reward[{_m}]"] = Target(
        lambda t, m=_m: temporal.grounding_reward(t, (1.5, 4.0), mode=m), reward_check(temporal.GROUNDING_PARTS)
    )
    PURE[f"gui_reward[{_m}]"] = Target(
        lambda t, m=_m: gui.gui_reward(t, GUI_CLICK, GUI_META, mode=m, allow_untagged=True, text_match="f1"),
        reward_check(gui.PARTS),
    )
    PURE[f"counting_reward[{_m}]"] = Target(
        lambda t, m=_m: temporal.counting_reward(t, COUNTS, mode=m), reward_check(temporal.COUNTING_PARTS)
    )

# Every built-in task, in its default answer format and in another one (its reward reads the Sample's).
TASK_VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "dominant_color": ("dominant_color", {}),
    "dominant_color[boxed]": ("dominant_color", {"answer_mode": "boxed"}),
    "image_jigsaw": ("image_jigsaw", {}),
    "image_jigsaw[boxed]": ("image_jigsaw", {"answer_mode": "boxed"}),
    "depth_jigsaw": ("depth_jigsaw", {}),
    "video_jigsaw": ("video_jigsaw", {}),
    "temporal_jigsaw": ("temporal_jigsaw", {}),
    "temporal_jigsaw[boxed]": ("temporal_jigsaw", {"answer_mode": "boxed"}),
    "anomaly_grounding": ("anomaly_grounding", {}),
    "anomaly_grounding[answer_tag]": ("anomaly_grounding", {"answer_mode": "answer_tag"}),
    "object_counting": ("object_counting", {}),
    "object_counting[boxed]": ("object_counting", {"answer_mode": "boxed"}),
    "referring_grounding": ("referring_grounding", {}),
    "referring_grounding[continuous,boxed]": ("referring_grounding", {"continuous_iou": True, "answer_mode": "boxed"}),
    "object_detection": ("object_detection", {}),
    "object_detection[qwen3-vl,raw]": ("object_detection", {"coords": "qwen3-vl", "answer_mode": "raw"}),
    "gui_inverse_dynamics": ("gui_inverse_dynamics", {}),
    "caption_refine": ("caption_refine", {"width": 96, "height": 72}),
    "edit_prediction[no think]": ("edit_prediction", {"width": 96, "height": 72, "think": False}),
    "gui_inverse_dynamics[qwen2-vl,raw,untagged,f1]": (
        "gui_inverse_dynamics",
        {"coords": "qwen2-vl", "answer_mode": "raw", "allow_untagged": True, "text_match": "f1"},
    ),
    "vqa": ("vqa", {}),
    "vqa[answer_tag]": ("vqa", {"answer_mode": "answer_tag"}),
}
TASK_PARTS = {
    "dominant_color": match.PARTS,
    "image_jigsaw": ordering.PARTS,
    "depth_jigsaw": ordering.PARTS,
    "video_jigsaw": ordering.PARTS,
    "temporal_jigsaw": ordering.PARTS,
    "anomaly_grounding": temporal.GROUNDING_PARTS,
    "object_counting": temporal.COUNTING_PARTS,
    "referring_grounding": boxes.REC_PARTS,
    "object_detection": boxes.OVD_PARTS,
    "gui_inverse_dynamics": gui.PARTS,
    "caption_refine": statements.PARTS,
    "edit_prediction": statements.PARTS,
    "vqa": match.PARTS,
}
NAMES = [*PURE, *(f"task:{v}" for v in TASK_VARIANTS)]


def _gui_pairs(folder: Path) -> Path:
    """A pair folder of one click on the cat photo (the GUI task's source)."""
    cat = media.load_image(CHELSEA)
    action = {"action_type": "click", "x": 150.0, "y": 90.0, "bbox": [120.0, 70.0, 200.0, 110.0]}
    record = {"id": "p0", "source": "test", "traj_id": "t", "step": 0, "k": 1, "action": action}
    with PairWriter(folder) as writer:
        writer.add(record, ("t/0", cat), ("t/1", cat.transpose(0)))
    return folder


def _source(task: str, video: Path, pairs: Path) -> Any:
    if task == "gui_inverse_dynamics":
        return get_task(task).sources(pairs)[0]
    if task in ("dominant_color", "referring_grounding", "object_detection", "caption_refine", "edit_prediction"):
        return 0
    if task == "image_jigsaw":
        return CHELSEA
    if task == "depth_jigsaw":
        return scenes.random_scene(np.random.default_rng(11))
    if task == "vqa":
        from pretext_tasks.vqa import VQARecord

        return VQARecord("r0", str(CHELSEA), "Which animal is this?", "1,000 cats", ("1,000 cats", "a dog"))
    return video


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Target]:
    """The pure targets plus each task's `reward(completion, sample)` on a real Sample from its `make`."""
    frames = camera_motion_frames(media.load_image(CHELSEA), "pan_right", 120, (160, 120), np.random.default_rng(0))
    video = write_video(tmp_path_factory.mktemp("videos") / "cat.mp4", list(frames), 8.0)
    pairs = _gui_pairs(tmp_path_factory.mktemp("gui_pairs"))
    out = dict(PURE)
    for variant, (name, params) in TASK_VARIANTS.items():
        task = get_task(name, **params)
        sample: Sample = task.make(_source(name, video, pairs), np.random.default_rng(0))
        out[f"task:{variant}"] = Target(
            lambda t, task=task, sample=sample: task.reward(t, sample), reward_check(TASK_PARTS[name])
        )
    return out


def test_every_built_in_task_is_covered() -> None:
    """A new task in `pretext_tasks/` must join TASK_VARIANTS (other tests register throwaway ones)."""
    built_in = {n for n in task_names() if task_class(n).__module__.startswith("pretext_tasks.")}
    assert built_in == {name for name, _ in TASK_VARIANTS.values()} == set(TASK_PARTS)


# --------------------------------------------------------------------------------------------------
# Inputs

FRAGMENTS = [
    "<answer>", "</answer>", "<think>", "</think>", "<answer", "answer>", "\\boxed{", "\\boxed", "{", "}",
    "\\text{", "\\textbf{N/A}", "N/A", "na", '"spy": ', "'spy': '", '{"spy": "', "Player ", "P",
    ",", ", ", ",,", "-", " - ", ".", " ", "\t", "\n", "\r\n", "0", "1", "2", "3", "4", "5", "7", "12",
    "-1", "+2", "-0", "007", "3.5", "1e309", "1E-400", "NaN", "nan", "inf", "-inf", "Infinity", "1_0", "0x1F",
    "٣", "١٢٣", "𝟙", "½", "Ⅻ", "²", "\x00", "\ufffd", "\ud800", "\udfff", "\u200b", "红色", "red", "Red",
    "9" * 5000, "0" * 5000 + "3", "the same long line of eight words here\n",
]  # fmt: skip

WELL_FORMED = st.sampled_from(  # "@" is where the payload goes
    ["<answer>@</answer>", "<think>@</think><answer>@</answer>", "\\boxed{@}", "reasoning first \\boxed{@}", "@"]
)

TEXTS = (
    st.text(max_size=300)
    | st.text(alphabet=st.characters(categories=["Cs", "Nd", "No", "Zs", "Cc"]), max_size=100)
    | st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)
    | st.tuples(WELL_FORMED, st.lists(st.sampled_from(FRAGMENTS), max_size=12).map("".join)).map(
        lambda wp: wp[0].replace("@", wp[1])
    )
)


def _fill(unit: str, prefix: str = "", suffix: str = "") -> str:
    """`prefix`, then `unit` repeated (the last copy cut), then `suffix`: exactly N characters."""
    body = N - len(prefix) - len(suffix)
    return prefix + (unit * (body // len(unit) + 1))[:body] + suffix


LONG = {
    "boxed 5000-digit numbers": _fill("\\boxed{" + "9" * 5000 + "} "),
    "answer of 100k digits": _fill("9", "<think>x</think><answer>", "</answer>"),
    "json spy of 100k digits": _fill("9", '{"spy": ', "}"),
    "opening answer tags": _fill("<answer>"),
    "closing answer tags": _fill("</answer>"),
    "stray tag halves": _fill("<answer><"),
    "think tags": _fill("<think>", suffix="<answer>1</answer>"),
    "boxed openers": _fill("\\boxed{"),
    "open braces": _fill("{", "\\boxed{"),
    "close braces": _fill("}", "\\boxed{"),
    "brace pairs": _fill("{}", "\\boxed{", "}"),
    "nested boxes": "\\boxed{" * (N // 16) + "}" * (N - 7 * (N // 16)),
    "text macro": _fill("{", "\\boxed{\\text{", "}"),
    "commas": _fill(",", "<answer>", "</answer>"),
    "short integers and commas": _fill("1, ", "<think>x</think><answer>", "1</answer>"),
    "boxed integers and commas": _fill("2,", "<think>x</think>\\boxed{", "1}"),
    "raw integers": _fill("1 "),
    "raw interval-like": _fill("1.5-"),
    "spaces around a dash": _fill(" ", "1", "-"),
    "number literals": _fill("NaN inf -0 1e309 ١٢٣ 𝟙 "),
    "null bytes": _fill("\x00"),
    "lone surrogates": _fill("\ud800"),
    "one line of words": _fill("word "),
    "repeated long lines": _fill("the same long line of eight words here\n"),
    "newlines": _fill("\n"),
    "spy keys": _fill('"spy": '),
    "spy key then spaces": _fill(" ", '"spy":', "x"),
    "na boxes": _fill(" ", "\\boxed{", "N/A}"),
}
assert all(len(text) == N for text in LONG.values())


# --------------------------------------------------------------------------------------------------
# The properties


@settings(max_examples=200, deadline=None)
@given(text=TEXTS)
def test_random_text_never_raises(targets: dict[str, Target], text: str) -> None:
    for name, target in targets.items():
        try:
            result = target.call(text)
        except Exception as e:  # the contract under test: nothing escapes
            pytest.fail(f"{name} raised {type(e).__name__}: {e}")
        target.check(text, result)


@pytest.mark.parametrize("name", NAMES)
def test_100k_pathological_text_is_handled_fast(targets: dict[str, Target], name: str) -> None:
    target, slow = targets[name], []
    for label, text in LONG.items():
        elapsed = _seconds(target, text)
        if elapsed >= TIME_LIMIT_S:  # re-measure twice: a busy shared CPU may deschedule one call
            elapsed = min(elapsed, _seconds(target, text), _seconds(target, text))
        if elapsed >= TIME_LIMIT_S:
            slow.append(f"{label}: {elapsed * 1000:.0f} ms")
    assert not slow, f"{name} takes over {TIME_LIMIT_S * 1000:.0f} ms on 100k characters: {slow}"


def _seconds(target: Target, text: str) -> float:
    """CPU seconds of this thread for one call: what the scan costs, however busy the shared machine is."""
    start = time.thread_time()
    result = target.call(text)
    elapsed = time.thread_time() - start
    target.check(text, result)
    return elapsed


def test_huge_numbers_are_no_answer() -> None:
    """The reported defect: int() raised past 4300 digits. Now such a number is no seat, label or count."""
    huge = "9" * 5000
    assert parse_vote("\\boxed{" + huge + "}", SEATS) == INVALID
    assert parse_vote('{"spy": ' + huge + "}", SEATS) == INVALID
    assert parse_vote("\\boxed{" + "0" * 5000 + "3}", SEATS) == Vote("player", 3)  # leading zeros: still 3
    assert ordering.parse_permutation(f"<answer>{huge}, 1, 2</answer>", 3) is None
    assert temporal.parse_counts(f"{huge},1,4", 3) is None
    assert parse_int(huge) is None and parse_int("-" + "0" * 5000 + "7") == -7


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789+-_ ٣x", max_size=12))
def test_parse_int_is_int_on_ascii_integers(token: str) -> None:
    ascii_integer = re.fullmatch(r"[+-]?[0-9]+", token) is not None  # what the prompts ask for, nothing more
    assert parse_int(token) == (int(token) if ascii_integer else None)


def _boxed_span_by_stack(text: str, which: str) -> tuple[int, int] | None:
    """The plain stack scan `boxed_span` replaced (kept here as its specification)."""
    stack: list[tuple[bool, int]] = []
    best: tuple[int, int] | None = None
    i = 0
    while i < len(text):
        if text.startswith(BOXED_OPEN, i):
            stack.append((True, i + len(BOXED_OPEN)))
            i += len(BOXED_OPEN)
            continue
        if text[i] == "{":
            stack.append((False, i + 1))
        elif text[i] == "}" and stack:
            is_box, start = stack.pop()
            if is_box and (best is None or (start > best[0] if which == "last" else start < best[0])):
                best = (start, i)
        i += 1
    return best


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(["\\boxed{", "{", "}", "\\boxed", "\\", "a", "é", "\ud800"]), max_size=40).map("".join))
def test_boxed_span_pairs_braces_like_a_stack(text: str) -> None:
    for which in ("first", "last"):
        assert boxed_span(text, which) == _boxed_span_by_stack(text, which)
