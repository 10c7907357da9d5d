"""`mmrl eval`: score a model on a generated dataset, next to the random-guess and best-constant baselines.

For each Sample the model's completion (one per sample, batched through the hf engine) is scored by
its own task's reward: `registry.get_task(sample.task, **sample.meta["params"]).reward` (the parameters it
was generated with, when the Sample records them; else the task's defaults). Per group (by task, and by `meta["split"]`
when samples carry one) we report:

- `count`: samples scored (prompts over `max_prompt_tokens` or with unreadable media are skipped and
  counted under `skipped`, never scored as 0);
- `accuracy`: fraction of exact answers (`Reward.is_exact`: the reward's `exact` part equals 1 when it
  has one (the ordering rewards), else its `accuracy` part equals 1 (partial credit, e.g. Visual
  Jigsaw's γ·fraction, never counts), else `score >= 1`);
- `mean_reward`: mean of `Reward.score`;
- `spread` and `top share`: distinct answers ÷ samples, and the share of the most common answer
  (`mmrl.task.answer_spread`): a policy that gives one reply to every prompt shows top share 1.

The `random` row scores, for the same samples, answers of the right form drawn at random (mean over
`baseline_draws` draws per sample): the task's own `random_answer(sample, rng)` (the ordering tasks: a
uniformly random permutation) when it gives one; else a shuffle of the reference answers of the task's
samples in the dataset (a guess from the dataset's answer distribution). The `constant` row gives every
sample of a task the one reply with the highest mean reward on the dataset (`constant_completions`).
A model has learnt something about the input only where it beats both rows.

`score(samples, completions)` scores any completions (e.g. `reference_completions(samples)`, which
must reach accuracy 1.0: a check of the scoring path without a model).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mmrl.baselines import Scored, TaskCache, constant_completions, random_baseline, score
from mmrl.config import ModelConfig, RolloutConfig
from mmrl.contracts import SamplingParams
from mmrl.errors import MediaError, MMRLError
from mmrl.models import load_policy
from mmrl.rollout import encode_prompt, make_engine
from mmrl.sample import SAMPLES_FILE, Sample, read_dataset
from mmrl.task import answer_spread

log = logging.getLogger(__name__)

GroupBy = dict[str, Callable[[Sample], "str | None"]]
DEFAULT_GROUPS: GroupBy = {
    "task": lambda s: s.task,
    "task/split": lambda s: f"{s.task}/{s.meta['split']}" if s.meta.get("split") else None,
    "split": lambda s: s.meta.get("split"),
    "perturbation/split": lambda s: (
        f"{s.meta['perturbation']}/{s.meta.get('split', '-')}" if s.meta.get("perturbation") else None
    ),
}
"""Result groupings: name -> key of a sample (None leaves the sample out of that grouping). `task/split`
is the per-task, per-split table of a suite; `perturbation/split` the grounding columns of `viu`."""
POLICIES = ("model", "random", "constant")


def summarize(samples: Sequence[Sample], scored: dict[str, list[Scored]], group_by: GroupBy) -> dict[str, Any]:
    """`{grouping: {key: {policy: {count, accuracy, mean_reward, spread, top_share}}}}`; groupings without keys
    are left out. `spread` and `top_share` are `mmrl.task.answer_spread` of the policy's answers."""
    groups: dict[str, Any] = {}
    for name, key_of in group_by.items():
        keys = [key_of(s) for s in samples]
        table: dict[str, Any] = {}
        for key in sorted({k for k in keys if k is not None}, key=str):
            idx = [i for i, k in enumerate(keys) if k == key]
            table[str(key)] = {}
            for policy, rows in scored.items():
                spread, top_share = answer_spread([rows[i].answer for i in idx])
                table[str(key)][policy] = {
                    "count": len(idx),
                    "accuracy": float(np.mean([rows[i].accuracy for i in idx])),
                    "mean_reward": float(np.mean([rows[i].reward for i in idx])),
                    "spread": spread,
                    "top_share": top_share,
                }
        if table:
            groups[name] = table
    return groups


