"""The frame pipeline shared by VideoSSR's three tasks (`anomaly_grounding`, `object_counting`,
`temporal_jigsaw`), and their shared parameters.

He et al. 2025, *VideoSSR: Video Self-Supervised Reinforcement Learning* (arXiv 2511.06281); fact
docs/videossr.md. Not a task: the task modules import it.

Frames. A video of T source frames (average rate `source_fps`) keeps the window
`[start, end) = [int(m·T), int((1 − m)·T))` (m = `margin`, 0.05: the middle 90 %) and shows F frames
(`frames`, 48) at

    index_i = start + i · ((end − start) // F),      i = 0..F−1

so the window must hold at least F frames (else `SkipItem("video_too_short")`). The model sees them
as one frame list at

    sample_fps = F / (T / source_fps)                (frames per second of the *whole* video)

and frame i is shown at **t_i = i / sample_fps** seconds: the clock the prompt's answers use. (The
released code passes this rate to Qwen3-VL, which writes per-frame timestamps from it; we store the
same times in each video item's `timestamps`.) Frames larger than `frame_max_pixels` are downscaled
(Qwen's smart_resize, bicubic) before any perturbation or drawing, so the pixels a task edits are the
pixels written to the dataset. Source files are only read: every edited frame lives in the Sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmrl import media
from mmrl.errors import ConfigError, SkipItem
from mmrl.video import read_frames, video_info
from pretext_tasks.video_jigsaw import resize_frames
from rewards.extract import AnswerMode, check_mode, wrap_answer

if TYPE_CHECKING:
    pass

DIRECT_ANSWER = "Answer directly, without explaining your reasoning."
"""The sheet's system instruction for every VideoSSR task (its rewards score the whole reply)."""


@dataclass
class VideoSSRParams:
    """Frame sampling and answer format shared by the three VideoSSR tasks (a base for their `Params`)."""

    frames: int = 48
    """F, frames shown from each video (the released code: 48)."""
    margin: float = 0.05
    """Share of the video cut at each end before sampling (0.05 keeps the middle 90 %)."""
    frame_max_pixels: int = 256 * 256
    """Frames with more pixels are downscaled (Qwen smart_resize, factor 28, bicubic) to at most this
    many (the released per-frame budget, 256·256); 0 keeps every frame as decoded."""
    answer_mode: AnswerMode = "raw"
    """Reply format asked for and parsed: `raw` (VideoSSR: the whole reply is the answer, with a
    direct-answer system message), `answer_tag` or `boxed` (the answer span is extracted first; use
    these with reasoning prompts, never `raw`)."""

    def __post_init__(self) -> None:
        check_mode(self.answer_mode)
        if self.frames < 2:
            raise ConfigError(f"frames must be >= 2, got {self.frames}")
        if not 0.0 <= self.margin < 0.5:
            raise ConfigError(f"margin must be in [0, 0.5), got {self.margin}")
        if self.frame_max_pixels and self.frame_max_pixels < media.QWEN2_VL_FACTOR**2:
            raise ConfigError(f"frame_max_pixels must be 0 or >= 784, got {self.frame_max_pixels}")


@dataclass
class SampledVideo:
    """The F frames a VideoSSR task shows, with the clock the model sees."""

    source: str
    """Id of the source video (corpus id, or the file name with its extension)."""
    path: str
    frames: np.ndarray
    """(F, H, W, 3) uint8, after the pixel budget."""
    indices: list[int]
    """Source frame index of each shown frame."""
    sample_fps: float
    """F / duration: the rate the model is told; frame i is shown at i / sample_fps seconds."""
    num_frames: int
    source_fps: float

    def timestamps(self, first: int = 0, count: int | None = None) -> list[float]:
        """Shown times (seconds) of frames first..first+count−1 on the model's clock."""
        count = len(self.indices) - first if count is None else count
        return [(first + i) / self.sample_fps for i in range(count)]


def window_indices(num_frames: int, frames: int, margin: float) -> list[int] | None:
    """The F source indices `start + i·((end − start) // F)` of the kept window, or None when the
    window `[int(m·T), int((1 − m)·T))` holds fewer than F frames."""
    start, end = int(margin * num_frames), int((1.0 - margin) * num_frames)
    step = (end - start) // frames
    if step < 1:
        return None
    return [start + i * step for i in range(frames)]


def sample_video(path: str | Path, params: VideoSSRParams, source_id: str | None = None) -> SampledVideo:
    """Decode the F frames of `path` the pipeline shows (see the module docstring).

    Raises `MediaError` (naming the file) when it cannot be read, `SkipItem("video_too_short")` when
    its middle window holds fewer than F frames.
    """
    info = video_info(path)
    indices = window_indices(info.num_frames, params.frames, params.margin)
    if indices is None:
        raise SkipItem(
            "video_too_short",
            f"{path}: {info.num_frames} frames leave fewer than {params.frames} in the middle "
            f"{100 * (1 - 2 * params.margin):.0f} %",
        )
    decoded = read_frames(path, indices).frames
    frames = resize_frames(decoded, params.frame_max_pixels)
    return SampledVideo(
        source=source_id or Path(path).name,
        path=str(path),
        frames=np.ascontiguousarray(frames),
        indices=indices,
        sample_fps=params.frames / (info.num_frames / info.fps),
        num_frames=info.num_frames,
        source_fps=info.fps,
    )


def video_item(frames: np.ndarray | Sequence[np.ndarray], sample_fps: float, first: int = 0) -> dict[str, Any]:
    """A prompt video item: the frame list, its rate, and per-frame shown times starting at `first`."""
    frames = list(frames)
    return {
        "type": "video",
        "video": frames,
        "fps": float(sample_fps),
        "timestamps": [(first + i) / sample_fps for i in range(len(frames))],
    }


def messages(content: list[dict[str, Any]], answer_mode: AnswerMode) -> list[dict[str, Any]]:
    """The chat: a direct-answer system message (raw answers only, as in VideoSSR) and the user turn."""
    out: list[dict[str, Any]] = []
    if answer_mode == "raw":
        out.append({"role": "system", "content": DIRECT_ANSWER})
    out.append({"role": "user", "content": content})
    return out


def format_instruction(answer_mode: AnswerMode, what: str, example: str) -> str:
    """One sentence stating the reply format, worded to match `rewards.extract`, with an example."""
    if answer_mode == "raw":
        return f"Reply with only {what}, for example: {example}"
    return f"Reply with {what} inside the answer format, for example: {wrap_answer(example, answer_mode)}"


__all__ = [
    "DIRECT_ANSWER",
    "SampledVideo",
    "VideoSSRParams",
    "format_instruction",
    "messages",
    "sample_video",
    "video_item",
    "window_indices",
]
