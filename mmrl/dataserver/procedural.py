"""`procedural`: a new scene around the kept objects of a procedural-scene sample, labels exact by construction.

From the seed's scene graph (`meta["scene"]`) the synthesizer keeps the objects in `meta["keep_ids"]` (the
labelled objects and any anchor the expression names), drops every other object, adds new props, recolours
the ground and the sky, and re-renders with the same camera and light (`mmrl.scene_render.render`). The
description steers the draw through the words it contains (case-insensitive, whole words; others ignored):

    colour words   red green blue yellow purple cyan orange white (the scene palette, `mmrl.scenes.COLORS`):
                   props take these colours; the ground is tinted 40 % towards the first, the sky towards the
                   second (the first when only one is named). No colour word: props, ground and sky tints
                   are drawn from the whole palette.
    shape words    cube(s)/box(es)/block(s), sphere(s)/ball(s), cylinder(s), cone(s), torus/tori/ring(s)/
                   donut(s): props take these shapes. Shapes of referred categories are never used.
    size words     small/tiny, medium, large/big/huge: props take these sizes.
    count words    many, lots, crowded, busy, cluttered -> the upper half of the `props` range;
                   few, sparse, empty, bare, quiet -> the lower half; both or neither -> the whole range.

Props never belong to a referred category (`meta["target_category"]` for REC, `meta["categories"]` for OVD;
the category of a scene object is its shape), never overlap the kept objects on the ground
(`mmrl.scenes.overlapping`) and never cover a kept object's box in the picture. Then the checks of
`mmrl.dataserver.verify`: kept pixels unchanged (a prop's shadow on a kept object, or an occluder that was
dropped, trips `foreground_changed`), label boxes equal to the seed's within 1 px (`labels_moved`), and no
visible object of a referred category besides the labelled ones (`new_instance`, exact from the instance
mask).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from PIL import Image

from mmrl.dataserver.protocol import Rejected, SynthesisRequest
from mmrl.dataserver.verify import (
    check_description,
    check_image,
    check_kept_region,
    check_labels,
    check_no_new_instance,
    referred_categories,
    replace_answer_boxes,
    seed_image,
    with_image,
)
from mmrl.sample import Sample
from mmrl.scene_render import render
from mmrl.scenes import COLORS, SHAPES, SIZES, Scene, SceneObject, _bound_radius, _sample_placement, place_object
from rewards.boxes import answer_boxes

SHAPE_WORDS = {
    **{s: s for s in SHAPES},
    **{"cubes": "cube", "box": "cube", "boxes": "cube", "block": "cube", "blocks": "cube"},
    **{"spheres": "sphere", "ball": "sphere", "balls": "sphere", "cylinders": "cylinder", "cones": "cone"},
    **{"tori": "torus", "toruses": "torus", "ring": "torus", "rings": "torus", "donut": "torus", "donuts": "torus"},
}
SIZE_WORDS = {"small": "small", "tiny": "small", "medium": "medium", "large": "large", "big": "large",
              "huge": "large"}  # fmt: skip
MANY_WORDS = frozenset({"many", "lots", "crowded", "busy", "cluttered"})
FEW_WORDS = frozenset({"few", "sparse", "empty", "bare", "quiet"})
TINT = 0.4
"""How far the ground and sky move from their neutral colours towards a named colour."""
NEUTRAL_GROUND: tuple[int, int, int] = Scene.__dataclass_fields__["ground_color"].default
NEUTRAL_SKY: tuple[int, int, int] = Scene.__dataclass_fields__["background_color"].default


@dataclass(frozen=True)
class Steering:
    """What the description asks for, as vocabulary of the scene generator (empty: no preference)."""

    colors: tuple[str, ...] = ()
    shapes: tuple[str, ...] = ()
    sizes: tuple[str, ...] = ()
    count: str = ""
    """`many`, `few` or empty."""


def parse_description(description: str) -> Steering:
    """The colour, shape, size and count words of `description` (module docstring), first mention first."""
    words = re.findall(r"[a-z]+", description.lower())

    def firsts(mapped: list[str]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(mapped))

    many, few = any(w in MANY_WORDS for w in words), any(w in FEW_WORDS for w in words)
    return Steering(
        colors=firsts([w for w in words if w in COLORS]),
        shapes=firsts([SHAPE_WORDS[w] for w in words if w in SHAPE_WORDS]),
        sizes=firsts([SIZE_WORDS[w] for w in words if w in SIZE_WORDS]),
        count="many" if many and not few else "few" if few and not many else "",
    )


def _tint(neutral: tuple[int, int, int], color: str) -> tuple[int, int, int]:
    return tuple(int(round((1 - TINT) * a + TINT * b)) for a, b in zip(neutral, COLORS[color]))


class ProceduralSynthesizer:
    """Re-renders a procedural scene's background and props around its kept objects (module docstring)."""

    name = "procedural"

    def __init__(self, worker: int = 0, props: tuple[int, int] | list[int] = (1, 6), kept_mad: float = 2.0,
                 kept_changed_share: float = 0.01, max_pixels: int = 4096 * 4096) -> None:  # fmt: skip
        lo, hi = (int(props[0]), int(props[1])) if not isinstance(props, int) else (props, props)
        if not 0 <= lo <= hi:
            raise ValueError(f"props must be a range (lo, hi) with 0 <= lo <= hi, got {props}")
        self.worker, self.props = worker, (lo, hi)
        self.kept_mad, self.kept_changed_share, self.max_pixels = kept_mad, kept_changed_share, max_pixels

    def __call__(self, request: SynthesisRequest, rng: np.random.Generator) -> Sample:
        description = check_description(request.description)
        scene, keep = seed_scene(request.seed)
        steer = parse_description(description)
        kept = [o for o in scene.objects if o.id in keep]
        props = self.draw_props(scene, kept, steer, referred_categories(request.seed.meta), rng)
        ground = _tint(NEUTRAL_GROUND, steer.colors[0] if steer.colors else str(rng.choice(list(COLORS))))
        sky_word = steer.colors[1] if len(steer.colors) > 1 else steer.colors[0] if steer.colors else None
        sky = _tint(NEUTRAL_SKY, sky_word or str(rng.choice(list(COLORS))))
        new_scene = replace(scene, objects=tuple(kept + props), ground_color=ground, background_color=sky)
        facts = {"props": [p.describe() for p in props], "dropped": sorted(o.id for o in scene.objects
                 if o.id not in keep), "ground_color": list(ground), "background_color": list(sky)}  # fmt: skip
        return self.build_sample(request, new_scene, facts)

    def draw_props(self, scene: Scene, kept: list[SceneObject], steer: Steering, referred: set[str],
                   rng: np.random.Generator) -> list[SceneObject]:  # fmt: skip
        """Props around `kept`, steered by `steer`, never of a `referred` shape, off the kept objects' ground
        and out of their boxes in the picture; a prop with no free place is left out."""
        lo, hi = self.props
        mid = (lo + hi) // 2
        count = int(rng.integers(*{"many": (mid, hi), "few": (lo, mid)}.get(steer.count, (lo, hi))) + 1) if hi else 0
        shapes = [s for s in (steer.shapes or SHAPES) if s not in referred] or [s for s in SHAPES if s not in referred]
        colors, sizes = list(steer.colors or COLORS), list(steer.sizes or SIZES)
        if not shapes:
            return []
        camera = scene.camera
        kept_boxes = [_screen_box(camera, o) for o in kept]
        reach = max([1.0 + 0.16 * len(scene.objects)] + [max(abs(o.position[0]), abs(o.position[1])) for o in kept])
        next_id = max([o.id for o in scene.objects], default=-1) + 1
        props: list[SceneObject] = []
        for i in range(count):
            template = place_object(next_id + i, str(rng.choice(shapes)), str(rng.choice(colors)),
                                    str(rng.choice(sizes)), (0.0, 0.0))  # fmt: skip
            for _ in range(20):  # placements clear on the ground but covering a kept object in the picture
                try:
                    prop = _sample_placement(rng, kept + props, template, camera, reach, 0.02, 50)
                except ValueError:
                    break
                if not any(_boxes_meet(_screen_box(camera, prop), box) for box in kept_boxes):
                    props.append(prop)
                    break
        return props

    def build_sample(self, request: SynthesisRequest, scene: Scene, facts: dict[str, Any]) -> Sample:
        """Render `scene`, verify it against the seed (module docstring) and return the new Sample."""
        seed = request.seed
        before = np.asarray(seed_image(seed))
        size = (before.shape[1], before.shape[0])
        old_scene, keep = seed_scene(seed)
        label_ids = [int(i) for i in seed.meta.get("label_ids", [seed.meta.get("target_id")]) if i is not None]
        old = render(old_scene)  # the seed's instance mask: which of its pixels are the kept objects
        new = render(scene)
        rgb = check_image(new.rgb, size, self.max_pixels)
        mad = check_kept_region(before, rgb, np.isin(old.instance, sorted(keep)), mad=self.kept_mad,
                                changed_share=self.kept_changed_share)  # fmt: skip
        expected = [box for _, box in answer_boxes(seed.answer)]
        if len(expected) != len(label_ids):
            raise Rejected("labels_moved", f"{len(expected)} answer boxes but {len(label_ids)} label ids")
        found = [new.boxes.get(i) for i in label_ids]
        check_labels(expected, found)
        check_no_new_instance(new.instance, {o.id: o.shape for o in scene.objects},
                              referred_categories(seed.meta), set(label_ids) | keep)  # fmt: skip
        answer = replace_answer_boxes(seed.answer, [list(b) for b in found]) if found else seed.answer
        synthesized = {"synthesizer": self.name, "request_id": request.request_id,
                       "description": request.description.strip(), "kept_mad": mad, **facts}  # fmt: skip
        meta = {**seed.meta, "scene": new.graph, "synthesized": synthesized}
        return with_image(seed, Image.fromarray(rgb), new_id=f"{seed.id}~{request.request_id}", answer=answer,
                          meta=meta)  # fmt: skip


