"""Rendering of procedural scenes (`mmrl.scenes`) by open3d ray casting on the CPU: RGB, z-depth,
instance ids, boxes and visible fractions per object, and the per-pixel camera rays that
`mmrl.geometry_render` casts too. Pixel, depth and box conventions are those stated in `mmrl.scenes`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import open3d as o3d

from mmrl.scenes import _TUBE, COLORS, SHAPES, Camera, Scene, SceneObject

_GROUND_HALF = 40.0  # the ground is a finite square; large enough to reach the horizon for our cameras
_TILE = 0.5  # checker tile (m): a subtle texture that makes perspective and depth readable
_AMBIENT = 0.35


@dataclass
class Rendering:
    rgb: np.ndarray
    """(H, W, 3) uint8."""
    depth: np.ndarray
    """(H, W) float32 camera-frame z in metres; 0 = no surface (sky)."""
    instance: np.ndarray
    """(H, W) int32 object id per pixel; -1 for ground and sky."""
    boxes: dict[int, tuple[int, int, int, int]]
    """Object id -> (x0, y0, x1, y1) box of its visible pixels (x1, y1 exclusive); hidden objects omitted."""
    visible_fraction: dict[int, float]
    """Object id -> visible pixels / pixels it would cover with no other object in front (0 if off-screen)."""
    graph: dict[str, Any]
    """`scene.to_graph()`."""


@functools.cache
def _unit_mesh(shape: str) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (float64) and triangles (uint32) of a size-1 shape centred on its bounding-box centre."""
    tm = o3d.geometry.TriangleMesh
    mesh = {
        "cube": lambda: tm.create_box(1.0, 1.0, 1.0).translate((-0.5, -0.5, -0.5)),
        "sphere": lambda: tm.create_sphere(0.5, 24),
        "cylinder": lambda: tm.create_cylinder(0.5, 1.0, 48, 1),
        "cone": lambda: tm.create_cone(0.5, 1.0, 48, 1).translate((0.0, 0.0, -0.5)),
        "torus": lambda: tm.create_torus(0.5 - _TUBE, _TUBE, 48, 16),
    }[shape]()
    return np.asarray(mesh.vertices, np.float64), np.asarray(mesh.triangles, np.uint32)


@functools.lru_cache(maxsize=16)
def camera_rays(camera: Camera) -> o3d.core.Tensor:
    """(H, W, 6) world rays through pixel centres. Directions are scaled so their camera-frame z is 1,
    which makes the ray parameter t_hit equal to depth (z), not Euclidean distance."""
    u, v = np.meshgrid(np.arange(camera.width, dtype=np.float64), np.arange(camera.height, dtype=np.float64))
    d = np.stack([(u - camera.cx) / camera.fx, (v - camera.cy) / camera.fy, np.ones_like(u)], axis=-1)
    m = camera.matrix
    rays = np.concatenate([np.broadcast_to(m[:3, 3], d.shape), d @ m[:3, :3].T], axis=-1)
    return o3d.core.Tensor(rays.astype(np.float32))


def _raycasting_scene(objects: Sequence[SceneObject]) -> o3d.t.geometry.RaycastingScene:
    """Geometry id 0 is the ground quad, then the objects in order."""
    rs = o3d.t.geometry.RaycastingScene()
    g = _GROUND_HALF
    rs.add_triangles(
        o3d.core.Tensor(np.array([[-g, -g, 0], [g, -g, 0], [g, g, 0], [-g, g, 0]], np.float32)),
        o3d.core.Tensor(np.array([[0, 1, 2], [0, 2, 3]], np.uint32)),
    )
    for o in objects:
        verts, tris = _unit_mesh(o.shape)
        c, s = math.cos(o.yaw), math.sin(o.yaw)
        rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
        world = (verts * o.metres) @ rot.T + np.asarray(o.position)
        rs.add_triangles(o3d.core.Tensor(world.astype(np.float32)), o3d.core.Tensor(tris))
    return rs


def _trace(scene: Scene, camera: Camera) -> tuple[o3d.t.geometry.RaycastingScene, dict[str, np.ndarray], np.ndarray]:
    """Cast one ray per pixel; returns the raycasting scene, the hit arrays and the instance map."""
    rs = _raycasting_scene(scene.objects)
    hits = {k: v.numpy() for k, v in rs.cast_rays(camera_rays(camera)).items()}
    lookup = np.array([-1] + [o.id for o in scene.objects] + [-1], np.int32)  # last entry: missed rays
    gid = np.minimum(hits["geometry_ids"].astype(np.int64), len(scene.objects) + 1)
    return rs, hits, lookup[gid]


def _visibility(
    scene: Scene, camera: Camera, rs: o3d.t.geometry.RaycastingScene, instance: np.ndarray
) -> dict[int, float]:
    # A ray whose first hit is ground or sky cannot pass through any object (objects stand on z >= 0 and
    # the camera looks down from above), so only object-hitting rays need all their intersections listed.
    ids = [o.id for o in scene.objects]
    sel = instance >= 0
    visible = {i: int(c) for i, c in zip(*np.unique(instance[sel], return_counts=True))}
    unoccluded = dict.fromkeys(ids, 0)
    if sel.any():
        rays = o3d.core.Tensor(camera_rays(camera).numpy()[sel])
        li = rs.list_intersections(rays)
        gid, ray = li["geometry_ids"].numpy().astype(np.int64), li["ray_ids"].numpy().astype(np.int64)
        pairs = np.unique(ray[gid > 0] * (len(ids) + 1) + gid[gid > 0])  # a ray enters and leaves: count it once
        counts = np.bincount(pairs % (len(ids) + 1), minlength=len(ids) + 1)
        unoccluded = {i: int(counts[k + 1]) for k, i in enumerate(ids)}
    return {i: (visible.get(i, 0) / unoccluded[i] if unoccluded[i] else 0.0) for i in ids}


