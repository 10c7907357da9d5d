"""Side-by-side GRPO step time: mmrl vs TRL's `GRPOTrainer`, same tiny Qwen2.5-VL, same work, one process.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/grpo_vs_trl.py            # defaults: --configs tiny,5m --steps 10 --warmup 2

Both sides get the same random-init checkpoint (`mmrl.tiny.build_tiny`, float32, CPU), the same
`dominant_color` Samples in the same order (one prompt set per step), the same reward (the task's own,
wrapped for TRL's reward-function signature), the same group size, completion length, temperature,
top-p/top-k, learning rate, AdamW, grad clip 1.0, constant schedule, no KL (beta 0), one optimiser
step per rollout batch (TRL: `gradient_accumulation_steps=1`, `num_iterations=1`; mmrl:
`ppo_epochs=1`, `mini_batches=1`), all sequences of a step in one generate call and in one
forward/backward (no gradient checkpointing on either side).

Equal work: completions are forced to exactly `--max-new-tokens` tokens on both sides: TRL gets
`generation_kwargs={"min_new_tokens": N}`, mmrl `rollout.min_new_tokens = N`. The script checks, from
a wrapper around each model's `generate`, that both sides generate the same (batch, prompt length,
new tokens) every step, and that both see the same Sample ids per step. (mmrl's HF engine prefills
each prompt of a group once in a forward of its own before `generate`; its "engine generate" time
includes that, its "HF generate" time does not.)

Timing alternates inside one `trainer.train()` run: a callback runs one mmrl step before TRL's first
step and one after each TRL step (mmrl, TRL, mmrl, TRL, ...). An mmrl step is what `mmrl.grpo.train`
does per step: `producer.produce` + `update_policy` + `engine.sync_weights`. A TRL step is the wall
time between the end of the previous mmrl step and TRL's `on_step_end`: dataloader fetch, generation,
scoring, forward/backward, clip, optimiser and scheduler step. The first `--warmup` steps of each
side are dropped; medians over `--steps` steps are reported.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks` is importable
from benchmarks.peer import SPECS, build_checkpoint, mmrl_config, require_trl, trl_config  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=10, help="timed steps per side and config (median over these)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side before the timed ones")
    p.add_argument("--prompts", type=int, default=4, help="prompts per step")
    p.add_argument("--group", type=int, default=8, help="completions per prompt (GRPO group size, num_generations)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="completion length (forced on both sides)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--configs", default="tiny,5m", help=f"comma-separated model configs: {', '.join(SPECS)}")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, the same for both sides (default 1: on a small shared CPU, more threads than\n"
        "idle cores make tiny matmuls wait on descheduled workers and the numbers follow the background load)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", action="store_true", help="cProfile the timed steps of both sides (inflates times)")
    args = p.parse_args(argv)
    unknown = [c for c in args.configs.split(",") if c not in SPECS]
    if unknown:
        p.error(f"unknown config(s) {unknown}; valid: {', '.join(SPECS)}")
    if args.steps < 1 or args.warmup < 0 or args.prompts < 1 or args.group < 2 or args.max_new_tokens < 1:
        p.error("need --steps >= 1, --warmup >= 0, --prompts >= 1, --group >= 2, --max-new-tokens >= 1")
    return args


# --------------------------------------------------------------------------------------------------
# Shared inputs


def build_model(name: str, root: Path, seed: int) -> tuple[Path, int]:
    """The checkpoint of config `name` and its parameter count."""
    from transformers import AutoModelForImageTextToText

    path = build_checkpoint(name, root, seed)
    params = sum(p.numel() for p in AutoModelForImageTextToText.from_pretrained(path).parameters())
    return path, params


def write_samples(root: Path, count: int, seed: int) -> Path:
    """`count` dominant_color Samples as an mmrl dataset folder (PNG images): both sides read these."""
    from mmrl.registry import get_task
    from mmrl.sample import write_dataset

    task = get_task("dominant_color")
    samples = []
    for k in range(count):
        sample = task.make(k, np.random.default_rng([seed, k]))
        sample.id = f"dominant_color-{k:05d}"
        samples.append(sample)
    return write_dataset(samples, root / "samples", overwrite=True)


class GenerateTimer:
    """Wraps one model object's `generate` (instance attribute): time and shapes of every call."""

    def __init__(self, model: torch.nn.Module):
        self.calls: list[tuple[float, int, int, int]] = []  # (seconds, batch, prompt length, new tokens)
        inner = model.generate

        def generate(*args, **kwargs):
            t0 = time.perf_counter()
            out = inner(*args, **kwargs)
            seq = out.sequences if hasattr(out, "sequences") else out
            B, T = kwargs["input_ids"].shape
            self.calls.append((time.perf_counter() - t0, B, T, seq.shape[1] - T))
            return out

        model.generate = generate

    def take(self) -> tuple[float, list[tuple[int, int, int]]]:
        """(seconds in generate, [(batch, prompt length, new tokens)]) since the last take."""
        calls, self.calls = self.calls, []
        return sum(c[0] for c in calls), [c[1:] for c in calls]


