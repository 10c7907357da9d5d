"""`depth_jigsaw`: the ground truth agrees with the depth map at the markers, every sampler constraint
holds, every kind of source works (default corpus, a ScanNet-layout folder, meshes and point clouds),
bad sources are skipped with a reason, generation is deterministic, and Samples reach the tiny model.

The truth checks never trust the generator's variables: marker centres are found in the image (pixels
that differ from the source RGB, connected components), each marker's label is read from its pixels
(the marker rendered with every possible label is compared to the image), and depths are read from the
source's depth map loaded here, independently of the task.
"""

from __future__ import annotations

import io
import itertools
import math
import os
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
from PIL import Image, ImageDraw
from skimage.measure import label as connected_components
from skimage.measure import regionprops

from mmrl import media, scene_render, scenes
from mmrl.config import CorpusConfig, ModelConfig, RolloutConfig
from mmrl.corpus import Corpus, GeometryItem, RGBDItem, build_default_corpus
from mmrl.errors import ConfigError, MediaError, MMRLError, SkipItem
from mmrl.geometry_render import default_camera_for, place_geometry, render_geometry
from mmrl.models import load_policy
from mmrl.registry import get_task, task_class
from mmrl.rollout import encode_prompt, make_engine, sampling_params
from mmrl.sample import Sample, read_dataset, write_dataset
from pretext_tasks.base import shuffle_and_label
from pretext_tasks.depth_jigsaw import DepthJigsaw, DepthJigsawParams, draw_markers, load_font, prompt_text
from pretext_tasks.depth_points import (
    DepthPoint,
    _block_candidates,
    _BlockCandidates,
    _conflict_bounds,
    _read_depth,
    candidate_mask,
    draw_points,
    register_depth,
    rgbd_candidates,
    sample_points,
)

K = 6
RADIUS = 15


def image_of(sample: Sample) -> Image.Image:
    (item,) = sample.media()
    image = item["image"]
    return image if isinstance(image, Image.Image) else Image.open(image)


def text_of(sample: Sample) -> str:
    return next(i["text"] for m in sample.messages for i in m["content"] if i["type"] == "text")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def read_markers(sample: Sample, source: Image.Image, params: DepthJigsawParams) -> dict[int, tuple[int, int]]:
    """Label -> (row, col) of its marker centre, read from the pixels only.

    Centres: centroids of the connected regions where the sample image differs from the source RGB
    (each marker is a symmetric disc). Labels: the marker drawn with each candidate label at that
    centre is compared with the image around it; exactly one must match pixel for pixel.
    """
    shown, original = np.asarray(image_of(sample)), np.asarray(source.convert("RGB"))
    regions = regionprops(connected_components(np.any(shown != original, axis=2), connectivity=2))
    k = params.points
    assert len(regions) == k, f"found {len(regions)} marker regions, expected {k}"
    found: dict[int, tuple[int, int]] = {}
    rows, cols = np.indices(shown.shape[:2])
    reach = params.marker_radius + params.marker_outline_width + 1  # a disc: other markers lie farther off
    for region in regions:
        row, col = (round(v) for v in region.centroid)
        disc = (rows - row) ** 2 + (cols - col) ** 2 <= reach**2
        matches = []
        for label in range(1, k + 1):
            offscreen = [(-1000, -1000)] * (label - 1)  # earlier labels drawn outside the image
            template = np.asarray(draw_markers(source, [*offscreen, (row, col)], params))
            if np.array_equal(template[disc], shown[disc]):
                matches.append(label)
        assert len(matches) == 1, f"marker at {(row, col)} matches labels {matches}"
        found[matches[0]] = (row, col)
    assert sorted(found) == list(range(1, k + 1))
    return found


