"""Image, depth, mesh and point-cloud I/O, plus Qwen-VL pixel budgets (video I/O: `mmrl.video`).

Every failure to read a user's file raises one :class:`~mmrl.errors.MediaError` whose
message names the file; raw PIL/Open3D exceptions never escape. Open3D is imported lazily.
`require_file` and `native_call` (quiets and explains native libraries) serve `mmrl.video` too.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import math
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image, ImageOps

from mmrl.errors import MediaError

if TYPE_CHECKING:
    import open3d

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v"})
MESH_EXTENSIONS = frozenset({".ply", ".obj", ".stl", ".off", ".gltf", ".glb"})
# .ply is in both sets: a PLY holds a mesh, a point cloud, or both (its vertices).
POINT_CLOUD_EXTENSIONS = frozenset({".ply", ".pcd", ".xyz", ".xyzn", ".xyzrgb", ".pts"})

QWEN2_VL_FACTOR = 28  # Qwen2-VL / Qwen2.5-VL: patch 14 x spatial merge 2
QWEN3_VL_FACTOR = 32  # Qwen3-VL: patch 16 x spatial merge 2
MAX_ASPECT_RATIO = 200  # same limit as Qwen's processors

_T = TypeVar("_T")
_CAPTURE_LOCK = threading.Lock()


def require_file(path: str | Path, kind: str) -> Path:
    """Return `path` as a Path, or raise MediaError if it is missing, a folder, or empty."""
    p = Path(path)
    if not p.exists():
        raise MediaError(f"{kind} file not found: {p}")
    if not p.is_file():
        raise MediaError(f"{kind} path is not a file: {p}")
    if p.stat().st_size == 0:
        raise MediaError(f"{kind} file is empty (0 bytes): {p}")
    return p


def native_call(fn: Callable[[], _T], failure: str) -> tuple[_T, str]:
    """Call `fn` with the process's stdout/stderr file descriptors sent to a temp file.

    decord, FFmpeg and Open3D report problems by printing from C/C++ (Open3D even returns
    a half-filled point cloud from a truncated PLY), so we capture that text to keep the
    console quiet and to explain failures. Returns (result, captured text); if `fn`
    raises, raises MediaError("<failure> (<reason>)"). File descriptors are per process,
    so a lock serialises these calls across threads (else one thread could "restore" fd 1
    to another's temp file); output other threads print meanwhile is swallowed too.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        libc_fflush = ctypes.CDLL(None).fflush
    except (OSError, AttributeError):  # e.g. Windows: C buffers are not flushed, best effort
        libc_fflush = None
    error: Exception | None = None
    # Open3D's Python module prints through sys.stdout, which pytest and Jupyter replace:
    # capture that as well as the file descriptors that C code writes to.
    py_text = io.StringIO()
    with (
        _CAPTURE_LOCK,
        tempfile.TemporaryFile() as sink,
        contextlib.redirect_stdout(py_text),
        contextlib.redirect_stderr(py_text),
    ):
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            result = fn()
        except Exception as e:  # decord: RuntimeError, DECORDError; Open3D: RuntimeError
            error = e
        finally:
            if libc_fflush is not None:
                libc_fflush(None)  # C stdio buffers output sent to a file; push it out first
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
        sink.seek(0)
        log = _clean_log(sink.read().decode("utf-8", errors="replace") + "\n" + py_text.getvalue())
    if error is not None:
        lines = [*log.splitlines(), *_clean_log(str(error)).splitlines()]
        reason = "; ".join(dict.fromkeys(line for line in lines[-3:] if line))[:400]
        raise MediaError(f"{failure} ({reason})") from error
    return result, log


def _clean_log(text: str) -> str:
    """Drop ANSI colours and the '[12:00:00] file.cc:83: ' / '[mov @ 0x..] ' prefixes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    text = re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: |\[[^\]]* @ 0x[0-9a-f]+\] ", "", text)
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


# --------------------------------------------------------------------------- images


def load_image(path: str | Path) -> Image.Image:
    """Load an image fully decoded, EXIF-rotated and converted to 8-bit RGB.

    Alpha (LA, RGBA, PA, transparent P) is composited over white; 16-bit grey (I;16, I)
    is scaled by 1/257 so 65535 maps to 255; other modes (L, 1, CMYK, YCbCr, F) use
    PIL's conversion. Multi-frame files (GIF, TIFF) give their first frame.
    """
    p = require_file(path, "image")
    try:
        with Image.open(p) as im:
            im.load()  # PIL decodes lazily; force it so truncated files fail here
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error...
        raise MediaError(f"cannot decode image {p}: truncated, corrupt or not an image ({e})") from e


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im.copy()
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode.startswith("I;16") or im.mode == "I":
        grey = np.clip(np.asarray(im, dtype=np.float64) / 257.0, 0, 255)
        im = Image.fromarray(np.rint(grey).astype(np.uint8), mode="L")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def smart_resize(
    height: int,
    width: int,
    factor: int = QWEN2_VL_FACTOR,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
) -> tuple[int, int]:
    """Return the (height, width) Qwen-VL resizes an image to, as in Qwen's `smart_resize`.

    Source: `smart_resize` in qwen-vl-utils (`vision_process.py`) and in transformers'
    Qwen2-VL image processor; Qwen2.5-VL and Qwen3-VL reuse it. With f = factor:

        h' = max(f, round(h / f) * f),  w' = max(f, round(w / f) * f)
        if h' * w' > max_pixels:  b = sqrt(h * w / max_pixels)
                                  h' = max(f, floor(h / b / f) * f), same for w'
        if h' * w' < min_pixels:  b = sqrt(min_pixels / (h * w))
                                  h' = ceil(h * b / f) * f, same for w'

    `round` is Python's (ties to even), as in Qwen. The `max(f, .)` guards combine the
    two upstream variants (qwen-vl-utils has the first, transformers the second) so each
    side is at least `factor`; the result equals qwen-vl-utils' whenever that has no
    zero side. Only a budget too small for the aspect ratio (narrow side < f after
    shrinking) gives h' * w' > max_pixels, as in transformers. Use factor 28 for
    Qwen2/2.5-VL and 32 for Qwen3-VL. Raises ValueError if max/min side > 200.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    if not 0 < min_pixels <= max_pixels:
        raise ValueError(f"need 0 < min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, got {ratio}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resize_to_budget(
    image: Image.Image, min_pixels: int, max_pixels: int, factor: int = QWEN2_VL_FACTOR
) -> Image.Image:
    """Resize (bicubic) to the size :func:`smart_resize` picks for this pixel budget."""
    height, width = smart_resize(image.height, image.width, factor, min_pixels, max_pixels)
    if (height, width) == (image.height, image.width):
        return image.copy()
    return image.resize((width, height), Image.Resampling.BICUBIC)


# --------------------------------------------------------------------------- depth


def load_depth(path: str | Path, scale: float = 1000.0) -> np.ndarray:
    """Load a single-channel depth image as float32 metres: depth = value / scale.

    `scale` is units per metre: 1000 for 16-bit PNGs in millimetres (ScanNet, NYU),
    5000 for TUM RGB-D. 0 means invalid and stays 0; negative or non-finite values become 0.
    """
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    p = require_file(path, "depth")
    try:
        with Image.open(p) as im:
            mode, raw = im.mode, np.asarray(im, dtype=np.float64)  # asarray decodes fully
    except Exception as e:
        raise MediaError(f"cannot decode depth image {p}: truncated, corrupt or not an image ({e})") from e
    if mode not in ("I;16", "I;16B", "I;16L", "I", "F", "L"):
        raise MediaError(f"depth image {p} must be single-channel, got mode {mode}")
    depth = raw / scale
    depth[~np.isfinite(depth) | (depth < 0)] = 0.0
    return depth.astype(np.float32)


def save_depth(path: str | Path, depth_m: np.ndarray, scale: float = 1000.0) -> Path:
    """Save metres as a uint16 PNG of round(depth * scale), clipped to [0, 65535].

    NaN, inf and negative depths are written as 0 (invalid).
    """
    depth = np.asarray(depth_m, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth must be 2-D (H, W), got shape {depth.shape}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale}")
    units = np.where(np.isfinite(depth) & (depth > 0), depth * scale, 0.0)
    values = np.clip(np.rint(units), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    p = Path(path)
    Image.fromarray(values).save(p, format="PNG")
    return p


# --------------------------------------------------------------------------- 3D

# Open3D returns empty or half-filled geometry on failure and only prints why.
_O3D_FAILURE = re.compile(r"fail|unable|error|cannot|can't|invalid", re.IGNORECASE)


def _read_o3d(path: str | Path, kind: str, extensions: frozenset[str], reader: str) -> Any:
    """Read with `open3d.io.<reader>`, raising MediaError on any failure it reports."""
    p = require_file(path, kind)
    if p.suffix.lower() not in extensions:
        raise MediaError(f"unsupported {kind} format {p.suffix!r} for {p} (expected one of {sorted(extensions)})")
    import open3d as o3d

    def _read() -> Any:
        # Force warnings on (the user may have lowered verbosity): they are how we detect failure.
        with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Warning):
            return getattr(o3d.io, reader)(str(p))

    geometry, log = native_call(_read, f"cannot read {kind} {p}")
    problems = [line for line in log.splitlines() if _O3D_FAILURE.search(line)]
    if problems:
        raise MediaError(f"cannot read {kind} {p}: truncated or corrupt ({problems[-1]})")
    return geometry


# Formats read through Open3D's model reader (assimp), which keeps materials: base colour and base-colour texture.
_MATERIAL_MESH_EXTENSIONS = frozenset({".obj", ".gltf", ".glb"})
# A texture image that cannot be read (a path of the exporter's machine, a missing file) leaves its material
# untextured; the geometry is still good.
_TEXTURE_FAILURE = re.compile(r"geometry::Image|texture", re.IGNORECASE)


def load_mesh(path: str | Path) -> open3d.geometry.TriangleMesh:
    """Load a triangle mesh (.ply/.obj/.stl/.off/.gltf/.glb) with Open3D, keeping the colours the file has.

    * PLY, OFF: vertex colours, if any, as `vertex_colors`.
    * OBJ, glTF, GLB (read with their materials): one texture per material in `textures`, the material's
      base colour (OBJ `Kd`, glTF `baseColorFactor`) times its base-colour texture (OBJ `map_Kd`, glTF
      `baseColorTexture`), or a 1×1 image of the base colour when it has no texture; `triangle_material_ids`
      index `textures`, `triangle_uvs` hold each triangle corner's (u, v) with v up the image (OBJ's
      convention; glTF's is flipped on reading); file vertex colours stay in `vertex_colors` (glTF `COLOR_0`
      multiplies the base colour). A texture file that cannot be read leaves its material untextured; a
      file the model reader cannot read is read as plain geometry.
    * STL: geometry only.

    Vertices stay in the file's units and axes (see `mmrl.geometry_render.place_geometry`). Raises
    MediaError if the file is missing, unreadable, or has no triangles.
    """
    p = require_file(path, "mesh")
    mesh = _read_mesh_with_materials(p) if p.suffix.lower() in _MATERIAL_MESH_EXTENSIONS else None
    if mesh is None:
        mesh = _read_o3d(path, "mesh", MESH_EXTENSIONS, "read_triangle_mesh")
    if len(mesh.triangles) == 0 or len(mesh.vertices) == 0:
        raise MediaError(f"cannot read mesh {path}: no triangles (corrupt, or not a mesh)")
    return mesh


def _read_mesh_with_materials(p: Path) -> open3d.geometry.TriangleMesh | None:
    """The meshes of an OBJ/glTF/GLB model merged into one mesh carrying its materials as textures (see
    `load_mesh`), or None when Open3D's model reader fails or finds no triangles."""
    import open3d as o3d

    def _read() -> Any:
        with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Warning):
            return o3d.io.read_triangle_model(str(p))

    try:
        model, log = native_call(_read, f"cannot read mesh {p}")
    except MediaError:
        return None
    parts = [m for m in model.meshes if len(m.mesh.triangles) and len(m.mesh.vertices)]
    problems = [line for line in log.splitlines() if _O3D_FAILURE.search(line) and not _TEXTURE_FAILURE.search(line)]
    if not parts or problems:
        return None
    textures = [_material_texture(material) for material in model.materials]
    if any(not 0 <= m.material_idx < len(textures) for m in parts):
        textures.append(np.ones((1, 1, 3), np.uint8) * 255)  # a mesh without a material: white
    coloured = any(m.mesh.has_vertex_colors() for m in parts)
    vertices, triangles, uvs, material_ids, colours, offset = [], [], [], [], [], 0
    for part in parts:
        mesh = part.mesh
        v, t = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.triangles, np.int64)
        vertices.append(v)
        triangles.append(t + offset)
        offset += len(v)
        uv = np.asarray(mesh.triangle_uvs, np.float64)
        uvs.append(uv if mesh.has_triangle_uvs() and len(uv) == 3 * len(t) else np.zeros((3 * len(t), 2)))
        index = part.material_idx if 0 <= part.material_idx < len(model.materials) else len(textures) - 1
        material_ids.append(np.full(len(t), index, np.int32))
        if coloured:
            colours.append(np.asarray(mesh.vertex_colors) if mesh.has_vertex_colors() else np.ones((len(v), 3)))
    merged = o3d.geometry.TriangleMesh(
        o3d.utility.Vector3dVector(np.concatenate(vertices)), o3d.utility.Vector3iVector(np.concatenate(triangles))
    )
    merged.triangle_uvs = o3d.utility.Vector2dVector(np.concatenate(uvs))
    merged.triangle_material_ids = o3d.utility.IntVector(np.concatenate(material_ids).tolist())
    merged.textures = [o3d.geometry.Image(np.ascontiguousarray(image)) for image in textures]
    if coloured:
        merged.vertex_colors = o3d.utility.Vector3dVector(np.concatenate(colours))
    return merged


def _material_texture(material: Any) -> np.ndarray:
    """(H, W, 3) uint8: a material's base-colour texture times its base colour, or 1×1 of the base colour."""
    base = np.clip(np.asarray(material.base_color, np.float64)[:3], 0.0, 1.0)
    if material.albedo_img is None:
        return np.rint(base * 255).astype(np.uint8).reshape(1, 1, 3)
    image = np.asarray(material.albedo_img)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = image[:, :, :3].astype(np.float64)
    if image.max(initial=0) > 255:  # 16-bit texture
        image = image / 257.0
    return np.rint(np.clip(image * base, 0, 255)).astype(np.uint8)


def load_point_cloud(path: str | Path) -> open3d.geometry.PointCloud:
    """Load a point cloud (.ply/.pcd/.xyz/.xyzn/.xyzrgb/.pts) with Open3D.

    Raises MediaError if the file is missing, unreadable, or has no points.
    """
    cloud = _read_o3d(path, "point cloud", POINT_CLOUD_EXTENSIONS, "read_point_cloud")
    if len(cloud.points) == 0:
        raise MediaError(f"cannot read point cloud {path}: no points (corrupt, or not a point cloud)")
    return cloud
