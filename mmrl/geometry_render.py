"""User geometry (meshes and point clouds from files, via `mmrl.media`) placed in mmrl's world and rendered to
RGB-D with a given camera.

Camera, pixel and depth conventions are those stated in `mmrl.scenes` (`Camera` is `mmrl.scenes.Camera`): metres,
z up. Files come in any unit and with y or z up; `place_geometry` scales and turns them into that world.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

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
    """Render a legacy open3d mesh (ray cast) or point cloud (z-buffer: each point covers the pixels within
    `point_radius` of its projection and the nearest point wins; grey when it has no colours).

    A mesh's colour, by what it carries (`mmrl.media.load_mesh` fills these from the file):

    * textures (`textures`, `triangle_uvs`, `triangle_material_ids`; v up the image, bilinear, repeating):
      albedo = the texel (× the interpolated vertex colour, if any), lit by a headlight;
    * vertex colours only: interpolated barycentrically and shown as they are (scans bake their lighting in);
    * neither: grey albedo 0.8, lit by the headlight.

    The headlight: albedo × (0.25 + 0.75 |cos|), the angle between the ray and the triangle's normal.
    """
    h, w = camera.height, camera.width
    rgb, depth = np.zeros((h, w, 3), np.uint8), np.zeros((h, w), np.float32)
    if isinstance(geometry, o3d.geometry.TriangleMesh):
        verts, tris = np.asarray(geometry.vertices, np.float32), np.asarray(geometry.triangles, np.uint32)
        rs = o3d.t.geometry.RaycastingScene()
        if len(tris):
            rs.add_triangles(o3d.core.Tensor(verts), o3d.core.Tensor(tris))
        rays = camera_rays(camera)
        hits = {k: v.numpy() for k, v in rs.cast_rays(rays).items()}
        valid = np.isfinite(hits["t_hit"])
        depth[valid] = hits["t_hit"][valid]
        ids = hits["primitive_ids"][valid].astype(np.int64)
        uv = hits["primitive_uvs"][valid].astype(np.float64)
        bary = np.stack([1 - uv[:, 0] - uv[:, 1], uv[:, 0], uv[:, 1]], axis=1)  # weights of v0, v1, v2
        vertex_colour = None
        if geometry.has_vertex_colors():
            cols = np.asarray(geometry.vertex_colors, np.float64)[tris[ids]]  # (N, 3, 3)
            vertex_colour = np.einsum("nk,nkc->nc", bary, cols)
        if _has_textures(geometry):
            albedo = _texture_colour(geometry, ids, bary)
            color = albedo * (1.0 if vertex_colour is None else vertex_colour)
        elif vertex_colour is not None:
            color = vertex_colour
        else:
            color = np.full((len(ids), 3), 0.8)
        if vertex_colour is None or _has_textures(geometry):  # lit by the headlight
            d = rays.numpy()[valid][:, 3:]
            cos = np.abs(np.einsum("ij,ij->i", hits["primitive_normals"][valid], d)) / np.linalg.norm(d, axis=1)
            color = color * (0.25 + 0.75 * cos)[:, None]
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


def _has_textures(mesh: o3d.geometry.TriangleMesh) -> bool:
    """The mesh has a texture for every triangle (non-empty images, per-corner UVs, material ids)."""
    n = len(mesh.triangles)
    return (
        mesh.has_textures()
        and len(mesh.triangle_uvs) == 3 * n
        and len(mesh.triangle_material_ids) == n
        and any(not t.is_empty() for t in mesh.textures)
    )


def _texture_colour(mesh: o3d.geometry.TriangleMesh, ids: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """(N, 3) colours in [0, 1] of the hits on triangles `ids` at barycentric weights `bary`: each triangle's
    texture (`triangle_material_ids`; an empty or missing one counts as white) sampled bilinearly at the
    interpolated UV, v up the image, repeating outside [0, 1]."""
    corner_uv = np.asarray(mesh.triangle_uvs, np.float64).reshape(-1, 3, 2)[ids]
    uv = np.einsum("nk,nkc->nc", bary, corner_uv)
    material = np.asarray(mesh.triangle_material_ids, np.int64)[ids]
    out = np.ones((len(ids), 3))
    for index, texture in enumerate(mesh.textures):
        sel = np.flatnonzero(material == index)
        if not len(sel) or texture.is_empty():
            continue
        image = np.asarray(texture)
        if image.ndim == 2:
            image = image[:, :, None]
        image = image[:, :, :3].astype(np.float64) / (65535.0 if image.dtype == np.uint16 else 255.0)
        th, tw = image.shape[:2]
        x = (uv[sel, 0] % 1.0) * tw - 0.5  # texel centres at (i + 0.5) / size
        y = (1.0 - uv[sel, 1] % 1.0) * th - 0.5
        x0, y0 = np.floor(x), np.floor(y)
        fx, fy = (x - x0)[:, None], (y - y0)[:, None]
        x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
        x1, y1 = (x0 + 1) % tw, (y0 + 1) % th
        x0, y0 = x0 % tw, y0 % th
        top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
        bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
        colour = top * (1 - fy) + bottom * fy
        out[sel] = colour if colour.shape[1] == 3 else np.repeat(colour, 3, axis=1)
    return out


UpAxis = Literal["y", "z"]

AUTO_DIAGONAL = 5.0
"""Bounding-box diagonal in metres that `place_geometry(scale="auto")` gives every mesh: room-sized (a
4 × 3 × 2.5 m room has a 5.6 m diagonal; the largest side of a mesh is then 2.9 m for a cube up to 5 m for a
stick). `default_camera_for` then stands 7.2 m from the centre at 640×480, so every visible surface lies
4.7–9.7 m away: inside `depth_jigsaw`'s default depth range [0.1, 10] m, with metres of depth between the
nearest and farthest surface for its 0.2 m gaps."""

_SUPPORT_SLAB = 0.02
"""Share of a mesh's extent along a candidate up axis that counts as its bottom (`guess_up_axis`)."""


