"""Tests for mmrl.media on small real files written to tmp_path (no mocks of the media libraries)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
from PIL import Image
from qwen_vl_utils import smart_resize as qwen_smart_resize

from mmrl import media
from mmrl.errors import MediaError

# ---------------------------------------------------------------------------- images


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def test_load_image_applies_exif_orientation(tmp_path: Path) -> None:
    # Stored 40 wide x 20 high: left half red, right half blue. Orientation 6 means
    # "rotate 90 degrees clockwise to display", so it shows 20 wide x 40 high, red on top.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :20] = (255, 0, 0)
    stored[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(Image.fromarray(stored), tmp_path / "rotated.jpg", exif=exif, quality=95)

    image = media.load_image(path)

    assert image.mode == "RGB"
    assert image.size == (20, 40)
    pixels = np.asarray(image).astype(int)
    assert pixels[5, 10, 0] > 200 and pixels[5, 10, 2] < 60  # top: red
    assert pixels[35, 10, 2] > 200 and pixels[35, 10, 0] < 60  # bottom: blue


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: Image.new("L", (8, 6), 77), (77, 77, 77)),
        (lambda: Image.new("RGBA", (8, 6), (200, 0, 0, 0)), (255, 255, 255)),  # transparent -> white
        (lambda: Image.new("RGBA", (8, 6), (200, 10, 20, 255)), (200, 10, 20)),
        (lambda: Image.new("LA", (8, 6), (0, 128)), (127, 127, 127)),  # black at half alpha over white
        (lambda: Image.new("RGB", (8, 6), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE), (10, 200, 30)),
        (lambda: Image.fromarray(np.full((6, 8), 65535, np.uint16)), (255, 255, 255)),  # I;16
        (lambda: Image.fromarray(np.full((6, 8), 257 * 100, np.uint16)), (100, 100, 100)),
        (lambda: Image.new("CMYK", (8, 6), (0, 255, 255, 0)), (255, 0, 0)),
    ],
    ids=["L", "RGBA-clear", "RGBA-opaque", "LA", "P", "I16-max", "I16-mid", "CMYK"],
)
def test_load_image_converts_modes_to_rgb(tmp_path: Path, make, expected) -> None:
    source = make()
    suffix = ".tif" if source.mode == "CMYK" else ".png"
    path = _save(source, tmp_path / f"image{suffix}")

    image = media.load_image(path)

    assert image.mode == "RGB" and image.size == (8, 6)
    np.testing.assert_allclose(np.asarray(image)[3, 4], expected, atol=2)


def test_load_image_transparent_palette_composites_over_white(tmp_path: Path) -> None:
    palette = Image.new("P", (4, 4), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((0, 0), 1)
    path = _save(palette, tmp_path / "p.png", transparency=0)  # palette index 0 (black) is transparent

    pixels = np.asarray(media.load_image(path))

    assert tuple(pixels[0, 0]) == (255, 0, 0)
    assert tuple(pixels[2, 2]) == (255, 255, 255)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_image_raises_media_error_naming_file(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    whole = _save(noise, tmp_path / f"whole{suffix}")
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])

    assert media.load_image(whole).size == (64, 64)
    with pytest.raises(MediaError, match="cannot decode image") as info:
        media.load_image(cut)
    assert str(cut) in str(info.value)


def test_missing_empty_and_non_image_files_raise_media_error(tmp_path: Path) -> None:
    missing, empty, text = tmp_path / "missing.png", tmp_path / "empty.png", tmp_path / "text.jpg"
    empty.write_bytes(b"")
    text.write_text("not an image")
    for path, reason in [(missing, "not found"), (empty, "empty"), (text, "cannot decode"), (tmp_path, "not a file")]:
        with pytest.raises(MediaError, match=reason) as info:
            media.load_image(path)
        assert str(path) in str(info.value)


# ---------------------------------------------------------------------- smart_resize

SIZES = [1, 5, 27, 28, 29, 42, 55, 56, 57, 100, 223, 224, 225, 333, 479, 480, 640, 719, 1080, 1920, 3000, 4032]
BUDGETS = [
    (56 * 56, 28 * 28 * 1280),
    (4 * 28 * 28, 256 * 28 * 28),
    (128 * 128, 512 * 512),
    (4 * 32 * 32, 16384 * 32 * 32),
]


@pytest.mark.parametrize("factor", [media.QWEN2_VL_FACTOR, media.QWEN3_VL_FACTOR])
def test_smart_resize_matches_qwen_vl_utils(factor: int) -> None:
    compared = 0
    for (h, w), (lo, hi) in itertools.product(itertools.product(SIZES, SIZES), BUDGETS):
        if max(h, w) / min(h, w) > 200:
            with pytest.raises(ValueError, match="aspect ratio"):
                media.smart_resize(h, w, factor, lo, hi)
            continue
        expected = qwen_smart_resize(h, w, factor, min_pixels=lo, max_pixels=hi)
        if min(expected) < factor:
            continue  # qwen-vl-utils can floor a side to 0 at extreme ratios; we keep >= factor
        assert media.smart_resize(h, w, factor, lo, hi) == expected, (h, w, lo, hi)
        compared += 1
    assert compared > 1500


@pytest.mark.parametrize("factor", [28, 32])
def test_smart_resize_respects_budget_and_factor(factor: int) -> None:
    lo, hi = 16 * factor * factor, 1024 * factor * factor
    for h, w in itertools.product([30, 100, 333, 720, 1080, 1999, 4000], repeat=2):
        rh, rw = media.smart_resize(h, w, factor, lo, hi)
        assert rh % factor == 0 and rw % factor == 0
        assert rh >= factor and rw >= factor
        assert lo <= rh * rw <= hi, (h, w, rh, rw)
        if min(h, w) >= 100:
            assert abs(np.log((rh / rw) / (h / w))) < 0.35  # aspect ratio roughly kept
    # Extreme ratio with a tiny budget: qwen-vl-utils floors the narrow side to 0; we clamp it
    # to one factor like transformers' Qwen2-VL processor (which then exceeds max_pixels).
    expected = {28: (28, 1540), 32: (32, 1760)}[factor]
    assert media.smart_resize(20, 3900, factor, 4 * factor * factor, 16 * factor * factor) == expected


def test_smart_resize_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="aspect ratio"):
        media.smart_resize(10, 2010)
    with pytest.raises(ValueError, match="positive"):
        media.smart_resize(0, 10)
    with pytest.raises(ValueError, match="min_pixels"):
        media.smart_resize(100, 100, min_pixels=1000, max_pixels=10)


def test_resize_to_budget_uses_smart_resize() -> None:
    image = Image.new("RGB", (1000, 700), (9, 8, 7))
    resized = media.resize_to_budget(image, min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28)
    h, w = media.smart_resize(700, 1000, 28, 4 * 28 * 28, 64 * 28 * 28)
    assert resized.size == (w, h) and resized.size != image.size
    assert w * h <= 64 * 28 * 28
    assert resized.getpixel((3, 3)) == (9, 8, 7)
    small = media.resize_to_budget(Image.new("RGB", (20, 10)), 128 * 128, 512 * 512, factor=32)
    assert small.size[0] % 32 == 0 and small.size[1] % 32 == 0 and small.size[0] * small.size[1] >= 128 * 128


# ----------------------------------------------------------------------------- video

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
    return media.write_video(tmp_path_factory.mktemp("video") / "clip.mp4", source, FPS)


def _best_match(decoded: np.ndarray, source: np.ndarray) -> list[int]:
    """Index of the source frame closest to each decoded frame."""
    errors = np.abs(decoded[:, None].astype(np.int16) - source[None].astype(np.int16)).mean(axis=(2, 3, 4))
    return errors.argmin(axis=1).tolist()


def test_video_round_trip_reads_every_frame(video: Path, source: np.ndarray) -> None:
    out = media.read_video(video)

    assert out.frames.shape == (N_FRAMES, H, W, 3) and out.frames.dtype == np.uint8
    assert out.source_fps == pytest.approx(FPS)
    np.testing.assert_array_equal(out.indices, np.arange(N_FRAMES))
    np.testing.assert_allclose(out.timestamps, np.arange(N_FRAMES) / FPS, atol=1e-9)
    assert out.path == str(video)
    assert np.abs(out.frames.astype(int) - source).mean() < 3  # lossy codec, but close
    assert _best_match(out.frames, source) == list(range(N_FRAMES))


def test_video_info(video: Path) -> None:
    info = media.video_info(video)
    assert (info.num_frames, info.width, info.height) == (N_FRAMES, W, H)
    assert info.fps == pytest.approx(FPS) and info.duration == pytest.approx(N_FRAMES / FPS)
    assert info.path == str(video)


def test_read_video_num_frames_takes_bin_centres(video: Path, source: np.ndarray) -> None:
    out = media.read_video(video, num_frames=4)
    np.testing.assert_array_equal(out.indices, [3, 11, 18, 26])  # floor((j + 0.5) * 30 / 4)
    np.testing.assert_allclose(out.timestamps, out.indices / FPS)
    assert _best_match(out.frames, source) == [3, 11, 18, 26]


def test_read_video_fps_and_max_frames(video: Path, source: np.ndarray) -> None:
    out = media.read_video(video, fps=2.5)  # one frame every 0.4 s = every 4th frame
    np.testing.assert_array_equal(out.indices, np.arange(0, N_FRAMES, 4))
    assert _best_match(out.frames, source) == out.indices.tolist()

    capped = media.read_video(video, fps=2.5, max_frames=4)
    assert len(capped.indices) == 4 and set(capped.indices) <= set(out.indices)
    assert np.all(np.diff(capped.indices) > 0)
    assert len(media.read_video(video, max_frames=7).indices) == 7

    faster = media.read_video(video, fps=25)  # above the source rate: each frame once
    np.testing.assert_array_equal(faster.indices, np.arange(N_FRAMES))


def test_read_video_window(video: Path, source: np.ndarray) -> None:
    out = media.read_video(video, start=1.0, end=2.0)
    np.testing.assert_array_equal(out.indices, np.arange(10, 20))
    assert np.all((out.timestamps >= 1.0) & (out.timestamps < 2.0))
    assert _best_match(out.frames, source) == list(range(10, 20))

    for kwargs in ({"num_frames": 3}, {"fps": 3.0}, {"fps": 1.7, "max_frames": 2}):
        sampled = media.read_video(video, start=0.95, end=2.05, **kwargs)
        assert np.all((sampled.timestamps >= 0.95) & (sampled.timestamps < 2.05)), kwargs
        assert np.all(np.diff(sampled.indices) > 0)
    assert len(media.read_video(video, start=0.95, end=2.05, num_frames=3).indices) == 3

    tail = media.read_video(video, start=2.5, end=99.0)  # end past the video is clipped
    np.testing.assert_array_equal(tail.indices, np.arange(25, 30))


def test_read_video_window_errors_name_the_file(video: Path) -> None:
    with pytest.raises(MediaError, match="no frames in window") as info:
        media.read_video(video, start=5.0)
    assert str(video) in str(info.value)
    with pytest.raises(MediaError, match="fewer than num_frames") as info:
        media.read_video(video, start=1.0, end=1.5, num_frames=6)
    assert str(video) in str(info.value)
    with pytest.raises(ValueError):
        media.read_video(video, num_frames=3, fps=2.0)
    with pytest.raises(ValueError):
        media.read_video(video, start=2.0, end=1.0)


# Writes the frames in sys.argv[1] (.npy) four times into folder sys.argv[2], in a fresh process.
_WRITER = """
import sys
import numpy as np
from mmrl import media
frames = np.load(sys.argv[1])
for run in range(4):
    media.write_video(f"{sys.argv[2]}/fresh{run}.mp4", frames, 10.0)
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
        media.write_video(tmp_path / f"here{run}.mp4", ramp if run else list(ramp), FPS)
        assert len(media.read_video(tmp_path / f"here{run}.mp4", num_frames=3).indices) == 3
    written = [p.read_bytes() for p in sorted(tmp_path.glob("*.mp4"))]
    assert len(written) == 6
    assert all(data == written[0] for data in written)
    assert media.write_video(tmp_path / "again.mp4", source, FPS).read_bytes() == video.read_bytes()


