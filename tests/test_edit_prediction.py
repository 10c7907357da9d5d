"""edit_prediction (ViPER Stage 2): determinism, exact ground truth (replaying the recorded edits gives the
after-scene and its pixels), compositions on distinct objects, degenerate settings, bad renders skipped and
counted, the reference and baselines, previews, and (slow) the tiny two-stage recipe trained end to end."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrl import registry
from mmrl.errors import ConfigError, MMRLError, SkipItem
from mmrl.generate import generate, iter_samples
from mmrl.scene_edits import EDIT_KINDS, apply_edit
from mmrl.scene_render import render, visible_fractions
from mmrl.scenes import COLORS, Scene
from mmrl.task import PANEL_MAX_WIDTH, score_group
from pretext_tasks import edit_prediction
from pretext_tasks.edit_prediction import EditPrediction, EditPredictionParams
from pretext_tasks.viper_scenes import check_image, statements_reply
from rewards.embedding import default_embedder
from rewards.extract import extract_answer, format_ok
from rewards.statements import StatementRewardParams, statement_reward

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"width": 128, "height": 96}


def task(**params) -> EditPrediction:
    return EditPrediction(EditPredictionParams(**(SMALL | params)))


def samples(t: EditPrediction, n: int, seed: int = 0) -> list:
    return [s for s, _ in iter_samples(t, t.sources(None), n, seed)]


def pixels(item) -> np.ndarray:
    return np.asarray(item["image"].convert("RGB"))


def test_the_task_is_registered_and_the_same_seed_gives_the_same_sample() -> None:
    assert registry.task_class("edit_prediction") is EditPrediction
    assert edit_prediction.EDIT_KINDS == EDIT_KINDS  # spelled out there so the module does not load open3d
    t = task()
    a, b = t.make(7, np.random.default_rng(11)), t.make(7, np.random.default_rng(11))
    c = t.make(7, np.random.default_rng(12))
    assert a.answer == b.answer and json.dumps(a.meta) == json.dumps(b.meta)
    assert all(np.array_equal(pixels(x), pixels(y)) for x, y in zip(a.media(), b.media()))
    assert json.dumps(a.meta) != json.dumps(c.meta)


def test_replaying_the_answers_edits_gives_the_after_scene_and_its_pixels() -> None:
    t = task()
    for s in samples(t, 6, seed=3):
        before, after = (pixels(m) for m in s.media())
        scene = Scene.from_graph(s.meta["scene_before"])
        assert np.array_equal(render(scene).rgb, before)
        for edit in s.meta["edits"]:
            scene = apply_edit(scene, edit)
        assert scene.to_graph() == s.meta["scene_after"]
        assert np.array_equal(render(scene).rgb, after)
        assert s.answer == [e["description"] for e in s.meta["edits"]]
        assert not np.array_equal(before, after)


def test_compositions_edit_distinct_objects_that_stay_visible() -> None:
    t = task(min_edits=3, max_edits=3, objects=(4, 6))
    seen = Counter()
    for s in samples(t, 5, seed=1):
        edits = s.meta["edits"]
        assert len(edits) == 3 == len(s.answer)
        assert len({e["object_id"] for e in edits}) == 3
        after = Scene.from_graph(s.meta["scene_after"])
        vis = visible_fractions(after)
        for e in edits:
            seen[e["kind"]] += 1
            if e["after"] is not None:
                assert vis[e["object_id"]] >= t.params.min_visible, e
            if e["before"] is not None:  # named as it looks in the first image
                b = e["before"]
                assert f"{b['size']['name']} {b['color']['name']} {b['shape']}" in e["description"]
    assert len(seen) >= 4, seen  # the kinds mix


def test_degenerate_and_invalid_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="degenerate setting"):
        EditPredictionParams(kinds=("remove",), shapes=("cube",), colors=("red",), sizes=("small", "large"),
                             objects=(1, 1), max_edits=1)  # fmt: skip
    for bad, match in [
        ({"min_edits": 0}, "min_edits"),
        ({"kinds": ("explode",)}, "kinds"),
        ({"max_edits": 4, "objects": (3, 5), "kinds": ("recolor",)}, "max_edits"),
        ({"backend": "dalle"}, "backend"),
        ({"colors": ("red", "mauve")}, "colors"),
    ]:
        with pytest.raises(ConfigError, match=match):
            EditPredictionParams(**bad)


def test_blank_and_nan_generator_outputs_are_skipped_and_counted() -> None:
    with pytest.raises(SkipItem) as blank:
        check_image(np.full((32, 32, 3), 200, np.uint8), "after image", 4.0)
    assert blank.value.reason == "blank_render"
    nan = np.zeros((8, 8, 3), np.float32)
    nan[2, 3, 1] = np.nan
    with pytest.raises(SkipItem) as bad:
        check_image(nan, "edited image", 4.0)
    assert bad.value.reason == "nan_image"
    assert check_image(np.random.default_rng(0).random((8, 8, 3)), "x", 4.0).size == (8, 8)  # a float image in [0, 1]
    # A threshold no real render reaches: every draw is a blank render, counted, and the loop stops with the count.
    t = task(width=64, height=48, min_image_std=500.0)
    skipped: Counter = Counter()
    with pytest.raises(MMRLError, match="blank_render"):
        list(iter_samples(t, t.sources(None), 1, 0, skipped))
    assert skipped == Counter({"blank_render": 50})


def test_reference_and_baselines_have_the_reply_format() -> None:
    t = task()
    (s,) = samples(t, 1, seed=5)
    ref = t.reference_completion(s)
    assert format_ok(ref) and ref.startswith("<think>")
    assert extract_answer(ref).splitlines() == s.answer
    r1, r2 = t.random_answer(s, np.random.default_rng(0)), t.random_answer(s, np.random.default_rng(0))
    assert r1 == r2 and format_ok(r1) and len(extract_answer(r1).splitlines()) == len(s.answer)
    assert format_ok(t.constant_answer(s))
    no_think = task(think=False)
    (s2,) = samples(no_think, 1, seed=5)
    assert not no_think.reference_completion(s2).startswith("<think>")
    assert "Think inside" not in s2.messages[0]["content"][-1]["text"]


def test_evidence_and_previews_are_written(tmp_path: Path) -> None:
    t = task()
    (s,) = samples(t, 1, seed=2)
    (panel,) = t.evidence(s)
    assert panel.image.width <= PANEL_MAX_WIDTH and "operation" in panel.title
    report = generate("edit_prediction", n=3, out=tmp_path / "d", params=SMALL, preview=2, progress=False)
    sheets = sorted((tmp_path / "d" / "preview").glob("*.png"))
    assert report.written == 3 and len(sheets) == 2
    assert Image.open(sheets[0]).height > 300


def test_the_reward_ranks_the_truth_above_a_wrong_attribute_above_nonsense() -> None:
    pytest.importorskip("rewards.statements")
    t = task()
    for s in samples(t, 3, seed=9):
        ref = t.reference_completion(s)
        wrong = statements_reply(with_a_wrong_colour(s.answer), "I compare.", True)
        nonsense = "<think>x</think><answer>The weather is sunny today.</answer>"
        scores = [t.reward(c, s).score for c in (ref, wrong, nonsense)]
        assert scores[0] > scores[1] >= scores[2], scores


def test_a_group_is_scored_as_each_completion_alone_and_a_raising_group_falls_back() -> None:
    t = task()
    s = samples(t, 1, seed=3)[0]
    group = [t.reference_completion(s), statements_reply(with_a_wrong_colour(s.answer), "x", True), "junk", ""]
    alone = [statement_reward(c, s.answer, default_embedder(), StatementRewardParams()) for c in group]
    assert [r.score for r in t.reward_group(group, s)] == pytest.approx([r.score for r in alone])

    class Broken(EditPrediction):
        def reward_group(self, completions, sample):
            raise RuntimeError("batch failed")

    scored = score_group(Broken(t.params), group, s)
    assert [r.score for r, _ in scored] == pytest.approx([r.score for r in alone]) and scored[0][0].score > 0.9


def with_a_wrong_colour(sentences: list[str]) -> list[str]:
    """The sentences with the first colour word of the first one swapped for another colour."""
    first = sentences[0]
    colour = next(w for w in re.findall(r"[a-z]+", first) if w in COLORS)
    other = "green" if colour != "green" else "red"
    return [re.sub(rf"\b{colour}\b", other, first, count=1), *sentences[1:]]


@pytest.mark.slow
def test_the_tiny_two_stage_recipe_trains_both_tasks(tmp_path: Path) -> None:
    """configs/viper_tiny.yaml, shortened: stage 1 (caption_refine) then stage 2 (edit_prediction); the metrics
    log a reward for each task, in its own window only."""
    pytest.importorskip("rewards.statements")
    from mmrl.cli import main

    out = tmp_path / "run"
    main(["train", "--config", str(ROOT / "configs" / "viper_tiny.yaml"), f"train.out_dir={out}", "train.steps=4",
          "data.sources.0.steps=[0,2]", "data.sources.1.steps=[2,4]", "data.prompts_per_step=2", "rollout.n=2",
          "data.eval_samples=2", "data.eval_k=0", "train.cold_start=false", "train.eval_every=0",
          "train.save_every=4", "rollout.max_new_tokens=48", "log.progress=false"])  # fmt: skip
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in rows if "reward/caption_refine" in r or "reward/edit_prediction" in r}
    # metrics rows count optimiser steps from 1: window [0, 2) is rows 1 and 2
    assert {s for s, r in steps.items() if "reward/caption_refine" in r} == {1, 2}, steps.keys()
    assert {s for s, r in steps.items() if "reward/edit_prediction" in r} == {3, 4}, steps.keys()
    assert not any(r.get("reward_errors") for r in rows)  # both rewards scored every completion


def test_the_diffusers_backend_edits_the_scene_image_and_answers_its_instructions() -> None:
    """The tiny random-init instruction editor (built locally) behind the task: its output repaints most pixels,
    hence the open changed-area bound; the answer is exactly the instructions applied, naming scene objects."""
    t = task(backend="diffusers", diffusion={"max_changed_area": 1.0, "size": 32}, min_edits=1, max_edits=3)
    for s in samples(t, 2, seed=4):
        before, after = (item for item in s.messages[0]["content"] if item["type"] == "image")
        b, a = pixels(before), pixels(after)
        assert b.shape != a.shape or not np.array_equal(b, a)
        assert 1 <= len(s.answer) <= 3 and all(a.endswith(".") for a in s.answer)
        for sentence in s.answer:  # a recolour never names the colour its object already has
            if sentence.startswith("Change the colour of"):
                named, colour = re.match(r"Change the colour of (.+) to (\w+)\.", sentence).groups()
                assert colour not in named.split(), sentence
        assert t.reward(t.reference_completion(s), s).score > 0.95
