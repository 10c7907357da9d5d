"""`image_jigsaw`: cut a picture into an m×n grid, show the tiles shuffled, ask for their raster order.

Visual Jigsaw (Wu et al. 2025, *Visual Jigsaw Post-Training Improves MLLMs*, arXiv 2509.25190),
image variant. The picture is sliced losslessly (every source pixel lands in exactly one tile):
with `base = W // n` and `extra = W % n`, the first `extra` columns are one pixel wider than the
rest, and rows likewise (the released code's rule). The K = m·n tiles are drawn in a random
non-identity order by `pretext_tasks.base.shuffle_and_label`, shown under labels 1..K, and the
answer lists, for each grid position in raster order (left→right, top→bottom), the label of the
tile that belongs there: `answer[i] = order.index(i) + 1`.

Tiles reach the model as K separate images (the paper's setting, the default) or, with
`composed`, as one image with the tiles in shuffled grid slots and their labels printed in a
band above each tile (the tile pixels themselves are never drawn on).

Sources too small to cut (a tile side under `min_tile_side` px; the paper drops COCO images whose
short side is under 84 = 3 × 28 for its 3×3 grid, i.e. tiles of at least one 28-px Qwen merge
unit) raise `SkipItem("image_too_small")`; unreadable files raise `MediaError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmrl import media
from mmrl.config import to_dict
from mmrl.errors import ConfigError, SkipItem
from mmrl.sample import Sample
from mmrl.task import Panel
from pretext_tasks import evidence
from pretext_tasks.base import (
    OrderingTask,
    Shuffle,
    answer_instruction,
    check_order_size,
    item_path,
    labelled_items,
    shuffle_and_label,
)
from rewards.ordering import OrderingParams

if TYPE_CHECKING:
    from mmrl.corpus import Corpus, ImageItem

NAME = "image_jigsaw"

LABEL_BAND = 20
"""Composed image: height in pixels of the white band above each tile that carries its label."""
SLOT_GAP = 4
"""Composed image: white gap in pixels between grid slots and around the border."""
LABEL_FONT_SIZE = 14
"""Composed image: label font size (Pillow's built-in font; same pixels on every machine)."""
BACKGROUND = (255, 255, 255)

REFERENCE_THOUGHT = "I match the edges and content of the tiles to find where each one belongs in the grid."
"""The reasoning placed in SFT targets when the prompt asks for <think> (cold start only)."""


@dataclass
class ImageJigsawParams(OrderingParams):
    rows: int = 3
    """m, rows of the grid (the paper: 3; its ablation: 2)."""
    cols: int = 3
    """n, columns of the grid. Any m, n ≥ 1 with K = m·n ≥ 3 (a 1×2 grid always has the answer `2, 1`)."""
    min_tile_side: int = 28
    """Smallest tile side in pixels: images with width // cols or height // rows below it are
    skipped (`image_too_small`). 28 reproduces the paper's filter (short side ≥ 84 for 3×3)."""
    max_side: int = 448
    """Downscale (bicubic) images whose longer side exceeds this before slicing, so CPU runs stay
    small; 0 keeps the source size. The size check applies to the downscaled image."""
    composed: bool = False
    """False: K separate tile images (the paper). True: one image with the tiles in shuffled grid
    slots and each slot's label printed above it."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rows < 1 or self.cols < 1:
            raise ConfigError(f"image_jigsaw: need rows, cols >= 1, got {self.rows}x{self.cols}")
        check_order_size(NAME, f"rows x cols = {self.rows}x{self.cols}", self.rows * self.cols)
        if self.min_tile_side < 1:
            raise ConfigError(f"image_jigsaw: min_tile_side must be >= 1, got {self.min_tile_side}")
        if self.max_side < 0:
            raise ConfigError(f"image_jigsaw: max_side must be >= 0 (0: off), got {self.max_side}")

    @property
    def k(self) -> int:
        """Number of tiles, K = rows · cols."""
        return self.rows * self.cols


# --------------------------------------------------------------------------------------------------
# Geometry


def split_sizes(total: int, parts: int) -> list[int]:
    """Lengths of `parts` consecutive pieces covering `total` pixels: `base = total // parts`, and
    the first `total % parts` pieces get one extra pixel (`split_sizes(10, 3) == [4, 3, 3]`)."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def tile_boxes(width: int, height: int, rows: int, cols: int) -> list[tuple[int, int, int, int]]:
    """Crop boxes (left, upper, right, lower) of the grid tiles in raster order; they tile the
    image exactly (lossless: every pixel in one box)."""
    xs = np.concatenate([[0], np.cumsum(split_sizes(width, cols))]).tolist()
    ys = np.concatenate([[0], np.cumsum(split_sizes(height, rows))]).tolist()
    return [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(rows) for c in range(cols)]


def slot_origin(slot: int, cols: int, cell: tuple[int, int]) -> tuple[int, int]:
    """Composed image: top-left pixel of the tile in grid slot `slot` (raster order; the slot
    of label j is j − 1). `cell` = (width, height) of the largest tile; each slot is that cell
    with a `LABEL_BAND`-px band above it, slots `SLOT_GAP` px apart and from the border:
    x = gap + c·(cell_w + gap), y = gap + band + r·(band + cell_h + gap)."""
    r, c = divmod(slot, cols)
    return SLOT_GAP + c * (cell[0] + SLOT_GAP), SLOT_GAP + LABEL_BAND + r * (LABEL_BAND + cell[1] + SLOT_GAP)


def compose(tiles: Sequence[Image.Image], rows: int, cols: int) -> Image.Image:
    """One image holding `tiles` (in shown order) in raster-order slots, each labelled 1..K above it.

    Tiles are pasted unchanged at `slot_origin` (top-left of their cell; smaller tiles of an
    uneven grid leave white margin); the label is drawn only in the band, never over a tile.
    """
    cell = (max(t.width for t in tiles), max(t.height for t in tiles))
    width = SLOT_GAP + cols * (cell[0] + SLOT_GAP)
    height = SLOT_GAP + rows * (LABEL_BAND + cell[1] + SLOT_GAP)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=LABEL_FONT_SIZE)
    for slot, tile in enumerate(tiles):
        x, y = slot_origin(slot, cols, cell)
        canvas.paste(tile, (x, y))
        draw.text((x + 2, y - LABEL_BAND + 2), str(slot + 1), fill=(0, 0, 0), font=font)
    return canvas