def seed_scene(seed: Sample) -> tuple[Scene, set[int]]:
    """The seed's scene (its camera matching the seed image's size) and the ids to keep; `unsupported_seed`
    when the sample is not from a procedural scene."""
    meta = seed.meta
    if not isinstance(meta.get("scene"), dict) or "keep_ids" not in meta:
        raise Rejected("unsupported_seed", f"sample {seed.id} has no scene graph and keep_ids")
    try:
        scene = Scene.from_graph(meta["scene"])
    except (KeyError, TypeError, ValueError) as e:
        raise Rejected("unsupported_seed", f"sample {seed.id}: unreadable scene graph ({e})") from e
    size = meta.get("image_size")
    if size and (scene.camera.width, scene.camera.height) != tuple(size):
        raise Rejected("unsupported_seed", f"scene camera {scene.camera.width}x{scene.camera.height} is not the "
                       f"image size {size}")  # fmt: skip
    return scene, {int(i) for i in meta["keep_ids"]}


def _screen_box(camera, obj: SceneObject) -> tuple[float, float, float, float]:
    """A square around the object's projected centre that contains its picture (bounding sphere radius)."""
    uv, z = camera.project([obj.position])
    r = camera.fx * _bound_radius(obj) / max(float(z[0]), 1e-6) + 2.0
    return (uv[0, 0] - r, uv[0, 1] - r, uv[0, 0] + r, uv[0, 1] + r)


def _boxes_meet(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


__all__ = ["ProceduralSynthesizer", "Steering", "parse_description", "seed_scene"]
