"""caption_refine (ViPER Stage 1): determinism, the caption's mistakes and the comparer's corrections (applying
the corrections turns the caption's graph into the true one), the caption's rendering, degenerate settings,
bad renders skipped and counted, the reference and baselines, previews."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrl import registry
from mmrl.errors import ConfigError, MMRLError
from mmrl.generate import generate, iter_samples
from mmrl.scene_render import render
from mmrl.scenes import Scene
from mmrl.task import PANEL_MAX_WIDTH
from pretext_tasks.caption_graph import (
    ERROR_KINDS,
    CaptionGraph,
    apply_corrections,
    caption_scene,
    caption_text,
    compare,
    inject_errors,
    scene_graph_caption,
    truthful_caption,
)
from pretext_tasks.caption_refine import CaptionRefine, CaptionRefineParams
from pretext_tasks.viper_scenes import draw_scene, image_columns
from rewards.extract import extract_answer, format_ok

SMALL = {"width": 128, "height": 96}


def task(**params) -> CaptionRefine:
    return CaptionRefine(CaptionRefineParams(**(SMALL | params)))


def samples(t: CaptionRefine, n: int, seed: int = 0) -> list:
    return [s for s, _ in iter_samples(t, t.sources(None), n, seed)]


def test_the_task_is_registered_and_the_same_seed_gives_the_same_sample() -> None:
    assert registry.task_class("caption_refine") is CaptionRefine
    t = task()
    a, b = t.make(3, np.random.default_rng(21)), t.make(3, np.random.default_rng(21))
    assert a.answer == b.answer and json.dumps(a.meta) == json.dumps(b.meta)
    assert np.array_equal(np.asarray(a.media()[0]["image"]), np.asarray(b.media()[0]["image"]))
    assert json.dumps(t.make(3, np.random.default_rng(22)).meta) != json.dumps(a.meta)


def test_the_corrections_turn_the_caption_graph_into_the_true_graph() -> None:
    t = task()
    kinds: Counter = Counter()
    for s in samples(t, 12, seed=4):
        scene = Scene.from_graph(s.meta["scene"])
        caption = CaptionGraph.from_dict(s.meta["caption_graph"])
        corrections = s.meta["corrections"]
        assert s.answer == [c["text"] for c in corrections] and s.answer
        assert s.meta["caption"] in s.messages[0]["content"][-1]["text"]
        fixed = apply_corrections(caption, corrections)
        assert fixed.canonical() == scene_graph_caption(scene, caption.relations).canonical()
        assert compare(scene, fixed) == []  # nothing left to correct
        kinds.update(c["kind"] for c in corrections)
    assert set(kinds) == set(ERROR_KINDS), kinds


def test_each_injected_mistake_gives_its_correction_sentence() -> None:
    p = CaptionRefineParams(**SMALL, objects=(4, 4), relations=1)
    scene = draw_scene(p, 5)
    truth = truthful_caption(scene, np.random.default_rng(0), p)
    assert compare(scene, truth) == [] and truth.count == 4
    cols = image_columns(scene)
    for r in truth.relations:
        assert (cols[r["a"]] < cols[r["b"]]) == (r["side"] == "left")
    for kind, expected in [
        ("color", "is actually"), ("shape", "is actually a"), ("size", "is actually"), ("count", "There are 4 objects"),
        ("relation", "not to the"), ("omission", "The description misses"), ("hallucination", "There is no"),
    ]:  # fmt: skip
        one = CaptionRefineParams(**SMALL, objects=(4, 5), relations=1, error_kinds=(kind,), max_errors=1)
        caption = inject_errors(truth, scene, np.random.default_rng(1), 1, one)
        corrections = compare(scene, caption)
        texts = [c["text"] for c in corrections]
        assert any(expected in x for x in texts), (kind, texts)
        # an omitted or invented object also makes the caption's own count wrong
        assert len(corrections) == (2 if kind in ("omission", "hallucination") else 1), (kind, texts)
        described = {f"{o['size']} {o['color']} {o['shape']}" for o in caption.objects}
        assert len(described) == len(caption.objects)  # every description names one object
        assert caption_text(caption) != caption_text(truth)


def test_the_caption_is_rendered_in_an_order_that_keeps_its_relations() -> None:
    t = task(show_rendering=True)
    (s,) = samples(t, 1, seed=8)
    image, rendering = (item["image"] for item in s.media())
    caption = CaptionGraph.from_dict(s.meta["caption_graph"])
    drawn = caption_scene(caption, 128, 96)
    assert np.array_equal(render(drawn).rgb, np.asarray(rendering))
    assert sorted(o.describe() for o in drawn.objects) == sorted(
        f"{o['size']} {o['color']} {o['shape']}" for o in caption.objects
    )
    x = {o.describe(): o.position[0] for o in drawn.objects}
    for r in caption.relations:
        a, b = (f"{caption.obj(r[k])['size']} {caption.obj(r[k])['color']} {caption.obj(r[k])['shape']}" for k in "ab")
        assert (x[a] < x[b]) == (r["side"] == "left")
    assert "drawn from the description" in s.messages[0]["content"][-1]["text"]


def test_degenerate_and_invalid_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="degenerate setting"):
        CaptionRefineParams(error_kinds=("count",), objects=(4, 4))
    CaptionRefineParams(error_kinds=("count",), objects=(3, 6))  # the count varies: many answers
    for bad, match in [
        ({"min_errors": 0}, "min_errors"),
        ({"error_kinds": ("typo",)}, "error_kinds"),
        ({"error_kinds": ("relation",), "relations": 0}, "relations"),
        ({"objects": (0, 3)}, "objects"),
        ({"width": 8}, "width"),
    ]:
        with pytest.raises(ConfigError, match=match):
            CaptionRefineParams(**bad)


def test_blank_renders_are_skipped_and_counted() -> None:
    t = task(width=64, height=48, min_image_std=500.0)
    skipped: Counter = Counter()
    with pytest.raises(MMRLError, match="blank_render"):
        list(iter_samples(t, t.sources(None), 1, 0, skipped))
    assert skipped == Counter({"blank_render": 50})


def test_reference_baselines_evidence_and_previews(tmp_path: Path) -> None:
    t = task()
    (s,) = samples(t, 1, seed=6)
    ref = t.reference_completion(s)
    assert format_ok(ref) and extract_answer(ref).splitlines() == s.answer
    r = t.random_answer(s, np.random.default_rng(3))
    assert r == t.random_answer(s, np.random.default_rng(3)) and format_ok(r)
    assert format_ok(t.constant_answer(s))
    (panel,) = t.evidence(s)
    assert panel.image.width <= PANEL_MAX_WIDTH
    report = generate("caption_refine", n=3, out=tmp_path / "d", params=SMALL, preview=2, progress=False)
    sheets = sorted((tmp_path / "d" / "preview").glob("*.png"))
    assert report.written == 3 and len(sheets) == 2 and Image.open(sheets[0]).height > 300


def test_the_reward_ranks_the_corrections_above_a_wrong_one_above_nonsense() -> None:
    pytest.importorskip("rewards.statements")
    t = task()
    for s in samples(t, 3, seed=10):
        ref = t.reference_completion(s)
        other = t.random_answer(s, np.random.default_rng(0))
        nonsense = "<think>x</think><answer>The weather is sunny today.</answer>"
        scores = [t.reward(c, s).score for c in (ref, other, nonsense)]
        assert scores[0] > scores[2] and scores[0] >= scores[1], scores
