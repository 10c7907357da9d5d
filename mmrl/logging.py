"""Run logging: metrics JSONL, TensorBoard scalars, a progress bar, sample completions, the reward curve.

What a run folder gets:

    metrics.jsonl      one JSON object per `log` call, i.e. per step: {"step", "time" (unix s), <metric>: value}
                       (an eval logged by a second call for the same step is merged by `read_metrics`)
    samples.jsonl      a few completions every `log.samples_every` steps ({"step", ...row})
    config.yaml        the effective config (R11; R-numbers: docs/requirements.md)
    tb/                TensorBoard events, one scalar per metric name
    reward_curve.png   reward per step (+ per task, reward parts, held-out eval), written by `close()`
    summary.json       what `close()` prints and returns

JSONL is the source of truth (plots and summaries are read back from it); it is flushed every line, so
a killed run loses at most the line being written, and a resumed run first drops every line after the
step it resumes from, so the file never holds a step twice. Non-finite values are written as null.

Metric names the trainer logs (anything else is logged the same way):

    reward/mean, reward/std            reward over the step's rollouts
    reward/<task>                      mean reward of one task
    reward/<task>/<part>               one named reward part (format, accuracy, ...) of a task
    adv/mean, adv/std, adv/abs_mean    advantages
    loss/policy, loss/kl               loss terms
    kl                                 mean KL to the reference model
    entropy                            mean token entropy
    clip_frac                          share of tokens whose ratio was clipped
    completion_len/mean, completion_len/max   completion lengths in tokens
    truncated_frac                     share of completions cut at max_new_tokens
    frac_zero_std_groups               share of groups whose rewards are all equal (no learning signal)
    tokens_per_s                       generated tokens per second
    time/step, time/generate, time/score, time/update   seconds per phase
    lr, grad_norm                      learning rate, gradient norm before clipping
    logprob_diff                       mean |logp_engine - logp_trainer| (R6: stale engine weights)
    mem/host_peak_gb, mem/gpu_peak_gb  peak host RSS and peak CUDA allocation, GiB (R1; see peak_memory)
    spread/<task>, top_share/<task>    distinct answers / completions, share of the most common answer (collapse)
    nonfinite_skipped                  optimiser steps skipped for a NaN/inf loss or gradient
    eval/reward, eval/accuracy         held-out evaluation, greedy (+ eval/spread, eval/top_share)
    eval/reward_sampled, ...           the same over `data.eval_k` completions sampled at rollout.temperature
    eval/random_reward, eval/constant_reward   the baselines on the held-out Samples (mmrl.baselines)
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from mmrl.config import LogConfig

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
CONFIG_FILE = "config.yaml"
PLOT_FILE = "reward_curve.png"
SUMMARY_FILE = "summary.json"
TB_DIR = "tb"

GENERATION_KEYS = (
    "engine",
    "n",
    "max_new_tokens",
    "min_new_tokens",
    "temperature",
    "top_p",
    "top_k",
    "max_prompt_tokens",
    "batch_size",
)
"""`rollout` fields printed at start as the effective generation settings (R11)."""
VISION_KEYS = ("min_pixels", "max_pixels", "video_min_pixels", "video_max_pixels", "video_fps", "video_max_frames")
"""`model` fields printed with them: the pixel and frame budgets (R1)."""


class RunLogger:
    """Everything a training run reports, in one object the trainer calls once per step.

    `resume_step`: None for a fresh run (earlier metrics/samples in the folder are dropped, older
    TensorBoard events hidden); k when resuming from the checkpoint of step k (lines and events after
    k are dropped, the progress bar starts at k).
    """

    def __init__(
        self,
        run_dir: str | Path,
        cfg: LogConfig,
        *,
        total_steps: int,
        config_dict: dict | None = None,
        resume_step: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        self.total_steps = total_steps
        truncate_jsonl(self.run_dir / METRICS_FILE, resume_step)
        truncate_jsonl(self.run_dir / SAMPLES_FILE, resume_step)
        self._metrics = open(self.run_dir / METRICS_FILE, "a", encoding="utf-8")
        self._samples = None
        self._writer = None
        if cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step makes TensorBoard hide events of an earlier (crashed or replaced) run from there on.
            purge = 0 if resume_step is None else resume_step + 1
            self._writer = SummaryWriter(log_dir=str(self.run_dir / TB_DIR), purge_step=purge, flush_secs=10)
        self._bar = None
        if cfg.progress:
            self._bar = tqdm(total=total_steps, initial=resume_step or 0, desc="train", unit="step", dynamic_ncols=True)
        self._printed_generation = False
        self._summary: dict[str, Any] | None = None
        if config_dict is not None:
            self.log_config(config_dict)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Append one step's metrics to the JSONL and TensorBoard, and advance the progress bar."""
        values = {name: _as_float(name, value) for name, value in metrics.items()}
        record = {"step": step, "time": round(time.time(), 3)}
        record.update({name: (v if math.isfinite(v) else None) for name, v in values.items()})
        self._metrics.write(json.dumps(record) + "\n")
        self._metrics.flush()
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, value, step)
        if self._bar is not None:
            self._bar.update(max(0, step - self._bar.n))
            self._bar.set_postfix_str(_postfix(values), refresh=False)

    def wants_samples(self, step: int) -> bool:
        """Whether `step` is one on which completions should be logged (`log.samples_every`)."""
        return self.cfg.samples_every > 0 and step % self.cfg.samples_every == 0

    def log_samples(self, step: int, rows: list[dict]) -> None:
        """Append a few completions (prompt, completion, reward, ... as the caller chooses) to samples.jsonl."""
        if self._samples is None:
            self._samples = open(self.run_dir / SAMPLES_FILE, "a", encoding="utf-8")
        for row in rows:
            self._samples.write(json.dumps({"step": step, **row}, ensure_ascii=False, default=str) + "\n")
        self._samples.flush()

    def log_config(self, config: dict, generation: Mapping[str, Any] | None = None) -> None:
        """Write config.yaml and print the generation settings once (R11: what reaches the engine is visible).

        `generation`: the settings the engine actually uses, when they differ from the config's `rollout`
        section (e.g. clamped by the engine); by default they are read from the config.
        """
        text = yaml.safe_dump(config, sort_keys=False)
        (self.run_dir / CONFIG_FILE).write_text(text)
        if self._writer is not None:
            self._writer.add_text("config", "```\n" + text + "\n```", 0)
        if self._printed_generation:
            return
        self._printed_generation = True
        rollout = generation if generation is not None else config.get("rollout", {})
        model = config.get("model", {})
        self._echo("generation: " + _key_values(rollout, GENERATION_KEYS if generation is None else tuple(rollout)))
        if any(k in model for k in VISION_KEYS):
            self._echo("vision budget: " + _key_values(model, VISION_KEYS))

    def close(self) -> dict[str, Any]:
        """Flush and close everything, draw the reward curve, print and return the run summary."""
        if self._summary is not None:
            return self._summary
        self._metrics.close()
        if self._samples is not None:
            self._samples.close()
        if self._writer is not None:
            self._writer.close()
        if self._bar is not None:
            self._bar.close()
        records = read_metrics(self.run_dir)
        self._summary = summarize(records)
        if self.cfg.plot and records:
            plot_reward_curve(records, self.run_dir / PLOT_FILE, title=self.run_dir.name)
        (self.run_dir / SUMMARY_FILE).write_text(json.dumps(self._summary, indent=1))
        print(format_summary(self._summary, self.run_dir))
        return self._summary

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _echo(self, message: str) -> None:
        if self._bar is not None:
            tqdm.write(message)  # printed above the bar instead of through it
        else:
            print(message)


