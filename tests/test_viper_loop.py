"""ViPER's closed loop (`caption_refine` with `captioner: policy`; pretext_tasks/viper_loop.py,
mmrl/dataserver/closed_loop.py): the caption parser reads the procedural captioner's captions back, the
scene-graph diff of a policy-style caption corrects it into the true scene, the pool is the same for the same
weights and seed and its Samples carry the policy's captions, the refresh schedule, and (slow) a short
training run that refreshes and resumes after a kill with the same pool."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmrl.config import RunConfig, load_config
from mmrl.dataserver.closed_loop import ClosedLoopProducer, PolicyRoles, refresh_point, uses_task_pools
from mmrl.errors import ConfigError, MMRLError, SkipItem
from mmrl.rollout import make_engine
from mmrl.scenes import Scene
from pretext_tasks.caption_graph import (
    CaptionGraph,
    apply_corrections,
    caption_text,
    compare,
    inject_errors,
    scene_graph_caption,
    truthful_caption,
)
from pretext_tasks.caption_refine import CaptionRefine, CaptionRefineParams
from pretext_tasks.viper_loop import align, build_pool, parse_caption
from pretext_tasks.viper_scenes import draw_scene, image_columns

SMALL = {"width": 128, "height": 96}
LOOP = {**SMALL, "captioner": "policy", "think": False, "pool_size": 3, "caption_max_new_tokens": 16}


def triple(o) -> tuple:
    return (o["size"], o["color"], o["shape"])


def says_the_scene(graph: CaptionGraph, scene: Scene) -> bool:
    """Whether `graph` describes exactly the scene's objects, with true relation sides and, when it states a count,
    the true count (an unstated count is not corrected)."""
    objects, count, relations = graph.canonical()
    truth = scene_graph_caption(scene, graph.relations).canonical()
    return (objects, relations) == (truth[0], truth[2]) and count in (None, len(scene.objects))


def scenes(n: int, params: CaptionRefineParams):
    for seed in range(n):
        try:
            yield seed, draw_scene(params, seed)
        except SkipItem:
            continue


def test_the_parser_reads_back_every_procedural_caption() -> None:
    p = CaptionRefineParams(**SMALL, relations=2)
    checked = 0
    for seed, scene in scenes(30, p):
        rng = np.random.default_rng(seed)
        graph = inject_errors(truthful_caption(scene, rng, p), scene, rng, 2, p)
        parsed = parse_caption(caption_text(graph))
        assert [triple(o) for o in parsed.objects] == [triple(o) for o in graph.objects]
        assert parsed.count == graph.count and parsed.unparsed == []
        relations = [(triple(parsed.objects[a]), triple(parsed.objects[b]), side) for a, b, side in parsed.relations]
        assert relations == [(triple(graph.obj(r["a"])), triple(graph.obj(r["b"])), r["side"]) for r in graph.relations]
        checked += 1
    assert checked >= 25


def test_free_text_is_read_as_far_as_the_vocabulary_goes() -> None:
    parsed = parse_caption(
        "I can see two red cubes and a large sphere!\nThe red cube is to the right of the sphere. What a nice day."
    )
    assert [triple(o) for o in parsed.objects] == [
        (None, "red", "cube"),
        (None, "red", "cube"),
        ("large", None, "sphere"),
    ]
    assert parsed.count is None and parsed.relations == [(0, 2, "right")]
    assert parsed.unparsed == ["What a nice day."]
    assert parse_caption("There are three objects: an orange torus and 2 small tori.").count == 3
    assert len(parse_caption("There are three objects: an orange torus and 2 small tori.").objects) == 3
    assert parse_caption("qz blorp 7 ~~").objects == []


def test_the_diff_of_a_policy_caption_corrects_it_into_the_true_scene() -> None:
    p = CaptionRefineParams(**SMALL, objects=(3, 5))
    kinds, checked = set(), 0
    for _, scene in scenes(16, p):
        cols = image_columns(scene)
        unique = [o for o in scene.objects if sum((d.color, d.shape) == (o.color, o.shape) for d in scene.objects) == 1]
        if not unique:
            continue
        a = unique[0]
        b = next(o for o in scene.objects if o is not a)
        side = "left" if cols[a.id] < cols[b.id] else "right"
        flipped = "right" if side == "left" else "left"
        wrong = next(c for c in p.colors if c != b.color and (b.size, c, b.shape) not in
                     {(o.size, o.color, o.shape) for o in scene.objects})  # fmt: skip
        # A policy-style caption: an object without its size, one with a wrong colour, maybe an invented one, a
        # flipped relation, a wrong count; the other objects left out.
        text = (f"There are {len(scene.objects) + 2} objects. I see a {a.color} {a.shape} and a {b.size} {wrong} "
                f"{b.shape}, and a large white torus floats above. The {a.color} {a.shape} is to the {flipped} of the "
                f"{b.size} {wrong} {b.shape}.")  # fmt: skip
        graph = align(parse_caption(text), scene)
        corrections = compare(scene, graph)
        kinds |= {c["kind"] for c in corrections}
        fixed = apply_corrections(graph, corrections)
        assert fixed.canonical() == scene_graph_caption(scene, fixed.relations).canonical(), text  # count stated
        assert compare(scene, fixed) == []
        texts = [c["text"] for c in corrections]
        assert f"The {a.color} {a.shape} is {a.size}." in texts
        assert f"The {b.size} {wrong} {b.shape} is actually {b.color}, not {wrong}." in texts
        assert (
            f"The {a.color} {a.shape} is to the {side} of the {b.size} {wrong} {b.shape}, not to the {flipped}."
            in texts
        )
        checked += 1
    assert checked >= 8 and {"detail", "color", "omission", "count", "relation"} <= kinds


def test_closed_loop_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="captioner"):
        CaptionRefineParams(captioner="teacher")
    with pytest.raises(ConfigError, match="refresh_every"):
        CaptionRefineParams(captioner="policy", refresh_every=-1)
    with pytest.raises(ConfigError, match="backend: diffusers"):
        CaptionRefineParams(captioner="policy", loop_images="photos")


def test_the_refresh_schedule_counts_from_the_stage_boundary() -> None:
    assert [refresh_point(t, 0, 3) for t in range(7)] == [0, 0, 0, 3, 3, 3, 6]
    assert [refresh_point(t, 5, 2) for t in (5, 6, 7, 9)] == [5, 5, 7, 9]
    assert [refresh_point(t, 4, 0) for t in (4, 10, 100)] == [4, 4, 4]


def loop_config(*overrides: str, **params) -> RunConfig:
    return load_config(RunConfig, None, [
        "data.sources.0.task=caption_refine", f"data.sources.0.params={json.dumps(LOOP | params)}",
        "rollout.n=2", "rollout.max_new_tokens=8", "data.prompts_per_step=2", "data.eval_samples=0",
        *overrides])  # fmt: skip


def test_same_weights_and_seed_give_the_same_pool_and_its_samples_carry_the_policy_captions(policy) -> None:
    cfg = loop_config()
    roles = PolicyRoles(make_engine(cfg.rollout, *policy), policy[1], cfg.model)
    params = CaptionRefineParams(**LOOP)
    pool, counts = build_pool(params, roles, (7, 0, 3, 0))
    again, _ = build_pool(params, roles, (7, 0, 3, 0))
    other, _ = build_pool(params, roles, (7, 0, 3, 1))
    assert json.dumps(pool) == json.dumps(again) and json.dumps(pool) != json.dumps(other)
    assert counts["built"] == 3 and counts["kept"] == len(pool) >= 1
    for entry in pool:
        scene = draw_scene(params, entry["where"]["scene_seed"])
        graph = CaptionGraph.from_dict(entry["caption_graph"])
        assert isinstance(entry["caption"], str) and entry["caption"]  # the random policy's own words
        assert says_the_scene(apply_corrections(graph, entry["corrections"]), scene)

    task = CaptionRefine(params)
    task.pool, task.pool_step = pool, 0
    task.serving = True
    served = task.make(0, np.random.default_rng(1))
    entry = next(e for e in pool if e["caption"] == served.meta["caption"])
    assert served.meta["captioner"] == "policy" and served.answer == [c["text"] for c in entry["corrections"]]
    assert entry["caption"] in served.messages[0]["content"][-1]["text"]
    assert (
        Scene.from_graph(served.meta["scene"]).to_graph() == draw_scene(params, entry["where"]["scene_seed"]).to_graph()
    )
    assert task.reward(task.reference_completion(served), served).score == pytest.approx(1.0)
    (panel,) = task.evidence(served)  # the preview: the image next to the drawn caption, the corrections
    assert panel.image.width > 0
    task.serving = False  # held-out and cold-start draws: the procedural captioner
    assert task.make(0, np.random.default_rng(1)).meta["captioner"] == "procedural"


def test_make_producer_builds_the_closed_loop_only_for_a_policy_captioner(policy) -> None:
    from mmrl.producers import TaskProducer, make_producer

    assert type(make_producer(loop_config(), policy[1])) is ClosedLoopProducer
    assert type(make_producer(loop_config(captioner="procedural"), policy[1])) is TaskProducer
    with pytest.raises(MMRLError, match="does not combine with dataserver.enabled"):
        make_producer(loop_config("dataserver.enabled=true", "dataserver.backend=inprocess"), policy[1])


def test_the_producer_refreshes_on_schedule_and_trains_on_the_policy_captions(policy) -> None:
    cfg = loop_config(refresh_every=2)
    assert uses_task_pools(cfg) and not uses_task_pools(load_config(RunConfig))
    engine = make_engine(cfg.rollout, *policy)
    producer = ClosedLoopProducer(cfg, policy[1])
    task = producer.sources[0].task
    refreshed = []
    for step in range(3):
        rollouts, metrics = producer.produce(engine, step)
        refreshed.append("loop/caption_refine/refreshes" in metrics)
        assert ("time/loop_refresh" in metrics) == refreshed[-1]
        captions = {e["caption"] for e in task.pool}
        assert all(any(c in r.prompt.text for c in captions) for r in rollouts)
        assert task.pool_step == (0 if step < 2 else 2) and not task.serving
    assert refreshed == [True, False, True]
    state = producer.state_dict()
    fresh = ClosedLoopProducer(cfg, policy[1])
    fresh.load_state_dict(json.loads(json.dumps(state)))
    assert fresh.sources[0].task.pool == task.pool and fresh.sources[0].task.pool_step == 2


@pytest.mark.slow
def test_a_closed_loop_run_refreshes_and_a_killed_run_resumes_with_the_same_pool(tmp_path) -> None:
    import mmrl.grpo.trainer as trainer
    from mmrl.grpo.checkpoint import latest_checkpoint
    from mmrl.grpo.state_json import from_json
    from mmrl.logging import read_metrics

    def run(out, *extra: str) -> None:
        trainer.train(loop_config(f"train.out_dir={out}", "train.save_every=1", "train.keep_checkpoints=10",
                                  "algorithm.entropy_coef=0.01", "log.progress=false", "log.tensorboard=false",
                                  "log.plot=false", *extra, refresh_every=2))  # fmt: skip

    def pools(out) -> dict:
        state = from_json(json.loads((latest_checkpoint(out) / "producer_state.json").read_text()))
        return state["task_pools"]

    run(tmp_path / "full", "train.steps=4")
    metrics = read_metrics(tmp_path / "full")
    assert [m.get("loop/caption_refine/refreshes") for m in metrics if m["step"] > 0] == [1.0, None, 2.0, None]
    run(tmp_path / "killed", "train.steps=1")  # what a kill after the first checkpoint leaves
    run(tmp_path / "killed", "train.steps=4", "train.resume=auto")
    assert json.dumps(pools(tmp_path / "full")) == json.dumps(pools(tmp_path / "killed"))
    full, resumed = (json.dumps(pools(tmp_path / k)) for k in ("full", "killed"))
    assert '"pool_step": 2' in full and full == resumed
    again = read_metrics(tmp_path / "killed")
    assert [m["reward/mean"] for m in again if m["step"] > 1] == [m["reward/mean"] for m in metrics if m["step"] > 1]


def test_the_diffusers_loop_captions_photos_and_keeps_the_corrections_both_critic_samples_state(policy) -> None:
    cfg = loop_config()
    roles = PolicyRoles(make_engine(cfg.rollout, *policy), policy[1], cfg.model)
    diffusers = {**LOOP, "width": 64, "height": 48, "backend": "diffusers", "loop_images": "photos", "pool_size": 2,
                 "diffusion": {"size": 32, "critic_max_new_tokens": 10, "device": "cpu"}}  # fmt: skip
    # τ = -1 without the slot check: the matcher accepts every pair, so each item keeps its first correction
    agree = CaptionRefineParams(**diffusers, reward={"tau": -1.0, "slot_check": False})
    pool, counts = build_pool(agree, roles, (3, 1))
    assert counts["kept"] == len(pool) == 2 and all(len(e["corrections"]) == 1 for e in pool)
    assert all("photo" in e["where"] and e["caption"] for e in pool)
    # τ near 1: two samples of a random policy never say the same thing; every item is dropped and counted
    strict = CaptionRefineParams(**diffusers, reward={"tau": 0.9999})
    none, dropped = build_pool(strict, roles, (3, 1))
    assert none == [] and dropped["no_corrections"] == 2
    task = CaptionRefine(agree)
    task.pool, task.pool_step, task.serving = pool, 0, True
    sample = task.make(5, np.random.default_rng(0))
    entry = next(e for e in pool if e["caption"] == sample.meta["caption"])
    assert sample.answer == [entry["corrections"][0]["text"]] and sample.meta["where"] == entry["where"]
    assert sample.media()[0]["image"].size[0] <= 64 and "scene" not in sample.meta
