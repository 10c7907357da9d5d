"""Tests for mmrl.video on small real files written to tmp_path (no mocks of decord or PyAV)."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from mmrl.errors import MediaError
from mmrl.video import read_frames, read_video, video_info, write_video

N_FRAMES, FPS, H, W = 30, 10.0, 64, 96


def _frames() -> np.ndarray:
    """Frame i: a horizontal brightness ramp offset by 6 * i, plus a red square moving right."""
    frames = np.empty((N_FRAMES, H, W, 3), np.uint8)
    ramp = np.linspace(0, 60, W)[None, :, None]
    for i in range(N_FRAMES):
        frames[i] = np.clip(ramp + 20 + 6 * i, 0, 255).astype(np.uint8)
        frames[i, 24:40, 2 * i : 2 * i + 16] = (255, 0, 0)
    return frames


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return _frames()


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory, source: np.ndarray) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", source, FPS)


def _best_match(decoded: np.ndarray, source: np.ndarray) -> list[int]:
    """Index of the source frame closest to each decoded frame."""
    errors = np.abs(decoded[:, None].astype(np.int16) - source[None].astype(np.int16)).mean(axis=(2, 3, 4))
    return errors.argmin(axis=1).tolist()


def test_video_round_trip_reads_every_frame(video: Path, source: np.ndarray) -> None:
    out = read_video(video)

    assert out.frames.shape == (N_FRAMES, H, W, 3) and out.frames.dtype == np.uint8
    assert out.source_fps == pytest.approx(FPS)
    np.testing.assert_array_equal(out.indices, np.arange(N_FRAMES))
    np.testing.assert_allclose(out.timestamps, np.arange(N_FRAMES) / FPS, atol=1e-9)
    assert out.path == str(video)
    assert np.abs(out.frames.astype(int) - source).mean() < 3  # lossy codec, but close
    assert _best_match(out.frames, source) == list(range(N_FRAMES))


def test_video_info(video: Path) -> None:
    info = video_info(video)
    assert (info.num_frames, info.width, info.height) == (N_FRAMES, W, H)
    assert info.fps == pytest.approx(FPS) and info.duration == pytest.approx(N_FRAMES / FPS)
    assert info.path == str(video)


def test_read_video_num_frames_takes_bin_centres(video: Path, source: np.ndarray) -> None:
    out = read_video(video, num_frames=4)
    np.testing.assert_array_equal(out.indices, [3, 11, 18, 26])  # floor((j + 0.5) * 30 / 4)
    np.testing.assert_allclose(out.timestamps, out.indices / FPS)
    assert _best_match(out.frames, source) == [3, 11, 18, 26]


def test_read_video_fps_and_max_frames(video: Path, source: np.ndarray) -> None:
    out = read_video(video, fps=2.5)  # one frame every 0.4 s = every 4th frame
    np.testing.assert_array_equal(out.indices, np.arange(0, N_FRAMES, 4))
    assert _best_match(out.frames, source) == out.indices.tolist()

    capped = read_video(video, fps=2.5, max_frames=4)
    assert len(capped.indices) == 4 and set(capped.indices) <= set(out.indices)
    assert np.all(np.diff(capped.indices) > 0)
    assert len(read_video(video, max_frames=7).indices) == 7

    faster = read_video(video, fps=25)  # above the source rate: each frame once
    np.testing.assert_array_equal(faster.indices, np.arange(N_FRAMES))


def test_read_video_window(video: Path, source: np.ndarray) -> None:
    out = read_video(video, start=1.0, end=2.0)
    np.testing.assert_array_equal(out.indices, np.arange(10, 20))
    assert np.all((out.timestamps >= 1.0) & (out.timestamps < 2.0))
    assert _best_match(out.frames, source) == list(range(10, 20))

    for kwargs in ({"num_frames": 3}, {"fps": 3.0}, {"fps": 1.7, "max_frames": 2}):
        sampled = read_video(video, start=0.95, end=2.05, **kwargs)
        assert np.all((sampled.timestamps >= 0.95) & (sampled.timestamps < 2.05)), kwargs
        assert np.all(np.diff(sampled.indices) > 0)
    assert len(read_video(video, start=0.95, end=2.05, num_frames=3).indices) == 3

    tail = read_video(video, start=2.5, end=99.0)  # end past the video is clipped
    np.testing.assert_array_equal(tail.indices, np.arange(25, 30))


def test_read_video_window_errors_name_the_file(video: Path) -> None:
    with pytest.raises(MediaError, match="no frames in window") as info:
        read_video(video, start=5.0)
    assert str(video) in str(info.value)
    with pytest.raises(MediaError, match="fewer than num_frames") as info:
        read_video(video, start=1.0, end=1.5, num_frames=6)
    assert str(video) in str(info.value)
    with pytest.raises(ValueError):
        read_video(video, num_frames=3, fps=2.0)
    with pytest.raises(ValueError):
        read_video(video, start=2.0, end=1.0)


# Writes the frames in sys.argv[1] (.npy) four times into folder sys.argv[2], in a fresh process.
_WRITER = """
import sys
import numpy as np
from mmrl.video import write_video
frames = np.load(sys.argv[1])
for run in range(4):
    write_video(f"{sys.argv[2]}/fresh{run}.mp4", frames, 10.0)
