"""`video_jigsaw`: cut a video into K clips, show them shuffled, ask for their chronological order.

Visual Jigsaw (Wu et al. 2025, *Visual Jigsaw Post-Training Improves MLLMs*, arXiv 2509.25190),
video variant, following the released code's temporal split. With N source frames, K clips and
trim ratio p/q (0.1 = 1/10):

    skip = N mod (K·q)                 leading frames dropped, so every clip length is a multiple of q
    L    = (N − skip) // K             frames per clip before trimming
    trim = L·p // q                    frames cut at each end of a clip
    clip i = frames [skip + i·L + trim, skip + (i+1)·L − trim),   i = 0..K−1 (chronological)

The trim leaves a gap of 2·trim frames between neighbouring clips, so the order cannot be read off
by matching the last frame of one clip to the first frame of the next. Each clip of c = L − 2·trim
frames is then sampled like Qwen's `fetch_video`: n = c / source_fps · fps, clamped to
[2, even_floor(min(max_frames_per_clip, c))], rounded down to a multiple of 2 (Qwen's temporal patch),
at indices round(linspace(0, c − 1, n)) (round half to even, as torch) from the clip start. Only
those frames are decoded.

The K clips reach the model as K separate videos (frame lists) in shown order, each preceded by
"Clip j:". Every clip's `timestamps` start at 0 (relative to its own first frame): absolute times
would give the order away, since Qwen3-VL writes them into the prompt (`<1.5 seconds>`) and M-RoPE
positions could carry them. Its `fps` is the clip's sampling rate n / c · source_fps (as released).
The answer lists the clip labels in chronological order: `answer[i] = order.index(i) + 1`.

Videos shorter than `min_duration` seconds (12 by default; the paper keeps videos of at least 24 s),
or too short for K clips of at least `min_frames_per_clip` frames, raise `SkipItem("video_too_short")`;
unreadable files raise `MediaError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from mmrl import media
from mmrl.config import to_dict
from mmrl.errors import ConfigError, SkipItem
from mmrl.sample import Sample
from mmrl.task import Panel
from mmrl.video import read_frames, video_info
from pretext_tasks import evidence
from pretext_tasks.base import (
    OrderingTask,
    answer_instruction,
    check_order_size,
    item_path,
    labelled_items,
    shuffle_and_label,
    video_sources,
)
from rewards.ordering import OrderingParams

if TYPE_CHECKING:
    from mmrl.corpus import Corpus, VideoItem

NAME = "video_jigsaw"

FRAME_FACTOR = 2
"""Frames per clip are a multiple of this (Qwen's temporal patch size)."""

REFERENCE_THOUGHT = "I compare what changes between the clips to find which one comes first and which follow."
"""The reasoning placed in SFT targets when the prompt asks for <think> (cold start only)."""


@dataclass
class VideoJigsawParams(OrderingParams):
    clips: int = 6
    """K, the number of clips (the paper: 6; its ablation: 4). At least 3 (2 clips always answer `2, 1`)."""
    trim_ratio: float = 0.1
    """Share of each clip cut at both of its ends: 0.1 as the released code trained with, 0.05 as
    the paper states. Read as the fraction p/q (denominator at most 100) of the split formula."""
    fps: float = 2.0
    """Frames sampled per second of clip (before the clamp below)."""
    max_frames_per_clip: int = 12
    """Most frames per clip (the paper's 12; the released fallback was 16). At least 2."""
    min_frames_per_clip: int = 2
    """Fewest source frames a trimmed clip may have; shorter videos are skipped (`video_too_short`)."""
    min_duration: float = 12.0
    """Shortest video kept, in seconds (frames / frame rate); shorter ones are skipped (`video_too_short`).
    Without it a 5 s video was cut into 6 clips of 0.67 s with 2 frames each, too short to show motion.
    12 s gives the default 6 clips 2 s each (1.6 s after the trim) and keeps the default corpus's 15 s
    videos; the paper keeps videos of at least 24 s (set 24 to match it); 0 turns the check off."""
    frame_max_pixels: int = 128 * 28 * 28
    """Frames with more pixels are downscaled (Qwen smart_resize, factor 28, bicubic, antialiased)
    to at most this many (the released per-frame budget, 128·28·28); smaller frames are kept as
    decoded. 0 keeps every frame as decoded. The model's own video pixel budget applies after."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_order_size(NAME, f"clips = {self.clips}", self.clips)
        if not 0.0 <= self.trim_ratio < 0.5:
            raise ConfigError(f"video_jigsaw: trim_ratio must be in [0, 0.5), got {self.trim_ratio}")
        if not self.fps > 0:
            raise ConfigError(f"video_jigsaw: fps must be positive, got {self.fps}")
        if self.max_frames_per_clip < FRAME_FACTOR:
            raise ConfigError(f"video_jigsaw: max_frames_per_clip must be >= 2, got {self.max_frames_per_clip}")
        if self.min_frames_per_clip < FRAME_FACTOR:
            raise ConfigError(f"video_jigsaw: min_frames_per_clip must be >= 2, got {self.min_frames_per_clip}")
        if not self.min_duration >= 0:
            raise ConfigError(f"video_jigsaw: min_duration must be >= 0 seconds (0: off), got {self.min_duration}")
        if self.frame_max_pixels and self.frame_max_pixels < media.QWEN2_VL_FACTOR**2:
            raise ConfigError(f"video_jigsaw: frame_max_pixels must be 0 or >= 784, got {self.frame_max_pixels}")


# --------------------------------------------------------------------------------------------------
# Temporal split and frame sampling


@dataclass(frozen=True)
class ClipSplit:
    """Where the K clips lie in a video of N frames (see the module docstring for the formulas)."""

    skip: int
    """Leading frames dropped: N mod (K·q)."""
    length: int
    """L, frames per clip before trimming."""
    trim: int
    """Frames cut at each end of every clip."""
    ranges: list[tuple[int, int]]
    """[start, end) source frame range of each clip, in chronological order."""


def split_clips(num_frames: int, clips: int, trim_ratio: float) -> ClipSplit:
    """The released code's temporal split of `num_frames` frames into `clips` trimmed clips."""
    ratio = Fraction(trim_ratio).limit_denominator(100)
    p, q = ratio.numerator, ratio.denominator
    skip = num_frames % (clips * q)
    length = (num_frames - skip) // clips
    trim = length * p // q
    ranges = [(skip + i * length + trim, skip + (i + 1) * length - trim) for i in range(clips)]
    return ClipSplit(skip, length, trim, ranges)


def frames_per_clip(clip_frames: int, source_fps: float, fps: float, max_frames: int) -> int:
    """n = clip_seconds · fps, clamped to [2, even_floor(min(max_frames, clip_frames))], then
    rounded down to a multiple of 2 (Qwen's `smart_nframes`). Needs clip_frames ≥ 2."""
    upper = min(max_frames, clip_frames) // FRAME_FACTOR * FRAME_FACTOR
    wanted = clip_frames / source_fps * fps
    n = int(min(max(wanted, FRAME_FACTOR), upper))
    return n // FRAME_FACTOR * FRAME_FACTOR


def clip_indices(start: int, end: int, n: int) -> list[int]:
    """`n` source frame indices spread over [start, end): start + round(linspace(0, end − start − 1, n))."""
    return (start + np.round(np.linspace(0, end - start - 1, n)).astype(np.int64)).tolist()


def resize_frames(frames: np.ndarray, max_pixels: int) -> np.ndarray:
    """(T, H, W, 3) frames downscaled to at most `max_pixels` pixels each (smart_resize, factor 28,
    bicubic with antialiasing); returned as they are when already within budget or `max_pixels` is 0."""
    t, h, w = frames.shape[:3]
    if not max_pixels or h * w <= max_pixels:
        return frames
    new_h, new_w = media.smart_resize(h, w, media.QWEN2_VL_FACTOR, media.QWEN2_VL_FACTOR**2, max_pixels)
    out = [np.asarray(Image.fromarray(f).resize((new_w, new_h), Image.Resampling.BICUBIC)) for f in frames]
    return np.stack(out) if t else frames


# --------------------------------------------------------------------------------------------------
# Prompt


def intro_text(params: VideoJigsawParams) -> str:
    """What the model is shown; depends on the parameters only, never on the sample's answer."""
    k = params.clips
    return (
        f"A video was cut into {k} clips of equal length, with a short gap removed between neighbouring clips. "
        f"The clips are shown below in shuffled order, each after its label (Clip 1 to Clip {k}).\n"
    )


def instruction_text(params: OrderingParams) -> str:
    """The task and the exact answer format, with one example permutation of length K (`params.clips`);
    shared by the clip-ordering tasks (`video_jigsaw`, `temporal_jigsaw`)."""
    k = params.clips  # type: ignore[attr-defined]
    return (
        f"\nPut the clips back in time order: give the clip labels from the earliest clip to the latest, as {k} "
        f"comma-separated numbers. If, say, Clip 2 holds the start of the video and Clip 1 its end, the answer "
        f"begins with 2 and ends with 1. {answer_instruction(params.answer_mode, 'labels', think=params.think)} "
        f"Example of the format for {k} clips: {params.example(k)}"
    )


# --------------------------------------------------------------------------------------------------
# Task


@dataclass
class VideoJigsaw(OrderingTask):
    """Put shuffled clips of a video back in chronological order. Answer: K labels, comma-separated."""

    Params: ClassVar[type[VideoJigsawParams]] = VideoJigsawParams
    name: ClassVar[str] = NAME
    reference_thought: ClassVar[str] = REFERENCE_THOUGHT
    params: VideoJigsawParams = field(default_factory=VideoJigsawParams)
    """The split, sampling, prompt and reward parameters."""

    def sources(self, corpus: Corpus | str | Path | None = None) -> Sequence[VideoItem]:
        """The videos of the default corpus, or every video under a folder path."""
        return video_sources(NAME, corpus)

    def make(self, source_item: VideoItem | str | Path, rng: np.random.Generator) -> Sample:
        """The Sample for one video: K shuffled clips (frame lists) and the question.

        One seed is drawn from `rng` and stored in `meta["seed"]`; the shuffle comes from a
        generator seeded with it. Raises `SkipItem("video_too_short")` when the video is shorter than
        `min_duration` seconds or a trimmed clip would have fewer than `min_frames_per_clip` frames,
        `MediaError` for unreadable files.
        """
        source_id, path = item_path(source_item)
        p = self.params
        info = video_info(path)  # MediaError naming the file when unreadable
        num_frames, source_fps = info.num_frames, info.fps
        duration = info.duration  # num_frames / fps
        if duration < p.min_duration:
            raise SkipItem(
                "video_too_short",
                f"{path}: {duration:.2f} s ({num_frames} frames at {source_fps:g} fps) is shorter than "
                f"min_duration {p.min_duration:g} s",
            )
        split = split_clips(num_frames, p.clips, p.trim_ratio)
        clip_frames = split.length - 2 * split.trim
        if clip_frames < p.min_frames_per_clip:
            raise SkipItem(
                "video_too_short",
                f"{path}: {num_frames} frames give {p.clips} clips of {max(clip_frames, 0)} frames "
                f"(trim ratio {p.trim_ratio}); need at least {p.min_frames_per_clip} per clip",
            )
        n = frames_per_clip(clip_frames, source_fps, p.fps, p.max_frames_per_clip)
        indices = [clip_indices(start, end, n) for start, end in split.ranges]
        decoded = read_frames(path, np.ravel(indices)).frames  # only the sampled frames
        resized = resize_frames(decoded, p.frame_max_pixels)
        frames = resized.reshape(p.clips, n, *resized.shape[1:])  # (K, n, H, W, 3), clips in true order
        clip_fps = n / clip_frames * source_fps

        seed = int(rng.integers(2**63))
        shuffle = shuffle_and_label(p.clips, np.random.default_rng(seed))
        content: list[dict[str, Any]] = [{"type": "text", "text": intro_text(p)}]
        shown = [
            {
                "type": "video",
                "video": list(frames[true_index]),
                "fps": clip_fps,
                "timestamps": [(i - split.ranges[true_index][0]) / source_fps for i in indices[true_index]],
            }
            for true_index in shuffle.order
        ]
        content += labelled_items("Clip", shown)
        content.append({"type": "text", "text": instruction_text(p)})
        meta = {
            "source": source_id,
            "seed": seed,
            "clips": p.clips,
            "order": list(shuffle.order),
            "num_frames": num_frames,
            "source_fps": source_fps,
            "duration": duration,
            "skip": split.skip,
            "clip_length": split.length,
            "trim": split.trim,
            "clip_ranges": [list(r) for r in split.ranges],
            "frame_indices": indices,
            "frame_size": [int(frames.shape[3]), int(frames.shape[2])],
            "answer_mode": p.answer_mode,
            "think": p.think,
            "params": to_dict(p),
        }
        return Sample(
            id=f"{NAME}-{source_id}-{seed:016x}",
            task=NAME,
            messages=[{"role": "user", "content": content}],
            answer=list(shuffle.labels),
            meta=meta,
        )

    def evidence(self, sample: Sample) -> list[Panel]:
        """Each clip as shown under its label, and the clips reordered by the answer, earliest first, each with
        the source frames it was cut from (`meta["clip_ranges"]`, in time order)."""
        ranges = sample.meta.get("clip_ranges")
        spans = [f"source frames {a}-{b - 1}" for a, b in ranges] if ranges else None
        return evidence.clip_order_panels(sample, spans)


__all__ = [
    "ClipSplit",
    "VideoJigsaw",
    "VideoJigsawParams",
    "clip_indices",
    "frames_per_clip",
    "instruction_text",
    "intro_text",
    "resize_frames",
    "split_clips",
]
