"""Time the trainer waits for its prompts, without and with prefetching (`data.prefetch`), on the VideoSSR tiny mixture.

    python benchmarks/prefetch_wait.py                       # prefetch 0 vs 2, 10 steps each
    python benchmarks/prefetch_wait.py --steps 10 --prefetch 2 --workers 1 --repeats 2

Each side is one `mmrl train --config configs/videossr_tiny.yaml` run in its own process (no warm caches
carried from one side to the other), without the supervised cold start and held-out evaluation (they do not
involve the prompt stream): only `data.prefetch` / `data.prefetch_workers` differ. With `--repeats` the sides
alternate (off, on, off, on, ...) so that both share whatever else the machine is doing.

Read from each run's metrics.jsonl: `time/wait_prompts` (seconds `produce` spent drawing and encoding, or
waiting for, the step's prompts) and `time/step`. The share is sum(wait) / sum(step) over the timed steps; the
first `--warmup` steps are left out (the workers start up during the first one). The draws are the same on both
sides (tests/test_prefetch.py checks sample by sample), so the steps do the same work apart from the prompts.

Prints a table and a JSON line (also written to --out when given).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "videossr_tiny.yaml"


def run(out_dir: Path, steps: int, prefetch: int, workers: int) -> list[dict]:
    """One training run; its per-step metrics."""
    cmd = [sys.executable, "-m", "mmrl.cli", "train", "--config", str(CONFIG), f"train.out_dir={out_dir}",
           f"train.steps={steps}", "train.cold_start=false", "data.eval_samples=0", "train.save_every=1000",
           "log.progress=false", "log.tensorboard=false", "log.plot=false",
           f"data.prefetch={prefetch}", f"data.prefetch_workers={workers}"]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    print(f"  prefetch={prefetch}: {time.perf_counter() - start:.0f} s wall", file=sys.stderr)
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "time/step" in r]


def summary(timed: list[dict], first: list[dict]) -> dict:
    """Means over the timed steps, and the wait of each run's first step (the workers' start-up)."""
    wait, step = sum(r["time/wait_prompts"] for r in timed), sum(r["time/step"] for r in timed)
    return {"steps": len(timed), "wait_s": wait / len(timed), "step_s": step / len(timed), "share": wait / step,
            "first_step_wait_s": [r["time/wait_prompts"] for r in first]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1, help="first steps of each run left out")
    parser.add_argument("--prefetch", type=int, default=2, help="data.prefetch of the prefetching side")
    parser.add_argument("--workers", type=int, default=1, help="data.prefetch_workers of the prefetching side")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side, alternating")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.steps <= args.warmup:
        raise SystemExit(f"--steps ({args.steps}) must exceed --warmup ({args.warmup})")

    timed: dict[str, list[dict]] = {"off": [], "on": []}
    first: dict[str, list[dict]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for side, prefetch in (("off", 0), ("on", args.prefetch)):
                got = run(Path(tmp) / f"{side}{r}", args.steps, prefetch, args.workers)
                timed[side] += got[args.warmup :]
                first[side].append(got[0])
    result = {side: summary(timed[side], first[side]) for side in timed}
    off, on = result["off"], result["on"]
    result |= {"prefetch": args.prefetch, "workers": args.workers, "steps": args.steps, "warmup": args.warmup,
               "repeats": args.repeats, "wait_ratio_on_over_off": on["wait_s"] / max(off["wait_s"], 1e-9),
               "step_ratio_on_over_off": on["step_s"] / off["step_s"]}  # fmt: skip

    print(f"VideoSSR tiny, {args.steps} steps x {args.repeats} run(s) per side, first {args.warmup} left out")
    print("| side | wait for prompts / step (s) | step (s) | share of step |")
    print("|---|---|---|---|")
    for side, label in (("off", "data.prefetch=0"), ("on", f"data.prefetch={args.prefetch}, {args.workers} worker(s)")):
        s = result[side]
        print(f"| {label} | {s['wait_s']:.3f} | {s['step_s']:.3f} | {100 * s['share']:.1f} % |")
    print(f"wait on/off = {result['wait_ratio_on_over_off']:.3f}, step on/off = {result['step_ratio_on_over_off']:.3f}")
    line = json.dumps(result)
    print(line)
    if args.out:
        args.out.write_text(line + "\n")


if __name__ == "__main__":
    main()
