"""Degenerate settings (issue 12): every built-in task refuses parameters whose answer is constant or nearly so.

"Nearly so" (docs/writing_a_task.md): fewer than 3 possible answers, one answer with probability above 1/2,
or one fixed reply that scores above 1/2 on every sample. The cases below were all accepted before: a 1×2
image jigsaw always answered `2, 1` and a tiny model reached reward 1.0 without looking at the picture.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import yaml

from mmrl.errors import ConfigError
from mmrl.registry import get_task
from mmrl.suites import suite_entries
from pretext_tasks.object_counting import best_constant_count, count_distribution
from rewards.temporal import counting_reward

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "task, params, message",
    [
        ("image_jigsaw", {"rows": 1, "cols": 2}, r"rows x cols = 1x2 .*the answer would always be 2, 1"),
        ("image_jigsaw", {"rows": 2, "cols": 1}, r"rows x cols = 2x1 .*the answer would always be 2, 1"),
        ("video_jigsaw", {"clips": 2}, r"clips = 2 .*the answer would always be 2, 1"),
        ("temporal_jigsaw", {"clips": 2}, r"clips = 2 .*the answer would always be 2, 1"),
        ("depth_jigsaw", {"points": 2}, r"points = 2 .*the answer would always be 2, 1"),
        ("dominant_color", {"palette": ["red"]}, r"palette = \['red'\] .*the answer would always be red"),
        ("dominant_color", {"palette": ["red", "blue"]}, r"palette = .*only 2 answers are possible"),
        (
            "object_counting",
            {"frames_per_shape": [3, 3], "instances_per_frame": [3, 3]},
            r"frames_per_shape = \(3, 3\) x instances_per_frame = \(3, 3\).*the answer would always be 9,9,9",
        ),
        (
            "object_counting",
            {"frames_per_shape": [1, 1], "instances_per_frame": [1, 2], "shapes": ["circle"]},
            r"frames_per_shape .*only 2 answers are possible \(1, 2\)",
        ),
        (
            "object_counting",
            {"frames_per_shape": [3, 3], "instances_per_frame": [1, 2]},
            r"every count lies in 3\.\.6, so the constant reply 4,4,4 scores at least 0\.67 on every sample",
        ),
        (
            "object_counting",
            {"frames_per_shape": [2, 3], "instances_per_frame": [3, 3], "min_frame_gap": 2},
            r"every count lies in 6\.\.9, so the constant reply 7,7,7 scores at least 0\.78",
        ),
        (
            "anomaly_grounding",
            {"segment_frames": [48, 48]},
            r"segment_frames = \(48, 48\) of frames = 48 .*the answer would always be the whole video",
        ),
        ("anomaly_grounding", {"segment_frames": [25, 30]}, r"segment_frames = \(25, 30\) .*IoU above 0\.5"),
        ("anomaly_grounding", {"frames": 16, "segment_frames": [9, 16]}, r"use a minimum of at most 8 frames"),
        ("caption_refine", {"error_kinds": ["count"], "objects": [4, 4]}, r"error_kinds = \['count'\] .*two answers"),
        (
            "edit_prediction",
            {
                "kinds": ["remove"],
                "shapes": ["cube"],
                "colors": ["red"],
                "sizes": ["small", "large"],
                "objects": [1, 1],
                "max_edits": 1,
            },
            r"kinds = \['remove'\] .*described in only 2 way",
        ),
    ],
)
def test_degenerate_settings_are_refused_naming_the_parameter_and_why(task: str, params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        get_task(task, **params)
    assert "degenerate setting" in str(info.value)


@pytest.mark.parametrize(
    "task, params",
    [
        ("image_jigsaw", {"rows": 1, "cols": 3}),
        ("video_jigsaw", {"clips": 3}),
        ("temporal_jigsaw", {"clips": 3}),
        ("depth_jigsaw", {"points": 3}),
        ("dominant_color", {"palette": ["red", "green", "blue"]}),
        ("object_counting", {"frames_per_shape": [1, 1], "instances_per_frame": [1, 2]}),  # 8 answers, 1/8 each
        ("object_counting", {"frames_per_shape": [1, 3], "instances_per_frame": [2, 4]}),  # the viu Hard split
        ("anomaly_grounding", {"segment_frames": [24, 48]}),  # the boundary: min = frames / 2
        ("anomaly_grounding", {"segment_frames": [3, 6], "strength": 0.5}),  # the viu Hard split
        ("caption_refine", {"error_kinds": ["count"], "objects": [3, 4]}),  # four count corrections
        (
            "edit_prediction",
            {
                "kinds": ["remove"],
                "shapes": ["cube"],
                "colors": ["red"],
                "sizes": ["small", "medium", "large"],
                "objects": [1, 2],
                "max_edits": 1,
            },
        ),
    ],
)
def test_the_smallest_sound_settings_are_accepted(task: str, params: dict) -> None:
    get_task(task, **params)


def test_defaults_shipped_configs_and_the_viu_suite_are_not_degenerate() -> None:
    for task in ("image_jigsaw", "video_jigsaw", "temporal_jigsaw", "depth_jigsaw", "dominant_color",
                 "object_counting", "anomaly_grounding"):  # fmt: skip
        get_task(task)
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        for source in yaml.safe_load(path.read_text()).get("data", {}).get("sources", []):
            get_task(source["task"], **(source.get("params") or {}))
    small = {"frames": 16, "min_frame_gap": 1}  # overrides for small models: grounding keeps 8-16 of 16 frames
    for entry in [*suite_entries("viu", {}), *suite_entries("viu", small)]:
        get_task(entry.task, **entry.params)


def test_count_distribution_and_best_constant_match_brute_force() -> None:
    """The counting check's numbers, against an enumeration of the draw and of the real reward."""
    for frames, instances in [((1, 3), (1, 3)), ((3, 3), (1, 2)), ((2, 3), (3, 3)), ((1, 2), (2, 4))]:
        enumerated: dict[int, float] = {}
        ks = range(frames[0], frames[1] + 1)
        for k in ks:
            per_frame = list(itertools.product(range(instances[0], instances[1] + 1), repeat=k))
            for combo in per_frame:
                enumerated[sum(combo)] = enumerated.get(sum(combo), 0.0) + 1 / len(ks) / len(per_frame)
        dist = count_distribution(frames, instances)
        assert dist.keys() == enumerated.keys() and np.allclose([dist[g] for g in dist], [enumerated[g] for g in dist])
        reply, worst = best_constant_count(sorted(dist))
        real = {p: min(counting_reward(str(p), [g], mode="raw").score for g in dist) for p in range(max(dist) + 2)}
        assert worst == pytest.approx(max(real.values()), abs=1e-6) and real[reply] == pytest.approx(worst, abs=1e-6)


def test_grounding_bound_is_exact() -> None:
    """For a minimum segment of at most F/2 frames no fixed interval has IoU > 0.5 with every segment; above it,
    the whole video does. Checked by enumerating every fixed interval and every segment (F = 12)."""
    f = 12

    def iou(a: tuple[int, int], b: tuple[int, int]) -> float:
        inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
        return inter / (a[1] - a[0] + b[1] - b[0] - inter)

    for lo in range(2, f + 1):
        segments = [(s, s + t) for t in range(lo, f + 1) for s in range(f - t + 1)]
        best = max(min(iou((a, b), seg) for seg in segments) for a in range(f) for b in range(a + 1, f + 1))
        refused = True
        try:
            get_task("anomaly_grounding", frames=f, segment_frames=[lo, f])
            refused = False
        except ConfigError:
            pass
        assert refused == (best > 0.5), (lo, best)
