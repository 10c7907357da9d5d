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

Speed, not results: `rgbd_candidates` caches a source's candidates; when the depth map is smaller than
the colour image, they are kept as blocks of alike pixels at the depth map's resolution (about one per
depth pixel, `_block_candidates`) and drawn from with `_draw_block_points`, which consumes `rng` as
the pixel sampler does and returns the same points. The registered depth is never built then.
"""

from __future__ import annotations

import functools
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


def draw_points(
    cand: _Candidates | _BlockCandidates, params: DepthJigsawParams, rng: np.random.Generator
) -> list[DepthPoint]:
    """`sample_points` on precomputed candidates (`_BlockCandidates`: see `_draw_block_points`).

    Each accepted point removes the candidates it conflicts with, as a test against every candidate
    would, but only looks at those that can conflict: the depth-sorted candidates within
    `min_depth_gap` (+ a margin; the exact |Δz| > gap test is applied to them) and the raster-ordered
    candidates within `min_pixel_distance` rows (one slice). The candidates are kept in raster order
    and `rng` is called exactly as by a test against every candidate, so the points are the same.
    """
    if isinstance(cand, _BlockCandidates):
        return _draw_block_points(cand, params, rng)
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


# --------------------------------------------------------------------------------------------------
# Depth at another resolution than the colour image (ScanNet: 640x480 depth, 1296x968 colour). The
# registered depth is piecewise constant: colour rows (columns) that map to the same depth rows over
# their whole `edge_window` form runs, and every pixel of a run-row x run-column block has the same
# depth and the same candidate test. The sampler below works on those blocks (about one per depth
# pixel) instead of the registered map, and draws exactly the points `sample_points` draws on it.


def _axis_map(n_depth: int, n_colour: int) -> np.ndarray:
    """Depth index of each colour pixel along one axis, pixel centres mapped as in `register_depth`."""
    if n_depth == n_colour:
        return np.arange(n_colour, dtype=np.int64)
    return np.minimum(((np.arange(n_colour) + 0.5) * n_depth / n_colour).astype(np.int64), n_depth - 1)


@functools.lru_cache(maxsize=16)
def _axis_runs(n_depth: int, n_colour: int, k: int, border: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of alike colour pixels along one axis: (start of each run, its window (runs, k), its
    inside-the-border flag).

    Pixel x's window is the set of depth indices of the pixels x - k//2 ... x + k//2, written as its
    distinct values in increasing order, the last repeated to k slots (all -1 when the window reaches
    outside the image). Consecutive pixels with the same depth index, window and inside flag form a run;
    the registered depth and the window test are the same along it. Cached per geometry (read-only)."""
    index = _axis_map(n_depth, n_colour)
    n, r = n_colour, k // 2
    at = np.arange(n)[:, None] + np.arange(-r, r + 1)[None, :]
    valid = ((at >= 0) & (at < n)).all(axis=1)
    window = index[np.clip(at, 0, n - 1)]  # never decreasing along a row: `index` is monotone
    repeat = np.zeros(window.shape, dtype=bool)
    repeat[:, 1:] = window[:, 1:] == window[:, :-1]
    distinct = np.sort(np.where(repeat, n + int(index.max(initial=0)) + 1, window), axis=1)
    window = np.minimum(distinct, window[:, -1:])  # the placeholders become the largest index
    window[~valid] = -1
    inside = np.zeros(n, dtype=bool)
    inside[border : n - border] = True  # empty when n <= 2 * border
    change = np.ones(n, dtype=bool)
    change[1:] = (window[1:] != window[:-1]).any(axis=1) | (inside[1:] != inside[:-1]) | (index[1:] != index[:-1])
    starts = np.flatnonzero(change)
    runs = (starts, window[starts], inside[starts])
    for a in runs:
        a.setflags(write=False)
    return runs


