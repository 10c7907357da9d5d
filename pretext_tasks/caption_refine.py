"""`caption_refine` (ViPER Stage 1, "caption self-refining"): an image and a description of it that has mistakes;
the answer is the list of corrections, one sentence each (Zhang et al. 2025, arXiv 2510.24285; docs/viper.md).

The loop of the paper, with exact parts (procedural backend, the default):

1. captioner: writes the scene graph of a procedural scene as a caption C_g ("There are 4 objects: a small red
   cube, ... The small red cube is to the left of the large blue sphere.") with 1..k injected mistakes of the
   kinds a VLM makes: a wrong colour, shape or size, a wrong count, a flipped left/right relation, an omitted
   object, a hallucinated object (`inject_errors`, seeded). The caption's own graph (`CaptionGraph`) is kept.
2. generator: builds the scene the caption describes (its objects in a row, ordered to satisfy its relations)
   and renders it with open3d (`caption_scene`); with `backend: diffusers`, a text-to-image pipeline renders
   the caption text instead. The rendering is shown on the preview (and, with `show_rendering`, to the model).
3. comparer: diffs the true scene graph against the caption's graph (`compare`) and writes one correcting
   sentence per difference ("The small blue cube is actually red, not blue."). `apply_corrections` is its
   inverse: applying the corrections to the caption graph gives the true graph.

The model sees the image and C_g and must state the corrections. Reward: `rewards.statements.statement_reward`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from PIL import Image

from mmrl.errors import ConfigError, SkipItem
from mmrl.sample import Sample
from mmrl.scenes import Camera, Scene, place_object
from mmrl.task import Panel
from pretext_tasks import evidence
from pretext_tasks.base import degenerate
from pretext_tasks.viper_scenes import (
    StatementsTask,
    ViperSceneParams,
    article,
    base_meta,
    check_image,
    draw_scene,
    format_sentence,
    image_columns,
    numbered,
    pair_panel,
)

log = logging.getLogger(__name__)

NAME = "caption_refine"
ERROR_KINDS: tuple[str, ...] = ("color", "shape", "size", "count", "relation", "omission", "hallucination")
"""Mistakes the procedural captioner injects (the kinds a VLM's caption has: attributes, counting, spatial
relations, missing and invented objects)."""
ATTRIBUTES: tuple[str, ...] = ("color", "shape", "size")
_SPACING = 1.35  # metres between neighbours in a caption's rendering: a large cube's footprint plus a gap
_ROW_FOV = 55.0


@dataclass
class CaptionRefineParams(ViperSceneParams):
    min_errors: int = 1
    """Fewest mistakes injected into a caption."""
    max_errors: int = 3
    """Most mistakes injected into a caption (each on a different object); the number is uniform in between,
    capped by what the scene allows."""
    error_kinds: tuple[str, ...] = ERROR_KINDS
    """Mistake kinds drawn from (`ERROR_KINDS`); each mistake's kind is uniform over the feasible ones."""
    relations: int = 2
    """Left/right relation sentences in a caption (between pairs whose centres are well apart in the image)."""
    relation_margin: float = 0.1
    """A pair is related only when its centres' image columns differ by at least this share of the width."""
    show_rendering: bool = False
    """Also show the model the rendering of the caption (after the image), as the paper's critique step does;
    off: the image and the caption only (the paper's Stage-1 training input)."""
    captioner: Literal["procedural", "policy"] = "procedural"
    """Who writes the caption C_g: `procedural` (the scene graph with injected mistakes) or `policy` (the closed
    loop, `pretext_tasks.viper_loop`: the policy captions, the generator renders, the corrections come from the
    scene-graph diff, or from the policy as a two-sample critic with `backend: diffusers`). With `policy`
    training draws from a pool the producer rebuilds from the current weights (`refresh_every`); held-out and
    cold-start Samples keep the procedural captioner, so evaluations compare across refreshes."""
    refresh_every: int = 0
    """`captioner: policy`: rebuild the pool every this many optimiser steps, counted from the start of the
    source's `steps` window (the stage boundary, where it is always built); 0: only there."""
    pool_size: int = 64
    """`captioner: policy`: images captioned per (re)build; those without a correction are dropped."""
    caption_max_new_tokens: int = 96
    """`captioner: policy`: most tokens of one policy caption."""
    caption_temperature: float = 1.0
    """`captioner: policy`: sampling temperature of the captions (0: greedy)."""
    loop_images: Literal["scenes", "photos"] = "scenes"
    """`captioner: policy`: the images captioned: `scenes` (procedural, exact ground truth) or `photos`
    (scikit-image's photos; needs `backend: diffusers`, whose critic states the corrections)."""

    def __post_init__(self) -> None:
        self.check(NAME)
        self.error_kinds = tuple(self.error_kinds)
        bad = [k for k in self.error_kinds if k not in ERROR_KINDS]
        if bad or not self.error_kinds or len(set(self.error_kinds)) != len(self.error_kinds):
            raise ConfigError(
                f"{NAME}: error_kinds must be distinct values of {', '.join(ERROR_KINDS)}, got {list(self.error_kinds)}"
            )
        if not 1 <= self.min_errors <= self.max_errors <= 5:
            raise ConfigError(
                f"{NAME}: need 1 <= min_errors <= max_errors <= 5, got {self.min_errors}, {self.max_errors} "
                "(a caption without mistakes has no correction to state)"
            )
        if not 0 <= self.relations <= 4 or not 0.0 < self.relation_margin < 1.0:
            raise ConfigError(f"{NAME}: need 0 <= relations <= 4 and 0 < relation_margin < 1")
        if self.captioner not in ("procedural", "policy") or self.loop_images not in ("scenes", "photos"):
            raise ConfigError(f"{NAME}: captioner must be procedural or policy and loop_images scenes or photos, "
                              f"got {self.captioner!r} and {self.loop_images!r}")  # fmt: skip
        if self.refresh_every < 0 or self.pool_size < 1 or self.caption_max_new_tokens < 1:
            raise ConfigError(f"{NAME}: need refresh_every >= 0, pool_size >= 1 and caption_max_new_tokens >= 1, got "
                              f"{self.refresh_every}, {self.pool_size}, {self.caption_max_new_tokens}")  # fmt: skip
        if self.caption_temperature < 0:
            raise ConfigError(f"{NAME}: caption_temperature must be >= 0, got {self.caption_temperature}")
        if self.loop_images == "photos" and self.backend != "diffusers":
            raise ConfigError(f"{NAME}: loop_images: photos has no scene graph to diff; it needs backend: diffusers")
        if "relation" in self.error_kinds and self.relations == 0 and len(self.error_kinds) == 1:
            raise ConfigError(f"{NAME}: error_kinds ['relation'] needs relations >= 1")
        if set(self.error_kinds) <= {"count"} and self.objects[0] == self.objects[1]:
            raise degenerate(
                NAME, f"error_kinds = ['count'] with objects = {list(self.objects)}",
                f"every answer is 'There are {self.objects[0]} objects, not {self.objects[0]} ± 1': two answers",
                "add other error kinds or let the number of objects vary",
            )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# The caption graph, the captioner and the comparer


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