# --------------------------------------------------------------------------------------------------
# mmrl side


class MMRLSide:
    """One mmrl GRPO step = what `mmrl.grpo.trainer.train` runs per step, minus logging and checkpoints."""

    def __init__(self, args: argparse.Namespace, model_path: Path, data_path: Path, total_steps: int, out: Path):
        from mmrl.config import DataConfig, DataSource, RolloutConfig
        from mmrl.grpo.trainer import setup_policy
        from mmrl.producers import TaskProducer
        from mmrl.rollout import make_engine

        seqs = args.prompts * args.group
        rollout = RolloutConfig(
            n=args.group,
            max_new_tokens=args.max_new_tokens,
            min_new_tokens=args.max_new_tokens,  # fixed-length completions, as TRL's min_new_tokens
            temperature=args.temperature,
            top_p=1.0,
            top_k=0,
            batch_size=seqs,  # one generate call per step, as TRL
        )
        cfg = mmrl_config(model_path, rollout, steps=total_steps, lr=args.lr, sequences=seqs, seed=args.seed,
                          out_dir=out / "mmrl-run")  # fmt: skip
        cfg.data = DataConfig(
            sources=[DataSource(task="dominant_color", path=str(data_path))],
            prompts_per_step=args.prompts,
            eval_samples=0,
            seed=args.seed,
        )
        self.cfg = cfg
        self.policy = setup_policy(cfg, total_steps)
        model = self.policy.unwrapped
        self.engine = make_engine(cfg.rollout, model, self.policy.processor, seed=args.seed)
        self.timer = GenerateTimer(model)
        self.producer = TaskProducer(cfg, self.policy.processor)
        # The Sample order mmrl will draw (a twin producer, same config): TRL's dataset follows it.
        twin = TaskProducer(cfg, self.policy.processor)
        self.order = [twin.sources[0].draw().id for _ in range(args.prompts * total_steps)]
        self.step_index = 0

    def step(self) -> dict[str, Any]:
        from mmrl.grpo.trainer import update_policy

        k = self.step_index
        self.step_index += 1
        t0 = time.perf_counter()
        rollouts, metrics = self.producer.produce(self.engine, k)
        t1 = time.perf_counter()
        update_policy(self.policy, rollouts, self.cfg, k)
        self.engine.sync_weights(self.policy.unwrapped)
        t2 = time.perf_counter()
        hf_generate, shapes = self.timer.take()
        return {
            "step": t2 - t0,
            "produce": t1 - t0,
            "engine_generate": metrics["time/generate"],
            "hf_generate": hf_generate,
            "score": metrics["time/score"],
            "update": t2 - t1,
            "tokens": int(metrics["tokens_generated"]),
            "shapes": shapes,
            "ids": sorted({r.sample_id for r in rollouts}),
        }


# --------------------------------------------------------------------------------------------------
# TRL side


