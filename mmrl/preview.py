"""Preview sheets: one PNG per Sample showing its inputs as the model sees them, and the evidence for its answer.

Each message's text and media in prompt order (a short text right before an image or video is its
caption, e.g. "Tile 3:"), video clips as strips of evenly spaced frames, the ground truth, and under it
the task's evidence panels (`mmrl.task.Task.evidence`: the grounded segment marked on a frame timeline,
a jigsaw reassembled, ...), each under its title. The task is found by the sample's `task` name in the
registry, built with the sample's `meta["params"]` (the defaults when they no longer validate); a task
that is not installed gives no panels, and one whose `evidence` fails gets its error written on the sheet.
Written by `mmrl generate --preview K`; the same sample gives the same PNG bytes.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmrl import media, registry
from mmrl.errors import MMRLError
from mmrl.sample import Sample, content_items
from mmrl.task import Panel
from mmrl.video import read_video, video_info
from rewards.extract import answer_payload

SHEET_WIDTH = 1100
MARGIN = 16
GAP = 12
THUMB = 200  # longest side of an image on the sheet
FRAME_HEIGHT = 90  # height of one video frame in a strip
MAX_FRAMES = 8  # frames shown per video (evenly spaced)
CAPTION_MAX = 40  # a text item at most this long right before a media item becomes its caption
INK, MUTED, BACKGROUND, RULE = (20, 20, 20), (110, 110, 110), (255, 255, 255), (200, 200, 200)
ERROR = (180, 0, 0)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def preview_sheet(sample: Sample, *, evidence: bool = True) -> Image.Image:
    """A PNG-ready sheet of `sample` as the model sees it: each message's text and media in prompt
    order (a short text right before a media item, e.g. `Tile 3`, is drawn as its caption; a video
    as a strip of up to 8 evenly spaced frames), then the ground truth, then (with `evidence`) the
    task's evidence panels, left to right and wrapping, each titled. For people, not for models."""
    body, small, title = _font(15), _font(13), _font(18)
    width = SHEET_WIDTH - 2 * MARGIN
    blocks: list[Image.Image] = [_text_block(f"{sample.id}   (task {sample.task})", title, width, INK)]
    for message in sample.messages:
        blocks.append(_text_block(f"[{message['role']}]", small, width, MUTED))
        items = content_items(message)
        tiles: list[Image.Image] = []
        for k, item in enumerate(items):
            nxt = items[k + 1] if k + 1 < len(items) else None
            if item["type"] == "text":
                text = item["text"]
                if nxt and nxt["type"] != "text" and len(text.strip()) <= CAPTION_MAX and "\n" not in text.strip():
                    continue  # drawn as the next media item's caption
                if tiles:
                    blocks.append(_flow(tiles, width))
                    tiles = []
                if text.strip():
                    blocks.append(_text_block(text, body, width, INK))
                continue
            prev = items[k - 1] if k > 0 else None
            caption = prev["text"].strip() if prev and prev["type"] == "text" else ""
            if len(caption) > CAPTION_MAX or "\n" in caption:
                caption = ""
            tiles.append(_media_tile(item, caption, small, width))
        if tiles:
            blocks.append(_flow(tiles, width))
    blocks.append(_rule(width))
    blocks.append(_text_block(f"ground truth: {answer_payload(sample.answer)}", title, width, (0, 110, 0)))
    answer_field = json.dumps(sample.answer, ensure_ascii=False, sort_keys=True)
    blocks.append(_text_block(f"answer field: {answer_field}", small, width, MUTED))
    if evidence:
        panels, error = sample_evidence(sample)
        if panels or error:
            blocks.append(_rule(width))
            blocks.append(_text_block("evidence", title, width, INK))
        if error:
            blocks.append(_text_block(f"evidence unavailable: {error}", small, width, ERROR))
        if panels:
            blocks.append(_flow([panel_tile(panel, width) for panel in panels], width))
    height = MARGIN * 2 + sum(b.height for b in blocks) + GAP * (len(blocks) - 1)
    sheet = Image.new("RGB", (SHEET_WIDTH, height), BACKGROUND)
    y = MARGIN
    for block in blocks:
        sheet.paste(block, (MARGIN, y))
        y += block.height + GAP
    return sheet


def sample_evidence(sample: Sample) -> tuple[list[Panel], str | None]:
    """(panels, error) of `sample`: its task's `evidence(sample)`, the task built with `meta["params"]`
    (the defaults when they no longer validate). No panels for a task that is not installed; the error's
    text when the task cannot be loaded or its `evidence` raises (a preview never stops a generation)."""
    if sample.task not in registry.task_names():
        return [], None
    try:
        params = sample.meta.get("params") if isinstance(sample.meta, dict) else None
        try:
            task = registry.get_task(sample.task, **(params if isinstance(params, dict) else {}))
        except MMRLError:
            task = registry.get_task(sample.task)
        panels = list(task.evidence(sample))
    except Exception as e:
        return [], f"{type(e).__name__}: {e}"
    return panels, None


