"""The Tasks tab: pick a task, set its parameters, source and seed, see the sample as the model sees it with
its ground truth and evidence, type an answer and see its reward next to the baselines."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from demos import task_view
from demos.context import DemoContext
from demos.safety import check_uploads
from mmrl import registry

log = logging.getLogger(__name__)

MAX_VIDEOS = 8
"""Video players on the page; a sample with more videos shows the first ones (and says so)."""
MAX_PANELS = 6
"""Evidence panels on the page (no task draws more today)."""
VIDEOS_PER_ROW = 4
VIDEO_HEIGHT = 200
DEFAULT_TASK = "image_jigsaw"
EMPTY_SCORES = pd.DataFrame(columns=["who", "reward", "completion"])


def error_text(e: Exception) -> str:
    """An error as the page shows it: one line, its type, never a traceback."""
    return f"**Error:** `{type(e).__name__}`: {e}"


def build(ctx: DemoContext, blocks: gr.Blocks, drawn_state: gr.State) -> None:
    """The Tasks tab's components and events (call inside `blocks` and a `gr.Tab`); the first task's sample is
    drawn when the page loads, and `drawn_state` holds the shown sample for the Model tab."""
    names = registry.task_names()
    first = DEFAULT_TASK if DEFAULT_TASK in names else names[0]
    params_state = gr.State({})
    with gr.Row():
        task_dd = gr.Dropdown(names, value=first, label="Task", elem_id="task-select", scale=2)
        source = gr.Radio(["default", "upload"], value="default", label="Source", scale=1, elem_id="task-source")
        seed = gr.Number(0, label="Seed", precision=0, minimum=0, scale=1, elem_id="task-seed")
        draw_btn = gr.Button("Draw sample", variant="primary", scale=1, elem_id="task-draw")
    uploads = gr.File(
        label=f"Upload images, videos or meshes (at most {ctx.max_upload_mb:g} MB each)",
        file_count="multiple",
        visible=False,
        elem_id="task-upload",
    )
    with gr.Accordion("Parameters (the task's Params dataclass; each field's docstring under its name)", open=False):

        @gr.render(inputs=[task_dd])
        def params_form(task_name: str) -> None:
            try:
                fields = task_view.params_form(task_name)
            except Exception as e:
                gr.Markdown(error_text(e))
                return
            with gr.Row(equal_height=False):
                for f in fields:
                    component = _field_component(f, task_name)
                    component.change(_setter(f.name), inputs=[component, params_state], outputs=params_state)

    status = gr.Markdown("", elem_id="task-status")
    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Markdown(label="Prompt", elem_id="task-prompt")
            images = gr.Gallery(
                label="Images, as the model sees them",
                columns=4,
                height="auto",
                object_fit="contain",
                elem_id="task-images",
            )
            videos = []
            for first in range(0, MAX_VIDEOS, VIDEOS_PER_ROW):
                with gr.Row():
                    videos += [
                        gr.Video(
                            label=f"video {i + 1}",
                            visible=False,
                            loop=True,
                            height=VIDEO_HEIGHT,
                            min_width=160,
                            elem_id=f"task-video-{i}",
                        )  # fmt: skip
                        for i in range(first, first + VIDEOS_PER_ROW)
                    ]
        with gr.Column(scale=2):
            truth = gr.Textbox(label="Ground truth", interactive=False, elem_id="task-truth")
            reference = gr.Textbox(label="Reference completion", interactive=False, elem_id="task-reference")
            answer = gr.Textbox(label="Your answer (a completion, e.g. <answer>...</answer>)", elem_id="task-answer")
            score_btn = gr.Button("Score", elem_id="task-score")
    score_note = gr.Markdown("")
    scores = gr.Dataframe(
        value=EMPTY_SCORES,
        label="Reward, part by part, next to the baselines",
        interactive=False,
        wrap=True,
        max_chars=70,
        elem_id="task-scores",
    )
    with gr.Column(elem_id="task-evidence"):
        gr.Markdown("**Evidence**: the task's proof of the answer, made from the sample's own media")
        panels = [
            gr.Image(type="pil", interactive=False, visible=False, elem_id=f"task-evidence-{i}")
            for i in range(MAX_PANELS)
        ]

    outputs = [drawn_state, status, prompt, images, truth, reference, score_note, scores, *videos, *panels]

    def show(task_name: str, params: dict, source_kind: str, files: list | None, seed_value: float | None) -> list:
        try:
            where: Any = "default"
            if source_kind == "upload":
                if not files:
                    raise ValueError("choose files to upload, or switch the source to default")
                paths = check_uploads([getattr(f, "name", f) for f in files], ctx.max_upload_mb)
                where = task_view.upload_folder(paths, ctx.work_dir / "uploads")
            drawn = task_view.draw(
                task_name,
                task_view.form_values(task_name, params or {}),
                int(seed_value or 0),
                where,
                ctx.corpus,
            )
            shown = task_view.view(drawn, Path(tempfile.mkdtemp(prefix="videos-", dir=ctx.work_dir)))
        except Exception as e:  # any task failure is shown on the page; the app stays up
            log.warning("task %s failed: %s", task_name, e)
            hidden = [gr.update(visible=False) for _ in (*videos, *panels)]
            return [None, error_text(e), "", [], "", "", "", EMPTY_SCORES, *hidden]
        note = f"Sample `{drawn.sample.id}` of task `{task_name}` (seed {drawn.seed})."
        if len(shown.videos) > MAX_VIDEOS:
            note += f" Showing the first {MAX_VIDEOS} of {len(shown.videos)} videos."
        if shown.evidence_error:
            note += f"\n\n**Evidence failed:** {shown.evidence_error}"
        video_updates = [
            gr.update(value=str(shown.videos[i][0]), label=shown.videos[i][1], visible=True)
            if i < len(shown.videos)
            else gr.update(value=None, visible=False)
            for i in range(MAX_VIDEOS)
        ]
        if len(shown.evidence) > MAX_PANELS:
            note += f" Showing the first {MAX_PANELS} of {len(shown.evidence)} evidence panels."
        panel_updates = [
            gr.update(value=shown.evidence[i][0], label=shown.evidence[i][1], visible=True)
            if i < len(shown.evidence)
            else gr.update(value=None, visible=False)
            for i in range(MAX_PANELS)
        ]
        pictures = gr.update(value=shown.images, visible=bool(shown.images))
        shown_parts = [shown.prompt, pictures, shown.answer, shown.reference]
        # an earlier sample's scores are cleared
        return [drawn, note, *shown_parts, "", EMPTY_SCORES, *video_updates, *panel_updates]

    inputs = [task_dd, params_state, source, uploads, seed]
    draw_btn.click(show, inputs=inputs, outputs=outputs)
    seed.submit(show, inputs=inputs, outputs=outputs)

    def switch(task_name: str, source_kind: str, files: list | None, seed_value: float | None) -> list:
        return [{}, *show(task_name, {}, source_kind, files, seed_value)]

    task_dd.change(switch, inputs=[task_dd, source, uploads, seed], outputs=[params_state, *outputs])
    source.change(lambda kind: gr.update(visible=kind == "upload"), inputs=source, outputs=uploads)

    def score(drawn: task_view.Drawn | None, completion: str) -> tuple[str, Any]:
        if drawn is None:
            return "Draw a sample first.", None
        try:
            rows, error = task_view.score(drawn, completion or "")
        except Exception as e:
            return error_text(e), None
        headers, table = task_view.score_table(rows)
        note = "" if error is None else f"**The task's reward raised** (scored 0): {error}"
        return note, gr.update(value=table, headers=headers)

    score_btn.click(score, inputs=[drawn_state, answer], outputs=[score_note, scores])
    answer.submit(score, inputs=[drawn_state, answer], outputs=[score_note, scores])
    blocks.load(show, inputs=inputs, outputs=outputs)


def _field_component(f: task_view.FormField, task_name: str) -> gr.components.Component:
    key = f"{task_name}.{f.name}"
    common = dict(label=f.name, info=f.doc, key=key, elem_classes=["param-field"], min_width=220, interactive=True)
    if f.kind == "bool":
        return gr.Checkbox(value=f.default, **common)
    if f.kind == "choice":
        return gr.Dropdown(list(f.choices), value=f.default, **common)
    if f.kind == "integer":
        return gr.Number(value=f.default, precision=0, **common)
    if f.kind == "number":
        return gr.Number(value=f.default, **common)
    return gr.Textbox(value=f.default, **common)


def _setter(name: str):
    def set_value(value: Any, params: dict | None) -> dict:
        return {**(params or {}), name: value}

    return set_value


__all__ = ["MAX_VIDEOS", "build", "error_text"]