def check_truth_and_constraints(sample: Sample, source: Image.Image, depth: np.ndarray) -> None:
    """The answer orders the markers nearest first by `depth` at their centres; every constraint holds."""
    params = DepthJigsawParams(**{k: v for k, v in sample.meta["params"].items() if k != "resize_to"})
    k, b, half = params.points, params.border, params.edge_window // 2
    at = read_markers(sample, source, params)
    assert sorted(sample.answer) == list(range(1, k + 1)) and sample.answer != list(range(1, k + 1))
    centres = [at[label] for label in sample.answer]  # nearest first, if the answer is right
    z = [float(depth[row, col]) for row, col in centres]
    h, w = depth.shape
    for (row, col), d in zip(centres, z):
        assert params.min_depth <= d <= params.max_depth
        assert b <= row < h - b and b <= col < w - b
        patch = depth[row - half : row + half + 1, col - half : col + half + 1]
        assert (patch > 0).all() and patch.max() - patch.min() <= params.edge_max_range + 1e-6
    assert all(far - near > params.min_depth_gap for near, far in zip(z, z[1:])), z  # increasing, gaps > 0.2
    for p, q in itertools.combinations(centres, 2):
        assert math.dist(p, q) >= params.min_pixel_distance
    # The stored points are the markers, nearest first, with their depths.
    assert [(row, col) for row, col, _ in sample.meta["points"]] == centres
    assert [d for *_, d in sample.meta["points"]] == pytest.approx(z, abs=1e-6)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    """A small default corpus: one photo, one short video, 8 procedural RGB-D scenes."""
    cfg = CorpusConfig(
        root=str(tmp_path_factory.mktemp("corpus")),
        max_photos=1,
        videos_per_photo=1,
        scene_videos=0,
        video_frames=8,
        video_size=(64, 48),
        rgbd_scenes=8,
    )
    return build_default_corpus(cfg, progress=False)


def scene_rendering(seed: int, width: int = 320, height: int = 240) -> scene_render.Rendering:
    return scene_render.render(scenes.random_scene(np.random.default_rng(seed), width=width, height=height))


# --------------------------------------------------------------------------------------------------
# Registry and parameters


def test_registered_with_checked_params() -> None:
    assert task_class("depth_jigsaw") is DepthJigsaw
    task = get_task("depth_jigsaw", points=4, resize_to=[160, 120], marker_fill=[0, 0, 255, 100])
    assert isinstance(task, DepthJigsaw) and task.name == "depth_jigsaw"
    assert task.params.resize_to == (160, 120) and task.params.marker_fill == (0, 0, 255, 100)
    for bad in (
        {"edge_window": 4},
        {"min_pixel_distance": 20},  # markers of radius 15 would overlap
        {"points": 1},
        {"min_depth": 5.0, "max_depth": 1.0},
        {"answer_mode": "raw"},  # think is on by default
        {"source_kind": "mesh"},
        {"marker_fill": [255, 0, 0]},
        {"mesh_scale": 0},
        {"mesh_scale": -0.001},
        {"mesh_scale": float("nan")},
        {"mesh_scale": "big"},
        {"mesh_scale": True},
        {"up_axis": "x"},
    ):
        with pytest.raises(ConfigError):
            get_task("depth_jigsaw", **bad)
    assert (task.params.mesh_scale, task.params.up_axis) == ("auto", "auto")
    for given, scale in ((1, 1.0), ("0.001", 0.001), (0.01, 0.01)):  # a string as `--param mesh_scale=...` gives it
        assert get_task("depth_jigsaw", mesh_scale=given, up_axis="y").params.mesh_scale == scale


def test_prompt_text_is_exact_and_the_same_for_every_sample(corpus: Corpus) -> None:
    assert prompt_text(DepthJigsawParams()) == (
        "The image shows 6 points, each marked by a red circle with a number label from 1 to 6. Order the "
        "points from closest to farthest from the camera, judging each point by the depth at the centre of "
        "its circle. Give the labels from the closest point to the farthest, separated by commas. Think "
        "inside <think></think>, then answer with <answer>labels</answer>. Example of the answer format: "
        "<answer>2, 4, 6, 1, 3, 5</answer>"
    )
    boxed = prompt_text(DepthJigsawParams(points=4, answer_mode="boxed", think=False))
    assert boxed.endswith("Answer with only \\boxed{labels}. Example of the answer format: \\boxed{2, 4, 1, 3}")
    task = DepthJigsaw(DepthJigsawParams(points=4, think=False))
    texts = {text_of(task.make(item, np.random.default_rng(s))) for item in corpus.rgbd[:4] for s in range(3)}
    assert texts == {prompt_text(task.params)}


# --------------------------------------------------------------------------------------------------
# Ground truth against the depth map


def test_ground_truth_agrees_with_depth_at_marker_centres_over_many_seeds(corpus: Corpus) -> None:
    task = get_task("depth_jigsaw")
    assert task.sources(corpus) == corpus.rgbd and len(corpus.rgbd) == 8
    answers = set()  # with the same seed every scene gets the same shuffle; seeds must vary it
    for item in corpus.rgbd:
        source, depth = media.load_image(item.rgb_path), media.load_depth(item.depth_path, 1000.0)
        for seed in range(5):  # 8 scenes x 5 seeds = 40 samples
            sample = task.make(item, np.random.default_rng(seed))
            assert sample.task == "depth_jigsaw" and sample.meta["source"] == item.id
            check_truth_and_constraints(sample, source, depth)
            answers.add(tuple(sample.answer))
    assert len(answers) == 5


