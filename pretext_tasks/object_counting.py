"""`object_counting`: filled shapes are drawn into some frames of a video; the model counts each kind.

VideoSSR (He et al. 2025, arXiv 2511.06281), docs/videossr.md. On the F
frames of `pretext_tasks.videossr.sample_video`, for each shape kind in `shapes` (in order):

    k ~ U{frames_per_shape}                      frames that get this kind (1..3)
    frames: drawn from the unused frames (one kind per frame), any two of the same kind more than
            `min_frame_gap` apart (|i − j| > 8)
    per frame: U{instances_per_frame} instances (1..3), so a count is in [1, 9] by default
    instance: colour with each channel ~ U{50..255}; size ~ U[0.2, 0.4] · min(H, W) (`size_range`);
              circle of diameter size, square of side size, equilateral triangle of side size,
              both rotated by U[0, 360)°; filled, no outline, no antialiasing

The answer is the counts in the order of `shapes`, e.g. `3,1,4`. Reward: VideoSSR's mean over kinds of
max(0, 1 − |p − g| / g); a reply with a wrong number of counts scores 0 (`rewards.temporal.counting_reward`).
`meta["drawn"]` lists each frame with shapes: its kind, its number of instances and each instance's pixel
box `[left, top, right, bottom)` (the preview's evidence boxes them).

Placement [ours, stricter than the released code]: a centre lies in the central `center_box` share of
the frame and the whole shape inside the frame; shapes of one frame never touch (their masks, grown by
`gap` pixels, are disjoint). The released code keeps its last try after 20 failed spacing checks, so
its shapes can overlap and merge into one blob, which makes the stated count wrong for the pixels
shown. Here a failed placement (`PLACEMENT_TRIES` tries) shrinks that instance by 15 % and tries
again, so the count always matches the media: the connected components of the drawn masks of a frame
are exactly its instances.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np
from PIL import Image, ImageDraw

from mmrl.config import to_dict
from mmrl.contracts import Reward
from mmrl.errors import ConfigError, SkipItem
from mmrl.sample import Sample
from mmrl.task import Panel, Task
from pretext_tasks import evidence, videossr
from pretext_tasks.base import MIN_ANSWERS, degenerate, item_path, video_sources
from rewards.extract import wrap_answer
from rewards.temporal import counting_reward, parse_counts

if TYPE_CHECKING:
    from mmrl.corpus import Corpus, VideoItem

NAME = "object_counting"
SHAPES = ("circle", "square", "triangle")
"""The shape kinds this module can draw."""
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
PLACEMENT_TRIES = 30
"""Positions tried for one instance before it is shrunk by `SHRINK`."""
SHRINK = 0.85
MIN_SIZE = 6
"""Smallest shape size in pixels; an instance that cannot be placed at this size skips the video."""


@dataclass
class ObjectCountingParams(videossr.VideoSSRParams):
    shapes: tuple[str, ...] = SHAPES
    """Shape kinds to count, in the answer's order (any of circle, square, triangle)."""
    frames_per_shape: tuple[int, int] = (1, 3)
    """Range (inclusive) of how many frames each kind is drawn into."""
    instances_per_frame: tuple[int, int] = (1, 3)
    """Range (inclusive) of instances of the kind in each of its frames."""
    min_frame_gap: int = 8
    """Frames of the same kind are more than this many frames apart (VideoSSR: |i − j| > 8)."""
    size_range: tuple[float, float] = (0.2, 0.4)
    """Shape size as a share of min(H, W): circle diameter, square and triangle side."""
    center_box: float = 0.7
    """Centres lie in the central box of this share of the frame's width and height."""
    gap: int = 2
    """Pixels kept free between two shapes of one frame."""
    color_range: tuple[int, int] = (50, 255)
    """Range (inclusive) of each colour channel of a shape."""

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [s for s in self.shapes if s not in SHAPES]
        if bad or not self.shapes or len(set(self.shapes)) != len(self.shapes):
            raise ConfigError(f"{NAME}: shapes must be distinct kinds of {', '.join(SHAPES)}, got {list(self.shapes)}")
        for name in ("frames_per_shape", "instances_per_frame"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi:
                raise ConfigError(f"{NAME}: {name} must satisfy 1 <= min <= max, got {lo}, {hi}")
        lo, hi = self.size_range
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"{NAME}: size_range must satisfy 0 < min <= max <= 1, got {lo}, {hi}")
        if not 0 < self.center_box <= 1:
            raise ConfigError(f"{NAME}: center_box must be in (0, 1], got {self.center_box}")
        if self.min_frame_gap < 0 or self.gap < 0:
            raise ConfigError(f"{NAME}: min_frame_gap and gap must be >= 0")
        c0, c1 = self.color_range
        if not 0 <= c0 <= c1 <= 255:
            raise ConfigError(f"{NAME}: color_range must satisfy 0 <= min <= max <= 255, got {c0}, {c1}")
        # Picking the last frame of the last kind: its earlier picks block 2·gap + 1 frames each, the
        # other kinds' frames one each; one frame must remain free.
        most = self.frames_per_shape[1]
        blocked = (most - 1) * (2 * self.min_frame_gap + 1) + (len(self.shapes) - 1) * most
        if blocked >= self.frames:
            raise ConfigError(
                f"{NAME}: {len(self.shapes)} kinds x up to {most} frames, more than {self.min_frame_gap} apart, "
                f"may not fit in {self.frames} frames; lower frames_per_shape or min_frame_gap, or raise frames"
            )
        self._refuse_degenerate_counts()

    def _refuse_degenerate_counts(self) -> None:
        """Refuse count ranges whose answer is constant or nearly so (pretext_tasks.base, docs/videossr.md)."""
        dist = count_distribution(self.frames_per_shape, self.instances_per_frame)
        kinds = len(self.shapes)
        counts = sorted(dist)
        setting = (
            f"frames_per_shape = {tuple(self.frames_per_shape)} x instances_per_frame = "
            f"{tuple(self.instances_per_frame)} ({kinds} shape kind{'s' * (kinds > 1)})"
        )
        fix = "widen frames_per_shape or instances_per_frame"
        if len(counts) == 1:
            why = f"every count is {counts[0]}, so the answer would always be {counts_text([counts[0]] * kinds)}"
            raise degenerate(NAME, setting, why, fix)
        if len(counts) ** kinds < MIN_ANSWERS:
            why = f"only {len(counts) ** kinds} answers are possible ({', '.join(map(str, counts))})"
            raise degenerate(NAME, setting, why, fix)
        likeliest = max(dist, key=dist.__getitem__)
        if dist[likeliest] ** kinds > 0.5:
            why = f"the answer {counts_text([likeliest] * kinds)} has probability {dist[likeliest] ** kinds:.2f}"
            raise degenerate(NAME, setting, why, fix)
        reply, worst = best_constant_count(counts)
        if worst > 0.5:
            why = (
                f"every count lies in {counts[0]}..{counts[-1]}, so the constant reply "
                f"{counts_text([reply] * kinds)} scores at least {worst:.2f} on every sample"
            )
            raise degenerate(NAME, setting, why, fix)


