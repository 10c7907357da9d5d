"""The caption side of `caption_refine` (ViPER Stage 1; Zhang et al. 2025, arXiv 2510.24285; docs/viper.md): what
a caption says as a graph, the procedural captioner that writes one with mistakes, the comparer that corrects it
against the true scene, and the generator's reading of a caption as a scene to render.

- `CaptionGraph`: a caption's objects (each pointing at the true object it describes, or None when invented),
  its stated count and its left/right relations; `caption_text` writes it as the caption C_g ("There are 4
  objects on the ground: a small red cube, ... The small red cube is to the left of the large blue sphere.").
- captioner: `truthful_caption` (the scene graph as a caption) and `inject_errors` (1..k seeded mistakes of the
  kinds a VLM makes: a wrong colour, shape or size, a wrong count, a flipped left/right relation, an omitted
  object, a hallucinated object).
- comparer: `compare` diffs the true scene against the caption's graph into one correcting sentence per
  difference ("The small blue cube is actually red, not blue."); `apply_corrections` is its inverse (applying
  the corrections to the caption graph gives the true graph, `scene_graph_caption`).
- generator: `caption_scene` builds the scene a caption describes (its objects in a row, ordered to satisfy its
  relations) for open3d to render.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mmrl.errors import SkipItem
from mmrl.scenes import Camera, Scene, place_object
from pretext_tasks.viper_scenes import article, image_columns

if TYPE_CHECKING:
    from pretext_tasks.caption_refine import CaptionRefineParams

ERROR_KINDS: tuple[str, ...] = ("color", "shape", "size", "count", "relation", "omission", "hallucination")
"""Mistakes the procedural captioner injects (the kinds a VLM's caption has: attributes, counting, spatial
relations, missing and invented objects)."""
ATTRIBUTES: tuple[str, ...] = ("color", "shape", "size")
_SPACING = 1.35  # metres between neighbours in a caption's rendering: a large cube's footprint plus a gap
_ROW_FOV = 55.0


# --------------------------------------------------------------------------------------------------
# The caption graph


@dataclass
class CaptionGraph:
    """What a caption says: its objects (each pointing at the true object it describes, `ref`, or None when
    invented), the object count it states, and its left/right relations (between refs)."""

    objects: list[dict[str, Any]]
    """`{"ref": true id or None, "size": ..., "color": ..., "shape": ...}` in the caption's order; a size or
    colour is None when the caption does not state it (a policy's caption, `viper_loop`)."""
    count: int | None
    """The number of objects the caption states (None: it states none)."""
    relations: list[dict[str, Any]]
    """`{"a": ref, "b": ref, "side": "left" | "right"}`: "the a is to the left/right of the b"."""

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [dict(o) for o in self.objects], "count": self.count,
                "relations": [dict(r) for r in self.relations]}  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CaptionGraph:
        count = None if d["count"] is None else int(d["count"])
        return cls([dict(o) for o in d["objects"]], count, [dict(r) for r in d["relations"]])

    def obj(self, ref: int | None) -> dict[str, Any]:
        for o in self.objects:
            if o["ref"] == ref:
                return o
        raise KeyError(ref)

    def canonical(self) -> tuple:
        """Order-free form for comparing graphs: objects by ref, the count, the relations as a set."""
        objects = sorted(
            ((o["ref"] if o["ref"] is not None else -1), str(o["size"]), str(o["color"]), o["shape"])
            for o in self.objects
        )
        return tuple(objects), self.count, tuple(sorted((r["a"], r["b"], r["side"]) for r in self.relations))


def describe(o: dict[str, Any]) -> str:
    """`small red cube`; an unstated (None) size or colour is left out: `red cube`."""
    return " ".join(str(o[k]) for k in ("size", "color", "shape") if o.get(k) is not None)


def caption_text(graph: CaptionGraph) -> str:
    """The caption C_g: the count, the objects in order, then the relations."""
    names = [article(describe(o)) for o in graph.objects]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    noun = "object" if graph.count == 1 else "objects"
    lines = [f"There {'is' if graph.count == 1 else 'are'} {graph.count} {noun} on the ground: {listed}."]
    for r in graph.relations:
        lines.append(f"The {describe(graph.obj(r['a']))} is to the {r['side']} of the {describe(graph.obj(r['b']))}.")
    return " ".join(lines)


# --------------------------------------------------------------------------------------------------
# The captioner


def truthful_caption(scene: Scene, rng: np.random.Generator, params: CaptionRefineParams) -> CaptionGraph:
    """A caption without mistakes: every object in a random order, the true count, up to `params.relations` true
    left/right relations between pairs at least `relation_margin` of the width apart (each object in at most
    one pair, so a flipped relation never contradicts another)."""
    order = [scene.objects[int(i)] for i in rng.permutation(len(scene.objects))]
    objects = [{"ref": o.id, "size": o.size, "color": o.color, "shape": o.shape} for o in order]
    columns = image_columns(scene)
    margin = params.relation_margin * scene.camera.width
    relations, used = [], set()
    pairs = [(a.id, b.id) for i, a in enumerate(order) for b in order[i + 1 :]]
    for k in rng.permutation(len(pairs)) if pairs else []:
        a, b = pairs[int(k)]
        if len(relations) >= params.relations:
            break
        if a in used or b in used or abs(columns[a] - columns[b]) < margin:
            continue
        relations.append({"a": a, "b": b, "side": "left" if columns[a] < columns[b] else "right"})
        used |= {a, b}
    return CaptionGraph(objects, len(objects), relations)


