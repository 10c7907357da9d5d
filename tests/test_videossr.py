"""VideoSSR tasks: ground truth checked against the written media, the frame clock, skips, the suite."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import skimage
from PIL import Image
from skimage.measure import label, regionprops

from mmrl import media
from mmrl.baselines import reference_completions
from mmrl.corpus import camera_motion_frames
from mmrl.errors import ConfigError, MediaError, SkipItem
from mmrl.evaluate import evaluate_dataset, format_table
from mmrl.generate import generate, generate_suite
from mmrl.registry import get_task
from mmrl.sample import Sample, read_dataset, write_dataset
from mmrl.suites import suite_entries
from mmrl.video import read_frames, write_video
from pretext_tasks.anomaly_grounding import AnomalyGroundingParams, answer_decimals
from pretext_tasks.perturbations import PERTURBATIONS, frame_change, perturb
from pretext_tasks.videossr import VideoSSRParams, sample_video, window_indices
from pretext_tasks.viu import VIU_GROUNDING_TYPES

CHELSEA = Path(skimage.__file__).parent / "data" / "chelsea.png"
COFFEE = Path(skimage.__file__).parent / "data" / "coffee.png"
FPS = 8.0
SEEDS = range(12)


def pan_frames(photo: Path, n_frames: int, size=(160, 120), seed: int = 0) -> list[np.ndarray]:
    """Frames of a camera pan over a real photo, as the default corpus makes them."""
    return list(camera_motion_frames(media.load_image(photo), "pan_right", n_frames, size, np.random.default_rng(seed)))


def pan_video(path: Path, photo: Path, n_frames: int, size=(160, 120), seed: int = 0) -> Path:
    """A camera pan over a real photo: every frame differs from its neighbours."""
    return write_video(path, pan_frames(photo, n_frames, size, seed), FPS)


def write_mjpeg_avi(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    """The same footage in another container and codec: Motion JPEG at quality 2 (of 31) in an .avi, with PyAV."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuvj420p"
        stream.options = {"flags": "+qscale", "global_quality": str(2 * 118)}  # ffmpeg's -q:v 2
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ssr_videos")
    pan_video(root / "cat.mp4", CHELSEA, 120)
    pan_video(root / "coffee.mp4", COFFEE, 100, seed=1)
    return root


def decoded_source(folder: Path, sample: Sample) -> np.ndarray:
    """The shown frames decoded independently from the source video (the test videos need no resize)."""
    return read_frames(folder / sample.meta["source"], sample.meta["frame_indices"]).frames


def written_videos(sample: Sample) -> list[np.ndarray]:
    """Each video item of a read-back Sample as (T, H, W, 3), from its PNG files, in prompt order."""
    out = []
    for item in sample.media():
        assert item["type"] == "video"
        out.append(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in item["video"]]))
    return out


def round_trip(samples: list[Sample], out: Path) -> list[Sample]:
    return read_dataset(write_dataset(samples, out))


def make_many(task_name: str, folder: Path, seeds=SEEDS, **params) -> list[Sample]:
    task = get_task(task_name, **params)
    items = task.sources(folder)
    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        try:
            out.append(task.make(items[seed % len(items)], rng))
        except SkipItem:
            continue
    return out


# ---------------------------------------------------------------------------------------------- frame pipeline


def test_window_indices_follow_the_sheet() -> None:
    # T = 120: window [6, 114), step 108 // 48 = 2.
    assert window_indices(120, 48, 0.05) == [6 + 2 * i for i in range(48)]
    # T = 100: window [5, 95), step 1.
    assert window_indices(100, 48, 0.05) == list(range(5, 53))
    assert window_indices(53, 48, 0.05) == list(range(2, 50))  # window [2, 50): exactly 48 frames
    assert window_indices(52, 48, 0.05) is None  # window [2, 49): 47


def test_window_boundary_is_exactly_f_frames() -> None:
    n = next(t for t in range(40, 80) if window_indices(t, 48, 0.05) is not None)
    start, end = int(0.05 * n), int(0.95 * n)
    assert end - start >= 48 and int(0.95 * (n - 1)) - int(0.05 * (n - 1)) < 48


