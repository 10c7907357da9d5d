"""`video_jigsaw`: ground truth checked against independently decoded frames, trims, skips, the tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage
from jigsaw_helpers import texts_of, write_samples
from PIL import Image

from mmrl import media
from mmrl.config import ModelConfig
from mmrl.contracts import SamplingParams
from mmrl.corpus import Corpus, camera_motion_frames
from mmrl.errors import ConfigError, MediaError, SkipItem
from mmrl.models import load_policy
from mmrl.registry import get_task, task_class
from mmrl.rollout import HFEngine, encode_prompt
from mmrl.sample import Sample, read_dataset, write_dataset
from mmrl.video import read_video, write_video
from pretext_tasks.video_jigsaw import (
    VideoJigsaw,
    VideoJigsawParams,
    clip_indices,
    frames_per_clip,
    split_clips,
)
from rewards.ordering import answer_text

CHELSEA = Path(skimage.__file__).parent / "data" / "chelsea.png"
FPS = 8.0


def pan_video(path: Path, n_frames: int, size: tuple[int, int] = (128, 96), seed: int = 0) -> Path:
    """A camera pan over a real photo (as in the default corpus): every frame differs from its neighbours."""
    image = media.load_image(CHELSEA)
    frames = list(camera_motion_frames(image, "pan_right", n_frames, size, np.random.default_rng(seed)))
    return write_video(path, frames, FPS)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    return {
        "pan130": pan_video(root / "pan130.mp4", 130),  # K=6: skip 10, L 20, trim 2, clips of 16 frames
        "pan48": pan_video(root / "pan48.mp4", 48),  # 6 s: under min_duration, tests of it pass min_duration=0
        "pan40": pan_video(root / "pan40.mp4", 40, (64, 48)),  # 5 s, K=3: clips of 8 frames, small frames
    }


def clips_of(sample: Sample) -> list[dict]:
    """The video items of the prompt, in the order they are shown (label j at position j − 1)."""
    return [item for item in sample.media() if item["type"] == "video"]


def source_positions(frames: list[np.ndarray], decoded: np.ndarray) -> list[int]:
    """Each shown frame's index in the independently decoded video, by nearest mean pixel distance."""
    positions = []
    reference = decoded.astype(np.int16)
    for frame in frames:
        distance = np.abs(reference - np.asarray(frame, dtype=np.int16)).mean(axis=(1, 2, 3))
        best = int(distance.argmin())
        assert distance[best] < 0.5, "a shown frame must be one of the video's decoded frames"
        assert np.sort(distance)[1] > distance[best] + 1.0, "the match must be unambiguous"
        positions.append(best)
    return positions


# --------------------------------------------------------------------------------------------------
# Registry, parameters, formulas


