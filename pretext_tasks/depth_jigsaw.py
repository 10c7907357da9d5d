"""`depth_jigsaw`: the 3D Visual Jigsaw — order numbered points on one RGB image from nearest to farthest.

Source: Wu et al. 2025, *Visual Jigsaw Post-Training Improves MLLMs* (arXiv 2509.25190), §3 "3D jigsaw";
docs/visual_jigsaw.md. The paper draws 6 points per ScanNet RGB-D frame, every depth in
[0.1, 10] m, every pair ≥ 40 px apart in the image and > 0.2 m apart in depth; marks them with numbered
red circles in a random order; the model lists the labels from nearest to farthest. Its point sampler
was never released; mmrl's is `pretext_tasks.depth_points` (points, depth registration, the method).

This module is the task: parameters, sources, markers, prompt, Sample and reward. True order = nearest
first. Labels follow `pretext_tasks.base.Shuffle`: the point drawn with label j+1 is true point
`order[j]`, and the answer lists, nearest first, the label each point was drawn with (`Shuffle.labels`).
The shuffle is never the identity.

Rendering follows the released code: markers (filled translucent red circle, solid red outline, white
centred number) are alpha-composited at native resolution, then the image is optionally resized.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from mmrl.config import to_dict
from mmrl.errors import ConfigError, MMRLError
from mmrl.sample import Sample
from mmrl.task import Panel
from pretext_tasks import evidence
from pretext_tasks.base import OrderingTask, answer_instruction, check_order_size, shuffle_and_label
from pretext_tasks.depth_points import draw_points, register_depth, rgbd_candidates, sample_points
from rewards.extract import labels_text
from rewards.ordering import OrderingParams

if TYPE_CHECKING:
    from mmrl.corpus import Corpus

NAME = "depth_jigsaw"

SourceKind = Literal["auto", "rgbd", "geometry"]
UpAxis = Literal["auto", "y", "z"]


@dataclass
class DepthJigsawParams(OrderingParams):
    """Sampler, rendering and source parameters; the answer format (`answer_mode`, `think`) and the
    reward knobs (`gamma`, `partial_min_k`, ...) come from `rewards.ordering.OrderingParams`."""

    points: int = 6
    """K, the number of marked points (paper: 6). At least 3 (2 points always answer `2, 1`)."""
    min_depth: float = 0.1
    """Nearest usable depth in metres; pixels closer are never chosen (paper: 0.1)."""
    max_depth: float = 10.0
    """Farthest usable depth in metres; pixels farther are never chosen (paper: 10)."""
    min_pixel_distance: float = 40.0
    """Least image distance, in native pixels, between the centres of any two points (paper: 40).
    At least 2·`marker_radius`, so markers never overlap."""
    min_depth_gap: float = 0.2
    """Every pair of points differs in depth by strictly more than this, in metres (paper: 0.2)."""
    border: int = 17
    """Least distance in pixels from a point to every image edge (17 = marker radius 15 + outline 2)."""
    edge_window: int = 5
    """Side k (odd) of the k×k neighbourhood tested for depth edges around a candidate pixel."""
    edge_max_range: float = 0.1
    """A candidate's k×k neighbourhood must be all valid with max − min depth ≤ this (metres)."""
    max_tries: int = 20
    """Restarts of the sequential point sampler before the source is skipped as unsatisfiable."""
    marker_radius: int = 15
    """Radius of the circle marking a point, in native pixels (released code: 15)."""
    marker_fill: tuple[int, int, int, int] = (255, 0, 0, 120)
    """RGBA fill of the circle, alpha-composited over the image (released code: (255, 0, 0, 120))."""
    marker_outline: tuple[int, int, int, int] = (255, 0, 0, 255)
    """RGBA colour of the circle's outline (solid red)."""
    marker_outline_width: int = 2
    """Width of the outline in pixels."""
    label_color: tuple[int, int, int, int] = (255, 255, 255, 255)
    """RGBA colour of the number drawn at the circle's centre (white)."""
    font: str = "DejaVuSans.ttf"
    """TrueType font of the numbers: a file path or a name PIL finds in the system font folders;
    when it is not found, PIL's built-in default font (same glyphs on every machine) is used."""
    font_size: int = 15
    """Font size of the numbers in pixels (released code: 15)."""
    resize_to: tuple[int, int] | None = None
    """Resize the marked image to (width, height) after drawing (bicubic), e.g. (644, 476) for ScanNet
    frames as in the released data; None keeps the native size. Points stay stored at native pixels."""
    source_kind: SourceKind = "auto"
    """What `sources(path)` reads: `rgbd` (RGB-D pairs, see `mmrl.corpus.rgbd_folder`), `geometry`
    (meshes / point clouds rendered to RGB-D) or `auto` (RGB-D pairs if any, else geometry).
    The default corpus always gives its procedural RGB-D scenes."""
    depth_scale: float = 1000.0
    """Depth PNG units per metre in a user's RGB-D folder (1000: millimetres, ScanNet/NYU; 5000: TUM)."""
    geometry_size: tuple[int, int] = (640, 480)
    """(width, height) of the RGB-D rendering of a mesh or point cloud (camera: `default_camera_for`)."""
    mesh_scale: float | Literal["auto"] = "auto"
    """Meshes and point clouds: metres per file unit (1.0: the file is in metres, 0.01: centimetres, 0.001:
    millimetres), or `auto`: scale every file to a room-sized bounding box, diagonal 5 m
    (`mmrl.geometry_render.AUTO_DIAGONAL`), whatever its units. With a number, a file whose rendering puts
    no surface within [`min_depth`, `max_depth`], or too little depth for the gaps, is skipped."""
    up_axis: UpAxis = "auto"
    """Meshes and point clouds: the file's axis that points up, `y` or `z`, or `auto`: y for glTF/GLB (their
    specification), else the axis the geometry stands on, else the one it is thinner along
    (`mmrl.geometry_render.guess_up_axis`)."""
    point_radius: int = 1
    """Point clouds only: each point covers the pixels within this radius (holes become invalid depth)."""
    system_prompt: str | None = None
    """Optional system message; None sends none."""

    def __post_init__(self) -> None:
        super().__post_init__()  # answer format and reward knobs
        self.marker_fill = tuple(int(v) for v in self.marker_fill)  # type: ignore[assignment]
        self.marker_outline = tuple(int(v) for v in self.marker_outline)  # type: ignore[assignment]
        self.label_color = tuple(int(v) for v in self.label_color)  # type: ignore[assignment]
        self.geometry_size = (int(self.geometry_size[0]), int(self.geometry_size[1]))
        if self.resize_to is not None:
            self.resize_to = (int(self.resize_to[0]), int(self.resize_to[1]))

        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ConfigError(f"{NAME}: {what}")

        check_order_size(NAME, f"points = {self.points}", self.points)
        need(
            0 < self.min_depth < self.max_depth,
            f"need 0 < min_depth < max_depth, got {self.min_depth} and {self.max_depth}",
        )
        need(self.min_depth_gap >= 0, f"min_depth_gap must be >= 0, got {self.min_depth_gap}")
        need(self.marker_radius >= 1, f"marker_radius must be >= 1, got {self.marker_radius}")
        need(
            self.min_pixel_distance >= 2 * self.marker_radius,
            f"min_pixel_distance ({self.min_pixel_distance}) must be >= 2 * marker_radius "
            f"({2 * self.marker_radius}) or markers overlap",
        )
        need(self.border >= 0, f"border must be >= 0, got {self.border}")
        need(self.edge_window >= 1 and self.edge_window % 2 == 1, f"edge_window must be odd, got {self.edge_window}")
        need(self.edge_max_range >= 0, f"edge_max_range must be >= 0, got {self.edge_max_range}")
        need(self.max_tries >= 1, f"max_tries must be >= 1, got {self.max_tries}")
        for key in ("marker_fill", "marker_outline", "label_color"):
            value = getattr(self, key)
            need(len(value) == 4 and all(0 <= v <= 255 for v in value), f"{key} must be RGBA in 0..255, got {value}")
        need(self.marker_outline_width >= 0, f"marker_outline_width must be >= 0, got {self.marker_outline_width}")
        need(self.font_size >= 1, f"font_size must be >= 1, got {self.font_size}")
        need(
            self.resize_to is None or min(self.resize_to) >= 1,
            f"resize_to must be positive (w, h), got {self.resize_to}",
        )
        need(self.depth_scale > 0, f"depth_scale must be > 0, got {self.depth_scale}")
        need(min(self.geometry_size) >= 1, f"geometry_size must be positive (w, h), got {self.geometry_size}")
        if isinstance(self.mesh_scale, str):
            need(self.mesh_scale == "auto", f"mesh_scale must be 'auto' or a number > 0, got {self.mesh_scale!r}")
        else:
            need(
                not isinstance(self.mesh_scale, bool) and math.isfinite(self.mesh_scale) and self.mesh_scale > 0,
                f"mesh_scale must be 'auto' or a number > 0 (metres per file unit), got {self.mesh_scale!r}",
            )
            self.mesh_scale = float(self.mesh_scale)
        need(self.up_axis in ("auto", "y", "z"), f"up_axis must be 'auto', 'y' or 'z', got {self.up_axis!r}")
        need(self.point_radius >= 0, f"point_radius must be >= 0, got {self.point_radius}")