def test_sample_video_clock_and_frames(videos: Path) -> None:
    video = sample_video(videos / "cat.mp4", VideoSSRParams())
    assert video.indices == [6 + 2 * i for i in range(48)]
    assert video.sample_fps == pytest.approx(48 / (120 / FPS))  # 3.2 frames per second of the whole video
    assert video.timestamps()[:3] == pytest.approx([0.0, 1 / 3.2, 2 / 3.2])
    np.testing.assert_array_equal(video.frames, read_frames(videos / "cat.mp4", video.indices).frames)


def test_frames_over_the_pixel_budget_are_downscaled(videos: Path) -> None:
    video = sample_video(videos / "cat.mp4", VideoSSRParams(frame_max_pixels=28 * 28 * 4))
    h, w = video.frames.shape[1:3]
    assert h * w <= 28 * 28 * 4 and h % 28 == 0 and w % 28 == 0


def test_short_and_unreadable_videos(tmp_path: Path, videos: Path) -> None:
    short = pan_video(tmp_path / "short.mp4", CHELSEA, 50)
    with pytest.raises(SkipItem) as info:
        sample_video(short, VideoSSRParams())
    assert info.value.reason == "video_too_short"
    assert sample_video(short, VideoSSRParams(frames=16)).frames.shape[0] == 16
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(MediaError, match="empty.mp4"):
        sample_video(empty, VideoSSRParams())


# ---------------------------------------------------------------------------------------------- grounding


@pytest.mark.parametrize("kind", list(PERTURBATIONS))
def test_grounding_answer_interval_is_exactly_the_changed_frames(tmp_path: Path, videos: Path, kind: str) -> None:
    """Written frames inside the answered interval differ from the source frames; all others are identical."""
    samples = round_trip(make_many("anomaly_grounding", videos, range(4), perturbations=[kind]), tmp_path / "ds")
    assert len(samples) == 4
    for sample in samples:
        (shown,) = written_videos(sample)
        source = decoded_source(videos, sample)
        fps = sample.meta["sample_fps"]
        start, end = (float(x) for x in sample.answer.split("-"))
        inside = np.zeros(len(shown), dtype=bool)
        inside[round(start * fps) : round(end * fps)] = True
        changed = np.any(shown.reshape(len(shown), -1) != source.reshape(len(source), -1), axis=1)
        np.testing.assert_array_equal(changed, inside, err_msg=f"{kind}: {sample.answer}")
        assert 8 <= inside.sum() <= 16
        visible = frame_change(source[inside], shown[inside])  # every changed frame clears the threshold
        assert visible.min() >= AnomalyGroundingParams().min_frame_change == 2.0, (kind, visible.min())
        assert sample.meta["smallest_frame_change"] == pytest.approx(visible.min(), abs=1e-3)
        assert PERTURBATIONS[kind].description in sample.messages[-1]["content"][2]["text"]


def test_grounding_reward_on_hand_made_answers(videos: Path) -> None:
    task = get_task("anomaly_grounding")
    (sample,) = make_many("anomaly_grounding", videos, [3])
    start, end = (float(x) for x in sample.answer.split("-"))
    assert task.reward(sample.answer, sample).score == 1.0
    assert task.reward(f"  {start:.1f} - {end:.1f}\n", sample).score == 1.0
    half = (end - start) / 2
    assert task.reward(f"{start + half:.4f}-{end + half:.4f}", sample).score == pytest.approx(1 / 3, abs=1e-3)
    for bad in [f"{start:.1f} to {end:.1f}", f"{end:.1f}-{start:.1f}", "", "The anomaly is in the middle.",
                f"{start:.1f}-{end:.1f} s", "x" * 10_000]:  # fmt: skip
        assert task.reward(bad, sample).score == 0.0, bad


def test_grounding_decimals_name_a_frame_at_any_rate() -> None:
    for fps in (0.5, 3.2, 9.99, 10.0, 24.0, 99.0, 150.0):
        d = answer_decimals(fps)
        for i in range(200):
            assert round(round(i / fps, d) * fps) == i


def test_swap_uses_another_video_and_needs_one(tmp_path: Path, videos: Path) -> None:
    (sample,) = make_many("anomaly_grounding", videos, [0], perturbations=["swap"])
    assert sample.meta["swap_source"] not in (None, sample.meta["source"])
    alone = tmp_path / "alone"
    alone.mkdir()
    pan_video(alone / "only.mp4", CHELSEA, 120)
    task = get_task("anomaly_grounding", perturbations=["swap"])
    with pytest.raises(SkipItem) as info:
        task.make(task.sources(alone)[0], np.random.default_rng(0))
    assert info.value.reason == "no_swap_partner"
    fresh = get_task("anomaly_grounding", perturbations=["swap"])  # no sources() call: the video's folder
    assert fresh.make(videos / "cat.mp4", np.random.default_rng(0)).meta["swap_source"] == "coffee.mp4"


