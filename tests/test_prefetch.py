"""`data.prefetch`: prompts drawn and encoded in worker processes ahead of use (mmrl/prefetch.py) give the
samples, tensors, skip counts and checkpoint state of the in-process path, resume exactly, report a worker's
failure naming the source and draw, and leave no process behind."""

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from PIL import Image
from tiny_runs import (
    QUICKSTART,
    ROOT,
    ParityTask,
    assert_same_trained_weights,
    mmrl_cli,
    sample_ids,
    write_task_dataset,
)

from mmrl.config import DataSource, RunConfig, load_config
from mmrl.corpus import camera_motion_frames
from mmrl.grpo.checkpoint import latest_checkpoint
from mmrl.logging import read_metrics
from mmrl.prefetch import PrefetchError
from mmrl.producers import Prepared, TaskProducer
from mmrl.registry import get_task, register
from mmrl.rollout import make_engine
from mmrl.video import write_video

VIDEOSSR = ROOT / "configs" / "videossr_tiny.yaml"


@register("test_prefetch_parity")
class PrefetchParityTask(ParityTask):
    """`ParityTask` (tests/tiny_runs.py) on 16-pixel images. Registered in this module only: a prefetch worker
    finds it by importing this module."""

    @dataclass
    class Params(ParityTask.Params):
        size: int = 16
        """Image side."""


@pytest.fixture(scope="module")
def corrupt_dataset(tmp_path_factory) -> Path:
    """Three dominant_color Samples, one with an unreadable image: a skip (`skipped_samples`) once per epoch."""
    folder = write_task_dataset(get_task("dominant_color"), 3, tmp_path_factory.mktemp("prefetch") / "ds")
    (folder / "media" / "s1_0.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return folder


def config(*overrides: str, path: Path | None = None) -> RunConfig:
    return load_config(RunConfig, path, ["rollout.n=4", "rollout.max_new_tokens=4", "data.prompts_per_step=4",
                                         "train.steps=20", *overrides])  # fmt: skip


def batches(producer: TaskProducer, steps: range, count: int = 4) -> list[list[Prepared]]:
    """The round-0 batches of `steps`, as `produce` draws them."""
    return [producer._prepare_batch(step, 0, count, 20) for step in steps]


def assert_same_prompts(a: list[list[Prepared]], b: list[list[Prepared]]) -> None:
    assert [[p.sample.id for p in batch] for batch in a] == [[p.sample.id for p in batch] for batch in b]
    for pa, pb in zip(sum(a, []), sum(b, [])):
        assert pa.sample.answer == pb.sample.answer and pa.sample.meta == pb.sample.meta, pa.sample.id
        assert torch.equal(pa.prompt.input_ids, pb.prompt.input_ids), pa.sample.id
        assert pa.prompt.vision.keys() == pb.prompt.vision.keys()
        for key in pa.prompt.vision:
            assert torch.equal(pa.prompt.vision[key], pb.prompt.vision[key]), (pa.sample.id, key)
        assert type(pa.task) is type(pb.task)


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, exited but not reaped yet, does not)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def spawned_children(pid: int) -> list[psutil.Process]:
    """The multiprocessing children (spawned workers) of process `pid`; [] when it is gone."""
    children = []
    try:
        for child in psutil.Process(pid).children():
            try:
                if "spawn_main" in " ".join(child.cmdline()):
                    children.append(child)
            except psutil.Error:  # a child that just exited
                pass
    except psutil.Error:
        return []
    return children


def video_mixture(videos: Path, dataset: Path, *overrides: str) -> RunConfig:
    """The VideoSSR tiny mixture (three video tasks) on the videos of `videos`, plus a dataset with a bad Sample."""
    cfg = config(*overrides, path=VIDEOSSR)
    for spec in cfg.data.sources:
        spec.source = str(videos)
    cfg.data.sources.append(DataSource(task="dominant_color", path=str(dataset), weight=0.5))
    return cfg


def test_prefetch_on_equals_off_sample_by_sample_on_a_video_mixture(tmp_path, policy, corrupt_dataset):
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8))
    for v in range(3):
        frames = list(camera_motion_frames(photo, "pan_right", 60, (96, 64), np.random.default_rng(v)))
        write_video(tmp_path / "videos" / f"v{v}.mp4", frames, 8.0)
    off = video_mixture(tmp_path / "videos", corrupt_dataset)
    on = video_mixture(tmp_path / "videos", corrupt_dataset, "data.prefetch=2", "data.prefetch_workers=2")

    reference = TaskProducer(off, policy[1])
    prefetched = TaskProducer(on, policy[1])
    try:
        expected, got = batches(reference, range(4)), batches(prefetched, range(4))
        assert_same_prompts(expected, got)
        assert {p.sample.task for p in sum(got, [])} >= {"anomaly_grounding", "temporal_jigsaw", "dominant_color"}
        assert prefetched.stats == reference.stats and reference.stats["skipped_samples"] >= 1  # skips merged
        # The workers are two steps ahead, but the state holds the draws used, as without prefetching.
        assert prefetched._prefetcher is not None and prefetched._prefetcher.outstanding > 0
        assert prefetched.state_dict() == reference.state_dict()
        pids = prefetched._prefetcher.pids
        assert len(pids) == 2 and all(alive(pid) for pid in pids)
    finally:
        prefetched.close()
    assert not any(alive(pid) for pid in pids)  # close() stops the workers