def make_trl_trainer(args: argparse.Namespace, model_path: Path, data_path: Path, order: list[str], total: int, out):
    """A `GRPOTrainer` on the same checkpoint, Samples (in mmrl's order) and reward, with matching settings."""
    import datasets
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import GRPOTrainer

    from mmrl.registry import get_task
    from mmrl.sample import read_dataset

    task = get_task("dominant_color")
    by_id = {s.id: s for s in read_dataset(data_path)}
    rows: dict[str, list] = {"prompt": [], "image": [], "sample_id": []}
    for sid in order:
        sample = by_id[sid]
        (message,) = sample.messages
        image = next(item["image"] for item in message["content"] if item["type"] == "image")
        text = next(item["text"] for item in message["content"] if item["type"] == "text")
        rows["prompt"].append([{"role": "user", "content": text}])  # TRL puts the `image` column first, as mmrl's
        rows["image"].append(str(image))
        rows["sample_id"].append(sid)
    dataset = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image())

    record: dict[str, Any] = {"tokens": 0, "ids": set()}

    def dominant_color_reward(prompts, completions, completion_ids, sample_id, **kwargs) -> list[float]:
        """The task's own reward, in TRL's reward-function signature."""
        record["tokens"] += sum(len(ids) for ids in completion_ids)
        record["ids"].update(sample_id)
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [float(task.reward(t, by_id[sid]).score) for t, sid in zip(texts, sample_id)]

    config = trl_config(
        output_dir=out / "trl-run",
        sequences=args.prompts * args.group,
        group=args.group,
        completion_tokens=args.max_new_tokens,
        lr=args.lr,
        steps=total,
        seed=args.seed,
        generation_kwargs={"min_new_tokens": args.max_new_tokens},  # fixed-length completions
        temperature=args.temperature,
        top_p=1.0,
        top_k=0,
    )
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(model_path)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=dominant_color_reward,
        args=config,
        train_dataset=dataset,
        processing_class=processor,
    )
    return trainer, record


# --------------------------------------------------------------------------------------------------
# Alternating run


