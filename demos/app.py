"""The demo app: one page with a tab per job (Tasks, Model, Spy game, Runs, Datasets), and its server.

Safe by default: it binds 127.0.0.1, makes a public share link only when asked, bounds uploads, confines typed
paths to the `--root` folders, and shows a failing task's error in the page instead of stopping.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import gradio as gr

from demos import datasets_tab, model_tab, runs_tab, spy_tab, tasks_tab
from demos.context import DemoContext

TITLE = "mmrl demo"
CSS = """
.param-field { max-width: 360px; }
#task-prompt { max-height: 420px; overflow-y: auto; }
"""


def build_app(ctx: DemoContext) -> gr.Blocks:
    """The page, wired to `ctx` (not launched)."""
    with gr.Blocks(title=TITLE) as blocks:
        gr.Markdown(
            "# mmrl demo\nSee every self-supervised task as the model sees it, try a model on it, "
            "watch a spy game and a training run."
        )
        drawn_state = gr.State(None)
        with gr.Tabs():
            with gr.Tab("Tasks", id="tasks"):
                tasks_tab.build(ctx, blocks, drawn_state)
            with gr.Tab("Model", id="model"):
                model_tab.build(ctx, drawn_state)
            with gr.Tab("Spy game", id="spy"):
                spy_tab.build(ctx)
            with gr.Tab("Runs", id="runs"):
                runs_tab.build(ctx)
            with gr.Tab("Datasets", id="datasets"):
                datasets_tab.build(ctx)
    return blocks


def launch(
    ctx: DemoContext,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    block: bool = True,
) -> gr.Blocks:
    """Serve the app on `host:port` (a public gradio.live link only with `share`); with `block` it returns when
    the server stops (Ctrl-C), and the scratch folder is removed."""
    own_work_dir = ctx.work_dir == Path(".")
    if own_work_dir:
        ctx.work_dir = Path(tempfile.mkdtemp(prefix="mmrl-demo-"))
    blocks = build_app(ctx)
    blocks.queue(default_concurrency_limit=2)
    try:
        blocks.launch(
            server_name=host,
            server_port=port,
            share=share,
            max_file_size=f"{ctx.max_upload_mb:g}mb",
            prevent_thread_lock=not block,
            quiet=False,
            show_error=True,
            css=CSS,
            footer_links=[],
            ssr_mode=False,
            mcp_server=False,
            enable_monitoring=False,
        )
    finally:
        if block and own_work_dir:
            shutil.rmtree(ctx.work_dir, ignore_errors=True)
    return blocks


__all__ = ["build_app", "launch"]
