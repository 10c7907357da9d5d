"""Image pairs for the "Who is the spy" game (`spy`, Vision-Zero): civilians see `original`, the spy sees
`modified` (or, with `spy_view: blank`, a blank picture of the same size).

Three kinds, as in the paper's data (docs/vision_zero.md):

* `scene`: a procedural 3D scene (`mmrl.scenes`, ray-cast on the CPU) in which `n_changes` visible objects
  are replaced at the same positions: every attribute in `attributes` (colour, shape) gets a new value,
  always different from the old one, with every (size, colour, shape) in the scene kept distinct. Camera
  and light are unchanged, so the changed objects are the only differences: without shadows, pixels differ
  only inside the changed objects' masks (original or modified); with shadows (the default, as in CLEVR),
  also where their shadows changed. Rendered on the fly, ~70 ms per pair at 320x240 on one CPU core.
* `chart`: a bar, line or pie chart drawn with matplotlib (`games.charts`: Agg, fixed dpi, no metadata) from a small
  JSON-able spec; one swap of two attributes (two values, two colours or two category labels) gives the
  modified chart (the paper swaps two attributes of a spec extracted from a ChartQA chart; ours are seeded).
* `photo`: a user's (original, edited) photo pairs from a folder (see `photo_pairs` for the layouts).

`ImagePair.difference` is the general kind of difference, safe to state in the game prompt (the prompt
must not say which objects changed); the specifics are in `ImagePair.changes` (one dict per change with a
`description`) and `meta` (scene graphs or chart specs before and after).

Randomness comes only from the `numpy.random.Generator` passed in: the same params and the same seed give
the same pair, byte for byte (`draw_pair`).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from games.charts import chart_swap, random_chart_spec, render_chart
from games.config import CHART_SWAPS, CHART_TYPES, SCENE_ATTRIBUTES, PairKind, PairParams, SpyView
from mmrl import media
from mmrl.errors import MMRLError, SkipItem

if TYPE_CHECKING:
    from mmrl import scene_edits as edits
    from mmrl import scenes

log = logging.getLogger(__name__)


BLANK_COLOR = (128, 128, 128)
"""The blank spy view: uniform mid-grey, not white, so it cannot pass for an empty chart (charts are drawn
on white) and carries no brightness bias."""


DIFFERENCES = {
    "scene": "{n} objects were replaced by different objects at the same positions ({what})",
    "chart": "two attributes of the chart were swapped with each other ({what})",
    "photo": "some objects or parts of the picture were edited",
}
"""`ImagePair.difference` per kind: the general kind of difference the game prompt may state (docs/vision_zero.md)."""

_SCENE_TRIES = 20  # fresh scenes before giving up (each fails only if too few objects are visible enough)
_PICK_TRIES = 5  # choices of objects/new values per scene (a pick fails if a changed object ends up hidden)
_CHART_TRIES = 50  # chart specs drawn until one admits a requested swap (e.g. "colors" needs >= 2 colours)
_MAX_ASPECT_CHANGE = 0.1  # photo pairs: relative aspect-ratio mismatch beyond which resizing would distort


# --------------------------------------------------------------------------------------------------
# Pairs and parameters


@dataclass(frozen=True)
class ImagePair:
    id: str
    """`scene-<index>`, `chart-<index>` for generated pairs; the pair's name in its folder for photos."""
    original: Image.Image
    """RGB: what the civilians see."""
    modified: Image.Image
    """RGB, same size as `original`: what the spy sees with `spy_view: modified`."""
    kind: PairKind
    """`scene`, `chart` or `photo`."""
    difference: str
    """The general kind of difference (e.g. "2 objects were replaced ... (new colour and shape)"), to be
    stated in the prompt; never names the changed objects."""
    changes: list[dict[str, Any]] = field(default_factory=list)
    """One dict per change, each with a one-sentence `description`; empty for photos (edits unknown)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """JSON-able details: scene graphs / chart specs before and after, photo paths."""

    def spy_image(self, view: SpyView = "modified") -> Image.Image:
        """The spy's picture: `modified`, or `blank`, a uniform mid-grey (`BLANK_COLOR`) image of the same size."""
        if view == "modified":
            return self.modified
        if view == "blank":
            return Image.new("RGB", self.original.size, BLANK_COLOR)
        raise ValueError(f"spy view must be 'modified' or 'blank', got {view!r}")


# --------------------------------------------------------------------------------------------------
# (a) Procedural scenes