def run_config(name: str, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from transformers import PrinterCallback, TrainerCallback

    total = args.warmup + args.steps
    model_path, params = build_model(name, root, args.seed)
    data_path = write_samples(root / name, args.prompts * total, args.seed)
    mm = MMRLSide(args, model_path, data_path, total, root / name)
    trainer, record = make_trl_trainer(args, model_path, data_path, mm.order, total, root / name)
    trl_timer = GenerateTimer(trainer.model)
    profiles = {"mmrl": cProfile.Profile(), "trl": cProfile.Profile()} if args.profile else None
    mm_rows: list[dict[str, Any]] = []
    trl_rows: list[dict[str, Any]] = []

    class Alternate(TrainerCallback):
        """mmrl step, TRL step, mmrl step, ...: an mmrl step runs before TRL's first and after each of TRL's."""

        mark = 0.0

        def _mmrl(self) -> None:
            timed = profiles is not None and len(mm_rows) >= args.warmup
            if timed:
                profiles["mmrl"].enable()
            mm_rows.append(mm.step())
            if timed:
                profiles["mmrl"].disable()
            self.mark = time.perf_counter()
            if profiles is not None and len(trl_rows) >= args.warmup:
                profiles["trl"].enable()

        def on_train_begin(self, *a, **kw):
            self._mmrl()

        def on_step_end(self, a, state, control, **kw):
            if profiles is not None:
                profiles["trl"].disable()
            elapsed = time.perf_counter() - self.mark
            hf_generate, shapes = trl_timer.take()
            trl_rows.append({"step": elapsed, "hf_generate": hf_generate, "tokens": record["tokens"],
                             "shapes": shapes, "ids": sorted(record["ids"])})  # fmt: skip
            record["tokens"], record["ids"] = 0, set()
            if state.global_step < total:
                self._mmrl()

    trainer.add_callback(Alternate())
    trainer.remove_callback(PrinterCallback)  # TRL's end-of-training metrics dict: the table is the output
    trainer.train()
    return summarise(name, params, mm_rows, trl_rows, args, profiles)


def summarise(name, params, mm_rows, trl_rows, args, profiles) -> dict[str, Any]:
    """Medians over the timed steps, after checking that both sides did the same work each step."""
    if len(mm_rows) != len(trl_rows):
        raise AssertionError(f"{len(mm_rows)} mmrl steps but {len(trl_rows)} TRL steps")
    expected = args.prompts * args.group * args.max_new_tokens
    for k, (m, t) in enumerate(zip(mm_rows, trl_rows)):
        if m["shapes"] != t["shapes"] or m["tokens"] != t["tokens"] or m["tokens"] != expected:
            raise AssertionError(
                f"step {k}: unequal work: mmrl generate calls {m['shapes']} ({m['tokens']} tokens), "
                f"TRL {t['shapes']} ({t['tokens']} tokens), expected {expected} tokens"
            )
        if m["ids"] != t["ids"]:
            raise AssertionError(f"step {k}: different prompts: mmrl {m['ids']} vs TRL {t['ids']}")
    mm_rows, trl_rows = mm_rows[args.warmup :], trl_rows[args.warmup :]

    def med(rows, key):
        return statistics.median(r[key] for r in rows)

    out = {
        "config": name,
        "params": params,
        "tokens": mm_rows[0]["tokens"],
        "prompt_len": mm_rows[0]["shapes"][0][1],
        "mmrl": {k: med(mm_rows, k) for k in ("step", "produce", "engine_generate", "hf_generate", "score", "update")},
        "trl": {k: med(trl_rows, k) for k in ("step", "hf_generate")},
        "mmrl_spread": (min(r["step"] for r in mm_rows), max(r["step"] for r in mm_rows)),
        "trl_spread": (min(r["step"] for r in trl_rows), max(r["step"] for r in trl_rows)),
        "profiles": profiles,
    }
    out["ratio"] = out["mmrl"]["step"] / out["trl"]["step"]
    return out


def report(results: list[dict[str, Any]], args: argparse.Namespace, versions: dict[str, str]) -> str:
    seqs = args.prompts * args.group
    lines = [
        f"mmrl vs TRL {versions['trl']} GRPO step, CPU float32, {args.threads} torch threads "
        f"(torch {versions['torch']}, transformers {versions['transformers']})",
        f"per step: {args.prompts} prompts x {args.group} completions = {seqs} sequences x "
        f"{args.max_new_tokens} new tokens (forced, checked equal); {args.warmup} warm-up + {args.steps} timed "
        "steps per side, alternating; medians [min-max]",
        "",
        "| config | params | prompt tokens | mmrl step s | TRL step s | mmrl/TRL | mmrl ms/token | TRL ms/token "
        "| mmrl engine generate s | TRL HF generate s | mmrl produce s | mmrl update s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m, t = r["mmrl"], r["trl"]
        lines.append(
            f"| {r['config']} | {r['params']:,} | {r['prompt_len']} "
            f"| {m['step']:.3f} [{r['mmrl_spread'][0]:.3f}-{r['mmrl_spread'][1]:.3f}] "
            f"| {t['step']:.3f} [{r['trl_spread'][0]:.3f}-{r['trl_spread'][1]:.3f}] "
            f"| **{r['ratio']:.2f}** | {1000 * m['step'] / r['tokens']:.2f} | {1000 * t['step'] / r['tokens']:.2f} "
            f"| {m['engine_generate']:.3f} | {t['hf_generate']:.3f} | {m['produce']:.3f} | {m['update']:.3f} |"
        )
    lines.append("")
    lines.append("mmrl produce = prepare (draw + encode prompts) + engine generate + score; medians per phase:")
    for r in results:
        m = r["mmrl"]
        prepare = m["produce"] - m["engine_generate"] - m["score"]
        lines.append(
            f"  {r['config']}: prepare {prepare:.3f} s, engine generate {m['engine_generate']:.3f} s "
            f"(of which HF generate {m['hf_generate']:.3f} s, the rest mostly the shared prompt prefill), "
            f"score {m['score']:.3f} s, "
            f"update + sync {m['update']:.3f} s"
        )
    return "\n".join(lines)


def print_profiles(results: list[dict[str, Any]], limit: int = 30) -> None:
    for r in results:
        for side, prof in (r["profiles"] or {}).items():
            buf = io.StringIO()
            stats = pstats.Stats(prof, stream=buf).strip_dirs().sort_stats("cumulative")
            stats.print_stats(limit)
            print(f"\n=== cProfile {r['config']} {side} (timed steps, cumulative) ===")
            print(buf.getvalue())


def quiet() -> None:
    """Silence progress bars and warnings of the libraries (the table is the output)."""
    import datasets
    import transformers

    warnings.filterwarnings("ignore")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
    logging.getLogger("mmrl").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    trl = require_trl()
    if trl is None:
        return 2
    quiet()
    import transformers

    versions = {"trl": trl.__version__, "torch": torch.__version__, "transformers": transformers.__version__}
    results = []
    with tempfile.TemporaryDirectory(prefix="mmrl-bench-") as tmp:
        for name in args.configs.split(","):
            t0 = time.perf_counter()
            results.append(run_config(name, args, Path(tmp)))
            print(f"[{name}: done in {time.perf_counter() - t0:.0f} s]", file=sys.stderr, flush=True)
    if torch.get_num_threads() != args.threads:
        raise AssertionError(f"torch threads changed to {torch.get_num_threads()} during the run")
    print(report(results, args, versions))
    cli = " ".join(argv if argv is not None else sys.argv[1:])
    print(f"\ncommand: .venv/bin/python benchmarks/grpo_vs_trl.py {cli}".rstrip())
    if args.profile:
        print_profiles(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