def test_scannet_layout_folder_with_lower_resolution_depth_in_millimetres(tmp_path: Path) -> None:
    rendering = scene_rendering(3)
    (tmp_path / "color").mkdir()
    (tmp_path / "depth").mkdir()
    Image.fromarray(rendering.rgb).save(tmp_path / "color" / "000000.jpg", quality=95)
    small = rendering.depth[::2, ::2]  # depth at half the colour resolution, as ScanNet's
    media.save_depth(tmp_path / "depth" / "000000.png", small, scale=1000.0)
    task = get_task("depth_jigsaw", source_kind="rgbd")
    (item,) = task.sources(tmp_path)
    assert isinstance(item, RGBDItem) and item.id == "000000" and item.depth_scale == 1000.0
    millimetres = np.asarray(Image.open(tmp_path / "depth" / "000000.png"), dtype=np.float64)
    registered = np.repeat(np.repeat(millimetres / 1000.0, 2, axis=0), 2, axis=1)  # nearest neighbour, 2x
    source = media.load_image(tmp_path / "color" / "000000.jpg")
    for seed in range(5):
        check_truth_and_constraints(task.make(item, np.random.default_rng(seed)), source, registered)
    # The same millimetres read as metres lie beyond max_depth: the scale is what makes them usable.
    (wrong,) = get_task("depth_jigsaw", depth_scale=1.0).sources(tmp_path)
    with pytest.raises(SkipItem) as info:
        task.make(wrong, np.random.default_rng(0))
    assert info.value.reason == "no_valid_depth"


def test_mesh_and_point_cloud_sources_render_and_agree_with_their_depth(tmp_path: Path) -> None:
    mesh = o3d.geometry.TriangleMesh.create_box(4.0, 4.0, 0.02).translate((-2.0, -2.0, -0.02))
    mesh.paint_uniform_color((0.6, 0.6, 0.6))
    boxes = [(-1.2, -1.2, 0.5), (0.6, -1.0, 0.4), (-1.0, 0.3, 0.6), (0.8, 0.6, 0.5), (-0.3, 1.3, 0.7)]
    for i, (x, y, s) in enumerate(boxes):
        box = o3d.geometry.TriangleMesh.create_box(s, s, s).translate((x, y, 0.0))
        box.paint_uniform_color(((i * 0.37) % 1.0, 0.3, 0.8 - 0.15 * i))
        mesh += box
    o3d.io.write_triangle_mesh(str(tmp_path / "boxes.ply"), mesh)
    o3d.io.write_point_cloud(str(tmp_path / "cloud.ply"), mesh.sample_points_uniformly(150_000))
    # The scene is in metres with z up: mesh_scale 1 and up_axis z render it as it is; the defaults scale it
    # to a 5 m diagonal and find z up themselves (place_geometry).
    for params in ({"mesh_scale": 1.0, "up_axis": "z"}, {}):
        task = get_task("depth_jigsaw", geometry_size=[480, 360], **params)  # auto: no RGB-D pairs, so geometry
        items = task.sources(tmp_path)
        assert [(i.id, i.kind) for i in items] == [("boxes.ply", "mesh"), ("cloud.ply", "point_cloud")]
        for item in items:
            geometry = item.load()
            if not params:
                geometry, placement = place_geometry(geometry, file_format=".ply")
                assert placement.up_axis == "z" and placement.scale == pytest.approx(
                    5.0 / np.sqrt(4**2 + 4**2 + 0.72**2)
                )
            rendering = render_geometry(geometry, default_camera_for(geometry, 480, 360), point_radius=1)
            source = Image.fromarray(rendering.rgb)
            for seed in range(3):
                sample = task.make(item, np.random.default_rng(seed))
                assert image_of(sample).size == (480, 360)
                check_truth_and_constraints(sample, source, np.where(rendering.valid, rendering.depth, 0.0))
                placed = sample.meta["geometry"]
                assert placed["up_axis"] == "z" and placed["scale"] == (1.0 if params else placement.scale)


# --------------------------------------------------------------------------------------------------
# Bad sources


