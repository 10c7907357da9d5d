import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import open3d as o3d
import pytest
from PIL import Image

from mmrl import media
from mmrl.config import CorpusConfig
from mmrl.corpus import (
    Corpus,
    build_default_corpus,
    camera_motion_frames,
    default_corpus,
    geometry_folder,
    image_folder,
    rgbd_folder,
    video_folder,
)
from mmrl.errors import MMRLError
from mmrl.scenes import Camera
from mmrl.video import read_video, write_video

SMALL = dict(max_photos=2, videos_per_photo=1, scene_videos=2, rgbd_scenes=3, video_frames=8)


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    """The default corpus with the default config, built into the test session's cache."""
    return default_corpus()


@pytest.mark.slow
def test_default_corpus_counts(corpus):
    m = corpus.manifest
    assert corpus.root == Path(os.environ["MMRL_CACHE"]) / "corpus"
    assert len(corpus.photos) == m["photos"] == 14
    assert len(corpus.videos) == m["videos"]["photo"] + m["videos"]["scene"] == 14 * 2 + 8
    assert len(corpus.rgbd) == m["rgbd"] == 32
    for item in corpus.photos:
        image = item.load()
        assert image.mode == "RGB" and max(image.size) <= 384


@pytest.mark.slow
def test_default_corpus_videos_decode_with_stated_frames(corpus):
    stated = corpus.manifest["video_frames"]
    motions = set()
    for item in corpus.videos:
        info = item.info()
        assert info.num_frames == stated, item.path
        assert (info.width, info.height) == (256, 192)
        clip = read_video(item.path)
        assert clip.frames.shape == (stated, 192, 256, 3)
        # Every clip moves: consecutive frames differ somewhere.
        assert np.abs(clip.frames[-1].astype(int) - clip.frames[0].astype(int)).mean() > 2.0, item.path
        motions.add(json.loads(item.path.with_suffix(".json").read_text())["motion"])
    assert {"animated"} < motions and len(motions) >= 3


@pytest.mark.slow
def test_photo_pan_moves_the_view_monotonically(corpus):
    """A pan's crop window moves one way: frame k is closer to frame k+1 than to frame k+2 (no reversal)."""
    pans = [v for v in corpus.videos if "pan" in json.loads(v.path.with_suffix(".json").read_text())["motion"]]
    assert pans
    clip = read_video(pans[0].path, num_frames=6).frames.astype(float)
    near = [np.abs(clip[k] - clip[k + 1]).mean() for k in range(4)]
    far = [np.abs(clip[k] - clip[k + 2]).mean() for k in range(4)]
    assert all(n < f for n, f in zip(near, far))


@pytest.mark.slow
def test_default_corpus_depth_matches_scene_graph(corpus):
    checked = 0
    for item in corpus.rgbd:
        rgb, depth = item.load()
        graph = item.scene_graph()
        instance = np.asarray(Image.open(item.rgb_path.with_name("instance.png"))).astype(np.int32) - 1
        assert depth.shape == instance.shape == (rgb.height, rgb.width) == (240, 320)
        camera = Camera.from_dict(graph["camera"])
        for obj in graph["objects"]:
            uv, z = camera.project(np.array([obj["position"]]))
            u, v, z = int(round(uv[0, 0])), int(round(uv[0, 1])), float(z[0])
            assert z == pytest.approx(obj["camera_position"][2], abs=1e-6)
            if instance[v, u] != obj["id"]:
                continue  # centre hidden behind another object, or seen through a torus hole
            # The surface seen through the centre is no farther from the centre than the object's
            # bounding radius (+ 1 mm quantisation), and for convex shapes lies in front of it
            # (a torus is seen through its hole: the far side of the ring counts too).
            radius = 0.87 * obj["size"]["metres"]
            behind = radius if obj["shape"] == "torus" else 0.0
            assert z - radius - 0.002 <= depth[v, u] <= z + behind + 0.002, (item.id, obj["id"], obj["shape"])
            checked += 1
        for key, (x0, y0, x1, y1) in graph["boxes"].items():
            ys, xs = np.nonzero(instance == int(key))
            assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x0, y0, x1, y1)
    assert checked >= 100


