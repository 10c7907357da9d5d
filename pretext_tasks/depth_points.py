"""The point sampler of `depth_jigsaw` (docs/visual_jigsaw.md, "how each input is built"):
register a depth map to the colour image, find the pixels a point may sit on, draw K points that satisfy
the paper's constraints. The paper's sampler was never released; this one is mmrl's.

Conventions:

* Points are `(row, col)` pixel centres at the colour image's native resolution; their depth is the
  z-depth (metres, camera frame, the ScanNet/NYU convention) of that pixel. 0 = no valid depth.
* Depth is registered to the colour image by nearest-neighbour resampling when the shapes differ
  (ScanNet's depth frames are 640×480, its colour frames 1296×968).

The method:

1. Candidates: pixels with valid depth in [`min_depth`, `max_depth`], at least `border` px from every
   image edge, and not on a depth edge: their `edge_window`² neighbourhood is all valid and its depth
   range is ≤ `edge_max_range` (so the depth under a marker's centre is unambiguous).
2. Sequential sampling: each point is drawn uniformly among the candidates compatible with every point
   accepted so far (pixel distance ≥ `min_pixel_distance` and |Δdepth| > `min_depth_gap`). This is
   rejection sampling done exactly — every candidate that would be rejected against an accepted point
   is removed at once (one vectorised test per accepted point) — so it has rejection sampling's
   distribution, and a dead end (no compatible candidate left) is known at once; it restarts from
   scratch, at most `max_tries` times.
3. A cheap necessary condition is checked first: the candidates' depths must span more than
   (K − 1)·`min_depth_gap`. A source that fails raises `SkipItem` (`no_valid_depth` when no pixel
   has valid depth in range, `depth_constraints_unsatisfiable` otherwise); loops skip and count it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmrl.errors import MMRLError, SkipItem

if TYPE_CHECKING:
    from pretext_tasks.depth_jigsaw import DepthJigsawParams


@dataclass(frozen=True)
class DepthPoint:
    """One marked point: pixel centre (row, col) at native resolution and its z-depth in metres."""

    row: int
    col: int
    depth: float


def register_depth(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`depth` (metres) resampled to the colour image's `size` = (width, height) by nearest neighbour
    (pixel centres mapped proportionally); NaN, ±inf and negative values become 0 (invalid)."""
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 2:
        raise MMRLError(f"depth map must be 2-D (H, W), got shape {depth.shape}")
    width, height = size
    if depth.shape != (height, width):
        rows = np.minimum(((np.arange(height) + 0.5) * depth.shape[0] / height).astype(np.int64), depth.shape[0] - 1)
        cols = np.minimum(((np.arange(width) + 0.5) * depth.shape[1] / width).astype(np.int64), depth.shape[1] - 1)
        depth = depth[rows[:, None], cols[None, :]]
    return np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(0)).astype(np.float32)


def _window_filter(a: np.ndarray, k: int, op: np.ufunc, pad: float) -> np.ndarray:
    """Centred k×k sliding `op`-reduction (np.minimum / np.maximum) of `a`, outside padded with `pad`;
    separable, k − 1 element-wise `op` calls per axis."""
    r, (h, w) = k // 2, a.shape
    padded = np.pad(a, r, constant_values=pad)
    across = padded[:, :w].copy()
    for d in range(1, k):
        op(across, padded[:, d : d + w], out=across)
    out = across[:h].copy()
    for d in range(1, k):
        op(out, across[d : d + h], out=out)
    return out


def candidate_mask(depth: np.ndarray, params: DepthJigsawParams) -> np.ndarray:
    """(H, W) bool: pixels a point may sit on (depth in range, inside the border, not on a depth edge).

    `depth` is registered and cleaned (0 = invalid). The window test: every pixel of the centred
    `edge_window`² neighbourhood has valid depth (outside the image counts as invalid) and the
    neighbourhood's max − min depth is ≤ `edge_max_range`.
    """
    h, w = depth.shape
    in_range = (depth >= params.min_depth) & (depth <= params.max_depth)
    inside = np.zeros_like(in_range)
    b = params.border
    if h > 2 * b and w > 2 * b:
        inside[b : h - b, b : w - b] = True
    k = params.edge_window
    low = _window_filter(depth, k, np.minimum, 0.0)  # > 0 iff the whole window is valid
    high = _window_filter(depth, k, np.maximum, 0.0)
    flat = (low > 0) & (high - low <= np.float32(params.edge_max_range))
    return in_range & inside & flat