def test_decord_width_bug_is_reported_not_returned(tmp_path: Path) -> None:
    # decord 0.6 hands back 4 channels for 48-px-wide frames; we raise instead of returning them.
    path = media.write_video(tmp_path / "narrow.mp4", np.zeros((2, 32, 48, 3), np.uint8), FPS)
    with pytest.raises(MediaError, match="this width") as info:
        media.read_video(path)
    assert str(path) in str(info.value)
    wider = media.write_video(tmp_path / "wider.mp4", np.zeros((2, 32, 50, 3), np.uint8), FPS)
    assert media.read_video(wider).frames.shape == (2, 32, 50, 3)


def test_write_video_validates_frames(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="even"):
        media.write_video(tmp_path / "odd.mp4", np.zeros((2, 63, 96, 3), np.uint8), FPS)
    with pytest.raises(ValueError, match="uint8"):
        media.write_video(tmp_path / "float.mp4", np.zeros((2, 64, 96, 3), np.float32), FPS)
    with pytest.raises(ValueError, match="at least one"):
        media.write_video(tmp_path / "none.mp4", [], FPS)
    with pytest.raises(ValueError, match="fps"):
        media.write_video(tmp_path / "fps.mp4", np.zeros((2, 64, 96, 3), np.uint8), 0)


