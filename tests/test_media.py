"""Tests for mmrl.media on small real files written to tmp_path (no mocks of the media libraries)."""

from __future__ import annotations

import itertools
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