# --------------------------------------------------------------------------------------------------
# Rendering


@functools.lru_cache(maxsize=8)
def load_font(font: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The TrueType font `font` at `size`, or PIL's built-in default font when it cannot be found."""
    try:
        return ImageFont.truetype(font, size)
    except OSError:
        return ImageFont.load_default(size)


def font_name(params: DepthJigsawParams) -> str:
    """Family and style of the font the numbers are drawn with (tells which font a Sample used)."""
    font = load_font(params.font, params.font_size)
    return " ".join(font.getname()) if isinstance(font, ImageFont.FreeTypeFont) else "PIL bitmap default"


def draw_markers(
    image: Image.Image, centres: Sequence[tuple[int, int]], params: DepthJigsawParams, *, in_place: bool = False
) -> Image.Image:
    """`image` with a numbered marker at each (row, col) of `centres`: the i-th gets label i+1.
    `in_place`: an RGB `image` may be drawn on and returned (saves a copy of a large image).

    Each marker: a circle of `marker_radius` filled with `marker_fill` (RGBA), outlined in
    `marker_outline`, the number centred in `label_color`; alpha-composited in one layer.

    The layer is transparent away from the markers, and compositing is per pixel, so on a large image
    (boxes under 1/32 of it) only the boxes around the markers are composited, boxes that overlap
    merged first; the pixels equal those of compositing a layer as large as the image (the test
    `tests/test_depth_jigsaw.py::test_markers_drawn_in_boxes_equal_one_full_size_layer` checks it).
    """
    font = load_font(params.font, params.font_size)
    r = params.marker_radius
    everything = [([0, 0, image.width, image.height], list(range(1, len(centres) + 1)))]
    reach = max(r + params.marker_outline_width, params.font_size * len(str(len(centres)))) + 3
    if 32 * len(centres) * (2 * reach + 1) ** 2 > image.width * image.height:  # small image: one layer
        return _composite_markers(image, centres, everything, params, in_place)
    measure = ImageDraw.Draw(Image.new("RGBA", (1, 1)))
    groups: list[tuple[list[int], list[int]]] = []  # (box, labels drawn in it)
    for label, (row, col) in enumerate(centres, start=1):
        left, top, right, bottom = measure.textbbox((col, row), str(label), font=font, anchor="mm")
        pad = 2  # antialiasing and outline rounding stay inside
        box = [
            min(col - r, left) - pad,
            min(row - r, top) - pad,
            max(col + r, right) + pad + 1,
            max(row + r, bottom) + pad + 1,
        ]
        groups.append(([max(box[0], 0), max(box[1], 0), min(box[2], image.width), min(box[3], image.height)], [label]))
    merged = True
    while merged:  # merge overlapping boxes, so that no pixel is composited twice
        merged = False
        for i, j in itertools.combinations(range(len(groups)), 2):
            (a, in_a), (b, in_b) = groups[i], groups[j]
            if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                box = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])]
                groups[i] = (box, in_a + in_b)
                del groups[j]
                merged = True
                break
    return _composite_markers(image, centres, groups, params, in_place)