def test_write_video_non_integer_fps(tmp_path: Path) -> None:
    frames = np.zeros((6, 32, 32, 3), np.uint8)
    out = media.read_video(media.write_video(tmp_path / "ntsc.mp4", frames, 30000 / 1001))
    assert len(out.indices) == 6
    assert out.source_fps == pytest.approx(30000 / 1001, rel=1e-4)


def test_threads_reading_at_once_leave_stdout_and_stderr_in_place(video: Path, source: np.ndarray) -> None:
    # Reads redirect fds 1 and 2 to capture native logs; concurrent reads must not leave
    # them pointing at another call's temp file.
    before = [(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in (1, 2)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda k: media.read_video(video, num_frames=k), range(1, 13)))
    assert [(os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in (1, 2)] == before
    assert [len(r.indices) for r in results] == list(range(1, 13))


@pytest.mark.parametrize("cut", [0.5, 0.99])
def test_truncated_video_raises_media_error(tmp_path: Path, video: Path, cut: float) -> None:
    # Cut at half, decord fails while opening; cut near the end, it opens and fails in get_batch.
    data = video.read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(MediaError, match="truncated or corrupt") as info:
        media.read_video(path)
    assert str(path) in str(info.value)


def test_empty_random_and_missing_videos_raise_media_error(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    empty, noise, missing = tmp_path / "empty.mp4", tmp_path / "noise.mp4", tmp_path / "missing.mp4"
    empty.write_bytes(b"")
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    for path, reason in [(empty, "empty"), (noise, "not a video"), (missing, "not found")]:
        for read in (media.read_video, media.video_info):
            with pytest.raises(MediaError, match=reason) as info:
                read(path)
            assert str(path) in str(info.value)
    assert "moov atom" not in capfd.readouterr().err  # FFmpeg's complaint goes into the error, not the console


# -------------------------------------------------------------------------------- 3D


@pytest.mark.parametrize("suffix", [".ply", ".obj", ".off", ".gltf"])
def test_mesh_round_trip(tmp_path: Path, suffix: str) -> None:
    box = o3d.geometry.TriangleMesh.create_box(1.0, 2.0, 3.0)
    path = tmp_path / f"box{suffix}"
    assert o3d.io.write_triangle_mesh(str(path), box)

    mesh = media.load_mesh(path)

    assert len(mesh.triangles) == 12
    np.testing.assert_allclose(mesh.get_max_bound() - mesh.get_min_bound(), [1.0, 2.0, 3.0], atol=1e-6)


@pytest.mark.parametrize("suffix", [".ply", ".pcd", ".xyz", ".xyzrgb"])
def test_point_cloud_round_trip(tmp_path: Path, suffix: str) -> None:
    points = np.random.default_rng(0).random((50, 3))
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    cloud.colors = o3d.utility.Vector3dVector(np.random.default_rng(1).random((50, 3)))
    path = tmp_path / f"cloud{suffix}"
    assert o3d.io.write_point_cloud(str(path), cloud)

    loaded = media.load_point_cloud(path)

    np.testing.assert_allclose(np.asarray(loaded.points), points, atol=1e-5)


@pytest.mark.parametrize("suffix", [".ply", ".obj", ".stl", ".off", ".glb"])
def test_garbage_mesh_raises_media_error(tmp_path: Path, suffix: str, capfd: pytest.CaptureFixture) -> None:
    path = tmp_path / f"garbage{suffix}"
    path.write_bytes(np.random.default_rng(1).bytes(3000))
    with pytest.raises(MediaError) as info:
        media.load_mesh(path)
    assert str(path) in str(info.value)
    assert "Open3D" not in capfd.readouterr().out  # its warning is captured, not printed


def test_truncated_point_cloud_is_not_returned_half_read(tmp_path: Path) -> None:
    # Open3D itself returns all 50 points for this file, the missing ones uninitialised.
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.random.default_rng(0).random((50, 3))))
    whole = tmp_path / "whole.ply"
    assert o3d.io.write_point_cloud(str(whole), cloud)
    cut = tmp_path / "cut.ply"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(MediaError, match="truncated or corrupt") as info:
        media.load_point_cloud(cut)
    assert str(cut) in str(info.value)


