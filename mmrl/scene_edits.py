"""Edits of procedural scenes (`mmrl.scenes`): each returns (new scene, Edit) and leaves its input untouched.

World-frame and camera conventions are those stated in `mmrl.scenes`. Randomness: only through an
explicit `numpy.random.Generator`; the same seed gives byte-identical JSON. Nothing mutates its input:
scenes are frozen dataclasses.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from mmrl.scene_render import visible_fractions
from mmrl.scenes import (
    COLORS,
    SHAPES,
    SIZES,
    Camera,
    Scene,
    SceneObject,
    in_view,
    overlapping,
    place_object,
)

EDIT_KINDS: tuple[str, ...] = ("recolor", "reshape", "resize", "move", "remove", "add")


@dataclass(frozen=True)
class Edit:
    kind: str
    """One of EDIT_KINDS."""
    object_id: int
    before: dict[str, Any] | None
    """`SceneObject.to_dict()` before the edit; None for "add"."""
    after: dict[str, Any] | None
    """`SceneObject.to_dict()` after the edit; None for "remove"."""
    description: str
    """One English sentence, e.g. "The small red cube became blue."."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "object_id": self.object_id,
            "before": self.before,
            "after": self.after,
            "description": self.description,
        }


def _swap(scene: Scene, kind: str, old: SceneObject, new: SceneObject, description: str) -> tuple[Scene, Edit]:
    if new == old:
        raise ValueError(f"{kind}: this would not change the {old.describe()} (id {old.id})")
    hit = (
        overlapping(scene.objects, new)
        if (new.shape, new.size, new.position) != (old.shape, old.size, old.position)
        else None
    )  # a recolor cannot create an overlap
    if hit is not None:
        raise ValueError(f"{kind}: the {new.describe()} (id {new.id}) would overlap the {hit.describe()} (id {hit.id})")
    objects = tuple(new if o.id == old.id else o for o in scene.objects)
    return replace(scene, objects=objects), Edit(kind, old.id, old.to_dict(), new.to_dict(), description)


def recolor(scene: Scene, object_id: int, color: str) -> tuple[Scene, Edit]:
    old = scene.object(object_id)
    new = replace(old, color=color)
    return _swap(scene, "recolor", old, new, f"The {old.describe()} became {color}.")


def reshape(scene: Scene, object_id: int, shape: str) -> tuple[Scene, Edit]:
    """Swap the shape, keeping ground position, colour, size and yaw (z follows the new height)."""
    old = scene.object(object_id)
    new = place_object(old.id, shape, old.color, old.size, old.position[:2], old.yaw)
    return _swap(scene, "reshape", old, new, f"The {old.describe()} became a {shape}.")


def resize(scene: Scene, object_id: int, size: str) -> tuple[Scene, Edit]:
    old = scene.object(object_id)
    new = place_object(old.id, old.shape, old.color, size, old.position[:2], old.yaw)
    return _swap(scene, "resize", old, new, f"The {old.describe()} became {size}.")


def move(scene: Scene, object_id: int, position: Sequence[float]) -> tuple[Scene, Edit]:
    """Move to ground point `position[:2]` (a given z is ignored: objects always rest on the ground).
    The description names the direction as seen from the camera."""
    old = scene.object(object_id)
    new = place_object(old.id, old.shape, old.color, old.size, position[:2], old.yaw)
    where = _direction_words(scene.camera, old.position, new.position)
    return _swap(scene, "move", old, new, f"The {old.describe()} was moved{' ' + where if where else ''}.")


def remove(scene: Scene, object_id: int) -> tuple[Scene, Edit]:
    old = scene.object(object_id)
    objects = tuple(o for o in scene.objects if o.id != object_id)
    return replace(scene, objects=objects), Edit(
        "remove", old.id, old.to_dict(), None, f"The {old.describe()} was removed."
    )


def add(scene: Scene, obj: SceneObject) -> tuple[Scene, Edit]:
    """Add `obj` (its z is reset so it rests on the ground); its id must be new."""
    if any(o.id == obj.id for o in scene.objects):
        raise ValueError(f"add: id {obj.id} is already used by the {scene.object(obj.id).describe()}")
    new = place_object(obj.id, obj.shape, obj.color, obj.size, obj.position[:2], obj.yaw)
    hit = overlapping(scene.objects, new)
    if hit is not None:
        raise ValueError(f"add: the {new.describe()} would overlap the {hit.describe()} (id {hit.id})")
    return replace(scene, objects=(*scene.objects, new)), Edit(
        "add", new.id, None, new.to_dict(), f"A {new.describe()} was added."
    )