@dataclass(frozen=True)
class _Candidates:
    """What the point sampler needs from one registered depth map and the candidate parameters
    (`min_depth`, `max_depth`, `border`, `edge_window`, `edge_max_range`); read-only arrays."""

    any_valid: bool
    """Some pixel has valid depth in [`min_depth`, `max_depth`]."""
    rows: np.ndarray
    """Row of each candidate pixel, in raster order (so sorted)."""
    cols: np.ndarray
    """Column of each candidate pixel."""
    z: np.ndarray
    """Depth of each candidate, in the depth map's dtype (float32 when registered)."""
    by_depth: np.ndarray
    """Candidate indices in increasing depth (stable)."""
    z_sorted: np.ndarray
    """`z[by_depth]` as float64."""

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.rows, self.cols, self.z, self.by_depth, self.z_sorted))


def _candidates(depth: np.ndarray, params: DepthJigsawParams) -> _Candidates:
    """The candidates of a registered, cleaned depth map (`candidate_mask`), in raster order."""
    h, w = depth.shape
    any_valid = bool(((depth >= params.min_depth) & (depth <= params.max_depth) & (depth > 0)).any())
    flat = np.flatnonzero(candidate_mask(depth, params))
    # int32 pixel arithmetic in the draw loop cannot overflow below 32768 px: 2 * 32767**2 < 2**31.
    index = np.int32 if max(h, w) < 32768 else np.int64
    rows, cols = (a.astype(index) for a in np.divmod(flat, w))
    z = depth.ravel()[flat]
    by_depth = np.argsort(z, kind="stable").astype(np.int32 if len(z) < 2**31 else np.int64)
    z_sorted = z[by_depth].astype(np.float64)
    arrays = (rows, cols, z, by_depth, z_sorted)
    for a in arrays:
        a.setflags(write=False)
    return _Candidates(any_valid, *arrays)


def sample_points(depth: np.ndarray, params: DepthJigsawParams, rng: np.random.Generator) -> list[DepthPoint]:
    """K points satisfying every constraint of `params`, nearest first; `SkipItem` when none are found.

    `depth`: registered, cleaned depth in metres (0 = invalid). See the module docstring for the method.
    """
    return draw_points(_candidates(np.asarray(depth), params), params, rng)