def prepare_image(image: Image.Image, max_side: int) -> Image.Image:
    """The image the tiles are cut from: `image` downscaled (bicubic, antialiased) so that its
    longer side is at most `max_side` (0: unchanged), aspect ratio kept."""
    longest = max(image.size)
    if not max_side or longest <= max_side:
        return image
    scale = max_side / longest
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


# --------------------------------------------------------------------------------------------------
# Prompt


def intro_text(params: ImageJigsawParams) -> str:
    """What the model is shown; depends on the parameters only, never on the sample's answer."""
    m, n, k = params.rows, params.cols, params.k
    grid = f"A picture was cut into a grid of {m} row{'s' * (m > 1)} and {n} column{'s' * (n > 1)}, {k} tiles in all."
    if params.composed:
        return (
            f"{grid} The tiles were put back in shuffled positions in the image below, "
            f"and each tile has its label (1 to {k}) written above it.\n"
        )
    return f"{grid} The tiles are shown below in shuffled order, each after its label (Tile 1 to Tile {k}).\n"


def instruction_text(params: ImageJigsawParams) -> str:
    """The task and the exact answer format, with one example permutation of length K."""
    k = params.k
    return (
        "\nReassemble the picture: for each grid position in raster order (left to right along the top row, "
        f"then row by row downwards), give the label of the tile that belongs there, as {k} comma-separated "
        f"numbers. {answer_instruction(params.answer_mode, 'labels', think=params.think)} "
        f"Example of the format for {k} tiles: {params.example(k)}"
    )


# --------------------------------------------------------------------------------------------------
# Task


