"""ViPER's diffusers backend: one batched pipeline call vs one call per item, on the tiny random-init pipelines.

Both sides make the same images from the same seeds (`mmrl.diffusion.run_pipeline`; the batch equals the
single calls up to float rounding, checked here). The two sides alternate for `--repeats` rounds in one
process, so they share the machine's load; the table gives medians [min-max] in seconds and the ratio.

    .venv/bin/python benchmarks/viper_diffusion.py            # about a minute on a loaded 2-core CPU
    .venv/bin/python benchmarks/viper_diffusion.py --items 16 --size 64 --steps 4 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=8, help="images per round (one batch)")
    ap.add_argument("--size", type=int, default=64, help="working side in pixels")
    ap.add_argument("--steps", type=int, default=2, help="denoising steps")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per side")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args()
    os.environ.setdefault("MMRL_CACHE", tempfile.mkdtemp(prefix="mmrl-bench-"))
    import torch

    from mmrl.diffusion import load_pipeline, run_pipeline
    from pretext_tasks.viper_diffusion import edit_instructions

    torch.set_num_threads(args.threads)
    n, size = args.items, (args.size, args.size)
    prompts = [f"a photo of {w} on a table" for w in ("a cup", "two books", "a red lamp", "a cat")] * n
    prompts, seeds = prompts[:n], list(range(n))
    sources = [Image.fromarray(np.random.default_rng(i).integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize(size)
               for i in range(n)]  # fmt: skip
    edits = [" ".join(edit_instructions(np.random.default_rng(i))) for i in range(n)]
    t2i = load_pipeline("tiny", "text2image", device="cpu")
    editor = load_pipeline("tiny", "instruct_pix2pix", device="cpu")
    cases = {
        "text2image": lambda idx: run_pipeline(t2i, [prompts[i] for i in idx], [seeds[i] for i in idx],
                                               steps=args.steps, size=size),
        "instruct_pix2pix": lambda idx: run_pipeline(editor, [edits[i] for i in idx], [seeds[i] for i in idx],
                                                     images=[sources[i] for i in idx], steps=args.steps,
                                                     guidance_scale=7.5, image_guidance_scale=1.5),
    }  # fmt: skip
    print(f"torch {torch.__version__}, {args.threads} thread(s); {n} items of {args.size}x{args.size}, "
          f"{args.steps} steps, {args.repeats} alternating rounds per side (+1 warm-up)")  # fmt: skip
    print("| pipeline | batched (1 call) s | one by one s | **one-by-one / batched** | max abs diff |")
    print("|---|---|---|---|---|")
    for name, call in cases.items():
        call([0])  # warm-up
        batched_t, single_t, diff = [], [], 0.0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            batch = call(list(range(n)))
            t1 = time.perf_counter()
            singles = np.concatenate([call([i]) for i in range(n)])
            t2 = time.perf_counter()
            batched_t.append(t1 - t0)
            single_t.append(t2 - t1)
            diff = max(diff, float(np.abs(batch - singles).max()))
        if diff > 1e-3:
            raise SystemExit(f"{name}: batched and single calls differ by {diff}: the comparison is not fair")
        b, s = statistics.median(batched_t), statistics.median(single_t)
        print(f"| {name} | {b:.2f} [{min(batched_t):.2f}-{max(batched_t):.2f}] | "
              f"{s:.2f} [{min(single_t):.2f}-{max(single_t):.2f}] | **{s / b:.2f}** | {diff:.1e} |")  # fmt: skip


if __name__ == "__main__":
    main()
