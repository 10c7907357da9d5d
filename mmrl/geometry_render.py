"""User geometry (meshes and point clouds from files, via `mmrl.media`) rendered to RGB-D with a given camera.

Camera, pixel and depth conventions are those stated in `mmrl.scenes` (`Camera` is `mmrl.scenes.Camera`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import open3d as o3d

from mmrl.scene_render import camera_rays
from mmrl.scenes import Camera


@dataclass
class GeometryRendering:
    rgb: np.ndarray
    """(H, W, 3) uint8; black where nothing was hit."""
    depth: np.ndarray
    """(H, W) float32 camera-frame z in metres; 0 where `valid` is False."""
    valid: np.ndarray
    """(H, W) bool: a surface or point covers the pixel."""


def render_geometry(
    geometry: o3d.geometry.TriangleMesh | o3d.geometry.PointCloud, camera: Camera, *, point_radius: int = 0
) -> GeometryRendering:
    """Render a legacy open3d mesh (ray cast; vertex colours interpolated barycentrically, or grey with a
    headlight when it has none) or point cloud (z-buffer: each point covers the pixels within
    `point_radius` of its projection and the nearest point wins; grey when it has no colours)."""
    h, w = camera.height, camera.width
    rgb, depth = np.zeros((h, w, 3), np.uint8), np.zeros((h, w), np.float32)
    if isinstance(geometry, o3d.geometry.TriangleMesh):
        verts, tris = np.asarray(geometry.vertices, np.float32), np.asarray(geometry.triangles, np.uint32)
        rs = o3d.t.geometry.RaycastingScene()
        if len(tris):
            rs.add_triangles(o3d.core.Tensor(verts), o3d.core.Tensor(tris))
        hits = {k: v.numpy() for k, v in rs.cast_rays(camera_rays(camera)).items()}
        valid = np.isfinite(hits["t_hit"])
        depth[valid] = hits["t_hit"][valid]
        if geometry.has_vertex_colors():
            cols = np.asarray(geometry.vertex_colors, np.float64)[tris[hits["primitive_ids"][valid]]]  # (N, 3, 3)
            uv = hits["primitive_uvs"][valid].astype(np.float64)
            bary = np.stack([1 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=1)  # weights of v0, v1, v2
            color = np.einsum("nk,nkc->nc", bary, cols)
        else:
            d = camera_rays(camera).numpy()[valid][:, 3:]
            cos = np.abs(np.einsum("ij,ij->i", hits["primitive_normals"][valid], d)) / np.linalg.norm(d, axis=1)
            color = 0.8 * (0.25 + 0.75 * cos)[:, None].repeat(3, axis=1)
        rgb[valid] = np.rint(np.clip(color, 0, 1) * 255).astype(np.uint8)
        return GeometryRendering(rgb, depth, valid)
    if not isinstance(geometry, o3d.geometry.PointCloud):
        raise TypeError(f"render_geometry takes an open3d TriangleMesh or PointCloud, not {type(geometry).__name__}")
    pts = np.asarray(geometry.points, np.float64)
    cols = np.asarray(geometry.colors, np.float64) if geometry.has_colors() else np.full((len(pts), 3), 0.7)
    uv, z = camera.project(pts)
    keep = z > 1e-6
    px, z, cols = np.rint(uv[keep]).astype(np.int64), z[keep], cols[keep]
    r = int(point_radius)
    offsets = [(dx, dy) for dx in range(-r, r + 1) for dy in range(-r, r + 1) if dx * dx + dy * dy <= r * r]
    x = np.concatenate([px[:, 0] + dx for dx, _ in offsets])
    y = np.concatenate([px[:, 1] + dy for _, dy in offsets])
    zz, cc = np.tile(z, len(offsets)), np.tile(cols, (len(offsets), 1))
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    pix, zz, cc = (y * w + x)[inside], zz[inside], cc[inside]
    order = np.lexsort((zz, pix))  # by pixel, nearest first: ties broken by input order (stable)
    first = order[np.unique(pix[order], return_index=True)[1]]
    depth.reshape(-1)[pix[first]] = zz[first]
    rgb.reshape(-1, 3)[pix[first]] = np.rint(np.clip(cc[first], 0, 1) * 255).astype(np.uint8)
    return GeometryRendering(rgb, depth, depth > 0)


def default_camera_for(
    geometry: o3d.geometry.Geometry3D,
    width: int = 320,
    height: int = 240,
    *,
    fov_deg: float = 55.0,
    direction: Sequence[float] = (0.6, -1.0, 0.7),
    up: Sequence[float] = (0.0, 0.0, 1.0),
) -> Camera:
    """A camera looking at the centre of `geometry`'s bounding box from `direction` (world, away from the
    centre), far enough that the bounding sphere fits the narrower field of view. Assumes z up; pass
    `up=(0, 1, 0)` and a matching `direction` for y-up meshes."""
    if geometry.is_empty():
        raise ValueError("default_camera_for: the geometry is empty")
    box = geometry.get_axis_aligned_bounding_box()
    lo, hi = np.asarray(box.min_bound), np.asarray(box.max_bound)
    centre, radius = (lo + hi) / 2, max(float(np.linalg.norm(hi - lo)) / 2, 1e-3)
    half_h = math.radians(fov_deg) / 2
    half_v = math.atan(math.tan(half_h) * height / width)
    dist = 1.05 * radius / math.sin(min(half_h, half_v))
    d = np.asarray(direction, np.float64)
    return Camera.look_at(centre + dist * d / np.linalg.norm(d), centre, width, height, fov_deg, up)