def test_3d_files_without_geometry_or_bad_suffix(tmp_path: Path) -> None:
    header = "ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
    no_faces = tmp_path / "points.ply"
    no_faces.write_text(
        header + "element face 0\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n"
    )
    with pytest.raises(MediaError, match="no triangles"):
        media.load_mesh(no_faces)
    assert len(media.load_point_cloud(no_faces).points) == 3  # still a valid point cloud
    points_only = tmp_path / "points.obj"
    points_only.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    with pytest.raises(MediaError, match="cannot read mesh"):
        media.load_mesh(points_only)
    garbage = tmp_path / "garbage.pcd"
    garbage.write_text("hello\n")
    with pytest.raises(MediaError) as info:
        media.load_point_cloud(garbage)
    assert str(garbage) in str(info.value)
    with pytest.raises(MediaError, match="unsupported mesh format"):
        media.load_mesh(_touch(tmp_path / "mesh.fbx"))
    with pytest.raises(MediaError, match="not found"):
        media.load_point_cloud(tmp_path / "missing.ply")


def _touch(path: Path) -> Path:
    path.write_bytes(b"x")
    return path


# ----------------------------------------------------------------------------- depth


def test_depth_round_trip_in_millimetres(tmp_path: Path) -> None:
    depth = np.array([[0.0, 0.5, 1.2344], [np.nan, np.inf, -1.0], [70.0, 2.0, 0.001]], np.float32)
    path = media.save_depth(tmp_path / "depth.png", depth)

    with Image.open(path) as raw:
        stored = np.asarray(raw)
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(stored, [[0, 500, 1234], [0, 0, 0], [65535, 2000, 1]])  # mm, clipped

    loaded = media.load_depth(path)
    assert loaded.dtype == np.float32
    np.testing.assert_allclose(loaded, [[0, 0.5, 1.234], [0, 0, 0], [65.535, 2.0, 0.001]], atol=1e-6)