def write_pair(folder: Path, rgb: np.ndarray, depth_m: np.ndarray) -> RGBDItem:
    (folder / "frame").mkdir(parents=True)
    Image.fromarray(rgb).save(folder / "frame" / "rgb.png")
    media.save_depth(folder / "frame" / "depth.png", depth_m)
    (item,) = get_task("depth_jigsaw").sources(folder)
    return item


def skip_reason(task: DepthJigsaw, item: RGBDItem) -> str:
    with pytest.raises(SkipItem) as info:
        task.make(item, np.random.default_rng(0))
    return info.value.reason


def test_unusable_depth_maps_are_skipped_with_a_reason(tmp_path: Path) -> None:
    task = get_task("depth_jigsaw")
    rgb = np.full((240, 320, 3), 128, np.uint8)
    zeros = write_pair(tmp_path / "zeros", rgb, np.zeros((240, 320)))
    assert skip_reason(task, zeros) == "no_valid_depth"
    wall = write_pair(tmp_path / "wall", rgb, np.full((240, 320), 2.0))  # flat: no depth differences
    assert skip_reason(task, wall) == "depth_constraints_unsatisfiable"
    tiny = write_pair(tmp_path / "tiny", rgb[:30, :40], scene_rendering(0).depth[-30:, 140:180])  # no room
    assert skip_reason(task, tiny) == "depth_constraints_unsatisfiable"
    # Four depth steps 0.4 m apart in a 100 px image: the span passes the quick test, but no 6 points
    # are 40 px and > 0.2 m apart, so every restart dead-ends.
    steps = np.broadcast_to(1.0 + 0.4 * (np.arange(100) // 25), (100, 100))
    stairs = write_pair(tmp_path / "stairs", rgb[:100, :100], steps)
    with pytest.raises(SkipItem, match="in 20 tries") as info:
        task.make(stairs, np.random.default_rng(0))
    assert info.value.reason == "depth_constraints_unsatisfiable"
    three = get_task("depth_jigsaw", points=3, min_pixel_distance=30)
    assert len(three.make(stairs, np.random.default_rng(0)).answer) == 3  # fewer points fit


def test_nan_and_inf_depth_is_invalid_and_never_chosen(tmp_path: Path) -> None:
    rendering = scene_rendering(5)
    depth = rendering.depth.astype(np.float32).copy()
    depth[:, 100:130] = np.nan
    depth[60:90, :] = np.inf
    depth[200:210, 200:260] = -1.0
    bad = ~np.isfinite(depth) | (depth <= 0)
    Image.fromarray(rendering.rgb).save(tmp_path / "rgb.png")
    Image.fromarray(depth).save(tmp_path / "depth.tiff")  # float depth keeps its NaNs on disk
    item = RGBDItem("nan", tmp_path / "rgb.png", tmp_path / "depth.tiff", depth_scale=1.0)
    task = get_task("depth_jigsaw")
    near_bad = np.zeros_like(bad)
    for dy, dx in itertools.product(range(-2, 3), repeat=2):  # the 5x5 neighbourhood of a bad pixel
        near_bad |= np.roll(bad, (dy, dx), axis=(0, 1))
    clean = np.where(bad, 0.0, depth)
    for seed in range(8):
        sample = task.make(item, np.random.default_rng(seed))
        assert not any(near_bad[row, col] for row, col, _ in sample.meta["points"])
        check_truth_and_constraints(sample, Image.fromarray(rendering.rgb), clean)
    registered = register_depth(depth, (320, 240))
    assert np.isfinite(registered).all() and (registered[bad] == 0).all()


def test_sampler_meets_constraints_on_many_scenes_and_registers_depth() -> None:
    params = DepthJigsawParams()
    for seed in range(10):
        depth = scene_rendering(100 + seed).depth
        points = sample_points(depth, params, np.random.default_rng(seed))
        assert len(points) == K and [p.depth for p in points] == sorted(p.depth for p in points)
        assert all(depth[p.row, p.col] == np.float32(p.depth) for p in points)
    # A procedural Scene is a source item too (ray-cast on the fly).
    scene = scenes.random_scene(np.random.default_rng(11))
    rendering = scene_render.render(scene)
    sample = get_task("depth_jigsaw").make(scene, np.random.default_rng(0))
    check_truth_and_constraints(sample, Image.fromarray(rendering.rgb), rendering.depth)
    # The candidate mask is exactly its definition, checked pixel by pixel on a small depth map.
    depth = scene_rendering(7, 64, 48).depth
    depth[10:14, 30:40] = 0.0
    params = DepthJigsawParams(border=6, min_pixel_distance=30, edge_max_range=0.6, max_depth=8.0)
    padded = np.pad(depth, 2)
    expected = np.zeros_like(depth, dtype=bool)
    for row, col in itertools.product(range(6, 42), range(6, 58)):
        window = padded[row : row + 5, col : col + 5]
        expected[row, col] = (
            0.1 <= depth[row, col] <= 8.0 and (window > 0).all() and window.max() - window.min() <= np.float32(0.6)
        )
    assert np.array_equal(candidate_mask(depth, params), expected) and 100 < expected.sum() < 0.9 * (36 * 52)
    small = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert np.array_equal(register_depth(small, (8, 6)), np.repeat(np.repeat(small, 2, 0), 2, 1))


def _sample_points_reference(depth: np.ndarray, params: DepthJigsawParams, rng: np.random.Generator) -> list:
    """The sampler as first written (before the candidate cache and the windowed conflict tests): every
    accepted point is tested against every candidate. The task's sampler must draw the same points."""
    k = params.points
    if not ((depth >= params.min_depth) & (depth <= params.max_depth) & (depth > 0)).any():
        raise SkipItem("no_valid_depth", "")
    rows, cols = np.nonzero(candidate_mask(depth, params))
    z = depth[rows, cols].astype(np.float64)
    if len(z) < k or float(z.max() - z.min()) <= (k - 1) * params.min_depth_gap:
        raise SkipItem("depth_constraints_unsatisfiable", "")
    rows_f, cols_f = rows.astype(np.float64), cols.astype(np.float64)
    min_d2 = float(params.min_pixel_distance) ** 2
    for _ in range(params.max_tries):
        alive = np.ones(len(z), dtype=bool)
        chosen: list[int] = []
        while len(chosen) < k:
            left = np.flatnonzero(alive)
            if not len(left):
                break
            i = int(left[rng.integers(len(left))])
            chosen.append(i)
            d2 = (rows_f - rows_f[i]) ** 2 + (cols_f - cols_f[i]) ** 2
            alive &= (d2 >= min_d2) & (np.abs(z - z[i]) > params.min_depth_gap)
        if len(chosen) == k:
            points = [DepthPoint(int(rows[i]), int(cols[i]), float(depth[rows[i], cols[i]])) for i in chosen]
            return sorted(points, key=lambda p: p.depth)
    raise SkipItem("depth_constraints_unsatisfiable", "")


def _reference_or_reason(depth: np.ndarray, params: DepthJigsawParams, seed: int) -> object:
    try:
        return _sample_points_reference(depth, params, np.random.default_rng(seed))
    except SkipItem as e:
        return e.reason


def _points_or_reason(depth: np.ndarray, params: DepthJigsawParams, seed: int) -> object:
    try:
        return sample_points(depth, params, np.random.default_rng(seed))
    except SkipItem as e:
        return e.reason


def test_sampler_draws_exactly_the_points_of_the_reference_sampler(corpus: Corpus, tmp_path: Path) -> None:
    task = get_task("depth_jigsaw")
    p = task.params
    variants = [
        p,
        DepthJigsawParams(points=4, min_pixel_distance=60.5, min_depth_gap=0.5, border=5),
        DepthJigsawParams(points=8, min_pixel_distance=30, min_depth_gap=0.05, max_tries=3),
    ]
    # The corpus scenes through make (cached candidates; every draw after the first per item is a hit)
    # and through sample_points, 8 scenes x 3 seeds, against the reference on the same registered depth.
    for item in corpus.rgbd:
        image, raw = item.load()
        depth = register_depth(raw, image.size)
        for seed in range(3):
            sub_seed = int(np.random.default_rng(seed).integers(2**63))  # as make draws it
            expected = _sample_points_reference(depth, p, np.random.default_rng(sub_seed))
            for _ in range(2):  # a miss, then a hit of the candidate cache
                sample = task.make(item, np.random.default_rng(seed))
                assert sample.meta["seed"] == sub_seed
                assert sample.meta["points"] == [[q.row, q.col, round(q.depth, 6)] for q in expected]
            for params in variants:
                assert _points_or_reason(depth, params, seed) == _reference_or_reason(depth, params, seed)
    # Unregistered float64 depth maps (rendered scenes), a ScanNet-like upscale, restarts and dead ends.
    for seed in range(6):
        depth = scene_rendering(200 + seed).depth
        big = register_depth(depth, (1296, 968))
        for params in variants:
            assert _points_or_reason(depth, params, seed) == _reference_or_reason(depth, params, seed)
        assert _points_or_reason(big, p, seed) == _reference_or_reason(big, p, seed)
    stairs = np.broadcast_to(1.0 + 0.4 * (np.arange(100) // 25), (100, 100)).astype(np.float32)
    for params in (p, DepthJigsawParams(points=3, min_pixel_distance=30)):
        for seed in range(4):
            assert _points_or_reason(stairs, params, seed) == _reference_or_reason(stairs, params, seed)
    # A rewritten depth file is read again (the cache is keyed by its mtime and size).
    rendering = scene_rendering(9)
    item = write_pair(tmp_path / "rewritten", rendering.rgb, rendering.depth)
    first = task.make(item, np.random.default_rng(0)).meta["points"]
    media.save_depth(item.depth_path, rendering.depth[:, ::-1].copy())
    os.utime(item.depth_path, ns=(1, 1))  # a different mtime even on coarse-clock file systems
    flipped = task.make(item, np.random.default_rng(0)).meta["points"]
    depth = register_depth(media.load_depth(item.depth_path), (320, 240))
    sub_seed = int(np.random.default_rng(0).integers(2**63))
    expected = _sample_points_reference(depth, p, np.random.default_rng(sub_seed))
    assert flipped == [[q.row, q.col, round(q.depth, 6)] for q in expected] != first


# --------------------------------------------------------------------------------------------------
# Depth smaller than colour (ScanNet: 640x480 depth, 1296x968 colour): the sampler on blocks of the
# depth map's resolution and the markers composited on their boxes give what the registered depth and
# one full-size layer give (the code before the speed-up, kept here and in `sample_points`).


def _markers_reference(image: Image.Image, centres: list, params: DepthJigsawParams) -> Image.Image:
    """`draw_markers` as first written: one transparent layer as large as the image, composited once."""
    base = image.convert("RGBA")
    layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font = load_font(params.font, params.font_size)
    r = params.marker_radius
    for label, (row, col) in enumerate(centres, start=1):
        box = (col - r, row - r, col + r, row + r)
        draw.ellipse(box, fill=params.marker_fill, outline=params.marker_outline, width=params.marker_outline_width)
        draw.text((col, row), str(label), fill=params.label_color, font=font, anchor="mm")
    return Image.alpha_composite(base, layer).convert("RGB")


def _block_points_or_reason(depth: np.ndarray, size: tuple, params: DepthJigsawParams, seed: int) -> object:
    try:
        return draw_points(_block_candidates(depth, size, params), params, np.random.default_rng(seed))
    except SkipItem as e:
        return e.reason


def test_block_sampler_draws_the_points_of_the_registered_depth(tmp_path: Path) -> None:
    p = DepthJigsawParams()
    variants = [
        p,
        DepthJigsawParams(points=4, min_pixel_distance=60.5, min_depth_gap=0.5, border=5, edge_window=3),
        DepthJigsawParams(points=8, min_pixel_distance=30, min_depth_gap=0.05, max_tries=3, edge_window=7),
        DepthJigsawParams(points=3, min_pixel_distance=30, min_depth_gap=0.0, border=0, edge_window=1),
    ]
    # ScanNet's sizes (about 2x), an odd ratio, a downscale (windows with gaps), one axis equal.
    sizes = [(1296, 968), (500, 333), (200, 150), (320, 300)]
    for seed in range(3):
        depth = scene_rendering(300 + seed).depth.astype(np.float32)
        if seed == 1:  # invalid values stay invalid without the cleaning pass
            depth[:, 40:44], depth[100:103, :], depth[20:30, 200:230] = np.nan, np.inf, -1.0
        for size, params in itertools.product(sizes if seed == 0 else sizes[:1], variants):
            registered = register_depth(depth, size)
            for draw_seed in range(2):
                expected = _points_or_reason(registered, params, draw_seed)
                assert _block_points_or_reason(depth, size, params, draw_seed) == expected, (seed, size, params)
    # 16-bit depth PNGs are read through a table of metres: exactly load_depth's float32 metres.
    Image.fromarray(np.arange(2**16, dtype=np.uint16).reshape(256, 256)).save(tmp_path / "d.png")
    for scale in (1000.0, 5000.0, 1.0, 0.37):
        assert np.array_equal(_read_depth(tmp_path / "d.png", scale), media.load_depth(tmp_path / "d.png", scale))
    with pytest.raises(MediaError, match="not found"):
        _read_depth(tmp_path / "missing.png", 1000.0)
    # Skips: no valid depth, too few candidates, too little depth span.
    assert _block_points_or_reason(np.zeros((48, 64), np.float32), (130, 97), p, 0) == "no_valid_depth"
    wall = np.full((48, 64), 2.0, np.float32)
    assert _block_points_or_reason(wall, (130, 97), p, 0) == "depth_constraints_unsatisfiable"
    assert _points_or_reason(register_depth(wall, (130, 97)), p, 0) == "depth_constraints_unsatisfiable"


def test_conflict_bounds_are_the_exact_float32_interval_of_the_depth_test() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        zi = float(np.float32(rng.uniform(0.1, 10)))
        gap = float(rng.choice([0.0, 0.2, 0.05, rng.uniform(0, 3)]))
        lo, hi = _conflict_bounds(zi, gap)
        assert lo.dtype == hi.dtype == np.float32
        for v, removed in ((lo, True), (hi, True), (np.nextafter(lo, np.float32(-np.inf)), False)):
            assert (not abs(float(v) - zi) > gap) == removed
        assert abs(float(np.nextafter(hi, np.float32(np.inf))) - zi) > gap


def test_markers_drawn_in_boxes_equal_one_full_size_layer() -> None:
    rng = np.random.default_rng(0)
    photo = scene_rendering(1, 324, 242).rgb
    big = Image.fromarray(photo).resize((1296, 968), Image.Resampling.BICUBIC)
    for trial in range(16):
        image = big if trial % 4 else big.resize((320, 240))
        params = DepthJigsawParams(
            points=int(rng.integers(3, 12)),
            marker_radius=int(rng.choice([5, 15, 20])),
            font_size=int(rng.choice([9, 15, 31])),
            marker_outline_width=int(rng.integers(0, 4)),
        )
        # Anywhere, touching edges, overlapping (boxes merged), or off the image.
        centres = [(int(rng.integers(-10, image.height + 10)), int(rng.integers(-10, image.width + 10)))]
        centres += [(centres[0][0] + 12, centres[0][1] - 9)]
        centres += [(int(rng.integers(0, image.height)), int(rng.integers(0, image.width))) for _ in range(6)]
        centres = centres[: params.points]
        drawn = draw_markers(image, centres, params)
        expected = np.asarray(_markers_reference(image, centres, params))
        assert np.array_equal(np.asarray(drawn), expected)
        assert np.array_equal(np.asarray(draw_markers(image.copy(), centres, params, in_place=True)), expected)
        assert drawn is not image and np.array_equal(np.asarray(image), np.asarray(big if trial % 4 else image))


def test_scannet_sized_samples_equal_the_registered_depth_path(tmp_path: Path) -> None:
    """make on a ScanNet-sized pair (1296x968 colour, 640x480 16-bit depth) == the slow path: depth
    registered to the colour size, `sample_points` on it, one full-size marker layer."""
    task = get_task("depth_jigsaw")
    p = task.params
    for scene in range(2):
        rendering = scene_rendering(400 + scene, 640, 480)
        folder = tmp_path / f"scan{scene}"
        (folder / "color").mkdir(parents=True)
        (folder / "depth").mkdir()
        rgb = Image.fromarray(rendering.rgb).resize((1296, 968), Image.Resampling.BICUBIC)
        rgb.save(folder / "color" / "0.png")
        media.save_depth(folder / "depth" / "0.png", rendering.depth)
        (item,) = task.sources(folder)
        image = media.load_image(item.rgb_path)
        assert isinstance(rgbd_candidates(item, image.size, p), _BlockCandidates)  # the fast path is taken
        depth = register_depth(media.load_depth(item.depth_path), image.size)
        for seed in range(3):
            sample = task.make(item, np.random.default_rng(seed))
            sub = np.random.default_rng(int(np.random.default_rng(seed).integers(2**63)))
            points = sample_points(depth, p, sub)
            shuffle = shuffle_and_label(p.points, sub)
            expected = _markers_reference(image, [(q.row, q.col) for q in shuffle.shown(points)], p)
            assert sample.meta["points"] == [[q.row, q.col, round(q.depth, 6)] for q in points]
            assert sample.answer == list(shuffle.labels)
            assert png_bytes(image_of(sample)) == png_bytes(expected)


# --------------------------------------------------------------------------------------------------
# Determinism, rendering options, reward


def test_same_seed_same_bytes_different_seed_differs(corpus: Corpus) -> None:
    task = get_task("depth_jigsaw")
    item = corpus.rgbd[2]
    a, b = task.make(item, np.random.default_rng(7)), task.make(item, np.random.default_rng(7))
    assert png_bytes(image_of(a)) == png_bytes(image_of(b))
    assert (a.id, a.answer, a.meta, text_of(a)) == (b.id, b.answer, b.meta, text_of(b))
    c = task.make(item, np.random.default_rng(8))
    assert png_bytes(image_of(c)) != png_bytes(image_of(a)) and c.meta["points"] != a.meta["points"]


def test_resize_after_drawing_keeps_points_at_native_pixels(corpus: Corpus) -> None:
    item = corpus.rgbd[0]
    native = get_task("depth_jigsaw").make(item, np.random.default_rng(1))
    small = get_task("depth_jigsaw", resize_to=[160, 120]).make(item, np.random.default_rng(1))
    assert image_of(small).size == (160, 120) and small.meta["image_size"] == [160, 120]
    assert small.meta["native_size"] == [320, 240] and small.meta["points"] == native.meta["points"]
    expected = image_of(native).resize((160, 120), Image.Resampling.BICUBIC)
    assert png_bytes(image_of(small)) == png_bytes(expected)


def test_reward_of_the_reference_answer_is_one(corpus: Corpus, tmp_path: Path) -> None:
    item = corpus.rgbd[1]
    for params in ({}, {"think": False}, {"answer_mode": "boxed", "points": 4}):
        task = get_task("depth_jigsaw", **params)
        sample = task.make(item, np.random.default_rng(3))
        assert task.reward(task.reference_completion(sample), sample).score == 1.0
        reversed_answer = task.params.reference(sample, "x").replace(
            ", ".join(map(str, sample.answer)), ", ".join(map(str, sample.answer[::-1]))
        )
        assert 0 < task.reward(reversed_answer, sample).score < 1.0
        assert task.reward("2, 4, 1, 3", sample).score == 0.0
    task = get_task("depth_jigsaw")  # think on: a reply without the <think> block fails the format gate
    sample = task.make(item, np.random.default_rng(3))
    assert task.reward("<answer>" + ", ".join(map(str, sample.answer)) + "</answer>", sample).score == 0.0
    write_dataset([sample], tmp_path / "ds")
    (back,) = read_dataset(tmp_path / "ds")
    assert back.answer == sample.answer and back.meta == sample.meta
    assert get_task("depth_jigsaw").reward(DepthJigsaw().reference_completion(back), back).score == 1.0


def test_sources_of_corpus_and_folders(corpus: Corpus, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="geometry"):
        get_task("depth_jigsaw", source_kind="geometry").sources(corpus)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MMRLError, match="RGB-D"):
        get_task("depth_jigsaw").sources(tmp_path / "empty")
    items = get_task("depth_jigsaw", depth_scale=5000.0).sources(corpus.root / "rgbd")
    assert [i.id for i in items] == [i.id for i in corpus.rgbd] and {i.depth_scale for i in items} == {5000.0}
    with pytest.raises(MMRLError, match="cannot read a source item of type str"):
        get_task("depth_jigsaw").make("scene_000", np.random.default_rng(0))
    with pytest.raises(MediaError, match="x.ply"):  # a missing file is unreadable media: skipped, counted
        get_task("depth_jigsaw").make(GeometryItem("x", tmp_path / "x.ply", "mesh"), np.random.default_rng(0))


# --------------------------------------------------------------------------------------------------
# The tiny model


def test_sample_loads_through_the_tiny_models_processor_and_generates(corpus: Corpus) -> None:
    cfg = ModelConfig()
    model, processor = load_policy(cfg, device="cpu")
    task = get_task("depth_jigsaw", points=4, think=False, resize_to=[160, 120])
    sample = task.make(corpus.rgbd[0], np.random.default_rng(0))
    prompt = encode_prompt(processor, sample.messages, cfg, max_prompt_tokens=2048)
    assert prompt.num_visual_tokens > 0 and "closest to farthest" in prompt.text
    rollout = RolloutConfig(max_new_tokens=8)
    engine = make_engine(rollout, model.eval(), processor, seed=0)
    (completions,) = engine.generate([prompt], 2, sampling_params(rollout, seed=0))
    assert len(completions) == 2
    for completion in completions:
        assert 0 < len(completion.token_ids) <= 8 and isinstance(completion.text, str)
        assert 0.0 <= task.reward(completion.text, sample).score <= 1.0