def inject_errors(
    truth: CaptionGraph, scene: Scene, rng: np.random.Generator, count: int, params: CaptionRefineParams
) -> CaptionGraph:
    """`truth` with `count` mistakes (fewer when the scene allows fewer), each of a kind uniform over the feasible
    `params.error_kinds`, each on a different object; the stated count follows the caption's own list (a
    captioner counts what it lists) unless a count mistake changes it. Wrong attributes and invented objects
    never take a (size, colour, shape) of a true object or of another described one, so every description in
    the caption names one object. Raises SkipItem when no mistake is possible."""
    graph = CaptionGraph.from_dict(truth.to_dict())
    true_keys = {(o.size, o.color, o.shape) for o in scene.objects}
    related = {r[k] for r in graph.relations for k in ("a", "b")}
    used: set[int] = set()
    count_error = False
    made = 0
    for _ in range(count):
        keys = true_keys | {(o["size"], o["color"], o["shape"]) for o in graph.objects}
        untouched = [o for o in graph.objects if o["ref"] is not None and o["ref"] not in used]
        options = {
            "color": [(o, "color", v) for o in untouched for v in params.colors
                      if v != o["color"] and (o["size"], v, o["shape"]) not in keys],
            "shape": [(o, "shape", v) for o in untouched for v in params.shapes
                      if v != o["shape"] and (o["size"], o["color"], v) not in keys],
            "size": [(o, "size", v) for o in untouched for v in params.sizes
                     if v != o["size"] and (v, o["color"], o["shape"]) not in keys],
            "count": [] if count_error else [None],
            "relation": [r for r in graph.relations if r["a"] not in used and r["b"] not in used],
            "omission": [o for o in untouched if o["ref"] not in related] if len(graph.objects) > 2 else [],
            "hallucination": [(s, c, h) for s in params.sizes for c in params.colors for h in params.shapes
                              if (s, c, h) not in keys],
        }  # fmt: skip
        feasible = [k for k in params.error_kinds if options[k]]
        if not feasible:
            break
        kind = feasible[int(rng.integers(len(feasible)))]
        choice = options[kind][int(rng.integers(len(options[kind])))]
        if kind in ATTRIBUTES:
            o, attr, value = choice
            o[attr] = value
            used.add(o["ref"])
        elif kind == "count":
            count_error = True
        elif kind == "relation":
            choice["side"] = "right" if choice["side"] == "left" else "left"
            used |= {choice["a"], choice["b"]}
        elif kind == "omission":
            graph.objects.remove(choice)
            used.add(choice["ref"])
        else:
            size, color, shape = choice
            graph.objects.insert(int(rng.integers(len(graph.objects) + 1)),
                                 {"ref": None, "size": size, "color": color, "shape": shape})  # fmt: skip
        made += 1
    if not made:
        raise SkipItem("no_caption_error_possible", f"no mistake of kinds {list(params.error_kinds)} fits the scene")
    graph.count = len(graph.objects)
    if count_error:
        graph.count += 1 if graph.count <= 1 or rng.random() < 0.5 else -1
    return graph


# --------------------------------------------------------------------------------------------------
# The comparer


def compare(scene: Scene, caption: CaptionGraph) -> list[dict[str, Any]]:
    """The comparer: every difference between the true scene and what the caption says, as structured
    corrections, each with its sentence (`text`). Order: invented objects, missing objects, wrong attributes
    (in caption order), the count, the relations."""
    truth = {o.id: {"ref": o.id, "size": o.size, "color": o.color, "shape": o.shape} for o in scene.objects}
    out: list[dict[str, Any]] = []
    described = {o["ref"] for o in caption.objects if o["ref"] is not None}
    for o in caption.objects:
        if o["ref"] is None:
            # A second mention of a described true object's description: "no other" (one exists).
            other = any(d["ref"] is not None and describe(d) == describe(o) for d in caption.objects)
            out.append({"kind": "hallucination", "said": dict(o),
                        "text": f"There is no {'other ' * other}{describe(o)} in the image."})  # fmt: skip
    for ref, o in truth.items():
        if ref not in described:
            out.append({"kind": "omission", "true": dict(o),
                        "text": f"The description misses {article(describe(o))}."})  # fmt: skip
    for o in caption.objects:
        if o["ref"] is None:
            continue
        t = truth[o["ref"]]
        for attr in ATTRIBUTES:
            if o[attr] is None:  # an attribute the caption leaves out: state it
                out.append({"kind": "detail", "ref": o["ref"], "attr": attr, "true": t[attr],
                            "text": f"The {describe(o)} is {t[attr]}."})  # fmt: skip
            elif o[attr] != t[attr]:
                is_shape = attr == "shape"
                said, true = (article(o[attr]), article(t[attr])) if is_shape else (o[attr], t[attr])
                out.append({"kind": attr, "ref": o["ref"], "said": o[attr], "true": t[attr],
                            "text": f"The {describe(o)} is actually {true}, not {said}."})  # fmt: skip
    if caption.count is not None and caption.count != len(scene.objects):
        n = len(scene.objects)
        text = f"There {'is' if n == 1 else 'are'} {n} object{'s' * (n != 1)}, not {caption.count}."
        out.append({"kind": "count", "said": caption.count, "true": n, "text": text})
    columns = image_columns(scene)
    for r in caption.relations:
        if r["a"] not in columns or r["b"] not in columns:  # a relation with an invented object: nothing to check
            continue
        side = "left" if columns[r["a"]] < columns[r["b"]] else "right"
        if side != r["side"]:
            a, b = describe(caption.obj(r["a"])), describe(caption.obj(r["b"]))
            out.append({"kind": "relation", "a": r["a"], "b": r["b"], "said": r["side"], "true": side,
                        "text": f"The {a} is to the {side} of the {b}, not to the {r['side']}."})  # fmt: skip
    return out