# --------------------------------------------------------------------------------------------------
# Reading back, summarising, plotting


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The run's metrics, one dict per step in step order (lines logged for the same step are merged)."""
    by_step: dict[int, dict[str, Any]] = {}
    for record in _read_jsonl(Path(run_dir) / METRICS_FILE):
        if isinstance(record.get("step"), int):
            by_step.setdefault(record["step"], {}).update(record)
    return [by_step[s] for s in sorted(by_step)]


def truncate_jsonl(path: Path, keep_through: int | None) -> None:
    """Keep only records with step <= keep_through (None: none), and drop a torn last line, atomically."""
    if not path.exists():
        return
    kept = []
    if keep_through is not None:
        kept = [r for r in _read_jsonl(path) if isinstance(r.get("step"), int) and r["step"] <= keep_through]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
    os.replace(tmp, path)


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """First/last/best reward, mean phase times, throughput, eval and peak memory of a run (None: not logged)."""
    rewards = _series(records, "reward/mean")
    evals = _series(records, "eval/reward")
    sampled = _series(records, "eval/reward_sampled")
    sft_loss = _series(records, "loss/sft")
    best_step, best = max(rewards, key=lambda p: p[1]) if rewards else (None, None)
    return {
        "steps": sum(1 for r in records if r["step"] >= 1),  # step 0 holds only the evaluation before training
        "sft_loss_first": sft_loss[0][1] if sft_loss else None,
        "sft_loss_last": sft_loss[-1][1] if sft_loss else None,
        "reward_first": rewards[0][1] if rewards else None,
        "reward_last": rewards[-1][1] if rewards else None,
        "reward_best": best,
        "best_step": best_step,
        "time_step": _mean(records, "time/step"),
        "time_generate": _mean(records, "time/generate"),
        "time_score": _mean(records, "time/score"),
        "time_update": _mean(records, "time/update"),
        "tokens_per_s": _mean(records, "tokens_per_s"),
        "eval_reward_first": evals[0][1] if evals else None,
        "eval_reward_last": evals[-1][1] if evals else None,
        "eval_sampled_first": sampled[0][1] if sampled else None,
        "eval_sampled_last": sampled[-1][1] if sampled else None,
        "host_peak_gb": _max(records, "mem/host_peak_gb"),
        "gpu_peak_gb": _max(records, "mem/gpu_peak_gb"),
    }


