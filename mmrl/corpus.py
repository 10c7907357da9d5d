"""Sources of raw media, and the built-in default corpus.

Sources are folders a user points at: images, videos, meshes / point clouds, RGB-D pairs. Each
yields small frozen items (an id and paths) that load on demand, in sorted order so every run
sees the same sequence. A file's id is its path relative to the folder, extension included
(`clips/b.mp4`), so files that differ only by extension (`b.mp4` / `b.avi`, `x.off` / `x.ply`) are
distinct items with distinct ids; an RGB-D pair's id names the pair (`<scene>/<stem>`, its folder, or
its `<stem>` prefix), since its two files always have different names.

The default corpus needs no download: the real photos scikit-image ships, videos synthesized from
them (camera pans and zooms, so time has a direction) and from animated procedural 3D scenes, and
procedural RGB-D scenes (RGB, metric depth, instance masks, boxes, scene graph). `build_default_corpus`
writes it once into a cache folder. Every file is written under a temporary name and renamed, and
every item draws from its own generator seeded by (seed, kind, index), so an interrupted build
resumes where it stopped and produces the same bytes as an uninterrupted one. `manifest.json`,
written last, marks the corpus complete.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from filelock import FileLock
from PIL import Image
from tqdm.auto import tqdm

from mmrl import media
from mmrl.config import CorpusConfig, default_cache_dir, to_dict
from mmrl.errors import MMRLError
from mmrl.video import VideoInfo, video_info, write_video

MANIFEST = "manifest.json"
CORPUS_VERSION = 1

# The photographs among scikit-image's bundled data files (no fetch needed); grayscale ones are
# kept: they are real photos and become RGB on load.
SKIMAGE_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png",
    "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "moon.png",
    "motorcycle_left.png", "retina.jpg", "rocket.jpg",
)  # fmt: skip
CAMERA_MOTIONS = ("pan_left", "pan_right", "pan_up", "pan_down", "zoom_in", "zoom_out")


# --------------------------------------------------------------------------------------------------
# Source items


@dataclass(frozen=True)
class ImageItem:
    id: str
    path: Path

    def load(self) -> Image.Image:
        return media.load_image(self.path)


@dataclass(frozen=True)
class VideoItem:
    id: str
    path: Path

    def info(self) -> VideoInfo:
        return video_info(self.path)


@dataclass(frozen=True)
class GeometryItem:
    id: str
    path: Path
    kind: str
    """`mesh` or `point_cloud`."""

    def load(self):
        return media.load_mesh(self.path) if self.kind == "mesh" else media.load_point_cloud(self.path)


@dataclass(frozen=True)
class RGBDItem:
    id: str
    rgb_path: Path
    depth_path: Path
    depth_scale: float = 1000.0
    """Depth units per metre (1000: 16-bit PNG in millimetres, the ScanNet/NYU convention)."""
    scene_path: Path | None = None
    """Scene graph JSON (procedural scenes only)."""

    def load(self) -> tuple[Image.Image, np.ndarray]:
        """RGB image and depth in metres (0 = no valid depth)."""
        return media.load_image(self.rgb_path), media.load_depth(self.depth_path, self.depth_scale)

    def scene_graph(self) -> dict | None:
        return json.loads(self.scene_path.read_text()) if self.scene_path else None


def _files(root: str | Path, suffixes: frozenset[str], what: str, *, allow_empty: bool = False) -> list[Path]:
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise MMRLError(f"{what} folder {folder} does not exist")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files and not allow_empty:
        raise MMRLError(f"no {what} files ({', '.join(sorted(suffixes))}) found under {folder}")
    return files


def _item_id(path: Path, root: Path) -> str:
    """`path` relative to `root`, extension kept (`sub/b.mp4`): stable, readable, and unique within the folder."""
    if path == root:  # a single item stored at the folder's top level
        return root.name
    return path.relative_to(root).as_posix()


def image_folder(root: str | Path) -> list[ImageItem]:
    """Every image under `root` (recursive, sorted by path)."""
    return [ImageItem(_item_id(p, Path(root)), p) for p in _files(root, media.IMAGE_EXTENSIONS, "image")]


def video_folder(root: str | Path, *, allow_empty: bool = False) -> list[VideoItem]:
    """Every video under `root` (recursive, sorted by path)."""
    files = _files(root, media.VIDEO_EXTENSIONS, "video", allow_empty=allow_empty)
    return [VideoItem(_item_id(p, Path(root)), p) for p in files]


def geometry_folder(root: str | Path) -> list[GeometryItem]:
    """Every mesh and point cloud under `root`. A `.ply` holding faces is a mesh, else a point cloud."""
    items = []
    suffixes = media.MESH_EXTENSIONS | media.POINT_CLOUD_EXTENSIONS
    for p in _files(root, suffixes, "mesh or point cloud"):
        kind = "mesh" if p.suffix.lower() in media.MESH_EXTENSIONS else "point_cloud"
        if p.suffix.lower() == ".ply":
            kind = "mesh" if _ply_has_faces(p) else "point_cloud"
        items.append(GeometryItem(_item_id(p, Path(root)), p, kind))
    return items


def _ply_has_faces(path: Path) -> bool:
    with path.open("rb") as f:
        header = f.read(4096).split(b"end_header")[0]
    for line in header.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == b"element" and parts[1] == b"face":
            return int(parts[2]) > 0
    return False


def rgbd_folder(root: str | Path, depth_scale: float = 1000.0) -> list[RGBDItem]:
    """RGB-D pairs under `root`, in any of three layouts (checked in this order):

    - `color/<stem>.{jpg,png}` + `depth/<stem>.png` (ScanNet export layout), at the top level or in
      any subfolder (`<scene>/color` + `<scene>/depth`: a whole ScanNet tree; ids `<scene>/<stem>`);
    - `<item>/rgb.{png,jpg}` + `<item>/depth.png` (+ optional `<item>/scene.json`), the default corpus;
    - `<stem>_rgb.{png,jpg}` + `<stem>_depth.png` side by side.

    Depth PNGs hold integers in units of 1/`depth_scale` metres (1000: millimetres).
    """
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise MMRLError(f"RGB-D folder {folder} does not exist")
    items: list[RGBDItem] = []
    scans = sorted(
        c.parent for c in [folder / "color", *folder.rglob("color")] if c.is_dir() and (c.parent / "depth").is_dir()
    )
    if scans:
        for scan in dict.fromkeys(scans):
            prefix = "" if scan == folder else scan.relative_to(folder).as_posix() + "/"
            for rgb in sorted((scan / "color").iterdir()):
                depth = scan / "depth" / (rgb.stem + ".png")
                if rgb.suffix.lower() in media.IMAGE_EXTENSIONS and depth.is_file():
                    items.append(RGBDItem(prefix + rgb.stem, rgb, depth, depth_scale))
    else:
        for depth in sorted(folder.rglob("*depth.png")):
            stem = depth.name[: -len("depth.png")]
            for ext in (".png", ".jpg", ".jpeg"):
                rgb = depth.with_name(stem + "rgb" + ext)
                if rgb.is_file():
                    scene = depth.with_name(stem + "scene.json")
                    named = depth.parent if not stem else depth.with_name(stem.rstrip("_"))
                    item_id = _item_id(named, folder)
                    items.append(RGBDItem(item_id, rgb, depth, depth_scale, scene if scene.is_file() else None))
                    break
    if not items:
        raise MMRLError(f"no RGB-D pairs found under {folder} (see `rgbd_folder` for the accepted layouts)")
    return items


# --------------------------------------------------------------------------------------------------
# The default corpus


@dataclass(frozen=True)
class Corpus:
    """The default corpus once built: its folder and its items by kind."""

    root: Path
    photos: list[ImageItem]
    videos: list[VideoItem]
    rgbd: list[RGBDItem]
    manifest: dict

    @classmethod
    def open(cls, root: str | Path) -> Corpus:
        root = Path(root)
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise MMRLError(f"no complete corpus at {root} (run `mmrl corpus --root {root}`)")
        manifest = json.loads(manifest_path.read_text())
        return cls(
            root=root,
            photos=image_folder(root / "photos"),
            videos=video_folder(root / "videos", allow_empty=True),  # a corpus may be built without videos
            rgbd=rgbd_folder(root / "rgbd") if manifest.get("rgbd") else [],
            manifest=manifest,
        )


class LazyCorpus:
    """The default corpus, built on first attribute access: tasks that never read it (the
    diagnostic task) cost nothing."""

    def __init__(self, cfg: CorpusConfig):
        self._cfg, self._corpus = cfg, None

    def __getattr__(self, name: str):
        if self._corpus is None:
            self._corpus = default_corpus(self._cfg)
        return getattr(self._corpus, name)


def corpus_root(cfg: CorpusConfig) -> Path:
    return Path(cfg.root).expanduser() if cfg.root else default_cache_dir() / "corpus"


def default_corpus(cfg: CorpusConfig | None = None) -> Corpus:
    """The default corpus, built first if it is missing or incomplete."""
    cfg = cfg or CorpusConfig()
    return build_default_corpus(cfg)


def build_default_corpus(cfg: CorpusConfig, *, progress: bool = True) -> Corpus:
    """Build (or finish building) the default corpus described by `cfg`; returns it opened.

    A complete corpus with the same config is returned as it is; a corpus built with another
    config in the same folder is an error (choose another `root`), never silently mixed. Concurrent
    callers (several ranks) serialise on a lock file: one builds, the others then find it complete.
    """
    root = corpus_root(cfg)
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".lock")):
        return _build_default_corpus(cfg, root, progress)


def _build_default_corpus(cfg: CorpusConfig, root: Path, progress: bool) -> Corpus:
    wanted = {"version": CORPUS_VERSION, "config": to_dict(cfg) | {"root": ""}}
    manifest_path = root / MANIFEST
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if {k: manifest.get(k) for k in wanted} == wanted:
            return Corpus.open(root)
        raise MMRLError(f"{root} holds a corpus built with another config; remove it or set corpus.root elsewhere")
    for sub in ("photos", "videos", "rgbd"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    jobs = _corpus_jobs(cfg, root)
    todo = [job for job in jobs if not job.done()]
    done = len(jobs) - len(todo)
    bar = tqdm(total=len(jobs), initial=done, desc="building corpus", unit="item", disable=not progress)
    for job in todo:
        job.build()
        bar.update(1)
    bar.close()
    manifest = wanted | {
        "photos": len(_photo_names(cfg)),
        "videos": {"photo": len(_photo_names(cfg)) * cfg.videos_per_photo, "scene": cfg.scene_videos},
        "video_frames": cfg.video_frames,
        "video_fps": cfg.video_fps,
        "rgbd": cfg.rgbd_scenes,
    }
    _atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
    return Corpus.open(root)


@dataclass(frozen=True)
class _Job:
    target: Path
    make: Callable[[Path], None]
    """Writes the item to the given temporary path (file or folder); the job renames it."""

    def done(self) -> bool:
        return self.target.exists()

    def build(self) -> None:
        tmp = self.target.with_name(".tmp-" + self.target.name)
        if tmp.is_dir():
            shutil.rmtree(tmp)
        tmp.unlink(missing_ok=True)
        self.make(tmp)
        tmp.rename(self.target)


def _corpus_jobs(cfg: CorpusConfig, root: Path) -> list[_Job]:
    def rng(kind: int, index: int) -> np.random.Generator:
        return np.random.default_rng([cfg.seed, kind, index])

    jobs = []
    for i, name in enumerate(_photo_names(cfg)):
        stem = Path(name).stem
        jobs.append(_Job(root / "photos" / f"{stem}.png", partial(_make_photo, name, cfg)))
        for k in range(cfg.videos_per_photo):
            make = partial(_make_photo_video, name, cfg, rng(1, i * 1000 + k))
            jobs.append(_Job(root / "videos" / f"photo_{stem}_{k}.mp4", make))
    for k in range(cfg.scene_videos):
        jobs.append(_Job(root / "videos" / f"scene_{k:03d}.mp4", partial(_make_scene_video, cfg, rng(2, k))))
    for k in range(cfg.rgbd_scenes):
        jobs.append(_Job(root / "rgbd" / f"scene_{k:03d}", partial(_make_rgbd, cfg, rng(3, k))))
    return jobs


def _photo_names(cfg: CorpusConfig) -> tuple[str, ...]:
    return SKIMAGE_PHOTOS[: cfg.max_photos] if cfg.max_photos > 0 else SKIMAGE_PHOTOS


def _skimage_photo(name: str, longest: int) -> Image.Image:
    import skimage

    image = media.load_image(Path(skimage.__file__).parent / "data" / name)
    scale = longest / max(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    return image


def _make_photo(name: str, cfg: CorpusConfig, tmp: Path) -> None:
    _skimage_photo(name, cfg.photo_size).save(tmp, format="PNG")


def camera_motion_frames(
    image: Image.Image, motion: str, n_frames: int, size: tuple[int, int], rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Frames of a virtual camera moving over `image`: a crop window that pans or zooms monotonically.

    The window keeps the output aspect ratio; its extent (60-80% of the image for pans, from 100%
    down to 45-60% for zooms) and path offset are drawn from `rng`. Yields HxWx3 uint8 frames.
    """
    width, height = size
    aspect = width / height
    W, H = image.size
    base_h = min(H, W / aspect)  # largest window with the output aspect
    if motion.startswith("pan"):
        frac = rng.uniform(0.6, 0.8)
        scales = np.full(n_frames, frac)
    else:
        low = rng.uniform(0.45, 0.6)
        scales = np.linspace(1.0, low, n_frames) if motion == "zoom_in" else np.linspace(low, 1.0, n_frames)
    t = np.linspace(0.0, 1.0, n_frames)
    jitter = rng.uniform(0.2, 0.8)  # where the orthogonal coordinate sits
    for scale, s in zip(scales, t):
        wh, ww = base_h * scale, base_h * scale * aspect
        free_x, free_y = W - ww, H - wh
        fx, fy = {
            "pan_right": (s, jitter), "pan_left": (1 - s, jitter),
            "pan_down": (jitter, s), "pan_up": (jitter, 1 - s),
        }.get(motion, (0.5, 0.5))  # fmt: skip
        x0, y0 = fx * free_x, fy * free_y
        crop = image.resize((width, height), Image.Resampling.BILINEAR, box=(x0, y0, x0 + ww, y0 + wh))
        yield np.asarray(crop)