def _run_window_reduce(a: np.ndarray, window: np.ndarray, axis: int, ops: tuple[np.ufunc, ...]) -> list[np.ndarray]:
    """Each of `ops` (np.minimum, np.maximum) of `a` along `axis` over each run's window (`_axis_runs`:
    one run per output slot); a window reaching outside the image gives 0, as `_window_filter` pads
    with 0. Each gather serves every op.

    A window lists its distinct indices first, then repeats its largest, so only the first slots that
    hold a new index for some run are gathered (3 when depth is upscaled about 2x with k = 5)."""
    valid = window[:, 0] >= 0
    fresh = (window[valid, 1:] != window[valid, :-1]).any(axis=0)
    slots = 1 + (int(np.flatnonzero(fresh)[-1]) + 1 if fresh.any() else 0)
    first = np.take(a, np.where(valid, window[:, 0], 0), axis=axis)
    outs = [first] + [first.copy() for _ in ops[1:]]
    for slot in range(1, slots):
        values = np.take(a, np.where(valid, window[:, slot], 0), axis=axis)
        for op, out in zip(ops, outs):
            op(out, values, out=out)
    for out in outs:
        out[(slice(None),) * axis + (~valid,)] = 0
    return outs


@dataclass(frozen=True)
class _BlockCandidates:
    """The candidates of a depth map registered to a colour size, as blocks of alike pixels (see above);
    read-only arrays. Candidate pixels are counted in the raster order of the colour image."""

    any_valid: bool
    """Some colour pixel has valid registered depth in [`min_depth`, `max_depth`]."""
    row_block: np.ndarray
    """(H,) the row-run of each colour row."""
    col_block: np.ndarray
    """(W,) the column-run of each colour column."""
    col_width: np.ndarray
    """(column runs,) width of each column-run in colour pixels."""
    grid: np.ndarray
    """(row runs, column runs) bool: the block's pixels are candidates."""
    z_grid: np.ndarray
    """(row runs, column runs) float32: the registered depth of the block's pixels."""
    row_count: np.ndarray
    """(row runs,) candidate pixels in one colour row of each row-run."""
    count: int
    """Candidate pixels in the whole image."""
    z_min: float
    """Smallest candidate depth (0 without candidates)."""
    z_max: float
    """Largest candidate depth (0 without candidates)."""

    @property
    def nbytes(self) -> int:
        arrays = (self.row_block, self.col_block, self.col_width, self.grid, self.z_grid, self.row_count)
        return sum(a.nbytes for a in arrays)


def _block_candidates(depth: np.ndarray, size: tuple[int, int], params: DepthJigsawParams) -> _BlockCandidates:
    """The candidates `_candidates(register_depth(depth, size), params)` finds, as blocks; the window
    filters run on the depth map's own resolution (per run of columns, then per run of rows).

    `register_depth` turns NaN, ±inf and negative depth into 0 first; here they are left as they are,
    with the same outcome: each fails the range test, and a window holding one fails the window test
    (its minimum is NaN, negative or 0, or its range is NaN or inf)."""
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 2:
        raise MMRLError(f"depth map must be 2-D (H, W), got shape {depth.shape}")
    width, height = size
    k, b = params.edge_window, params.border
    row_start, row_window, row_inside = _axis_runs(depth.shape[0], height, k, b)
    col_start, col_window, col_inside = _axis_runs(depth.shape[1], width, k, b)
    rows, cols = _axis_map(depth.shape[0], height), _axis_map(depth.shape[1], width)
    z_grid = np.take(np.take(depth, rows[row_start], axis=0), cols[col_start], axis=1)
    with np.errstate(invalid="ignore"):
        grid = (z_grid >= params.min_depth) & (z_grid <= params.max_depth)
        any_valid = bool((grid & (z_grid > 0)).any())
        col_low, col_high = _run_window_reduce(depth, col_window, 1, (np.minimum, np.maximum))
        (low,) = _run_window_reduce(col_low, row_window, 0, (np.minimum,))
        (high,) = _run_window_reduce(col_high, row_window, 0, (np.maximum,))
        grid &= low > 0
        grid &= high - low <= np.float32(params.edge_max_range)
    if not (height > 2 * b and width > 2 * b):  # as `candidate_mask`: then no pixel is inside
        grid[...] = False
    grid &= row_inside[:, None]
    grid &= col_inside[None, :]
    row_height = np.diff(np.append(row_start, height))
    col_width = np.diff(np.append(col_start, width))
    # Candidates per colour row by a matrix product: exact in float32 (BLAS) below 2**24 pixels a row.
    exact = np.float32 if width < 2**24 else np.float64
    row_count = np.rint(grid.astype(exact) @ col_width.astype(exact)).astype(np.int64)
    count = int(row_count @ row_height)
    z_min = float(np.min(z_grid, where=grid, initial=np.inf)) if count else 0.0
    z_max = float(np.max(z_grid, where=grid, initial=-np.inf)) if count else 0.0
    arrays = (
        np.repeat(np.arange(len(row_start)), row_height),
        np.repeat(np.arange(len(col_start)), col_width),
        col_width,
        grid,
        z_grid,
        row_count,
    )
    for a in arrays:
        a.setflags(write=False)
    return _BlockCandidates(any_valid, *arrays, count=count, z_min=z_min, z_max=z_max)


