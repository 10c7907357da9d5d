"""The 15 anomaly-grounding perturbations: one defining property per type, determinism, shapes."""

from __future__ import annotations

import numpy as np
import pytest

from pretext_tasks.perturbations import (
    NOISE_SIGMA,
    PERTURBATIONS,
    Perturbation,
    add_gaussian_noise,
    blur,
    changed_mask,
    channel_swap,
    derangement,
    frame_change,
    grayscale,
    invert,
    mirror,
    perturb,
    rotate90,
    rotate180,
    rotate270,
    saturation,
    shuffle,
    stutter_hold,
    stutter_index,
    swap,
    zoom_in,
    zoom_in_frames,
    zoom_out,
    zoom_out_frames,
)

T, H, W = 10, 24, 32


def textured(seed: int = 0, t: int = T, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


def smooth(t: int = T, h: int = H, w: int = W) -> np.ndarray:
    """Frames of a smooth, colourful, slowly changing pattern (no clipping, no high frequencies)."""
    y, x = np.mgrid[0:h, 0:w]
    frames = []
    for i in range(t):
        r = 128 + 60 * np.sin(x / w * np.pi + i * 0.1)
        g = 128 + 60 * np.cos(y / h * np.pi)
        b = 100 + 0 * x + 5 * i
        frames.append(np.stack([r, g, b], axis=-1))
    return np.rint(np.stack(frames)).astype(np.uint8)


def luma(frames: np.ndarray) -> np.ndarray:
    f = frames.astype(float)
    return 0.299 * f[..., 0] + 0.587 * f[..., 1] + 0.114 * f[..., 2]


def hf_energy(frames: np.ndarray) -> float:
    f = frames.astype(float)
    return float(np.mean(np.diff(f, axis=1) ** 2) + np.mean(np.diff(f, axis=2) ** 2))


def rng(seed: int = 1) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_registry_has_the_sheets_fifteen_types() -> None:
    assert list(PERTURBATIONS) == [
        "grayscale",
        "invert",
        "channel_swap",
        "rotate90",
        "rotate180",
        "rotate270",
        "noise",
        "shuffle",
        "swap",
        "zoom_in",
        "zoom_out",
        "mirror",
        "blur",
        "saturation",
        "stutter_hold",
    ]
    for name, p in PERTURBATIONS.items():
        assert isinstance(p, Perturbation) and p.name == name
        assert p.description and "\n" not in p.description
    assert [n for n, p in PERTURBATIONS.items() if p.needs_other] == ["swap"]


@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_shape_dtype_purity_and_every_frame_changes(name: str) -> None:
    src = textured(3)
    before = src.copy()
    other = textured(4)
    out = perturb(src, name, rng(), other=other)
    assert out.shape == src.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(src, before)  # the input is never modified
    assert changed_mask(src, out).all()


@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_same_rng_same_bytes(name: str) -> None:
    src, other = textured(5), textured(6)
    a = perturb(src, name, rng(7), other=other)
    b = perturb(src, name, rng(7), other=other)
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_non_square_frames_keep_their_shape(name: str) -> None:
    src = textured(8, t=6, h=18, w=40)
    out = perturb(src, name, rng(), other=textured(9, t=6, h=18, w=40), per_frame=True)
    assert out.shape == src.shape and out.dtype == np.uint8


def test_invert_twice_is_identity() -> None:
    src = textured()
    np.testing.assert_array_equal(invert(invert(src)), src)
    assert (invert(src).astype(int) + src == 255).all()


def test_mirror_flips_columns_exactly() -> None:
    src = textured()
    out = mirror(src)
    for c in range(W):
        np.testing.assert_array_equal(out[:, :, c], src[:, :, W - 1 - c])


def test_channel_swap_exchanges_red_and_blue() -> None:
    src = textured()
    out = channel_swap(src)
    np.testing.assert_array_equal(out[..., 0], src[..., 2])
    np.testing.assert_array_equal(out[..., 2], src[..., 0])
    np.testing.assert_array_equal(out[..., 1], src[..., 1])


def test_rotate180_twice_is_identity_and_rotations_compose() -> None:
    src = textured()  # non-square: 180° is exact on any shape
    np.testing.assert_array_equal(rotate180(rotate180(src)), src)
    np.testing.assert_array_equal(rotate180(src), src[:, ::-1, ::-1])
    sq = textured(h=16, w=16)
    np.testing.assert_array_equal(rotate90(sq)[0], np.rot90(sq[0], k=-1))  # clockwise
    np.testing.assert_array_equal(rotate90(rotate90(sq)), rotate180(sq))
    np.testing.assert_array_equal(rotate270(rotate90(sq)), sq)


def test_rotate90_non_square_is_letterboxed_on_black() -> None:
    src = np.full((2, 20, 40, 3), 200, dtype=np.uint8)  # rotated: 40 × 20, fits as 20 × 10
    out = rotate90(src)
    assert out.shape == src.shape
    assert (out[:, :, :14] == 0).all() and (out[:, :, 26:] == 0).all()
    assert (np.abs(out[:, 2:-2, 17:23].astype(int) - 200) <= 2).all()


def test_grayscale_has_equal_channels() -> None:
    out = grayscale(textured())
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    src = smooth()
    assert np.abs(grayscale(src)[..., 0].astype(float) - luma(src)).max() <= 1.0


def test_noise_mse_matches_sigma() -> None:
    src = np.full((4, 64, 64, 3), 128, dtype=np.uint8)
    out = add_gaussian_noise(src, 40.0, rng())
    rmse = np.sqrt(np.mean((out.astype(float) - src) ** 2))
    assert abs(rmse - 40.0) < 2.0
    drawn = perturb(src, "noise", rng())
    rmse = np.sqrt(np.mean((drawn.astype(float) - src) ** 2))
    assert NOISE_SIGMA[0] - 3 < rmse < NOISE_SIGMA[1] + 1  # clipping at 0/255 trims the top a little


def test_noise_sigma_per_segment_vs_per_frame() -> None:
    src = np.full((8, 48, 48, 3), 128, dtype=np.uint8)

    def stds(out: np.ndarray) -> np.ndarray:
        return (out.astype(float) - 128).reshape(8, -1).std(axis=1)

    seg = stds(perturb(src, "noise", rng(2)))
    frm = stds(perturb(src, "noise", rng(2), per_frame=True))
    assert seg.max() - seg.min() < 2.5
    assert frm.max() - frm.min() > 5.0


def test_shuffle_is_a_derangement_of_the_input_frames() -> None:
    src = textured()
    for seed in range(20):
        out = shuffle(src, rng(seed))
        idx = [int(np.flatnonzero((src == f).all(axis=(1, 2, 3)))[0]) for f in out]
        assert sorted(idx) == list(range(T))
        assert all(i != p for p, i in enumerate(idx))
    for n in (2, 3, 7):
        for seed in range(20):
            perm = derangement(n, rng(seed))
            assert sorted(perm) == list(range(n)) and not np.any(perm == np.arange(n))
    with pytest.raises(ValueError):
        shuffle(textured(t=1), rng())


def test_stutter_repeats_frames_without_fixed_points() -> None:
    src = textured(t=12)
    for seed in range(10):
        out = stutter_hold(src, rng(seed))
        idx = [int(np.flatnonzero((src == f).all(axis=(1, 2, 3)))[0]) for f in out]
        runs = [idx[0]] + [b for a, b in zip(idx, idx[1:]) if b != a]
        assert 2 <= len(runs) <= 5 and len(set(runs)) == len(runs)  # n held frames, each in one run
        assert len(set(idx)) < len(idx)  # frames repeat
        assert all(i != p for p, i in enumerate(idx))
    for t in range(2, 17):
        for n in range(2, min(5, t) + 1):
            index = stutter_index(t, n)
            assert len(index) == t and not np.any(index == np.arange(t))
            lengths = np.diff(np.flatnonzero(np.r_[True, index[1:] != index[:-1], True]))
            assert sorted(lengths.tolist(), reverse=True) == lengths.tolist()  # first t % n blocks longer
            assert set(lengths.tolist()) <= {t // n, t // n + 1}
    np.testing.assert_array_equal(stutter_index(8, 5), [2, 2, 4, 4, 6, 6, 7, 6])


def test_swap_returns_the_other_videos_frames() -> None:
    src, other = textured(1), textured(2)
    np.testing.assert_array_equal(swap(src, other=other), other)
    small = textured(3, h=12, w=16)
    assert swap(src, other=small).shape == src.shape
    with pytest.raises(ValueError):
        perturb(src, "swap", rng())
    with pytest.raises(ValueError):
        swap(src, other=textured(2, t=T - 1))


@pytest.mark.parametrize("zoom", [zoom_in_frames, zoom_out_frames])
def test_zoom_keeps_shape_and_centre_pixel(zoom) -> None:
    src = smooth(h=41, w=41)
    out = zoom(src, 1.4)
    assert out.shape == src.shape
    assert np.abs(out[:, 20, 20].astype(int) - src[:, 20, 20]).max() <= 6


def test_zoom_in_magnifies_and_zoom_out_adds_black_border() -> None:
    src = np.zeros((1, 40, 40, 3), dtype=np.uint8)
    src[:, 10:30, 10:30] = 255  # a 20-pixel white square in the middle
    white_in = (zoom_in_frames(src, 1.5)[0, 20, :, 0] > 128).sum()
    white_out = (zoom_out_frames(src, 1.25)[0, 20, :, 0] > 128).sum()
    assert white_in >= 28 and white_out <= 17
    out = zoom_out_frames(np.full((1, 40, 40, 3), 255, dtype=np.uint8), 1.25)
    assert (out[:, :3] == 0).all() and (out[:, :, :3] == 0).all()


@pytest.mark.parametrize("name", ["zoom_in", "zoom_out"])
def test_zoom_per_segment_vs_per_frame(name: str) -> None:
    src = np.repeat(smooth(t=1, h=32, w=32), 6, axis=0)  # six identical frames
    seg = perturb(src, name, rng(3))
    assert all((f == seg[0]).all() for f in seg)  # one scale for the segment
    frm = perturb(src, name, rng(3), per_frame=True)
    assert len({f.tobytes() for f in frm}) > 1  # the scale jitters per frame
    fn = zoom_in if name == "zoom_in" else zoom_out
    np.testing.assert_array_equal(fn(src, rng(3)), seg)


def test_blur_reduces_high_frequency_energy() -> None:
    src = textured()
    out = blur(src)
    assert hf_energy(out) < 0.1 * hf_energy(src)
    assert abs(out.astype(float).mean() - src.astype(float).mean()) < 3


def test_saturation_raises_chroma_keeps_luma() -> None:
    src = smooth()
    out = saturation(src)
    chroma_src = src.astype(float).std(axis=-1).mean()
    chroma_out = out.astype(float).std(axis=-1).mean()
    assert chroma_out > 1.7 * chroma_src
    assert np.abs(luma(out) - luma(src)).mean() < 2.0


def test_changed_mask_flags_unchangeable_frames() -> None:
    src = textured(t=3)
    src[1] = 77  # uniform frame: mirror cannot change it
    assert changed_mask(src, mirror(src)).tolist() == [True, False, True]
    with pytest.raises(ValueError):
        changed_mask(src, src[:2])


def test_bad_input_and_unknown_name_raise() -> None:
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(textured(), "sepia", rng())
    with pytest.raises(ValueError, match="uint8"):
        perturb(textured().astype(np.float32), "invert", rng())
    with pytest.raises(ValueError):
        perturb(textured()[0], "mirror", rng())


def test_frame_change_is_the_mean_absolute_difference_per_frame() -> None:
    src = np.zeros((3, 4, 5, 3), dtype=np.uint8)
    out = src.copy()
    out[1, 0, 0, 0] = 60  # one channel of one pixel of 60 values: 60 / 60 = 1 grey level on average
    out[2] = 255
    np.testing.assert_allclose(frame_change(src, out), [0.0, 1.0, 255.0])
    np.testing.assert_allclose(frame_change(out, src), [0.0, 1.0, 255.0])  # symmetric, no uint8 wrap-around
    assert (frame_change(src, out) > 0).tolist() == changed_mask(src, out).tolist()
    with pytest.raises(ValueError, match="shapes differ"):
        frame_change(src, out[:2])