@dataclass
class ImageJigsaw(OrderingTask):
    """Put shuffled tiles of a picture back in raster order. Answer: K labels, comma-separated."""

    Params: ClassVar[type[ImageJigsawParams]] = ImageJigsawParams
    name: ClassVar[str] = NAME
    reference_thought: ClassVar[str] = REFERENCE_THOUGHT
    params: ImageJigsawParams = field(default_factory=ImageJigsawParams)
    """The grid, preprocessing, prompt and reward parameters."""

    def sources(self, corpus: Corpus | str | Path | None = None) -> Sequence[ImageItem]:
        """The photos of the default corpus, or every image under a folder path."""
        if corpus is None:
            raise ConfigError(f"{NAME} needs source images: the default corpus or a folder of images")
        if isinstance(corpus, (str, Path)):
            from mmrl.corpus import image_folder  # mmrl.corpus imports open3d: only when needed

            return image_folder(corpus)
        return corpus.photos

    def make(self, source_item: ImageItem | str | Path, rng: np.random.Generator) -> Sample:
        """The Sample for one image: K shuffled tiles (or one composed image) and the question.

        One seed is drawn from `rng` and stored in `meta["seed"]`; the shuffle comes from a
        generator seeded with it. Raises `SkipItem("image_too_small")` for images too small for
        the grid and `MediaError` (naming the file) for unreadable ones.
        """
        source_id, path = item_path(source_item)
        p = self.params
        image = prepare_image(media.load_image(path), p.max_side)
        width, height = image.size
        if width // p.cols < p.min_tile_side or height // p.rows < p.min_tile_side:
            raise SkipItem(
                "image_too_small",
                f"{path}: {width}x{height} px gives tiles under {p.min_tile_side} px for a "
                f"{p.rows}x{p.cols} grid (needs at least {p.cols * p.min_tile_side}x{p.rows * p.min_tile_side})",
            )
        seed = int(rng.integers(2**63))
        shuffle: Shuffle = shuffle_and_label(p.k, np.random.default_rng(seed))
        boxes = tile_boxes(width, height, p.rows, p.cols)
        shown = shuffle.shown([image.crop(box) for box in boxes])

        content: list[dict[str, Any]] = [{"type": "text", "text": intro_text(p)}]
        if p.composed:
            content.append({"type": "image", "image": compose(shown, p.rows, p.cols)})
        else:
            content += labelled_items("Tile", [{"type": "image", "image": tile} for tile in shown])
        content.append({"type": "text", "text": instruction_text(p)})
        meta = {
            "source": source_id,
            "seed": seed,
            "grid": [p.rows, p.cols],
            "order": list(shuffle.order),
            "image_size": [width, height],
            "tile_boxes": [list(box) for box in boxes],
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
        """The tiles as shown, in their labelled slots, beside the picture reassembled by the answer: grid
        position i (raster order) gets the tile shown under label `answer[i]`, pasted at `meta["tile_boxes"][i]`,
        so a right answer gives back the source picture pixel for pixel."""
        rows, cols = sample.meta["grid"]
        boxes = [tuple(int(v) for v in box) for box in sample.meta["tile_boxes"]]
        shown = evidence.images(sample)
        if len(shown) == 1:  # composed: cut each tile back out of its slot (its size is its true box's)
            cell = (max(b[2] - b[0] for b in boxes), max(b[3] - b[1] for b in boxes))
            tiles = []
            for slot, true_index in enumerate(sample.meta["order"]):
                x, y = slot_origin(slot, cols, cell)
                left, top, right, bottom = boxes[true_index]
                tiles.append(shown[0].crop((x, y, x + right - left, y + bottom - top)))
            grid = shown[0]
        else:
            tiles, grid = shown, compose(shown, rows, cols)
        picture = Image.new("RGB", tuple(sample.meta["image_size"]), BACKGROUND)
        for position, label in enumerate(sample.answer):
            picture.paste(tiles[int(label) - 1], boxes[position][:2])
        half = 520  # the two side by side on a sheet
        answer = ", ".join(str(label) for label in sample.answer)
        grid, picture = evidence.fit(grid, half, half, 2.0), evidence.fit(picture, half, half, 2.0)
        return [
            Panel(f"The {len(tiles)} tiles as shown, in label order (raster slots)", grid),
            Panel(f"Reassembled by the answer {answer}", picture),
        ]


__all__ = [
    "ImageJigsaw",
    "ImageJigsawParams",
    "compose",
    "instruction_text",
    "intro_text",
    "prepare_image",
    "slot_origin",
    "split_sizes",
    "tile_boxes",
]