def _direction_words(camera: Camera, a: Sequence[float], b: Sequence[float]) -> str:
    """Ground displacement a -> b in camera terms: "to the left", "closer to the camera", or both."""
    m = camera.matrix
    right, fwd = m[:2, 0], m[:2, 2]  # camera x and z axes projected onto the ground
    d = np.subtract(b[:2], a[:2])
    x = float(d @ right / (np.linalg.norm(right) + 1e-12))
    z = float(d @ fwd / (np.linalg.norm(fwd) + 1e-12))
    big = max(abs(x), abs(z), 1e-12)
    words = []
    if abs(x) >= 0.4 * big:
        words.append("to the right" if x > 0 else "to the left")
    if abs(z) >= 0.4 * big:
        words.append("farther from the camera" if z > 0 else "closer to the camera")
    return " and ".join(words)


def random_edit(
    scene: Scene,
    rng: np.random.Generator,
    kinds: Sequence[str] = ("recolor", "reshape", "move", "remove", "add"),
    *,
    min_visible: float = 0.25,
    margin: float = 0.06,
    max_tries: int = 50,
) -> tuple[Scene, Edit]:
    """A random valid edit whose effect shows in the image: the edited object is at least `min_visible`
    unoccluded before and after, a new colour/shape/size differs from the old one and keeps every
    (size, color, shape) in the scene distinct, moves (0.6-1.5 m) and additions stay in view and off
    other objects, and at least one object remains. The kind is uniform over the feasible `kinds`.
    Raises ValueError when no kind yields a valid edit in `max_tries` attempts."""
    return _random_edit_excluding(scene, rng, kinds, set(), min_visible, margin, max_tries)


def _propose(
    scene: Scene, rng: np.random.Generator, kind: str, targets: Sequence[SceneObject]
) -> tuple[Scene, Edit] | None:
    """One random edit of `kind` on one of `targets` (None if there is nothing to choose from)."""
    taken = {(o.size, o.color, o.shape) for o in scene.objects}
    o = targets[int(rng.integers(len(targets)))] if targets else None

    def pick(options: list[Any]) -> Any:
        return options[int(rng.integers(len(options)))] if options else None

    if kind == "add":
        free = pick([k for k in itertools.product(SIZES, COLORS, SHAPES) if k not in taken])
        if free is None:
            return None
        spread = max((max(abs(q.position[0]), abs(q.position[1])) for q in scene.objects), default=1.0)
        xy = rng.uniform(-spread - 0.3, spread + 0.3, size=2)  # roughly where the other objects are
        new_id = max((q.id for q in scene.objects), default=-1) + 1
        return add(scene, place_object(new_id, free[2], free[1], free[0], xy, rng.uniform(0, 2 * math.pi)))
    if o is None or (kind == "remove" and len(scene.objects) < 2):
        return None
    if kind == "remove":
        return remove(scene, o.id)
    if kind == "move":
        ang, dist = rng.uniform(0, 2 * math.pi), rng.uniform(0.6, 1.5)  # far enough to be noticed
        return move(scene, o.id, (o.position[0] + dist * math.cos(ang), o.position[1] + dist * math.sin(ang)))
    if kind == "recolor":
        c = pick([c for c in COLORS if (o.size, c, o.shape) not in taken])
        return recolor(scene, o.id, c) if c else None
    if kind == "reshape":
        s = pick([s for s in SHAPES if (o.size, o.color, s) not in taken])
        return reshape(scene, o.id, s) if s else None
    s = pick([s for s in SIZES if (s, o.color, o.shape) not in taken])
    return resize(scene, o.id, s) if s else None


