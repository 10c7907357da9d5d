"""The 15 frame perturbations of VideoSSR's anomaly grounding (docs/videossr.md).

Not a task: a library of pure functions the `anomaly_grounding` task uses to perturb one segment of
a video. Every perturbation maps a segment `(T, H, W, 3) uint8` to a new array of the same shape and
dtype and never modifies its input. Random parameters come from the `rng` passed in: drawn once per
segment by default (mmrl's default), or once per frame with `per_frame=True` (what the
released code does for Noise, ZoomIn and ZoomOut). Types without a drawn parameter ignore `per_frame`.

Same shape out, our choices where the released code changes the canvas [ours]:
- Rotate90 / Rotate270 expand the canvas in the released code (the aspect ratio flips). Square frames are
  rotated exactly; a non-square rotated frame is scaled down (Lanczos) to fit inside H×W with its
  aspect kept and pasted centred on black (letterboxed), like ZoomOut pastes on black.

Every perturbed frame differs from its source frame, with these documented limits:
- Shuffle is a derangement (no frame stays at its index); StutterHold never shows a frame at its own
  index either (see `stutter_index`). Both need at least 2 frames.
- The pixel-wise types cannot change a frame that is invariant under them (a uniform frame under
  Mirror, Rotate180, Blur or the zooms; a grey frame under Grayscale or Saturation; a frame with
  R = B under ChannelSwap; a frame saturated at 0 or 255 may survive clipped Noise). Shuffle, Stutter
  and Swap cannot change a frame whose replacement has the same pixels (a static video). Invert always
  changes every pixel. A task that needs the guarantee checks `changed_mask(src, out)` and redraws.
- "Differs" is not "visible": a Swap partner that is a re-encode of the same footage, or a Shuffle of
  nearly still frames, changes a frame by a grey level or two on average. `frame_change(src, out)`
  measures the change per frame (mean absolute difference, grey levels 0–255); `anomaly_grounding`
  requires every perturbed frame to reach its `min_frame_change`.

Importing this module has no side effects; it depends on numpy and PIL only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

NOISE_SIGMA: tuple[float, float] = (35.0, 70.0)
"""Range of the Gaussian noise standard deviation (pixel units); σ ~ U(low, high)."""
ZOOM_IN_SCALE: tuple[float, float] = (1.3, 1.5)
"""Range of the zoom-in factor: the centre crop is 1/scale of the frame, resized back."""
ZOOM_OUT_SCALE: tuple[float, float] = (1.2, 1.4)
"""Range of the zoom-out factor: the frame shrinks by 1/scale and is pasted centred on black."""
BLUR_RADIUS: float = 2.0
"""Gaussian blur radius (PIL `GaussianBlur`)."""
SATURATION_FACTOR: float = 2.0
"""Colour enhancement factor (PIL `ImageEnhance.Color`)."""
STUTTER_HOLDS: tuple[int, ...] = (2, 3, 4, 5)
"""Choices for n, the number of held frames of a stutter (capped at the segment length)."""

PerturbFn = Callable[..., np.ndarray]


@dataclass(frozen=True)
class Perturbation:
    """One perturbation type: its registry `name`, the segment function and the prompt description.

    `fn(frames, rng, *, per_frame=False, other=None, strength=1.0) -> frames` is pure; `description` completes
    "in one segment of the video, ..." (e.g. "the colours are inverted"). `needs_other` marks Swap,
    which takes the other video's frames for the same indices.
    """

    name: str
    fn: PerturbFn
    description: str
    needs_other: bool = False


# --------------------------------------------------------------------------------------- helpers


def check_frames(frames: np.ndarray, what: str = "frames") -> np.ndarray:
    """Validate a segment: a `(T, H, W, 3)` uint8 array with T ≥ 1; returns it unchanged."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        shape = getattr(frames, "shape", None)
        dtype = getattr(frames, "dtype", type(frames).__name__)
        raise ValueError(f"{what} must be a (T, H, W, 3) uint8 array, got shape {shape} dtype {dtype}")
    if frames.shape[0] < 1 or frames.shape[1] < 1 or frames.shape[2] < 1:
        raise ValueError(f"{what} must hold at least one non-empty frame, got shape {frames.shape}")
    return frames


