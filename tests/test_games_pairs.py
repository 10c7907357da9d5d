"""Spy-game image pairs: scene pairs differ only at the changed objects, chart pairs are deterministic swaps,
photo folders pair up in both layouts, and bad params or files fail with errors that name them."""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging

import matplotlib
import numpy as np
import pytest
from PIL import Image

from games import charts
from games import pairs as P
from mmrl import scene_render as R
from mmrl import scenes as S
from mmrl.config import field_docs, from_dict
from mmrl.errors import ConfigError, MediaError, MMRLError, SkipItem

SEEDS = range(4)


@functools.cache
def _scene_pair(seed: int, shadows: bool = False, attributes: tuple[str, ...] = ("color", "shape"), n: int = 2):
    params = P.PairParams(shadows=shadows, attributes=attributes, n_changes=n, n_objects=(max(4, n), 6))
    return P.scene_pair(np.random.default_rng(seed), params)


def _renders(pair: P.ImagePair, shadows: bool) -> tuple[R.Rendering, R.Rendering]:
    """Re-render both scenes from their graphs in meta (also checks meta describes the images exactly)."""
    a = R.render(S.Scene.from_graph(pair.meta["scene_original"]), shadows=shadows)
    b = R.render(S.Scene.from_graph(pair.meta["scene_modified"]), shadows=shadows)
    return a, b


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------------
# Scenes


@pytest.mark.parametrize("seed", SEEDS)
def test_scene_pixels_differ_only_inside_changed_objects(seed):
    pair = _scene_pair(seed)
    a, b = _renders(pair, shadows=False)
    assert (a.rgb == np.asarray(pair.original)).all() and (b.rgb == np.asarray(pair.modified)).all()
    ids = [c["object_id"] for c in pair.changes]
    changed = np.isin(a.instance, ids) | np.isin(b.instance, ids)
    diff = (a.rgb != b.rgb).any(-1)
    assert diff.any() and not diff[~changed].any()
    for oid in ids:  # each changed object visibly changed
        assert diff[a.instance == oid].mean() > 0.5


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_scene_with_shadows_differs_only_at_changed_objects_and_their_shadows(seed):
    pair = _scene_pair(seed, shadows=True)
    a, b = _renders(pair, shadows=True)
    a0, b0 = _renders(pair, shadows=False)
    assert (a.rgb == np.asarray(pair.original)).all() and (b.rgb == np.asarray(pair.modified)).all()
    # a pixel is in shadow where shadows change its colour; outside the changed objects, the same surface is
    # hit in both scenes, so only a pixel whose shadow state changed may differ
    shadow_changed = (a.rgb != a0.rgb).any(-1) ^ (b.rgb != b0.rgb).any(-1)
    ids = [c["object_id"] for c in pair.changes]
    allowed = np.isin(a.instance, ids) | np.isin(b.instance, ids) | shadow_changed
    diff = (a.rgb != b.rgb).any(-1)
    assert not diff[~allowed].any()


@pytest.mark.parametrize(
    "attributes, n", [(("color", "shape"), 2), (("color",), 2), (("shape",), 1), (("color", "shape"), 3)]
)
def test_scene_changes_exactly_n_objects_and_the_listed_attributes(attributes, n):
    pair = _scene_pair(5, attributes=attributes, n=n)
    before = {o["id"]: o for o in pair.meta["scene_original"]["objects"]}
    after = {o["id"]: o for o in pair.meta["scene_modified"]["objects"]}
    assert 4 <= len(before) <= 6 and before.keys() == after.keys()
    changed = sorted(i for i in before if before[i] != after[i])
    assert len(pair.changes) == n and changed == sorted(c["object_id"] for c in pair.changes)
    for c in pair.changes:
        old, new = before[c["object_id"]], after[c["object_id"]]
        assert c["before"]["color"] == old["color"]["name"] and c["after"]["shape"] == new["shape"]
        for attr in ("color", "shape"):
            assert (c["before"][attr] != c["after"][attr]) == (attr in attributes)
        assert old["size"] == new["size"] and old["position"][:2] == new["position"][:2] and old["yaw"] == new["yaw"]
        assert c["description"].startswith("The ") and c["description"].endswith(".")
    combos = [(o["size"]["name"], o["color"]["name"], o["shape"]) for o in after.values()]
    assert len(set(combos)) == len(combos)  # "the small red cube" still names one object
    assert pair.kind == "scene" and pair.original.size == pair.modified.size == (320, 240)
    assert ("colour" in pair.difference) == ("color" in attributes)
    json.dumps(pair.meta)  # meta is JSON-able


def test_changed_objects_are_visible_enough_in_both_images():
    params = P.PairParams()
    pair = _scene_pair(1)
    a, b = _renders(pair, shadows=False)
    for c in pair.changes:
        for r in (a, b):
            assert r.visible_fraction[c["object_id"]] >= params.min_visible
            assert (r.instance == c["object_id"]).mean() >= params.min_area


