"""TaskProducer with the real tiny model and HF engine: mixtures, datasets, bad samples,
dynamic sampling and replay."""

from collections import Counter

import numpy as np
import pytest
from PIL import Image
from tiny_runs import ParityTask, write_task_dataset

from mmrl.config import DataSource, RunConfig, load_config
from mmrl.contracts import Rollout
from mmrl.errors import ConfigError, SkipItem
from mmrl.producers import TaskProducer
from mmrl.registry import get_task, register
from mmrl.rollout import make_engine
from mmrl.video import write_video


@register("test_parity")
class ProducerParityTask(ParityTask):
    """`ParityTask` (tests/tiny_runs.py) on 32-pixel images."""


def config(*overrides: str) -> RunConfig:
    return load_config(RunConfig, None, ["rollout.n=4", "rollout.max_new_tokens=6", "data.prompts_per_step=4",
                                         *overrides])  # fmt: skip


def test_weighted_mixture_of_live_tasks(policy):
    cfg = config()
    cfg.data.sources = [DataSource(task="dominant_color", weight=3.0), DataSource(task="test_parity", weight=1.0)]
    producer = TaskProducer(cfg, policy[1])
    tasks = Counter(producer.prepare(step, 0, slot).sample.task for step in range(50) for slot in range(4))
    share = tasks["dominant_color"] / sum(tasks.values())
    assert 0.65 < share < 0.85, tasks
    # The draw is a pure function of (seed, step, slot) and the source counters: a fresh producer repeats it.
    first, second = TaskProducer(cfg, policy[1]), TaskProducer(cfg, policy[1])
    assert [first.prepare(0, 0, s).sample.id for s in range(4)] == [second.prepare(0, 0, s).sample.id for s in range(4)]


def test_step_windows_make_stages_and_heldout_draws_from_every_stage(policy):
    cfg = config("train.steps=10")
    cfg.data.sources = [DataSource(task="dominant_color", steps=[0, 4]), DataSource(task="test_parity", steps=[4, 10])]
    producer = TaskProducer(cfg, policy[1])
    stages = {step: {producer.prepare(step, 0, slot).sample.task for slot in range(4)} for step in range(10)}
    assert all(stages[step] == {"dominant_color"} for step in range(4)), stages
    assert all(stages[step] == {"test_parity"} for step in range(4, 10)), stages
    assert {p.sample.task for p in producer.heldout(16)} == {"dominant_color", "test_parity"}
    # A step no window covers is a config error, found when the config is loaded, not mid-run.
    with pytest.raises(ConfigError, match="step 4 has none"):
        load_config(RunConfig, None, ["train.steps=6", "data.sources=[{task: dominant_color, steps: [0, 4]}]"])
    with pytest.raises(ConfigError, match="steps"):
        load_config(RunConfig, None, ["data.sources=[{task: dominant_color, steps: [3, 3]}]"])


