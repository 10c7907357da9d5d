"""The learning ladder: train each `configs/ladder/*.yaml` recipe and tabulate what the policy learnt.

    .venv/bin/python scripts/ladder.py                          # every rung, table into docs/ladder.md
    .venv/bin/python scripts/ladder.py configs/ladder/image_jigsaw.yaml --out /tmp/ladder.md

Each rung is one `mmrl train` run (its cold start included) into `runs/ladder/<name>` (replaced). The table
reads the run's held-out evaluation (`eval/*` in metrics.jsonl): the reward at step 0 (after the cold start)
and at the end, greedy and sampled at the training temperature (mean over `data.eval_k` completions), next
to the two baselines on the same held-out Samples (a random answer of the right form; the best constant
reply) and the answer spread of the sampled policy against the constant's. A rung learns when its final
sampled reward is above both baselines by `--margin` and its spread is above the constant's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def run_rung(config: Path, runs: Path) -> dict:
    """Train one rung; return its row of the table."""
    name = config.stem
    out = runs / name
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "mmrl.cli", "train", "--config", str(config), f"train.out_dir={out}",
           f"sft.out_dir={out / 'sft'}", "train.overwrite=true", "log.progress=false"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    minutes = (time.perf_counter() - start) / 60
    if proc.returncode != 0:
        return {"name": name, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    records: dict[int, dict] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        records.setdefault(record["step"], {}).update(record)
    evals = [records[s] for s in sorted(records) if "eval/reward" in records[s]]
    first, last = evals[0], evals[-1]
    cfg = yaml.safe_load(config.read_text())
    return {
        "name": name,
        "setting": ", ".join(f"{k}={v}" for k, v in (cfg["data"]["sources"][0].get("params") or {}).items()),
        "steps": max(records),
        "minutes": minutes,
        **{f"before_{k}": first.get(f"eval/{k}") for k in ("reward", "reward_sampled")},
        **{f"after_{k}": last.get(f"eval/{k}") for k in ("reward", "reward_sampled", "spread_sampled")},
        "random": last.get("eval/random_reward"),
        "constant": last.get("eval/constant_reward"),
        "constant_spread": last.get("eval/constant_spread"),
    }


def verdict(row: dict, margin: float) -> str:
    if "error" in row:
        return f"failed: {row['error']}"
    bar = max(row["random"], row["constant"]) + margin
    learnt = row["after_reward_sampled"] > bar and row["after_spread_sampled"] > row["constant_spread"]
    return "learns" if learnt else f"below the bar ({bar:.3f})"


def table(rows: list[dict], margin: float) -> str:
    head = ("| rung | setting | steps | minutes | held-out reward before → after, greedy | sampled | random | "
            "best constant | spread (constant) | verdict |\n|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | | | | | | | | | {verdict(r, margin)} |")
            continue
        lines.append(
            f"| {r['name']} | {r['setting']} | {r['steps']} | {r['minutes']:.1f} | "
            f"{r['before_reward']:.3f} → {r['after_reward']:.3f} | "
            f"{r['before_reward_sampled']:.3f} → {r['after_reward_sampled']:.3f} | {r['random']:.3f} | "
            f"{r['constant']:.3f} | {r['after_spread_sampled']:.2f} ({r['constant_spread']:.2f}) | "
            f"{verdict(r, margin)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", type=Path, help="rungs (default: configs/ladder/*.yaml)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "ladder", help="run folders")
    parser.add_argument("--out", type=Path, help="write the table into this Markdown file (default: print only)")
    parser.add_argument("--margin", type=float, default=0.05, help="how far above both baselines counts as learnt")
    args = parser.parse_args()
    configs = args.configs or sorted((ROOT / "configs" / "ladder").glob("*.yaml"))
    rows = []
    for config in configs:
        print(f"ladder: training {config.name} ...", flush=True)
        rows.append(run_rung(config, args.runs))
        print(table(rows[-1:], args.margin).splitlines()[-1], flush=True)
    text = table(rows, args.margin)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
