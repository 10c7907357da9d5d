"""Calibrate τ, the similarity threshold of ViPER's statement reward, for all-MiniLM-L6-v2.

    .venv/bin/python scripts/calibrate_tau.py                 # 300 scenes, about a minute on one core
    .venv/bin/python scripts/calibrate_tau.py --scenes 600 --seed 1

The paper's τ = 0.85 belongs to BGE-M3; MiniLM spreads similarities differently, so τ is measured here on
held-out pairs of procedural edits (`mmrl.scenes.random_scene`, `mmrl.scene_edits.random_edit`, seeded;
descriptions only need the scene graph, nothing is rendered):

- positive: an edit's reference description vs a paraphrase of it (`PARAPHRASES`, several templates per
  edit kind, object words sometimes swapped for synonyms: "little" for small, "ball" for sphere);
- negative: the reference vs a paraphrase of another edit, in three groups: `other_scene` (an edit of
  another scene), `same_scene` (another edit of another object of the same scene) and `same_object` (an
  edit of another kind of the same object: recolor vs reshape of one cube).

Texts are embedded as the reward embeds them (`rewards.statements.canonical_text`). Scenes alternate
between a calibration split and a held-out split. Balanced accuracy is (TPR + TNR) / 2 with the three
negative groups weighted equally. τ is the largest threshold whose balanced accuracy on the calibration
split is within `--slack` (0.01) of the best one, for the rule the reward applies by default: cos > τ and
full slot agreement (`rewards.statements.slot_agreement` = 1). The cosine-only optimum (for `slot_check: false`) is
printed too. The table reports both splits, per group, for both rules. Same-object pairs with another
value of the same attribute ("became green" vs "became blue") are left out on purpose: no sentence
embedding separates them; the slot credit does (`tests/test_statement_reward.py`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from mmrl.scene_edits import EDIT_KINDS, Edit, random_edit  # noqa: E402
from mmrl.scenes import COLORS, SHAPES, SIZES, Scene, random_scene  # noqa: E402
from rewards.embedding import default_embedder  # noqa: E402
from rewards.statements import canonical_text, slot_agreement, slots  # noqa: E402

SIZE_SYNONYMS = {"small": ("little", "tiny"), "medium": ("medium",), "large": ("big", "huge")}
SHAPE_SYNONYMS = {"cube": ("box", "block"), "sphere": ("ball",), "cylinder": ("cylinder",), "cone": ("cone",)}
SHAPE_SYNONYMS["torus"] = ("ring", "donut")


@dataclass(frozen=True)
class EditFields:
    """What a description of one edit needs: the kind, the object as it was, the new value, the direction."""

    kind: str
    size: str
    color: str
    shape: str
    new: str = ""
    """The new colour, shape or size (recolor, reshape, resize); empty otherwise."""
    where: str = ""
    """Direction words of a move as the reference states them ("to the left and closer to the camera")."""


def edit_fields(edit: Edit) -> EditFields:
    """The `EditFields` of a `mmrl.scene_edits.Edit` (the object before the edit; after it for "add")."""
    obj = edit.before if edit.before is not None else edit.after
    assert obj is not None
    size, color, shape = obj["size"]["name"], obj["color"]["name"], obj["shape"]
    after = edit.after or {}
    new = {
        "recolor": after.get("color", {}).get("name", ""),
        "reshape": after.get("shape", ""),
        "resize": after.get("size", {}).get("name", ""),
    }.get(edit.kind, "")
    where = edit.description.split("was moved", 1)[1].strip(" .") if edit.kind == "move" else ""
    return EditFields(edit.kind, size, color, shape, new, where)


PARAPHRASES: dict[str, tuple[str, ...]] = {
    "recolor": (
        "The {obj} turned {new}.",
        "The {obj} is now {new}.",
        "The colour of the {obj} changed to {new}.",
        "Someone repainted the {obj} in {new}.",
        "The {obj} has a new colour: {new}.",
    ),
    "reshape": (
        "The {obj} was turned into a {new}.",
        "The {obj} is now shaped like a {new}.",
        "The {obj} changed its shape into a {new}.",
        "A {new} replaced the {obj}, keeping its colour and size.",
    ),
    "resize": (
        "The {obj} was scaled to {new}.",
        "The {obj} is {new} now.",
        "The size of the {obj} changed to {new}.",
        "The {obj} was made {new}.",
    ),
    "move": (
        "The {obj} shifted {where}.",
        "Someone pushed the {obj} {where}.",
        "The {obj} changed position, {where}.",
        "The {obj} has been relocated {where}.",
    ),
    "remove": (
        "The {obj} is gone.",
        "The {obj} disappeared from the scene.",
        "Someone took the {obj} away.",
        "There is no {obj} anymore.",
    ),
    "add": (
        "A new {obj} appeared.",
        "Someone placed a {obj} in the scene.",
        "The scene now has an extra {obj}.",
        "A {obj} shows up that was not there before.",
    ),
}
"""Calibration paraphrases, per edit kind: `{obj}` = size colour shape, `{new}` the new value, `{where}`
the move's direction words. The acceptance test uses other wordings, so τ is not fitted to these."""