# --------------------------------------------------------------------------------------------------
# Generation


def generate_completions(
    model: Any,
    processor: Any,
    samples: Sequence[Sample],
    *,
    model_cfg: ModelConfig,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    max_prompt_tokens: int = 4096,
    seed: int = 0,
    engine: str = "hf",
    progress: bool = True,
) -> tuple[list[str | None], Counter]:
    """One completion per sample (None where the prompt was skipped) and the skip counts by reason:
    `prompt_over_budget`, `unreadable_media`, `prompt_rejected` (the processor refused the media)."""
    if batch_size < 1:
        raise MMRLError(f"--batch-size must be at least 1, got {batch_size}")
    rollout = RolloutConfig(engine=engine, batch_size=batch_size, max_new_tokens=max_new_tokens)
    generator = make_engine(rollout, model, processor, seed=seed)
    completions: list[str | None] = [None] * len(samples)
    skipped: Counter = Counter()
    bar = tqdm(total=len(samples), desc="eval", unit="sample", disable=not progress, dynamic_ncols=True)
    try:
        for chunk, start in enumerate(range(0, len(samples), batch_size)):
            indices, prompts = [], []
            for i in range(start, min(start + batch_size, len(samples))):
                try:
                    prompt = encode_prompt(
                        processor,
                        samples[i].messages,
                        model_cfg,
                        max_prompt_tokens=max_prompt_tokens,
                        keep_media=engine != "hf",
                    )
                except MediaError as e:
                    skipped["unreadable_media"] += 1
                    log.warning("skipping sample %s: %s", samples[i].id, e)
                    continue
                except MMRLError as e:
                    reason = "prompt_over_budget" if str(e).startswith("prompt needs") else "prompt_rejected"
                    skipped[reason] += 1
                    log.warning("skipping sample %s: %s", samples[i].id, e)
                    continue
                indices.append(i)
                prompts.append(prompt)
            if prompts:
                sampling = SamplingParams(
                    max_new_tokens=max_new_tokens,
                    temperature=temperature,
                    seed=int(np.random.default_rng([seed, chunk]).integers(2**31)),
                )
                for i, group in zip(indices, generator.generate(prompts, 1, sampling)):
                    completions[i] = group[0].text
            bar.update(min(batch_size, len(samples) - start))
            if skipped:
                bar.set_postfix(skipped=sum(skipped.values()), refresh=False)
    finally:
        bar.close()
    return completions, skipped


