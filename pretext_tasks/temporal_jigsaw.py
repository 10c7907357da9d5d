"""`temporal_jigsaw`: the F frames of a video are cut into K clips shown shuffled; the model orders them.

VideoSSR (He et al. 2025, arXiv 2511.06281), docs/videossr.md. On the F frames
of `pretext_tasks.videossr.sample_video` (48 from the middle 90 %):

    L = F // K                         frames per clip (6 clips × 8 frames by default; 8 × 6 is Hard)
    clip i = frames [i·L, (i+1)·L)     consecutive, **no trim** (unlike Visual Jigsaw's video jigsaw);
                                       the last F − K·L frames are dropped when K does not divide F

Each clip is a separate video at the same `sample_fps`, its timestamps starting at 0 (absolute times
would give the order away). The shuffle and the answer follow `pretext_tasks.base.Shuffle`: clips are
shown under labels 1..K, and the answer lists, for each clip in chronological order, the label it was
shown under. mmrl writes it as comma-separated labels (`3, 4, 1, 5, 6, 2`), the format every mmrl
ordering task shares and parses, instead of the released digit string (`341562`), which cannot go
past K = 9. Reward (`rewards.ordering.ordering_reward`): by default VideoSSR's
1 − footrule / ⌊K²/2⌋ for a valid permutation, no format term; `footrule: false, gamma: 0` gives
exact match only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mmrl.config import to_dict
from mmrl.errors import ConfigError
from mmrl.sample import Sample
from mmrl.task import Panel
from pretext_tasks import evidence, videossr
from pretext_tasks.base import (
    OrderingTask,
    check_order_size,
    item_path,
    labelled_items,
    shuffle_and_label,
    video_sources,
)
from pretext_tasks.video_jigsaw import instruction_text
from rewards.extract import AnswerMode
from rewards.ordering import OrderingParams

if TYPE_CHECKING:
    from mmrl.corpus import Corpus, VideoItem

NAME = "temporal_jigsaw"
REFERENCE_THOUGHT = "I look for the clip that starts the action and follow the motion from clip to clip."
"""The reasoning placed in SFT targets when the prompt asks for <think> (cold start only)."""


@dataclass
class TemporalJigsawParams(videossr.VideoSSRParams, OrderingParams):
    answer_mode: AnswerMode = "raw"
    """Reply format asked for and parsed: `raw` (VideoSSR: a direct answer), `answer_tag` or `boxed`."""
    think: bool = False
    """Ask for <think> reasoning first (and require it); not with `raw`."""
    footrule: bool = True
    """Partial credit 1 − D/⌊K²/2⌋ for valid permutations (VideoSSR); false: γ credit (0: exact only)."""
    format_score: float = 0.0
    """Added when the format gate passes; VideoSSR's reward has no format term."""
    clips: int = 6
    """K, the number of clips (6: Easy / the training mix; 8: Hard). 3..F (2 clips always answer `2, 1`)."""

    def __post_init__(self) -> None:
        videossr.VideoSSRParams.__post_init__(self)
        OrderingParams.__post_init__(self)
        check_order_size(NAME, f"clips = {self.clips}", self.clips)
        if self.clips > self.frames:
            raise ConfigError(f"{NAME}: clips must be in [3, frames={self.frames}], got {self.clips}")


def intro_text(clips: int, frames_per_clip: int) -> str:
    """What the model is shown; depends on the parameters only, never on the answer."""
    return (
        f"A video was cut into {clips} consecutive clips of {frames_per_clip} frames each. The clips are shown "
        f"below in shuffled order, each after its label (Clip 1 to Clip {clips}).\n"
    )


@dataclass
class TemporalJigsaw(OrderingTask):
    """Order K shuffled consecutive clips of a video. Answer: K labels, comma-separated."""

    Params: ClassVar[type[TemporalJigsawParams]] = TemporalJigsawParams
    name: ClassVar[str] = NAME
    reference_thought: ClassVar[str] = REFERENCE_THOUGHT
    params: TemporalJigsawParams = field(default_factory=TemporalJigsawParams)
    """Frame sampling, clip and answer parameters."""

    def sources(self, corpus: Corpus | str | Path | None = None) -> Sequence[VideoItem]:
        """The videos of the default corpus, or every video under a folder path."""
        return video_sources(NAME, corpus)

    def make(self, source_item: VideoItem | str | Path, rng: np.random.Generator) -> Sample:
        """The Sample for one video: K shuffled clips (frame lists) and the question."""
        p = self.params
        source_id, path = item_path(source_item)
        video = videossr.sample_video(path, p, source_id)
        length = p.frames // p.clips
        clips = video.frames[: p.clips * length].reshape(p.clips, length, *video.frames.shape[1:])  # (K, L, H, W, 3)
        seed = int(rng.integers(2**63))
        shuffle = shuffle_and_label(p.clips, np.random.default_rng(seed))
        content: list[dict[str, Any]] = [{"type": "text", "text": intro_text(p.clips, length)}]
        shown = [videossr.video_item(clips[i], video.sample_fps) for i in shuffle.order]  # times from 0: no order leak
        content += labelled_items("Clip", shown)
        content.append({"type": "text", "text": instruction_text(p)})
        meta = {
            "source": source_id,
            "seed": seed,
            "clips": p.clips,
            "frames_per_clip": length,
            "order": list(shuffle.order),
            "sample_fps": video.sample_fps,
            "frame_indices": video.indices,
            "num_frames": video.num_frames,
            "source_fps": video.source_fps,
            "answer_mode": p.answer_mode,
            "think": p.think,
            "params": to_dict(p),
        }
        return Sample(
            id=f"{NAME}-{source_id}-{seed:016x}",
            task=NAME,
            messages=videossr.messages(content, p.answer_mode),
            answer=list(shuffle.labels),
            meta=meta,
        )

    def evidence(self, sample: Sample) -> list[Panel]:
        """Each clip as shown under its label, and the clips reordered by the answer, earliest first, each with
        the frames of the sampled video it holds (clip r: frames r·L .. (r+1)·L − 1)."""
        length = sample.meta.get("frames_per_clip")
        spans = [f"frames {r * length}-{(r + 1) * length - 1}" for r in range(len(sample.answer))] if length else None
        return evidence.clip_order_panels(sample, spans)


__all__ = ["TemporalJigsaw", "TemporalJigsawParams", "intro_text"]