def _make_photo_video(name: str, cfg: CorpusConfig, rng: np.random.Generator, tmp: Path) -> None:
    image = _skimage_photo(name, 2 * max(cfg.video_size))
    motion = str(rng.choice(CAMERA_MOTIONS))
    frames = list(camera_motion_frames(image, motion, cfg.video_frames, cfg.video_size, rng))
    _write_video_with_meta(tmp, frames, cfg.video_fps, {"source": name, "motion": motion})


def _make_scene_video(cfg: CorpusConfig, rng: np.random.Generator, tmp: Path) -> None:
    from mmrl import scene_render, scenes  # open3d: imported only when scenes are rendered

    width, height = cfg.video_size
    scene = scenes.random_scene(rng, width=width, height=height)
    # Objects slide and slow down (friction) while the camera orbits: motion is visible in every
    # clip and time has a direction.
    orbit = float(rng.choice([-1, 1]) * rng.uniform(15, 35))
    path = scenes.animate(scene, rng, cfg.video_frames, n_moving=(2, 4), distance=(1.2, 2.5), orbit_deg=orbit)
    frames = [scene_render.render(s).rgb for s in path]
    _write_video_with_meta(tmp, frames, cfg.video_fps, {"source": "procedural_scene", "motion": "animated"})


def _write_video_with_meta(tmp: Path, frames: list[np.ndarray], fps: float, meta: dict) -> None:
    # PyAV picks the container from the suffix, so encode under a .mp4 name inside the temp name.
    encoded = tmp.with_name(tmp.name + ".mp4")
    write_video(encoded, frames, fps)
    meta_path = tmp.with_name(tmp.name.removeprefix(".tmp-")).with_suffix(".json")
    _atomic_write_text(meta_path, json.dumps(meta | {"frames": len(frames), "fps": fps}, indent=2))
    encoded.rename(tmp)


def _make_rgbd(cfg: CorpusConfig, rng: np.random.Generator, tmp: Path) -> None:
    from mmrl import scene_render, scenes

    width, height = cfg.scene_size
    scene = scenes.random_scene(rng, width=width, height=height)
    rendering = scene_render.render(scene)
    tmp.mkdir(parents=True)
    Image.fromarray(rendering.rgb).save(tmp / "rgb.png", format="PNG")
    media.save_depth(tmp / "depth.png", rendering.depth, scale=1000.0)
    Image.fromarray((rendering.instance + 1).astype(np.uint16)).save(tmp / "instance.png", format="PNG")
    graph = rendering.graph | {"boxes": {str(k): list(v) for k, v in sorted(rendering.boxes.items())}}
    (tmp / "scene.json").write_text(json.dumps(graph, indent=2))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(".tmp-" + path.name)
    tmp.write_text(text)
    tmp.replace(path)
