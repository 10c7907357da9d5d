"""The Datasets tab: browse a dataset folder (samples.jsonl + media/) with filters by task, split and
perturbation type, each sample drawn as its preview sheet, with `mmrl eval` results (eval-*.json) beside it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from demos.context import DemoContext
from demos.tasks_tab import error_text
from mmrl.errors import MMRLError
from mmrl.preview import preview_sheet
from mmrl.sample import SAMPLES_FILE, Sample, read_dataset

ALL = "(all)"
MAX_LISTED = 500
"""Samples listed after filtering; a larger selection lists its first ones."""


def perturbation(sample: Sample) -> str:
    """The sample's perturbation type (grounding tasks: `meta["perturbation"]`), else empty."""
    value = sample.meta.get("perturbation") if isinstance(sample.meta, dict) else None
    if isinstance(value, dict):
        value = value.get("kind") or value.get("type") or value.get("name")
    return str(value) if value else ""


def split(sample: Sample) -> str:
    return str(sample.meta.get("split", "")) if isinstance(sample.meta, dict) else ""


def eval_results(folder: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """`mmrl eval` result files in the folder: file name -> sample id -> that sample's scored row."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for path in sorted(folder.glob("eval-*.json")):
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
            out[path.name] = {row["id"]: row for row in result.get("per_sample", [])}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return out


def build(ctx: DemoContext) -> None:
    """The Datasets tab's components and events."""
    with gr.Row():
        folder = gr.Textbox(label="Dataset folder (inside an allowed root)", scale=4, elem_id="data-folder")
        open_btn = gr.Button("Open", variant="primary", scale=1, elem_id="data-open")
    status = gr.Markdown("", elem_id="data-status")
    with gr.Row():
        task_f = gr.Dropdown([ALL], value=ALL, label="Task", elem_id="data-task")
        split_f = gr.Dropdown([ALL], value=ALL, label="Split", elem_id="data-split")
        pert_f = gr.Dropdown([ALL], value=ALL, label="Perturbation", elem_id="data-pert")
    listing = gr.Dataframe(label="Samples (click a row to show it)", interactive=False, elem_id="data-list")
    with gr.Row():
        sheet = gr.Image(label="The sample as the model sees it", type="pil", elem_id="data-sheet", scale=3)
        results = gr.Dataframe(label="mmrl eval results for it", interactive=False, scale=2, elem_id="data-results")
    loaded = gr.State(None)
    shown_ids = gr.State([])

    def open_folder(typed: str) -> list:
        try:
            root = ctx.roots.resolve(typed, "dataset folder")
            if not (root / SAMPLES_FILE).exists():
                raise MMRLError(f"{root} holds no {SAMPLES_FILE} (write one with mmrl generate)")
            samples = read_dataset(root)
        except Exception as e:
            return [None, error_text(e), *[gr.update()] * 3]
        evals = eval_results(root)
        note = f"`{root}`: {len(samples)} samples; eval results: {', '.join(evals) or 'none'}."

        def choices(values: set[str]) -> Any:
            return gr.update(choices=[ALL, *sorted(v for v in values if v)], value=ALL)

        return [
            {"root": str(root), "samples": samples, "evals": evals},
            note,
            choices({s.task for s in samples}),
            choices({split(s) for s in samples}),
            choices({perturbation(s) for s in samples}),
        ]

    def filtered(data: dict | None, task: str, sp: str, pert: str) -> tuple[Any, list[str]]:
        if not data:
            return None, []
        chosen = [
            s
            for s in data["samples"]
            if task in (ALL, s.task) and sp in (ALL, split(s)) and pert in (ALL, perturbation(s))
        ][:MAX_LISTED]
        rows = []
        for s in chosen:
            row = [s.id, s.task, split(s), perturbation(s)]
            for rows_of in data["evals"].values():
                r = rows_of.get(s.id)
                row.append("" if r is None else round(float(r.get("reward", 0.0)), 3))
            rows.append(row)
        headers = ["id", "task", "split", "perturbation", *[f"{name} reward" for name in data["evals"]]]
        return pd.DataFrame(rows, columns=headers), [s.id for s in chosen]

    def show(data: dict | None, ids: list[str], evt: gr.SelectData) -> tuple[Any, Any]:
        if not data or evt is None or not ids:
            return None, None
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        sample = next(s for s in data["samples"] if s.id == ids[int(row)])
        table = [
            [name, round(float(r.get("reward", 0.0)), 4), r.get("accuracy"), r.get("completion")]
            for name, rows_of in data["evals"].items()
            if (r := rows_of.get(sample.id)) is not None
        ]
        frame = pd.DataFrame(table, columns=["result file", "reward", "accuracy", "completion"])
        return preview_sheet(sample), frame

    filters = [loaded, task_f, split_f, pert_f]
    opened = open_btn.click(open_folder, inputs=folder, outputs=[loaded, status, task_f, split_f, pert_f])
    opened.then(filtered, inputs=filters, outputs=[listing, shown_ids])
    for f in (task_f, split_f, pert_f):
        f.input(filtered, inputs=filters, outputs=[listing, shown_ids])
    listing.select(show, inputs=[loaded, shown_ids], outputs=[sheet, results])


__all__ = ["build", "eval_results", "perturbation", "split"]