def count_distribution(frames_per_shape: Sequence[int], instances_per_frame: Sequence[int]) -> dict[int, float]:
    """P(count = g) for one shape kind: k ~ U{frames_per_shape} frames, each with U{instances_per_frame}
    instances, summed (the draw of `ObjectCounting.make`)."""
    (f0, f1), (i0, i1) = frames_per_shape, instances_per_frame
    one = np.zeros(i1 + 1)
    one[i0:] = 1.0 / (i1 - i0 + 1)
    total, dist = np.zeros(f1 * i1 + 1), np.array([1.0])
    for k in range(1, f1 + 1):
        dist = np.convolve(dist, one)  # the sum of k frames' instances
        if k >= f0:
            total[: len(dist)] += dist / (f1 - f0 + 1)
    return {int(g): float(p) for g, p in enumerate(total) if p > 0}


def best_constant_count(counts: Sequence[int]) -> tuple[int, float]:
    """The count p to reply always whose worst score over the possible `counts` g is highest, and that score;
    the score is VideoSSR's 1 if p = g else max(0, 1 − |p − g| / g) (`rewards.temporal.counting_reward`)."""

    def score(p: int, g: int) -> float:
        return 1.0 if p == g else max(0.0, 1.0 - abs(p - g) / g)

    return max(((p, min(score(p, g) for g in counts)) for p in range(max(counts) + 1)), key=lambda x: x[1])


