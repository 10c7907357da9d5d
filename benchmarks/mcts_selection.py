"""MCTS difficulty selection: trees batched across samples vs the same search one sample at a time, and the
rank correlation of the cheap pass-rate scorer with MCTS K.

    mmrl train --config configs/quickstart.yaml                 # a tiny policy that answers in format
    mmrl generate --task dominant_color --n 200 --out data/pool
    python benchmarks/mcts_selection.py --model runs/quickstart/final --data data/pool --n 48

Both sides run `mmrl.selection.search` with the same settings and seed on the same samples; only
`max_trees` differs (`--trees` vs 1). Each side is one `search` over the samples with the HF engine on CPU
(`torch.set_num_threads(--threads)`); samples per hour = samples / wall time. On a shared machine the CPU
time of the process (all its threads) is reported too, as a ratio less disturbed by other jobs. Sampling is real;
every tree request carries its own seed (`SamplingParams.prompt_seeds`) and the HF engine samples each
sequence from its own seed, so the two sides should draw the same steps and get the same K sample by sample:
the report gives the share of samples with equal K and both mean Ks.

Pass rate: `--passrate-n` replies per sample at temperature 1.0 (`mmrl.selection.pass_rates`); Spearman's ρ
between MCTS K of the batched side (unsolved = max_iterations + 1) and 1 − pass rate.

Prints a JSON line (and writes it to --out when given).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmrl.config import ModelConfig  # noqa: E402
from mmrl.models import load_policy  # noqa: E402
from mmrl.rollout import HFEngine  # noqa: E402
from mmrl.selection import (  # noqa: E402
    STEP_INSTRUCTION,
    MCTSParams,
    PassRateParams,
    ProcessorCodec,
    SearchStats,
    TaskVerifier,
    difficulty_value,
    load_pool,
    pass_rates,
    search,
    spearman,
)


def timed_search(samples, engine, codec, params: MCTSParams) -> dict:
    stats = SearchStats()
    start, cpu = time.perf_counter(), time.process_time()
    results = {r.sample_id: r for r in search(samples, engine, codec, TaskVerifier(), params, stats)}
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    return {
        "results": results,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "calls": stats.engine_calls,
        "sequences": stats.sequences,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the policy (e.g. runs/quickstart/final)")
    ap.add_argument("--data", required=True, help="dataset folder of the pool (mmrl generate)")
    ap.add_argument("--n", type=int, default=48, help="samples from the pool (default 48)")
    ap.add_argument("--trees", default="16", help="trees searched at once on the batched side; a list runs each (16)")
    ap.add_argument("--max-iterations", type=int, default=50)
    ap.add_argument("--step-tokens", type=int, default=16)
    ap.add_argument("--step-instruction", action="store_true", help="append the one-step-per-line request")
    ap.add_argument("--passrate-n", type=int, default=16, help="replies per sample of the pass-rate scorer (16)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256, help="HF engine: most sequences per generate batch (256)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    samples = load_pool(args.data, args.n)
    model_cfg = ModelConfig(path=args.model)
    model, processor = load_policy(model_cfg, device="cpu")
    engine = HFEngine(model, processor, batch_size=args.batch_size, seed=args.seed)
    codec = ProcessorCodec(processor, model_cfg, instruction=STEP_INSTRUCTION if args.step_instruction else "")
    common = dict(max_iterations=args.max_iterations, step_tokens=args.step_tokens, seed=args.seed)

    trees = [int(t) for t in args.trees.split(",")]
    sides = {t: timed_search(samples, engine, codec, MCTSParams(max_trees=t, **common)) for t in trees}
    single = timed_search(samples, engine, codec, MCTSParams(max_trees=1, **common))
    batched = sides[trees[0]]
    ids = [s.id for s in samples]
    k_batched = [batched["results"][i].K for i in ids]
    k_single = [single["results"][i].K for i in ids]

    start = time.perf_counter()
    codec_plain = ProcessorCodec(processor, model_cfg)
    rates = {r.sample_id: r for r in pass_rates(samples, engine, codec_plain, TaskVerifier(),
                                                PassRateParams(n=args.passrate_n, max_new_tokens=args.step_tokens,
                                                               batch_prompts=max(1, 64 // args.passrate_n),
                                                               seed=args.seed))}  # fmt: skip
    passrate_seconds = time.perf_counter() - start
    mcts_difficulty = [difficulty_value(batched["results"][i].record(), args.max_iterations) for i in ids]
    pr_difficulty = [difficulty_value(rates[i].record()) for i in ids]

    def per_hour(side: dict) -> float:
        return len(samples) / side["seconds"] * 3600

    def mean_k(ks: list) -> float | None:
        solved = [k for k in ks if k is not None]
        return sum(solved) / len(solved) if solved else None

    result = {
        "model": args.model,
        "samples": len(samples),
        "trees": trees[0],
        "threads": args.threads,
        "batched_samples_per_hour": round(per_hour(batched)),
        "one_at_a_time_samples_per_hour": round(per_hour(single)),
        "speedup": round(per_hour(batched) / per_hour(single), 2),
        "batched_engine_calls": batched["calls"],
        "one_at_a_time_engine_calls": single["calls"],
        "batched_seconds": round(batched["seconds"], 1),
        "one_at_a_time_seconds": round(single["seconds"], 1),
        "same_k_share": round(sum(a == b for a, b in zip(k_batched, k_single)) / len(ids), 3),
        "mean_k_solved": [mean_k(k_batched), mean_k(k_single)],
        "unsolved": [k_batched.count(None), k_single.count(None)],
        "speedup_by_trees": {t: round(per_hour(side) / per_hour(single), 2) for t, side in sides.items()},
        "cpu_time_ratio_by_trees": {
            t: round(single["cpu_seconds"] / side["cpu_seconds"], 2) for t, side in sides.items()
        },
        "engine_calls_by_trees": {t: side["calls"] for t, side in sides.items()},
        "passrate_n": args.passrate_n,
        "passrate_seconds": round(passrate_seconds, 1),
        "spearman_k_vs_1_minus_passrate": round(spearman(mcts_difficulty, pr_difficulty), 3),
    }
    line = json.dumps(result)
    print(line)
    if args.out:
        args.out.write_text(line + "\n")


if __name__ == "__main__":
    main()