"""


def test_write_video_is_byte_identical_across_runs(tmp_path: Path, source: np.ndarray, video: Path) -> None:
    # A full-range ramp with a moving square: with x264's mbtree on, successive writes of it
    # in one fresh process gave different bytes (while under pytest they happened to match).
    ramp = np.zeros((N_FRAMES, H, W, 3), np.uint8)
    ramp[:] = np.linspace(0, 255, W, dtype=np.uint8)[None, None, :, None]
    for i in range(N_FRAMES):
        ramp[i, 20:36, 2 * i : 2 * i + 16] = (255, 0, 0)
    np.save(tmp_path / "ramp.npy", ramp)
    command = [sys.executable, "-c", _WRITER, str(tmp_path / "ramp.npy"), str(tmp_path)]
    subprocess.run(command, check=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    for run in range(2):  # here decord has already read videos: av and decord share the process
        write_video(tmp_path / f"here{run}.mp4", ramp if run else list(ramp), FPS)
        assert len(read_video(tmp_path / f"here{run}.mp4", num_frames=3).indices) == 3
    written = [p.read_bytes() for p in sorted(tmp_path.glob("*.mp4"))]
    assert len(written) == 6
    assert all(data == written[0] for data in written)
    assert write_video(tmp_path / "again.mp4", source, FPS).read_bytes() == video.read_bytes()


def test_decord_width_bug_is_reported_not_returned(tmp_path: Path) -> None:
    # decord 0.6 hands back 4 channels for 48-px-wide frames; we raise instead of returning them.
    path = write_video(tmp_path / "narrow.mp4", np.zeros((2, 32, 48, 3), np.uint8), FPS)
    with pytest.raises(MediaError, match="this width") as info:
        read_video(path)
    assert str(path) in str(info.value)
    wider = write_video(tmp_path / "wider.mp4", np.zeros((2, 32, 50, 3), np.uint8), FPS)
    assert read_video(wider).frames.shape == (2, 32, 50, 3)


def test_write_video_validates_frames(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        write_video(tmp_path / "odd.mp4", np.zeros((2, 63, 96, 3), np.uint8), FPS)
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "float.mp4", np.zeros((2, 64, 96, 3), np.float32), FPS)
    with pytest.raises(ValueError, match="at least one"):
        write_video(tmp_path / "none.mp4", [], FPS)
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "fps.mp4", np.zeros((2, 64, 96, 3), np.uint8), 0)


def test_write_video_non_integer_fps(tmp_path: Path) -> None:
    frames = np.zeros((6, 32, 32, 3), np.uint8)
    out = read_video(write_video(tmp_path / "ntsc.mp4", frames, 30000 / 1001))
    assert len(out.indices) == 6
    assert out.source_fps == pytest.approx(30000 / 1001, rel=1e-4)


def test_threads_reading_at_once_leave_stdout_and_stderr_in_place(video: Path, source: np.ndarray) -> None:
    # Reads redirect fds 1 and 2 to capture native logs; concurrent reads must not leave
    # them pointing at another call's temp file.
    before = [(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in (1, 2)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda k: read_video(video, num_frames=k), range(1, 13)))
    assert [(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in (1, 2)] == before
    assert [len(r.indices) for r in results] == list(range(1, 13))


@pytest.mark.parametrize("cut", [0.5, 0.99])
def test_truncated_video_raises_media_error(tmp_path: Path, video: Path, cut: float) -> None:
    # Cut at half, decord fails while opening; cut near the end, it opens and fails in get_batch.
    data = video.read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(MediaError, match="truncated or corrupt") as info:
        read_video(path)
    assert str(path) in str(info.value)


def test_empty_random_and_missing_videos_raise_media_error(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    empty, noise, missing = tmp_path / "empty.mp4", tmp_path / "noise.mp4", tmp_path / "missing.mp4"
    empty.write_bytes(b"")
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    for path, reason in [(empty, "empty"), (noise, "not a video"), (missing, "not found")]:
        for read in (read_video, video_info):
            with pytest.raises(MediaError, match=reason) as info:
                read(path)
            assert str(path) in str(info.value)
    assert "moov atom" not in capfd.readouterr().err  # FFmpeg's complaint goes into the error, not the console


def test_read_frames_decodes_exactly_the_given_indices(tmp_path):
    frames = np.stack([np.full((32, 64, 3), 8 * i, np.uint8) for i in range(20)])
    path = write_video(tmp_path / "ramp.mp4", frames, fps=10)
    clip = read_frames(path, [15, 3, 7])
    assert clip.indices.tolist() == [15, 3, 7]
    np.testing.assert_allclose(clip.timestamps, [1.5, 0.3, 0.7])
    assert [int(round(f.mean() / 8)) for f in clip.frames] == [15, 3, 7]  # brightness encodes the index
    with pytest.raises(MediaError, match="it has 20 frames"):
        read_frames(path, [19, 20])
