"""Rendering user meshes and point clouds: depth, pixel-centre convention, vertex colours, z-buffer."""

from __future__ import annotations

import numpy as np
import open3d as o3d
import pytest

from mmrl import geometry_render as G
from mmrl.scenes import Camera


def _pixel(camera: Camera, point) -> tuple[int, int]:
    uv, _ = camera.project([point])
    return int(np.rint(uv[0, 1])), int(np.rint(uv[0, 0]))


# --------------------------------------------------------------------------------------------------
# User geometry


def _identity_camera(width: int = 160, height: int = 120) -> Camera:
    cam = Camera.look_at((0, 0, 0), (0, 0, 1), width, height, 60.0, up=(0, -1, 0))
    np.testing.assert_allclose(cam.matrix, np.eye(4), atol=1e-12)  # camera frame == world frame
    return cam


def test_render_geometry_mesh_depth_and_vertex_colours():
    cam = _identity_camera()
    corners = np.array([[-4, -4, 2.0], [4, -4, 2.0], [4, 4, 2.0], [-4, 4, 2.0]])
    quad = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(corners), o3d.utility.Vector3iVector([[0, 1, 2], [0, 2, 3]])
    )
    # red grows with x and green with y: linear in position, so exact barycentric interpolation reproduces it
    quad.vertex_colors = o3d.utility.Vector3dVector(np.c_[(corners[:, :2] + 4) / 8, np.zeros(4)])
    r = G.render_geometry(quad, cam)
    assert r.valid.all() and np.allclose(r.depth, 2.0, atol=1e-5)
    v, u = np.mgrid[0 : cam.height, 0 : cam.width]
    x, y = (u - cam.cx) / cam.fx * 2.0, (v - cam.cy) / cam.fy * 2.0  # world x, y of each pixel on the plane
    assert np.abs(r.rgb[..., 0] - np.rint((x + 4) / 8 * 255)).max() <= 1
    assert np.abs(r.rgb[..., 1] - np.rint((y + 4) / 8 * 255)).max() <= 1

    # a plane tilted about y, z = 2 + 0.5 x: the ray through pixel centre (u, v) meets it at z = 2 / (1 - 0.5 a),
    # a = (u - cx) / fx -- checks the pixel-centre convention and that depth is z, not ray length
    tilted = o3d.geometry.TriangleMesh(quad.vertices, quad.triangles)
    tilted.vertices = o3d.utility.Vector3dVector(np.c_[corners[:, :2], 2.0 + 0.5 * corners[:, 0]])
    r = G.render_geometry(tilted, cam)
    assert r.valid.all()
    np.testing.assert_allclose(r.depth, 2.0 / (1 - 0.5 * (u - cam.cx) / cam.fx), rtol=1e-5)
    # no vertex colours: grey, brightest where the plane faces the (head)light, i.e. the ray, most directly
    assert (r.rgb[..., 0] == r.rgb[..., 2]).all() and r.rgb.max() > 150
    ray = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones(u.shape)], -1)
    facing = np.abs(ray @ [-0.5, 0, 1]) / np.linalg.norm(ray, axis=-1)  # plane normal is (-0.5, 0, 1)
    assert np.corrcoef(facing.ravel(), r.rgb[..., 0].ravel())[0, 1] > 0.99

    box = o3d.geometry.TriangleMesh.create_box(1.0, 1.0, 1.0).translate((-0.5, -0.5, 3.0))  # front face at z=3
    r = G.render_geometry(box, cam)
    assert r.depth[60, 80] == pytest.approx(3.0, abs=1e-5) and not r.valid[0, 0] and r.depth[0, 0] == 0
    assert r.rgb[60, 80].max() > 150 and (r.rgb[~r.valid] == 0).all()  # grey headlight shading
    cam2 = G.default_camera_for(box, 200, 150)
    corners = np.asarray(box.get_axis_aligned_bounding_box().get_box_points())
    uv, z = cam2.project(corners)
    assert (z > 0).all() and (uv >= 0).all() and (uv[:, 0] < 200).all() and (uv[:, 1] < 150).all()
    assert G.render_geometry(box, cam2).valid.mean() > 0.1


def test_render_geometry_point_cloud_z_buffer():
    cam = _identity_camera()
    g = np.linspace(-1.5, 1.5, 300)
    xy = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    pts = np.concatenate([xy, np.full((len(xy), 1), 2.5)], 1)
    near = np.array([[0.0, 0.0, 1.0]])  # projects onto the centre pixel, in front of the plane
    for order in (1, -1):
        pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.concatenate([pts, near])[::order]))
        colors = np.concatenate([np.tile([[0, 1, 0]], (len(pts), 1)), [[1, 0, 0]]])
        pc.colors = o3d.utility.Vector3dVector(colors[::order])
        r = G.render_geometry(pc, cam)
        v, u = _pixel(cam, near[0])
        assert r.depth[v, u] == pytest.approx(1.0) and tuple(r.rgb[v, u]) == (255, 0, 0)
        other = r.valid.copy()
        other[v, u] = False
        assert r.valid.mean() > 0.9 and np.allclose(r.depth[other], 2.5) and (r.rgb[other] == (0, 255, 0)).all()
    sparse = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(near))
    assert G.render_geometry(sparse, cam).valid.sum() == 1
    assert G.render_geometry(sparse, cam, point_radius=2).valid.sum() == 13
    with pytest.raises(ValueError, match="empty"):
        G.default_camera_for(o3d.geometry.PointCloud())
    with pytest.raises(TypeError):
        G.render_geometry("mesh.ply", cam)