# --------------------------------------------------------------------------------------------------
# Drawing


VERTICES = {"circle": 96, "square": 4, "triangle": 3}
"""Polygon vertices per shape kind (a circle is drawn as a 96-gon)."""


def circumradius(kind: str, size: float) -> float:
    """Distance from the centre to the farthest point of a shape of `size`: circle diameter → size/2,
    square side → size/√2, equilateral triangle side → size/√3."""
    if kind not in VERTICES:
        raise ValueError(f"unknown shape {kind!r}")
    return size / {"circle": 2.0, "square": math.sqrt(2), "triangle": math.sqrt(3)}[kind]


def shape_polygon(kind: str, center: tuple[float, float], size: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a square (side `size`) or an equilateral triangle (side `size`, centred on its
    centroid), rotated by `angle` degrees about `center`; a circle is a 96-gon of diameter `size`."""
    cx, cy = center
    radius, n = circumradius(kind, size), VERTICES[kind]
    theta = np.deg2rad(0.0 if kind == "circle" else angle) + 2 * np.pi * np.arange(n) / n
    return [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in theta]


def shape_mask(kind: str, center: tuple[float, float], size: float, angle: float, hw: tuple[int, int]) -> np.ndarray:
    """The (H, W) bool mask of one filled shape (no antialiasing)."""
    canvas = Image.new("1", (hw[1], hw[0]), 0)
    ImageDraw.Draw(canvas).polygon(shape_polygon(kind, center, size, angle), fill=1)
    return np.asarray(canvas, dtype=bool)


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """`mask` dilated by a (2p+1)² square: p pixels of clearance in every direction."""
    if pixels <= 0:
        return mask
    out = mask.copy()
    h, w = mask.shape
    for dy in range(-pixels, pixels + 1):
        for dx in range(-pixels, pixels + 1):
            ys, yd = slice(max(0, -dy), min(h, h - dy)), slice(max(0, dy), min(h, h + dy))
            xs, xd = slice(max(0, -dx), min(w, w - dx)), slice(max(0, dx), min(w, w + dx))
            out[yd, xd] |= mask[ys, xs]
    return out


def place_shapes(
    kind: str, count: int, hw: tuple[int, int], params: ObjectCountingParams, rng: np.random.Generator
) -> list[tuple[np.ndarray, tuple[int, int, int]]]:
    """`count` non-touching instances of `kind` in an (H, W) frame: (mask, RGB colour) each."""
    h, w = hw
    side = min(h, w)
    taken = np.zeros(hw, dtype=bool)
    out = []
    for _ in range(count):
        size = float(rng.uniform(*params.size_range)) * side
        color = tuple(int(c) for c in rng.integers(params.color_range[0], params.color_range[1] + 1, size=3))
        while True:
            mask = _try_place(kind, size, hw, taken, params, rng)
            if mask is not None:
                break
            size *= SHRINK
            if size < MIN_SIZE:
                raise SkipItem("shapes_do_not_fit", f"{count} {PLURALS[kind]} do not fit in a {w}x{h} frame")
        taken |= _grow(mask, params.gap)
        out.append((mask, color))
    return out


def _try_place(
    kind: str, size: float, hw: tuple[int, int], taken: np.ndarray, params: ObjectCountingParams, rng
) -> np.ndarray | None:
    h, w = hw
    reach = circumradius(kind, size)
    box_w, box_h = params.center_box * w, params.center_box * h
    x0, x1 = max((w - box_w) / 2, reach), min((w + box_w) / 2, w - reach)
    y0, y1 = max((h - box_h) / 2, reach), min((h + box_h) / 2, h - reach)
    if x0 > x1 or y0 > y1:
        return None
    for _ in range(PLACEMENT_TRIES):
        center = (float(rng.uniform(x0, x1)), float(rng.uniform(y0, y1)))
        angle = float(rng.uniform(0.0, 360.0))
        mask = shape_mask(kind, center, size, angle, hw)
        if mask.any() and not (mask & taken).any():
            return mask
    return None


def choose_frames(params: ObjectCountingParams, rng: np.random.Generator) -> dict[str, list[int]]:
    """Frames of each kind: one kind per frame, same-kind frames more than `min_frame_gap` apart."""
    used: set[int] = set()
    chosen: dict[str, list[int]] = {}
    for kind in params.shapes:
        want = int(rng.integers(params.frames_per_shape[0], params.frames_per_shape[1] + 1))
        picked: list[int] = []
        for i in rng.permutation(params.frames):
            if len(picked) == want:
                break
            if int(i) in used or any(abs(int(i) - j) <= params.min_frame_gap for j in picked):
                continue
            picked.append(int(i))
        if not picked:  # cannot happen with the __post_init__ check; kept as a clear failure
            raise SkipItem("shapes_do_not_fit", f"no free frame left for {PLURALS[kind]}")
        used.update(picked)
        chosen[kind] = sorted(picked)
    return chosen


def mask_box(mask: np.ndarray) -> list[int]:
    """[left, top, right, bottom] of a mask's pixels (right and bottom exclusive): where a shape was drawn."""
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


# --------------------------------------------------------------------------------------------------
# Task


def counts_text(counts: Sequence[int]) -> str:
    """The answer payload: `3,1,4`."""
    return ",".join(str(int(c)) for c in counts)


def question_text(shapes: Sequence[str]) -> str:
    """The question; depends on the shape kinds only."""
    names = [PLURALS[s] for s in shapes]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return (
        f"\nFilled {listed} were drawn into some frames of the video above. They can have any colour and "
        "rotation; a kind can appear in one frame or in several, and several times in one frame. How many of "
        f"each kind were drawn in total? Give the {len(names)} counts as comma-separated numbers in the order "
        f"{', '.join(names)}."
    )


@dataclass
class ObjectCounting(Task):
    """Count the shapes drawn into a video, per kind. Answer: counts in the stated order, `3,1,4`."""

    Params: ClassVar[type[ObjectCountingParams]] = ObjectCountingParams
    name: ClassVar[str] = NAME
    params: ObjectCountingParams = field(default_factory=ObjectCountingParams)
    """Frame sampling, shape and answer parameters."""

    def sources(self, corpus: Corpus | str | Path | None = None) -> Sequence[VideoItem]:
        """The videos of the default corpus, or every video under a folder path."""
        return video_sources(NAME, corpus)

    def make(self, source_item: VideoItem | str | Path, rng: np.random.Generator) -> Sample:
        """The Sample for one video: F frames, some with shapes drawn in, and the question."""
        p = self.params
        source_id, path = item_path(source_item)
        video = videossr.sample_video(path, p, source_id)
        tag = int(rng.integers(2**63))  # the Sample id; ids never carry the answer
        frames = video.frames.copy()
        hw = frames.shape[1:3]
        placed: list[dict] = []
        counts = []
        for kind, frame_ids in choose_frames(p, rng).items():
            total = 0
            for i in frame_ids:
                n = int(rng.integers(p.instances_per_frame[0], p.instances_per_frame[1] + 1))
                boxes = []
                for mask, color in place_shapes(kind, n, hw, p, rng):
                    frames[i][mask] = color
                    boxes.append(mask_box(mask))
                total += n
                placed.append({"shape": kind, "frame": i, "instances": n, "boxes": boxes})
            counts.append(total)
        example = counts_text(list(range(len(p.shapes) + 1, 1, -1))[: len(p.shapes)])
        content = [
            {"type": "text", "text": "Watch the video.\n"},
            videossr.video_item(frames, video.sample_fps),
            {"type": "text", "text": question_text(p.shapes)},
            {"type": "text", "text": " " + videossr.format_instruction(p.answer_mode, "the counts", example)},
        ]
        meta = {
            "source": source_id,
            "shapes": list(p.shapes),
            "counts": counts,
            "drawn": sorted(placed, key=lambda d: d["frame"]),
            "sample_fps": video.sample_fps,
            "frame_indices": video.indices,
            "num_frames": video.num_frames,
            "source_fps": video.source_fps,
            "answer_mode": p.answer_mode,
            "params": to_dict(p),
        }
        return Sample(
            id=f"{NAME}-{source_id}-{tag:016x}",
            task=NAME,
            messages=videossr.messages(content, p.answer_mode),
            answer=counts_text(counts),
            meta=meta,
        )

    def reward(self, completion: str, sample: Sample) -> Reward:
        """Mean over kinds of max(0, 1 − |p − g|/g); wrong number of counts → 0 (`counting_reward`)."""
        truth = parse_counts(str(sample.answer), len(sample.meta.get("shapes", self.params.shapes)))
        if truth is None:
            raise ValueError(f"sample {sample.id}: answer {sample.answer!r} is not a list of counts")
        return counting_reward(completion, truth, mode=sample.meta.get("answer_mode", self.params.answer_mode))

    def reference_completion(self, sample: Sample) -> str:
        """The SFT target: the counts in the asked format."""
        return wrap_answer(str(sample.answer), sample.meta.get("answer_mode", self.params.answer_mode))

    def evidence(self, sample: Sample) -> list[Panel]:
        """The frame timeline with the frames that received shapes marked in their kind's colour, and each of
        those frames enlarged with every drawn shape boxed and named (`meta["drawn"]`: frame, kind, boxes)."""
        (frames,) = evidence.videos(sample)
        shapes = list(sample.meta.get("shapes", self.params.shapes))
        colours = {kind: evidence.KIND_COLOURS[k % len(evidence.KIND_COLOURS)] for k, kind in enumerate(shapes)}
        drawn = sample.meta.get("drawn", [])
        marks = {int(d["frame"]): colours[d["shape"]] for d in drawn}
        line = evidence.timeline(frames, marks)
        closeups = []
        for d in drawn:
            frame, kind = frames[int(d["frame"])], d["shape"]
            big = evidence.fit(frame, 480, 120)
            scale = big.width / frame.width
            draw = ImageDraw.Draw(big)
            boxes = [[a * scale - 2, b * scale - 2, c * scale + 1, e * scale + 1] for a, b, c, e in d.get("boxes", [])]
            for box in boxes:
                draw.rectangle(box, outline=colours[kind], width=2)
            for k, box in enumerate(boxes, start=1):  # names last: over every box
                name = evidence.tag(f"{kind} {k}", colours[kind], (255, 255, 255))
                big.paste(name, (max(0, round(box[0])), max(0, round(box[1]) - name.height)))
            n = int(d["instances"])
            closeups.append(evidence.captioned(big, f"frame {d['frame']}: {n} {PLURALS[kind] if n != 1 else kind}"))
        counts = sample.meta.get("counts", [])
        total = ", ".join(f"{c} {PLURALS[s] if c != 1 else s}" for s, c in zip(shapes, counts))
        names = evidence.KIND_COLOUR_NAMES
        legend = ", ".join(f"{kind} {names[k % len(names)]}" for k, kind in enumerate(shapes))
        panels = [Panel(f"All {len(frames)} frames; marked: the {len(drawn)} frames with shapes ({legend})", line)]
        if closeups:
            panels.append(Panel(f"The drawn shapes: {total} = answer {sample.answer}", evidence.flow(closeups)))
        return panels

    def random_answer(self, sample: Sample, rng: np.random.Generator) -> str:
        """A random guess: each count uniform over its possible range (frames × instances)."""
        p = self.params
        lo = p.frames_per_shape[0] * p.instances_per_frame[0]
        hi = p.frames_per_shape[1] * p.instances_per_frame[1]
        guess = rng.integers(lo, hi + 1, size=len(sample.meta.get("shapes", p.shapes)))
        return wrap_answer(counts_text(guess), sample.meta.get("answer_mode", p.answer_mode))


__all__ = [
    "ObjectCounting",
    "ObjectCountingParams",
    "best_constant_count",
    "choose_frames",
    "count_distribution",
    "circumradius",
    "counts_text",
    "place_shapes",
    "question_text",
    "shape_mask",
    "shape_polygon",
]