def _composite_markers(
    image: Image.Image,
    centres: Sequence[tuple[int, int]],
    groups: list[tuple[list[int], list[int]]],
    params: DepthJigsawParams,
    in_place: bool,
) -> Image.Image:
    """`image` with, in each (box, labels) of `groups`, those markers drawn on a layer of the box's size
    and alpha-composited; markers are drawn in label order, as on one layer."""
    font = load_font(params.font, params.font_size)
    r = params.marker_radius
    whole = len(groups) == 1 and groups[0][0] == [0, 0, *image.size]
    if whole:
        out = image
    elif image.mode == "RGB":
        out = image if in_place else image.copy()
    else:
        out = image.convert("RGB")
    for (x0, y0, x1, y1), labels in groups:
        if x1 <= x0 or y1 <= y0:
            continue
        base = out.convert("RGBA") if whole else out.crop((x0, y0, x1, y1)).convert("RGBA")
        layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(layer)
        for label in sorted(labels):  # in label order, as on one full-size layer
            row, col = centres[label - 1][0] - y0, centres[label - 1][1] - x0
            draw.ellipse(
                (col - r, row - r, col + r, row + r),
                fill=params.marker_fill,
                outline=params.marker_outline,
                width=params.marker_outline_width,
            )
            draw.text((col, row), str(label), fill=params.label_color, font=font, anchor="mm")
        marked = Image.alpha_composite(base, layer).convert("RGB")
        if whole:
            return marked
        out.paste(marked, (x0, y0))
    return out