def scene_pair(rng: np.random.Generator, params: PairParams, *, pair_id: str = "scene") -> ImagePair:
    """A random scene and the same scene with `params.n_changes` visible objects replaced in place.

    A changed object is at least `min_visible` unoccluded and covers at least `min_area` of the image in both
    renders, so the change can be seen. Raises `SkipItem("no_scene_pair")` if no such pair is found in
    `_SCENE_TRIES` scenes (only with extreme params, e.g. a tiny image and a large `min_area`)."""
    from mmrl import scene_render, scenes  # open3d loads here, not when the run config imports `PairParams`

    width, height = params.size
    min_pixels = params.min_area * width * height
    for _ in range(_SCENE_TRIES):
        try:
            scene = scenes.random_scene(rng, n_objects=params.n_objects, width=width, height=height)
        except ValueError:  # objects could not be placed (crowded small image): draw another scene
            continue
        before = scene_render.render(scene, shadows=params.shadows)
        area = _areas(before.instance)

        def shows(r: scene_render.Rendering, oid: int, area: dict[int, int]) -> bool:
            return r.visible_fraction.get(oid, 0.0) >= params.min_visible and area.get(oid, 0) >= min_pixels

        candidates = [o for o in scene.objects if shows(before, o.id, area)]
        if len(candidates) < params.n_changes:
            continue
        for _ in range(_PICK_TRIES):
            picks = rng.choice(len(candidates), size=params.n_changes, replace=False)
            out = _replace_objects(scene, [candidates[int(i)] for i in picks], params.attributes, rng)
            if out is None:
                continue
            new_scene, made, changes = out
            after = scene_render.render(new_scene, shadows=params.shadows)
            area_after = _areas(after.instance)
            if not all(shows(after, c["object_id"], area_after) for c in changes):
                continue  # e.g. a cube became a flat torus hidden behind its neighbour
            what = " and ".join({"color": "new colour", "shape": "new shape"}[a] for a in SCENE_ATTRIBUTES
                                if a in params.attributes)  # fmt: skip
            return ImagePair(
                id=pair_id,
                original=Image.fromarray(before.rgb),
                modified=Image.fromarray(after.rgb),
                kind="scene",
                difference=DIFFERENCES["scene"].format(n=_number(len(changes)), what=what),
                changes=changes,
                meta={
                    "scene_original": before.graph,
                    "scene_modified": after.graph,
                    "edits": [e.to_dict() for e in made],
                    "shadows": params.shadows,
                },
            )
    raise SkipItem("no_scene_pair", f"no scene with {params.n_changes} visible, changeable objects in {_SCENE_TRIES}")


def _areas(instance: np.ndarray) -> dict[int, int]:
    ids, counts = np.unique(instance[instance >= 0], return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts)}


def _number(n: int) -> str:
    return ("no", "one", "two", "three", "four", "five")[n] if n <= 5 else str(n)


def _replace_objects(
    scene: scenes.Scene, targets: Sequence[scenes.SceneObject], attributes: Sequence[str], rng: np.random.Generator
) -> tuple[scenes.Scene, list[edits.Edit], list[dict[str, Any]]] | None:
    """Give each target a new value for every attribute in `attributes` (always different from its old one),
    keeping every (size, colour, shape) in the scene distinct; None when a target has no valid new value
    (every candidate shape would overlap a neighbour)."""
    from mmrl import scene_edits as edits
    from mmrl import scenes

    made: list[edits.Edit] = []
    changes: list[dict[str, Any]] = []
    for old in targets:
        taken = {(o.size, o.color, o.shape) for o in scene.objects}
        colors = [c for c in scenes.COLORS if c != old.color] if "color" in attributes else [old.color]
        shapes = [s for s in scenes.SHAPES if s != old.shape] if "shape" in attributes else [old.shape]
        options = [(c, s) for c, s in itertools.product(colors, shapes) if (old.size, c, s) not in taken]
        for k in rng.permutation(len(options)):
            color, shape = options[int(k)]
            try:
                # reshape can fail (a cube's footprint is wider and may touch a neighbour); recolor cannot
                new_scene, steps = scene, []
                if shape != old.shape:
                    new_scene, e = edits.reshape(new_scene, old.id, shape)
                    steps.append(e)
                if color != old.color:
                    new_scene, e = edits.recolor(new_scene, old.id, color)
                    steps.append(e)
            except ValueError:
                continue
            new = new_scene.object(old.id)
            scene = new_scene
            made += steps
            changes.append(
                {
                    "object_id": old.id,
                    "attributes": [a for a in SCENE_ATTRIBUTES if a in attributes],
                    "before": {"size": old.size, "color": old.color, "shape": old.shape},
                    "after": {"size": new.size, "color": new.color, "shape": new.shape},
                    "position": list(old.position[:2]),
                    "description": f"The {old.describe()} became a {new.describe()}.",
                }
            )
            break
        else:
            return None
    return scene, made, changes