def evaluate_dataset(
    model: Any,
    processor: Any,
    samples: Sequence[Sample],
    *,
    completions: Sequence[str | None] | None = None,
    model_cfg: ModelConfig | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    max_prompt_tokens: int = 4096,
    seed: int = 0,
    baseline_draws: int = 16,
    group_by: GroupBy | None = None,
    engine: str = "hf",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate `model` on `samples`; returns the result dict (`format_table` prints it).

    `completions` replaces generation (then `model` and `processor` may be None); a None entry
    marks a skipped sample. Keys: `samples` (given), `evaluated`, `skipped` (by reason), `groups`
    (see `summarize`; policies `model` and `random`), `per_sample` (id, task, completion, reward,
    accuracy, parts). `group_by` maps a grouping name to a sample's key (default: task and split).
    """
    if not samples:
        raise MMRLError("no samples to evaluate")
    skipped: Counter = Counter()
    if completions is None:
        if model is None or processor is None:
            raise MMRLError("evaluate_dataset needs a model and processor, or completions")
        completions, skipped = generate_completions(
            model,
            processor,
            samples,
            model_cfg=model_cfg or ModelConfig(),
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            max_prompt_tokens=max_prompt_tokens,
            seed=seed,
            engine=engine,
            progress=progress,
        )
    elif len(completions) != len(samples):
        raise MMRLError(f"{len(samples)} samples but {len(completions)} completions")
    kept = [i for i, c in enumerate(completions) if c is not None]
    if not kept:
        raise MMRLError(f"every sample was skipped ({dict(skipped)}); raise --max-prompt-tokens or lower pixels")
    used = [samples[i] for i in kept]
    tasks = TaskCache()
    scored = {"model": score(used, [completions[i] for i in kept], tasks)}
    if baseline_draws > 0:
        scored["random"] = random_baseline(used, baseline_draws, seed, tasks)
        scored["constant"] = score(used, constant_completions(used, tasks), tasks)
    return {
        "samples": len(samples),
        "evaluated": len(used),
        "skipped": dict(sorted(skipped.items())),
        "groups": summarize(used, scored, DEFAULT_GROUPS if group_by is None else group_by),
        "per_sample": [dataclasses.asdict(s) for s in scored["model"]],
    }


def format_table(result: dict[str, Any]) -> str:
    """The result as plain-text tables, one per grouping (task first), with the skip counts."""
    lines = []
    for name, table in result["groups"].items():
        rows = [(name, "policy", "count", "accuracy", "mean reward", "spread", "top share")]
        for key, policies in table.items():
            for policy in POLICIES:
                if policy in policies:
                    p = policies[policy]
                    numbers = (p["accuracy"], p["mean_reward"], p["spread"], p["top_share"])
                    rows.append((key, policy, str(p["count"]), *(f"{x:.3f}" for x in numbers)))
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        for r in rows:
            left = [r[c].ljust(widths[c]) for c in range(2)]
            right = [r[c].rjust(widths[c]) for c in range(2, len(r))]
            lines.append("  ".join(left + right).rstrip())
        lines.append("")
    skipped = result.get("skipped") or {}
    total = sum(skipped.values())
    detail = ": " + ", ".join(f"{k} {v}" for k, v in skipped.items()) if total else ""
    lines.append(f"evaluated {result['evaluated']} of {result['samples']} samples; skipped {total}{detail}")
    return "\n".join(lines)


def default_out(data: str | Path, model: str) -> Path:
    """`<data>/eval-<model slug>.json`: the result file when `--out` is not given."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model.rstrip("/")).name or model).strip("-") or "model"
    return Path(data) / f"eval-{slug}.json"


def evaluate(
    model_path: str,
    data: str | Path,
    *,
    n: int | None = None,
    out: str | Path | None = None,
    model_cfg: ModelConfig | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> tuple[dict[str, Any], Path]:
    """Load the model and the dataset (its first `n` samples, in file order), evaluate, write JSON.

    Returns (result, path of the JSON file). `kwargs` go to `evaluate_dataset`.
    """
    folder = Path(data).expanduser()
    if folder.is_dir() and not (folder / SAMPLES_FILE).exists():
        found = "a parquet export" if (folder / "train.parquet").exists() else "no samples.jsonl"
        raise MMRLError(f"{folder} holds {found}; mmrl eval reads the native format (mmrl generate --format jsonl)")
    samples = read_dataset(folder)
    if n is not None:
        if n < 1:
            raise MMRLError(f"--n must be at least 1, got {n}")
        samples = samples[:n]
    cfg = dataclasses.replace(model_cfg or ModelConfig(), path=model_path)
    model, processor = load_policy(cfg)
    result = evaluate_dataset(model, processor, samples, model_cfg=cfg, progress=progress, **kwargs)
    settings = {k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool))}
    result = {"model": model_path, "data": str(folder), "settings": settings, **result}
    path = Path(out) if out is not None else default_out(folder, model_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result, path


__all__ = [
    "DEFAULT_GROUPS",
    "POLICIES",
    "default_out",
    "evaluate",
    "evaluate_dataset",
    "format_table",
    "generate_completions",
    "summarize",
]
