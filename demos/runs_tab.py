"""The Runs tab: point at a run folder and see its curves (reward, eval, KL, entropy, length), the metrics table
and the logged sample completions per step; it re-reads the folder every few seconds while a run is going."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from demos.context import DemoContext
from demos.tasks_tab import error_text
from mmrl.logging import METRICS_FILE, SAMPLES_FILE, read_metrics

REFRESH_S = 3.0
"""Seconds between re-reads of a run folder."""
CURVES: dict[str, tuple[str, ...]] = {
    "Reward": ("reward/mean",),
    "Held-out eval": ("eval/reward", "eval/accuracy", "eval/random_reward", "eval/constant_reward"),
    "KL to the reference": ("kl",),
    "Entropy": ("entropy",),
    "Completion length (tokens)": ("completion_len/mean", "completion_len/max"),
}
"""Plot title -> the metrics.jsonl series drawn in it (missing ones are left out)."""
TABLE_COLUMNS = 12
"""Metric columns in the table (the step first; the curves' series first, then the rest in name order)."""


def curve_frame(records: list[dict[str, Any]], names: tuple[str, ...]) -> pd.DataFrame:
    """Long-form (step, value, series) rows of the named series, finite values only."""
    rows = [
        {"step": r["step"], "value": float(r[n]), "series": n}
        for r in records
        for n in names
        if isinstance(r.get(n), (int, float)) and r[n] == r[n]
    ]
    return pd.DataFrame(rows, columns=["step", "value", "series"])


def metrics_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """The metrics as a table, one row per step, newest first."""
    if not records:
        return pd.DataFrame()
    first = [n for names in CURVES.values() for n in names]
    keys = sorted({k for r in records for k in r if k not in ("step", "time")})
    ordered = [k for k in first if k in keys] + [k for k in keys if k not in first]
    frame = pd.DataFrame(records, columns=["step", *ordered[:TABLE_COLUMNS]])
    return frame.iloc[::-1].round(4)


def read_samples(run_dir: Path) -> dict[int, list[dict[str, Any]]]:
    """samples.jsonl grouped by step (bad lines are skipped)."""
    out: dict[int, list[dict[str, Any]]] = {}
    path = run_dir / SAMPLES_FILE
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            out.setdefault(row["step"], []).append(row)
    return out


def build(ctx: DemoContext) -> None:
    """The Runs tab's components and events."""
    with gr.Row():
        folder = gr.Textbox(
            label="Run folder (inside an allowed root; holds metrics.jsonl)", scale=4, elem_id="runs-folder"
        )
        open_btn = gr.Button("Open", variant="primary", scale=1, elem_id="runs-open")
    status = gr.Markdown("", elem_id="runs-status")
    plots = []
    with gr.Row():
        for title in CURVES:
            plots.append(gr.LinePlot(x="step", y="value", color="series", title=title, height=240, min_width=300))
    table = gr.Dataframe(label="Metrics per step (newest first)", interactive=False, elem_id="runs-table")
    with gr.Row():
        step_dd = gr.Dropdown([], label="Logged step", scale=1, elem_id="runs-step")
    samples = gr.Dataframe(label="Sample completions at that step", interactive=False, wrap=True)
    opened = gr.State("")
    timer = gr.Timer(REFRESH_S, active=False)

    def load(typed: str, current_step: Any) -> list:
        try:
            run_dir = ctx.roots.resolve(typed, "run folder")
            if not (run_dir / METRICS_FILE).exists():
                raise FileNotFoundError(f"{run_dir} holds no {METRICS_FILE}")
            records = read_metrics(run_dir)
        except Exception as e:
            empty = pd.DataFrame(columns=["step", "value", "series"])
            return ["", error_text(e), *[empty] * len(plots), None, gr.update(), None, gr.update(active=False)]
        by_step = read_samples(run_dir)
        steps = sorted(by_step)
        step = current_step if current_step in steps else (steps[-1] if steps else None)
        frames = [curve_frame(records, names) for names in CURVES.values()]
        last = records[-1]["step"] if records else "none"
        note = f"`{run_dir}`: {len(records)} logged steps (last: {last}); re-read every {REFRESH_S:g} s."
        return [
            str(run_dir),
            note,
            *frames,
            metrics_table(records),
            gr.update(choices=steps, value=step),
            sample_rows(by_step.get(step, [])),
            gr.update(active=True),
        ]

    outputs = [opened, status, *plots, table, step_dd, samples, timer]
    open_btn.click(load, inputs=[folder, step_dd], outputs=outputs)
    folder.submit(load, inputs=[folder, step_dd], outputs=outputs)
    timer.tick(load, inputs=[opened, step_dd], outputs=outputs, show_progress="hidden")

    def pick(run_dir: str, step: Any) -> Any:
        if not run_dir or step is None:
            return None
        return sample_rows(read_samples(Path(run_dir)).get(step, []))

    step_dd.input(pick, inputs=[opened, step_dd], outputs=samples)


def sample_rows(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Logged completions as a table: sample, task, reward, advantage, completion."""
    keys = ["sample_id", "task", "reward", "advantage", "completion"]
    return pd.DataFrame([[r.get(k, "") for k in keys] for r in rows], columns=keys)


__all__ = ["CURVES", "REFRESH_S", "build", "curve_frame", "metrics_table", "read_samples", "sample_rows"]
