"""Image pairs for the "Who is the spy" game (`spy`, Vision-Zero): civilians see `original`, the spy sees
`modified` (or, with `spy_view: blank`, a blank picture of the same size).

Three kinds, as in the paper's data (sheet §6):

* `scene`: a procedural 3D scene (`mmrl.scenes`, ray-cast on the CPU) in which `n_changes` visible objects
  are replaced at the same positions: every attribute in `attributes` (colour, shape) gets a new value,
  always different from the old one, with every (size, colour, shape) in the scene kept distinct. Camera
  and light are unchanged, so the changed objects are the only differences: without shadows, pixels differ
  only inside the changed objects' masks (original or modified); with shadows (the default, as in CLEVR),
  also where their shadows changed. Rendered on the fly, ~70 ms per pair at 320x240 on one CPU core.
* `chart`: a bar, line or pie chart drawn with matplotlib (Agg, fixed dpi, no metadata) from a small
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

from mmrl import media
from mmrl.errors import MMRLError, SkipItem
from mmrl.game_config import CHART_SWAPS, CHART_TYPES, SCENE_ATTRIBUTES, PairKind, PairParams, SpyView

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
"""`ImagePair.difference` per kind: the general kind of difference the game prompt may state (sheet §2)."""

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
    from mmrl import scenes  # open3d loads here, not when the run config imports `PairParams`

    width, height = params.size
    min_pixels = params.min_area * width * height
    for _ in range(_SCENE_TRIES):
        try:
            scene = scenes.random_scene(rng, n_objects=params.n_objects, width=width, height=height)
        except ValueError:  # objects could not be placed (crowded small image): draw another scene
            continue
        before = scenes.render(scene, shadows=params.shadows)
        area = _areas(before.instance)

        def shows(r: scenes.Rendering, oid: int, area: dict[int, int]) -> bool:
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
            after = scenes.render(new_scene, shadows=params.shadows)
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

# Hex values of a common 10-colour categorical palette, under plain names a model can say back.
CHART_COLORS: dict[str, str] = {
    "blue": "#1f77b4",
    "orange": "#ff7f0e",
    "green": "#2ca02c",
    "red": "#d62728",
    "purple": "#9467bd",
    "brown": "#8c564b",
    "pink": "#e377c2",
    "grey": "#7f7f7f",
    "olive": "#bcbd22",
    "cyan": "#17becf",
}

# (title, x label, y label, categories in their natural order, series names, value range)
_THEMES: tuple[tuple[str, str, str, tuple[str, ...], tuple[str, ...], tuple[int, int]], ...] = (
    ("Monthly rainfall", "Month", "Rainfall (mm)",
     ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
     ("Lisbon", "Oslo", "Cairo", "Lima"), (5, 120)),
    ("Crates of fruit sold", "Fruit", "Crates",
     ("Apples", "Pears", "Plums", "Cherries", "Grapes", "Melons", "Figs"), ("2021", "2022", "2023"), (4, 60)),
    ("Electricity by source", "Source", "TWh",
     ("Coal", "Gas", "Solar", "Wind", "Hydro", "Nuclear"), ("North", "South", "East"), (3, 90)),
    ("Club members by sport", "Sport", "Members",
     ("Tennis", "Rowing", "Chess", "Judo", "Cycling", "Climbing"), ("Juniors", "Adults", "Seniors"), (8, 140)),
    ("Visitors per weekday", "Day", "Visitors (thousands)",
     ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"), ("Museum", "Zoo", "Library"), (2, 40)),
    ("Books borrowed by genre", "Genre", "Loans",
     ("Crime", "Fantasy", "History", "Poetry", "Science", "Travel"), ("Spring", "Summer", "Autumn"), (10, 95)),
)  # fmt: skip


def random_chart_spec(rng: np.random.Generator, types: Sequence[str] = CHART_TYPES) -> dict[str, Any]:
    """A JSON-able chart spec: `type`, `title`, `x_label`, `y_label`, `categories`, `series` (list of
    {`name`, `values`}; integers), `colors` (names from CHART_COLORS: one per category for pies and
    single-series bars, else one per series) and `show_values` (bars: print each value above its bar)."""
    kind = types[int(rng.integers(len(types)))]
    title, x_label, y_label, pool, names, (lo, hi) = _THEMES[int(rng.integers(len(_THEMES)))]
    n_cat = int(rng.integers(3, 7)) if kind != "line" else int(rng.integers(4, 8))
    categories = [pool[int(i)] for i in np.sort(rng.choice(len(pool), size=min(n_cat, len(pool)), replace=False))]
    n_series = 1 if kind == "pie" else int(rng.integers(1, min(3, len(names)) + 1))
    series = [
        {"name": names[int(i)], "values": [int(v) for v in rng.integers(lo, hi + 1, size=len(categories))]}
        for i in np.sort(rng.choice(len(names), size=n_series, replace=False))
    ]
    n_colors = len(categories) if _colors_by_category({"type": kind, "series": [None] * n_series}) else n_series
    palette = list(CHART_COLORS)
    colors = [palette[int(i)] for i in rng.choice(len(palette), size=n_colors, replace=False)]
    return {
        "type": kind,
        "title": title,
        "x_label": x_label,
        "y_label": y_label,
        "categories": categories,
        "series": series,
        "colors": colors,
        "show_values": bool(kind == "bar" and rng.random() < 0.5),
    }


def _colors_by_category(spec: dict[str, Any]) -> bool:
    """Pies and single-series bar charts colour each category; other charts colour each series."""
    return spec["type"] == "pie" or (spec["type"] == "bar" and len(spec["series"]) == 1)


def _or_list(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def render_chart(spec: dict[str, Any], size: tuple[int, int] = (320, 240)) -> Image.Image:
    """Draw `spec` (see `random_chart_spec`) as an RGB image of exactly `size` (width, height).

    Deterministic: matplotlib's object API on an Agg canvas (pyplot and the user's backend untouched), the
    default style whatever the user's matplotlibrc says, fixed dpi, bundled DejaVu fonts, pixels read from
    the canvas (no file metadata)."""
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = size
    scale = min(width / 320, height / 240)  # fonts and lines grow with the image; laid out for 320x240
    dpi = 100
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
        canvas = FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        fs = 7 * scale
        colors = [CHART_COLORS[c] for c in spec["colors"]]
        cats, series = spec["categories"], spec["series"]
        if spec["type"] == "pie":
            ax.pie(
                series[0]["values"],
                labels=cats,
                colors=colors,
                autopct="%1.0f%%",
                startangle=90,
                counterclock=False,
                textprops={"fontsize": fs},
                wedgeprops={"linewidth": 0.8 * scale, "edgecolor": "white"},
            )
            ax.set_aspect("equal")
        elif spec["type"] == "bar":
            x = np.arange(len(cats))
            w = 0.8 / len(series)
            for k, s in enumerate(series):
                c = colors if len(series) == 1 else colors[k]
                bars = ax.bar(x + (k - (len(series) - 1) / 2) * w, s["values"], w, color=c, label=s["name"])
                if spec["show_values"]:
                    ax.bar_label(bars, fontsize=fs * 0.85, padding=1)
            ax.set_xticks(x, cats)
        else:  # line
            for k, s in enumerate(series):
                ax.plot(cats, s["values"], color=colors[k], marker="o", markersize=3 * scale,
                        linewidth=1.5 * scale, label=s["name"])  # fmt: skip
        if spec["type"] != "pie":
            ax.set_xlabel(spec["x_label"], fontsize=fs)
            ax.set_ylabel(spec["y_label"], fontsize=fs)
            ax.tick_params(labelsize=fs)
            ax.margins(y=0.12)
            if len(series) > 1:
                ax.legend(fontsize=fs * 0.9, loc="best")
        ax.set_title(spec["title"], fontsize=fs * 1.2)
        canvas.draw()
        rgba = np.asarray(canvas.buffer_rgba())
    image = Image.fromarray(np.ascontiguousarray(rgba[..., :3]))
    if image.size != (width, height):  # float inches * dpi can round a pixel short
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    return image


def _chart_swap(spec: dict[str, Any], kind: str, rng: np.random.Generator) -> tuple[dict[str, Any], dict] | None:
    """`spec` with one pair of attributes swapped, and the change; None if `spec` admits no such swap."""
    new = {**spec, "categories": list(spec["categories"]), "colors": list(spec["colors"]),
           "series": [{**s, "values": list(s["values"])} for s in spec["series"]]}  # fmt: skip
    cats = spec["categories"]
    if kind == "values":
        options = [
            (k, i, j)
            for k, s in enumerate(spec["series"])
            for i, j in itertools.combinations(range(len(cats)), 2)
            if s["values"][i] != s["values"][j]
        ]
        if not options:
            return None
        k, i, j = options[int(rng.integers(len(options)))]
        vals = new["series"][k]["values"]
        vals[i], vals[j] = vals[j], vals[i]
        name = spec["series"][k]["name"]
        return new, {
            "swap": "values",
            "series": name,
            "categories": [cats[i], cats[j]],
            "before": [spec["series"][k]["values"][i], spec["series"][k]["values"][j]],
            "after": [vals[i], vals[j]],
            "description": f"The values of {cats[i]} and {cats[j]}"
            + (f" in series {name}" if len(spec["series"]) > 1 else "")
            + f" were swapped ({cats[i]}: {vals[j]} -> {vals[i]}, {cats[j]}: {vals[i]} -> {vals[j]}).",
        }
    if kind == "colors":
        colors = new["colors"]
        if len(colors) < 2:
            return None  # a single-series line chart has one colour
        i, j = (int(v) for v in rng.choice(len(colors), size=2, replace=False))
        colors[i], colors[j] = colors[j], colors[i]
        by_category = _colors_by_category(spec)
        owners = cats if by_category else [s["name"] for s in spec["series"]]
        what = "slices" if spec["type"] == "pie" else ("bars" if by_category else "series")
        return new, {
            "swap": "colors",
            "items": [owners[i], owners[j]],
            "before": [spec["colors"][i], spec["colors"][j]],
            "after": [colors[i], colors[j]],
            "description": f"The colours of the {what} {owners[i]} and {owners[j]} were swapped "
            f"({owners[i]} is now {colors[i]}, {owners[j]} is now {colors[j]}).",
        }
    i, j = (int(v) for v in rng.choice(len(cats), size=2, replace=False))
    new["categories"][i], new["categories"][j] = cats[j], cats[i]
    return new, {
        "swap": "labels",
        "positions": [i, j],
        "before": [cats[i], cats[j]],
        "after": [cats[j], cats[i]],
        "description": f"The labels {cats[i]} and {cats[j]} were swapped.",
    }


def chart_pair(rng: np.random.Generator, params: PairParams, *, pair_id: str = "chart") -> ImagePair:
    """A random chart and the same chart with one swap of two attributes (kind drawn from `chart_swaps`
    among those the chart admits), both drawn at `params.size`."""
    for _ in range(_CHART_TRIES):
        spec = random_chart_spec(rng, params.chart_types)
        kinds = list(params.chart_swaps)
        for k in rng.permutation(len(kinds)):
            out = _chart_swap(spec, kinds[int(k)], rng)
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
    "CHART_COLORS",
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
    "random_chart_spec",
    "render_chart",
    "scene_pair",
]
