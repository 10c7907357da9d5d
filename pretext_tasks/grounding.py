"""What the two grounding tasks share: parameters, the prompt's coordinate sentence, scenes, meta, evidence.

`referring_grounding` (REC, one box) and `object_detection` (OVD, every box of the asked categories) are
built on this module (docs/grounding.md). Boxes, coordinate conventions and rewards live in `rewards.boxes`;
referring expressions in `pretext_tasks.referring`; the importers of users' annotations in
`pretext_tasks.grounding_import`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from mmrl.config import ModelConfig
from mmrl.errors import ConfigError, SkipItem
from mmrl.media import load_image
from mmrl.sample import Sample
from mmrl.scenes import SHAPES, Scene, random_scene
from pretext_tasks import evidence
from pretext_tasks.base import answer_instruction
from rewards.boxes import COORD_FAMILIES, CoordFamily, box_text, meta_frame, model_size, truth_model_box
from rewards.extract import AnswerMode, check_mode, wrap_answer

if TYPE_CHECKING:
    from mmrl.scene_render import Rendering
    from pretext_tasks.grounding_import import ImportedImage

_DEFAULT_MODEL = ModelConfig()
BOX_COLOURS = evidence.KIND_COLOURS
"""Outline colours of the boxes on evidence panels, in answer order (cycled)."""


@dataclass
class GroundingParams:
    """Parameters both grounding tasks have (each task's Params adds its own)."""

    coords: CoordFamily = "qwen2.5-vl"
    """Coordinate convention of the prompt and the reply: `qwen2.5-vl` (absolute pixels of the image after the
    processor's resize), `qwen2-vl` or `qwen3-vl` (integers on a 0-1000 grid). Match it to the model."""
    min_pixels: int = _DEFAULT_MODEL.min_pixels
    """Pixel budget's lower bound the model's processor resizes with (`model.min_pixels`; must match it)."""
    max_pixels: int = _DEFAULT_MODEL.max_pixels
    """Pixel budget's upper bound the model's processor resizes with (`model.max_pixels`; must match it)."""
    width: int = 224
    """Width in pixels of a procedural scene's image (importers keep each photo's own size)."""
    height: int = 168
    """Height in pixels of a procedural scene's image."""
    objects: tuple[int, int] = (3, 6)
    """Range (inclusive) of the number of objects in a procedural scene."""
    shapes: tuple[str, ...] = SHAPES
    """Shape kinds a scene may hold (and, for detection, the categories that may be asked)."""
    unique_attributes: bool = True
    """Give every object of a scene a distinct (size, colour, shape); off, twins can occur and only a relation
    (or nothing) tells them apart."""
    min_visible: float = 0.5
    """Least visible share of an object that is a target or a label; scenes whose objects fall short are skipped
    (detection) or the object is never the target (REC)."""
    min_box_side: int = 8
    """Least width and height, in pixels, of the visible box of an object that is a target or a label."""
    answer_mode: AnswerMode = "answer_tag"
    """Reply format: `answer_tag` (<answer>[x1, y1, x2, y2]</answer>), `boxed` or `raw`."""
    think: bool = False
    """Ask for reasoning inside <think></think> before the answer (not with `raw`)."""
    num_sources: int = 1_000_000
    """How many procedural scenes `sources()` offers (ignored for an annotation file)."""

    def __post_init__(self) -> None:
        self.objects = (int(self.objects[0]), int(self.objects[1]))
        self.shapes = tuple(self.shapes)
        if self.coords not in COORD_FAMILIES:
            raise ConfigError(f"coords must be one of {', '.join(COORD_FAMILIES)}, got {self.coords!r}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ConfigError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        if not (32 <= self.width <= 2048 and 32 <= self.height <= 2048):
            raise ConfigError(f"width and height must be in [32, 2048], got {self.width}x{self.height}")
        if not 1 <= self.objects[0] <= self.objects[1] <= 12:
            raise ConfigError(f"objects must satisfy 1 <= min <= max <= 12, got {self.objects}")
        bad = [s for s in self.shapes if s not in SHAPES]
        if bad or not self.shapes or len(set(self.shapes)) != len(self.shapes):
            raise ConfigError(f"shapes must be distinct kinds of {', '.join(SHAPES)}, got {list(self.shapes)}")
        if not 0.0 < self.min_visible <= 1.0:
            raise ConfigError(f"min_visible must be in (0, 1], got {self.min_visible}")
        if self.min_box_side < 1:
            raise ConfigError(f"min_box_side must be >= 1, got {self.min_box_side}")
        check_mode(self.answer_mode)
        if self.answer_mode == "raw" and self.think:
            raise ConfigError("answer_mode 'raw' cannot ask for <think> reasoning; set think: false")
        if self.num_sources < 1:
            raise ConfigError(f"num_sources must be >= 1, got {self.num_sources}")


# --------------------------------------------------------------------------------------------------
# Prompt


def coordinate_sentence(coords: str, image_size: Sequence[int]) -> str:
    """How the reply states a box in the family's convention; `image_size` is the image as the model sees it
    (the processor's resize, `meta["model_size"]`). Depends on the image size only, never on the answer."""
    w, h = image_size
    if coords == "qwen2.5-vl":
        return (
            f"Boxes are [x1, y1, x2, y2] in pixels of the image as you see it, {w}x{h}: x to the right and y "
            "down from the top-left corner, (x1, y1) the top-left and (x2, y2) the bottom-right corner."
        )
    return (
        f"The image is {w}x{h} pixels as you see it, but boxes are [x1, y1, x2, y2] as integers on a 0-1000 grid "
        "over it: 0 is the left or top edge, 1000 the right or bottom edge, (x1, y1) the top-left and (x2, y2) "
        "the bottom-right corner."
    )


def example_box(meta: Mapping[str, Any]) -> list[int]:
    """The example box of the prompt: a fixed share of the frame (never the answer)."""
    fw, fh = meta_frame(meta)
    return [round(0.1 * fw), round(0.2 * fh), round(0.35 * fw), round(0.55 * fh)]


def instruction(params: GroundingParams, slot: str, example: str) -> str:
    """The answer-format sentence with an example of the exact reply."""
    mode = params.answer_mode
    return f"{answer_instruction(mode, slot, think=params.think)} For example: {wrap_answer(example, mode)}"


def messages(image: Image.Image, text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]


def base_meta(params: GroundingParams, image_size: Sequence[int], params_dict: dict) -> dict[str, Any]:
    """The meta every grounding Sample holds (the contract of docs/grounding.md)."""
    w, h = int(image_size[0]), int(image_size[1])
    return {
        "params": params_dict,
        "image_size": [w, h],
        "coords": params.coords,
        "model_size": model_size([w, h], params.coords, params.min_pixels, params.max_pixels),
        "answer_mode": params.answer_mode,
        "think": params.think,
    }


def reply(sample: Sample, payload: str, thought: str) -> str:
    """`payload` in the sample's answer format, after `<think>thought</think>` when the prompt asked."""
    mode = sample.meta.get("answer_mode", "answer_tag")
    body = wrap_answer(payload, mode)
    return f"<think>{thought}</think>{body}" if sample.meta.get("think") and mode != "raw" else body


def model_box_text(box: Sequence[float], meta: Mapping[str, Any]) -> str:
    """A canonical box as the reply states it: `[12, 40, 96, 130]` in the sample's model coordinates."""
    return box_text(truth_model_box(box, meta))


def random_model_box(meta: Mapping[str, Any], rng: np.random.Generator) -> list[int]:
    """A box of integer corners uniform in the model frame (two sorted draws per axis, at least 1 apart)."""
    fw, fh = meta_frame(meta)
    xs = np.sort(rng.choice(int(fw) + 1, size=2, replace=False))
    ys = np.sort(rng.choice(int(fh) + 1, size=2, replace=False))
    return [int(xs[0]), int(ys[0]), int(xs[1]), int(ys[1])]


# --------------------------------------------------------------------------------------------------
# Procedural scenes


def draw_scene(params: GroundingParams, seed: int) -> Scene:
    """The procedural scene of `seed` (`mmrl.scenes.random_scene`); an unplaceable one is skipped."""
    try:
        return random_scene(
            np.random.default_rng(seed),
            n_objects=params.objects,
            width=params.width,
            height=params.height,
            shapes=params.shapes,
            unique=params.unique_attributes,
        )
    except ValueError as e:
        raise SkipItem("scene_placement_failed", str(e)) from None


def rendered_scene(params: GroundingParams, rng: np.random.Generator) -> tuple[int, Scene, Rendering]:
    """(seed, scene, rendering): the scene of a seed drawn from `rng` (`draw_scene`), ray-cast by open3d."""
    from mmrl.scene_render import render  # open3d: only when scenes are drawn

    seed = int(rng.integers(2**63))
    scene = draw_scene(params, seed)
    return seed, scene, render(scene)


def usable(obj_id: int, rendering: Any, params: GroundingParams) -> bool:
    """Visible enough and large enough on screen to be a target or a label."""
    box = rendering.boxes.get(obj_id)
    if box is None or rendering.visible_fraction.get(obj_id, 0.0) < params.min_visible:
        return False
    return box[2] - box[0] >= params.min_box_side and box[3] - box[1] >= params.min_box_side


# --------------------------------------------------------------------------------------------------
# Users' annotated photos


def imported_photo(item: ImportedImage) -> Image.Image:
    """The photo of an imported annotation (`pretext_tasks.grounding_import`), EXIF-rotated; skipped
    (`size_mismatch`) when the rotation leaves it another size than the annotated one."""
    image = load_image(item.path)
    if image.size != item.size:
        raise SkipItem("size_mismatch", f"{item.path}: {image.size} after EXIF rotation, annotated {item.size}")
    return image


# --------------------------------------------------------------------------------------------------
# Evidence


def boxes_panel(image: Image.Image, boxes: Sequence[tuple[str, Sequence[float]]], width: int = 640) -> Image.Image:
    """`image` enlarged to about `width` px with each (label, canonical box) outlined and tagged."""
    big = evidence.fit(image, width, width)
    scale = big.width / image.width
    big = big.copy()
    draw = ImageDraw.Draw(big)
    corners = [[v * scale for v in box] for _, box in boxes]
    for k, (x1, y1, x2, y2) in enumerate(corners):
        draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=BOX_COLOURS[k % len(BOX_COLOURS)], width=2)
    for k, ((label, _), c) in enumerate(zip(boxes, corners)):  # tags last: over every box
        name = evidence.tag(label, BOX_COLOURS[k % len(BOX_COLOURS)], evidence.WHITE)
        big.paste(name, (max(0, round(c[0])), max(0, round(c[1]) - name.height)))
    return big


__all__ = [
    "GroundingParams",
    "base_meta",
    "boxes_panel",
    "coordinate_sentence",
    "draw_scene",
    "example_box",
    "imported_photo",
    "instruction",
    "messages",
    "model_box_text",
    "random_model_box",
    "rendered_scene",
    "reply",
    "usable",
]