def test_invisible_perturbations_are_skipped(tmp_path: Path) -> None:
    grey = tmp_path / "grey"
    grey.mkdir()
    frames = [np.full((96, 128, 3), 90 + (i % 5), dtype=np.uint8) for i in range(120)]
    write_video(grey / "grey.mp4", frames, FPS)
    task = get_task("anomaly_grounding", perturbations=["channel_swap"])
    with pytest.raises(SkipItem) as info:
        task.make(task.sources(grey)[0], np.random.default_rng(0))
    assert info.value.reason == "perturbation_invisible"


@pytest.mark.parametrize("kind", list(PERTURBATIONS))
def test_every_perturbation_at_default_strength_clears_the_visibility_threshold(videos: Path, kind: str) -> None:
    """Each of the 15 types at strength 1, on the 48 shown frames of camera pans over real photos (the default
    corpus's kind of video), changes every frame of every segment by at least `min_frame_change`, no redraw."""
    threshold = AnomalyGroundingParams().min_frame_change
    cat, coffee = (sample_video(videos / name, VideoSSRParams()).frames for name in ("cat.mp4", "coffee.mp4"))
    for seed in range(12):
        rng = np.random.default_rng(seed)
        frames, other = (cat, coffee) if seed % 2 else (coffee, cat)
        t = int(rng.integers(8, 17))
        s = int(rng.integers(0, 48 - t + 1))
        out = perturb(frames[s : s + t], kind, rng, other=other[s : s + t])
        assert frame_change(frames[s : s + t], out).min() >= threshold, (kind, seed)


def test_a_reencode_of_the_same_footage_is_not_an_anomaly(tmp_path: Path) -> None:
    """Issue 12: a frame counted as changed when any pixel differed, so a Swap partner that was a re-encode of
    the same footage (b.mp4 vs b.avi, a mean difference of 0.5/255) was labelled an anomaly. A perturbed frame
    must now change by `min_frame_change` grey levels on average; the twin is redrawn or the video skipped."""
    frames = pan_frames(CHELSEA, 120, size=(512, 384))  # shrunk to the 256·256 pixel budget when sampled
    twins = tmp_path / "twins"
    write_video(twins / "b.mp4", frames, FPS)  # H.264, crf 18
    write_mjpeg_avi(twins / "b.avi", frames, FPS)  # Motion JPEG
    mp4, avi = (sample_video(twins / name, VideoSSRParams()).frames for name in ("b.mp4", "b.avi"))
    change = frame_change(mp4, avi)
    assert 0.5 < change.min() and change.max() < 2.0  # not the same pixels, but the same footage

    swap = get_task("anomaly_grounding", perturbations=["swap"])
    for item in swap.sources(twins):
        for seed in range(3):
            with pytest.raises(SkipItem, match=r"swap left a segment frame changed by 1\.\d\d grey levels") as info:
                swap.make(item, np.random.default_rng(seed))
            assert info.value.reason == "perturbation_invisible"
    any_pixel = get_task("anomaly_grounding", perturbations=["swap"], min_frame_change=0)  # the old rule
    assert any_pixel.make(twins / "b.mp4", np.random.default_rng(0)).meta["swap_source"] == "b.avi"
    report = generate("anomaly_grounding", params={"perturbations": ["swap", "mirror"]}, source=twins, n=6,
                      seed=0, out=tmp_path / "out", progress=False)  # fmt: skip
    assert report.written == 6 and report.skipped.get("perturbation_invisible", 0) > 0  # counted by reason
    assert {s.meta["perturbation"] for s in read_dataset(tmp_path / "out")} == {"mirror"}

    write_video(twins / "c.mp4", pan_frames(COFFEE, 120, size=(512, 384)), FPS)  # other footage
    items = swap.sources(twins)
    b_mp4 = next(i for i in items if i.id == "b.mp4")
    for seed in range(6):  # the twin is drawn about half the time and then redrawn: the partner is always c
        sample = swap.make(b_mp4, np.random.default_rng(seed))
        assert sample.meta["swap_source"] == "c.mp4" and sample.meta["smallest_frame_change"] >= 2.0