def _conflict_bounds(zi: float, gap: float) -> tuple[np.float32, np.float32]:
    """The float32 interval [lo, hi] of the depths v that `draw_points` removes with a point at depth
    `zi` (a float32 value): those with not (|float64(v) - zi| > gap). The test is monotone in v on each
    side of zi, so they form an interval; its ends are found by stepping one float32 at a time."""

    def removed(v: np.float32) -> bool:
        return not (abs(float(v) - zi) > gap)

    ends = []
    for sign in (-1.0, 1.0):
        toward, away = np.float32(sign * -np.inf), np.float32(sign * np.inf)
        v = np.float32(zi + sign * gap)
        while removed(v) and np.isfinite(v):
            v = np.nextafter(v, away)
        while not removed(v):
            v = np.nextafter(v, toward)
        ends.append(v)
    return ends[0], ends[1]


def _draw_block_points(cand: _BlockCandidates, params: DepthJigsawParams, rng: np.random.Generator) -> list[DepthPoint]:
    """`draw_points` on blocks: the same checks, the same calls of `rng`, the same points.

    The alive candidates are the alive blocks' pixels minus the pixels closer than `min_pixel_distance`
    to an accepted point (a pixel mask: at most K discs). A draw counts the alive pixels of each colour
    row, finds the row of the drawn raster index by a cumulative sum, then the column within the row.
    An accepted point kills the blocks whose depth is in its `_conflict_bounds`."""
    k, gap = params.points, params.min_depth_gap
    if not cand.any_valid:
        raise SkipItem("no_valid_depth", f"no pixel has valid depth in [{params.min_depth}, {params.max_depth}] m")
    n = cand.count
    if n < k:
        raise SkipItem(
            "depth_constraints_unsatisfiable",
            f"{n} candidate pixels (in range, inside the border, off depth edges)",
        )
    span = cand.z_max - cand.z_min
    if span <= (k - 1) * gap:
        raise SkipItem(
            "depth_constraints_unsatisfiable",
            f"candidate depths span {span:.3f} m, not more than (K - 1) * {gap} m for K = {k}",
        )
    height, width = len(cand.row_block), len(cand.col_block)
    runs, run_cols = cand.grid.shape
    min_d2 = float(params.min_pixel_distance) ** 2
    reach = int(np.ceil(params.min_pixel_distance))
    offsets = np.arange(-reach, reach + 1)
    disc = (offsets[:, None] ** 2 + offsets[None, :] ** 2).astype(np.float64) < min_d2
    kill = np.empty(cand.grid.shape, dtype=bool)
    widths = cand.col_width.astype(np.float32 if width < 2**24 else np.float64)
    for _ in range(params.max_tries):
        grid = cand.grid.copy()
        flat_grid = grid.ravel()
        row_count = cand.row_count.copy()
        near = np.zeros((height, width), dtype=bool)  # closer than min_pixel_distance to an accepted point
        near_rows, near_blocks = np.zeros(0, np.int64), np.zeros(0, np.int64)  # pixels of `near`
        chosen: list[DepthPoint] = []
        while len(chosen) < k:
            per_row = row_count[cand.row_block]
            if len(near_rows):
                hit = flat_grid[near_blocks]
                per_row = per_row - np.bincount(near_rows[hit], minlength=height)
            ends = np.cumsum(per_row)
            total = int(ends[-1])
            if not total:
                break  # dead end: restart
            u = int(rng.integers(total))
            r = int(np.searchsorted(ends, u, side="right"))
            in_row = grid[cand.row_block[r]][cand.col_block] & ~near[r]
            c = int(np.flatnonzero(in_row)[u - int(ends[r] - per_row[r])])
            zi = float(cand.z_grid[cand.row_block[r], cand.col_block[c]])
            chosen.append(DepthPoint(r, c, zi))
            lo, hi = _conflict_bounds(zi, gap)
            np.greater_equal(cand.z_grid, lo, out=kill)
            kill &= cand.z_grid <= hi
            kill &= grid
            grid &= ~kill
            # Pixels lost per colour row of each row-run: a matrix product, exact as in _block_candidates.
            row_count -= np.rint(kill.astype(widths.dtype) @ widths).astype(np.int64)
            # Pixels: the disc of the accepted point, added to the mask (pixels already in it count once).
            r0, r1, c0, c1 = max(r - reach, 0), min(r + reach + 1, height), max(c - reach, 0), min(c + reach + 1, width)
            patch = disc[r0 - r + reach : r1 - r + reach, c0 - c + reach : c1 - c + reach]
            fresh_rows, fresh_cols = np.nonzero(patch & ~near[r0:r1, c0:c1])
            near[r0:r1, c0:c1] |= patch
            fresh_rows += r0
            fresh_blocks = cand.row_block[fresh_rows] * run_cols + cand.col_block[fresh_cols + c0]
            near_rows = np.concatenate([near_rows, fresh_rows])
            near_blocks = np.concatenate([near_blocks, fresh_blocks])
        if len(chosen) == k:
            return sorted(chosen, key=lambda p: p.depth)
    raise SkipItem(
        "depth_constraints_unsatisfiable",
        f"no {k} points {params.min_pixel_distance:g} px and > {params.min_depth_gap:g} m apart "
        f"in {params.max_tries} tries ({n} candidates)",
    )


