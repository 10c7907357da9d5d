"""rewards.boxes: IoU and F1 against hand-computed cases, malformed replies, coordinate conventions, and the
conventions checked against each family's real processor (tiny Qwen2-VL, Qwen2.5-VL, Qwen3-VL)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from rewards.boxes import (
    COORD_FAMILIES,
    answer_boxes,
    from_model_box,
    iou,
    match_count,
    model_size,
    ovd_reward,
    rec_reward,
    to_model_box,
    transform_answer_boxes,
)

# A 100x80 image seen by qwen2.5-vl at its own size: model coordinates = canonical pixels, so the hand
# arithmetic below needs no conversion.
META = {"image_size": [100, 80], "model_size": [100, 80], "coords": "qwen2.5-vl"}


def rec(box, reply, **kw):
    return rec_reward(reply, {"box": box, "label": "cube"}, META, **kw)


def ovd(objects, reply):
    return ovd_reward(reply, {"objects": [{"label": lab, "box": b} for lab, b in objects]}, META)


def tagged(payload) -> str:
    return f"<answer>{payload if isinstance(payload, str) else json.dumps(payload)}</answer>"


# ------------------------------------------------------------------------------------------ IoU, by hand


def test_iou_hand_computed():
    # Two 10x10 boxes offset by 5 px in x: inter 5*10 = 50, union 100 + 100 - 50 = 150, IoU 1/3.
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(1 / 3)
    # Offset by 5 px in x and y: inter 5*5 = 25, union 175, IoU 1/7.
    assert iou([0, 0, 10, 10], [5, 5, 15, 15]) == pytest.approx(25 / 175)
    # A 4x4 box inside a 10x10 box: inter 16, union 100, IoU 0.16.
    assert iou([0, 0, 10, 10], [3, 3, 7, 7]) == pytest.approx(0.16)
    # Touching edges (x2 exclusive): no overlap.
    assert iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0
    assert iou([2, 3, 9, 7], [2, 3, 9, 7]) == 1.0
    assert iou([5, 5, 5, 9], [5, 5, 5, 9]) == 0.0  # empty union


def test_rec_threshold_and_continuous():
    gt = [10, 10, 30, 30]  # 20x20 = 400
    # Shifted 5 px right: inter 15*20 = 300, union 500, IoU 0.6 -> hit: 0.9 + 0.1.
    r = rec(gt, tagged("[15, 10, 35, 30]"))
    assert r.parts["iou"] == pytest.approx(0.6) and r.parts["accuracy"] == 1.0 and r.score == pytest.approx(1.0)
    # Shifted 10 px: inter 10*20 = 200, union 600, IoU 1/3 -> miss: format only, 0.1.
    r = rec(gt, tagged("[20, 10, 40, 30]"))
    assert r.parts["iou"] == pytest.approx(1 / 3) and r.parts["accuracy"] == 0.0 and r.score == pytest.approx(0.1)
    # Continuous: accuracy = IoU = 1/3, score 0.9/3 + 0.1 = 0.4; exact stays the 0.5 threshold.
    r = rec(gt, tagged("[20, 10, 40, 30]"), continuous=True)
    assert r.score == pytest.approx(0.4) and r.parts["exact"] == 0.0
    # Right box outside the asked format (prose around the tags): accuracy only, 0.9.
    assert rec(gt, "sure: " + tagged("[10, 10, 30, 30]")).score == pytest.approx(0.9)
    # Whitespace, floats and ints are all fine.
    assert rec(gt, tagged(" [ 10.0,10 ,\n30, 30.0 ] ")).score == pytest.approx(1.0)


@pytest.mark.parametrize(
    "payload",
    [
        "[30, 10, 10, 30]",  # x2 < x1
        "[10, 10, 10, 30]",  # zero width
        "[NaN, 10, 30, 30]",
        "[10, 10, Infinity, 30]",
        "[10, 10, 30]",  # 3 numbers
        "[10, 10, 30, 30, 1]",  # 5 numbers
        "[[10, 10, 30, 30], [10, 10, 30, 30]]",  # two boxes for one object
        '["10", 10, 30, 30]',
        "[true, 10, 30, 30]",
        "[10, 10, 130, 30]",  # x2 = 130 in a 100-wide frame: beyond the 2 % tolerance
        "[-5, 10, 30, 30]",
        "10, 10, 30, 30",
        "",
    ],
)
def test_rec_malformed_scores_zero_with_every_part(payload):
    r = rec([10, 10, 30, 30], tagged(payload))
    assert r.score == 0.0 and set(r.parts) == {"format", "accuracy", "iou", "exact"} and not any(r.parts.values())


def test_rec_tolerates_a_box_just_past_the_edge():
    # x2 = 101 in a 100-wide frame: within the 2 px tolerance (2 % of 100); IoU with [80, 0, 100, 20]:
    # inter 20*20 = 400, union 21*20 = 420, IoU 0.952.
    assert rec([80, 0, 100, 20], tagged("[80, 0, 101, 20]")).parts["iou"] == pytest.approx(400 / 420)


# ------------------------------------------------------------------------------------------ F1, by hand


def test_ovd_f1_hand_computed():
    truth = [("cube", [0, 0, 10, 10]), ("sphere", [50, 50, 70, 70])]
    # Both right: TP 2, F1 = 2*2 / (2 + 2) = 1.
    assert ovd(truth, tagged([{"label": lab, "box": b} for lab, b in truth])).score == pytest.approx(1.0)
    # One right, one missed: TP 1, F1 = 2*1 / (1 + 2) = 2/3; score 0.9 * 2/3 + 0.1 = 0.7.
    r = ovd(truth, tagged([{"label": "cube", "box": [0, 0, 10, 10]}]))
    assert r.parts["accuracy"] == pytest.approx(2 / 3) and r.score == pytest.approx(0.7)
    assert r.parts["precision"] == 1.0 and r.parts["recall"] == 0.5
    # Right box, wrong label: no match, F1 0, score = format only.
    r = ovd(truth, tagged([{"label": "cone", "box": [0, 0, 10, 10]}, {"label": "sphere", "box": [50, 50, 70, 70]}]))
    assert r.parts["accuracy"] == pytest.approx(2 * 1 / 4)
    # Labels compare case- and space-insensitively.
    r = ovd(truth[:1], tagged([{"label": " Cube ", "box": [0, 0, 10, 10]}]))
    assert r.parts["accuracy"] == 1.0
    # Box at IoU 1/3 with the right label: not a match (threshold 0.5).
    assert ovd(truth[:1], tagged([{"label": "cube", "box": [5, 0, 15, 10]}])).parts["accuracy"] == 0.0


def test_ovd_duplicates_and_whole_image_box_are_punished():
    truth = [("cube", [0, 0, 10, 10])]
    # The right box twice: one-to-one matching gives TP 1 of 2 predictions, F1 = 2*1 / (2 + 1) = 2/3.
    dup = tagged([{"label": "cube", "box": [0, 0, 10, 10]}] * 2)
    assert ovd(truth, dup).parts["accuracy"] == pytest.approx(2 / 3)
    # Five copies: F1 = 2 / 6 = 1/3.
    assert ovd(truth, tagged([{"label": "cube", "box": [0, 0, 10, 10]}] * 5)).parts["accuracy"] == pytest.approx(1 / 3)
    # One whole-image box for three small objects: IoU of each with [0, 0, 100, 80] is at most 100/8000.
    three = [("cube", [0, 0, 10, 10]), ("cube", [40, 40, 50, 50]), ("cube", [80, 60, 90, 70])]
    r = ovd(three, tagged([{"label": "cube", "box": [0, 0, 100, 80]}]))
    assert r.parts["accuracy"] == 0.0 and r.score == pytest.approx(0.1)


def test_ovd_matching_is_one_to_one_and_maximal():
    # Prediction A overlaps both truths, B only the first: a greedy match of A to the first truth would
    # leave B unmatched (TP 1); the Hungarian assignment pairs A with the second and B with the first (TP 2).
    truth = [("cube", [0, 0, 10, 10]), ("cube", [4, 0, 14, 10])]
    a, b = ("cube", [2, 0, 12, 10]), ("cube", [0, 0, 10, 10])
    # IoU(a, t1) = 8*10 / (200 - 80) = 2/3, IoU(a, t2) = 2/3, IoU(b, t1) = 1, IoU(b, t2) = 6*10/140 = 0.43.
    assert match_count([a, b], truth) == 2


def test_ovd_empty_cases():
    assert ovd([], tagged("[]")).score == pytest.approx(1.0)  # empty vs empty: F1 = 1
    assert ovd([("cube", [0, 0, 10, 10])], tagged("[]")).parts["accuracy"] == 0.0
    assert ovd([], tagged([{"label": "cube", "box": [0, 0, 10, 10]}])).parts["accuracy"] == 0.0


@pytest.mark.parametrize(
    "payload",
    [
        '[{"label": "cube", "box": [10, 10, 5, 20]}]',
        '[{"label": "cube", "box": [10, 10, 20]}]',
        '[{"label": "cube", "box": [NaN, 10, 20, 20]}]',
        '[{"label": "cube", "box": [0, 0, 10, 10]}, {"label": "cube"}]',
        '[{"label": 3, "box": [0, 0, 10, 10]}]',
        '[{"label": "cube", "box": [0, 0, 10, 500]}]',
        '{"label": "cube", "box": [0, 0, 10, 10]}',
        json.dumps([{"label": "cube", "box": [0, 0, 10, 10]}] * 101),  # more than MAX_PREDICTED_BOXES
        "[" * 100000,
    ],
)
def test_ovd_malformed_scores_zero(payload):
    r = ovd([("cube", [0, 0, 10, 10])], tagged(payload))
    assert r.score == 0.0 and set(r.parts) == {"format", "accuracy", "precision", "recall", "exact"}


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), st.binary(max_size=50).map(lambda b: b.decode("latin-1"))))
def test_arbitrary_text_never_raises_and_stays_in_range(text):
    for reply in (text, tagged(text), f"<answer>[{text}]</answer>"):
        for r in (rec([10, 10, 30, 30], reply), rec([10, 10, 30, 30], reply, continuous=True),
                  ovd([("cube", [0, 0, 10, 10])], reply)):  # fmt: skip
            assert 0.0 <= r.score <= 1.0 and all(0.0 <= v <= 1.0 for v in r.parts.values())


def test_non_string_completion_scores_zero():
    assert rec([0, 0, 10, 10], None).score == 0.0  # type: ignore[arg-type]
    assert ovd([], 42).score == 0.0  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ conventions


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(COORD_FAMILIES),
    st.integers(16, 4000),
    st.integers(16, 4000),
    st.lists(st.floats(0, 1, allow_nan=False), min_size=4, max_size=4),
)
def test_canonical_model_round_trip(family, w, h, fractions):
    if max(w, h) / min(w, h) > 150:
        return
    size = model_size([w, h], family, 4 * 28 * 28, 1024 * 28 * 28)
    fx, fy = sorted(fractions[:2]), sorted(fractions[2:])
    box = [fx[0] * w, fy[0] * h, fx[1] * w, fy[1] * h]
    back = from_model_box(to_model_box(box, [w, h], size, family), [w, h], size, family)
    assert np.allclose(back, box, atol=1e-6)


def test_conventions_by_hand():
    # qwen2.5-vl: 333x217 under the default budget -> smart_resize rounds to multiples of 28: 336x224.
    assert model_size([333, 217], "qwen2.5-vl", 4 * 28 * 28, 256 * 28 * 28) == [336, 224]
    assert to_model_box([0, 0, 333, 217], [333, 217], [336, 224], "qwen2.5-vl") == pytest.approx([0, 0, 336, 224])
    # Grid: x' = x * 1000 / W: 111 of 333 -> 333.33; the image's far edge is 1000.
    assert to_model_box([111, 0, 333, 217], [333, 217], [336, 224], "qwen2-vl") == pytest.approx(
        [1000 / 3, 0, 1000, 1000]
    )
    # Qwen3-VL resizes to multiples of 32: 333x217 -> 320x224.
    assert model_size([333, 217], "qwen3-vl", 4 * 32 * 32, 256 * 32 * 32) == [320, 224]


def test_answer_boxes_and_transform():
    rec_answer = {"box": [1, 2, 3, 4], "label": "cube"}
    assert answer_boxes(rec_answer) == [("cube", [1.0, 2.0, 3.0, 4.0])]
    ovd_answer = {"objects": [{"label": "a", "box": [0, 0, 2, 2]}, {"label": "b", "box": [4, 4, 6, 8]}]}
    moved = transform_answer_boxes(ovd_answer, 0.5, (10, 20))
    # box' = 0.5 * box + (10, 20): [4, 4, 6, 8] -> [12, 22, 13, 24]
    assert moved["objects"][1] == {"label": "b", "box": [12.0, 22.0, 13.0, 24.0]}
    assert transform_answer_boxes(rec_answer, 2.0, (0, 0)) == {"box": [2.0, 4.0, 6.0, 8.0], "label": "cube"}
    assert ovd_answer["objects"][1]["box"] == [4, 4, 6, 8]  # the input is not changed
    assert answer_boxes("nonsense") == [] and answer_boxes({"objects": "x"}) == []
    with pytest.raises(ValueError):
        transform_answer_boxes({"box": [1, 2]}, 1.0, (0, 0))


# ------------------------------------------------------------------------------------------ real processors


def resized_image(processor, pixel_values, grid) -> np.ndarray:
    """The processor's resized image (H', W', C) rebuilt from its flattened patches.

    Qwen2/2.5/3-VL image processors flatten (t, h/m, w/m, m, m) patch groups, each patch as (C, tp, p, p).
    """
    ip = processor.image_processor
    p, m, tp = ip.patch_size, ip.merge_size, ip.temporal_patch_size
    gt, gh, gw = (int(v) for v in grid)
    x = pixel_values.reshape(gt, gh // m, gw // m, m, m, 3, tp, p, p)
    x = x.permute(0, 6, 5, 1, 3, 7, 2, 4, 8).reshape(gt * tp, 3, gh * p, gw * p)
    return x[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("family", COORD_FAMILIES)
def test_conventions_against_real_processor(family):
    """A 333x217 image with a red rectangle goes through the family's own processor at the task's budget: the
    grid times the patch size is our `model_size`, and the rectangle found in the processor's resized pixels,
    mapped back with `from_model_box`, lands on the drawn box."""
    from transformers import AutoProcessor

    from mmrl.models import resolve_model_path

    processor = AutoProcessor.from_pretrained(resolve_model_path(f"tiny:{family}"))
    ip = processor.image_processor
    factor = ip.patch_size * ip.merge_size
    assert factor == (32 if family == "qwen3-vl" else 28)  # read from the processor, checked against the docs
    min_pixels, max_pixels = 4 * factor * factor, 256 * factor * factor
    ip.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    w, h = 333, 217
    box = [97, 41, 251, 170]
    image = Image.new("RGB", (w, h), (0, 0, 0))
    ImageDraw.Draw(image).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=(255, 0, 0))
    out = processor.image_processor(images=[image], return_tensors="pt")
    grid = out["image_grid_thw"][0]
    expected = model_size([w, h], family, min_pixels, max_pixels)
    assert [int(grid[2]) * ip.patch_size, int(grid[1]) * ip.patch_size] == expected

    resized = resized_image(processor, out["pixel_values"], grid)
    red = resized[..., 0] - resized[..., 1]  # high inside the rectangle, ~0 outside
    ys, xs = np.nonzero(red > red.max() / 2)
    seen = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]  # in pixels of the resized image
    scale = [expected[0] / w, expected[1] / h]
    predicted = to_model_box(box, [w, h], expected, "qwen2.5-vl")  # pixels of the resized image
    assert np.allclose(seen, predicted, atol=1.0)  # bicubic edges land within a pixel
    # And back: the rectangle the model sees maps onto the drawn box within a resized pixel's width.
    back = from_model_box(seen, [w, h], expected, "qwen2.5-vl")
    assert np.allclose(back, box, atol=max(1 / scale[0], 1 / scale[1]) + 1e-9)
    # The family's own convention round-trips through the same size.
    model = to_model_box(box, [w, h], expected, family)
    assert np.allclose(from_model_box(model, [w, h], expected, family), box)
    if family != "qwen2.5-vl":
        assert all(0 <= v <= 1000 for v in model) and math.isclose(model[2], 251 * 1000 / 333)
