"""Procedural scenes: depth/instance correctness against analytic geometry, determinism, animation."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest

from mmrl import scene_render as R
from mmrl import scenes as S
from mmrl.scenes import COLORS, SHAPES, SIZES, Camera, Scene, SceneObject

SEEDS = range(12)


@functools.cache
def _scene(seed: int) -> Scene:
    return S.random_scene(np.random.default_rng(seed))


@functools.cache
def _render(seed: int) -> R.Rendering:
    return R.render(_scene(seed))


def _pixel(camera: Camera, point) -> tuple[int, int]:
    uv, _ = camera.project([point])
    return int(np.rint(uv[0, 1])), int(np.rint(uv[0, 0]))


def _simple_scene(*objects: SceneObject) -> Scene:
    return Scene(tuple(objects), Camera.look_at((0.0, -6.0, 4.0), (0.0, 0.0, 0.2), 320, 240, 55.0))


# --------------------------------------------------------------------------------------------------
# Vocabulary and camera


def test_vocabulary_is_well_separated():
    assert {"cube", "sphere", "cylinder", "cone", "torus"} <= set(SHAPES)
    rgb = np.array(list(COLORS.values()), float)
    dist = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + np.eye(len(rgb)) * 1e9
    assert len(COLORS) >= 8 and dist.min() > 60
    ground = np.array(Scene((), Camera.look_at((0, -5, 3), (0, 0, 0))).ground_color, float)
    assert np.linalg.norm(rgb - ground, axis=1).min() > 80
    assert SIZES["small"] < SIZES["medium"] < SIZES["large"]


def test_camera_look_at_conventions():
    cam = Camera.look_at((3.0, -4.0, 2.5), (0.5, 0.5, 0.0), 320, 240, 60.0)
    r = cam.matrix[:3, :3]
    np.testing.assert_allclose(r.T @ r, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)
    uv, z = cam.project([(0.5, 0.5, 0.0), (3.0, -4.0, 2.5 + 1.0)])
    np.testing.assert_allclose(uv[0], [cam.cx, cam.cy], atol=1e-9)  # target projects to the image centre
    assert z[0] == pytest.approx(math.dist((3.0, -4.0, 2.5), (0.5, 0.5, 0.0)))
    above, below = cam.project([(0.5, 0.5, 1.0), (0.5, 0.5, -1.0)])[0]
    assert above[1] < cam.cy < below[1]  # world up is image up (y down)
    assert cam.fx == pytest.approx(160 / math.tan(math.radians(30)))
    half = cam.scaled(0.5)
    assert (half.width, half.height) == (160, 120)
    np.testing.assert_allclose(half.project([(1.0, 2.0, 0.3)])[0], (cam.project([(1.0, 2.0, 0.3)])[0] + 0.5) / 2 - 0.5)
    with pytest.raises(ValueError, match="look_at"):
        Camera.look_at((0, 0, 5), (0, 0, 0))


# --------------------------------------------------------------------------------------------------
# Random scenes


def test_random_scene_constraints():
    for seed in SEEDS:
        scene = _scene(seed)
        objs, cam = scene.objects, scene.camera
        assert 3 <= len(objs) <= 10
        assert len({(o.size, o.color, o.shape) for o in objs}) == len(objs)
        assert [o.id for o in objs] == list(range(len(objs)))
        for i, a in enumerate(objs):
            assert a.position[2] == pytest.approx(S._height(a.shape, a.metres) / 2)  # rests on the ground
            for b in objs[i + 1 :]:
                assert math.dist(a.position[:2], b.position[:2]) >= S._footprint(a) + S._footprint(b)
        uv, z = cam.project([o.position for o in objs])
        assert (z > 0).all() and (uv >= 0).all() and (uv[:, 0] < cam.width).all() and (uv[:, 1] < cam.height).all()
        assert min(_render(seed).visible_fraction.values()) >= 0.25
    assert len(S.random_scene(np.random.default_rng(0), n_objects=4).objects) == 4


def test_random_scene_impossible_raises():
    with pytest.raises(ValueError, match="distinct"):
        S.random_scene(
            np.random.default_rng(0), n_objects=5, shapes=("cube",), colors=("red", "blue"), sizes=("small",)
        )
    with pytest.raises(ValueError, match="could not"):
        S.random_scene(np.random.default_rng(0), n_objects=3, margin=0.5, max_tries=50)  # no room in view


def test_determinism_and_graph_round_trip():
    a, b = R.render(S.random_scene(np.random.default_rng(7))), R.render(S.random_scene(np.random.default_rng(7)))
    for name in ("rgb", "depth", "instance"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes()
    assert json.dumps(a.graph) == json.dumps(b.graph) and a.boxes == b.boxes
    c = R.render(S.random_scene(np.random.default_rng(8)))
    assert a.rgb.tobytes() != c.rgb.tobytes() and json.dumps(a.graph) != json.dumps(c.graph)

    scene = _scene(3)
    graph = json.loads(json.dumps(scene.to_graph()))
    assert Scene.from_graph(graph) == scene
    cam_pos = scene.camera.world_to_camera([o.position for o in scene.objects])
    for o, g, c in zip(scene.objects, graph["objects"], cam_pos):
        assert g["color"] == {"name": o.color, "rgb": list(COLORS[o.color])}
        assert g["size"] == {"name": o.size, "metres": SIZES[o.size]}
        np.testing.assert_allclose(g["camera_position"], c)


# --------------------------------------------------------------------------------------------------
# Rendering: depth, instances, boxes


def test_depth_matches_object_geometry():
    centre_checks = 0
    for seed in SEEDS:
        scene, r = _scene(seed), _render(seed)
        assert r.rgb.shape == (240, 320, 3) and r.rgb.dtype == np.uint8
        assert r.depth.dtype == np.float32 and r.instance.dtype == np.int32
        zc = scene.camera.world_to_camera([o.position for o in scene.objects])[:, 2]
        for o, z in zip(scene.objects, zc):
            rad = S._bound_radius(o) + 1e-3
            mask = r.instance == o.id
            assert mask.any()
            assert (r.depth[mask] > 0).all() and (np.abs(r.depth[mask] - z) <= rad).all()
            v, u = _pixel(scene.camera, o.position)
            if r.instance[v, u] == o.id:
                centre_checks += 1
                # convex shapes are hit in front of their centre; a torus may be seen through its hole
                assert z - rad <= r.depth[v, u] <= (z + rad if o.shape == "torus" else z)
                if o.shape == "sphere":  # the ray through the centre meets the surface one radius early
                    ray = np.linalg.norm(scene.camera.world_to_camera([o.position])[0])
                    expect = (ray - o.metres / 2) * z / ray
                    assert r.depth[v, u] == pytest.approx(expect, abs=0.01 * o.metres)
    assert centre_checks > 3 * len(SEEDS)


def test_ground_depth_is_analytic_ray_plane_intersection():
    for seed in (0, 5):
        scene, r = _scene(seed), _render(seed)
        cam = scene.camera
        m = cam.matrix
        v, u = np.mgrid[0 : cam.height, 0 : cam.width]
        d = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones(u.shape)], -1) @ m[:3, :3].T
        with np.errstate(divide="ignore"):
            t = -m[2, 3] / d[..., 2]  # camera-z of d is 1, so t is the depth
        hit = m[:3, 3] + t[..., None] * d
        ground = (r.instance == -1) & (r.depth > 0)
        assert ground.mean() > 0.3 and ground[-1].all()  # the ground fills the bottom of the image
        np.testing.assert_allclose(r.depth[ground], t[ground], rtol=1e-4)
        assert (np.abs(hit[ground][:, :2]) <= R._GROUND_HALF + 1e-3).all()
        sky = r.depth == 0
        assert (r.instance[sky] == -1).all()
        assert ((d[..., 2] >= 0) | (np.abs(hit[..., :2]).max(-1) > R._GROUND_HALF - 1e-2))[sky].all()
        assert (r.rgb[sky] == scene.background_color).all()


def test_instance_boxes_and_visibility_agree():
    for seed in SEEDS:
        scene, r = _scene(seed), _render(seed)
        assert set(np.unique(r.instance)) <= {-1} | {o.id for o in scene.objects}
        for o in scene.objects:
            ys, xs = np.nonzero(r.instance == o.id)
            assert r.boxes[o.id] == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert 0 < r.visible_fraction[o.id] <= 1
        assert r.graph == scene.to_graph()


def test_occlusion_hides_object_and_lowers_visible_fraction():
    cam_eye = np.array([0.0, -6.0, 4.0])
    big = S.place_object(0, "cube", "red", "large", (0.0, -1.0))
    hidden = S.place_object(1, "sphere", "blue", "small", (0.0, 0.0))  # right behind the cube, seen from the eye
    free = S.place_object(2, "cone", "green", "medium", (2.0, 0.5))
    scene = Scene((big, hidden, free), Camera.look_at(cam_eye, (0.0, 0.0, 0.2)))
    r = R.render(scene)
    assert r.visible_fraction[0] == 1.0 and r.visible_fraction[2] == 1.0
    assert r.visible_fraction[1] < 0.2
    assert (1 in r.boxes) == (r.visible_fraction[1] > 0)
    alone = R.render(Scene((hidden,), scene.camera))
    assert alone.visible_fraction[1] == 1.0 and (alone.instance == 1).sum() > (r.instance == 1).sum()


def test_shading_and_shadows():
    cube = S.place_object(0, "cube", "white", "large", (0.0, 0.0))
    scene = Scene((cube,), Camera.look_at((0.0, -6.0, 4.0), (0.0, 0.0, 0.2)), light_dir=(0.0, 0.0, 1.0))
    r = R.render(scene)
    top = r.rgb[_pixel(scene.camera, (0, 0, 0.8))].astype(int)  # faces the light
    front = r.rgb[_pixel(scene.camera, (0, -0.4, 0.4))].astype(int)  # perpendicular to it
    assert top.mean() > front.mean() + 60
    lit = R.render(scene, shadows=False)
    # the light is overhead, so the ground right next to the cube is lit and nothing else changes
    assert (lit.rgb == r.rgb).all()
    low = Scene((cube,), scene.camera, light_dir=(0.0, 1.0, 0.5))  # light from behind: shadow towards camera
    sh, nosh = R.render(low), R.render(low, shadows=False)
    v, u = _pixel(scene.camera, (0.0, -0.7, 0.0))
    assert sh.instance[v, u] == -1 and sh.rgb[v, u].mean() < nosh.rgb[v, u].mean() - 30


@pytest.mark.parametrize("shape", ["sphere", "cylinder"])
def test_curved_surfaces_are_smoothly_shaded(shape):
    # flat per-triangle shading of the faceted meshes gives steps between facets (~10-15% of neighbouring
    # pixel pairs differ by more than 6 levels); analytic normals keep that near zero
    obj = S.place_object(0, shape, "white", "large", (0.0, 0.0))
    scene = Scene((obj,), Camera.look_at((0.0, -3.0, 1.5), (0.0, 0.0, 0.2)), light_dir=(1.0, -0.3, 0.6))
    r = R.render(scene, shadows=False)
    mask = r.instance == 0
    inner = mask & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)
    green = r.rgb[..., 1].astype(int)
    assert inner.sum() > 2000 and (np.abs(green - np.roll(green, 1, 1))[inner] > 6).mean() < 0.05


# --------------------------------------------------------------------------------------------------
# Animation


def test_animate_moves_objects_smoothly_and_directionally():
    scene = _scene(6)
    frames = S.animate(scene, np.random.default_rng(0), 10, n_moving=2)
    assert len(frames) == 10 and frames[0] == scene
    again = S.animate(scene, np.random.default_rng(0), 10, n_moving=2)
    assert [f.to_graph() for f in again] == [f.to_graph() for f in frames]
    pos = np.array([[o.position for o in f.objects] for f in frames])  # (frames, objects, 3)
    moved = np.linalg.norm(pos[-1] - pos[0], axis=-1) > 1e-9
    assert moved.sum() == 2
    for k in np.flatnonzero(moved):
        total = pos[-1, k] - pos[0, k]
        along = (pos[:, k] - pos[0, k]) @ total / (total @ total)
        steps = np.diff(along)
        assert (steps > 0).all() and (np.diff(steps) < 0).all()  # forward, decelerating (friction)
        off = pos[:, k] - pos[0, k] - along[:, None] * total
        assert np.abs(off).max() < 1e-9  # a straight line
    assert (pos[:, ~moved] == pos[0, ~moved]).all()
    for f in frames:
        for i, a in enumerate(f.objects):
            assert all(S.overlapping([b], a) is None for b in f.objects[i + 1 :])

    orbit = S.animate(scene, np.random.default_rng(0), 5, n_moving=0, orbit_deg=40)
    m = scene.camera.matrix
    pivot = m[:3, 3] - m[:3, 2] * m[2, 3] / m[2, 2]  # where the optical axis meets the ground
    eyes = np.array([f.camera.matrix[:3, 3] for f in orbit]) - pivot
    assert np.allclose(eyes[:, 2], eyes[0, 2]) and np.allclose(np.linalg.norm(eyes, axis=1), np.linalg.norm(eyes[0]))
    azimuth = np.unwrap(np.arctan2(eyes[:, 1], eyes[:, 0]))
    np.testing.assert_allclose(azimuth - azimuth[0], np.radians(np.linspace(0, 40, 5)), atol=1e-9)
    for f in orbit:  # still looking at the pivot
        np.testing.assert_allclose(f.camera.project([pivot])[0][0], [f.camera.cx, f.camera.cy], atol=1e-6)