# --------------------------------------------------------------------------------------------------
# (b) Charts


def _or_list(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def chart_pair(rng: np.random.Generator, params: PairParams, *, pair_id: str = "chart") -> ImagePair:
    """A random chart and the same chart with one swap of two attributes (kind drawn from `chart_swaps`
    among those the chart admits), both drawn at `params.size`."""
    for _ in range(_CHART_TRIES):
        spec = random_chart_spec(rng, params.chart_types)
        kinds = list(params.chart_swaps)
        for k in rng.permutation(len(kinds)):
            out = chart_swap(spec, kinds[int(k)], rng)
            if out is not None:
                break
        else:
            continue  # e.g. only "colors" requested and a one-line chart drawn
        new_spec, change = out
        what = _or_list([{"values": "two values", "colors": "two colours", "labels": "two labels"}[k] for k in kinds])
        return ImagePair(
            id=pair_id,
            original=render_chart(spec, params.size),
            modified=render_chart(new_spec, params.size),
            kind="chart",
            difference=DIFFERENCES["chart"].format(what=what),
            changes=[change],
            meta={"spec_original": spec, "spec_modified": new_spec, "swap": change},
        )
    raise SkipItem("no_chart_pair", f"no chart of types {params.chart_types} admits swaps {params.chart_swaps}")


# --------------------------------------------------------------------------------------------------
# (c) Photo pairs from a folder


def photo_pairs(folder: str | Path) -> list[tuple[str, Path, Path]]:
    """(id, original, modified) for every pair of images under `folder` (recursive, sorted by id).

    Layouts (both may appear in one folder; extensions .png, .jpg, .jpeg, .webp and the others of
    `mmrl.media.IMAGE_EXTENSIONS`, case-insensitive, may differ within a pair):

    * `{base}_original.ext` next to `{base}_modified.ext` (the released Vision-Zero layout); id `{base}`
      with its subfolder, e.g. `cats/c01`;
    * `original/NAME.ext` + `modified/NAME.ext`, sibling folders at any depth; id `NAME` prefixed by the
      folder holding them, e.g. `set1/NAME`.

    Images without a counterpart are skipped, counted and named in one warning (a stray file should not stop a
    training run over a thousand pairs); non-image files are ignored. Raises MMRLError if the folder does not
    exist, holds no pair at all (the message lists unmatched files), or a pair is ambiguous (two files for one
    side, e.g. `a_original.png` and `a_original.jpg`)."""
    pairs, unmatched = _scan_photo_folder(folder)
    _warn_unmatched(folder, unmatched)
    return pairs


def _warn_unmatched(folder: str | Path, unmatched: list[Path]) -> None:
    if unmatched:
        root = Path(folder).expanduser()
        shown = ", ".join(p.relative_to(root).as_posix() for p in unmatched[:10])
        more = f" and {len(unmatched) - 10} more" if len(unmatched) > 10 else ""
        log.warning("photo pairs: skipped %d image(s) under %s without a counterpart: %s%s",
                    len(unmatched), root, shown, more)  # fmt: skip


def _scan_photo_folder(folder: str | Path) -> tuple[list[tuple[str, Path, Path]], list[Path]]:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise MMRLError(f"photo pair folder {root} does not exist")
    images = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in media.IMAGE_EXTENSIONS)
    sides: dict[str, dict[str, list[Path]]] = {}  # id -> {"original": [...], "modified": [...]}
    unmatched: list[Path] = []
    for p in images:
        rel = p.relative_to(root)
        parts = [q.lower() for q in rel.parts[:-1]]
        # innermost original/ or modified/ folder with its sibling present: the two-subfolder layout
        k = next(
            (i for i in range(len(parts) - 1, -1, -1)
             if parts[i] in ("original", "modified")
             and (root.joinpath(*rel.parts[:i]) / ("modified" if parts[i] == "original" else "original")).is_dir()),
            None,
        )  # fmt: skip
        if k is not None:
            key = Path(*rel.parts[:k], *rel.parts[k + 1 :]).with_suffix("").as_posix()
            side = parts[k]
        else:
            stem = p.stem.lower()
            side = next((s for s in ("original", "modified") if stem.endswith("_" + s)), "")
            if not side:
                unmatched.append(p)
                continue
            key = rel.with_name(p.stem[: -len(side) - 1]).as_posix()
        sides.setdefault(key, {"original": [], "modified": []})[side].append(p)
    pairs = []
    for key, got in sorted(sides.items()):
        for side, paths in got.items():
            if len(paths) > 1:
                raise MMRLError(f"photo pair {key!r} under {root} has {len(paths)} {side} images: "
                                f"{', '.join(str(q) for q in paths)}; keep one")  # fmt: skip
        if got["original"] and got["modified"]:
            pairs.append((key, got["original"][0], got["modified"][0]))
        else:
            unmatched += got["original"] + got["modified"]
    unmatched.sort()
    if not pairs:
        listed = ", ".join(p.relative_to(root).as_posix() for p in unmatched[:10]) or "no images at all"
        raise MMRLError(
            f"no image pairs under {root}: expected {{base}}_original.png + {{base}}_modified.png, or "
            f"original/NAME.png + modified/NAME.png; unmatched: {listed}"
        )
    return pairs, unmatched