# --------------------------------------------------------------------------------------------------
# Sources


def load_rgbd(item: Any, params: DepthJigsawParams) -> tuple[Image.Image, np.ndarray]:
    """RGB image and registered depth (metres, 0 = invalid) of a source item.

    Items: `mmrl.corpus.RGBDItem` (RGB + depth files), `mmrl.corpus.GeometryItem` (a mesh or point cloud,
    placed by `mmrl.geometry_render.place_geometry` with `mesh_scale` and `up_axis`, rendered with
    `mmrl.geometry_render.default_camera_for` at `geometry_size`) or an `mmrl.scenes.Scene` (ray-cast directly).
    """
    from mmrl.corpus import GeometryItem, RGBDItem
    from mmrl.scenes import Scene

    if isinstance(item, RGBDItem):
        image, depth = item.load()
    elif isinstance(item, GeometryItem):
        rgb, depth, _ = _geometry_rendering(item, params)
        image = Image.fromarray(rgb)
    elif isinstance(item, Scene):
        from mmrl.scene_render import render

        rendering = render(item)
        image, depth = Image.fromarray(rendering.rgb), rendering.depth
    else:
        raise MMRLError(f"{NAME}: cannot read a source item of type {type(item).__name__}")
    image = image.convert("RGB")
    return image, register_depth(depth, image.size)


def _geometry_rendering(item: Any, params: DepthJigsawParams) -> tuple[np.ndarray, np.ndarray, Any]:
    """RGB, depth and `mmrl.geometry_render.Placement` of a `GeometryItem` (cached per file and parameters)."""
    path = Path(item.path)
    stamp = path.stat().st_mtime_ns if path.is_file() else -1  # a rewritten file is rendered again
    return _render_geometry(
        str(path), stamp, item.kind, params.geometry_size, params.point_radius, params.mesh_scale, params.up_axis
    )


