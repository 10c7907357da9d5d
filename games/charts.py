"""Charts for the spy game's chart pairs: a JSON-able spec, its deterministic matplotlib rendering, and
one swap of two attributes (Vision-Zero's chart data swaps two attributes of a chart's spec and
re-renders it; Wang et al. 2025, arXiv 2509.25541; docs/vision_zero.md). Our specs are seeded, not extracted
from ChartQA; `games.pairs.chart_pair` turns two of them into an image pair.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from games.config import CHART_TYPES

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
    n_colors = len(categories) if colors_by_category({"type": kind, "series": [None] * n_series}) else n_series
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


def colors_by_category(spec: dict[str, Any]) -> bool:
    """Pies and single-series bar charts colour each category; other charts colour each series."""
    return spec["type"] == "pie" or (spec["type"] == "bar" and len(spec["series"]) == 1)


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


def chart_swap(spec: dict[str, Any], kind: str, rng: np.random.Generator) -> tuple[dict[str, Any], dict] | None:
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
        by_category = colors_by_category(spec)
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


__all__ = ["CHART_COLORS", "chart_swap", "colors_by_category", "random_chart_spec", "render_chart"]