def test_depth_scale_and_bad_files(tmp_path: Path) -> None:
    path = media.save_depth(tmp_path / "tum.png", np.full((4, 5), 1.5), scale=5000.0)
    np.testing.assert_allclose(media.load_depth(path, scale=5000.0), 1.5)
    np.testing.assert_allclose(media.load_depth(path), 7.5)  # same file read as millimetres
    rgb = _save(Image.new("RGB", (4, 4)), tmp_path / "rgb.png")
    with pytest.raises(MediaError, match="single-channel") as info:
        media.load_depth(rgb)
    assert str(rgb) in str(info.value)
    cut = tmp_path / "cut.png"
    cut.write_bytes(path.read_bytes()[:40])
    with pytest.raises(MediaError, match="cannot decode depth") as info:
        media.load_depth(cut)
    assert str(cut) in str(info.value)
    with pytest.raises(ValueError):
        media.save_depth(tmp_path / "x.png", np.zeros((2, 2, 2)))


def test_read_frames_decodes_exactly_the_given_indices(tmp_path):
    frames = np.stack([np.full((32, 64, 3), 8 * i, np.uint8) for i in range(20)])
    path = media.write_video(tmp_path / "ramp.mp4", frames, fps=10)
    clip = media.read_frames(path, [15, 3, 7])
    assert clip.indices.tolist() == [15, 3, 7]
    np.testing.assert_allclose(clip.timestamps, [1.5, 0.3, 0.7])
    assert [int(round(f.mean() / 8)) for f in clip.frames] == [15, 3, 7]  # brightness encodes the index
    with pytest.raises(MediaError, match="it has 20 frames"):
        media.read_frames(path, [19, 20])
