"""Drawing helpers for the built-in tasks' `evidence` panels (`mmrl.task.Task.evidence`, the preview sheets).

Every picture is made from a Sample's own media and meta (frames read back from the prompt, positions and
depths from `meta`), never by redoing a random draw, so a sheet is evidence of what the model was shown.
The helpers: reading the media of a prompt item (in memory or read back from a dataset), thumbnails, text
and captions, rows and grids of pictures, and the frame timeline with marked frames (`timeline`,
`timeline_boxes`: the geometry, for tests). Pillow's built-in font only: same pixels on every machine.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmrl.preview import as_image, wrap_rows
from mmrl.sample import Sample
from mmrl.task import PANEL_MAX_WIDTH, Panel
from mmrl.video import read_video

Colour = tuple[int, int, int]

INK: Colour = (20, 20, 20)
MUTED: Colour = (110, 110, 110)
WHITE: Colour = (255, 255, 255)
RULE: Colour = (200, 200, 200)
MARK: Colour = (230, 0, 120)
"""Colour of a marked frame's ring and band on a timeline (a magenta no photo frame's border is drawn in)."""
KIND_COLOURS: tuple[Colour, ...] = ((230, 0, 120), (0, 100, 230), (0, 150, 60), (230, 120, 0), (120, 0, 200))
"""Marking colours of the kinds of a sample, in its order (object counting: circles, squares, triangles)."""
KIND_COLOUR_NAMES = ("magenta", "blue", "green", "orange", "purple")
"""The names of `KIND_COLOURS`, for legends."""
TAG_BACKGROUND: Colour = (255, 230, 0)
FONT_SIZE = 13
GAP = 8

CLIP_ROW_HEIGHT = 60
"""Height of the frames of a clip row (`clip_rows`)."""
TIMELINE_COLUMNS = 12
"""Most thumbnails per timeline row."""
RING = 3
"""Width in pixels of the ring around each timeline thumbnail: `MARK`-coloured (or a kind's colour) when the
frame is marked, white otherwise."""
CELL_GAP = 2
"""Pixels between the rings of two neighbouring timeline cells (filled too between two marked neighbours, so a
marked run reads as one band)."""
BAND = 4
"""Height of the band under a marked run of thumbnails, below their captions."""
TIMELINE_FONT_SIZE = 11
"""Font size of the captions under timeline thumbnails."""


def font(size: int = FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font at `size`."""
    return ImageFont.load_default(size=size)


def line_height(size: int = FONT_SIZE) -> int:
    return int(size * 1.35)


# --------------------------------------------------------------------------------------------------
# The sample's media


def images(sample: Sample) -> list[Image.Image]:
    """The image items of the sample's prompt, in prompt order."""
    return [as_image(item["image"]) for item in sample.media() if item["type"] == "image"]


def videos(sample: Sample) -> list[list[Image.Image]]:
    """The video items of the sample's prompt, in prompt order, each as its list of frames."""
    out = []
    for item in sample.media():
        if item["type"] != "video":
            continue
        value = item["video"]
        if isinstance(value, (str, Path)):  # a video file: every frame
            out.append([Image.fromarray(f) for f in read_video(value).frames])
        else:
            out.append([as_image(f) for f in value])
    return out


# --------------------------------------------------------------------------------------------------
# Pictures


def fit(image: Image.Image, box_w: int, box_h: int, max_scale: float = 4.0) -> Image.Image:
    """`image` scaled to fit a box: shrunk (Lanczos) when larger, enlarged by a whole factor of at most
    `max_scale` (nearest: every pixel a square) when that fits, else kept as it is."""
    scale = min(box_w / image.width, box_h / image.height, max_scale)
    if scale > 1:
        scale = float(math.floor(scale))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)


def text_image(text: str, width: int | None = None, colour: Colour = INK, size: int = FONT_SIZE) -> Image.Image:
    """Text on white, one line per line of `text` (wrapped to `width` px when given)."""
    f = font(size)
    lines = text.splitlines() or [""]
    if width is not None:
        chars = max(8, int(width / max(f.getlength("n"), 1.0)))
        lines = [w for line in lines for w in (textwrap.wrap(line, chars) or [""])]
    w = width or max(1, max(math.ceil(f.getlength(line)) for line in lines) + 1)
    block = Image.new("RGB", (w, line_height(size) * len(lines)), WHITE)
    draw = ImageDraw.Draw(block)
    for k, line in enumerate(lines):
        draw.text((0, k * line_height(size)), line, font=f, fill=colour)
    return block


