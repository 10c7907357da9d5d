"""referring_grounding and object_detection on procedural scenes: determinism, unique expressions, rewards of the
reference and the baselines, evidence, `mmrl generate`, degenerate settings, and the producer's budget guard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmrl import registry
from mmrl.cli import main
from mmrl.config import RunConfig, load_config
from mmrl.errors import ConfigError, MMRLError, SkipItem
from mmrl.models import load_processor
from mmrl.producers import TaskProducer
from mmrl.sample import read_dataset
from mmrl.scene_render import render
from mmrl.scenes import Scene
from pretext_tasks.referring import Expression, Geometry, RelationMargins, resolve
from rewards.boxes import answer_boxes

TASKS = ("referring_grounding", "object_detection")


def draw(task, n: int, seed: int = 0):
    samples, skips = [], 0
    for i in range(n + 20):
        if len(samples) == n:
            break
        try:
            samples.append(task.make(i, np.random.default_rng([seed, i])))
        except SkipItem:
            skips += 1
    assert len(samples) == n, f"{skips} skips"
    return samples


@pytest.fixture(scope="module")
def made():
    return {name: draw(registry.get_task(name), 16) for name in TASKS}


def image_bytes(sample) -> bytes:
    return sample.messages[0]["content"][0]["image"].tobytes()


@pytest.mark.parametrize("name", TASKS)
def test_same_seed_same_bytes(name, made):
    again = draw(registry.get_task(name), 4)
    for a, b in zip(made[name][:4], again):
        assert image_bytes(a) == image_bytes(b)
        assert json.dumps([a.answer, a.meta, a.messages[0]["content"][1]], sort_keys=True) == json.dumps(
            [b.answer, b.meta, b.messages[0]["content"][1]], sort_keys=True
        )
    other = registry.get_task(name).make(0, np.random.default_rng([1, 0]))
    assert image_bytes(other) != image_bytes(made[name][0])


def test_every_expression_is_unique_on_its_scene():
    task = registry.get_task("referring_grounding", relation_share=0.7)
    samples = draw(task, 40, seed=3)
    relations = 0
    for s in samples:
        scene = Scene.from_graph(s.meta["scene"])
        expression = Expression.from_dict(s.meta["expression_parts"])
        assert expression.text == s.meta["expression"] and expression.text in s.messages[0]["content"][1]["text"]
        held, unclear = resolve(expression, scene, task.params.margins)
        assert held == [s.meta["target_id"]] and unclear == [], (s.meta["expression"], held, unclear)
        # The answer is the target's visible box in a fresh render of the stored scene graph.
        assert list(render(scene).boxes[s.meta["target_id"]]) == s.answer["box"]
        if expression.relation is not None:
            relations += 1
            anchor = s.meta["keep_ids"][1]
            geo = Geometry.of(scene)
            if expression.relation != "nearest to":  # the target clears the margin; distractors are on the other side
                assert geo.signed(expression.relation, s.meta["target_id"], anchor, task.params.margins) >= 1.0
            # A relation is only used where the target's own description fits another object too.
            assert sum(expression.target.fits(o) for o in scene.objects) > 1
    assert relations >= 5  # with relation_share 0.7 many expressions use one


def test_resolve_rejects_an_ambiguous_relation():
    """Two cubes either side of a sphere: 'the cube left of the sphere' is unique only when the other cube
    is not also left of it; placed level with the sphere's column it is ambiguous-free, moved left it is not."""
    from mmrl.scenes import Camera, place_object

    camera = Camera.look_at((0.0, -6.0, 3.0), (0.0, 0.0, 0.2), 224, 168, 55.0)
    sphere = place_object(0, "sphere", "red", "medium", (0.0, 0.0))
    left_cube = place_object(1, "cube", "blue", "medium", (-1.5, 0.0))
    expr = Expression.from_dict({"target": {"shape": "cube"}, "relation": "left of", "anchor": {"shape": "sphere"}})
    right_cube = place_object(2, "cube", "green", "medium", (1.5, 0.0))
    assert resolve(expr, Scene((sphere, left_cube, right_cube), camera)) == ([1], [])
    slightly_left = place_object(2, "cube", "green", "medium", (-0.2, 1.0))  # left of the sphere, but barely
    held, unclear = resolve(expr, Scene((sphere, left_cube, slightly_left), camera), RelationMargins())
    assert held == [1] and unclear == [2]


@pytest.mark.parametrize("name", TASKS)
def test_reference_scores_one_and_baselines_score_below(name, made):
    task = registry.get_task(name)
    rng = np.random.default_rng(0)
    ref, rand, const = [], [], []
    for s in made[name]:
        ref.append(task.reward(task.reference_completion(s), s).score)
        rand.append(task.reward(task.random_answer(s, rng), s).score)
        const.append(task.reward(task.constant_answer(s), s).score)
    assert ref == [1.0] * len(ref)
    assert np.mean(rand) < 0.5 and np.mean(const) < 0.5, (np.mean(rand), np.mean(const))