def format_summary(summary: dict[str, Any], run_dir: str | Path = "") -> str:
    """The summary as a small aligned table for the terminal."""

    def f(value: float | None, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    s = summary
    best = f"  best {f(s['reward_best'])} (step {s['best_step']})" if s["best_step"] is not None else ""
    phases = [f"{name} {f(s['time_' + name], 2)}" for name in ("generate", "score", "update") if s[f"time_{name}"]]
    rows = [  # (name, text, whether the run logged it): a row with nothing to say is left out
        ("sft loss", f"first {f(s['sft_loss_first'])}  last {f(s['sft_loss_last'])}", s["sft_loss_first"]),
        ("reward", f"first {f(s['reward_first'])}  last {f(s['reward_last'])}{best}", s["reward_first"]),
        ("eval reward", f"first {f(s['eval_reward_first'])}  last {f(s['eval_reward_last'])}", s["eval_reward_first"]),
        ("eval sampled", f"first {f(s['eval_sampled_first'])}  last {f(s['eval_sampled_last'])}",
         s["eval_sampled_first"]),
        ("step time (s)", f(s["time_step"], 2) + (f" ({', '.join(phases)})" if phases else ""), s["time_step"]),
        ("tokens/s", f(s["tokens_per_s"], 1), s["tokens_per_s"]),
        ("peak memory (GiB)", f"host {f(s['host_peak_gb'], 2)}  gpu {f(s['gpu_peak_gb'], 2)}",
         s["gpu_peak_gb"] if s["host_peak_gb"] is None else s["host_peak_gb"]),
    ]  # fmt: skip
    rows = [(name, text) for name, text, logged in rows if logged is not None]
    width = max((len(name) for name, _ in rows), default=0)
    header = f"run summary: {s['steps']} steps" + (f" ({run_dir})" if str(run_dir) else "")
    if not rows:
        header += ", nothing logged"
    return "\n".join([header] + [f"  {name:<{width}}  {text}" for name, text in rows])


def plot_reward_curve(records: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Reward mean (± std) and per-task rewards per step, eval points, and reward parts in a lower panel.

    Uses matplotlib's object API with the Agg canvas: no pyplot, so the caller's backend is untouched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = sorted({k for r in records for k in r if k.startswith("reward/")} - {"reward/mean", "reward/std"})
    tasks = [k for k in names if k.count("/") == 1]
    parts = [k for k in names if k.count("/") == 2]
    fig = Figure(figsize=(8, 6.5 if parts else 4.5), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 if parts else 1, 1, sharex=True, squeeze=False)[:, 0]
    top = axes[0]
    mean = _series(records, "reward/mean")
    if mean:
        steps, values = zip(*mean)
        top.plot(steps, values, color="black", linewidth=2, label="reward/mean")
        std = dict(_series(records, "reward/std"))
        if std and all(s in std for s in steps):
            low = [v - std[s] for s, v in mean]
            high = [v + std[s] for s, v in mean]
            top.fill_between(steps, low, high, color="black", alpha=0.12, linewidth=0, label="± std")
    for name in tasks:
        top.plot(*zip(*_series(records, name)), linewidth=1, alpha=0.8, label=name)
    evals = _series(records, "eval/reward")
    if evals:
        top.plot(*zip(*evals), "o--", color="tab:red", markersize=6, label="eval/reward")
    top.set_ylabel("reward")
    top.set_title(title or "reward")
    top.grid(alpha=0.3)
    if top.get_legend_handles_labels()[0]:
        top.legend(fontsize=8, loc="best")
    if parts:
        for name in parts:
            axes[1].plot(*zip(*_series(records, name)), linewidth=1, label=name)
        axes[1].set_ylabel("reward parts")
        axes[1].grid(alpha=0.3)
        axes[1].legend(fontsize=8, loc="best")
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


# --------------------------------------------------------------------------------------------------
# Memory


def peak_memory() -> dict[str, float]:
    """Peak host RSS of this process and peak CUDA allocation (max over GPUs), in GiB (R1).

    The CUDA entry is present only when CUDA is in use. Host RSS comes from `getrusage` (Linux reports
    KiB, macOS bytes) and is a high-water mark: it never goes down during a run.
    """
    peaks: dict[str, float] = {}
    try:
        import resource
    except ImportError:  # Windows
        resource = None
    if resource is not None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peaks["mem/host_peak_gb"] = rss * (1 if sys.platform == "darwin" else 1024) / 2**30
    torch = sys.modules.get("torch")  # no torch imported: no CUDA memory to report
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        allocated = max(torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count()))
        peaks["mem/gpu_peak_gb"] = allocated / 2**30
    return peaks


# --------------------------------------------------------------------------------------------------
# Helpers


def _as_float(name: str, value: Any) -> float:
    """Python/numpy/torch scalars (and one-element arrays/tensors) -> float; anything else is a caller bug."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            value = item()
        except (ValueError, RuntimeError):  # more than one element
            pass
    if isinstance(value, (int, float)):
        return float(value)
    raise TypeError(f"metric '{name}' must be a number, got {type(value).__name__}: {value!r}")


def _postfix(values: dict[str, float]) -> str:
    parts = []
    if "reward/mean" in values:
        parts.append(f"reward {values['reward/mean']:.3f}")
    if "time/step" in values:
        parts.append(f"{values['time/step']:.2f}s/step")
    return ", ".join(parts)


def _key_values(section: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    return " ".join(f"{k}={section[k]}" for k in keys if k in section)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a torn line (a run killed mid-write) is skipped, not fatal."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _series(records: list[dict[str, Any]], name: str) -> list[tuple[int, float]]:
    return [(r["step"], r[name]) for r in records if isinstance(r.get(name), (int, float))]


def _mean(records: list[dict[str, Any]], name: str) -> float | None:
    values = [v for _, v in _series(records, name)]
    return sum(values) / len(values) if values else None


def _max(records: list[dict[str, Any]], name: str) -> float | None:
    values = [v for _, v in _series(records, name)]
    return max(values) if values else None


__all__ = [
    "RunLogger",
    "format_summary",
    "peak_memory",
    "plot_reward_curve",
    "read_metrics",
    "summarize",
    "truncate_jsonl",
]
