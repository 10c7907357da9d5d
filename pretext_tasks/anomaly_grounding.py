"""`anomaly_grounding`: one segment of a video is perturbed; the model gives its start and end time.

VideoSSR (He et al. 2025, arXiv 2511.06281), docs/videossr.md. On the F
frames of `pretext_tasks.videossr.sample_video` (48 from the middle 90 %, shown at i / sample_fps):

    t ~ U{segment_frames}            segment length in frames (8..16 inclusive by default)
    s ~ U{0, ..., F − t}             first perturbed frame; frames [s, s + t) are perturbed
    answer = "{s / sample_fps}-{(s + t) / sample_fps}"   seconds, `decimals` places (end exclusive)

with one perturbation type of `pretext_tasks.perturbations` (drawn from `perturbations`), its random
parameters drawn once per segment (`per_frame_params` draws them per frame, as the released code
does for Noise and the zooms), scaled by `strength` (1: VideoSSR's; below 1: subtler, the Hard knob).

Ground truth from the media: every frame inside the segment must differ visibly from its source
frame, by a mean absolute difference of at least `min_frame_change` grey levels (2 of 255 by default),
or the draw is repeated (a new segment and parameters, and for Swap a new partner video, up to
`MAX_DRAWS` times, then `SkipItem("perturbation_invisible")`: e.g. Mirror on a uniform video, a Swap
partner that is a re-encode of the same footage, a Shuffle of nearly still frames). Frames outside are
the source frames untouched. `decimals` is 1 (VideoSSR) unless sample_fps ≥ 10, when one decimal can no longer
name a frame: then the smallest number of places with 10^−d · sample_fps < 1, so rounding an answer
time t back to the frame index round(t · sample_fps) always gives the true frame.

Swap replaces the segment by the same frame positions of another video of the task's source list
(what `sources()` returned; for a bare path, the other videos of its folder). Reward: temporal IoU of the
parsed `start-end` answer (`rewards.temporal.grounding_reward`): reversed, worded or unit-suffixed
intervals score 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mmrl.config import to_dict
from mmrl.contracts import Reward
from mmrl.errors import ConfigError, MediaError, SkipItem
from mmrl.sample import Sample
from mmrl.task import Panel, Task
from pretext_tasks import evidence, videossr
from pretext_tasks.base import degenerate, item_path, video_sources
from pretext_tasks.perturbations import PERTURBATIONS, changed_mask, frame_change, perturb
from rewards.extract import wrap_answer
from rewards.temporal import grounding_reward, parse_interval

if TYPE_CHECKING:
    from mmrl.corpus import Corpus, VideoItem

NAME = "anomaly_grounding"
MAX_DRAWS = 8
"""Segments tried per video before it is skipped because the perturbation does not show."""
MAX_SWAP_PARTNERS = 4
"""Other videos tried for Swap before the sample is skipped (`no_swap_partner`)."""


@dataclass
class AnomalyGroundingParams(videossr.VideoSSRParams):
    perturbations: tuple[str, ...] = tuple(PERTURBATIONS)
    """Perturbation types to draw from, uniformly, one per sample (all 15 by default; the released
    training mix used channel_swap, mirror, zoom_out and rotate180, one dataset each)."""
    segment_frames: tuple[int, int] = (8, 16)
    """Range (inclusive) of the perturbed segment's length in frames (VideoSSR: 8–16 of 48). The minimum is at
    most frames / 2: longer segments all overlap the middle, and replying "the whole video" scores IoU > 0.5
    on every sample (a degenerate setting)."""
    per_frame_params: bool = False
    """Draw Noise / ZoomIn / ZoomOut parameters per frame (the released code) instead of per segment."""
    strength: float = 1.0
    """Magnitude of the perturbations that have one (noise σ, zoom factors, blur radius, saturation):
    1 is VideoSSR's, lower is subtler (see `perturbations.perturb`)."""
    min_frame_change: float = 2.0
    """Visibility threshold: every perturbed frame must differ from its source frame by at least this mean
    absolute difference (grey levels 0–255, over all pixels and channels), else the draw is redone and, after
    `MAX_DRAWS`, the video skipped (`perturbation_invisible`); 0 only requires some pixel to change. 2 sits
    above what re-encoding the same footage changes (0.5 in the reported b.mp4 / b.avi case; 0.9–2.0 for a
    lossless or high-quality copy of an H.264 video, measured at the default corpus's size and on larger
    footage shrunk to the pixel budget) and below what real perturbations change at strength 1 (at least
    5 on camera pans over real photos; only Shuffle, StutterHold and Blur of slow, smooth footage come
    close, and those draws are redone)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = [p for p in self.perturbations if p not in PERTURBATIONS]
        if unknown or not self.perturbations:
            raise ConfigError(
                f"{NAME}: unknown or no perturbations {unknown or '[]'}; valid: {', '.join(PERTURBATIONS)}"
            )
        lo, hi = self.segment_frames
        if not 2 <= lo <= hi <= self.frames:
            raise ConfigError(f"{NAME}: segment_frames must satisfy 2 <= min <= max <= frames, got {lo}, {hi}")
        if 2 * lo > self.frames:  # then "the whole video" has IoU lo / F > 1/2 with every segment
            whole = " (the answer would always be the whole video)" if lo == self.frames else ""
            raise degenerate(
                NAME,
                f"segment_frames = ({lo}, {hi}) of frames = {self.frames}",
                "every segment covers more than half of the video, so the constant reply 'the whole video' has "
                f"IoU above 0.5 on every sample{whole}",
                f"use a minimum of at most {self.frames // 2} frames",
            )
        if not self.strength > 0:
            raise ConfigError(f"{NAME}: strength must be positive, got {self.strength}")
        if not 0 <= self.min_frame_change <= 255:
            raise ConfigError(f"{NAME}: min_frame_change must be in [0, 255] grey levels, got {self.min_frame_change}")


def answer_decimals(sample_fps: float) -> int:
    """Decimal places of answer times: 1, or more when 0.1 s is not finer than a frame (fps ≥ 10)."""
    return max(1, math.floor(math.log10(sample_fps)) + 1) if sample_fps > 0 else 1


def interval_text(start: float, end: float, decimals: int) -> str:
    """`start-end` with `decimals` places: the answer format the prompt states."""
    return f"{start:.{decimals}f}-{end:.{decimals}f}"


def question_text(description: str, num_frames: int, sample_fps: float, decimals: int) -> str:
    """The question after the video; depends on the type and the clock, never on the answer."""
    unit = "one decimal" if decimals == 1 else f"{decimals} decimals"
    return (
        f"\nThe video above has {num_frames} frames shown at {sample_fps:.2f} frames per second "
        f"({num_frames / sample_fps:.1f} seconds). In one continuous segment of it, {description}. "
        f"At what time, in seconds, does that segment start and end? Give both times with {unit}, "
        f"start first, separated by a hyphen."
    )


@dataclass
class AnomalyGrounding(Task):
    """Find the perturbed segment of a video. Answer: `start-end` in seconds."""

    Params: ClassVar[type[AnomalyGroundingParams]] = AnomalyGroundingParams
    name: ClassVar[str] = NAME
    params: AnomalyGroundingParams = field(default_factory=AnomalyGroundingParams)
    """Frame sampling, segment, perturbation and answer parameters."""
    _pool: Sequence[Any] = field(default=(), repr=False)

    def sources(self, corpus: Corpus | str | Path | None = None) -> Sequence[VideoItem]:
        """The videos of the default corpus or of a folder (also the pool Swap draws partners from)."""
        self._pool = video_sources(NAME, corpus)
        return self._pool

    def make(self, source_item: VideoItem | str | Path, rng: np.random.Generator) -> Sample:
        """The Sample for one video: F frames with one perturbed segment, and the question.

        Raises `SkipItem` (`video_too_short`, `perturbation_invisible`, `no_swap_partner`) or
        `MediaError` for unusable videos. A draw whose segment has a frame changed by less than
        `min_frame_change` is redone with a new segment, parameter and (Swap) partner.
        """
        p = self.params
        source_id, path = item_path(source_item)
        video = videossr.sample_video(path, p, source_id)
        tag = int(rng.integers(2**63))  # the Sample id; ids never carry the answer
        kind = str(p.perturbations[int(rng.integers(len(p.perturbations)))])
        other: videossr.SampledVideo | None = None
        decoded: dict[Path, videossr.SampledVideo] = {}  # Swap partners decoded so far
        best = 0.0  # the largest smallest-frame change of a refused draw, for the skip message
        for _ in range(MAX_DRAWS):
            if PERTURBATIONS[kind].needs_other:  # a new partner each draw: a near-copy of this video is not kept
                other = self._swap_partner(path, rng, decoded)
            t = int(rng.integers(p.segment_frames[0], p.segment_frames[1] + 1))
            s = int(rng.integers(0, p.frames - t + 1))
            segment = video.frames[s : s + t]
            out = perturb(
                segment,
                kind,
                rng,
                other=None if other is None else other.frames[s : s + t],
                per_frame=p.per_frame_params,
                strength=p.strength,
            )
            change = frame_change(segment, out)
            if (changed_mask(segment, out) & (change >= p.min_frame_change)).all():
                break
            best = max(best, float(change.min()))
        else:
            raise SkipItem(
                "perturbation_invisible",
                f"{path}: {kind} left a segment frame changed by {best:.2f} grey levels or less on average in "
                f"each of {MAX_DRAWS} draws (min_frame_change {p.min_frame_change:g})",
            )
        frames = video.frames.copy()
        frames[s : s + t] = out
        decimals = answer_decimals(video.sample_fps)
        start, end = s / video.sample_fps, (s + t) / video.sample_fps
        answer = interval_text(start, end, decimals)
        example = interval_text(1.5, 4.0, decimals)
        content = [
            {"type": "text", "text": "Watch the video.\n"},
            videossr.video_item(frames, video.sample_fps),
            {
                "type": "text",
                "text": question_text(PERTURBATIONS[kind].description, p.frames, video.sample_fps, decimals),
            },  # fmt: skip
            {"type": "text", "text": " " + videossr.format_instruction(p.answer_mode, "start-end", example)},
        ]
        meta = {
            "source": source_id,
            "perturbation": kind,
            "start_frame_index": s,
            "perturbed_frames_count": t,
            "smallest_frame_change": round(float(change.min()), 3),
            "interval_seconds": [start, end],
            "decimals": decimals,
            "sample_fps": video.sample_fps,
            "frame_indices": video.indices,
            "num_frames": video.num_frames,
            "source_fps": video.source_fps,
            "swap_source": other.source if other is not None else None,
            "answer_mode": p.answer_mode,
            "params": to_dict(p),
        }
        return Sample(
            id=f"{NAME}-{source_id}-{tag:016x}",
            task=NAME,
            messages=videossr.messages(content, p.answer_mode),
            answer=answer,
            meta=meta,
        )

    def _swap_partner(
        self, path: Path, rng: np.random.Generator, decoded: dict[Path, videossr.SampledVideo]
    ) -> videossr.SampledVideo:
        """The F frames of another video (Swap shows its frames at the same positions): from the list
        `sources()` returned, or, when this task was handed a bare path, from the video's own folder.
        `decoded` keeps the partners decoded so far for this sample (a redraw may pick one again)."""
        pool = self._pool or video_sources(NAME, path.parent)
        others = [item for item in pool if item_path(item)[1] != path]
        if not others:
            raise SkipItem("no_swap_partner", f"{path}: swap needs another video; call sources() on a folder of 2+")
        for _ in range(MAX_SWAP_PARTNERS):
            other_id, other_path = item_path(others[int(rng.integers(len(others)))])
            if other_path in decoded:
                return decoded[other_path]
            try:
                partner = videossr.sample_video(other_path, self.params, other_id)
            except (SkipItem, MediaError):
                continue
            decoded[other_path] = partner
            return partner
        raise SkipItem("no_swap_partner", f"{path}: {MAX_SWAP_PARTNERS} candidate partner videos were unusable")

    def reward(self, completion: str, sample: Sample) -> Reward:
        """Temporal IoU of the answered interval with the stated one (`grounding_reward`)."""
        truth = parse_interval(str(sample.answer))
        if truth is None:
            raise ValueError(f"sample {sample.id}: answer {sample.answer!r} is not a start-end interval")
        mode = sample.meta.get("answer_mode", self.params.answer_mode)
        return grounding_reward(completion, truth, mode=mode)

    def reference_completion(self, sample: Sample) -> str:
        """The SFT target: the interval in the asked format."""
        return wrap_answer(str(sample.answer), sample.meta.get("answer_mode", self.params.answer_mode))

    def evidence(self, sample: Sample) -> list[Panel]:
        """The frame timeline with the perturbed segment [start, end) marked, and the segment's frames (up to
        6, first and last included) between the unperturbed frames just before and after it. The sample keeps
        only the shown frames, not the source ones: the neighbours are the comparison."""
        (frames,) = evidence.videos(sample)
        meta = sample.meta
        s, t, kind = int(meta["start_frame_index"]), int(meta["perturbed_frames_count"]), str(meta["perturbation"])
        fps, decimals = float(meta["sample_fps"]), int(meta.get("decimals", 1))
        segment = range(s, s + t)
        marks = dict.fromkeys(segment, evidence.MARK)
        line = evidence.timeline(frames, marks, lambda i: f"{i}  {i / fps:.{decimals}f}s")
        picks = [s + j for j in evidence.spread(t, 6)]
        picks = ([s - 1] if s > 0 else []) + picks + ([s + t] if s + t < len(frames) else [])
        closeups = []
        for i in picks:
            inside = i in segment
            thumb = evidence.outlined(evidence.fit(frames[i], 336, 84), evidence.MARK if inside else evidence.RULE, 3)
            note = "" if inside else (" before" if i < s else " after")
            closeups.append(evidence.captioned(thumb, f"{i} ({i / fps:.{decimals}f}s){note}"))
        perturbation = PERTURBATIONS.get(kind)
        what = f"{kind}: {perturbation.description}" if perturbation else kind
        if meta.get("swap_source"):
            what += f" (frames of {meta['swap_source']})"
        return [
            Panel(f"All {len(frames)} frames; marked: the perturbed frames {s}-{s + t - 1} = {sample.answer} s", line),
            Panel(f"The segment ({what}) between the unperturbed frames before and after it", evidence.flow(closeups)),
        ]

    def random_answer(self, sample: Sample, rng: np.random.Generator) -> str:
        """A random guess: two uniform times over the video, sorted (mean IoU ≈ 0.25 for these segments)."""
        duration = self.params.frames / float(sample.meta["sample_fps"])
        a, b = np.sort(rng.uniform(0.0, duration, size=2))
        text = interval_text(float(a), float(b), int(sample.meta.get("decimals", 1)))
        return wrap_answer(text, sample.meta.get("answer_mode", self.params.answer_mode))


__all__ = ["AnomalyGrounding", "AnomalyGroundingParams", "answer_decimals", "interval_text", "question_text"]
