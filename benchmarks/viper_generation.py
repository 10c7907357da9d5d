"""ViPER tasks' procedural generation on one core: samples/s of `caption_refine` and `edit_prediction` next to the
open3d renders those samples need alone.

    .venv/bin/python benchmarks/viper_generation.py              # defaults: --items 30 --warmup 3
    .venv/bin/python benchmarks/viper_generation.py --width 448 --height 336

Per item i of each task (the item and rng drawn as `mmrl.generate.iter_samples` draws them,
`rng = default_rng([seed, task_key, i])`):

- **make**: `task.make(item, rng)`, everything `mmrl generate` does per sample in memory (scene placement with
  its visibility checks, edits or caption mistakes, renders, the comparer, the prompt);
- **render**: `mmrl.scene_render.render` of exactly the scenes that sample shows, rebuilt from its meta:
  `edit_prediction` the scene before and after the edits, `caption_refine` the scene and the caption's
  rendering (`meta["caption_scene"]`), both drawn every time, with `show_rendering` or not.

The two run back to back (make, then the renders of its scenes), so they share the machine's load; the first
`--warmup` items are untimed. Reported: per-item medians, samples/s = 1 / median, and the median over items of
make_i / render_i (the overhead of generation over rendering alone; 1.0 would be rendering only).
One thread: OMP/BLAS thread counts are set to 1 before numpy is imported.
"""

from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"

import argparse
import statistics
import time

from mmrl.generate import draw_rng
from mmrl.scene_render import render
from mmrl.scenes import Scene
from pretext_tasks.caption_refine import CaptionRefine, CaptionRefineParams
from pretext_tasks.edit_prediction import EditPrediction, EditPredictionParams


def scenes_of(sample) -> list[Scene]:
    """The scenes whose renders the sample needs, from its meta."""
    if sample.task == "edit_prediction":
        return [Scene.from_graph(sample.meta["scene_before"]), Scene.from_graph(sample.meta["scene_after"])]
    return [Scene.from_graph(sample.meta["scene"]), Scene.from_graph(sample.meta["caption_scene"])]


def bench(task, items: int, warmup: int, seed: int) -> dict[str, float]:
    sources = task.sources(None)
    make_t, render_t, ratios = [], [], []
    i, done = 0, 0
    while done < items + warmup:
        rng = draw_rng(task.name, seed, i)
        item = sources[int(rng.integers(len(sources)))]
        i += 1
        t0 = time.perf_counter()
        try:
            sample = task.make(item, rng)
        except Exception:  # a skipped draw (SkipItem): not timed, as generate draws again
            continue
        made = time.perf_counter() - t0
        t1 = time.perf_counter()
        for scene in scenes_of(sample):
            render(scene)
        rendered = time.perf_counter() - t1
        done += 1
        if done > warmup:
            make_t.append(made)
            render_t.append(rendered)
            ratios.append(made / rendered)
    return {
        "make_sps": 1 / statistics.median(make_t),
        "render_sps": 1 / statistics.median(render_t),
        "ratio": statistics.median(ratios),
        "skipped": i - done,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=224)
    ap.add_argument("--height", type=int, default=168)
    args = ap.parse_args()
    size = {"width": args.width, "height": args.height}
    tasks = [CaptionRefine(CaptionRefineParams(**size)), EditPrediction(EditPredictionParams(**size))]
    print(f"{args.items} items per task, {args.width}x{args.height}, one thread")
    print("| task | make (samples/s) | its renders alone (samples/s) | make / render (median) | skipped draws |")
    print("|---|---|---|---|---|")
    for task in tasks:
        r = bench(task, args.items, args.warmup, args.seed)
        print(f"| {task.name} | {r['make_sps']:.2f} | {r['render_sps']:.2f} | {r['ratio']:.2f} | {r['skipped']} |")


if __name__ == "__main__":
    main()