# --------------------------------------------------------------------------------------------------
# Charts


def test_chart_pair_differs_and_same_seed_gives_identical_png():
    params = P.PairParams(kind="chart")
    first = P.draw_pair(params, np.random.default_rng(3), 7)
    # the user's rcParams must not leak into the chart: the default style is forced while drawing
    with matplotlib.rc_context({"lines.linewidth": 6, "axes.facecolor": "black", "font.size": 20}):
        again = P.draw_pair(params, np.random.default_rng(3), 7)
    assert first.id == "chart-7" and first.kind == "chart"
    assert _png(first.original) == _png(again.original) and _png(first.modified) == _png(again.modified)
    assert first.meta == again.meta
    assert first.original.size == (320, 240) and first.original.mode == "RGB"
    assert first.original.tobytes() != first.modified.tobytes()
    json.dumps(first.meta)


@pytest.mark.parametrize("swap", P.CHART_SWAPS)
def test_each_chart_swap_exchanges_two_attributes(swap):
    pair = P.chart_pair(np.random.default_rng(11), P.PairParams(kind="chart", chart_swaps=(swap,), size=(250, 190)))
    old, new = pair.meta["spec_original"], pair.meta["spec_modified"]
    change = pair.changes[0]
    assert change["swap"] == swap and pair.meta["swap"] == change
    assert pair.original.size == pair.modified.size == (250, 190)
    assert np.asarray(pair.original).shape == (190, 250, 3)
    assert pair.original.tobytes() != pair.modified.tobytes()
    keys = {"values": "series", "colors": "colors", "labels": "categories"}
    assert {k for k in old if old[k] != new[k]} == {keys[swap]}  # nothing else changed
    if swap == "values":
        (k,) = [k for k, (s, t) in enumerate(zip(old["series"], new["series"])) if s != t]
        moved = [i for i, (u, v) in enumerate(zip(old["series"][k]["values"], new["series"][k]["values"])) if u != v]
    else:
        moved = [i for i, (u, v) in enumerate(zip(old[keys[swap]], new[keys[swap]])) if u != v]
        k = None
    assert len(moved) == 2
    i, j = moved
    get = (lambda s, m: s["series"][k]["values"][m]) if swap == "values" else (lambda s, m: s[keys[swap]][m])
    assert get(old, i) == get(new, j) and get(old, j) == get(new, i)


def test_chart_spec_render_is_exact_size_for_odd_sizes():
    spec = charts.random_chart_spec(np.random.default_rng(0))
    assert charts.render_chart(spec, (257, 193)).size == (257, 193)


# --------------------------------------------------------------------------------------------------
# Photo folders


def _write(path, color=(200, 30, 30), size=(64, 48), dot=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, color)
    if dot is not None:
        im.putpixel(dot, (0, 255, 0))
    im.save(path)


@pytest.fixture
def photo_folder(tmp_path):
    root = tmp_path / "photos"
    _write(root / "a_original.png")  # released layout
    _write(root / "a_modified.jpg", dot=(3, 3))  # extensions may differ within a pair
    _write(root / "sub" / "b_Original.PNG")
    _write(root / "sub" / "b_modified.png", size=(128, 96), dot=(10, 10))  # same aspect: resized
    _write(root / "set" / "original" / "c.png")  # two-subfolder layout
    _write(root / "set" / "modified" / "c.webp", dot=(5, 5))
    _write(root / "lonely_original.png")  # no counterpart
    _write(root / "set" / "modified" / "d.png")  # no counterpart
    (root / "scene_0001.json").write_text("{}")  # non-image files are ignored
    return root


def test_photo_pairs_both_layouts_and_unmatched_files(photo_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="games.pairs"):
        found = P.photo_pairs(photo_folder)
    assert [(i, o.name, m.name) for i, o, m in found] == [
        ("a", "a_original.png", "a_modified.jpg"),
        ("set/c", "c.png", "c.webp"),
        ("sub/b", "b_Original.PNG", "b_modified.png"),
    ]
    (record,) = caplog.records
    assert "skipped 2 image(s)" in record.getMessage()
    assert "lonely_original.png" in record.getMessage() and "set/modified/d.png" in record.getMessage()

    source = P.pair_source(P.PairParams(kind="photo", photo_folder=str(photo_folder)))
    assert len(source) == 3 and [p.name for p in source.unmatched] == ["lonely_original.png", "d.png"]
    pair = source.draw(np.random.default_rng(0), 0)
    assert pair.id in {"a", "set/c", "sub/b"} and pair.kind == "photo" and pair.changes == []
    again = P.draw_pair(P.PairParams(kind="photo", photo_folder=str(photo_folder)), np.random.default_rng(0), 0)
    assert again.id == pair.id and again.modified.tobytes() == pair.modified.tobytes()