def photo_pair(item: tuple[str, Path, Path]) -> ImagePair:
    """Load one (id, original, modified) item of `photo_pairs`.

    An edited image of another size is resized (Lanczos) to the original's size, since image editors often
    return their own resolution; `meta["modified_size"]` keeps its size. If the aspect ratios differ by more
    than 10 %, raises `SkipItem("photo_pair_aspect")`: stretching would itself give the spy away. Identical
    images (a failed edit) raise `SkipItem("photo_pair_identical")`; an unreadable file raises MediaError
    naming it."""
    pair_id, original_path, modified_path = item
    original = media.load_image(original_path)
    modified = media.load_image(modified_path)
    (w, h), (mw, mh) = original.size, modified.size
    if (mw, mh) != (w, h):
        if abs((mw / mh) / (w / h) - 1) > _MAX_ASPECT_CHANGE:
            raise SkipItem(
                "photo_pair_aspect", f"{modified_path} is {mw}x{mh} but its original {original_path} is {w}x{h}"
            )
        modified = modified.resize((w, h), Image.Resampling.LANCZOS)
    elif original.tobytes() == modified.tobytes():
        raise SkipItem("photo_pair_identical", f"{modified_path} is pixel-identical to {original_path}")
    return ImagePair(
        id=pair_id,
        original=original,
        modified=modified,
        kind="photo",
        difference=DIFFERENCES["photo"],
        changes=[],
        meta={"original_path": str(original_path), "modified_path": str(modified_path), "modified_size": [mw, mh]},
    )


# --------------------------------------------------------------------------------------------------
# The entry point for the game producer


@dataclass
class PairSource:
    """Draws pairs of one kind; lists a photo folder once. Build with `pair_source(params)`."""

    params: PairParams
    photos: list[tuple[str, Path, Path]] = field(default_factory=list)
    """Photo pairs found in `params.photo_folder` (empty for generated kinds)."""
    unmatched: list[Path] = field(default_factory=list)
    """Images in the photo folder without a counterpart (skipped, logged once)."""

    def draw(self, rng: np.random.Generator, index: int) -> ImagePair:
        """Pair number `index` (used in the id of generated pairs); every random choice is drawn from `rng`,
        so the same params and seed give the same pair, byte for byte. Photos: a uniform random pair."""
        kind = self.params.kind
        if kind == "scene":
            return scene_pair(rng, self.params, pair_id=f"scene-{index}")
        if kind == "chart":
            return chart_pair(rng, self.params, pair_id=f"chart-{index}")
        return photo_pair(self.photos[int(rng.integers(len(self.photos)))])

    def __len__(self) -> int:
        """Number of distinct photo pairs; 0 for generated kinds (unbounded)."""
        return len(self.photos)


def pair_source(params: PairParams) -> PairSource:
    """The pair source the game producer holds: for photos, lists `params.photo_folder` now (see `photo_pairs`)."""
    if params.kind != "photo":
        return PairSource(params)
    pairs, unmatched = _scan_photo_folder(params.photo_folder)
    _warn_unmatched(params.photo_folder, unmatched)
    return PairSource(params, pairs, unmatched)


def draw_pair(params: PairParams, rng: np.random.Generator, index: int = 0) -> ImagePair:
    """One pair: `pair_source(params).draw(rng, index)`. Lists a photo folder on every call: a producer
    drawing many photo pairs should hold a `PairSource`."""
    return pair_source(params).draw(rng, index)


__all__ = [
    "BLANK_COLOR",
    "CHART_SWAPS",
    "CHART_TYPES",
    "DIFFERENCES",
    "SCENE_ATTRIBUTES",
    "ImagePair",
    "PairParams",
    "PairSource",
    "chart_pair",
    "draw_pair",
    "pair_source",
    "photo_pair",
    "photo_pairs",
    "scene_pair",
]
