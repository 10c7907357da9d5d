"""`depth_jigsaw` on real meshes (issue 12): twelve files from PyPI and npm packages, in OBJ, PLY, STL, GLB, glTF and
OFF, in mm, cm and m, y-up and z-up (tests/fixtures/meshes/MANIFEST.md), give samples with the default parameters,
stand upright and keep their colours; plus the pieces: texture lookup, `place_geometry`, `guess_up_axis`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
from PIL import Image

from mmrl import geometry_render as G
from mmrl import media
from mmrl.corpus import GeometryItem, geometry_folder
from mmrl.errors import SkipItem
from mmrl.registry import get_task
from mmrl.scenes import Camera
from pretext_tasks.depth_jigsaw import load_rgbd

FIXTURES = Path(__file__).parent / "fixtures" / "meshes"

MESHES = {  # id: (format, units the numbers are in, up axis), as MANIFEST.md states them
    "airplane": (".ply", "mm", "z"),
    "ant": (".ply", "cm", "y"),
    "bun_zipper_res4": (".ply", "m", "y"),
    "duck": (".obj", "m", "y"),
    "duck_vcolor_mm_zup": (".ply", "mm", "z"),
    "elephav": (".obj", "mm", "y"),
    "fr13_s102": (".stl", "mm", "z"),
    "generic_hand_left": (".glb", "m", "y"),
    "husky_base_link": (".stl", "m", "z"),
    "kuka_link_0": (".obj", "m", "z"),
    "lego_cm_zup": (".off", "cm", "z"),
    "tray_cm_yup": (".gltf", "cm", "y"),
}
ATTEMPTS = 8


def test_the_fixture_set_is_mixed() -> None:
    items = geometry_folder(FIXTURES)
    assert {i.id: (i.path.suffix, i.kind) for i in items} == {k + v[0]: (v[0], "mesh") for k, v in MESHES.items()}
    formats, units, ups = (set(v[i] for v in MESHES.values()) for i in range(3))
    assert formats == {".obj", ".ply", ".stl", ".glb", ".gltf", ".off"}
    assert units == {"mm", "cm", "m"} and ups == {"y", "z"}


def test_default_parameters_make_samples_from_at_least_10_of_the_12_real_meshes() -> None:
    task = get_task("depth_jigsaw")
    made: dict[str, int] = {}
    up: dict[str, str] = {}
    for item in task.sources(FIXTURES):
        name = Path(item.id).stem  # ids keep the extension
        made[name] = 0
        for seed in range(ATTEMPTS):
            try:
                sample = task.make(item, np.random.default_rng(seed))
            except SkipItem:
                continue
            made[name] += 1
            up[name] = sample.meta.get("geometry", {}).get("up_axis")
    for name, count in made.items():
        fmt, units, axis = MESHES[name]
        print(f"{name:20s} {fmt:5s} {units:2s} {axis}-up: {count}/{ATTEMPTS} samples, up axis chosen {up.get(name)}")
    assert sum(count > 0 for count in made.values()) >= 10, made
    assert up == {name: MESHES[name][2] for name in up}  # up_axis auto picked the right axis for each


def _height_coded_copy(name: str, suffix: str, folder: Path) -> GeometryItem:
    """The fixture's geometry written as `suffix` with red = its height along the file's y (0..1) and green = 1,
    so red / green is the height at every pixel whether the renderer lights the colours or not."""
    loaded = o3d.io.read_triangle_mesh(str(FIXTURES / name))
    mesh = o3d.geometry.TriangleMesh(loaded.vertices, loaded.triangles)
    y = np.asarray(mesh.vertices)[:, 1]
    height = (y - y.min()) / np.ptp(y)
    mesh.vertex_colors = o3d.utility.Vector3dVector(np.c_[height, np.ones_like(height), np.zeros_like(height)])
    path = folder / (Path(name).stem + suffix)
    assert o3d.io.write_triangle_mesh(str(path), mesh, write_vertex_colors=True)
    return GeometryItem(path.name, path, "mesh")


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        ("bun_zipper_res4.ply", ".ply"),  # y-up found by the geometry (it stands on its flat base)
        ("duck.obj", ".obj"),  # likewise, read through the OBJ material path
        ("generic_hand_left.glb", ".gltf"),  # y-up because glTF is
    ],
)
def test_a_y_up_mesh_renders_upright(tmp_path: Path, name: str, suffix: str) -> None:
    # Upright: the file's y (its up) runs up the image. The default camera looks down from above, so even a
    # mesh lying on its side shows some correlation (0.5-0.7 when y was read as horizontal); upright gives > 0.95.
    item = _height_coded_copy(name, suffix, tmp_path)
    image, depth = load_rgbd(item, get_task("depth_jigsaw").params)
    rgb = np.asarray(image, np.float64)
    rows, cols = np.nonzero((depth > 0) & (rgb[..., 1] > 20))
    height = rgb[rows, cols, 0] / rgb[rows, cols, 1]
    assert len(rows) > 5000
    assert np.corrcoef(height, -rows)[0, 1] > 0.9


@pytest.mark.parametrize("name", ["duck.obj", "duck_vcolor_mm_zup.ply"])  # a texture; vertex colours
def test_a_coloured_mesh_gives_samples_in_its_colours(name: str) -> None:
    task = get_task("depth_jigsaw")
    (item,) = [i for i in task.sources(FIXTURES) if i.path.name == name]
    sample = task.make(item, np.random.default_rng(0))
    image = np.asarray(sample.messages[-1]["content"][0]["image"].convert("RGB"), np.int64)
    _, depth = load_rgbd(item, task.params)
    on_mesh = depth > 0
    rows, cols = np.mgrid[: depth.shape[0], : depth.shape[1]]
    reach = task.params.marker_radius + task.params.marker_outline_width + 1
    for row, col, _ in sample.meta["points"]:  # leave out the red markers
        on_mesh &= (rows - row) ** 2 + (cols - col) ** 2 > reach**2
    pixels = image[on_mesh]
    assert np.median(pixels.max(axis=1) - pixels.min(axis=1)) > 60  # grey would be 0
    red, green, blue = np.median(pixels, axis=0)
    assert red - blue > 60 and green - blue > 60  # the duck is yellow


# --------------------------------------------------------------------------------------------------
# Textures: OBJ and glTF map the same image the same way up

TEXELS = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]], np.uint8)  # rows top to bottom


def _write_textured_quad(folder: Path, suffix: str) -> Path:
    """A 2 x 2 m quad at z = 2 m whose image-top edge (world y = -1 for the camera below) shows the texture's top
    row; OBJ stores v up the image, glTF down."""
    Image.fromarray(TEXELS).save(folder / "texels.png")
    corners = np.array([[-1, -1, 2], [1, -1, 2], [1, 1, 2], [-1, 1, 2]], np.float32)
    u, v_up = np.array([0, 1, 1, 0], np.float32), np.array([1, 1, 0, 0], np.float32)
    if suffix == ".obj":
        (folder / "quad.mtl").write_text("newmtl texels\nKd 1 1 1\nmap_Kd texels.png\n")
        lines = ["mtllib quad.mtl", *(f"v {x} {y} {z}" for x, y, z in corners)]
        lines += [f"vt {a} {b}" for a, b in zip(u, v_up)] + ["usemtl texels", "f 1/1 2/2 3/3", "f 1/1 3/3 4/4"]
        (folder / "quad.obj").write_text("\n".join(lines) + "\n")
        return folder / "quad.obj"
    uv = np.c_[u, 1 - v_up].astype(np.float32)
    indices = np.array([0, 1, 2, 0, 2, 3], np.uint32)
    blob = corners.tobytes() + uv.tobytes() + indices.tobytes()
    (folder / "quad.bin").write_bytes(blob)
    views = [(0, corners.nbytes), (corners.nbytes, uv.nbytes), (corners.nbytes + uv.nbytes, indices.nbytes)]
    gltf = {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "TEXCOORD_0": 1}, "indices": 2, "material": 0}]}],
        "materials": [{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}}}],
        "textures": [{"source": 0}],
        "images": [{"uri": "texels.png"}],
        "buffers": [{"uri": "quad.bin", "byteLength": len(blob)}],
        "bufferViews": [{"buffer": 0, "byteOffset": o, "byteLength": n} for o, n in views],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": 4, "type": "VEC3", "min": [-1, -1, 2], "max": [1, 1, 2]},
            {"bufferView": 1, "componentType": 5126, "count": 4, "type": "VEC2"},
            {"bufferView": 2, "componentType": 5125, "count": 6, "type": "SCALAR"},
        ],
    }
    (folder / "quad.gltf").write_text(json.dumps(gltf))
    return folder / "quad.gltf"


@pytest.mark.parametrize("suffix", [".obj", ".gltf"])
def test_a_texture_is_sampled_the_right_way_up(tmp_path: Path, suffix: str) -> None:
    mesh = media.load_mesh(_write_textured_quad(tmp_path, suffix))
    assert mesh.has_textures() and len(mesh.triangle_uvs) == 6
    camera = Camera.look_at((0, 0, 0), (0, 0, 1), 160, 120, 60.0, up=(0, -1, 0))  # image down = world +y
    r = G.render_geometry(mesh, camera)
    for (x, y), texel in zip([(-0.5, -0.5), (0.5, -0.5), (-0.5, 0.5), (0.5, 0.5)], TEXELS.reshape(4, 3)):
        uv, _ = camera.project([[x, y, 2.0]])
        col, row = (int(round(c)) for c in uv[0])
        seen = r.rgb[row, col].astype(int)
        assert r.valid[row, col]
        assert (seen > 150).tolist() == (texel > 0).tolist(), (x, y, seen)  # lit by the headlight, same hue


def test_a_missing_texture_leaves_the_material_colour(tmp_path: Path) -> None:
    (tmp_path / "quad.mtl").write_text("newmtl blue\nKd 0.1 0.2 0.9\nmap_Kd C:\\exporter\\machine\\gone.png\n")
    lines = ["mtllib quad.mtl", "v -1 -1 2", "v 1 -1 2", "v 1 1 2", "v -1 1 2", "usemtl blue", "f 1 2 3", "f 1 3 4"]
    (tmp_path / "quad.obj").write_text("\n".join(lines) + "\n")
    mesh = media.load_mesh(tmp_path / "quad.obj")
    r = G.render_geometry(mesh, Camera.look_at((0, 0, 0), (0, 0, 1), 80, 60, 60.0, up=(0, -1, 0)))
    red, green, blue = r.rgb[30, 40].astype(int)
    assert blue > 150 and red < 40 and green < 60


# --------------------------------------------------------------------------------------------------
# Placing a file in metres, z up


def test_place_geometry_scales_and_turns() -> None:
    box = o3d.geometry.TriangleMesh.create_box(300.0, 200.0, 100.0)  # millimetres, say
    placed, placement = G.place_geometry(box, scale=0.001, up_axis="z")
    np.testing.assert_allclose(placed.get_max_bound(), [0.3, 0.2, 0.1])
    assert placement.scale == 0.001 and placement.up_axis == "z" and placement.up_reason == "given"
    assert np.asarray(box.vertices).max() == 300.0  # the input is left alone
    placed, placement = G.place_geometry(box, up_axis="y")  # scale auto: a 5 m diagonal
    lo, hi = placed.get_min_bound(), placed.get_max_bound()
    assert np.linalg.norm(hi - lo) == pytest.approx(G.AUTO_DIAGONAL)
    extent = (hi - lo) / placement.scale
    np.testing.assert_allclose(extent, [300.0, 100.0, 200.0])  # (x, y, z) -> (x, -z, y): y is now up
    np.testing.assert_allclose(lo / placement.scale, [0.0, -100.0, 0.0])
    with pytest.raises(ValueError, match="empty"):
        G.place_geometry(o3d.geometry.TriangleMesh())


def test_guess_up_axis_on_simple_shapes() -> None:
    # A cone standing on its base, z-up: 2 m tall, so thinness alone would call it y-up; lying on its side, it
    # touches the ground along one line. The base wins.
    cone = np.asarray(o3d.geometry.TriangleMesh.create_cone(radius=0.5, height=2.0, resolution=64).vertices)
    assert G.guess_up_axis(cone) == ("z", "stands on its z bottom")
    y_up = cone @ np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]).T  # (x, y, z) -> (x, z, -y)
    assert G.guess_up_axis(y_up) == ("y", "stands on its y bottom")
    assert G.guess_up_axis(cone, ".glb") == ("y", "glTF is y-up")  # the format's convention wins
    room = np.asarray(o3d.geometry.TriangleMesh.create_box(5.0, 4.0, 2.5).vertices)  # a box: every side ties
    assert G.guess_up_axis(room) == ("z", "thinner along z")
    assert G.guess_up_axis(room[:, [0, 2, 1]]) == ("y", "thinner along y")