def test_registered_with_defaults() -> None:
    task = get_task("video_jigsaw")
    assert isinstance(task, VideoJigsaw) and task_class("video_jigsaw") is VideoJigsaw
    p = task.params
    assert (p.clips, p.trim_ratio, p.fps, p.max_frames_per_clip, p.min_frames_per_clip) == (6, 0.1, 2.0, 12, 2)
    assert p.min_duration == 12.0
    assert (p.frame_max_pixels, p.answer_mode, p.think, p.partial_min_k) == (128 * 28 * 28, "answer_tag", True, 5)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"clips": 1}, "clips"),
        ({"clips": 2}, "answer would always be 2, 1"),
        ({"trim_ratio": 0.5}, "trim_ratio"),
        ({"trim_ratio": -0.1}, "trim_ratio"),
        ({"fps": 0}, "fps"),
        ({"max_frames_per_clip": 1}, "max_frames_per_clip"),
        ({"min_frames_per_clip": 1}, "min_frames_per_clip"),
        ({"frame_max_pixels": 100}, "frame_max_pixels"),
        ({"answer_mode": "raw"}, "think"),
    ],
)
def test_bad_params_are_config_errors(params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        get_task("video_jigsaw", **params)


def test_split_formula() -> None:
    # N = 130, K = 6, p/q = 1/10: skip = 130 mod 60 = 10, L = 120 // 6 = 20, trim = 20·1 // 10 = 2
    s = split_clips(130, 6, 0.1)
    assert (s.skip, s.length, s.trim) == (10, 20, 2)
    assert s.ranges == [(12, 28), (32, 48), (52, 68), (72, 88), (92, 108), (112, 128)]
    # the paper's 5 %: p/q = 1/20, skip = 130 mod 120 = 10, L = 20, trim = 1
    s = split_clips(130, 6, 0.05)
    assert (s.skip, s.length, s.trim) == (10, 20, 1) and s.ranges[0] == (11, 29)
    # N = 48 (the default corpus), K = 4: skip = 48 mod 40 = 8, L = 10, trim = 1 -> clips of 8 frames
    assert split_clips(48, 4, 0.1).ranges == [(9, 17), (19, 27), (29, 37), (39, 47)]
    # N = 48, K = 6: skip = 48 mod 60 = 48, nothing left
    assert split_clips(48, 6, 0.1).length == 0
    # no trim: clips touch
    assert split_clips(40, 2, 0.0).ranges == [(0, 20), (20, 40)]


def test_frames_per_clip_and_indices() -> None:
    assert frames_per_clip(16, 8.0, 2.0, 12) == 4  # 2 s at 2 fps
    assert frames_per_clip(100, 30.0, 2.0, 12) == 6  # 6.67 -> 6
    assert frames_per_clip(90, 30.0, 2.0, 12) == 6
    assert frames_per_clip(300, 10.0, 2.0, 12) == 12  # 60 wanted, capped
    assert frames_per_clip(300, 10.0, 2.0, 11) == 10  # cap rounded down to even
    assert frames_per_clip(8, 8.0, 2.0, 12) == 2  # 1 s -> 2
    assert frames_per_clip(3, 1.0, 2.0, 12) == 2  # wanted 6, only 3 frames: even floor 2
    assert frames_per_clip(5, 30.0, 2.0, 12) == 2  # wanted 0.33 -> at least 2
    assert clip_indices(12, 28, 4) == [12, 17, 22, 27]  # 12 + round(linspace(0, 15, 4)) = 0, 5, 10, 15
    assert clip_indices(0, 10, 4) == [0, 3, 6, 9]
    assert clip_indices(0, 8, 3) == [0, 4, 7]  # linspace 0, 3.5, 7: 3.5 rounds half to even -> 4


# --------------------------------------------------------------------------------------------------
# Ground truth against the media


@pytest.mark.parametrize("trim_ratio", [0.1, 0.05])
def test_answer_restores_chronological_order(videos: dict[str, Path], trim_ratio: float) -> None:
    path = videos["pan130"]
    decoded = read_video(path).frames  # every frame, decoded independently of the task
    n_frames, k = len(decoded), 6
    q = round(1 / trim_ratio)
    skip = n_frames % (k * q)  # Visual Jigsaw's formula (docs/visual_jigsaw.md), written out again
    length = (n_frames - skip) // k
    trim = length // q
    boundaries = [skip + i * length for i in range(k + 1)]
    task = get_task("video_jigsaw", trim_ratio=trim_ratio, frame_max_pixels=0)
    for seed in range(4):
        sample = task.make(path, np.random.default_rng(seed))
        clips = clips_of(sample)
        assert len(clips) == k and sorted(sample.answer) == list(range(1, k + 1))
        positions = [source_positions(clip["video"], decoded) for clip in clips]  # by shown label
        chronological = [positions[label - 1] for label in sample.answer]
        for earlier, later in zip(chronological, chronological[1:]):
            assert earlier == sorted(earlier) and max(earlier) < min(later)
            assert min(later) - max(earlier) > 2 * trim  # the trimmed gap
        for x in (x for clip in positions for x in clip):
            assert boundaries[0] + trim <= x < boundaries[-1] - trim
            assert all(not (b - trim <= x < b + trim) for b in boundaries[1:-1]), (x, boundaries, trim)
        if seed == 0:
            assert [len(c) for c in chronological] == [4] * k  # 16 frames = 2 s at 2 fps


def test_clip_timing_gives_nothing_away(videos: dict[str, Path]) -> None:
    task = get_task("video_jigsaw", frame_max_pixels=0)
    sample = task.make(videos["pan130"], np.random.default_rng(0))
    timestamps = [clip["timestamps"] for clip in clips_of(sample)]
    assert all(t == timestamps[0] for t in timestamps)  # every clip starts at 0: no absolute time
    assert timestamps[0][0] == 0.0 and timestamps[0] == sorted(timestamps[0])
    assert timestamps[0] == pytest.approx([0.0, 5 / FPS, 10 / FPS, 15 / FPS])  # linspace(0, 15, 4)
    assert {clip["fps"] for clip in clips_of(sample)} == {4 / 16 * FPS}  # n / clip frames · source fps
    assert {len(clip["video"]) for clip in clips_of(sample)} == {4}


def test_frames_are_downscaled_to_the_budget(videos: dict[str, Path]) -> None:
    sample = get_task("video_jigsaw", frame_max_pixels=4000).make(videos["pan130"], np.random.default_rng(0))
    for clip in clips_of(sample):
        for frame in clip["video"]:
            h, w = frame.shape[:2]
            assert h * w <= 4000 and h % 28 == 0 and w % 28 == 0 and frame.dtype == np.uint8
    assert sample.meta["frame_size"] == [56, 28]
    kept = get_task("video_jigsaw").make(videos["pan130"], np.random.default_rng(0))  # 128 x 96 < budget
    assert clips_of(kept)[0]["video"][0].shape == (96, 128, 3)


def test_prompt_states_clips_labels_and_format(videos: dict[str, Path]) -> None:
    task = get_task("video_jigsaw", clips=4, think=False, min_duration=0)
    sample = task.make(videos["pan48"], np.random.default_rng(0))
    content = sample.messages[0]["content"]
    assert [i["type"] for i in content] == ["text"] + ["text", "video"] * 4 + ["text"]
    texts = texts_of(sample)
    assert texts[0] == (
        "A video was cut into 4 clips of equal length, with a short gap removed between neighbouring clips. "
        "The clips are shown below in shuffled order, each after its label (Clip 1 to Clip 4).\n"
    )
    assert texts[1:5] == ["Clip 1: ", "\nClip 2: ", "\nClip 3: ", "\nClip 4: "]
    assert texts[-1] == (
        "\nPut the clips back in time order: give the clip labels from the earliest clip to the latest, as 4 "
        "comma-separated numbers. If, say, Clip 2 holds the start of the video and Clip 1 its end, the answer begins "
        "with 2 and ends with 1. Answer with only <answer>labels</answer>. Example of the format for 4 clips: "
        "<answer>2, 4, 1, 3</answer>"
    )
    others = [task.make(videos["pan48"], np.random.default_rng(s)) for s in range(1, 8)]
    assert len({tuple(s.answer) for s in others}) > 1 and {tuple(texts_of(s)) for s in others} == {tuple(texts)}
    boxed = get_task("video_jigsaw", clips=4, answer_mode="boxed", min_duration=0).make(
        videos["pan48"], np.random.default_rng(0)
    )
    assert texts_of(boxed)[-1].endswith(
        "Think inside <think></think>, then answer with \\boxed{labels}. "
        "Example of the format for 4 clips: \\boxed{2, 4, 1, 3}"
    )


def test_meta(videos: dict[str, Path]) -> None:
    sample = get_task("video_jigsaw").make(videos["pan130"], np.random.default_rng(0))
    m = sample.meta
    assert (m["source"], m["clips"], m["num_frames"], m["source_fps"]) == ("pan130.mp4", 6, 130, FPS)
    assert (m["skip"], m["clip_length"], m["trim"]) == (10, 20, 2) and m["clip_ranges"][0] == [12, 28]
    assert m["frame_indices"][0] == [12, 17, 22, 27] and sorted(m["order"]) == list(range(6))
    assert sample.id.startswith("video_jigsaw-pan130.mp4-") and sample.task == "video_jigsaw"


# --------------------------------------------------------------------------------------------------
# Skips, errors, sources, determinism


def test_too_short_videos_are_skipped(tmp_path: Path, videos: dict[str, Path]) -> None:
    short = pan_video(tmp_path / "short.mp4", 20, (64, 48))
    with pytest.raises(SkipItem, match="short.mp4") as info:
        get_task("video_jigsaw").make(short, np.random.default_rng(0))  # 20 mod 60 = 20: nothing left
    assert info.value.reason == "video_too_short"
    # a 48-frame video (without the duration check): too short for 6 clips, 4 clips of 8 frames work
    with pytest.raises(SkipItem, match="need at least 2 per clip"):
        get_task("video_jigsaw", min_duration=0).make(videos["pan48"], np.random.default_rng(0))
    sample = get_task("video_jigsaw", clips=4, min_duration=0).make(videos["pan48"], np.random.default_rng(0))
    assert [len(c["video"]) for c in clips_of(sample)] == [2] * 4
    with pytest.raises(SkipItem, match="need at least 9"):
        get_task("video_jigsaw", clips=4, min_frames_per_clip=9, min_duration=0).make(
            videos["pan48"], np.random.default_rng(0)
        )


def test_videos_shorter_than_min_duration_are_skipped(tmp_path: Path, videos: dict[str, Path]) -> None:
    """Issue 12: a 5 s video was cut into 6 clips of 2 frames each (0.67 s per clip). `min_duration` (12 s by
    default) skips it; the default corpus's 15 s videos (120 frames at 8 fps) are kept."""
    image = media.load_image(CHELSEA)
    frames = list(camera_motion_frames(image, "pan_right", 150, (128, 96), np.random.default_rng(0)))
    five = write_video(tmp_path / "five_seconds.mp4", frames, 30.0)  # 150 frames at 30 fps
    task = get_task("video_jigsaw")
    with pytest.raises(SkipItem, match=r"five_seconds.mp4: 5.00 s .* shorter than min_duration 12 s") as info:
        task.make(five, np.random.default_rng(0))
    assert info.value.reason == "video_too_short"
    before = get_task("video_jigsaw", min_duration=0).make(five, np.random.default_rng(0))  # what it used to make
    assert [len(c["video"]) for c in clips_of(before)] == [2] * 6
    with pytest.raises(SkipItem, match="shorter than min_duration"):
        task.make(videos["pan48"], np.random.default_rng(0))  # 6 s
    corpus_like = pan_video(tmp_path / "fifteen_seconds.mp4", 120)  # the default corpus: 15 s at 8 fps
    sample = task.make(corpus_like, np.random.default_rng(0))
    assert [len(c["video"]) for c in clips_of(sample)] == [4] * 6 and sample.meta["duration"] == 15.0
    with pytest.raises(SkipItem, match="shorter than min_duration 24 s"):
        get_task("video_jigsaw", min_duration=24).make(corpus_like, np.random.default_rng(0))  # the paper's filter
    with pytest.raises(ConfigError, match="min_duration"):
        get_task("video_jigsaw", min_duration=-1)


def test_unreadable_videos_raise_media_error_naming_them(tmp_path: Path) -> None:
    task = get_task("video_jigsaw")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(MediaError, match="empty.mp4"):
        task.make(tmp_path / "empty.mp4", np.random.default_rng(0))
    (tmp_path / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(MediaError, match="garbage.mp4"):
        task.make(tmp_path / "garbage.mp4", np.random.default_rng(0))
    with pytest.raises(MediaError, match="missing.mp4"):
        task.make(tmp_path / "missing.mp4", np.random.default_rng(0))


def test_sources(tmp_path: Path, videos: dict[str, Path]) -> None:
    task = get_task("video_jigsaw")
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(videos["pan48"].read_bytes())
    items = task.sources(folder)
    assert [i.id for i in items] == ["a.mp4"] and task.sources(str(folder)) == items
    assert task.sources(Corpus(root=tmp_path, photos=[], videos=items, rgbd=[], manifest={})) == items
    with pytest.raises(ConfigError, match="needs source videos"):
        task.sources(None)
    sample = get_task("video_jigsaw", clips=4, min_duration=0).make(items[0], np.random.default_rng(0))
    assert sample.meta["source"] == "a.mp4"


def test_same_seed_same_bytes_different_seed_differs(tmp_path: Path, videos: dict[str, Path]) -> None:
    task = get_task("video_jigsaw", frame_max_pixels=4000)
    first = write_samples(task, videos["pan130"], tmp_path / "a", 1, n=2)
    assert write_samples(task, videos["pan130"], tmp_path / "b", 1, n=2) == first
    assert write_samples(task, videos["pan130"], tmp_path / "c", 2, n=2) != first


def test_dataset_round_trip_and_reward(tmp_path: Path, videos: dict[str, Path]) -> None:
    task = get_task("video_jigsaw", clips=4, think=False, min_duration=0)
    sample = task.make(videos["pan48"], np.random.default_rng(0))
    (back,) = read_dataset(write_dataset([sample], tmp_path / "ds"))
    assert back.answer == sample.answer and back.meta == sample.meta
    for original, loaded in zip(clips_of(sample), clips_of(back)):
        assert loaded["timestamps"] == original["timestamps"] and loaded["fps"] == original["fps"]
        frames = [np.asarray(Image.open(f)) for f in loaded["video"]]
        assert all(np.array_equal(a, b) for a, b in zip(frames, original["video"]))  # PNG frames: lossless
    assert task.reward(answer_text(back.answer), back).score == 1.0
    assert task.reward(task.reference_completion(back), back).score == 1.0
    wrong = back.answer[1:] + back.answer[:1]
    assert task.reward(answer_text(wrong), back).score == pytest.approx(1 / 6)  # K = 4: no partial credit
    assert task.reward("\\boxed{" * 3000, back).score == 0.0


def test_params_dataclass_documents_every_field() -> None:
    from mmrl.config import field_docs

    docs = field_docs(VideoJigsawParams)
    assert all(docs.get(f) for f in VideoJigsawParams.__dataclass_fields__), docs


# --------------------------------------------------------------------------------------------------
# The real processor and the tiny model


def test_samples_encode_and_generate_with_the_tiny_model(videos: dict[str, Path]) -> None:
    cfg = ModelConfig()
    model, processor = load_policy(cfg, device="cpu")
    task = get_task("video_jigsaw", clips=3, max_frames_per_clip=2, think=False, min_duration=0)
    sample = task.make(videos["pan40"], np.random.default_rng(0))
    assert [len(c["video"]) for c in clips_of(sample)] == [2, 2, 2]
    prompt = encode_prompt(processor, sample.messages, cfg, max_prompt_tokens=4096)
    assert prompt.vision["video_grid_thw"].shape[0] == 3  # three separate videos
    assert int((prompt.input_ids == processor.video_token_id).sum()) == prompt.num_visual_tokens > 0
    assert "Clip 2: <|vision_start|><|video_pad|>" in prompt.text
    engine = HFEngine(model.eval(), processor, batch_size=4, seed=0)
    (completions,) = engine.generate([prompt], 2, SamplingParams(max_new_tokens=8, temperature=1.0, seed=0))
    assert len(completions) == 2
    for c in completions:
        assert 1 <= len(c.token_ids) <= 8 and 0.0 <= task.reward(c.text, sample).score <= 1.0