@dataclass(frozen=True)
class Placement:
    """How a file's geometry was put into mmrl's world (metres, z up) by `place_geometry`."""

    scale: float
    """Metres per file unit: the factor the vertices were multiplied by."""
    up_axis: UpAxis
    """The file's axis that became world z (`y`: turned by (x, y, z) → (x, −z, y))."""
    up_reason: str
    """Why that axis: `given`, `glTF is y-up`, `stands on its y/z bottom` or `thinner along y/z`."""


def place_geometry(
    geometry: o3d.geometry.TriangleMesh | o3d.geometry.PointCloud,
    *,
    scale: float | Literal["auto"] = "auto",
    up_axis: UpAxis | Literal["auto"] = "auto",
    file_format: str = "",
) -> tuple[o3d.geometry.TriangleMesh | o3d.geometry.PointCloud, Placement]:
    """A copy of `geometry` in mmrl's world, and how it was placed.

    Turned first: a y-up file by (x, y, z) → (x, −z, y), a rotation that makes its y world z and leaves
    its +z (glTF's front) facing `default_camera_for`'s default viewpoint; `up_axis="auto"` asks
    `guess_up_axis`. Then scaled about the origin: a float multiplies the file's units (1.0: they are metres,
    0.001: millimetres), `"auto"` gives the bounding box a diagonal of `AUTO_DIAGONAL` metres.
    `file_format` is the file's suffix (`.glb`), which `guess_up_axis` uses.
    """
    if geometry.is_empty():
        raise ValueError("place_geometry: the geometry is empty")
    points = np.asarray(geometry.vertices if isinstance(geometry, o3d.geometry.TriangleMesh) else geometry.points)
    if up_axis == "auto":
        axis, reason = guess_up_axis(points, file_format)
    else:
        axis, reason = up_axis, "given"
    diagonal = float(np.linalg.norm(points.max(axis=0) - points.min(axis=0)))
    if scale == "auto":
        factor = AUTO_DIAGONAL / diagonal if diagonal > 0 else 1.0
    else:
        factor = float(scale)
    placed = type(geometry)(geometry)  # a copy: textures, UVs and colours come along
    if axis == "y":
        placed.rotate(np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]), center=(0, 0, 0))
    placed.scale(factor, center=(0, 0, 0))
    return placed, Placement(factor, axis, reason)


