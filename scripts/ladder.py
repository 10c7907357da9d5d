"""The learning ladder: train each `configs/ladder/*.yaml` recipe and tabulate what the policy learnt.

    .venv/bin/python scripts/ladder.py                          # every rung, table into docs/ladder.md
    .venv/bin/python scripts/ladder.py configs/ladder/image_jigsaw.yaml --out /tmp/ladder.md

Each rung is one `mmrl train` run (its cold start included) into `runs/ladder/<name>` (replaced). The table
reads the run's held-out evaluation (`eval/*` in metrics.jsonl): the reward at step 0 (after the cold start)
and at the end, greedy and sampled at the training temperature (mean over `data.eval_k` completions), next
to the two baselines on the same held-out Samples (a random answer of the right form; the best constant
reply) and the answer spread of the sampled policy against the constant's. A rung learns when its final
sampled reward is above both baselines by `--margin` and its spread is above the constant's.

`--ceilings` trains each rung's supervised ceiling instead, into `runs/ladder/ceiling/<name>`: the same model
and prompts, its cold start trained on the true answers (`CEILING`). Its held-out reward at step 0 is what the
model reaches when told the answers, so a rung below the bar whose ceiling is high is limited by GRPO's
exploration, and one whose ceiling is low by what the model can see. The table shows the ceiling where one
was trained.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from mmrl.logging import read_metrics

ROOT = Path(__file__).resolve().parents[1]
CUES = ROOT / "runs" / "ladder" / "cues"
"""Sources with a cue made visible on purpose (`write_ramps`, `write_fades`), written before any rung trains."""


def write_ramps(folder: Path, count: int = 256, size: tuple[int, int] = (168, 56), seed: int = 0) -> Path:
    """`count` PNGs whose brightness rises left to right: a 1x3 image jigsaw's tiles then give their column
    away by their mean brightness alone (left third about 30-75 grey levels, middle 90-150, right 150-220),
    a cue any model that sees the tiles can use. Each image draws its ramp's dark end in [0, 40], its bright
    end in [215, 255], a tint in [0.85, 1] per channel and pixel noise (σ 8), from rng(seed): same seed,
    same bytes. The folder is rewritten each time, file by file atomically (`_replace_into`)."""
    rng = np.random.default_rng(seed)
    width, height = size
    with _replace_into(folder) as staging:
        for i in range(count):
            low, high = rng.uniform(0, 40), rng.uniform(215, 255)
            ramp = np.linspace(low, high, width)[None, :, None]  # (1, W, 1)
            tint = rng.uniform(0.85, 1.0, size=3)[None, None, :]  # (1, 1, 3)
            pixels = ramp * tint + rng.normal(0, 8, size=(height, width, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(staging / f"ramp_{i:03d}.png")
    return folder


@contextlib.contextmanager
def _replace_into(folder: Path) -> Iterator[Path]:
    """A staging folder beside `folder` whose files are moved into it (one `os.replace` each) on exit: a rung
    that reads the cue while another ladder process rewrites it sees each file whole, old or new."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        yield staging
        for path in sorted(staging.iterdir()):
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_fades(
    folder: Path, count: int = 96, size: int = 112, fps: float = 4.0, seconds: float = 13.0, seed: int = 0
) -> Path:
    """`count` MP4s whose brightness rises from the first frame to the last: a video jigsaw's clips then give
    their place in time away by their mean brightness alone, the video counterpart of `write_ramps`. Each
    video draws its dark start in [0, 40], its bright end in [215, 255], a tint in [0.85, 1] per channel and
    pixel noise (σ 8), from rng(seed): same seed, same bytes (libx264 is bit-exact here). `seconds` clears
    video_jigsaw's 12 s `min_duration`. The folder is rewritten each time, file by file atomically."""
    from mmrl.video import write_video

    rng = np.random.default_rng(seed)
    frames = int(round(fps * seconds))
    with _replace_into(folder) as staging:
        for i in range(count):
            low, high = rng.uniform(0, 40), rng.uniform(215, 255)
            ramp = np.linspace(low, high, frames)[:, None, None, None]  # (T, 1, 1, 1)
            tint = rng.uniform(0.85, 1.0, size=3)[None, None, None, :]  # (1, 1, 1, 3)
            pixels = ramp * tint + rng.normal(0, 8, size=(frames, size, size, 3))
            write_video(staging / f"fade_{i:03d}.mp4", np.clip(pixels, 0, 255).astype(np.uint8), fps)
    return folder