def changed_mask(src: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Per frame, whether any pixel of `out` differs from `src`: a `(T,)` bool array."""
    src, out = np.asarray(src), np.asarray(out)
    if src.shape != out.shape:
        raise ValueError(f"changed_mask: shapes differ, {src.shape} vs {out.shape}")
    return np.any(src.reshape(src.shape[0], -1) != out.reshape(out.shape[0], -1), axis=1)


def frame_change(src: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Per frame, the mean absolute difference of `out` from `src` over every pixel and channel, in grey
    levels (0–255): a `(T,)` float array. How visible a perturbation is; 0 exactly when nothing changed."""
    src, out = np.asarray(src), np.asarray(out)
    if src.shape != out.shape:
        raise ValueError(f"frame_change: shapes differ, {src.shape} vs {out.shape}")
    diff = np.abs(src.astype(np.int16) - out.astype(np.int16))
    return diff.reshape(diff.shape[0], -1).mean(axis=1)


def draw_params(rng: np.random.Generator, low: float, high: float, t: int, per_frame: bool) -> np.ndarray:
    """`t` parameters ~ U(low, high): one draw repeated (per segment) or `t` draws (per frame)."""
    if per_frame:
        return rng.uniform(low, high, size=t)
    return np.full(t, rng.uniform(low, high))


def _per_frame(value: float | Sequence[float] | np.ndarray, t: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(value, dtype=float), (t,))


def _resize(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    img = Image.fromarray(frame).resize((width, height), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def _paste_centred(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    h, w = frame.shape[:2]
    top, left = (height - h) // 2, (width - w) // 2
    canvas[top : top + h, left : left + w] = frame
    return canvas


def _toward_one(factor: float, strength: float) -> float:
    """A multiplicative factor moved toward 1 (strength < 1: subtler) or away from it (> 1)."""
    return 1.0 + strength * (factor - 1.0)


def _map_pil(frames: np.ndarray, op: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    return np.stack([np.asarray(op(Image.fromarray(f)).convert("RGB"), dtype=np.uint8) for f in frames])


# ------------------------------------------------------------------------- the perturbations


def grayscale(frames: np.ndarray, rng: np.random.Generator | None = None, **_: object) -> np.ndarray:
    """Convert to grey (PIL "L": ITU-R 601 luma) and repeat it in R, G and B."""
    grey = _map_pil(check_frames(frames), lambda im: im.convert("L"))
    return np.ascontiguousarray(grey)


def invert(frames: np.ndarray, rng: np.random.Generator | None = None, **_: object) -> np.ndarray:
    """Invert the colours: 255 − x (changes every pixel, since 255 is odd)."""
    return 255 - check_frames(frames)


def channel_swap(frames: np.ndarray, rng: np.random.Generator | None = None, **_: object) -> np.ndarray:
    """Swap the red and blue channels (RGB → BGR)."""
    return np.ascontiguousarray(check_frames(frames)[..., ::-1])


def _rotate_quarter(frames: np.ndarray, clockwise_quarters: int) -> np.ndarray:
    frames = check_frames(frames)
    _, h, w, _ = frames.shape
    rotated = np.rot90(frames, k=-clockwise_quarters, axes=(1, 2))
    if rotated.shape[1:3] == (h, w):
        return np.ascontiguousarray(rotated)
    # Non-square 90°/270°: fit the rotated (w × h) frame inside h × w, keep its aspect, letterbox.
    scale = min(h / rotated.shape[1], w / rotated.shape[2])
    nh = max(1, round(rotated.shape[1] * scale))
    nw = max(1, round(rotated.shape[2] * scale))
    return np.stack([_paste_centred(_resize(np.ascontiguousarray(f), nh, nw), h, w) for f in rotated])


def rotate90(frames: np.ndarray, rng: np.random.Generator | None = None, **_: object) -> np.ndarray:
    """Rotate 90° clockwise; non-square frames are scaled to fit and letterboxed on black."""
    return _rotate_quarter(frames, 1)


def rotate180(frames: np.ndarray, rng: np.random.Generator | None = None, **_: object) -> np.ndarray:
    """Rotate 180° (exact on any frame shape)."""
    return _rotate_quarter(frames, 2)


def rotate270(frames: np.ndarray, rng: np.random.Generator | None = None, **_: object) -> np.ndarray:
    """Rotate 270° clockwise; non-square frames are scaled to fit and letterboxed on black."""
    return _rotate_quarter(frames, 3)


def add_gaussian_noise(
    frames: np.ndarray, sigma: float | Sequence[float] | np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Add N(0, σ²) noise per pixel and channel (σ scalar or one per frame), round and clip to [0, 255]."""
    frames = check_frames(frames)
    sig = _per_frame(sigma, frames.shape[0])
    noise = rng.standard_normal(frames.shape) * sig[:, None, None, None]
    return np.clip(np.rint(frames + noise), 0, 255).astype(np.uint8)


def noise(
    frames: np.ndarray, rng: np.random.Generator, *, per_frame: bool = False, strength: float = 1.0, **_: object
) -> np.ndarray:
    """Gaussian noise with σ ~ strength · U(`NOISE_SIGMA`), one σ per segment (or per frame)."""
    frames = check_frames(frames)
    low, high = (strength * x for x in NOISE_SIGMA)
    return add_gaussian_noise(frames, draw_params(rng, low, high, frames.shape[0], per_frame), rng)


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random permutation of range(n) with no fixed point (n ≥ 2; rejection sampling)."""
    if n < 2:
        raise ValueError(f"a derangement needs n >= 2, got {n}")
    while True:  # P(derangement) → 1/e, so about 2.7 draws on average
        perm = rng.permutation(n)
        if not np.any(perm == np.arange(n)):
            return perm


def shuffle(frames: np.ndarray, rng: np.random.Generator, **_: object) -> np.ndarray:
    """Scramble the frame order inside the segment with a derangement: no frame keeps its index.

    Needs T ≥ 2. A frame still looks unchanged if the frame moved there has the same pixels.
    """
    frames = check_frames(frames)
    if frames.shape[0] < 2:
        raise ValueError("shuffle needs a segment of at least 2 frames")
    return frames[derangement(frames.shape[0], rng)]


def swap(
    frames: np.ndarray, rng: np.random.Generator | None = None, *, other: np.ndarray | None = None, **_: object
) -> np.ndarray:
    """Replace the segment by `other`, the same frame indices of another video.

    `other` must have the same number of frames; frames of another size are resized (Lanczos) to H×W.
    """
    frames = check_frames(frames)
    if other is None:
        raise ValueError("swap needs `other`: the other video's frames for the same indices")
    other = check_frames(other, "other")
    if other.shape[0] != frames.shape[0]:
        raise ValueError(f"swap: other has {other.shape[0]} frames, the segment has {frames.shape[0]}")
    _, h, w, _ = frames.shape
    if other.shape[1:3] != (h, w):
        return np.stack([_resize(f, h, w) for f in other])
    return other.copy()


def zoom_in_frames(frames: np.ndarray, scale: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """Centre-crop 1/scale of each frame (scale scalar or one per frame) and resize back (Lanczos)."""
    frames = check_frames(frames)
    _, h, w, _ = frames.shape
    out = []
    for f, s in zip(frames, _per_frame(scale, frames.shape[0])):
        ch, cw = max(1, round(h / s)), max(1, round(w / s))
        top, left = (h - ch) // 2, (w - cw) // 2
        out.append(_resize(np.ascontiguousarray(f[top : top + ch, left : left + cw]), h, w))
    return np.stack(out)


def zoom_in(
    frames: np.ndarray, rng: np.random.Generator, *, per_frame: bool = False, strength: float = 1.0, **_: object
) -> np.ndarray:
    """Zoom in by scale ~ 1 + strength · (U(`ZOOM_IN_SCALE`) − 1), one scale per segment (or per frame)."""
    frames = check_frames(frames)
    low, high = (_toward_one(x, strength) for x in ZOOM_IN_SCALE)
    return zoom_in_frames(frames, draw_params(rng, low, high, frames.shape[0], per_frame))


def zoom_out_frames(frames: np.ndarray, scale: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """Shrink each frame by 1/scale (Lanczos; scale scalar or one per frame), paste centred on black."""
    frames = check_frames(frames)
    _, h, w, _ = frames.shape
    out = []
    for f, s in zip(frames, _per_frame(scale, frames.shape[0])):
        nh, nw = max(1, round(h / s)), max(1, round(w / s))
        out.append(_paste_centred(_resize(f, nh, nw), h, w))
    return np.stack(out)


def zoom_out(
    frames: np.ndarray, rng: np.random.Generator, *, per_frame: bool = False, strength: float = 1.0, **_: object
) -> np.ndarray:
    """Zoom out by scale ~ 1 + strength · (U(`ZOOM_OUT_SCALE`) − 1), one scale per segment (or per frame)."""
    frames = check_frames(frames)
    low, high = (_toward_one(x, strength) for x in ZOOM_OUT_SCALE)
    return zoom_out_frames(frames, draw_params(rng, low, high, frames.shape[0], per_frame))


def mirror(frames: np.ndarray, rng: np.random.Generator | None = None, **_: object) -> np.ndarray:
    """Flip horizontally (reverse the columns)."""
    return np.ascontiguousarray(check_frames(frames)[:, :, ::-1])


def blur(
    frames: np.ndarray, rng: np.random.Generator | None = None, *, strength: float = 1.0, **_: object
) -> np.ndarray:
    """Gaussian blur of radius strength · `BLUR_RADIUS` (PIL)."""
    radius = strength * BLUR_RADIUS
    return _map_pil(check_frames(frames), lambda im: im.filter(ImageFilter.GaussianBlur(radius)))


def saturation(
    frames: np.ndarray, rng: np.random.Generator | None = None, *, strength: float = 1.0, **_: object
) -> np.ndarray:
    """Enhance colour by 1 + strength · (`SATURATION_FACTOR` − 1) (PIL `ImageEnhance.Color`: luma kept,
    chroma scaled; ×2 at strength 1)."""
    factor = _toward_one(SATURATION_FACTOR, strength)
    return _map_pil(check_frames(frames), lambda im: ImageEnhance.Color(im).enhance(factor))


def stutter_index(t: int, n: int) -> np.ndarray:
    """The source index shown at each of `t` positions of a stutter with `n` held frames.

    Blocks as in the released code: n blocks, each `t // n` long, the first `t % n` one longer. The released code holds
    the frame picked by `linspace(0, t − 1, n)` in each block, which shows the block's first frame at
    its own index (an unchanged frame). Ours [ours]: every block holds a frame outside itself — block j
    holds the first frame of block j + 1 (the video jumps ahead and freezes there), the last block holds
    the frame just before it. So no position shows its own index (needs t ≥ 2, 2 ≤ n ≤ t).
    """
    if t < 2 or not 2 <= n <= t:
        raise ValueError(f"stutter needs t >= 2 and 2 <= n <= t, got t={t}, n={n}")
    lengths = [t // n + (1 if j < t % n else 0) for j in range(n)]
    starts = np.cumsum([0, *lengths[:-1]])
    held = [int(starts[j + 1]) for j in range(n - 1)] + [int(starts[-1]) - 1]
    return np.repeat(np.asarray(held), lengths)


def stutter_hold(frames: np.ndarray, rng: np.random.Generator, **_: object) -> np.ndarray:
    """Freeze and stutter: n ~ {2, 3, 4, 5} (capped at T) held frames, laid out by `stutter_index`.

    Needs T ≥ 2. A frame still looks unchanged if the held frame has the same pixels.
    """
    frames = check_frames(frames)
    t = frames.shape[0]
    if t < 2:
        raise ValueError("stutter_hold needs a segment of at least 2 frames")
    choices = [n for n in STUTTER_HOLDS if n <= t]
    n = int(rng.choice(choices))
    return frames[stutter_index(t, n)]


# ---------------------------------------------------------------------------------- registry

PERTURBATIONS: dict[str, Perturbation] = {
    p.name: p
    for p in (
        Perturbation("grayscale", grayscale, "the video turns black-and-white"),
        Perturbation("invert", invert, "the colours are inverted"),
        Perturbation("channel_swap", channel_swap, "the red and blue colour channels are swapped"),
        Perturbation("rotate90", rotate90, "the video is rotated 90 degrees clockwise"),
        Perturbation("rotate180", rotate180, "the video is rotated 180 degrees"),
        Perturbation("rotate270", rotate270, "the video is rotated 270 degrees clockwise"),
        Perturbation("noise", noise, "Gaussian noise was added to the frames"),
        Perturbation("shuffle", shuffle, "the frame order is scrambled, so the action looks illogical"),
        Perturbation("swap", swap, "the clip is replaced by a clip from another video", needs_other=True),
        Perturbation("zoom_in", zoom_in, "the video is zoomed in"),
        Perturbation("zoom_out", zoom_out, "the video is zoomed out"),
        Perturbation("mirror", mirror, "the video is mirrored horizontally"),
        Perturbation("blur", blur, "the video is blurry, as if out of focus"),
        Perturbation("saturation", saturation, "the colours are oversaturated and unnaturally vibrant"),
        Perturbation(
            "stutter_hold",
            stutter_hold,
            "the video freezes and stutters, holding single frames and then jumping",
        ),
    )
}
"""Registry name → perturbation, in VideoSSR's order."""


def perturb(
    frames: np.ndarray,
    name: str,
    rng: np.random.Generator,
    *,
    other: np.ndarray | None = None,
    per_frame: bool = False,
    strength: float = 1.0,
) -> np.ndarray:
    """Apply perturbation `name` to a `(T, H, W, 3)` uint8 segment; returns a new array of that shape.

    `rng` supplies every random choice (same generator state, same bytes). `per_frame` draws the
    parameter of Noise, ZoomIn and ZoomOut per frame instead of once per segment. `other` is the other
    video's frames for Swap (required there, ignored elsewhere). `strength` scales the size of the
    change of the types with a magnitude (Noise σ, the zoom factors' distance from 1, Blur radius,
    Saturation factor's distance from 1): 1 is VideoSSR's, below 1 subtler; the others ignore it.
    """
    if not strength > 0:
        raise ValueError(f"strength must be positive, got {strength}")
    try:
        p = PERTURBATIONS[name]
    except KeyError:
        raise ValueError(f"unknown perturbation '{name}'; valid: {', '.join(PERTURBATIONS)}") from None
    return p.fn(frames, rng, per_frame=per_frame, other=other, strength=strength)
