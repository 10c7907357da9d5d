"""Video at scale: peak host memory and step time of one GRPO update, mmrl vs TRL's `GRPOTrainer`, against frames
per video and group size, on the 5M tiny Qwen2.5-VL (issue 18).

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/video_scaling.py            # full grid: frames 8,16,32,48 x groups 4,8,16
    .venv/bin/python benchmarks/video_scaling.py --quick    # frames 8,48 x group 8

Every cell (frames, group, side) runs in a fresh subprocess (`--worker`), so the RSS high-water mark of one cell
is never inherited by another. Both sides get the same checkpoint (the `5m` size of `peer.py`, float32,
CPU, one torch thread), the same video prompts (`--prompts` synthetic clips of `--frames` frames of
`--size`x`--size` px at 2 fps, the same question), the same fixed completions (`--completion-tokens` random text
tokens per sequence, drawn once from the seed: generation is not compared) and the same fixed rewards (drawn
from the seed, so the advantages are non-zero and the backward does real work). A step is what each trainer
does with those: mmrl encodes each prompt once (`encode_prompt`) and runs `update_policy`; TRL runs one
`trainer.train()` iteration (processor on every row, rewards, advantages, forward/backward, clip, AdamW).

TRL 1.16's `GRPOTrainer` carries images but not videos into its loss forward (`images is None` leaves
`forward_kwargs` empty), so `VideoGRPOTrainer` below adds exactly what it does for images: the fixed
completions come from TRL's own `rollout_func` hook, which also runs the processor on every row of the batch
(as TRL's `apply_chat_template(tokenize=True)` does for images) and keeps its video tensors; the loss forward
then gets those tensors and the `mm_token_type_ids` of the sequences (video placeholders = 2), as TRL builds them
for images. The processor runs once per step on TRL's side (TRL runs it twice for images: once to generate,
once for the loss), which favours TRL.

Measured per cell: `peak_rss` (VmHWM of the process: import, model load, inputs, all steps), `step_rss` (the
high-water mark during the steps minus the RSS just before them, VmHWM reset through /proc/self/clear_refs), and
the median step time over `--steps` steps after `--warmup` untimed ones (the first step also allocates AdamW's
state, on both sides). mmrl runs twice per cell unless `--no-lowmem`: with the defaults, and as `mmrl-lowmem` with
`train.vision_chunk_frames` (`--chunk-frames`) + `train.vision_checkpointing` + `train.prompt_once`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: `benchmarks` is importable
from benchmarks.peer import build_checkpoint, mmrl_config, require_trl, trl_config  # noqa: E402

FRAMES = (8, 16, 32, 48)
GROUPS = (4, 8, 16)
QUESTION = "In which direction does the bright square move? Answer left, right, up or down."
SIDES = ("mmrl", "mmrl-lowmem", "trl")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--frames", default=",".join(map(str, FRAMES)), help="comma-separated frames per video")
    p.add_argument("--groups", default=",".join(map(str, GROUPS)), help="comma-separated group sizes")
    p.add_argument("--quick", action="store_true", help="frames 8,48 x group 8, one timed step (overrides both)")
    p.add_argument("--prompts", type=int, default=1, help="video prompts per step")
    p.add_argument("--size", type=int, default=112, help="frame side in pixels (multiple of 28)")
    p.add_argument("--completion-tokens", type=int, default=16, help="tokens per fixed completion")
    p.add_argument("--steps", type=int, default=2, help="timed steps per cell and side (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--chunk-frames", type=int, default=8, help="mmrl-lowmem: train.vision_chunk_frames")
    p.add_argument("--no-lowmem", action="store_true", help="skip the mmrl-lowmem side")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/video_scaling", help="folder for results.json and scaling.png")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)  # internal: run one cell as JSON
    p.add_argument("--model", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.frames, args.groups, args.steps = "8,48", "8", 1
    args.frame_list = [int(x) for x in args.frames.split(",")]
    args.group_list = [int(x) for x in args.groups.split(",")]
    if min(args.frame_list) < 2 or min(args.group_list) < 2 or args.prompts < 1 or args.size % 28:
        p.error("need frames >= 2, groups >= 2, --prompts >= 1 and --size a multiple of 28")
    return args


# --------------------------------------------------------------------------------------------------
# Shared inputs (rebuilt identically in every worker from the seed)


def clip_frames(frames: int, size: int, seed: int, k: int) -> np.ndarray:
    """(frames, size, size, 3) uint8: a bright square moving over a random dark background."""
    rng = np.random.default_rng([seed, k])
    base = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
    out = np.repeat(base[None], frames, axis=0)
    side = size // 4
    for t in range(frames):
        x = int(t * (size - side) / max(frames - 1, 1))
        out[t, size // 3 : size // 3 + side, x : x + side] = 230
    return out


def video_messages(frames: np.ndarray) -> list[dict[str, Any]]:
    """One user turn: the clip (a frame list at 2 fps, `mmrl.rollout.encode`'s format) and the question."""
    return [{"role": "user", "content": [{"type": "video", "video": list(frames), "fps": 2.0},
                                         {"type": "text", "text": QUESTION}]}]  # fmt: skip


def fixed_completions(args: argparse.Namespace, group: int, step: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (prompts x group, completion_tokens) and rewards (prompts x group,) of one step; row k * group + j."""
    rng = np.random.default_rng([args.seed, step, group, 99])
    ids = rng.integers(16, vocab, (args.prompts * group, args.completion_tokens))
    rewards = rng.random(args.prompts * group).round(2)
    return ids, rewards


# --------------------------------------------------------------------------------------------------
# Memory probes (Linux /proc)


def rss_kib(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------------
# mmrl side


def run_mmrl(args: argparse.Namespace, frames: int, group: int, lowmem: bool) -> dict[str, Any]:
    from mmrl.config import RolloutConfig
    from mmrl.contracts import Completion, Rollout
    from mmrl.grpo.advantages import group_advantages
    from mmrl.grpo.trainer import setup_policy, update_policy
    from mmrl.rollout.encode import encode_prompt

    total = args.warmup + args.steps
    rollout = RolloutConfig(n=group, max_new_tokens=args.completion_tokens, max_prompt_tokens=8192)
    switches = {}
    if lowmem:
        switches = dict(vision_chunk_frames=args.chunk_frames, vision_checkpointing=True, prompt_once=True)
    cfg = mmrl_config(args.model, rollout, steps=total, lr=args.lr, sequences=args.prompts * group, seed=args.seed,
                      out_dir=tempfile.mkdtemp(prefix="mmrl-video-"), **switches)  # fmt: skip
    policy = setup_policy(cfg, total)
    vocab = len(policy.processor.tokenizer) - 64  # clear of the special tokens at the end of the vocabulary
    clips = [clip_frames(frames, args.size, args.seed, k) for k in range(args.prompts)]

    def step(k: int) -> tuple[float, float, dict[str, Any]]:
        t0 = time.perf_counter()
        prompts = [encode_prompt(policy.processor, video_messages(c), cfg.model, max_prompt_tokens=8192,
                                 keep_media=False) for c in clips]  # fmt: skip
        ids, rewards = fixed_completions(args, group, k, vocab)
        gids = [str(r // group) for r in range(len(ids))]
        adv = group_advantages(rewards, gids, "grpo")
        rollouts = [
            Rollout(
                prompt=prompts[r // group],
                completion=Completion(ids[r].tolist(), [0.0] * ids.shape[1], "", "length"),
                reward=float(rewards[r]),
                advantage=float(adv[r]),
                group_id=gids[r],
                sample_id=gids[r],
                task="video",
            )  # fmt: skip
            for r in range(len(ids))
        ]
        t1 = time.perf_counter()
        update_policy(policy, rollouts, cfg, k)
        t2 = time.perf_counter()
        shape = {"prompt_tokens": len(prompts[0]), "video_rows": int(prompts[0].vision["pixel_values_videos"].shape[0])}
        return t1 - t0, t2 - t1, shape

    return run_steps(args, step)


def run_steps(args: argparse.Namespace, step) -> dict[str, Any]:
    before = rss_kib()
    reset = reset_peak()
    for k in range(args.warmup):
        step(k)
    prepare, update = [], []
    for k in range(args.warmup, args.warmup + args.steps):
        p, u, shape = step(k)
        prepare.append(p)
        update.append(u)
    return finish(before, reset, prepare, update, shape)


def finish(before: int, reset: bool, prepare: list[float], update: list[float], shape: dict) -> dict[str, Any]:
    steps = [p + u for p, u in zip(prepare, update)]
    return {
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "setup_rss_mib": before / 1024,
        "step_rss_mib": (rss_kib("VmHWM") - before) / 1024 if reset else float("nan"),
        "step_s": statistics.median(steps),
        "prepare_s": statistics.median(prepare),
        "update_s": statistics.median(update),
        **shape,
    }


# --------------------------------------------------------------------------------------------------
# TRL side


def run_trl(args: argparse.Namespace, frames: int, group: int) -> dict[str, Any]:
    import datasets
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import GRPOTrainer

    total = args.warmup + args.steps
    clips = [clip_frames(frames, args.size, args.seed, k) for k in range(args.prompts)]
    processor = AutoProcessor.from_pretrained(args.model)
    vocab = len(processor.tokenizer) - 64
    video_token = int(processor.video_token_id)
    # The dataset names each prompt's clip by index; the rollout function looks the frames up.
    content = [{"type": "video", "video": "", "text": None}, {"type": "text", "video": None, "text": QUESTION}]
    rows = {"prompt": [], "clip": []}
    for k in range(args.prompts * total):  # one pass of all clips per step, in order
        rows["prompt"].append([{"role": "user", "content": content}])
        rows["clip"].append(k % args.prompts)
    dataset = datasets.Dataset.from_dict(rows)
    state: dict[str, Any] = {"step": 0, "video": {}, "prepare": 0.0}

    def rollout_func(prompts: list, trainer: Any) -> dict[str, Any]:
        """TRL's custom-rollout hook: the processor on every row (as TRL does for images), fixed completions."""
        rows_per_prompt = len(prompts) // args.prompts
        if rows_per_prompt != group:
            raise AssertionError(f"TRL batch has {len(prompts)} rows, expected {args.prompts} x {group}")
        texts = [processor.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
        videos = [clips[r // group] for r in range(len(prompts))]  # RepeatSampler: group rows per prompt in order
        meta = {"fps": 2.0, "frames_indices": list(range(frames)), "total_num_frames": frames}
        out = processor(text=texts, videos=videos, video_metadata=[dict(meta) for _ in videos],
                        do_sample_frames=False, return_tensors="pt", padding=True)  # fmt: skip
        keys = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
        state["video"] = {k: out[k] for k in keys if k in out}
        if "second_per_grid_ts" in state["video"]:
            state["video"]["second_per_grid_ts"] = torch.as_tensor(state["video"]["second_per_grid_ts"])
        prompt_ids = [ids[m.bool()].tolist() for ids, m in zip(out["input_ids"], out["attention_mask"])]
        ids, rewards = fixed_completions(args, group, state["step"], vocab)
        state["rewards"] = rewards
        state["shape"] = {"prompt_tokens": len(prompt_ids[0]),
                          "video_rows": int(out["video_grid_thw"][0].prod())}  # fmt: skip
        return {"prompt_ids": prompt_ids, "completion_ids": ids.tolist(), "logprobs": None}

    def fixed_reward(prompts, completions, **kwargs) -> list[float]:
        return [float(r) for r in state["rewards"]]

    class VideoGRPOTrainer(GRPOTrainer):
        """TRL's trainer with the video tensors of the batch passed to its loss forward (see the module docstring)."""

        def _generate_and_score_completions(self, inputs):
            t0 = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            state["prepare"] = time.perf_counter() - t0
            return out

        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                               batch_size=None, **kwargs):  # fmt: skip
            if batch_size is not None and batch_size < input_ids.size(0):
                raise AssertionError("one chunk per step expected (per_device_train_batch_size = rows)")
            video = {k: v.to(input_ids.device) for k, v in state["video"].items()}
            mm_types = (input_ids == video_token).long() * 2

            def forward(**inputs):
                return model(**inputs, mm_token_type_ids=mm_types, **video)

            return super()._get_per_token_logps_and_entropies(
                forward, input_ids, attention_mask, logits_to_keep, batch_size, **kwargs
            )

    config = trl_config(output_dir=tempfile.mkdtemp(prefix="trl-video-"), sequences=args.prompts * group, group=group,
                        completion_tokens=args.completion_tokens, lr=args.lr, steps=total, seed=args.seed)  # fmt: skip
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=torch.float32)
    trainer = VideoGRPOTrainer(model=model, reward_funcs=fixed_reward, args=config, train_dataset=dataset,
                               processing_class=processor, rollout_func=rollout_func)  # fmt: skip
    timings: dict[str, Any] = {"prepare": [], "update": [], "before": None, "reset": False}

    class Clock(TrainerCallback):
        mark = 0.0

        def on_step_begin(self, a, st, control, **kw):
            if st.global_step == 0:
                timings["before"], timings["reset"] = rss_kib(), reset_peak()
            self.mark = time.perf_counter()

        def on_step_end(self, a, st, control, **kw):
            elapsed = time.perf_counter() - self.mark
            if st.global_step > args.warmup:
                timings["prepare"].append(state["prepare"])
                timings["update"].append(elapsed - state["prepare"])
            state["step"] = st.global_step

    from transformers import PrinterCallback

    trainer.add_callback(Clock())
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return finish(timings["before"], timings["reset"], timings["prepare"], timings["update"], state["shape"])


# --------------------------------------------------------------------------------------------------
# Driver


def worker(args: argparse.Namespace) -> int:
    import torch

    side, frames, group = args.worker.split(":")
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import logging

    import transformers

    transformers.utils.logging.set_verbosity_error()
    logging.getLogger("mmrl").setLevel(logging.ERROR)
    if side == "trl":
        out = run_trl(args, int(frames), int(group))
    else:
        out = run_mmrl(args, int(frames), int(group), lowmem=side == "mmrl-lowmem")
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def run_cell(args: argparse.Namespace, model: Path, side: str, frames: int, group: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", f"{side}:{frames}:{group}", "--model", str(model),
           "--prompts", str(args.prompts), "--size", str(args.size), "--completion-tokens", str(args.completion_tokens),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--chunk-frames", str(args.chunk_frames),
           "--lr", str(args.lr), "--seed", str(args.seed)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{side} {frames} frames x group {group} failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def report(cells: list[dict[str, Any]], sides: list[str]) -> str:
    """Markdown table: per cell the three measures per side and each mmrl side's ratio to TRL."""
    mm = [s for s in sides if s != "trl"]
    names = " / ".join(sides)
    head = (f"| frames | group | prompt tokens | peak RSS MiB ({names}) | step RSS MiB ({names}) | step s ({names}) | "
            + " | ".join(f"**{s}/TRL peak** | {s}/TRL step RSS | {s}/TRL time" for s in mm) + " |")  # fmt: skip
    lines = [head, "|" + "---|" * (6 + 3 * len(mm))]
    for c in cells:
        r = c["results"]
        cols = [str(c["frames"]), str(c["group"]), str(r["mmrl"]["prompt_tokens"])]
        for key, fmt in (("peak_rss_mib", ".0f"), ("step_rss_mib", ".0f"), ("step_s", ".2f")):
            cols.append(" / ".join(format(r[s][key], fmt) for s in sides))
        for s in mm:
            ratios = [r[s][key] / r["trl"][key] for key in ("peak_rss_mib", "step_rss_mib", "step_s")]
            cols += [f"**{ratios[0]:.2f}**", f"{ratios[1]:.2f}", f"{ratios[2]:.2f}"]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines)


def plot(cells: list[dict[str, Any]], sides: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({c["group"] for c in cells})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"mmrl": "-", "mmrl-lowmem": ":", "trl": "--"}
    colours = dict(zip(groups, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")))
    for g in groups:
        row = sorted((c for c in cells if c["group"] == g), key=lambda c: c["frames"])
        x = [c["frames"] for c in row]
        for side in sides:
            axes[0].plot(x, [c["results"][side]["peak_rss_mib"] for c in row], styles[side], marker="o",
                         color=colours[g], label=f"{side}, group {g}")  # fmt: skip
            axes[1].plot(x, [c["results"][side]["step_s"] for c in row], styles[side], marker="o", color=colours[g])
    axes[0].set(xlabel="frames per video", ylabel="peak RSS (MiB)", title="peak host memory")
    axes[1].set(xlabel="frames per video", ylabel="seconds", title="step time (median)")
    axes[0].legend(fontsize=7)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle("one GRPO update on video prompts, 5M tiny Qwen2.5-VL, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    trl = require_trl()
    if trl is None:
        return 2
    sides = ["mmrl", "trl"] if args.no_lowmem else ["mmrl", "mmrl-lowmem", "trl"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cells = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mmrl-video-bench-") as tmp:
        model = build_checkpoint("5m", Path(tmp), args.seed)
        for frames in args.frame_list:
            for group in args.group_list:
                results = {}
                order = sides if len(cells) % 2 == 0 else sides[::-1]  # alternate who goes first
                for side in order:
                    t0 = time.perf_counter()
                    results[side] = run_cell(args, model, side, frames, group)
                    print(f"[{frames} frames x group {group}: {side} {results[side]['peak_rss_mib']:.0f} MiB, "
                          f"{results[side]['step_s']:.2f} s/step, cell {time.perf_counter() - t0:.0f} s]",
                          file=sys.stderr, flush=True)  # fmt: skip
                shapes = {(r["prompt_tokens"], r["video_rows"]) for r in results.values()}
                if len(shapes) != 1:
                    raise AssertionError(f"unequal prompts at {frames} frames: {results}")
                cells.append({"frames": frames, "group": group, "results": results})
    import torch
    import transformers

    meta = {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "args": {k: v for k, v in vars(args).items() if k not in ("worker", "model")},
            "wall_s": time.perf_counter() - t_start}  # fmt: skip
    (out / "results.json").write_text(json.dumps({"meta": meta, "cells": cells}, indent=1))
    plot(cells, sides, out / "scaling.png")
    print(f"mmrl vs TRL {trl.__version__}: one GRPO update on video prompts, 5m tiny Qwen2.5-VL, CPU float32, 1 thread "
          f"(torch {torch.__version__}, transformers {transformers.__version__}); {args.prompts} prompt(s) of "
          f"{args.size}x{args.size} px frames, {args.completion_tokens}-token fixed completions; "
          f"{args.warmup} warm-up + {args.steps} timed step(s) per cell and side, each in a fresh process")  # fmt: skip
    print(report(cells, sides))
    print(f"\nwrote {out / 'results.json'} and {out / 'scaling.png'} in {meta['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