def apply_corrections(caption: CaptionGraph, corrections: Sequence[dict[str, Any]]) -> CaptionGraph:
    """The caption graph with every structured correction applied (the comparer's inverse): what the caption
    says once corrected, which is the true scene's graph (`truthful_caption` with the caption's relation pairs)."""
    graph = CaptionGraph.from_dict(caption.to_dict())
    for c in corrections:
        kind = c["kind"]
        if kind in ATTRIBUTES:
            graph.obj(c["ref"])[kind] = c["true"]
        elif kind == "detail":
            graph.obj(c["ref"])[c["attr"]] = c["true"]
        elif kind == "count":
            graph.count = int(c["true"])
        elif kind == "relation":
            for r in graph.relations:
                if (r["a"], r["b"]) == (c["a"], c["b"]):
                    r["side"] = c["true"]
        elif kind == "omission":
            graph.objects.append(dict(c["true"]))
        elif kind == "hallucination":
            graph.objects = [o for o in graph.objects if not (o["ref"] is None and describe(o) == describe(c["said"]))]
    return graph


def scene_graph_caption(scene: Scene, relations: Sequence[dict[str, Any]]) -> CaptionGraph:
    """The true graph in caption form (every object, the true count, the given relation pairs with true sides)."""
    columns = image_columns(scene)
    objects = [{"ref": o.id, "size": o.size, "color": o.color, "shape": o.shape} for o in scene.objects]
    rel = [{"a": r["a"], "b": r["b"], "side": "left" if columns[r["a"]] < columns[r["b"]] else "right"}
           for r in relations]  # fmt: skip
    return CaptionGraph(objects, len(objects), rel)


# --------------------------------------------------------------------------------------------------
# The generator's reading of a caption


def caption_scene(caption: CaptionGraph, width: int, height: int) -> Scene:
    """The generator's reading of a caption: its objects in one row across the view, left to right in an order
    that satisfies its left/right relations (ties and cycles: caption order), seen from the front."""
    n = len(caption.objects)
    keys = [o["ref"] if o["ref"] is not None else f"new{i}" for i, o in enumerate(caption.objects)]
    order = _row_order(keys, [(r["a"], r["b"]) if r["side"] == "left" else (r["b"], r["a"]) for r in caption.relations])
    half = _SPACING * (n - 1) / 2 + 0.6
    dist = max(3.0, 1.15 * half / math.tan(math.radians(_ROW_FOV) / 2))
    camera = Camera.look_at((0.0, -dist, 0.45 * dist), (0.0, 0.0, 0.2), width, height, _ROW_FOV)
    objects = []
    for slot, key in enumerate(order):
        o = caption.objects[keys.index(key)]
        x = _SPACING * (slot - (n - 1) / 2)
        objects.append(place_object(slot, o["shape"], o["color"], o["size"], (x, 0.0), 0.4))
    return Scene(tuple(objects), camera, (0.3, -0.5, 0.81))


def _row_order(keys: list[Any], before: list[tuple[Any, Any]]) -> list[Any]:
    """`keys` ordered so that each (x, y) in `before` has x left of y (Kahn's algorithm, ties by list order);
    `keys` unchanged when the constraints have a cycle."""
    left = list(keys)
    edges = [(a, b) for a, b in before if a in keys and b in keys]
    out = []
    while left:
        free = [k for k in left if not any(b == k and a in left for a, b in edges)]
        if not free:
            return list(keys)
        out.append(free[0])
        left.remove(free[0])
    return out


__all__ = [
    "ATTRIBUTES",
    "ERROR_KINDS",
    "CaptionGraph",
    "apply_corrections",
    "caption_scene",
    "caption_text",
    "compare",
    "describe",
    "inject_errors",
    "scene_graph_caption",
    "truthful_caption",
]