def object_words(f: EditFields, rng: np.random.Generator | None) -> str:
    """ "size colour shape", each of size and shape swapped for a synonym with probability 0.3 when `rng`."""
    size, shape = f.size, f.shape
    if rng is not None and rng.random() < 0.3:
        size = SIZE_SYNONYMS[size][int(rng.integers(len(SIZE_SYNONYMS[size])))]
    if rng is not None and rng.random() < 0.3:
        shape = SHAPE_SYNONYMS[shape][int(rng.integers(len(SHAPE_SYNONYMS[shape])))]
    return f"{size} {f.color} {shape}"


def paraphrase(f: EditFields, rng: np.random.Generator, templates: dict[str, Sequence[str]] = PARAPHRASES) -> str:
    """A random paraphrase of the edit `f` from `templates`."""
    options = templates[f.kind]
    template = options[int(rng.integers(len(options)))]
    return template.format(obj=object_words(f, rng), new=f.new, where=f.where)


def scene_edits(seed: int, per_scene: int = 3) -> tuple[Scene, list[Edit]]:
    """A random scene and up to `per_scene` independent random edits of it (all kinds allowed); edits whose
    descriptions repeat are dropped."""
    rng = np.random.default_rng([seed, 7])
    scene = random_scene(rng, n_objects=(3, 7))
    edits: dict[str, Edit] = {}
    for _ in range(per_scene):
        try:
            _, edit = random_edit(scene, rng, kinds=EDIT_KINDS)
        except ValueError:  # no valid edit of any kind: rare, skipped
            continue
        edits.setdefault(edit.description, edit)
    return scene, list(edits.values())


def same_object_edits(edit: Edit, rng: np.random.Generator) -> list[EditFields]:
    """Edits of other kinds on the edited object, in random order (descriptions only: no overlap or
    visibility checks). An added object's only other edit is its removal, and a removed object's its
    addition: those pairs share every slot word, so only the embedding can tell them apart."""
    f = edit_fields(edit)
    kinds = {"add": ["remove"], "remove": ["add"]}.get(edit.kind)
    if kinds is None:
        kinds = [k for k in ("recolor", "reshape", "resize", "move", "remove", "add") if k != edit.kind]
    out = []
    for kind in kinds:
        if kind == "recolor":
            new = str(rng.choice([c for c in COLORS if c != f.color]))
        elif kind == "reshape":
            new = str(rng.choice([s for s in SHAPES if s != f.shape]))
        elif kind == "resize":
            new = str(rng.choice([s for s in SIZES if s != f.size]))
        else:
            new = ""
        where = str(rng.choice(["to the left", "to the right", "closer to the camera", "farther from the camera"]))
        out.append(EditFields(kind, f.size, f.color, f.shape, new, where if kind == "move" else ""))
    return [out[int(i)] for i in rng.permutation(len(out))]


@dataclass
class Pair:
    reference: str
    statement: str
    group: str
    """`positive`, `other_scene`, `same_scene` or `same_object`."""
    split: str
    """`calibration` or `held_out`."""


def build_pairs(n_scenes: int, seed: int) -> list[Pair]:
    """Positive and negative (reference, statement) pairs from `n_scenes` seeded scenes (module docstring)."""
    rng = np.random.default_rng([seed, 11])
    scenes = []
    for k in range(n_scenes):
        try:
            scenes.append(scene_edits(seed * 100_003 + k))
        except ValueError:  # a scene whose objects could not all be placed visibly: skipped
            continue
    pairs = []
    for k, (_, edits) in enumerate(scenes):
        split = "calibration" if k % 2 == 0 else "held_out"
        partner = scenes[k + 2 if k + 2 < len(scenes) else k - 2][1]  # same split, another scene
        for a, edit in enumerate(edits):
            ref = edit.description
            f = edit_fields(edit)
            for _ in range(2):
                pairs.append(Pair(ref, paraphrase(f, rng), "positive", split))
            for other in partner[:2]:
                pairs.append(Pair(ref, paraphrase(edit_fields(other), rng), "other_scene", split))
            for b, other in enumerate(edits):
                if b != a and other.object_id != edit.object_id:
                    pairs.append(Pair(ref, paraphrase(edit_fields(other), rng), "same_scene", split))
            for other_f in same_object_edits(edit, rng)[:2]:
                pairs.append(Pair(ref, paraphrase(other_f, rng), "same_object", split))
    return pairs


