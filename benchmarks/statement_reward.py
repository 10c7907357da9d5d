"""ViPER's statement reward on one GRPO step's batch, end to end (splitting, embedding, matching), on the CPU.

    .venv/bin/python benchmarks/statement_reward.py            # about a minute on a shared 2-core CPU
    .venv/bin/python benchmarks/statement_reward.py --completions 128 --group 5 --threads 1

The batch is the paper's: 128 completions = 26 prompts × 5 rollouts (the last prompt has 3). Each prompt's
references are 3-5 descriptions of successive procedural edits of one scene (`mmrl.scene_edits`); each
completion states ~5 sentences: paraphrases of some references (`scripts/calibrate_tau.py` templates),
wrong-value variants, and a generic sentence, so the policy's sentences mostly differ across rollouts.

Timed, each `--repeats` times (median reported), all through `rewards.statements.statement_rewards`:

- cold: the embedding cache emptied first, so every statement and reference is embedded;
- refs warm: new completions (another seed) while the references are cached (a prompt seen before);
- warm: the same batch again, everything cached (matching and splitting only).

The model load (once per process) is timed apart. Target: a step's batch in under 2 s on this CPU.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mmrl.scene_edits import EDIT_KINDS, random_edit  # noqa: E402
from mmrl.scenes import COLORS, random_scene  # noqa: E402
from rewards.embedding import default_embedder  # noqa: E402
from rewards.statements import StatementRewardParams, split_statements, statement_rewards  # noqa: E402

_spec = importlib.util.spec_from_file_location("calibrate_tau", ROOT / "scripts" / "calibrate_tau.py")
calibrate_tau = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("calibrate_tau", calibrate_tau)
_spec.loader.exec_module(calibrate_tau)

GENERIC = (
    "The lighting looks the same in both images.",
    "The camera did not move between the two images.",
    "The ground plane is unchanged.",
    "Nothing else in the scene changed.",
)


def prompt_references(n_prompts: int, seed: int) -> list[list]:
    """Per prompt, the `Edit`s of 3-5 successive random edits of one scene (each edit applied before the next)."""
    out = []
    k = 0
    while len(out) < n_prompts:
        rng = np.random.default_rng([seed, 31, k])
        k += 1
        try:
            scene = random_scene(rng, n_objects=(4, 7))
            edits = []
            for _ in range(int(rng.integers(3, 6))):
                scene, edit = random_edit(scene, rng, kinds=EDIT_KINDS)
                edits.append(edit)
        except ValueError:  # a scene or edit that could not be placed: draw another
            continue
        out.append(edits)
    return out


def completion(edits: list, rng: np.random.Generator) -> str:
    """A reply of ~5 sentences: 2-4 paraphrased references (some with a wrong colour), one generic line."""
    picked = rng.permutation(len(edits))[: int(rng.integers(2, min(4, len(edits)) + 1))]
    sentences = []
    for i in picked:
        f = calibrate_tau.edit_fields(edits[int(i)])
        if rng.random() < 0.3:  # a wrong value
            f = calibrate_tau.EditFields(
                **{**f.__dict__, "color": str(rng.choice([c for c in COLORS if c != f.color]))}
            )
        sentences.append(calibrate_tau.paraphrase(f, rng))
    sentences.append(GENERIC[int(rng.integers(len(GENERIC)))])
    if rng.random() < 0.5:
        sentences.append(GENERIC[int(rng.integers(len(GENERIC)))])
    return "<think>I compare the two images object by object.</think><answer>" + "\n".join(sentences) + "</answer>"


def batch(prompts: list[list], n: int, group: int, seed: int) -> tuple[list[str], list[list[str]]]:
    rng = np.random.default_rng([seed, 37])
    completions, references = [], []
    for k in range(n):
        edits = prompts[k // group]
        completions.append(completion(edits, rng))
        references.append([e.description for e in edits])
    return completions, references


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--completions", type=int, default=128)
    ap.add_argument("--group", type=int, default=5, help="rollouts per prompt")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    n_prompts = -(-args.completions // args.group)
    t = time.perf_counter()
    prompts = prompt_references(n_prompts, args.seed)
    print(f"built {n_prompts} prompts' references from procedural edits in {time.perf_counter() - t:.1f} s")
    embed = default_embedder()
    t = time.perf_counter()
    embed(["warm up the model"])
    load = time.perf_counter() - t
    params = StatementRewardParams()
    timings: dict[str, list[float]] = {"cold": [], "refs warm": [], "warm": []}
    for r in range(args.repeats):
        completions, references = batch(prompts, args.completions, args.group, args.seed + 2 * r)
        fresh, _ = batch(prompts, args.completions, args.group, args.seed + 2 * r + 1)
        embed.cache_clear()
        t = time.perf_counter()
        rewards = statement_rewards(completions, references, embed, params)
        timings["cold"].append(time.perf_counter() - t)
        t = time.perf_counter()
        statement_rewards(fresh, references, embed, params)
        timings["refs warm"].append(time.perf_counter() - t)
        t = time.perf_counter()
        statement_rewards(completions, references, embed, params)
        timings["warm"].append(time.perf_counter() - t)
    statements = [s for c in completions for s in split_statements(c.split("<answer>")[1].split("</answer>")[0])]
    refs = [g for rs in references[:: args.group] for g in rs]
    distinct = len(set(statements) | set(refs))
    scores = np.array([x.score for x in rewards])
    print(
        f"batch: {args.completions} completions, {len(statements)} statements ({len(set(statements))} distinct), "
        f"{n_prompts} prompts with {len(refs)} references; {distinct} distinct texts to embed"
    )
    print(f"scores: mean {scores.mean():.3f}, min {scores.min():.3f}, max {scores.max():.3f}")
    print(f"torch threads {torch.get_num_threads()}; model load {load:.2f} s (once per process)\n")
    print("| cache | batch time s (median) | [min-max] | statements/s |")
    print("|---|---|---|---|")
    for name, ts in timings.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.3f} | [{min(ts):.3f}-{max(ts):.3f}] | {len(statements) / med:,.0f} |")
    print(f"\ncold: {distinct / statistics.median(timings['cold']):,.0f} distinct sentences embedded per second")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