def test_grounding_params_are_checked() -> None:
    with pytest.raises(ConfigError, match="unknown or no perturbations"):
        get_task("anomaly_grounding", perturbations=["sepia"])
    with pytest.raises(ConfigError, match="segment_frames"):
        get_task("anomaly_grounding", segment_frames=[8, 60])
    with pytest.raises(ConfigError, match="strength"):
        get_task("anomaly_grounding", strength=0)
    with pytest.raises(ConfigError, match="min_frame_change"):
        get_task("anomaly_grounding", min_frame_change=-1)


def test_subtle_strength_changes_less(videos: Path) -> None:
    video = sample_video(videos / "cat.mp4", VideoSSRParams())
    segment = video.frames[:8].astype(float)
    for kind in ("noise", "zoom_in", "zoom_out", "blur", "saturation"):
        full = perturb(video.frames[:8], kind, np.random.default_rng(0)).astype(float)
        subtle = perturb(video.frames[:8], kind, np.random.default_rng(0), strength=0.3).astype(float)
        assert np.abs(subtle - segment).mean() < np.abs(full - segment).mean(), kind


# ---------------------------------------------------------------------------------------------- counting


def kind_of(region) -> str:
    """Shape kind from the pixels alone: area / (max centroid distance)² is π (circle), 2 (square), 1.30 (triangle)."""
    coords = region.coords.astype(float)
    r_max = np.sqrt(((coords - coords.mean(axis=0)) ** 2).sum(axis=1)).max() + 0.5
    ratio = region.area / r_max**2
    return "circle" if ratio > 2.55 else "square" if ratio > 1.62 else "triangle"


@pytest.mark.slow
def test_counting_answer_is_the_connected_components_of_the_drawn_masks(tmp_path: Path, videos: Path) -> None:
    samples = round_trip(make_many("object_counting", videos), tmp_path / "ds")
    assert len(samples) == len(SEEDS)
    for sample in samples:
        (shown,) = written_videos(sample)
        source = decoded_source(videos, sample)
        counts = dict.fromkeys(sample.meta["shapes"], 0)
        frames_with_shapes = 0
        for frame, src in zip(shown, source):
            drawn = np.any(frame != src, axis=-1)
            if not drawn.any():
                continue
            frames_with_shapes += 1
            regions = [
                r for r in regionprops(label(drawn, connectivity=2)) if r.area > 4
            ]  # a pixel can match by chance
            kinds = {kind_of(r) for r in regions}
            assert len(kinds) == 1, f"{sample.id}: one kind per frame, found {kinds}"
            counts[kinds.pop()] += len(regions)
        answer = [int(x) for x in sample.answer.split(",")]
        assert list(counts.values()) == answer, sample.id
        assert all(1 <= c <= 9 for c in answer) and frames_with_shapes <= 9


def test_counting_frames_of_one_kind_are_far_apart(videos: Path) -> None:
    for sample in make_many("object_counting", videos):
        by_kind: dict[str, list[int]] = {}
        for d in sample.meta["drawn"]:
            by_kind.setdefault(d["shape"], []).append(d["frame"])
        frames = [f for fs in by_kind.values() for f in fs]
        assert len(frames) == len(set(frames))  # one kind per frame
        for fs in by_kind.values():
            assert all(abs(a - b) > 8 for a in fs for b in fs if a != b)


def test_counting_reward_and_parameters(videos: Path) -> None:
    task = get_task("object_counting")
    (sample,) = make_many("object_counting", videos, [5])
    g = [int(x) for x in sample.answer.split(",")]
    assert task.reward(sample.answer, sample).score == 1.0
    assert task.reward(f"circles {g[0]}, squares {g[1]}, triangles {g[2]}", sample).score == 1.0
    off = [g[0] + 1, g[1], g[2]]
    assert task.reward(",".join(map(str, off)), sample).score == pytest.approx((1 - 1 / g[0] + 2) / 3)
    for bad in ["", "3,1", "3,1,4,1", "three, one, four", "-1,2,3"]:
        assert task.reward(bad, sample).score == 0.0
    with pytest.raises(ConfigError, match="may not fit"):
        get_task("object_counting", frames=16)
    with pytest.raises(ConfigError, match="shapes"):
        get_task("object_counting", shapes=["hexagon"])
    two = make_many("object_counting", videos, [1], shapes=["triangle", "circle"])[0]
    assert len(two.answer.split(",")) == 2 and "order triangles, circles" in two.messages[-1]["content"][2]["text"]