NEGATIVE_GROUPS = ("other_scene", "same_scene", "same_object")


def balanced_accuracy(cos: np.ndarray, groups: np.ndarray, tau: float, ok: np.ndarray | None = None) -> dict:
    """TPR, per-group TNR and balanced accuracy (TPR + mean TNR) / 2 of the rule `cos > tau` (and `ok`)."""
    hit = cos > tau if ok is None else (cos > tau) & ok
    out = {"positive": float(hit[groups == "positive"].mean())}
    for g in NEGATIVE_GROUPS:
        sel = groups == g
        out[g] = float(1.0 - hit[sel].mean()) if sel.any() else float("nan")
    tnr = float(np.nanmean([out[g] for g in NEGATIVE_GROUPS]))
    out["tnr"] = tnr
    out["balanced"] = (out["positive"] + tnr) / 2
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=300, help="scenes (half calibration, half held out)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slack", type=float, default=0.01, help="balanced-accuracy slack when choosing tau")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the embedder")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pairs = build_pairs(args.scenes, args.seed)
    t1 = time.perf_counter()
    embed = default_embedder()
    texts = list(dict.fromkeys(t for p in pairs for t in (p.reference, p.statement)))
    index = {t: i for i, t in enumerate(texts)}
    vectors = embed([canonical_text(t) for t in texts])  # what the reward embeds (`canonical_words`)
    t2 = time.perf_counter()
    cos = np.array([float(vectors[index[p.reference]] @ vectors[index[p.statement]]) for p in pairs])
    groups = np.array([p.group for p in pairs])
    splits = np.array([p.split for p in pairs])
    slots_equal = np.array([slot_agreement(slots(p.reference), slots(p.statement)) == 1.0 for p in pairs])
    print(
        f"{len(pairs)} pairs from {args.scenes} scenes ({t1 - t0:.1f} s), {len(texts)} texts embedded ({t2 - t1:.1f} s)"
    )
    for split in ("calibration", "held_out"):
        sel = splits == split
        counts = {g: int((groups[sel] == g).sum()) for g in ("positive", *NEGATIVE_GROUPS)}
        print(f"  {split}: {counts}")
    cal = splits == "calibration"
    candidates = np.unique(np.round(cos[cal], 3))

    def best_tau(ok: np.ndarray | None) -> float:
        """The largest threshold within `--slack` of the best balanced accuracy (the curve is flat near
        its top; the stricter end keeps τ meaningful for text the slot words do not cover)."""
        scores = np.array([balanced_accuracy(cos[cal], groups[cal], float(t), ok)["balanced"] for t in candidates])
        return float(candidates[scores >= scores.max() - args.slack].max())

    tau_plain = best_tau(None)
    tau = best_tau(slots_equal[cal])
    print(f"\ntau maximising balanced accuracy on the calibration split: {tau:.3f} with the slot check (default)")
    print(f"                                                       {tau_plain:.3f} cosine only (slot_check: false)\n")
    header = ["tau", "split", "rule", "TPR", *(f"TNR {g}" for g in NEGATIVE_GROUPS), "balanced acc"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for t in sorted({tau, tau_plain, 0.5, 0.6, 0.7, 0.8, 0.85}):
        for split in ("calibration", "held_out"):
            sel = splits == split
            for rule, ok in (("cos > tau", None), ("+ slots equal", slots_equal[sel])):
                r = balanced_accuracy(cos[sel], groups[sel], t, ok)
                cells = [f"{t:.3f}", split, rule, f"{r['positive']:.3f}"]
                cells += [f"{r[g]:.3f}" for g in NEGATIVE_GROUPS] + [f"**{r['balanced']:.3f}**"]
                print("| " + " | ".join(cells) + " |")
    pos = cos[groups == "positive"]
    print(f"\npositive cosines: min {pos.min():.3f}, 5 % {np.quantile(pos, 0.05):.3f}, median {np.median(pos):.3f}")
    for g in NEGATIVE_GROUPS:
        neg = cos[groups == g]
        print(f"{g} cosines: median {np.median(neg):.3f}, 95 % {np.quantile(neg, 0.95):.3f}, max {neg.max():.3f}")
    misses = [(c, p) for c, p in zip(cos, pairs) if p.group == "positive" and p.split == "held_out" and c <= tau]
    print(f"\nheld-out positives at or below tau ({len(misses)}), lowest first:")
    for c, p in sorted(misses, key=lambda x: x[0])[:10]:
        print(f"  {c:.3f}  {p.reference!r} vs {p.statement!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