@pytest.mark.slow
def test_complete_corpus_is_reused(corpus):
    before = {p: p.stat().st_mtime_ns for p in corpus.root.rglob("*") if p.is_file()}
    start = time.perf_counter()
    again = build_default_corpus(CorpusConfig(), progress=False)
    assert time.perf_counter() - start < 5
    assert {p: p.stat().st_mtime_ns for p in again.root.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = build_default_corpus(CorpusConfig(root=str(tmp_path / "a"), **SMALL), progress=False)
    b = build_default_corpus(CorpusConfig(root=str(tmp_path / "b"), **SMALL), progress=False)
    c = build_default_corpus(CorpusConfig(root=str(tmp_path / "c"), seed=1, **SMALL), progress=False)
    da, db, dc = digest(a.root), digest(b.root), digest(c.root)
    assert len(da) > 10 and da == db
    assert {k for k in da if da[k] != dc.get(k)} - {"manifest.json"}  # media differ with the seed


@pytest.mark.slow
def test_killed_build_resumes_to_identical_files(tmp_path):
    overrides = [f"{k}={v}" for k, v in SMALL.items()] + ["rgbd_scenes=12", "scene_videos=6"]
    root = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "mmrl.cli", "corpus", "--quiet", "--root", str(root), *overrides],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(list((root / "videos").glob("scene_*.mp4"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (root / "manifest.json").exists(), "build finished before it could be killed"
    resumed = build_default_corpus(
        CorpusConfig(root=str(root), **(SMALL | {"rgbd_scenes": 12, "scene_videos": 6})), progress=False
    )
    clean = build_default_corpus(
        CorpusConfig(root=str(tmp_path / "clean"), **(SMALL | {"rgbd_scenes": 12, "scene_videos": 6})), progress=False
    )
    assert digest(resumed.root) == digest(clean.root)
    assert not [p for p in resumed.root.rglob(".tmp-*")]


def test_other_config_in_same_root_is_an_error(tmp_path):
    build_default_corpus(CorpusConfig(root=str(tmp_path), **SMALL), progress=False)
    with pytest.raises(MMRLError, match="another config"):
        build_default_corpus(CorpusConfig(root=str(tmp_path), **(SMALL | {"seed": 9})), progress=False)


def test_image_and_video_folders(tmp_path):
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(tmp_path / "imgs" / "b.png")
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "imgs" / "sub" / "a.JPG")
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    items = image_folder(tmp_path / "imgs")
    assert [i.id for i in items] == ["b.png", "sub/a.JPG"]
    assert items[0].load().getpixel((0, 0)) == (255, 0, 0)
    with pytest.raises(MMRLError, match="does not exist"):
        image_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MMRLError, match=f"no video files .* found under {tmp_path / 'empty'}"):
        video_folder(tmp_path / "empty")
    frames = np.zeros((4, 16, 32, 3), np.uint8)
    write_video(tmp_path / "vids" / "clip.mp4", frames, fps=4)
    assert [v.info().num_frames for v in video_folder(tmp_path / "vids")] == [4]


def test_rgbd_folder_layouts(tmp_path):
    depth = np.full((6, 8), 1.5, np.float32)
    rgb = Image.new("RGB", (8, 6), "green")
    # ScanNet export layout
    (tmp_path / "scannet" / "color").mkdir(parents=True)
    (tmp_path / "scannet" / "depth").mkdir()
    rgb.save(tmp_path / "scannet" / "color" / "000010.jpg")
    media.save_depth(tmp_path / "scannet" / "depth" / "000010.png", depth)
    # side-by-side suffix layout, depth in 1/5000 m (TUM convention)
    (tmp_path / "pairs").mkdir()
    rgb.save(tmp_path / "pairs" / "kitchen_rgb.png")
    media.save_depth(tmp_path / "pairs" / "kitchen_depth.png", depth, scale=5000.0)
    # one folder per item
    (tmp_path / "items" / "room1").mkdir(parents=True)
    rgb.save(tmp_path / "items" / "room1" / "rgb.png")
    media.save_depth(tmp_path / "items" / "room1" / "depth.png", depth)

    (scan,) = rgbd_folder(tmp_path / "scannet")
    (pair,) = rgbd_folder(tmp_path / "pairs", depth_scale=5000.0)
    (item,) = rgbd_folder(tmp_path / "items")
    assert (scan.id, pair.id, item.id) == ("000010", "kitchen", "room1")
    for it in (scan, pair, item):
        image, d = it.load()
        assert image.size == (8, 6) and np.allclose(d, 1.5, atol=1e-3)
    with pytest.raises(MMRLError, match="no RGB-D pairs"):
        rgbd_folder(tmp_path / "scannet" / "color")


def test_geometry_folder_tells_meshes_from_point_clouds(tmp_path):
    box = o3d.geometry.TriangleMesh.create_box()
    o3d.io.write_triangle_mesh(str(tmp_path / "box.ply"), box)
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.random.default_rng(0).random((50, 3))))
    o3d.io.write_point_cloud(str(tmp_path / "cloud.ply"), cloud)
    kinds = {g.id: g.kind for g in geometry_folder(tmp_path)}
    assert kinds == {"box.ply": "mesh", "cloud.ply": "point_cloud"}
    loaded = {g.id: g.load() for g in geometry_folder(tmp_path)}
    assert len(loaded["box.ply"].triangles) == 12 and len(loaded["cloud.ply"].points) == 50