_CANDIDATE_CACHE: OrderedDict[tuple[Any, ...], _Candidates | _BlockCandidates] = OrderedDict()
_CANDIDATE_CACHE_ITEMS = 64
_CANDIDATE_CACHE_BYTES = 512 * 2**20
_CANDIDATE_CACHE_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _metres_table(scale: float) -> np.ndarray:
    """float32 metres of every 16-bit value, computed as `mmrl.media.load_depth` does (value / scale in
    float64, then float32); non-decreasing. Read-only."""
    table = (np.arange(2**16, dtype=np.float64) / scale).astype(np.float32)
    table.setflags(write=False)
    return table


def _read_depth(path: Path, scale: float) -> np.ndarray:
    """`mmrl.media.load_depth(path, scale)`, the same float32 metres; a 16-bit PNG (ScanNet, NYU, TUM)
    by a lookup in `_metres_table` instead of float64 arithmetic on every pixel. Other files, and
    missing or broken ones (its clear error), go through `load_depth` itself."""
    from PIL import Image

    from mmrl import media

    if scale > 0:
        try:
            with Image.open(path) as im:
                if im.mode in ("I;16", "I;16B", "I;16L"):
                    return np.take(_metres_table(float(scale)), np.asarray(im).astype(np.uint16))
        except Exception:  # noqa: BLE001 - load_depth below reports what is wrong with the file
            pass
    return media.load_depth(path, scale)


def rgbd_candidates(item: Any, size: tuple[int, int], params: DepthJigsawParams) -> _Candidates | _BlockCandidates:
    """The candidates of an `RGBDItem`'s depth registered to `size` = (width, height), cached per depth
    file (path, mtime, size: a rewritten file is read again), scale and candidate parameters; an LRU of
    at most `_CANDIDATE_CACHE_ITEMS` items and `_CANDIDATE_CACHE_BYTES` (the newest is always kept).
    `mmrl generate` draws sources with replacement, so a hit skips the depth decode and the mask.
    Depth at another size than `size` gives `_BlockCandidates`."""
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
    depth = _read_depth(path, item.depth_scale)
    if depth.shape != (size[1], size[0]):  # registered by blocks, never at the colour resolution
        cand: _Candidates | _BlockCandidates = _block_candidates(depth, size, params)
    else:
        cand = _candidates(register_depth(depth, size), params)
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