def visible_fractions(scene: Scene, scale: float = 1.0) -> dict[int, float]:
    """Object id -> visible fraction (as in `Rendering.visible_fraction`), traced at `scale` x resolution."""
    camera = scene.camera.scaled(scale)
    rs, _, instance = _trace(scene, camera)
    return _visibility(scene, camera, rs, instance)


def _object_normals(objs: Sequence[SceneObject], gid: np.ndarray, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Smooth analytic normals for the curved shapes (the meshes are faceted); cubes and the flat caps of
    cylinders and cones keep their triangle normal `n`. All are rotation-invariant about z, so yaw is moot."""
    code = np.array([-1] + [SHAPES.index(o.shape) for o in objs])[gid]
    size = np.array([0.0] + [o.metres for o in objs], np.float32)[gid]
    d = p - np.array([(0.0, 0.0, 0.0)] + [o.position for o in objs], np.float32)[gid]
    radial = np.concatenate([d[:, :2], np.zeros((len(d), 1), np.float32)], axis=1)
    radial /= np.sqrt(np.einsum("ij,ij->i", radial, radial))[:, None] + 1e-12
    side = np.abs(n[:, 2]) < 0.9
    for shape, normal, where in (
        ("sphere", d, True),
        ("cylinder", radial, side),
        ("cone", radial + np.float32([0, 0, 0.5]), side),  # side slope: height = 2 r
        ("torus", d - (0.5 - _TUBE) * size[:, None] * radial, True),
    ):
        sel = (code == SHAPES.index(shape)) & where
        n[sel] = normal[sel]
    return n / np.sqrt(np.einsum("ij,ij->i", n, n))[:, None]


def render(scene: Scene, *, shadows: bool = True) -> Rendering:
    """Ray-cast `scene`: exact z-depth and instance ids per pixel centre; Lambert + ambient + a little
    specular shading with hard shadows from the directional light, a checkered ground, a plain sky."""
    camera, objs = scene.camera, list(scene.objects)
    rs, hits, instance = _trace(scene, camera)
    t = hits["t_hit"]
    hit = np.isfinite(t)
    depth = np.where(hit, t, 0.0).astype(np.float32)

    rays = camera_rays(camera).numpy()[hit]
    th = t[hit]
    p = rays[:, :3] + th[:, None] * rays[:, 3:]
    view = rays[:, 3:] / np.sqrt(np.einsum("ij,ij->i", rays[:, 3:], rays[:, 3:]))[:, None]
    gid = hits["geometry_ids"][hit].astype(np.int64)
    n = np.zeros_like(p)
    n[:, 2] = 1.0  # ground
    obj = np.flatnonzero(gid > 0)
    tri_n = hits["primitive_normals"][hit][obj]
    tri_n *= np.where(np.einsum("ij,ij->i", tri_n, view[obj]) > 0, -1.0, 1.0).astype(np.float32)[:, None]
    n[obj] = _object_normals(objs, gid[obj], p[obj], tri_n)

    light = np.asarray(scene.light_dir, np.float32) / np.float32(np.linalg.norm(scene.light_dir))
    lambert = np.clip(n @ light, 0.0, None)
    if shadows:
        lit = np.flatnonzero(lambert > 0)
        srays = np.concatenate([p[lit] + 5e-3 * n[lit], np.broadcast_to(light, (len(lit), 3))], axis=1)
        lambert[lit[rs.test_occlusions(o3d.core.Tensor(srays)).numpy()]] = 0.0
    albedo = np.array([scene.ground_color] + [COLORS[o.color] for o in objs], np.float32)[gid] / 255
    ground = np.flatnonzero(gid == 0)
    checker = (np.floor(p[ground, 0] / _TILE) + np.floor(p[ground, 1] / _TILE)) % 2
    albedo[ground] *= (1.0 - 0.08 * checker)[:, None]
    color = albedo * (_AMBIENT + (1 - _AMBIENT) * lambert)[:, None]
    half = light - view[obj]
    half /= np.sqrt(np.einsum("ij,ij->i", half, half))[:, None]
    spec = 0.25 * np.clip(np.einsum("ij,ij->i", n[obj], half), 0, 1) ** 40
    color[obj] += np.where(lambert[obj] > 0, spec, 0.0)[:, None]
    far = np.flatnonzero(th > 12.0)  # far ground fades into the sky, hiding the ground's finite edge
    fog = np.clip((th[far] - 12.0) / 30.0, 0.0, 0.7)[:, None]
    color[far] = (1 - fog) * color[far] + fog * np.asarray(scene.background_color, np.float32) / 255

    rgb = np.empty((camera.height, camera.width, 3), np.uint8)
    rgb[:] = np.asarray(scene.background_color, np.uint8)
    rgb[hit] = np.rint(np.clip(color, 0.0, 1.0) * 255).astype(np.uint8)
    boxes = {}
    for o in objs:
        ys, xs = np.nonzero(instance == o.id)
        if len(xs):
            boxes[o.id] = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    return Rendering(rgb, depth, instance, boxes, _visibility(scene, camera, rs, instance), scene.to_graph())