@pytest.mark.parametrize("name", TASKS)
def test_meta_contract(name, made):
    for s in made[name]:
        m = s.meta
        assert m["image_size"] == list(s.messages[0]["content"][0]["image"].size)
        assert m["coords"] == "qwen2.5-vl" and m["model_size"] == [224, 168]  # 224x168 is a multiple of 28
        assert "in pixels of the image as you see it, 224x168" in s.messages[0]["content"][1]["text"]
        assert set(m["keep_ids"]) >= set(m["label_ids"])
        assert [o["id"] for o in m["scene"]["objects"]] and isinstance(m["params"], dict)
        labels = [label for label, _ in answer_boxes(s.answer)]
        shapes = {o["id"]: o["shape"] for o in m["scene"]["objects"]}
        assert labels == [shapes[i] for i in m["label_ids"]]
        if name == "object_detection":
            assert set(labels) <= set(m["categories"])


@pytest.mark.parametrize("name", TASKS)
def test_evidence_panels_are_deterministic(name, made):
    task = registry.get_task(name)
    s = made[name][0]
    panels = task.evidence(s)
    assert panels and panels[0].image.width <= 1060
    assert panels[0].image.tobytes() == task.evidence(s)[0].image.tobytes()
    if name == "referring_grounding":
        assert s.meta["expression"] in panels[0].title


@pytest.mark.parametrize("coords", ["qwen2-vl", "qwen3-vl"])
def test_grid_families_state_the_grid(coords):
    task = registry.get_task("referring_grounding", coords=coords)
    s = draw(task, 1)[0]
    text = s.messages[0]["content"][1]["text"]
    assert "0-1000 grid" in text and f"{s.meta['model_size'][0]}x{s.meta['model_size'][1]} pixels" in text
    assert task.reward(task.reference_completion(s), s).score == 1.0
    payload = json.loads(task.reference_completion(s).removeprefix("<answer>").removesuffix("</answer>"))
    assert all(isinstance(v, int) and 0 <= v <= 1000 for v in payload)


def test_degenerate_and_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="degenerate.*empty_share"):
        registry.get_task("object_detection", empty_share=0.6)
    with pytest.raises(ConfigError, match="objects"):
        registry.get_task("referring_grounding", objects=[1, 4])
    with pytest.raises(ConfigError, match="coords"):
        registry.get_task("referring_grounding", coords="qwen9-vl")
    with pytest.raises(ConfigError, match="categories_per_prompt"):
        registry.get_task("object_detection", categories_per_prompt=[3, 1])
    with pytest.raises(ConfigError, match="raw"):
        registry.get_task("referring_grounding", answer_mode="raw", think=True)


def test_object_detection_empty_answers_happen_at_about_empty_share():
    task = registry.get_task("object_detection", empty_share=0.5)
    samples = draw(task, 40, seed=7)
    empty = sum(not s.answer["objects"] for s in samples)
    assert 8 <= empty <= 32  # Binomial(40, 0.5) is inside this with probability > 0.9999


@pytest.mark.parametrize("name", TASKS)
def test_generate_cli_with_preview(name, tmp_path: Path):
    out = tmp_path / name
    assert main(["generate", "--task", name, "--n", "8", "--preview", "8", "--out", str(out), "--quiet"]) == 0
    samples = read_dataset(out)
    assert len(samples) == 8 and len(list((out / "preview").glob("*.png"))) == 8
    task = registry.get_task(name)
    assert all(task.reward(task.reference_completion(s), s).score == 1.0 for s in samples)


def test_producer_refuses_a_pixel_budget_mismatch():
    """A sample generated for one pixel budget, encoded by a processor with another, must not train."""
    cfg = load_config(RunConfig, None, ["data.sources=[{task: referring_grounding, params: {max_pixels: 12544}}]"])
    processor = load_processor(cfg.model)
    with pytest.raises(MMRLError, match=r"min_pixels.*max_pixels=12544.*model\.min_pixels"):
        TaskProducer(cfg, processor).prepare(0, 0, 0)
    # With the model's budget the same draw passes, and the grid families never depend on it.
    for params in ("{}", "{max_pixels: 12544, coords: qwen2-vl}"):
        ok = load_config(RunConfig, None, [f"data.sources=[{{task: referring_grounding, params: {params}}}]"])
        assert TaskProducer(ok, processor).prepare(0, 0, 0).sample.meta["model_size"]


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("mode", ["boxed", "raw"])
def test_other_answer_modes_and_think(name, mode):
    task = registry.get_task(name, answer_mode=mode, think=mode != "raw")
    s = draw(task, 1)[0]
    reference = task.reference_completion(s)
    assert task.reward(reference, s).score == 1.0
    if mode == "boxed":
        assert reference.startswith("<think>") and "\\boxed{" in reference
        assert "<think></think>" in s.messages[0]["content"][1]["text"]