def draw_points(cand: _Candidates, params: DepthJigsawParams, rng: np.random.Generator) -> list[DepthPoint]:
    """`sample_points` on precomputed candidates.

    Each accepted point removes the candidates it conflicts with, as a test against every candidate
    would, but only looks at those that can conflict: the depth-sorted candidates within
    `min_depth_gap` (+ a margin; the exact |Δz| > gap test is applied to them) and the raster-ordered
    candidates within `min_pixel_distance` rows (one slice). The candidates are kept in raster order
    and `rng` is called exactly as by a test against every candidate, so the points are the same.
    """
    k, gap = params.points, params.min_depth_gap
    if not cand.any_valid:
        raise SkipItem("no_valid_depth", f"no pixel has valid depth in [{params.min_depth}, {params.max_depth}] m")
    rows, cols, z, by_depth, z_sorted = cand.rows, cand.cols, cand.z, cand.by_depth, cand.z_sorted
    n = len(z)
    if n < k:
        raise SkipItem(
            "depth_constraints_unsatisfiable",
            f"{n} candidate pixels (in range, inside the border, off depth edges)",
        )
    span = float(z_sorted[-1] - z_sorted[0])
    if span <= (k - 1) * gap:
        raise SkipItem(
            "depth_constraints_unsatisfiable",
            f"candidate depths span {span:.3f} m, not more than (K - 1) * {gap} m for K = {k}",
        )
    min_d2 = float(params.min_pixel_distance) ** 2
    reach = int(min(np.ceil(params.min_pixel_distance), int(rows[-1]) + 1))  # rows farther never conflict
    for _ in range(params.max_tries):
        alive = np.ones(n, dtype=bool)
        chosen: list[int] = []
        while len(chosen) < k:
            left = np.flatnonzero(alive)
            if not len(left):
                break  # dead end: restart
            i = int(left[rng.integers(len(left))])
            chosen.append(i)
            zi, ri, ci = float(z[i]), int(rows[i]), int(cols[i])
            # Depth: the interval holds every candidate with |z - zi| <= gap (the margin exceeds any
            # rounding); the exact test of the full comparison decides within it.
            margin = 1e-9 * (1.0 + abs(zi) + gap)
            lo = int(np.searchsorted(z_sorted, zi - gap - margin, "left"))
            hi = int(np.searchsorted(z_sorted, zi + gap + margin, "right"))
            near = by_depth[lo:hi]
            alive[near[~(np.abs(z[near].astype(np.float64) - zi) > gap)]] = False
            # Pixels: only rows within `reach` can be closer than min_pixel_distance.
            a, b = np.searchsorted(rows, np.array([ri - reach, ri + reach + 1], dtype=rows.dtype))
            dr, dc = rows[a:b] - ri, cols[a:b] - ci
            alive[a:b] &= (dr * dr + dc * dc).astype(np.float64) >= min_d2
        if len(chosen) == k:
            points = [DepthPoint(int(rows[i]), int(cols[i]), float(z[i])) for i in chosen]
            return sorted(points, key=lambda p: p.depth)
    raise SkipItem(
        "depth_constraints_unsatisfiable",
        f"no {k} points {params.min_pixel_distance:g} px and > {params.min_depth_gap:g} m apart "
        f"in {params.max_tries} tries ({n} candidates)",
    )


_CANDIDATE_CACHE: OrderedDict[tuple[Any, ...], _Candidates] = OrderedDict()
_CANDIDATE_CACHE_ITEMS = 64
_CANDIDATE_CACHE_BYTES = 512 * 2**20
_CANDIDATE_CACHE_LOCK = threading.Lock()


def rgbd_candidates(item: Any, size: tuple[int, int], params: DepthJigsawParams) -> _Candidates:
    """The candidates of an `RGBDItem`'s depth registered to `size` = (width, height), cached per depth
    file (path, mtime, size: a rewritten file is read again), scale and candidate parameters; an LRU of
    at most `_CANDIDATE_CACHE_ITEMS` items and `_CANDIDATE_CACHE_BYTES` (the newest is always kept).
    `mmrl generate` draws sources with replacement, so a hit skips the depth decode and the mask."""
    from mmrl import media

    path = Path(item.depth_path)
    try:
        stat = path.stat()
        stamp: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
    except OSError:
        stamp = None  # load_depth raises its own error; nothing is cached
    key = (
        str(path),
        stamp,
        float(item.depth_scale),
        tuple(size),
        params.min_depth,
        params.max_depth,
        params.border,
        params.edge_window,
        params.edge_max_range,
    )
    with _CANDIDATE_CACHE_LOCK:
        hit = _CANDIDATE_CACHE.get(key)
        if hit is not None:
            _CANDIDATE_CACHE.move_to_end(key)
            return hit
    cand = _candidates(register_depth(media.load_depth(path, item.depth_scale), size), params)
    if stamp is not None:
        with _CANDIDATE_CACHE_LOCK:
            _CANDIDATE_CACHE[key] = cand
            total = sum(c.nbytes for c in _CANDIDATE_CACHE.values())
            while len(_CANDIDATE_CACHE) > 1 and (
                len(_CANDIDATE_CACHE) > _CANDIDATE_CACHE_ITEMS or total > _CANDIDATE_CACHE_BYTES
            ):
                _, old = _CANDIDATE_CACHE.popitem(last=False)
                total -= old.nbytes
    return cand


__all__ = [
    "DepthPoint",
    "candidate_mask",
    "draw_points",
    "register_depth",
    "rgbd_candidates",
    "sample_points",
]