def captioned(image: Image.Image, caption: str, *, above: bool = False, colour: Colour = INK) -> Image.Image:
    """`image` with a one-line caption under it (or above it)."""
    text = text_image(caption, colour=colour)
    out = Image.new("RGB", (max(image.width, text.width), image.height + text.height + 2), WHITE)
    if above:
        out.paste(text, (0, 0))
        out.paste(image, (0, text.height + 2))
    else:
        out.paste(image, (0, 0))
        out.paste(text, (0, image.height + 2))
    return out


def outlined(image: Image.Image, colour: Colour = RULE, width: int = 1) -> Image.Image:
    """`image` inside a frame of `width` px."""
    out = Image.new("RGB", (image.width + 2 * width, image.height + 2 * width), colour)
    out.paste(image, (width, width))
    return out


def row(pictures: Sequence[Image.Image], gap: int = GAP, align: str = "top") -> Image.Image:
    """Pictures left to right (`align`: top or middle)."""
    height = max(p.height for p in pictures)
    out = Image.new("RGB", (sum(p.width for p in pictures) + gap * (len(pictures) - 1), height), WHITE)
    x = 0
    for p in pictures:
        out.paste(p, (x, 0 if align == "top" else (height - p.height) // 2))
        x += p.width + gap
    return out


def column(pictures: Sequence[Image.Image], gap: int = GAP) -> Image.Image:
    """Pictures top to bottom, left-aligned."""
    height = sum(p.height for p in pictures) + gap * (len(pictures) - 1)
    out = Image.new("RGB", (max(p.width for p in pictures), height), WHITE)
    y = 0
    for p in pictures:
        out.paste(p, (0, y))
        y += p.height + gap
    return out


def flow(pictures: Sequence[Image.Image], width: int = PANEL_MAX_WIDTH, gap: int = GAP) -> Image.Image:
    """Pictures left to right, wrapping to a new row when `width` is used up."""
    return column([row(r, gap) for r in wrap_rows(pictures, width, gap)], gap)


def spread(count: int, most: int) -> list[int]:
    """At most `most` of the indices 0..count−1, evenly spaced, first and last included."""
    if count <= most:
        return list(range(count))
    return [int(i) for i in np.unique(np.round(np.linspace(0, count - 1, most)).astype(int))]


def clip_rows(
    clips: Sequence[Sequence[Image.Image]], captions: Sequence[str], height: int = CLIP_ROW_HEIGHT, frames: int = 4
) -> Image.Image:
    """One row per clip: its caption, then up to `frames` of its frames (first and last included), each
    `fit` into (4·height, height) and outlined."""
    label_w = max(math.ceil(font().getlength(c)) for c in captions) + GAP
    rows = []
    for clip, caption in zip(clips, captions):
        thumbs = [outlined(fit(clip[i], 4 * height, height)) for i in spread(len(clip), frames)]
        label = Image.new("RGB", (label_w, max(t.height for t in thumbs)), WHITE)
        ImageDraw.Draw(label).text((0, (label.height - line_height()) // 2), caption, font=font(), fill=INK)
        rows.append(row([label, *thumbs], gap=3, align="middle"))
    return column(rows, gap=4)


def tag(text: str, background: Colour = TAG_BACKGROUND, colour: Colour = INK) -> Image.Image:
    """A one-line label on a coloured ground, to paste next to what it names."""
    f = font()
    out = Image.new("RGB", (math.ceil(f.getlength(text)) + 6, line_height() + 2), background)
    ImageDraw.Draw(out).text((3, 1), text, font=f, fill=colour)
    return out


def share_bar(
    shares: Mapping[str, float], colours: Mapping[str, Colour], width: int = 600, height: int = 28
) -> Image.Image:
    """A bar `width` px long split into one segment per share, largest first (ties by name), each in its
    colour, inside a 1-px frame (the bar's pixels: x in [1, 1 + width), y in [1, 1 + height)); under it
    each share named with its percentage. Segment k spans round(width · cumulative share) px."""
    items = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))
    total = sum(v for _, v in items) or 1.0
    bar = Image.new("RGB", (width + 2, height + 2), RULE)
    draw = ImageDraw.Draw(bar)
    cumulative, left = 0.0, 0
    for name, share in items:
        cumulative += share
        right = round(width * cumulative / total)
        if right > left:
            draw.rectangle([1 + left, 1, right, height], fill=colours[name])
        left = right
    legend = []
    for name, share in items:
        swatch = outlined(Image.new("RGB", (12, 12), colours[name]))
        legend.append(row([swatch, text_image(f"{name} {100 * share:.1f}%")], gap=4, align="middle"))
    return column([bar, flow(legend, width + 2, gap=14)], gap=4)


def clip_order_panels(sample: Sample, spans: Sequence[str] | None = None) -> list[Panel]:
    """The two panels of a clip-ordering sample (video and temporal jigsaw): every clip as shown, under its
    label, and the clips reordered by the answer (label `answer[r]` is the r-th clip in time), each row
    with up to 4 of its frames. `spans[r]`, when given, says where the r-th clip lies in the video."""
    clips = videos(sample)
    labels = [int(label) for label in sample.answer]
    shown = clip_rows(clips, [f"Clip {j}" for j in range(1, len(clips) + 1)])
    captions = [f"{r}. Clip {label}" + (f"  {spans[r - 1]}" if spans else "") for r, label in enumerate(labels, 1)]
    ordered = clip_rows([clips[label - 1] for label in labels], captions)
    return [
        Panel(f"The {len(clips)} clips as shown (first to last frame of each)", shown),
        Panel(f"Reordered by the answer {', '.join(map(str, labels))}: earliest clip first", ordered),
    ]


# --------------------------------------------------------------------------------------------------
# The frame timeline


def timeline_layout(count: int, frame_size: tuple[int, int], width: int = PANEL_MAX_WIDTH) -> tuple[int, int, int]:
    """(columns, thumbnail width, thumbnail height) of a timeline of `count` frames of `frame_size` (w, h):
    balanced rows of at most `TIMELINE_COLUMNS`, thumbnails as large as `width` allows (at most 4x)."""
    columns = math.ceil(count / math.ceil(count / TIMELINE_COLUMNS))
    cell_w = (width - (columns - 1) * CELL_GAP) // columns
    scale = min((cell_w - 2 * RING) / frame_size[0], 4.0)
    return columns, max(1, int(frame_size[0] * scale)), max(1, int(frame_size[1] * scale))


def timeline_boxes(
    count: int, frame_size: tuple[int, int], width: int = PANEL_MAX_WIDTH
) -> list[tuple[int, int, int, int]]:
    """Box (left, top, right, bottom; right and bottom exclusive) of each frame's thumbnail on `timeline`;
    its ring is the `RING` px around it."""
    columns, tw, th = timeline_layout(count, frame_size, width)
    cell_w, cell_h = tw + 2 * RING, th + 2 * RING + line_height(TIMELINE_FONT_SIZE) + BAND + 2
    boxes = []
    for i in range(count):
        r, c = divmod(i, columns)
        x, y = c * (cell_w + CELL_GAP) + RING, r * (cell_h + CELL_GAP) + RING
        boxes.append((x, y, x + tw, y + th))
    return boxes


def timeline(
    frames: Sequence[Image.Image],
    marks: Mapping[int, Colour],
    caption: Callable[[int], str] = str,
    width: int = PANEL_MAX_WIDTH,
) -> Image.Image:
    """Every frame as a thumbnail in time order, row by row, each captioned (`caption(i)`, e.g. its time).

    A frame in `marks` gets a ring of its colour around its thumbnail and a band of it under its caption;
    the ring and band also fill the gap to a marked neighbour of the same colour in the same row, so a
    marked segment reads as one band. Unmarked frames have a white ring. Geometry: `timeline_boxes`.
    """
    count = len(frames)
    columns, tw, th = timeline_layout(count, frames[0].size, width)
    boxes = timeline_boxes(count, frames[0].size, width)
    cell_h = th + 2 * RING + line_height(TIMELINE_FONT_SIZE) + BAND + 2
    rows = math.ceil(count / columns)
    size = (columns * (tw + 2 * RING) + (columns - 1) * CELL_GAP, rows * (cell_h + CELL_GAP) - CELL_GAP)
    out = Image.new("RGB", size, WHITE)
    draw = ImageDraw.Draw(out)
    f = font(TIMELINE_FONT_SIZE)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        colour = marks.get(i)
        if colour is not None:
            right = x1 + RING - 1
            if i + 1 < count and i % columns != columns - 1 and marks.get(i + 1) == colour:
                right += CELL_GAP  # join the next marked cell
            draw.rectangle([x0 - RING, y0 - RING, right, y1 + RING - 1], fill=colour)
            band_top = y1 + RING + line_height(TIMELINE_FONT_SIZE) + 1
            draw.rectangle([x0 - RING, band_top, right, band_top + BAND - 1], fill=colour)
        resample = Image.Resampling.LANCZOS if tw < frames[i].width else Image.Resampling.NEAREST
        out.paste(frames[i].resize((tw, th), resample), (x0, y0))
        draw.text((x0, y1 + RING), caption(i), font=f, fill=INK if colour is None else colour)
    return out


__all__ = [
    "KIND_COLOURS",
    "KIND_COLOUR_NAMES",
    "MARK",
    "as_image",
    "captioned",
    "clip_order_panels",
    "clip_rows",
    "column",
    "fit",
    "flow",
    "images",
    "outlined",
    "row",
    "share_bar",
    "spread",
    "tag",
    "text_image",
    "timeline",
    "timeline_boxes",
    "timeline_layout",
    "videos",
]