def test_rgbd_whole_scannet_tree_and_top_level_pair(tmp_path):
    depth = np.full((6, 8), 2.0, np.float32)
    rgb = Image.new("RGB", (8, 6), "blue")
    for scene in ("scene0000_00", "scene0001_00"):
        (tmp_path / "tree" / scene / "color").mkdir(parents=True)
        (tmp_path / "tree" / scene / "depth").mkdir()
        rgb.save(tmp_path / "tree" / scene / "color" / "0.jpg")
        media.save_depth(tmp_path / "tree" / scene / "depth" / "0.png", depth)
    assert [i.id for i in rgbd_folder(tmp_path / "tree")] == ["scene0000_00/0", "scene0001_00/0"]
    (tmp_path / "single").mkdir()
    rgb.save(tmp_path / "single" / "rgb.png")
    media.save_depth(tmp_path / "single" / "depth.png", depth)
    (item,) = rgbd_folder(tmp_path / "single")
    assert item.id == "single" and np.allclose(item.load()[1], 2.0)


def test_corpus_without_videos_opens(tmp_path):
    cfg = CorpusConfig(root=str(tmp_path), max_photos=1, videos_per_photo=0, scene_videos=0, rgbd_scenes=1)
    corpus = build_default_corpus(cfg, progress=False)
    assert (len(corpus.photos), len(corpus.videos), len(corpus.rgbd)) == (1, 0, 1)


def test_files_that_differ_only_by_extension_get_distinct_ids(tmp_path):
    """Issue 12: an id was the path without its extension, so `b.mp4` and `b.avi` (a re-encode of the same
    footage) were both `b`, and so were the meshes `x.off` and `x.ply`: two sources under one name in every
    Sample's `meta["source"]` and id. Ids now keep the extension (the path relative to the folder)."""
    import skimage

    from mmrl.registry import get_task
    from pretext_tasks.base import item_path

    photo = media.load_image(Path(skimage.__file__).parent / "data" / "chelsea.png")
    frames = list(camera_motion_frames(photo, "pan_right", 120, (128, 96), np.random.default_rng(0)))
    clips = tmp_path / "clips"
    write_video(clips / "b.mp4", frames, 8.0)  # H.264
    write_video(clips / "b.avi", frames, 8.0, codec="mpeg4")  # the same footage, another codec
    items = video_folder(clips)
    assert [i.id for i in items] == ["b.avi", "b.mp4"]
    task = get_task("video_jigsaw", clips=3)
    sources = {task.make(item, np.random.default_rng(0)).meta["source"] for item in items}
    assert sources == {"b.avi", "b.mp4"}
    assert [item_path(i.path)[0] for i in items] == ["b.avi", "b.mp4"]  # a bare path: its file name
    assert item_path(str(clips / "b.mp4")) == ("b.mp4", clips / "b.mp4")

    meshes = tmp_path / "meshes"
    meshes.mkdir()
    box = o3d.geometry.TriangleMesh.create_box()
    o3d.io.write_triangle_mesh(str(meshes / "x.off"), box)
    o3d.io.write_triangle_mesh(str(meshes / "x.ply"), box)
    assert [(g.id, g.kind) for g in geometry_folder(meshes)] == [("x.off", "mesh"), ("x.ply", "mesh")]
