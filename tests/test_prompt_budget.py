"""The prompt budget planner (`model.video_fit_budget`, `mmrl.rollout.encode.fit_videos`) on a real tiny
Qwen2.5-VL / Qwen3-VL processor: a video prompt over `rollout.max_prompt_tokens` is fitted, never over budget,
the same way every time, with the answer-bearing facts (frames a task listed, timestamps of a file) kept."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from mmrl.config import ModelConfig
from mmrl.errors import MMRLError
from mmrl.models import load_processor
from mmrl.rollout.encode import encode_prompt
from mmrl.tiny import build_tiny
from mmrl.video import write_video


@pytest.fixture(scope="module")
def processors(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget-models")
    out = {}
    for family in ("qwen2.5-vl", "qwen3-vl"):
        cfg = ModelConfig(path=str(build_tiny(family, root / family)), video_max_frames=24)
        out[family] = (cfg, load_processor(cfg))
    return out


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    """6 s at 4 fps, 224x168: at model.video_fps=2 the decoder samples 12 frames."""
    frames = np.random.default_rng(3).integers(0, 256, (24, 168, 224, 3), dtype=np.uint8)
    return write_video(tmp_path_factory.mktemp("budget-video") / "clip.mp4", frames, 4.0)


def _frames_messages(count: int, seed: int = 0) -> list[dict]:
    clip = np.random.default_rng(seed).integers(0, 256, (count, 168, 224, 3), dtype=np.uint8)
    timestamps = [0.5 * i + 0.25 for i in range(count)]
    return [{"role": "user", "content": [{"type": "video", "video": list(clip), "timestamps": timestamps},
                                         {"type": "text", "text": "When does it move?"}]}]  # fmt: skip


def _file_messages(path) -> list[dict]:
    return [{"role": "user", "content": [{"type": "video", "video": str(path)}, {"type": "text", "text": "When?"}]}]


def _encode(processor, messages, cfg, budget):
    return encode_prompt(processor, messages, cfg, max_prompt_tokens=budget, keep_media=True)


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_fitted_prompts_never_exceed_the_budget(processors, video_file, family):
    """Sweep budgets from the full prompt down: each one fits (and is within budget) or is refused."""
    cfg, processor = processors[family]
    for messages, droppable in ((_frames_messages(8), False), (_file_messages(video_file), True)):
        full = _encode(processor, messages, cfg, 100_000)
        assert full.fitted == ""
        smallest = None
        for budget in range(len(full) - 1, 0, -max(1, len(full) // 12)):
            try:
                prompt = _encode(processor, messages, cfg, budget)
            except MMRLError as e:
                assert "could not make it fit" in str(e) and "video_fit_budget" in str(e)
                break
            assert len(prompt) <= budget and prompt.fitted and prompt.num_visual_tokens < full.num_visual_tokens
            smallest = prompt
        assert smallest is not None
        ((frames, meta),) = smallest.media["video"]
        ((full_frames, full_meta),) = full.media["video"]
        if not droppable:  # the task's frames are all shown, at their own timestamps
            assert len(frames) == len(full_frames) and meta["frames_indices"] == full_meta["frames_indices"]
        assert frames.shape[1] * frames.shape[2] < full_frames.shape[1] * full_frames.shape[2]


def test_pixels_shrink_before_frames_drop(processors, video_file):
    """Budgets from the full prompt down: all 12 decoded frames stay until they are at their smallest size; then
    fewer frames (whole temporal patches), each a decoded frame with its source index (timestamps kept)."""
    cfg, processor = processors["qwen2.5-vl"]
    full = _encode(processor, _file_messages(video_file), cfg, 100_000)
    ((frames, meta),) = full.media["video"]
    assert len(frames) == 12
    fits = []  # (frames shown, pixels per frame, metadata), budgets descending
    for budget in range(len(full) - 1, 0, -11):
        try:
            ((shown, shown_meta),) = _encode(processor, _file_messages(video_file), cfg, budget).media["video"]
        except MMRLError:
            break
        fits.append((len(shown), shown.shape[1] * shown.shape[2], shown_meta))
    counts = [n for n, _, _ in fits]
    assert counts == sorted(counts, reverse=True) and counts[0] == 12 and counts[-1] < 12
    all_frames = [px for n, px, _ in fits if n == 12]
    assert all_frames == sorted(all_frames, reverse=True) and all_frames[0] < frames.shape[1] * frames.shape[2]
    first_drop = counts.index(counts[-1] if 12 not in counts else next(n for n in counts if n < 12))
    assert fits[first_drop - 1][1] == min(all_frames)  # frames dropped only once the pixels were at their floor
    for n, _, m in fits:
        assert n % 2 == 0 and set(m["frames_indices"]) <= set(meta["frames_indices"])
        assert m["frames_indices"] == sorted(m["frames_indices"]) and m["fps"] == meta["fps"]
        assert m["total_num_frames"] == meta["total_num_frames"]


def test_task_frames_are_never_dropped(processors):
    """A frame list that does not fit even at the smallest frames is refused, not cut."""
    cfg, processor = processors["qwen2.5-vl"]
    full = _encode(processor, _frames_messages(8), cfg, 100_000)
    budget, smallest = len(full), None
    while True:
        try:
            smallest = _encode(processor, _frames_messages(8), cfg, budget - 1)
        except MMRLError as e:
            assert "could not make it fit" in str(e)
            break
        budget = len(smallest)
        assert len(smallest.media["video"][0][0]) == 8  # every frame the task listed, only smaller
    assert smallest is not None and smallest.num_visual_tokens < full.num_visual_tokens


def test_fitting_is_deterministic_and_can_be_turned_off(processors, video_file, caplog):
    cfg, processor = processors["qwen3-vl"]
    full = _encode(processor, _file_messages(video_file), cfg, 100_000)
    budget = len(full) * 2 // 3
    with caplog.at_level(logging.WARNING, logger="mmrl.rollout.encode"):
        a = _encode(processor, _file_messages(video_file), cfg, budget)
        b = _encode(processor, _file_messages(video_file), cfg, budget)
    assert a.fitted == b.fitted and (a.input_ids == b.input_ids).all()
    assert (a.vision["pixel_values_videos"] == b.vision["pixel_values_videos"]).all()
    assert sum("was fitted" in r.message for r in caplog.records) <= 1  # said once per process, then counted
    with pytest.raises(MMRLError, match="prompts are never truncated"):
        _encode(processor, _file_messages(video_file), dataclasses.replace(cfg, video_fit_budget=False), budget)