CEILING = ["sft.shuffle_answers=false", "sft.steps=400", "train.steps=1"]
"""Overrides of a rung's supervised ceiling: 400 cold-start steps on the true answers, then one GRPO step (the
held-out evaluation at step 0 reads the supervised model)."""


def run_rung(config: Path, runs: Path, overrides: list[str] | None = None) -> dict:
    """Train one rung (cold start included) and return its row of the table, also kept as `ladder_row.json`.
    `overrides` are `key=value` config overrides (e.g. another source folder)."""
    name = config.stem
    out = runs / name
    start, started_at = time.perf_counter(), time.time()
    cmd = [sys.executable, "-m", "mmrl.cli", "train", "--config", str(config), f"train.out_dir={out}",
           f"sft.out_dir={out / 'sft'}", "train.overwrite=true", "log.progress=false", *(overrides or [])]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    minutes = (time.perf_counter() - start) / 60
    if proc.returncode != 0:
        return {"name": name, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    row = read_row(config, out, minutes)
    if reused := cold_start_minutes(out / "sft", finished_before=started_at):
        row["minutes"] += reused
        row["cold_start_reused"] = True
    (out / "ladder_row.json").write_text(json.dumps(row, indent=1) + "\n")
    return row


def cold_start_minutes(sft_dir: Path, finished_before: float) -> float:
    """Minutes of step time of a cold start that finished before `finished_before` (a Unix time), else 0.

    `mmrl train` skips the cold start when `<sft.out_dir>/final` exists. The cold start is supervised and
    samples nothing, so a rerun after a sampler change reuses it unchanged; its recorded step times
    (`time/step` in its metrics.jsonl) are then added to the rung's minutes, which count the cold start."""
    records = read_metrics(sft_dir)
    if not records or records[-1].get("time", finished_before) >= finished_before:
        return 0.0
    return sum(r.get("time/step", 0.0) for r in records) / 60


def read_row(config: Path, out: Path, minutes: float) -> dict:
    """The table row of a finished run in `out`: its first and last held-out evaluations."""
    name = config.stem
    records = read_metrics(out)
    evals = [r for r in records if "eval/reward" in r]
    first, last = evals[0], evals[-1]
    cfg = yaml.safe_load(config.read_text())
    return {
        "name": name,
        "setting": setting(cfg),
        "steps": records[-1]["step"],
        "minutes": minutes,
        **{f"before_{k}": first.get(f"eval/{k}") for k in ("reward", "reward_sampled")},
        **{f"after_{k}": last.get(f"eval/{k}") for k in ("reward", "reward_sampled", "spread", "top_share_sampled")},
        "random": last.get("eval/random_reward"),
        "constant": last.get("eval/constant_reward"),
        "constant_spread": last.get("eval/constant_spread"),
    }


def setting(cfg: dict) -> str:
    """The rung's setting in one line: the task's params, or the game's size and pairs."""
    if game := cfg.get("game"):
        return f"{game['name']}: {game.get('n_players', 4)} players, {game.get('pairs', {}).get('kind', 'scene')} pairs"
    return ", ".join(f"{k}={v}" for k, v in (cfg["data"]["sources"][0].get("params") or {}).items())


def verdict(row: dict, margin: float) -> str:
    if "error" in row:
        return f"failed: {row['error']}"
    bar = max(row["random"], row["constant"]) + margin
    # Spread on the greedy answers (one per held-out prompt), like the constant's (1 / prompts): a policy that
    # gives one reply to every prompt has the constant's spread whatever its reward.
    learnt = row["after_reward_sampled"] > bar and row["after_spread"] > row["constant_spread"]
    return "learns" if learnt else f"below the bar ({bar:.3f})"


def ceiling_cell(ceiling: dict | None) -> str:
    """A supervised ceiling's held-out reward, greedy / sampled (its step-0 evaluation), or a dash."""
    if not ceiling or "error" in ceiling:
        return "—"
    return f"{ceiling['before_reward']:.3f} / {ceiling['before_reward_sampled']:.3f}"


def table(rows: list[dict], margin: float, ceilings: dict[str, dict] | None = None) -> str:
    """The Markdown table of `rows`; `ceilings` maps a rung's name to its supervised ceiling's row."""
    ceilings = ceilings or {}
    columns = ["rung", "setting", "steps", "minutes", "held-out reward before → after, greedy", "sampled", "random",
               "best constant", "spread greedy (constant)", "top share sampled", "supervised ceiling, greedy / sampled",
               "verdict"]  # fmt: skip
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | | | | | | | | | | | {verdict(r, margin)} |")
            continue
        reused = "*" if r.get("cold_start_reused") else ""  # see `cold_start_minutes`
        lines.append(
            f"| {r['name']} | {r['setting']} | {r['steps']} | {r['minutes']:.1f}{reused} | "
            f"{r['before_reward']:.3f} → {r['after_reward']:.3f} | "
            f"{r['before_reward_sampled']:.3f} → {r['after_reward_sampled']:.3f} | {r['random']:.3f} | "
            f"{r['constant']:.3f} | {r['after_spread']:.2f} ({r['constant_spread']:.2f}) | "
            f"{r['after_top_share_sampled']:.2f} | {ceiling_cell(ceilings.get(r['name']))} | {verdict(r, margin)} |"
        )
    return "\n".join(lines)


TABLE_START, TABLE_END = "<!-- ladder table: scripts/ladder.py --out -->", "<!-- end of ladder table -->"


def write_table(path: Path, text: str) -> None:
    """Put the table between the two markers of an existing page (the prose around it stays), else write it."""
    page = path.read_text() if path.is_file() else ""
    if TABLE_START in page and TABLE_END in page:
        before, rest = page.split(TABLE_START, 1)
        page = f"{before}{TABLE_START}\n{text}\n{TABLE_END}{rest.split(TABLE_END, 1)[1]}"
    else:
        page = f"{TABLE_START}\n{text}\n{TABLE_END}\n"
    path.write_text(page)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", type=Path, help="rungs (default: configs/ladder/*.yaml)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "ladder", help="run folders")
    parser.add_argument("--out", type=Path, help="write the table into this Markdown file (default: print only)")
    parser.add_argument("--table-only", action="store_true", help="tabulate the rungs already trained, train none")
    parser.add_argument("--margin", type=float, default=0.05, help="how far above both baselines counts as learnt")
    parser.add_argument("--ceilings", action="store_true",
                        help="train the rungs' supervised ceilings (`CEILING`, into <runs>/ceiling) instead of the "
                             "rungs; games have none")  # fmt: skip
    args = parser.parse_args()
    configs = args.configs or sorted((ROOT / "configs" / "ladder").glob("*.yaml"))
    if not args.table_only:
        write_ramps(CUES / "ramps")
        write_fades(CUES / "fades")
    ceiling_runs = args.runs / "ceiling"
    if args.ceilings and not args.table_only:
        for config in configs:
            if "game" not in yaml.safe_load(config.read_text()):  # a game has no answer key to train on
                print(f"ladder: training the supervised ceiling of {config.name} ...", flush=True)
                print(ceiling_cell(run_rung(config, ceiling_runs, CEILING)), flush=True)
    rows, ceilings = [], {}
    for config in configs:
        if (kept_ceiling := ceiling_runs / config.stem / "ladder_row.json").is_file():
            ceilings[config.stem] = json.loads(kept_ceiling.read_text())
        kept = args.runs / config.stem / "ladder_row.json"
        if args.table_only or args.ceilings:
            if kept.is_file():
                rows.append(json.loads(kept.read_text()))
            continue
        print(f"ladder: training {config.name} ...", flush=True)
        rows.append(run_rung(config, args.runs))
        print(table(rows[-1:], args.margin, ceilings).splitlines()[-1], flush=True)
    text = table(rows, args.margin, ceilings)
    print(text)
    if args.out:
        write_table(args.out, text)


if __name__ == "__main__":
    main()
