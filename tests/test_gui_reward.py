"""The UIShift reward (`rewards.gui`): parsing a JSON action, the type-gated match, coordinates, and hostile output."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards.gui import (
    PARTS,
    action_text,
    from_model_point,
    gui_reward,
    model_point_for,
    parse_action,
    to_model_point,
    token_f1,
)

# A 200x100 screenshot a Qwen2.5-VL processor shows as 224x112 (sx = 1.12, sy = 1.12).
PIXEL_META = {"image_size": [200, 100], "model_size": [224, 112], "coords": "qwen2.5-vl"}
GRID_META = {"image_size": [200, 100], "model_size": [224, 112], "coords": "qwen3-vl"}
CLICK = {"action_type": "click", "x": 50.0, "y": 40.0, "bbox": [40.0, 30.0, 80.0, 50.0]}


def tagged(payload: str) -> str:
    return f"<answer>{payload}</answer>"


def test_parse_action_keeps_only_what_each_type_uses():
    assert parse_action('{"action_type": "CLICK", "x": 3, "y": 4.5, "extra": 1}') == {
        "action_type": "click", "x": 3, "y": 4.5,
    }  # fmt: skip
    assert parse_action('```json\n{"action_type": "scroll", "direction": " Down "}\n```') == {
        "action_type": "scroll", "direction": "down",
    }  # fmt: skip
    assert parse_action('{"action_type": "navigate_home", "x": 1}') == {"action_type": "navigate_home"}
    assert parse_action('{"action_type": "open_app", "app_name": "Clock"}')["app_name"] == "Clock"


@pytest.mark.parametrize(
    "payload",
    [
        '{"action_type": "click", "x": 3}',  # no y
        '{"action_type": "click", "x": true, "y": 4}',  # a bool is no coordinate
        '{"action_type": "click", "x": NaN, "y": 4}',
        '{"action_type": "click", "x": "3", "y": 4}',
        '{"action_type": "scroll", "direction": "sideways"}',
        '{"action_type": "input_text", "text": 5}',
        '{"action_type": "swipe"}',
        '["click", 3, 4]',
        "click(3, 4)",
        "",
        None,
    ],
)
def test_malformed_actions_do_not_parse(payload):
    assert parse_action(payload) is None


def test_click_is_inside_the_box_inclusive_in_canonical_pixels():
    # Model point (x', y') -> canonical (x'/1.12, y'/1.12); the box's edges x = 40 and x = 80 count.
    on_left_edge = tagged('{"action_type": "click", "x": 44.8, "y": 44.8}')  # (40, 40)
    on_right_edge = tagged('{"action_type": "click", "x": 89.6, "y": 56}')  # (80, 50)
    just_outside = tagged('{"action_type": "click", "x": 89.7, "y": 56}')  # (80.09, 50)
    assert gui_reward(on_left_edge, CLICK, PIXEL_META).parts["action"] == 1.0
    assert gui_reward(on_right_edge, CLICK, PIXEL_META).parts["action"] == 1.0
    miss = gui_reward(just_outside, CLICK, PIXEL_META)
    assert miss.parts == {"format": 1.0, "action": 0.0, "accuracy": 0.0, "exact": 0.0} and miss.score == 0.5


def test_grid_families_answer_on_0_to_1000():
    # (300, 400) on the grid is (60, 40) in a 200x100 screenshot: inside the box; the same numbers as pixels miss.
    reply = tagged('{"action_type": "click", "x": 300, "y": 400}')
    assert gui_reward(reply, CLICK, GRID_META).score == 1.0
    assert gui_reward(reply, CLICK, PIXEL_META).score == 0.5
    assert from_model_point((300, 400), GRID_META) == pytest.approx((60.0, 40.0))
    assert to_model_point((60, 40), GRID_META) == pytest.approx((300.0, 400.0))


def test_type_gates_every_parameter():
    long_press = tagged('{"action_type": "long_press", "x": 56, "y": 44.8}')  # right point, wrong type
    assert gui_reward(long_press, CLICK, PIXEL_META).parts["action"] == 0.0
    scroll = {"action_type": "scroll", "direction": "down"}
    assert gui_reward(tagged('{"action_type": "Scroll", "direction": "DOWN"}'), scroll, PIXEL_META).score == 1.0
    assert gui_reward(tagged('{"action_type": "scroll", "direction": "up"}'), scroll, PIXEL_META).score == 0.5
    app = {"action_type": "open_app", "app_name": "Google  Maps"}
    assert gui_reward(tagged('{"action_type": "open_app", "app_name": " google maps"}'), app, PIXEL_META).score == 1
    for kind in ("navigate_back", "navigate_home", "wait"):
        assert gui_reward(tagged(f'{{"action_type": "{kind}"}}'), {"action_type": kind}, PIXEL_META).score == 1.0
    back = gui_reward(tagged('{"action_type": "navigate_back"}'), {"action_type": "navigate_home"}, PIXEL_META)
    assert back.score == 0.5


def test_text_match_exact_or_token_f1():
    truth = {"action_type": "input_text", "text": "buy milk and eggs"}
    reply = tagged('{"action_type": "input_text", "text": "Buy  milk"}')
    assert gui_reward(reply, truth, PIXEL_META).parts["action"] == 0.0  # exact: not equal
    assert token_f1("Buy  milk", "buy milk and eggs") == pytest.approx(2 * 2 / (2 + 4))  # 0.667
    assert gui_reward(reply, truth, PIXEL_META, text_match="f1", f1_threshold=0.6).parts["action"] == 1.0
    assert gui_reward(reply, truth, PIXEL_META, text_match="f1", f1_threshold=0.7).parts["action"] == 0.0
    assert token_f1("", "") == 1.0 and token_f1("a", "") == 0.0


def test_a_click_without_a_box_needs_the_exact_model_point():
    truth = {"action_type": "click", "x": 50.0, "y": 40.0}  # model point (56, 44.8) -> (56, 45)
    assert gui_reward(tagged('{"action_type": "click", "x": 56, "y": 45}'), truth, PIXEL_META).score == 1.0
    assert gui_reward(tagged('{"action_type": "click", "x": 57, "y": 45}'), truth, PIXEL_META).score == 0.5


def test_untagged_replies_score_only_when_allowed_and_never_get_format():
    reply = '{"action_type": "click", "x": 56, "y": 45}'
    assert gui_reward(reply, CLICK, PIXEL_META).score == 0.0
    lenient = gui_reward(reply, CLICK, PIXEL_META, allow_untagged=True)
    assert lenient.parts == {"format": 0.0, "action": 1.0, "accuracy": 1.0, "exact": 1.0} and lenient.score == 0.5
    prose = "I think: " + tagged('{"action_type": "click", "x": 56, "y": 45}')
    assert gui_reward(prose, CLICK, PIXEL_META).parts["format"] == 0.0  # text outside the block


def test_reference_point_is_moved_into_a_box_rounding_would_leave():
    # Truth x = 40 is model x' = 44.8, rounded to 45, which maps back to 40.18: outside a box ending at 40.1.
    # The nearest integer model x inside is 44 (39.29); a box from 40.3 to 40.5 (model 45.14..45.36) holds none.
    near_edge = {"action_type": "click", "x": 40.0, "y": 40.0, "bbox": [39.0, 30.0, 40.1, 50.0]}
    assert model_point_for(near_edge, PIXEL_META) == (44, 45)
    assert gui_reward(tagged(action_text(near_edge, PIXEL_META)), near_edge, PIXEL_META).score == 1.0
    assert gui_reward(tagged('{"action_type": "click", "x": 45, "y": 45}'), near_edge, PIXEL_META).score == 0.5
    too_thin = {"action_type": "click", "x": 40.4, "y": 40.0, "bbox": [40.3, 30.0, 40.5, 50.0]}
    assert model_point_for(too_thin, PIXEL_META) is None


@pytest.mark.parametrize("completion", [None, 3, b"<answer>x</answer>", "", "<answer></answer>", "<answer>{}"])
def test_unusable_output_scores_zero_with_every_part(completion):
    r = gui_reward(completion, CLICK, PIXEL_META)
    assert r.score == 0.0 and set(r.parts) == set(PARTS) and not any(r.parts.values())


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200) | st.from_regex(r'<answer>\{"action_type": "(click|scroll)", .{0,30}\}</answer>'))
def test_arbitrary_text_never_raises_and_stays_in_range(text):
    for meta in (PIXEL_META, GRID_META):
        r = gui_reward(text, CLICK, meta, allow_untagged=True)
        assert 0.0 <= r.score <= 1.0 and set(r.parts) == set(PARTS)
        assert all(math.isfinite(v) for v in r.parts.values())
