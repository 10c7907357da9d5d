"""Referring expressions for procedural scenes: "the small red cube", "the cone left of the blue sphere".

An expression names a target by attributes from the scene graph (size, colour, shape: the noun is always the
shape) and optionally by one spatial relation to an anchor object that is itself named by a unique attribute
description. Definitions (`mmrl.scenes` conventions; all from the scene graph and the camera, none from pixels):

    left of / right of   image frame: u = the column the object's centre projects to. A is left of B when
                         u_B − u_A ≥ margin · W (`RelationMargins.horizontal`, default 0.08 of the width)
    in front of / behind camera frame: z = depth of the object's centre. A is in front of B when
                         z_B − z_A ≥ `RelationMargins.depth` metres (default 0.6); behind mirrors it
    nearest to           ground-plane distance between centres; A is nearest to B among the candidates
                         when every other candidate is at least `RelationMargins.nearest_ratio` (1.5) times
                         farther from B than A

Uniqueness is checked by evaluating the expression on every object of the scene (`resolve`): exactly one
object may satisfy it, and every other object that fits the attributes must clearly fail the relation (for
left/right/front/behind: be on the other side of the anchor or level with it, i.e. the signed difference is
≤ 0, so the target and any distractor are at least one margin apart), so a person reading the picture agrees.
Sizes are the scene's absolute categories (small 0.35 m, medium 0.55 m, large 0.8 m), as in CLEVR.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmrl.scenes import Scene, SceneObject

RELATIONS = ("left of", "right of", "in front of", "behind", "nearest to")
RELATION_COST = 2
"""Length cost of a relation in `Expression.cost` (its words carry more than one attribute)."""


@dataclass(frozen=True)
class RelationMargins:
    """How clearly a relation must hold for an expression to use it."""

    horizontal: float = 0.08
    """Least difference of projected centre columns, as a share of the image width (left of / right of)."""
    depth: float = 0.6
    """Least difference of camera-frame depth of the centres, in metres (in front of / behind)."""
    nearest_ratio: float = 1.5
    """Every other candidate is at least this many times farther from the anchor than the target (nearest to)."""


@dataclass(frozen=True)
class Description:
    """Attributes naming objects: `shape` always, `size` and `color` when set."""

    shape: str
    color: str | None = None
    size: str | None = None

    def fits(self, obj: SceneObject) -> bool:
        return obj.shape == self.shape and self.color in (None, obj.color) and self.size in (None, obj.size)

    @property
    def text(self) -> str:
        return " ".join(w for w in (self.size, self.color, self.shape) if w)

    @property
    def cost(self) -> int:
        return (self.size is not None) + (self.color is not None)

    def to_dict(self) -> dict[str, str | None]:
        return {"shape": self.shape, "color": self.color, "size": self.size}


@dataclass(frozen=True)
class Expression:
    """A referring expression: a target description, optionally one relation to an anchor description."""

    target: Description
    relation: str | None = None
    anchor: Description | None = None

    @property
    def text(self) -> str:
        """`the small red cube`, `the cone left of the blue sphere`."""
        head = f"the {self.target.text}"
        return head if self.relation is None else f"{head} {self.relation} the {self.anchor.text}"

    @property
    def cost(self) -> int:
        """Attribute words plus `RELATION_COST` per relation: shorter is preferred."""
        extra = 0 if self.anchor is None else RELATION_COST + self.anchor.cost
        return self.target.cost + extra

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "target": self.target.to_dict(),
            "relation": self.relation,
            "anchor": None if self.anchor is None else self.anchor.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Expression:
        anchor = d.get("anchor")
        return cls(Description(**d["target"]), d.get("relation"), None if anchor is None else Description(**anchor))


@dataclass
class Geometry:
    """Per-object quantities the relations read: projected column, camera depth, ground position."""

    u: dict[int, float] = field(default_factory=dict)
    depth: dict[int, float] = field(default_factory=dict)
    ground: dict[int, tuple[float, float]] = field(default_factory=dict)
    width: int = 1

    @classmethod
    def of(cls, scene: Scene) -> Geometry:
        ids = [o.id for o in scene.objects]
        uv, z = scene.camera.project([o.position for o in scene.objects])
        return cls(
            {i: float(uv[k, 0]) for k, i in enumerate(ids)},
            {i: float(z[k]) for k, i in enumerate(ids)},
            {o.id: (o.position[0], o.position[1]) for o in scene.objects},
            scene.camera.width,
        )

    def signed(self, relation: str, a: int, anchor: int, margins: RelationMargins) -> float:
        """How far `a` is on the relation's side of `anchor`, in units of the margin (≥ 1: holds clearly;
        ≤ 0: clearly not). Not for `nearest to`."""
        if relation == "left of":
            return (self.u[anchor] - self.u[a]) / (margins.horizontal * self.width)
        if relation == "right of":
            return (self.u[a] - self.u[anchor]) / (margins.horizontal * self.width)
        if relation == "in front of":
            return (self.depth[anchor] - self.depth[a]) / margins.depth
        if relation == "behind":
            return (self.depth[a] - self.depth[anchor]) / margins.depth
        raise ValueError(f"unknown directional relation {relation!r}")

    def distance(self, a: int, b: int) -> float:
        (ax, ay), (bx, by) = self.ground[a], self.ground[b]
        return math.hypot(ax - bx, ay - by)


def resolve(
    expression: Expression, scene: Scene, margins: RelationMargins = RelationMargins()
) -> tuple[list[int], list[int]]:
    """Evaluate `expression` on every object of `scene`: (ids that clearly satisfy it, ids that are ambiguous,
    i.e. fit the attributes but neither clearly satisfy nor clearly fail the relation). An expression is
    usable when the first list is exactly the target and the second is empty. An anchor description that
    does not name exactly one object makes every candidate ambiguous."""
    fits = [o.id for o in scene.objects if expression.target.fits(o)]
    if expression.relation is None:
        return fits, []
    anchors = [o.id for o in scene.objects if expression.anchor is not None and expression.anchor.fits(o)]
    if len(anchors) != 1:
        return [], fits
    anchor = anchors[0]
    candidates = [i for i in fits if i != anchor]
    geo = Geometry.of(scene)
    if expression.relation == "nearest to":
        if not candidates:
            return [], []
        ranked = sorted(candidates, key=lambda i: (geo.distance(i, anchor), i))
        if len(ranked) == 1:
            return ranked, []
        first, second = geo.distance(ranked[0], anchor), geo.distance(ranked[1], anchor)
        if second >= margins.nearest_ratio * first:
            return [ranked[0]], []
        return [], ranked
    held = [i for i in candidates if geo.signed(expression.relation, i, anchor, margins) >= 1.0]
    unclear = [i for i in candidates if 0.0 < geo.signed(expression.relation, i, anchor, margins) < 1.0]
    return held, unclear


def unique(expression: Expression, target: int, scene: Scene, margins: RelationMargins = RelationMargins()) -> bool:
    """Whether `expression` names `target` and nothing else in `scene`, by a clear margin."""
    held, unclear = resolve(expression, scene, margins)
    return held == [target] and not unclear


def descriptions(obj: SceneObject) -> list[Description]:
    """Every description that fits `obj`, shortest first: shape, colour + shape, size + shape, all three."""
    return [
        Description(obj.shape),
        Description(obj.shape, color=obj.color),
        Description(obj.shape, size=obj.size),
        Description(obj.shape, color=obj.color, size=obj.size),
    ]


def unique_descriptions(obj: SceneObject, scene: Scene) -> list[Description]:
    """The descriptions of `obj` that fit no other object of `scene`."""
    return [d for d in descriptions(obj) if [o.id for o in scene.objects if d.fits(o)] == [obj.id]]


def expressions(
    target: int, scene: Scene, anchors: Sequence[int], margins: RelationMargins = RelationMargins()
) -> tuple[list[Expression], list[Expression]]:
    """(attribute-only, relational) expressions that name `target` uniquely; relations only to `anchors`,
    each named by its shortest unique description, and only after a target description that fits more than
    one object (the relation must be what makes it unique). Both lists in a fixed order."""
    obj = scene.object(target)
    plain = [Expression(d) for d in unique_descriptions(obj, scene)]
    # A relation is used only where it does work: its target description fits other objects too.
    ambiguous = [d for d in descriptions(obj) if sum(d.fits(o) for o in scene.objects) > 1]
    relational = []
    for anchor_id in anchors:
        if anchor_id == target:
            continue
        names = unique_descriptions(scene.object(anchor_id), scene)
        if not names:
            continue
        for d, relation in itertools.product(ambiguous, RELATIONS):
            e = Expression(d, relation, names[0])
            if unique(e, target, scene, margins):
                relational.append(e)
    return plain, relational


def choose_expression(
    target: int,
    scene: Scene,
    anchors: Sequence[int],
    rng: np.random.Generator,
    relation_share: float,
    margins: RelationMargins = RelationMargins(),
) -> Expression | None:
    """The shortest unique expression of `target`, relational with probability `relation_share` (when one
    exists), ties broken by `rng`; None when no expression names the target uniquely. One `rng.random()` and
    one `rng.integers` are drawn whenever an expression is returned."""
    plain, relational = expressions(target, scene, anchors, margins)
    want_relation = float(rng.random()) < relation_share
    pool = relational if (want_relation and relational) or not plain else plain
    if not pool:
        return None
    least = min(e.cost for e in pool)
    shortest = [e for e in pool if e.cost == least]
    return shortest[int(rng.integers(len(shortest)))]


__all__ = [
    "RELATIONS",
    "Description",
    "Expression",
    "Geometry",
    "RelationMargins",
    "choose_expression",
    "descriptions",
    "expressions",
    "resolve",
    "unique",
    "unique_descriptions",
]