def test_resume_with_prefetch_on_takes_the_draws_of_the_uninterrupted_run(policy, corrupt_dataset):
    sources = ["data.sources=[{task: test_prefetch_parity, weight: 2}, "
               f"{{task: dominant_color, path: '{corrupt_dataset}'}}]"]  # fmt: skip
    uninterrupted = TaskProducer(config(*sources), policy[1])
    expected = batches(uninterrupted, range(6))

    first = TaskProducer(config(*sources, "data.prefetch=3"), policy[1])
    try:
        assert_same_prompts(batches(first, range(3)), expected[:3])
        state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
        ahead = first._prefetcher.outstanding
    finally:
        first.close()
    assert ahead > 0  # draws of steps 3..5 were made (or asked for) and are not in the state
    second = TaskProducer(config(*sources, "data.prefetch=3"), policy[1])
    try:
        second.load_state_dict(state)
        assert_same_prompts(batches(second, range(3, 6)), expected[3:])
        assert second.stats == uninterrupted.stats and uninterrupted.stats["skipped_samples"] >= 1
        assert second.state_dict() == uninterrupted.state_dict()
    finally:
        second.close()


def test_dynamic_sampling_rounds_draw_on_demand_and_rollouts_stay_the_same(policy):
    model, processor = policy
    common = ["data.sources=[{task: test_prefetch_parity}]", "algorithm.dynamic_sampling=true",
              "algorithm.max_resample=4"]  # fmt: skip
    runs = []
    for prefetch in (0, 2):
        producer = TaskProducer(config(*common, f"data.prefetch={prefetch}"), processor)
        engine = make_engine(producer.cfg.rollout, model, processor, seed=0)
        try:
            runs.append([producer.produce(engine, step) for step in range(3)])
        finally:
            producer.close()
    (off, on) = runs
    assert max(metrics["dynamic/rounds"] for _, metrics in off) >= 2  # resample rounds happened
    for (rollouts_off, metrics_off), (rollouts_on, metrics_on) in zip(off, on):
        assert [(r.sample_id, r.group_id, r.completion.token_ids, r.reward, r.advantage) for r in rollouts_on] == [
            (r.sample_id, r.group_id, r.completion.token_ids, r.reward, r.advantage) for r in rollouts_off
        ]
        assert metrics_on["dynamic/rounds"] == metrics_off["dynamic/rounds"]
        assert metrics_on["time/wait_prompts"] >= 0 and metrics_off["time/wait_prompts"] > 0


def test_an_exception_in_a_worker_surfaces_at_its_draw_naming_source_and_sample(policy):
    sources = "data.sources=[{task: test_prefetch_parity, params: {broken_every: 7}}]"
    reference = TaskProducer(config(sources), policy[1])
    with pytest.raises(ValueError, match="cannot make item"):
        batches(reference, range(20))
    failing_draw = reference.sources[0].counter - 1  # the in-process path raised at this draw

    prefetched = TaskProducer(config(sources, "data.prefetch=2"), policy[1])
    try:
        with pytest.raises(PrefetchError) as error:
            batches(prefetched, range(20))
        assert prefetched.sources[0].counter == failing_draw  # the draws before it were used, in order
    finally:
        prefetched.close()
    message = str(error.value)
    assert (f"source 0 (task test_prefetch_parity), draw {failing_draw} (sample id test_prefetch_parity-0-"
            f"{failing_draw})") in message  # fmt: skip
    assert "ValueError: cannot make item" in message and "traceback in the worker" in message


@pytest.mark.slow
def test_killed_run_with_prefetch_resumes_to_the_run_without_and_leaves_no_worker(tmp_path):
    """The trainer end to end: a run with `data.prefetch=2`, SIGKILLed after its step-2 checkpoint (steps 3 and 4
    prefetched; its workers then exit on their own) and resumed, trains on the samples of an uninterrupted run
    without prefetching and ends with its weights."""
    common = [
        # A random-init policy earns reward 0 everywhere; the entropy bonus makes every update move the weights.
        "--config", str(QUICKSTART), "train.cold_start=false", "train.steps=4", "train.save_every=2",
        "algorithm.entropy_coef=0.01", "data.prompts_per_step=8", "rollout.n=4", "data.eval_samples=0",
        "log.progress=false", "log.samples_every=1", "log.tensorboard=false", "log.plot=false",
    ]  # fmt: skip
    full = mmrl_cli("train", *common, f"train.out_dir={tmp_path / 'full'}")
    assert full.returncode == 0, full.stderr[-3000:]

    killed = tmp_path / "killed"
    prefetch = ["data.prefetch=2", "data.prefetch_workers=2"]
    proc = subprocess.Popen([sys.executable, "-m", "mmrl.cli", "train", *common, *prefetch, f"train.out_dir={killed}"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    workers: list[psutil.Process] = []
    deadline = time.time() + 300
    while time.time() < deadline and latest_checkpoint(killed) is None and proc.poll() is None:
        workers = spawned_children(proc.pid) or workers
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # no close(), no atexit: the workers must notice on their own
    proc.wait()
    assert latest_checkpoint(killed).name == "step-0000002"
    assert not (killed / "final").exists(), "the run finished before it could be killed"
    assert len(workers) == 2
    _, left = psutil.wait_procs(workers, timeout=30)
    for worker in left:
        worker.kill()
    assert not left, "prefetch workers outlived the killed trainer"

    resumed = mmrl_cli("train", *common, *prefetch, f"train.out_dir={killed}", "train.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    a, b = sample_ids(tmp_path / "full"), sample_ids(killed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4] and a == b
    metrics = read_metrics(killed)
    assert [r["step"] for r in metrics] == [1, 2, 3, 4]
    assert all(0 <= r["time/wait_prompts_share"] <= 1 for r in metrics)
    assert_same_trained_weights(tmp_path / "full", killed)