def random_edits(
    scene: Scene,
    rng: np.random.Generator,
    count: int,
    kinds: Sequence[str] = EDIT_KINDS,
    *,
    min_visible: float = 0.25,
    margin: float = 0.06,
    max_tries: int = 20,
) -> tuple[Scene, list[Edit]]:
    """`count` random edits (`random_edit`) applied one after the other, each on a different object, so every
    description names its object as it looks in `scene` (an added object is never edited again).

    The composition is kept only if it reads the same against the first and the last scene: every edited
    object that is still there is at least `min_visible` unoccluded in the final scene (a later move or
    addition can hide an earlier edit), and the final (size, color, shape) of every edited object belongs
    to no other object of `scene` (else "the small red cube was removed" and "a small red cube was added"
    would read like one move). Raises ValueError when no composition passes in `max_tries` attempts."""
    if count < 1:
        raise ValueError(f"random_edits: count must be >= 1, got {count}")
    for _ in range(max_tries):
        current, made = scene, []
        try:
            for _ in range(count):
                touched = {e.object_id for e in made}
                # untouched objects only: a second edit of one object would describe it in its edited state
                current, edit = _random_edit_excluding(current, rng, kinds, touched, min_visible, margin)
                made.append(edit)
        except ValueError:
            continue
        if _reads_the_same(scene, current, made, min_visible):
            return current, made
    raise ValueError(f"random_edits: no valid composition of {count} edits of {tuple(kinds)} in {max_tries} tries")


def _random_edit_excluding(
    scene: Scene,
    rng: np.random.Generator,
    kinds: Sequence[str],
    excluded: set[int],
    min_visible: float,
    margin: float,
    max_tries: int = 50,
) -> tuple[Scene, Edit]:
    """`random_edit`, whose target is never one of the `excluded` object ids (none for `random_edit` itself)."""
    unknown = set(kinds) - set(EDIT_KINDS)
    if unknown or not kinds:
        raise ValueError(f"unknown edit kinds {sorted(unknown)}; expected a non-empty subset of {EDIT_KINDS}")
    vis = visible_fractions(scene)
    targets = [o for o in scene.objects if vis[o.id] >= min_visible and o.id not in excluded]
    for kind in (kinds[int(i)] for i in rng.permutation(len(kinds))):
        for _ in range(max_tries):
            try:
                out = _propose(scene, rng, kind, targets)
            except ValueError:  # would overlap another object
                continue
            if out is None:
                break  # this kind is impossible here (no target, no free colour, ...)
            new, edit = out
            if edit.after is not None and not (
                in_view(new.camera, new.object(edit.object_id), margin)
                and visible_fractions(new)[edit.object_id] >= min_visible
            ):
                continue
            return new, edit
    raise ValueError(f"no valid edit of kinds {tuple(kinds)} found in {max_tries} tries each")


def _reads_the_same(first: Scene, last: Scene, made: Sequence[Edit], min_visible: float) -> bool:
    vis = visible_fractions(last)
    ids_left = {o.id for o in last.objects}
    for e in made:
        if e.object_id in ids_left and vis[e.object_id] < min_visible:
            return False
        if e.after is not None:
            final = last.object(e.object_id)
            key = (final.size, final.color, final.shape)
            if any((o.size, o.color, o.shape) == key and o.id != e.object_id for o in first.objects):
                return False
    return True


def apply_edit(scene: Scene, edit: Edit | dict[str, Any]) -> Scene:
    """Replay a recorded edit (an `Edit` or its `to_dict()`) on `scene`: the object with `edit.object_id` takes the
    state `after` (removed when `after` is None, added when `before` is None). The inverse of nothing: it only
    checks that the object exists (or, for an addition, does not) and trusts the recorded state."""
    d = edit.to_dict() if isinstance(edit, Edit) else edit
    oid = int(d["object_id"])
    present = any(o.id == oid for o in scene.objects)
    if d["before"] is None:
        if present:
            raise ValueError(f"apply_edit: cannot add id {oid}, it is already in the scene")
    elif not present:
        raise ValueError(f"apply_edit: no object with id {oid} to {d['kind']}")
    rest = tuple(o for o in scene.objects if o.id != oid)
    if d["after"] is None:
        return replace(scene, objects=rest)
    new = _object_from_dict(d["after"])
    if d["before"] is None:
        return replace(scene, objects=(*scene.objects, new))
    return replace(scene, objects=tuple(new if o.id == oid else o for o in scene.objects))


def _object_from_dict(d: dict[str, Any]) -> SceneObject:
    def name(v: Any) -> str:
        return v["name"] if isinstance(v, dict) else v

    return SceneObject(
        int(d["id"]), d["shape"], name(d["color"]), name(d["size"]), tuple(float(v) for v in d["position"]),
        float(d.get("yaw", 0.0)),
    )  # fmt: skip