def guess_up_axis(points: np.ndarray, file_format: str = "") -> tuple[UpAxis, str]:
    """The file axis, y or z, that most plausibly points up, and why.

    1. glTF and GLB are y-up by their specification.
    2. Otherwise the axis the geometry stands on better: for each candidate, the support is the area of
       the convex hull of the points in the bottom 2 % of the extent along it, as a share of the
       bounding box's cross-section (a bunny's flat base, an elephant's four feet, a robot base's plate
       score high; the side of a lying object scores low). One wins when its support exceeds 1.5 × the
       other's + 0.01.
    3. Otherwise (both or neither stand: boxes, rooms, brackets) the axis along which the geometry is
       thinner: rooms and plates are lower than they are wide.

    Checked by eye on 18 real meshes from PyPI and npm packages (tests/fixtures/meshes/MANIFEST.md): right on 16;
    wrong on two ties, a tall y-up shelf and a y-up box open at the top, both taken as z-up.
    """
    if file_format.lower() in (".gltf", ".glb"):
        return "y", "glTF is y-up"
    pts = np.asarray(points, np.float64)
    s_y, s_z = _support(pts, 1), _support(pts, 2)
    if s_y > 1.5 * s_z + 0.01:
        return "y", "stands on its y bottom"
    if s_z > 1.5 * s_y + 0.01:
        return "z", "stands on its z bottom"
    extent = np.ptp(pts, axis=0)
    return ("z", "thinner along z") if extent[2] <= extent[1] else ("y", "thinner along y")


def _support(points: np.ndarray, axis: int) -> float:
    """Area of the 2-D convex hull of the points within `_SUPPORT_SLAB` × extent of their minimum along
    `axis`, over the bounding box's cross-section there (0 for a flat cross-section)."""
    a, b = (i for i in range(3) if i != axis)
    cross = float(np.ptp(points[:, a]) * np.ptp(points[:, b]))
    if cross <= 0:
        return 0.0
    h = points[:, axis]
    bottom = points[h <= h.min() + _SUPPORT_SLAB * np.ptp(h)][:, [a, b]]
    return _hull_area(bottom) / cross


def _hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of 2-D points: Andrew's monotone chain over the lowest and highest point of
    each of 256 columns (the hull of those is the hull of all, up to a column's width)."""
    x, y = points[:, 0], points[:, 1]
    span = float(np.ptp(x))
    column = np.zeros(len(x), np.int64) if span == 0 else np.minimum((x - x.min()) / span * 256, 255).astype(np.int64)
    keep = []
    for pick in (np.lexsort((y, column)), np.lexsort((-y, column))):  # lowest, then highest, of each column
        keep.append(pick[np.unique(column[pick], return_index=True)[1]])
    pts = np.unique(points[np.concatenate(keep)], axis=0)  # sorted by x, then y
    if len(pts) < 3:
        return 0.0

    def chain(seq: list[tuple[float, float]]) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = []
        for px, py in seq:
            while len(out) >= 2:
                (ax, ay), (bx, by) = out[-2], out[-1]
                if (bx - ax) * (py - ay) - (by - ay) * (px - ax) > 0:  # a left turn: keep
                    break
                out.pop()
            out.append((px, py))
        return out

    ordered = [(float(px), float(py)) for px, py in pts]
    hull = np.array(chain(ordered)[:-1] + chain(ordered[::-1])[:-1])
    return 0.5 * abs(float(np.dot(hull[:, 0], np.roll(hull[:, 1], -1)) - np.dot(hull[:, 1], np.roll(hull[:, 0], -1))))


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
    centre), far enough that the bounding sphere fits the narrower field of view. Assumes z up, as
    `place_geometry` leaves every file; pass `up=(0, 1, 0)` and a matching `direction` for y-up geometry."""
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