@functools.lru_cache(maxsize=8)
def _render_geometry(
    path: str,
    stamp: int,
    kind: str,
    size: tuple[int, int],
    point_radius: int,
    mesh_scale: float | Literal["auto"],
    up_axis: UpAxis,
) -> tuple[np.ndarray, np.ndarray, Any]:
    """RGB, depth and placement of one mesh / point cloud file (cached: the same file always renders the same)."""
    from mmrl import media
    from mmrl.geometry_render import default_camera_for, place_geometry, render_geometry

    geometry = media.load_mesh(path) if kind == "mesh" else media.load_point_cloud(path)
    geometry, placement = place_geometry(geometry, scale=mesh_scale, up_axis=up_axis, file_format=Path(path).suffix)
    camera = default_camera_for(geometry, *size)
    rendering = render_geometry(geometry, camera, point_radius=point_radius)
    rgb, depth = rendering.rgb, np.where(rendering.valid, rendering.depth, 0).astype(np.float32)
    rgb.setflags(write=False)
    depth.setflags(write=False)
    return rgb, depth, placement


def source_id(item: Any) -> str:
    """A readable id of a source item (its own `id`, else `scene`)."""
    return str(getattr(item, "id", "scene"))


# --------------------------------------------------------------------------------------------------
# Prompt


def prompt_text(params: DepthJigsawParams) -> str:
    """The question; it depends on the parameters only, never on the sample."""
    k = params.points
    example = params.example(k)
    return (
        f"The image shows {k} points, each marked by a red circle with a number label from 1 to {k}. "
        "Order the points from closest to farthest from the camera, judging each point by the depth "
        "at the centre of its circle. Give the labels from the closest point to the farthest, "
        f"separated by commas. {answer_instruction(params.answer_mode, 'labels', think=params.think)} "
        f"Example of the answer format: {example}"
    )


# --------------------------------------------------------------------------------------------------
# The task