# ---------------------------------------------------------------------------------------------- temporal jigsaw


@pytest.mark.parametrize("clips", [6, 8])
@pytest.mark.slow
def test_reordering_clips_by_the_answer_restores_the_source_order(tmp_path: Path, videos: Path, clips: int) -> None:
    samples = round_trip(make_many("temporal_jigsaw", videos, clips=clips), tmp_path / "ds")
    for sample in samples:
        shown = written_videos(sample)  # by label: shown[j] is "Clip j+1"
        restored = np.concatenate([shown[label - 1] for label in sample.answer])
        source = decoded_source(videos, sample)
        length = 48 // clips
        np.testing.assert_array_equal(restored, source[: clips * length])
        assert [len(c) for c in shown] == [length] * clips
        # no trim and no order leak: every clip's timestamps start at 0
        assert all(item["timestamps"][0] == 0.0 for item in sample.media())


def test_temporal_jigsaw_reward_is_the_footrule(videos: Path) -> None:
    task = get_task("temporal_jigsaw")
    (sample,) = make_many("temporal_jigsaw", videos, [2])
    truth = list(sample.answer)
    assert task.reward(", ".join(map(str, truth)), sample).score == 1.0
    assert task.reward(", ".join(map(str, truth[::-1])), sample).score == 0.0  # full reversal: D = 18
    swapped = truth[:]
    swapped[0], swapped[1] = swapped[1], swapped[0]
    assert task.reward(", ".join(map(str, swapped)), sample).score == pytest.approx(1 - 2 / 18)
    assert task.reward("1, 1, 2, 3, 4, 5", sample).score == 0.0
    exact = get_task("temporal_jigsaw", footrule=False, gamma=0.0)
    assert exact.reward(", ".join(map(str, swapped)), sample).score == 0.0


# ---------------------------------------------------------------------------------------------- determinism, skips


@pytest.mark.parametrize("task_name", ["anomaly_grounding", "object_counting", "temporal_jigsaw"])
def test_same_seed_same_bytes(tmp_path: Path, videos: Path, task_name: str) -> None:
    def digest(out: Path) -> str:
        h = hashlib.sha256()
        for f in sorted(p for p in out.rglob("*") if p.is_file()):
            h.update(f.relative_to(out).as_posix().encode() + f.read_bytes())
        return h.hexdigest()

    runs = [generate(task_name, n=3, out=tmp_path / name, source=videos, seed=seed, progress=False)
            for name, seed in (("a", 0), ("b", 0), ("c", 1))]  # fmt: skip
    assert runs[0].written == 3
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")