def panel_tile(panel: Panel, max_width: int = SHEET_WIDTH - 2 * MARGIN) -> Image.Image:
    """One evidence panel as drawn on the sheet: its title (wrapped) above its picture in a thin frame;
    a picture wider than `max_width` is scaled down to fit, a narrower one is drawn at its own size."""
    font = _font(14)
    picture = panel.image.convert("RGB")
    if picture.width + 2 > max_width:
        picture = _fit(picture, max_width - 2, max(1, round(picture.height * (max_width - 2) / picture.width)))
    # A title longer than the picture is wide widens the tile up to half the sheet, then wraps.
    width = max(picture.width + 2, min(int(font.getlength(panel.title)) + 2, max_width // 2))
    lines = _wrap(panel.title, font, width)
    line_h = int(font.size * 1.35)
    title = Image.new("RGB", (width, line_h * len(lines)), BACKGROUND)
    for k, line in enumerate(lines):
        ImageDraw.Draw(title).text((0, k * line_h), line, font=font, fill=INK)
    tile = Image.new("RGB", (width, title.height + 2 + picture.height + 2), BACKGROUND)
    tile.paste(title, (0, 0))
    top = title.height + 2
    ImageDraw.Draw(tile).rectangle([0, top, picture.width + 1, top + picture.height + 1], outline=RULE)
    tile.paste(picture, (1, top + 1))
    return tile


def _wrap(text: str, font: Any, width: int) -> list[str]:
    """`text` broken into lines at spaces so that each fits `width` px (a single longer word stays whole)."""
    lines: list[str] = []
    for para in text.splitlines() or [""]:
        line = ""
        for word in para.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and font.getlength(candidate) > width:
                lines.append(line)
                candidate = word
            line = candidate
        lines.append(line)
    return lines


def _text_block(text: str, font: Any, width: int, colour: tuple[int, int, int]) -> Image.Image:
    chars = max(10, int(width / max(font.getlength("n"), 1.0)))
    lines = [wrapped for para in text.splitlines() or [""] for wrapped in (textwrap.wrap(para, chars) or [""])]
    line_h = int(font.size * 1.35)
    block = Image.new("RGB", (width, line_h * len(lines)), BACKGROUND)
    draw = ImageDraw.Draw(block)
    for k, line in enumerate(lines):
        draw.text((0, k * line_h), line, font=font, fill=colour)
    return block


def _rule(width: int) -> Image.Image:
    block = Image.new("RGB", (width, 3), BACKGROUND)
    ImageDraw.Draw(block).line([(0, 1), (width, 1)], fill=RULE, width=1)
    return block


def as_image(value: Any) -> Image.Image:
    """A prompt image or frame as RGB: a PIL image, an (H, W, 3) array, or a path (a read-back dataset)."""
    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, np.ndarray):
        return Image.fromarray(value).convert("RGB")
    return media.load_image(value)


def _fit(image: Image.Image, box_w: int, box_h: int) -> Image.Image:
    """Scale into a box: small images are enlarged (nearest, up to 4x, pixels stay visible)."""
    scale = min(box_w / image.width, box_h / image.height, 4.0)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)


def _media_tile(item: dict[str, Any], caption: str, font: Any, max_width: int) -> Image.Image:
    """One media item: caption above, the image (or frame strip) in a thin frame, its size below."""
    if item["type"] == "image":
        original = as_image(item["image"])
        picture = _fit(original, THUMB, THUMB)
        note = f"{original.width}x{original.height} px"
    else:
        value = item["video"]
        if isinstance(value, (str, Path)):
            clip = read_video(value, max_frames=MAX_FRAMES)
            frames, total = [Image.fromarray(f) for f in clip.frames], video_info(value).num_frames
        else:
            frames, total = list(value), len(value)
        first = as_image(frames[0])
        fits = max(1, (max_width - 4) // (_fit(first, 4 * FRAME_HEIGHT, FRAME_HEIGHT).width + 2))
        count = min(MAX_FRAMES, len(frames), fits)
        shown = [frames[int(j)] for j in np.unique(np.round(np.linspace(0, len(frames) - 1, count)))]
        thumbs = [_fit(as_image(f), 4 * FRAME_HEIGHT, FRAME_HEIGHT) for f in shown]
        picture = Image.new("RGB", (sum(t.width + 2 for t in thumbs) - 2, max(t.height for t in thumbs)), RULE)
        x = 0
        for t in thumbs:
            picture.paste(t, (x, 0))
            x += t.width + 2
        note = f"video: {total} frames of {first.width}x{first.height} px, {len(thumbs)} shown"
    line_h = int(font.size * 1.35)
    w = max(picture.width + 4, int(font.getlength(caption)) + 2, int(font.getlength(note)) + 2)
    top = line_h + 2 if caption else 1
    tile = Image.new("RGB", (min(w, max_width), top + picture.height + 4 + line_h + 2), BACKGROUND)
    draw = ImageDraw.Draw(tile)
    draw.text((0, 0), caption, font=font, fill=INK)
    draw.rectangle([0, top - 1, picture.width + 2, top + picture.height + 2], outline=RULE)
    tile.paste(picture, (1, top + 1))
    draw.text((0, top + picture.height + 4), note, font=font, fill=MUTED)
    return tile


def wrap_rows(pictures: Sequence[Image.Image], width: int, gap: int) -> list[list[Image.Image]]:
    """Pictures left to right, `gap` px apart, in rows no wider than `width` (a wider picture gets a row alone)."""
    rows: list[list[Image.Image]] = [[]]
    used = 0
    for picture in pictures:
        if rows[-1] and used + gap + picture.width > width:
            rows.append([])
            used = 0
        used += (gap if rows[-1] else 0) + picture.width
        rows[-1].append(picture)
    return rows


def _flow(tiles: list[Image.Image], width: int) -> Image.Image:
    """Tiles left to right, wrapping to new rows when the width is used up."""
    rows = wrap_rows(tiles, width, GAP)
    heights = [max(t.height for t in row) for row in rows]
    block = Image.new("RGB", (width, sum(heights) + GAP * (len(rows) - 1)), BACKGROUND)
    y = 0
    for row, h in zip(rows, heights):
        x = 0
        for tile in row:
            block.paste(tile, (x, y))
            x += tile.width + GAP
        y += h + GAP
    return block