@dataclass
class DepthJigsaw(OrderingTask):
    """Order K numbered points on an RGB image from closest to farthest (3D Visual Jigsaw)."""

    Params: ClassVar[type[DepthJigsawParams]] = DepthJigsawParams
    name: ClassVar[str] = NAME
    params: DepthJigsawParams = field(default_factory=DepthJigsawParams)
    """The sampler, rendering, prompt and reward parameters."""

    def sources(self, corpus: Corpus | str | Path | None = None) -> Sequence[Any]:
        """Source items: the default corpus's procedural RGB-D scenes (`corpus.rgbd`; None builds or opens
        the default corpus), or a folder read as `source_kind` says (RGB-D pairs in any layout of
        `mmrl.corpus.rgbd_folder`, with `depth_scale`; meshes / point clouds via `geometry_folder`)."""
        from mmrl.corpus import default_corpus, geometry_folder, rgbd_folder

        kind = self.params.source_kind
        if corpus is None:
            corpus = default_corpus()
        if not isinstance(corpus, (str, Path)):
            if kind == "geometry":
                raise ConfigError(f"{NAME}: source_kind 'geometry' needs a folder of meshes or point clouds")
            return corpus.rgbd
        if kind == "rgbd":
            return rgbd_folder(corpus, self.params.depth_scale)
        if kind == "geometry":
            return geometry_folder(corpus)
        try:
            return rgbd_folder(corpus, self.params.depth_scale)
        except MMRLError as rgbd_error:
            try:
                return geometry_folder(corpus)
            except MMRLError as geometry_error:
                raise MMRLError(f"{NAME}: {rgbd_error}; and {geometry_error}") from None

    def make(self, source_item: Any, rng: np.random.Generator) -> Sample:
        """One Sample: the RGB image with K numbered markers, the question; answer = labels nearest first.

        One seed is drawn from `rng` and stored in `meta["seed"]`; the points and the shuffle come from
        a generator seeded with it. Raises `SkipItem` when the item cannot yield K valid points.
        """
        p = self.params
        seed = int(rng.integers(2**63))
        sub = np.random.default_rng(seed)
        from mmrl.corpus import GeometryItem, RGBDItem

        if isinstance(source_item, RGBDItem):  # the depth's candidates are cached per file
            from mmrl import media

            image = media.load_image(source_item.rgb_path)  # always RGB (a convert would copy it)
            points = draw_points(rgbd_candidates(source_item, image.size, p), p, sub)
        else:
            image, depth = load_rgbd(source_item, p)
            points = sample_points(depth, p, sub)
        shuffle = shuffle_and_label(p.points, sub)
        shown = shuffle.shown(points)
        marked = draw_markers(image, [(q.row, q.col) for q in shown], p, in_place=True)  # image is ours
        if p.resize_to is not None:
            marked = marked.resize(p.resize_to, Image.Resampling.BICUBIC)
        messages: list[dict[str, Any]] = []
        if p.system_prompt:
            messages.append({"role": "system", "content": p.system_prompt})
        content = [{"type": "image", "image": marked}, {"type": "text", "text": prompt_text(p)}]
        messages.append({"role": "user", "content": content})
        sid = source_id(source_item)
        meta = {
            "source": sid,
            "seed": seed,
            "points": [[q.row, q.col, round(q.depth, 6)] for q in points],
            "order": list(shuffle.order),
            "native_size": list(image.size),
            "image_size": list(marked.size),
            "font": font_name(p),
            "answer_mode": p.answer_mode,
            "think": p.think,
            "params": to_dict(p),
        }
        if isinstance(source_item, GeometryItem):  # how the file was put into metres, z up (cached)
            placement = _geometry_rendering(source_item, p)[2]
            meta["geometry"] = {"scale": placement.scale, "up_axis": placement.up_axis, "up": placement.up_reason}
        return Sample(
            id=f"{NAME}-{sid}-{seed % 10**8:08d}",
            task=NAME,
            messages=messages,
            answer=list(shuffle.labels),
            meta=meta,
        )

    def thought(self, sample: Sample) -> str:
        """The reasoning sentence of the SFT reference: the order itself, closest point first."""
        return f"From the closest point to the farthest: {labels_text(sample.answer)}."

    def evidence(self, sample: Sample) -> list[Panel]:
        """The marked image with a tag `rank: depth` beside each point (rank 1 = nearest), and the points
        listed nearest to farthest with their labels, depths and pixels: `meta["points"]` (nearest first,
        native pixels) and the answer (the label of each, nearest first)."""
        image = evidence.images(sample)[0]
        points = sample.meta["points"]
        native_w, native_h = sample.meta.get("native_size", image.size)
        picture = evidence.fit(image, 640, 480, 2.0)
        sx, sy = picture.width / native_w, picture.height / native_h
        reach = (self.params.marker_radius + self.params.marker_outline_width) * sx + 3
        lines = []
        for rank, ((row, col, depth), label) in enumerate(zip(points, sample.answer), start=1):
            tag = evidence.tag(f"{rank}: {depth:.2f} m")
            x, y = round(col * sx + reach), round(row * sy) - tag.height // 2
            if x + tag.width > picture.width:  # no room on the right: left of the marker
                x = round(col * sx - reach) - tag.width
            picture.paste(tag, (max(0, x), min(max(0, y), picture.height - tag.height)))
            lines.append(f"{rank}. label {label}: {depth:.3f} m  (row {row}, col {col})")
        listing = evidence.text_image("\n".join(lines))
        return [
            Panel("Each point's depth rank and depth (1 = nearest)", picture),
            Panel(f"Nearest to farthest: {labels_text(sample.answer)}", listing),
        ]


__all__ = [
    "DepthJigsaw",
    "DepthJigsawParams",
    "draw_markers",
    "font_name",
    "load_rgbd",
    "prompt_text",
]
