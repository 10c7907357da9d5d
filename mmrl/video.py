"""Video I/O: read frames from a video file with decord, write frames to one with PyAV.

Failures to read a user's file raise one :class:`~mmrl.errors.MediaError` naming the file;
raw decord/PyAV exceptions never escape. decord and PyAV are imported lazily (each bundles
its own FFmpeg).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from mmrl.errors import MediaError
from mmrl.media import native_call, require_file

_TIME_EPS = 1e-6  # seconds; absorbs float error when comparing frame times to a window


@dataclass
class VideoInfo:
    """Basic facts about a video. duration = num_frames / fps (constant frame rate)."""

    path: str
    num_frames: int
    fps: float
    duration: float
    width: int
    height: int


@dataclass
class VideoFrames:
    """Frames sampled from a video.

    frames: (T, H, W, 3) uint8 RGB. timestamps: (T,) float64 seconds, index / source_fps.
    indices: (T,) int64 source frame indices, strictly increasing.
    """

    frames: np.ndarray
    timestamps: np.ndarray
    indices: np.ndarray
    source_fps: float
    path: str


def _open_video(path: str | Path) -> tuple[Any, Path]:
    """Open with decord (CPU, one thread for determinism); return (reader, path)."""
    p = require_file(path, "video")
    import decord

    reader, _ = native_call(
        lambda: decord.VideoReader(str(p), ctx=decord.cpu(0), num_threads=1),
        f"cannot open video {p}: not a video, truncated or corrupt",
    )
    fps = float(reader.get_avg_fps())
    if len(reader) <= 0 or not math.isfinite(fps) or fps <= 0:
        raise MediaError(f"cannot open video {p}: no frames or no frame rate (fps={fps}, frames={len(reader)})")
    return reader, p


def _decode(reader: Any, indices: np.ndarray, p: Path) -> np.ndarray:
    """Decode the given frames; truncated files often open fine and only fail here."""
    try:
        batch, _ = native_call(
            lambda: reader.get_batch(indices.tolist()).asnumpy(),
            f"cannot decode frames of video {p}: truncated or corrupt",
        )
    except MediaError as e:
        if "size must exactly match" not in str(e):
            raise
        # decord 0.6 returns 4-6 channels for a few narrow widths (seen: 2-8, 12, 16, 24, 48, 72 px).
        raise MediaError(
            f"cannot decode frames of video {p}: decord cannot convert frames of this width to RGB "
            "(a decord 0.6 bug for a few narrow widths); re-encode the video at another width"
        ) from e
    if batch.ndim != 4 or batch.shape[0] != len(indices) or batch.shape[3] != 3:
        raise MediaError(f"cannot decode frames of video {p}: got shape {batch.shape} for {len(indices)} frames")
    return batch


def video_info(path: str | Path) -> VideoInfo:
    """Frame count, average fps, duration and size of a video (decodes frame 0 to check it)."""
    reader, p = _open_video(path)
    first = _decode(reader, np.array([0]), p)
    n, fps = len(reader), float(reader.get_avg_fps())
    return VideoInfo(str(p), n, fps, n / fps, int(first.shape[2]), int(first.shape[1]))


def _even_subsample(indices: np.ndarray, count: int) -> np.ndarray:
    """Pick `count` of `indices` at the centres of `count` equal bins (distinct if count <= len)."""
    positions = np.floor((np.arange(count) + 0.5) * len(indices) / count).astype(np.int64)
    return indices[positions]


def read_frames(path: str | Path, indices: Sequence[int] | np.ndarray) -> VideoFrames:
    """Decode exactly the source frames at `indices` (in that order), nothing else.

    For callers that choose frames themselves (e.g. clips of a temporal split); timestamps are
    index / average fps, as in `read_video`.
    """
    reader, p = _open_video(path)
    idx = np.asarray(indices, dtype=np.int64).ravel()
    if idx.size == 0 or idx.min() < 0 or idx.max() >= len(reader):
        raise MediaError(f"cannot read frames {idx.min() if idx.size else '[]'}..{idx.max() if idx.size else ''} "
                         f"of video {p}: it has {len(reader)} frames")  # fmt: skip
    fps = float(reader.get_avg_fps())
    return VideoFrames(_decode(reader, idx, p), idx / fps, idx, fps, str(p))


def read_video(
    path: str | Path,
    *,
    num_frames: int | None = None,
    fps: float | None = None,
    max_frames: int | None = None,
    start: float | None = None,
    end: float | None = None,
) -> VideoFrames:
    """Read frames from the window [start, end) seconds of a video with decord.

    Frame i is taken to be shown at t_i = i / source_fps (decord's average fps, i.e. a
    constant-frame-rate clock starting at 0); the window holds frames with
    start <= t_i < end. `end` past the video is clipped to its duration; a window that
    starts after the video or holds no frame raises MediaError. Then, at most one of:

    - num_frames=k: the frames at the centres of k equal bins over the window frames
      (window frame floor((j + 0.5) * m / k) for j < k, m = frames in window);
      MediaError if m < k;
    - fps=f: for each target time start + j / f inside the window, the nearest frame
      (clipped into the window); duplicates are dropped, so f above the source rate
      gives each source frame once;
    - neither: every frame in the window.

    If more than `max_frames` remain they are evenly subsampled (bin centres) to it.
    """
    if num_frames is not None and fps is not None:
        raise ValueError("pass at most one of num_frames and fps")
    for name, value in (("num_frames", num_frames), ("fps", fps), ("max_frames", max_frames)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if start is not None and start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if end is not None and end <= (start or 0.0):
        raise ValueError(f"end must be > start, got [{start}, {end})")

    reader, p = _open_video(path)
    src_fps = float(reader.get_avg_fps())
    times = np.arange(len(reader)) / src_fps
    duration = len(reader) / src_fps
    t0 = 0.0 if start is None else float(start)
    t1 = duration if end is None else min(float(end), duration)
    window = np.flatnonzero((times >= t0 - _TIME_EPS) & (times < t1 - _TIME_EPS))
    if len(window) == 0:
        raise MediaError(f"video {p} has no frames in window [{start}, {end}) s; it lasts {duration:.3f} s")

    if num_frames is not None:
        if len(window) < num_frames:
            raise MediaError(
                f"video {p} has {len(window)} frames in window [{start}, {end}) s, fewer than num_frames={num_frames}"
            )
        indices = _even_subsample(window, num_frames)
    elif fps is not None:
        targets = t0 + np.arange(max(1, math.ceil((t1 - t0) * fps - _TIME_EPS))) / fps
        nearest = np.floor(targets * src_fps + 0.5 + _TIME_EPS).astype(np.int64)  # ties round up
        indices = np.unique(np.clip(nearest, window[0], window[-1]))
    else:
        indices = window
    if max_frames is not None and len(indices) > max_frames:
        indices = _even_subsample(indices, max_frames)

    indices = indices.astype(np.int64)
    frames = _decode(reader, indices, p)
    return VideoFrames(frames, indices / src_fps, indices, src_fps, str(p))


def _encoder_options(codec: str, crf: int) -> dict[str, str]:
    options = {"threads": "1"}
    if codec in ("libx264", "libx265"):
        options["crf"] = str(crf)
    if codec == "libx264":
        # x264's macroblock-tree rate control (SIMD path) gave different bytes from run to
        # run in one process for the same frames; without it the output is reproducible.
        options["x264-params"] = "mbtree=0"
    return options


def write_video(
    path: str | Path,
    frames: np.ndarray | Sequence[np.ndarray],
    fps: float,
    *,
    codec: str = "libx264",
    crf: int = 18,
) -> Path:
    """Encode RGB uint8 frames (T, H, W, 3) to a yuv420p video with PyAV; return the path.

    Height and width must be even (4:2:0 chroma); we raise ValueError rather than pad,
    so pixels are never silently added. With libx264 the output is byte-identical across
    runs for the same input (one thread, mbtree off, frame pts i / fps, bitexact muxing,
    no creation time); other codecs are not checked. `crf` applies to libx264/libx265.
    decord 0.6 cannot read back a few narrow widths (seen: 2-8, 12, 16, 24, 48, 72 px).
    """
    arrays = [np.asarray(f) for f in frames]
    if not arrays:
        raise ValueError("write_video needs at least one frame")
    height, width = arrays[0].shape[:2]
    for i, f in enumerate(arrays):
        if f.dtype != np.uint8 or f.shape != (height, width, 3):
            raise ValueError(f"frame {i} must be uint8 of shape {(height, width, 3)}, got {f.dtype} {f.shape}")
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even height and width, got {height}x{width}")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be positive, got {fps}")
    import av

    if codec not in av.codecs_available:
        raise ValueError(f"codec {codec!r} is not in this PyAV build")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)  # 29.97 -> 2997/100, 30000/1001 stays exact
    options = {"fflags": "+bitexact"}
    if p.suffix.lower() in (".mp4", ".mov", ".m4v"):
        options["movflags"] = "+faststart"  # index first: streamable, same bytes every time
    try:
        with av.open(str(p), "w", options=options) as container:
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            ctx = stream.codec_context
            ctx.thread_count = 1  # multithreaded encoders are not bit-reproducible
            ctx.time_base = 1 / rate
            # PyAV converts RGB with swscale's default matrix, BT.601 limited range: say so.
            ctx.colorspace, ctx.color_range = 6, 1  # AVCOL_SPC_SMPTE170M, AVCOL_RANGE_MPEG
            stream.options = _encoder_options(codec, crf)
            for i, f in enumerate(arrays):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
                frame.pts = i
                container.mux(stream.encode(frame))
            container.mux(stream.encode())
    except Exception as e:
        p.unlink(missing_ok=True)  # do not leave a half-written file behind
        raise MediaError(f"cannot write video {p}: {e}") from e
    return p