def test_dataset_source_visits_every_sample_once_per_epoch_and_skips_bad_ones(policy, tmp_path):
    write_task_dataset(get_task("dominant_color"), 6, tmp_path / "ds")
    (tmp_path / "ds" / "media" / "s3_0.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    cfg = config()
    cfg.data.sources = [DataSource(task="dominant_color", path=str(tmp_path / "ds"))]
    producer = TaskProducer(cfg, policy[1])
    drawn = [producer.prepare(0, 0, slot).sample.id for slot in range(5)]
    assert sorted(drawn) == ["s0", "s1", "s2", "s4", "s5"]  # one epoch, the corrupt one skipped
    assert producer.stats["skipped_samples"] == 1
    state = producer.state_dict()
    fresh = TaskProducer(cfg, policy[1])
    fresh.load_state_dict(state)
    assert [fresh.prepare(1, 0, s).sample.id for s in range(3)] == [
        producer.prepare(1, 0, s).sample.id for s in range(3)
    ]


def produce_parity(policy, *overrides: str) -> tuple[list[Rollout], dict[str, float]]:
    """Rollouts and metrics of step 0 of a producer that draws from test_parity alone."""
    model, processor = policy
    cfg = config(*overrides)
    cfg.data.sources = [DataSource(task="test_parity")]
    return TaskProducer(cfg, processor).produce(make_engine(cfg.rollout, model, processor), step=0)


def test_produce_groups_rewards_and_advantages(policy):
    rollouts, metrics = produce_parity(policy)
    assert len(rollouts) == 4 * 4
    groups = Counter(r.group_id for r in rollouts)
    assert set(groups.values()) == {4}
    for gid in groups:
        members = [r for r in rollouts if r.group_id == gid]
        assert len({id(r.prompt) for r in members}) == 1  # media encoded once per group
        rewards = np.array([r.reward for r in members])
        adv = np.array([r.advantage for r in members])
        expected = (rewards - rewards.mean()) / (rewards.std() + 1e-6) if rewards.std() > 0 else np.zeros(4)
        np.testing.assert_allclose(adv, expected, atol=1e-9)
    assert metrics["reward/test_parity/constant"] == pytest.approx(
        np.mean([r.reward_parts["constant"] for r in rollouts])
    )
    assert 0 <= metrics["frac_zero_std_groups"] <= 1


def test_dynamic_sampling_keeps_only_informative_groups(policy):
    rollouts, metrics = produce_parity(policy, "algorithm.dynamic_sampling=true", "algorithm.max_resample=6")
    groups = {r.group_id for r in rollouts}
    assert len(groups) == 4 and len(rollouts) == 16
    for gid in groups:
        rewards = {r.reward for r in rollouts if r.group_id == gid}
        assert len(rewards) > 1, "a zero-variance group was kept"
    assert metrics["dynamic/rounds"] >= 2  # half the prompts are constant: refills were needed
    assert metrics["frac_zero_std_groups"] > 0


def test_replay_trains_on_nonzero_advantages_only(policy):
    rollouts, metrics = produce_parity(policy, "algorithm.replay=true", "data.prompts_per_step=8")
    assert len(rollouts) == metrics["replay/selected"] <= 8 * 4 // 2
    assert all(r.advantage != 0 for r in rollouts)


@register("test_sometimes_unusable")
class SometimesUnusableTask(ParityTask):
    """Test task: every second source item is unusable (SkipItem), like a too-short video; the others are
    test_parity's Samples."""

    def make(self, index, rng):
        if index % 2 == 0:
            raise SkipItem("item_unusable", f"item {index}")
        return ProducerParityTask(self.params).make(index, rng)


def test_unusable_source_items_are_counted_in_metrics_and_warned_once(policy, caplog):
    cfg = config()
    cfg.data.sources = [DataSource(task="test_sometimes_unusable")]
    producer = TaskProducer(cfg, policy[1])
    engine = make_engine(cfg.rollout, policy[0], policy[1], seed=0)
    with caplog.at_level("DEBUG", logger="mmrl.producers"):
        _, first = producer.produce(engine, 0)
        _, second = producer.produce(engine, 1)
    skips = producer.stats["skipped/item_unusable"]
    assert skips >= 2 and second["skipped/item_unusable"] == skips >= first["skipped/item_unusable"] >= 1
    levels = [r.levelname for r in caplog.records if "skipping a source item" in r.getMessage()]
    assert levels.count("WARNING") == 1 and len(levels) == skips


def test_answer_spread_is_logged_per_task_and_heldout_eval_is_greedy_and_sampled(policy):
    cfg = config("data.eval_samples=4", "data.eval_k=3", "rollout.max_new_tokens=8")
    producer = TaskProducer(cfg, policy[1])
    engine = make_engine(cfg.rollout, policy[0], policy[1], seed=0)
    rollouts, metrics = producer.produce(engine, 0)
    answers = [r.meta["answer"] for r in rollouts]
    assert metrics["spread/dominant_color"] == pytest.approx(len(set(answers)) / len(answers))
    assert metrics["top_share/dominant_color"] == pytest.approx(max(Counter(answers).values()) / len(answers))

    ev = producer.evaluate(engine)
    for name in ("reward", "accuracy", "spread", "top_share"):
        assert 0.0 <= ev[f"eval/{name}"] <= 1.0 and 0.0 <= ev[f"eval/{name}_sampled"] <= 1.0
    # Greedy answers one completion per prompt (4 answers): its spread is a multiple of 1/4; sampled has 12.
    assert (ev["eval/spread"] * 4) == pytest.approx(round(ev["eval/spread"] * 4))
    assert (ev["eval/spread_sampled"] * 12) == pytest.approx(round(ev["eval/spread_sampled"] * 12))
    assert producer.evaluate(engine) == ev  # the same held-out Samples and seeds every time
    assert 0.0 <= ev["eval/random_reward"] <= ev["eval/constant_reward"] + 0.5 and ev["eval/constant_spread"] == 0.25
    assert "eval/reward_sampled" not in TaskProducer(config("data.eval_samples=4", "data.eval_k=0"),
                                                      policy[1]).evaluate(engine)  # fmt: skip


def test_two_tasks_with_one_seed_draw_different_items_shuffles_and_dataset_orders(tmp_path):
    """Issue 12: the live key was `default_rng([seed, index, 2, k])` and the dataset order
    `default_rng([seed, index, 1, epoch])`, the same for every task: source 0 of a video_jigsaw run and of a
    temporal_jigsaw run drew the same video with the same shuffle, and two datasets of one size were read in
    the same order. The task name is now in both keys; each source still repeats itself exactly."""
    from mmrl.corpus import camera_motion_frames
    from mmrl.producers import SampleSource

    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8))
    videos = tmp_path / "videos"
    for v in range(5):
        frames = list(camera_motion_frames(photo, "pan_right", 120, (128, 96), np.random.default_rng(v)))
        write_video(videos / f"v{v}.mp4", frames, 8.0)
    corpus = load_config(RunConfig).corpus

    def first_draws(task: str) -> list[tuple[str, tuple[int, ...]]]:
        source = SampleSource(DataSource(task=task, source=str(videos)), 0, 0, corpus)
        return [(s.meta["source"], tuple(s.answer)) for s in (source.draw() for _ in range(3))]

    jigsaw, temporal = first_draws("video_jigsaw"), first_draws("temporal_jigsaw")
    assert jigsaw != temporal  # before: identical (same video, same labels) at every k
    assert first_draws("video_jigsaw") == jigsaw and first_draws("temporal_jigsaw") == temporal

    for name, task in (("a", get_task("dominant_color")), ("b", ProducerParityTask(ProducerParityTask.Params()))):
        write_task_dataset(task, 8, tmp_path / name)

    def order(task: str, path: str) -> list[str]:
        source = SampleSource(DataSource(task=task, path=str(tmp_path / path)), 0, 0, corpus)
        return [source.draw().id for _ in range(8)]

    assert order("dominant_color", "a") != order("test_parity", "b")  # before: the same permutation
    assert order("dominant_color", "a") == order("dominant_color", "a")
