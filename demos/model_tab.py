"""The Model tab: load the tiny model, a local checkpoint folder or a run's `final/`; sample K completions of
the Tasks tab's current sample; see each one's reward parts and the group advantages training would compute.

Sampling yields after every completion, so the table fills in as it goes and Cancel stops it between two
completions. Loading and sampling hold the app's model lock: one generation at a time on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

from demos.context import DemoContext, LoadedModel
from demos.tasks_tab import error_text
from mmrl.config import ModelConfig
from mmrl.contracts import SamplingParams
from mmrl.errors import MMRLError
from mmrl.grpo.advantages import ESTIMATORS, group_advantages
from mmrl.task import score_completion

DEFAULT_MODEL = "tiny:qwen2.5-vl"
MAX_K = 16
MAX_PROMPT_TOKENS = 8192


def model_config(ctx: DemoContext, typed: str) -> ModelConfig:
    """The model config of a typed model: `tiny:<family>` as is, any other text a folder inside the roots
    (a checkpoint, or a run folder whose `final/` is then used). Hub ids are refused: the app never downloads."""
    text = (typed or "").strip()
    if text.startswith("tiny:"):
        return ModelConfig(path=text)
    folder = ctx.roots.resolve(text, "model folder")
    if (folder / "final" / "config.json").exists():
        folder = folder / "final"
    if not (folder / "config.json").exists():
        raise MMRLError(f"{folder} is not a model folder (no config.json, and no final/config.json)")
    return ModelConfig(path=str(folder))


def load_model(ctx: DemoContext, typed: str) -> LoadedModel:
    """Load the typed model into `ctx` (replacing the one there)."""
    from mmrl.models import load_policy

    cfg = model_config(ctx, typed)
    with ctx.model_lock:
        model, processor = load_policy(cfg, device="cpu")
        model.eval()
        ctx.model = LoadedModel(typed.strip(), model, processor, cfg)
    return ctx.model


def sample_completions(
    ctx: DemoContext,
    drawn: Any,
    k: int,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    estimator: str = "grpo",
) -> Iterator[pd.DataFrame]:
    """Yield the table after each of `k` completions of the drawn sample: completion, reward, parts and the
    group advantages of the completions so far (`mmrl.grpo.advantages.group_advantages`, one group)."""
    from mmrl.rollout import make_engine
    from mmrl.rollout.encode import encode_prompt

    loaded = ctx.model
    if loaded is None:
        raise MMRLError("load a model first")
    if drawn is None:
        raise MMRLError("draw a sample in the Tasks tab first")
    with ctx.model_lock:
        from mmrl.config import RolloutConfig

        prompt = encode_prompt(loaded.processor, drawn.sample.messages, loaded.model_cfg,
                               max_prompt_tokens=MAX_PROMPT_TOKENS)  # fmt: skip
        engine = make_engine(RolloutConfig(engine="hf", batch_size=1), loaded.model, loaded.processor, seed=seed)
        texts, rewards, parts = [], [], []
        for i in range(k):
            sampling = SamplingParams(
                max_new_tokens=max_new_tokens,
                temperature=max(temperature, 1e-4),
                seed=int(np.random.default_rng([seed, i]).integers(2**31)),
            )
            (group,) = engine.generate([prompt], 1, sampling)
            text = group[0].text
            reward, error = score_completion(drawn.task, text, drawn.sample)
            texts.append(text)
            rewards.append(float(reward.score))
            parts.append({k2: float(v) for k2, v in reward.parts.items()} | ({"error": error} if error else {}))
            yield completions_table(texts, rewards, parts, estimator)


def completions_table(
    texts: list[str], rewards: list[float], parts: list[dict[str, Any]], estimator: str = "grpo"
) -> pd.DataFrame:
    """One row per completion: its number, reward, parts, group advantage and text."""
    advantages = group_advantages(np.array(rewards), [0] * len(rewards), estimator)
    names: list[str] = []
    for p in parts:
        names += [n for n in p if n not in names]
    rows = [
        [i + 1, round(r, 4), *[p.get(n, "") for n in names], round(float(a), 4), t]
        for i, (t, r, p, a) in enumerate(zip(texts, rewards, parts, advantages))
    ]
    return pd.DataFrame(rows, columns=["#", "reward", *names, "advantage", "completion"])


def build(ctx: DemoContext, drawn_state: gr.State) -> None:
    """The Model tab's components and events."""
    with gr.Row():
        path = gr.Textbox(DEFAULT_MODEL, label="Model: tiny:<family>, a checkpoint folder or a run folder (its final/)",
                          scale=4, elem_id="model-path")  # fmt: skip
        load_btn = gr.Button("Load", variant="primary", scale=1, elem_id="model-load")
    model_status = gr.Markdown("No model loaded.", elem_id="model-status")
    with gr.Row():
        k = gr.Slider(2, MAX_K, value=4, step=1, label="K completions (the GRPO group)", elem_id="model-k")
        temperature = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Temperature", elem_id="model-temp")
        max_new = gr.Slider(4, 256, value=32, step=4, label="Max new tokens", elem_id="model-max-new")
        seed = gr.Number(0, label="Seed", precision=0, minimum=0, elem_id="model-seed")
        estimator = gr.Dropdown(list(ESTIMATORS), value="grpo", label="Advantage estimator")
    with gr.Row():
        sample_btn = gr.Button("Sample K completions of the current task sample", variant="primary",
                               elem_id="model-sample")  # fmt: skip
        cancel_btn = gr.Button("Cancel", elem_id="model-cancel")
    sample_status = gr.Markdown("", elem_id="model-sample-status")
    table = gr.Dataframe(label="Completions, rewards and group advantages", interactive=False, wrap=True, max_chars=70,
                         elem_id="model-table")  # fmt: skip

    def load(typed: str, progress: gr.Progress = gr.Progress()) -> str:  # noqa: B008 - gradio's injection
        progress(0.1, desc=f"loading {typed}")
        try:
            loaded = load_model(ctx, typed)
        except Exception as e:
            return error_text(e)
        n = sum(p.numel() for p in loaded.model.parameters())
        return f"Loaded `{loaded.name}` ({n / 1e6:.2f} M parameters, {type(loaded.model).__name__})."

    def run(drawn: Any, k_: float, temp: float, max_new_: float, seed_: float, est: str) -> Iterator[list]:
        try:
            done = 0
            for frame in sample_completions(ctx, drawn, int(k_), float(temp), int(max_new_), int(seed_ or 0), est):
                done += 1
                yield [f"{done} of {int(k_)} completions sampled.", frame]
            yield [f"{done} completions of `{drawn.sample.id}`; advantages over the group of {done}.", frame]
        except Exception as e:
            yield [error_text(e), gr.update()]

    load_event = load_btn.click(load, inputs=path, outputs=model_status)
    sample_event = sample_btn.click(run, inputs=[drawn_state, k, temperature, max_new, seed, estimator],
                                    outputs=[sample_status, table])  # fmt: skip
    cancel_btn.click(lambda: "Cancelled.", outputs=sample_status, cancels=[load_event, sample_event])


__all__ = ["DEFAULT_MODEL", "build", "completions_table", "load_model", "model_config", "sample_completions"]