# --------------------------------------------------------------------------------------------------
# The task


def prompt_text(params: CaptionRefineParams, caption: str) -> str:
    """The question (sheet §4, our words): the caption, the kinds of mistakes it may have, the reply format."""
    shown = ("The first image is the scene; the second was drawn from the description alone. "
             if params.show_rendering else "")  # fmt: skip
    return (
        f'{shown}Here is a description of the image written by a captioning model: "{caption}" '
        "The description may be wrong or incomplete: a wrong colour, shape or size, a wrong number of objects, "
        "a wrong left/right relation (as seen in the image), an object it leaves out or one that is not there. "
        "Compare it with the image and write one sentence that corrects each mistake or omission, naming each "
        f"object as the description does. {format_sentence(params.think)}"
    )


@dataclass
class CaptionRefine(StatementsTask):
    """An image and a flawed description of it; state every correction, one sentence each."""

    Params: ClassVar[type[CaptionRefineParams]] = CaptionRefineParams
    name: ClassVar[str] = NAME
    reference_thought: ClassVar[str] = (
        "I check every object, attribute, the count and each left/right relation of the description against the image."
    )
    params: CaptionRefineParams = field(default_factory=CaptionRefineParams)
    """Scene, captioner, prompt and reward parameters."""
    pool: list[dict] = field(default_factory=list, init=False, repr=False)
    """`captioner: policy`: the closed loop's entries (`viper_loop.build_pool`), served while `serving`."""
    pool_step: int | None = field(default=None, init=False)
    """The optimiser step whose weights built `pool` (None: not built yet)."""
    serving: bool = field(default=False, init=False)
    """Whether `make` draws from the pool (the producer sets it around training draws only)."""
    loop_counts: dict = field(default_factory=dict, init=False, repr=False)
    """Totals over all builds (`viper_loop.build_pool` counts, plus `refreshes`)."""

    @property
    def closed_loop(self) -> bool:
        """Whether the policy writes the captions (`captioner: policy`): the producer then refreshes the pool."""
        return self.params.captioner == "policy"

    @property
    def refresh_every(self) -> int:
        return self.params.refresh_every

    def refresh_pool(self, roles: Any, seed_key: Sequence[int], step: int) -> dict[str, float]:
        """Rebuild the pool with the policy `roles` (`viper_loop.PolicyRoles`) runs; the draws follow
        `seed_key`. Returns this build's counts as metrics (`loop/<count>`)."""
        from pretext_tasks.viper_loop import build_pool

        self.pool, counts = build_pool(self.params, roles, seed_key)
        self.pool_step = step
        if not self.pool:  # every caption dropped: training draws use the procedural captioner until the next build
            log.warning("%s: the closed loop kept none of %d captions at step %d (%s); serving procedural captions "
                        "until the next refresh", NAME, counts["built"], step, dict(counts))  # fmt: skip
        counts["refreshes"] = 1
        for k, v in counts.items():
            self.loop_counts[k] = self.loop_counts.get(k, 0) + int(v)
        metrics = {f"loop/{k}": float(v) for k, v in counts.items() if k != "refreshes"}
        metrics["loop/refreshes"] = float(self.loop_counts["refreshes"])
        return metrics | {"loop/pool_size": float(len(self.pool))}

    def pool_state(self) -> dict[str, Any]:
        """The pool as JSON (for the producer's checkpoint state): entries, the step that built them, totals."""
        return {"pool": self.pool, "pool_step": self.pool_step, "counts": dict(self.loop_counts)}

    def load_pool_state(self, state: dict[str, Any]) -> None:
        self.pool, self.pool_step = list(state["pool"]), state["pool_step"]
        self.loop_counts = dict(state.get("counts", {}))

    def make(self, source_item: int, rng: np.random.Generator) -> Sample:
        if self.serving and self.pool:
            return self._pool_sample(source_item, rng)
        from mmrl.scene_render import render  # open3d: only when scenes are drawn

        p = self.params
        seed = int(rng.integers(2**63))
        scene = draw_scene(p, seed)
        image = check_image(render(scene).rgb, "scene image", p.min_image_std)
        truth = truthful_caption(scene, rng, p)
        caption = inject_errors(truth, scene, rng, int(rng.integers(p.min_errors, p.max_errors + 1)), p)
        corrections = compare(scene, caption)
        if not corrections:
            raise SkipItem("caption_without_mistakes", "the injected mistakes cancelled out")
        text = caption_text(caption)
        drawn = caption_scene(caption, p.width, p.height)
        if p.backend == "diffusers":
            from pretext_tasks.viper_diffusion import DiffusionParams, diffusion_render_captions

            (rendering,) = diffusion_render_captions([text], [rng], DiffusionParams(**p.diffusion))
            if isinstance(rendering, SkipItem):
                raise rendering
        else:
            rendering = render(drawn).rgb
        rendering = check_image(rendering, "caption rendering", p.min_image_std)
        meta = base_meta(p) | {
            "seed": seed, "image_size": list(image.size), "scene": scene.to_graph(), "caption": text,
            "caption_graph": caption.to_dict(), "caption_scene": drawn.to_graph(), "corrections": corrections,
            "split": "+".join(sorted({c["kind"] for c in corrections})), "captioner": "procedural",
        }  # fmt: skip
        return self._sample(source_item, image, rendering, text, corrections, meta)

    def _sample(self, source_item: int, image: Image.Image, rendering: Image.Image | None, caption: str,
                corrections: Sequence[dict[str, Any]], meta: dict[str, Any]) -> Sample:  # fmt: skip
        content: list[dict[str, Any]] = [{"type": "image", "image": image}]
        if self.params.show_rendering and rendering is not None:
            content.append({"type": "image", "image": rendering})
        content.append({"type": "text", "text": prompt_text(self.params, caption)})
        answer = [c["text"] for c in corrections]
        return Sample(f"{NAME}-{int(source_item):08d}", NAME, [{"role": "user", "content": content}], answer, meta)

    def _pool_sample(self, source_item: int, rng: np.random.Generator) -> Sample:
        """A Sample of the closed loop (`viper_loop.pool_sample_parts`): a pool entry drawn by `rng`, with the
        POLICY's caption and the entry's corrections."""
        from pretext_tasks.viper_loop import pool_sample_parts

        entry = self.pool[int(rng.integers(len(self.pool)))]
        image, rendering, meta = pool_sample_parts(self.params, entry)
        meta = base_meta(self.params) | {"pool_step": self.pool_step, **meta}
        return self._sample(source_item, image, rendering, entry["caption"], entry["corrections"], meta)

    def random_answer(self, sample: Sample, rng: np.random.Generator) -> str:
        """The corrections of another, randomly flawed caption of the same scene: plausible sentences about the
        right objects that mostly fix mistakes this caption does not have."""
        try:
            scene = Scene.from_graph(sample.meta["scene"])
            p = self.params
            other = inject_errors(truthful_caption(scene, rng, p), scene, rng, max(1, len(sample.answer)), p)
            lines = [c["text"] for c in compare(scene, other)]
        except (KeyError, SkipItem):
            lines = ["There are 4 objects, not 3."]
        return self.reply(sample, lines, "A guess.")

    def constant_answer(self, sample: Sample) -> str:
        """One fixed count correction, the one sentence form every sample can have: "There are 4 objects, not 5."
        (4 is the middle of the default 3-6 objects)."""
        return self.reply(sample, ["There are 4 objects, not 5."], "A fixed guess.")

    def evidence(self, sample: Sample) -> list[Panel]:
        """The image next to the rendering of its caption (the generator's picture), then the caption and the
        corrections."""
        shots = evidence.images(sample)
        if not shots:
            return []
        rendering = shots[1] if len(shots) > 1 else None
        if (
            rendering is None
            and sample.meta.get("backend", "procedural") == "procedural"
            and "caption_scene" in sample.meta
        ):
            from mmrl.scene_render import render  # a stored scene graph, rendered again: no random draw

            rendering = Image.fromarray(render(Scene.from_graph(sample.meta["caption_scene"])).rgb)
        if rendering is None:
            rendering = evidence.text_image("(the caption's rendering is not stored)")
        pair = pair_panel(shots[0], "the image", rendering, "the caption, rendered")
        text = evidence.text_image(
            f"Caption: {sample.meta.get('caption', '')}\n\nCorrections:\n{numbered(sample.answer)}", width=pair.width
        )
        return [
            Panel(f"{len(sample.answer)} correction(s): {sample.meta.get('split', '')}", evidence.column([pair, text]))
        ]


__all__ = [
    "ERROR_KINDS",
    "CaptionGraph",
    "CaptionRefine",
    "CaptionRefineParams",
    "apply_corrections",
    "caption_scene",
    "caption_text",
    "compare",
    "inject_errors",
    "prompt_text",
    "scene_graph_caption",
    "truthful_caption",
]