def test_photo_pair_resizes_a_modified_image_of_the_same_aspect(photo_folder):
    item = next(t for t in P.photo_pairs(photo_folder) if t[0] == "sub/b")
    pair = P.photo_pair(item)
    assert pair.original.size == pair.modified.size == (64, 48) and pair.modified.mode == "RGB"
    assert pair.meta["modified_size"] == [128, 96] and pair.meta["modified_path"].endswith("b_modified.png")


def test_photo_pair_errors(tmp_path):
    _write(tmp_path / "ok_original.png")
    _write(tmp_path / "ok_modified.png", dot=(1, 1))
    bad = tmp_path / "bad_modified.png"
    _write(tmp_path / "bad_original.png")
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    _write(tmp_path / "wide_original.png")
    _write(tmp_path / "wide_modified.png", size=(96, 48))
    _write(tmp_path / "same_original.png")
    _write(tmp_path / "same_modified.png")
    items = {t[0]: t for t in P.photo_pairs(tmp_path)}
    with pytest.raises(MediaError, match="bad_modified.png"):
        P.photo_pair(items["bad"])
    with pytest.raises(SkipItem, match="wide_modified.png") as e:
        P.photo_pair(items["wide"])
    assert e.value.reason == "photo_pair_aspect"
    with pytest.raises(SkipItem) as e:
        P.photo_pair(items["same"])
    assert e.value.reason == "photo_pair_identical"
    assert P.photo_pair(items["ok"]).original.size == (64, 48)


def test_photo_folder_without_pairs_or_with_ambiguous_pairs(tmp_path):
    with pytest.raises(MMRLError, match="does not exist"):
        P.photo_pairs(tmp_path / "missing")
    _write(tmp_path / "x_original.png")
    _write(tmp_path / "holiday.png")
    with pytest.raises(MMRLError, match=r"no image pairs.*holiday.png"):
        P.photo_pairs(tmp_path)
    _write(tmp_path / "x_modified.png")
    _write(tmp_path / "x_modified.jpg")
    with pytest.raises(MMRLError, match="'x'.*2 modified images"):
        P.photo_pairs(tmp_path)


# --------------------------------------------------------------------------------------------------
# Entry point, views, params


def test_draw_pair_is_deterministic():
    params = P.PairParams(size=(160, 120))
    a = P.draw_pair(params, np.random.default_rng(42), 3)
    b = P.draw_pair(params, np.random.default_rng(42), 3)
    c = P.draw_pair(params, np.random.default_rng(43), 3)
    assert a.id == b.id == "scene-3" and a.original.size == (160, 120)
    assert _png(a.original) == _png(b.original) and _png(a.modified) == _png(b.modified)
    assert json.dumps(a.meta) == json.dumps(b.meta) and a.changes == b.changes
    assert a.original.tobytes() != c.original.tobytes()


def test_blank_spy_view():
    pair = _scene_pair(0)
    assert pair.spy_image() is pair.modified and pair.spy_image("modified") is pair.modified
    blank = pair.spy_image("blank")
    assert blank.size == pair.original.size and blank.mode == "RGB"
    assert blank.getcolors() == [(320 * 240, P.BLANK_COLOR)]
    with pytest.raises(ValueError, match="spy view"):
        pair.spy_image("original")


@pytest.mark.parametrize(
    "field, value",
    [
        ("kind", "video"),
        ("spy_view", "original"),
        ("size", (32, 240)),
        ("size", (320,)),
        ("n_objects", (6, 4)),
        ("n_objects", (0, 3)),
        ("n_changes", 0),
        ("n_changes", 5),  # more than the fewest objects (4)
        ("attributes", ()),
        ("attributes", ("color", "size")),
        ("attributes", ("color", "color")),
        ("chart_types", ("scatter",)),
        ("chart_swaps", ("titles",)),
        ("min_visible", 0.0),
        ("min_area", 0.7),
    ],
)
def test_bad_params_raise_config_error_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        P.PairParams(**{field: value})


def test_photo_kind_needs_a_folder_and_lists_are_accepted():
    with pytest.raises(ConfigError, match="'photo_folder'"):
        P.PairParams(kind="photo")
    params = P.PairParams(size=[200, 150], n_objects=[4, 5], attributes=["shape"])  # as YAML gives them
    assert params.size == (200, 150) and params.n_objects == (4, 5) and params.attributes == ("shape",)


def test_params_load_from_a_config_mapping_and_every_field_is_documented():
    params = from_dict(P.PairParams, {"kind": "chart", "size": [200, 150], "chart_swaps": ["values"]}, "run.yaml")
    assert params.size == (200, 150) and params.chart_swaps == ("values",)
    with pytest.raises(ConfigError, match="'n_changes'"):
        from_dict(P.PairParams, {"n_changes": 9}, "run.yaml")
    for cls in (P.PairParams, P.ImagePair):
        assert set(field_docs(cls)) == {f.name for f in dataclasses.fields(cls)}