@pytest.mark.parametrize("task_name", ["anomaly_grounding", "object_counting", "temporal_jigsaw"])
def test_bad_videos_are_skipped_and_counted(tmp_path: Path, videos: Path, task_name: str) -> None:
    src = tmp_path / "src"
    src.mkdir()
    good = src / "good.mp4"
    good.write_bytes((videos / "cat.mp4").read_bytes())
    (src / "zero.mp4").write_bytes(b"")
    data = (videos / "coffee.mp4").read_bytes()
    (src / "truncated.mp4").write_bytes(data[: len(data) // 3])
    pan_video(src / "short.mp4", CHELSEA, 30)
    report = generate(task_name, n=6, out=tmp_path / "out", source=src, seed=0, progress=False)
    assert report.written == 6
    assert report.skipped.get("video_too_short", 0) > 0 and report.skipped.get("unreadable_media", 0) > 0
    assert report.attempts == 6 + sum(report.skipped.values())
    assert {s.meta["source"] for s in read_dataset(tmp_path / "out")} == {"good.mp4"}
    assert json.loads((tmp_path / "out" / "generation.json").read_text())["skipped"] == report.skipped


# ---------------------------------------------------------------------------------------------- the viu suite


def test_viu_suite_blocks_and_overrides() -> None:
    entries = suite_entries("viu")
    keys = [e.key for e in entries]
    assert len(keys) == len(set(keys)) == 2 + 2 * len(VIU_GROUNDING_TYPES) + 2
    assert {e.split for e in entries} == {"easy", "hard"}
    small = suite_entries("viu", {"frames": 16, "min_frame_gap": 2})
    assert all(e.params["frames"] == 16 for e in small)
    assert all(("min_frame_gap" in e.params) == (e.task == "object_counting") for e in small)
    with pytest.raises(ConfigError, match="no task has parameter"):
        suite_entries("viu", {"framez": 16})


def test_viu_suite_writes_splits_and_evaluates_per_task_and_split(tmp_path: Path, videos: Path) -> None:
    params = {"frames": 24, "min_frame_gap": 3}
    report = generate_suite("viu", n=1, out=tmp_path / "viu", source=videos, params=params, progress=False)
    samples = read_dataset(tmp_path / "viu")
    assert report.written == len(samples) == len(suite_entries("viu"))
    assert len({s.id for s in samples}) == len(samples) and all(s.meta["suite"] == "viu" for s in samples)
    hard_jigsaw = next(s for s in samples if s.task == "temporal_jigsaw" and s.meta["split"] == "hard")
    assert len(hard_jigsaw.answer) == 8
    again = generate_suite("viu", n=1, out=tmp_path / "again", source=videos, params=params, progress=False)
    assert again.written == report.written
    assert (tmp_path / "viu" / "samples.jsonl").read_bytes() == (tmp_path / "again" / "samples.jsonl").read_bytes()
    result = evaluate_dataset(None, None, samples, completions=reference_completions(samples), baseline_draws=4)
    table = result["groups"]["task/split"]
    assert set(table) == {f"{t}/{s}" for t in ("anomaly_grounding", "object_counting", "temporal_jigsaw")
                          for s in ("easy", "hard")}  # fmt: skip
    assert all(row["model"]["accuracy"] == 1.0 and row["random"]["accuracy"] < 1.0 for row in table.values())
    assert set(result["groups"]["perturbation/split"]) == {
        f"{k}/{s}" for k in VIU_GROUNDING_TYPES for s in ("easy", "hard")
    }
    assert re.search(r"^temporal_jigsaw/hard +random +1 ", format_table(result), re.M)


# ---------------------------------------------------------------------------------------------- tiny training


@pytest.mark.slow
def test_tiny_training_on_the_three_task_mixture_completes(tmp_path: Path, videos: Path) -> None:
    from mmrl.config import RunConfig, load_config
    from mmrl.grpo.trainer import train
    from mmrl.logging import read_metrics

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(
        RunConfig,
        root / "configs" / "videossr_tiny.yaml",
        [f"train.out_dir={tmp_path / 'run'}", f"sft.out_dir={tmp_path / 'sft'}", "train.cold_start=false",
         "train.steps=3", "data.prompts_per_step=6", "rollout.n=4", "data.eval_samples=3", "log.progress=false"],
    )  # fmt: skip
    for source in cfg.data.sources:
        source.source = str(videos)  # a folder source: no default-corpus build inside the test
    records = [r for r in read_metrics(train(cfg)) if r["step"] >= 1]
    assert [r["step"] for r in records] == [1, 2, 3]
    seen = {key.split("/")[1] for r in records for key in r if key.count("/") == 1 and key.startswith("reward/")}
    assert {"anomaly_grounding", "object_counting", "temporal_jigsaw"} <= seen
    assert all(0.0 <= r["reward/mean"] <= 1.0 for r in records)
    assert (tmp_path / "run" / "final" / "config.json").is_file()


def test_cli_generate_suite_and_its_errors(tmp_path: Path, videos: Path, capsys) -> None:
    from mmrl.cli import main

    args = ["generate", "--suite", "viu", "--n", "1", "--source", str(videos), "--quiet",
            "--param", "frames=16", "--param", "min_frame_gap=2", "--param", "frames_per_shape=[1,2]"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "viu")]) == 0
    assert "wrote 14 suite:viu samples" in capsys.readouterr().out
    assert len(read_dataset(tmp_path / "viu")) == 14
    assert main([*args, "--out", str(tmp_path / "hf"), "--format", "hf"]) == 2
    assert "--suite writes the native jsonl format" in capsys.readouterr().err
    assert main(["generate", "--suite", "viu", "--n", "1", "--out", str(tmp_path / "x"), "--param", "framez=3"]) == 2
    assert "no task has parameter" in capsys.readouterr().err
