"""Run logging: JSONL per step, TensorBoard scalars read back, resume truncation, the reward-curve PNG,
the summary computed from a known sequence, the config written and the generation settings printed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mmrl.config import LogConfig, RunConfig, load_config, to_dict
from mmrl.logging import (
    METRICS_FILE,
    PLOT_FILE,
    SAMPLES_FILE,
    RunLogger,
    peak_memory,
    read_metrics,
    summarize,
)

QUIET = LogConfig(tensorboard=False, progress=False, plot=False)


def raw_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def test_jsonl_has_one_line_per_step_with_its_metrics(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, QUIET, total_steps=3)
    logger.log(1, {"reward/mean": 0.25, "kl": torch.tensor(0.5), "lr": np.float32(1e-5), "clip_frac": 0})
    logger.log(2, {"reward/mean": 0.5, "loss/policy": float("nan")})
    logger.log(3, {"reward/mean": np.array([0.75])})
    with pytest.raises(TypeError, match="metric 'note'"):
        logger.log(4, {"note": "hello"})
    logger.close()

    lines = raw_lines(tmp_path / METRICS_FILE)
    assert [line["step"] for line in lines] == [1, 2, 3]
    assert all(isinstance(line["time"], float) for line in lines)
    assert lines[0]["reward/mean"] == 0.25 and lines[0]["kl"] == 0.5 and lines[0]["clip_frac"] == 0.0
    assert math.isclose(lines[0]["lr"], 1e-5, rel_tol=1e-6)
    assert lines[1]["loss/policy"] is None  # NaN stays valid JSON
    assert lines[2]["reward/mean"] == 0.75
    assert read_metrics(tmp_path) == lines


def test_tensorboard_event_files_hold_the_scalars(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, LogConfig(tensorboard=True, progress=False, plot=False), total_steps=4)
    for step in range(1, 5):
        logger.log(step, {"reward/mean": step / 10, "reward/jigsaw/format": 1.0})
    logger.close()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    got = scalars(tmp_path, "reward/mean")
    assert [s for s, _ in got] == [1, 2, 3, 4]
    assert [v for _, v in got] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert [v for _, v in scalars(tmp_path, "reward/jigsaw/format")] == [1.0] * 4


def test_resume_drops_later_steps_from_jsonl_samples_and_tensorboard(tmp_path: Path) -> None:
    cfg = LogConfig(tensorboard=True, progress=False, plot=False, samples_every=2)
    first = RunLogger(tmp_path, cfg, total_steps=5)
    for step in range(1, 6):
        first.log(step, {"reward/mean": 0.0})
        if first.wants_samples(step):
            first.log_samples(step, [{"completion": f"old {step}"}])
    first.close()
    with open(tmp_path / METRICS_FILE, "a") as f:
        f.write('{"step": 6, "reward/me')  # the crash tore the last line

    resumed = RunLogger(tmp_path, cfg, total_steps=5, resume_step=3)
    assert [line["step"] for line in raw_lines(tmp_path / METRICS_FILE)] == [1, 2, 3]
    assert [row["step"] for row in raw_lines(tmp_path / SAMPLES_FILE)] == [2]
    for step in (4, 5):
        resumed.log(step, {"reward/mean": 1.0})
    resumed.log_samples(4, [{"completion": "new 4"}])
    resumed.close()

    lines = raw_lines(tmp_path / METRICS_FILE)
    assert [(line["step"], line["reward/mean"]) for line in lines] == [(1, 0.0), (2, 0.0), (3, 0.0), (4, 1.0), (5, 1.0)]
    assert [row["completion"] for row in raw_lines(tmp_path / SAMPLES_FILE)] == ["old 2", "new 4"]
    assert scalars(tmp_path, "reward/mean") == [(1, 0.0), (2, 0.0), (3, 0.0), (4, 1.0), (5, 1.0)]

    fresh = RunLogger(tmp_path, cfg, total_steps=5)  # a fresh run in the same folder starts clean
    fresh.log(1, {"reward/mean": 0.5})
    fresh.close()
    assert [(line["step"], line["reward/mean"]) for line in raw_lines(tmp_path / METRICS_FILE)] == [(1, 0.5)]
    assert scalars(tmp_path, "reward/mean") == [(1, 0.5)]


def known_run(logger: RunLogger) -> None:
    """Five steps with rewards 0.1, 0.4, 0.3, 0.6, 0.5 and phase times; eval before and after."""
    logger.log(0, {"eval/reward": 0.2, "eval/accuracy": 0.1})
    for step, reward in enumerate([0.1, 0.4, 0.3, 0.6, 0.5], start=1):
        logger.log(
            step,
            {
                "reward/mean": reward,
                "reward/std": 0.1,
                "reward/jigsaw": reward + 0.05,
                "reward/counting": reward - 0.05,
                "reward/jigsaw/format": 1.0,
                "reward/jigsaw/accuracy": reward,
                "time/step": 2.0 * step,
                "time/generate": 1.0 * step,
                "time/score": 0.25,
                "time/update": 0.5,
                "tokens_per_s": 100.0 * step,
                "mem/host_peak_gb": 1.0 + step / 10,
            },
        )
    logger.log(5, {"eval/reward": 0.7})  # evaluated after the last step: merged into step 5


def test_close_writes_the_reward_curve_and_returns_the_summary(tmp_path: Path, capsys) -> None:
    logger = RunLogger(tmp_path, LogConfig(tensorboard=False, progress=False, plot=True), total_steps=5)
    known_run(logger)
    summary = logger.close()

    assert summary == {
        "steps": 5,
        "sft_loss_first": None,
        "sft_loss_last": None,
        "reward_first": 0.1,
        "reward_last": 0.5,
        "reward_best": 0.6,
        "best_step": 4,
        "time_step": pytest.approx(6.0),
        "time_generate": pytest.approx(3.0),
        "time_score": 0.25,
        "time_update": 0.5,
        "tokens_per_s": pytest.approx(300.0),
        "eval_reward_first": 0.2,
        "eval_reward_last": 0.7,
        "eval_sampled_first": None,
        "eval_sampled_last": None,
        "host_peak_gb": pytest.approx(1.5),
        "gpu_peak_gb": None,
    }
    assert summarize(read_metrics(tmp_path)) == summary
    assert json.loads((tmp_path / "summary.json").read_text())["best_step"] == 4
    out = capsys.readouterr().out
    assert "run summary: 5 steps" in out and "best 0.600 (step 4)" in out and "tokens/s" in out
    assert logger.close() is summary  # closing twice is harmless

    with Image.open(tmp_path / PLOT_FILE) as image:
        assert image.format == "PNG"
        assert image.size == (800, 650)  # two panels: rewards, reward parts
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 5  # something was drawn, not a blank canvas


def test_summary_and_plot_without_rewards(tmp_path: Path) -> None:
    logger = RunLogger(tmp_path, LogConfig(tensorboard=False, progress=False, plot=True), total_steps=2)
    logger.log(1, {"loss/policy": 0.3})
    summary = logger.close()
    assert summary["steps"] == 1 and summary["reward_first"] is None and summary["best_step"] is None
    with Image.open(tmp_path / PLOT_FILE) as image:
        assert image.size == (800, 450)


def test_sft_summary_reports_its_steps_and_loss_not_empty_reward_rows(tmp_path: Path, capsys) -> None:
    logger = RunLogger(tmp_path, LogConfig(tensorboard=False, progress=False, plot=False), total_steps=3)
    for step, loss in enumerate([2.5, 1.25, 0.5], start=1):
        logger.log(step, {"loss/sft": loss, "grad_norm": 1.0, "time/step": 0.5})
    summary = logger.close()
    out = capsys.readouterr().out
    assert summary["steps"] == 3 and summary["sft_loss_first"] == 2.5 and summary["sft_loss_last"] == 0.5
    assert "run summary: 3 steps" in out
    lines = out.splitlines()
    assert any(line.split()[:2] == ["sft", "loss"] and "first 2.500  last 0.500" in line for line in lines)
    assert "step time (s)" in out and "0.50" in out
    assert "reward" not in out and "tokens/s" not in out  # rows the run never logged are left out
    assert not any(" - " in line + " " for line in lines)  # no values shown as dashes


def test_log_config_writes_yaml_and_prints_generation_settings_once(tmp_path: Path, capsys) -> None:
    config = RunConfig()
    config.rollout.temperature = 0.7
    config.rollout.max_new_tokens = 64
    logger = RunLogger(tmp_path, QUIET, total_steps=1, config_dict=to_dict(config))
    logger.log_config(to_dict(config))
    logger.close()
    assert load_config(RunConfig, tmp_path / "config.yaml") == config
    out = capsys.readouterr().out
    assert out.count("generation: ") == 1
    assert "generation: engine=hf n=4 max_new_tokens=64 min_new_tokens=0 temperature=0.7 top_p=1.0 top_k=0" in out
    assert "vision budget: min_pixels=3136 max_pixels=200704" in out


def test_progress_bar_shows_reward_and_step_time(tmp_path: Path, capsys) -> None:
    logger = RunLogger(tmp_path, LogConfig(tensorboard=False, progress=True, plot=False), total_steps=2)
    logger.log(1, {"reward/mean": 0.5, "time/step": 1.25})
    logger.log(2, {"reward/mean": 0.75, "time/step": 1.5})
    logger.close()
    err = capsys.readouterr().err
    assert "2/2" in err and "reward 0.750" in err and "1.50s/step" in err


def test_samples_are_logged_every_n_steps(tmp_path: Path) -> None:
    logger = RunLogger(
        tmp_path, LogConfig(tensorboard=False, progress=False, plot=False, samples_every=3), total_steps=6
    )
    assert [s for s in range(1, 7) if logger.wants_samples(s)] == [3, 6]
    logger.log_samples(3, [{"prompt": "count the circles", "completion": "<answer>3</answer>", "reward": 1.0}])
    logger.close()
    assert raw_lines(tmp_path / SAMPLES_FILE) == [
        {"step": 3, "prompt": "count the circles", "completion": "<answer>3</answer>", "reward": 1.0}
    ]
    never = RunLogger(tmp_path / "never", LogConfig(tensorboard=False, progress=False, samples_every=0), total_steps=1)
    assert not any(never.wants_samples(s) for s in range(4))
    never.close()


def test_peak_memory_reports_host_rss() -> None:
    peaks = peak_memory()
    assert 0.01 < peaks["mem/host_peak_gb"] < 1024  # a Python process with torch: tens of MiB at least
    assert ("mem/gpu_peak_gb" in peaks) == (torch.cuda.is_available() and torch.cuda.is_initialized())
