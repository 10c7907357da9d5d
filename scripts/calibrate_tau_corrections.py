"""Calibrate τ of ViPER's statement reward on Stage-1 corrections (`caption_refine`), as
`scripts/calibrate_tau.py` does on Stage-2 edit descriptions.

    .venv/bin/python scripts/calibrate_tau_corrections.py                 # 300 scenes, ~1-2 min, 2-core CPU
    .venv/bin/python scripts/calibrate_tau_corrections.py --scenes 600 --seed 1

References are the comparer's correction sentences (`pretext_tasks.caption_graph.compare`) of procedural
captions with 1-3 injected mistakes (seeded; nothing is rendered). Statements are paraphrases of our own
(`PARAPHRASES`, several per correction kind):

- `paraphrase`: of the same correction;
- `near_miss`: of the same correction with its value changed (another colour / shape / size, another count,
  the other side, another object missed or invented);
- `other_scene`: of a correction of another scene; `same_scene`: of another correction of the same caption.

τ maximises the balanced accuracy of `cos > τ` with paraphrases and near misses as positives (the slot check
grades the values) and the other two groups as negatives, chosen on every other scene and reported on the rest;
for `slot_check: false` near misses count as negatives. Texts are embedded as the reward embeds them.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "scripts"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from calibrate_tau import Pair, balanced_accuracy, best_tau, parse_args, score_pairs  # noqa: E402

from mmrl.errors import SkipItem  # noqa: E402
from pretext_tasks.caption_graph import compare, describe, inject_errors, truthful_caption  # noqa: E402
from pretext_tasks.caption_refine import CaptionRefineParams  # noqa: E402
from pretext_tasks.viper_scenes import article, draw_scene  # noqa: E402
from rewards.statements import StatementRewardParams  # noqa: E402

PARAPHRASES: dict[str, tuple[str, ...]] = {
    "attribute": ("The {obj} should be {true}, not {said}.", "That {obj} is really {true}.",
                  "The {obj} is not {said}; it is {true}.", "In the image the {obj} is {true}."),
    "shape": ("The {obj} is in fact a {true}.", "What the description calls a {obj} is a {true}.",
              "The {obj} is shaped like a {true}, not a {said}."),
    "count": ("The image shows {true} objects, not {said}.", "I count {true} objects rather than {said}.",
              "There are really {true} objects in the scene."),
    "relation": ("Actually the {a} is on the {true} of the {b}, not the {said}.",
                 "The {a} stands to the {true} of the {b}.", "Seen in the image, the {a} is {true} of the {b}."),
    "omission": ("The caption leaves out {obj_a}.", "{Obj_a} is also in the image but not mentioned.",
                 "The description forgets the {obj}."),
    "hallucination": ("The image has no {obj}.", "The {obj} mentioned in the description does not exist.",
                      "There isn't any {obj} in the picture."),
}  # fmt: skip
"""Calibration paraphrases per correction kind (`attribute` = colour or size)."""


def fields(c: dict) -> dict:
    """The template fields of structured correction `c`."""
    kind = c["kind"]
    if kind in ("color", "size"):
        return {"group": "attribute", "obj": c["text"].split(" is actually")[0][4:], "true": c["true"],
                "said": c["said"], "attr": kind}  # fmt: skip
    if kind == "shape":
        return {"group": "shape", "obj": c["text"].split(" is actually")[0][4:], "true": c["true"], "said": c["said"]}
    if kind == "count":
        return {"group": "count", "true": str(c["true"]), "said": str(c["said"])}
    if kind == "relation":
        a, rest = c["text"][4:].split(" is to the ", 1)
        b = rest.split(" of the ", 1)[1].split(",")[0]
        return {"group": "relation", "a": a, "b": b, "true": c["true"], "said": c["said"]}
    obj = describe(c["true"] if kind == "omission" else c["said"])
    return {"group": kind, "obj": obj, "obj_a": article(obj), "Obj_a": article(obj).capitalize()}


def paraphrase(f: dict, rng: np.random.Generator) -> str:
    templates = PARAPHRASES[f["group"]]
    return templates[int(rng.integers(len(templates)))].format(**f)


def near_miss(f: dict, p: CaptionRefineParams, rng: np.random.Generator) -> dict:
    """`f` with its value changed: another colour / size / shape, count ± 1, the other side, another object."""
    g = dict(f)
    if f["group"] == "attribute":
        vocab = p.colors if f["attr"] == "color" else p.sizes
        g["true"] = str(rng.choice([v for v in vocab if v not in (f["true"], f["said"])]))
    elif f["group"] == "shape":
        g["true"] = str(rng.choice([v for v in p.shapes if v not in (f["true"], f["said"])]))
    elif f["group"] == "count":
        g["true"] = str(int(f["true"]) + (1 if int(f["true"]) + 1 != int(f["said"]) else -1))
    elif f["group"] == "relation":
        g["true"], g["said"] = f["said"], f["true"]
    else:
        words = f["obj"].split()
        words[1] = str(rng.choice([c for c in p.colors if c != words[1]]))
        g["obj"] = " ".join(words)
        g["obj_a"] = article(g["obj"])
        g["Obj_a"] = g["obj_a"].capitalize()
    return g


def build_pairs(n_scenes: int, seed: int) -> list[Pair]:
    p = CaptionRefineParams(width=128, height=96)
    rng = np.random.default_rng([seed, 12])
    scenes = []
    for k in range(n_scenes):
        try:
            scene = draw_scene(p, seed * 100_003 + k)
            caption = inject_errors(truthful_caption(scene, rng, p), scene, rng, int(rng.integers(1, 4)), p)
        except SkipItem:
            continue
        scenes.append(compare(scene, caption))
    pairs = []
    for k, corrections in enumerate(scenes):
        split = "calibration" if k % 2 == 0 else "held_out"
        partner = scenes[k + 2 if k + 2 < len(scenes) else k - 2]
        for a, c in enumerate(corrections):
            f = fields(c)
            for _ in range(2):
                pairs.append(Pair(c["text"], paraphrase(f, rng), "paraphrase", split))
            pairs.append(Pair(c["text"], paraphrase(near_miss(f, p, rng), rng), "near_miss", split))
            for other in partner[:2]:
                pairs.append(Pair(c["text"], paraphrase(fields(other), rng), "other_scene", split))
            for b, other in enumerate(corrections):
                if b != a:
                    pairs.append(Pair(c["text"], paraphrase(fields(other), rng), "same_scene", split))
    return pairs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, __doc__)
    t0 = time.perf_counter()
    pairs = build_pairs(args.scenes, args.seed)
    cos, groups, splits, credit, n_texts = score_pairs(pairs)
    print(f"{len(pairs)} pairs, {n_texts} texts, {time.perf_counter() - t0:.1f} s")
    positive, negative = ("paraphrase", "near_miss"), ("other_scene", "same_scene")
    plain_negative = ("near_miss", *negative)
    cal, held = splits == "calibration", splits == "held_out"
    tau = best_tau(cos[cal], groups[cal], positive, negative)
    tau_plain = best_tau(cos[cal], groups[cal], ("paraphrase",), plain_negative)
    for name, t, pos, neg in (("slot check on", tau, positive, negative),
                              ("slot_check: false", tau_plain, ("paraphrase",), plain_negative)):  # fmt: skip
        print(f"tau ({name}): {t:.3f}; balanced accuracy calibration "
              f"{balanced_accuracy(cos[cal], groups[cal], t, pos, neg):.3f}, held out "
              f"{balanced_accuracy(cos[held], groups[held], t, pos, neg):.3f}")  # fmt: skip
    all_groups = (*positive, *negative)
    header = ["tau", *(f"{g} cos>tau" for g in all_groups), *(f"{g} credit" for g in all_groups)]
    print("\nHeld-out split: share of pairs with cos > tau; mean 1[cos > tau] * slot credit\n")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    current = StatementRewardParams().tau
    for t in sorted({tau, tau_plain, current, 0.5, 0.6, 0.7, 0.85}):
        above = cos > t
        cells = [f"{t:.3f}{' (default)' if t == current else ''}"]
        cells += [f"{above[held & (groups == g)].mean():.3f}" for g in all_groups]
        cells += [f"{(above * credit)[held & (groups == g)].mean():.3f}" for g in all_groups]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
