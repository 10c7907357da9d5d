"""Scene edits: each changes exactly the named object, raises on invalid input, and random edits are valid."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest

from mmrl import scene_edits as E
from mmrl import scene_render as R
from mmrl import scenes as S
from mmrl.scenes import SIZES, Scene

SEEDS = range(12)


@functools.cache
def _scene(seed: int) -> Scene:
    return S.random_scene(np.random.default_rng(seed))


# --------------------------------------------------------------------------------------------------
# Edits


def _pair(scene: Scene, new: Scene) -> tuple[R.Rendering, R.Rendering]:
    return R.render(scene), R.render(new)


def test_recolor_changes_only_that_object():
    scene = _scene(2)
    graph = json.dumps(scene.to_graph())
    o = next(o for o in scene.objects if o.color != "blue")
    new, edit = E.recolor(scene, o.id, "blue")
    assert json.dumps(scene.to_graph()) == graph  # input untouched
    assert edit.kind == "recolor" and edit.description == f"The {o.size} {o.color} {o.shape} became blue."
    assert edit.before["color"]["name"] == o.color and edit.after["color"]["name"] == "blue"
    a, b = _pair(scene, new)
    assert (a.instance == b.instance).all() and (a.depth == b.depth).all()
    changed = (a.rgb != b.rgb).any(-1)
    mask = a.instance == o.id
    assert changed.any() and not changed[~mask].any()
    mean = b.rgb[mask].mean(0)
    assert mean[2] > mean[0] and mean[2] > mean[1]


def test_remove_move_add_reshape_resize():
    scene = _scene(4)
    graph = json.dumps(scene.to_graph())
    base = R.render(scene)
    o = scene.objects[0]

    new, edit = E.remove(scene, o.id)
    r = R.render(new)
    assert o.id not in r.instance and o.id not in r.boxes and edit.after is None
    keep = base.instance != o.id
    assert (r.instance[keep] == base.instance[keep]).all()  # nothing else appears or vanishes

    # move along the camera's ground-projected right axis: the mask moves right in the image
    right = scene.camera.matrix[:2, 0] / np.linalg.norm(scene.camera.matrix[:2, 0])
    target = next(
        q
        for q in scene.objects
        if S.in_view(
            scene.camera, S.place_object(q.id, q.shape, q.color, q.size, np.add(q.position[:2], 0.5 * right)), 0.0
        )
        and S.overlapping(
            scene.objects, S.place_object(q.id, q.shape, q.color, q.size, np.add(q.position[:2], 0.5 * right))
        )
        is None
    )
    new, edit = E.move(scene, target.id, np.add(target.position[:2], 0.5 * right))
    assert "to the right" in edit.description and "closer" not in edit.description
    r = R.render(new)
    x_before = np.nonzero(base.instance == target.id)[1].mean()
    assert np.nonzero(r.instance == target.id)[1].mean() > x_before + 3
    back, edit = E.move(new, target.id, target.position)
    assert "to the left" in edit.description and back == scene

    free = S.place_object(99, "torus", "yellow", "large", (0.0, 0.0))
    while S.overlapping(scene.objects, free) is not None:
        free = S.place_object(99, "torus", "yellow", "large", np.add(free.position[:2], (0.3, 0.2)))
    new, edit = E.add(scene, free)
    assert edit.description == "A large yellow torus was added." and edit.before is None
    assert 99 in R.render(new).instance or not S.in_view(scene.camera, free, 0.0)

    cube = next(q for q in scene.objects if q.shape != "sphere")
    new, edit = E.reshape(scene, cube.id, "sphere")
    assert edit.description.endswith("became a sphere.") and new.object(cube.id).shape == "sphere"
    assert (R.render(new).instance == cube.id).sum() != (base.instance == cube.id).sum()
    small = next((q for q in scene.objects if q.size == "small"), None)
    if small is not None:
        try:
            new, edit = E.resize(scene, small.id, "medium")
        except ValueError:  # a neighbour is in the way; that is what resize must report
            pass
        else:
            assert (R.render(new).instance == small.id).sum() > (base.instance == small.id).sum()
            assert new.object(small.id).position[2] == pytest.approx(
                SIZES["medium"] / 2 * (2 * S._TUBE if small.shape == "torus" else 1)
            )
    assert json.dumps(scene.to_graph()) == graph


def test_invalid_edits_raise():
    scene = _scene(1)
    a, b = scene.objects[0], scene.objects[1]
    for call, msg in [
        (lambda: E.recolor(scene, 999, "red"), "no object with id 999"),
        (lambda: E.recolor(scene, a.id, "magenta"), "unknown color"),
        (lambda: E.reshape(scene, a.id, "pyramid"), "unknown shape"),
        (lambda: E.resize(scene, a.id, "huge"), "unknown size"),
        (lambda: E.move(scene, a.id, b.position), "overlap"),
        (lambda: E.recolor(scene, a.id, a.color), "would not change"),
        (lambda: E.move(scene, a.id, a.position), "would not change"),
        (lambda: E.add(scene, a), "already used"),
        (lambda: E.add(scene, S.place_object(50, "cube", "red", "small", b.position[:2])), "overlap"),
        (lambda: E.remove(scene, -5), "no object"),
        (lambda: E.random_edit(scene, np.random.default_rng(0), kinds=("explode",)), "unknown edit"),
    ]:
        with pytest.raises(ValueError, match=msg):
            call()


def test_random_edit_is_always_valid():
    kinds_seen = set()
    for seed in range(24):
        scene = _scene(seed % len(SEEDS))
        graph = json.dumps(scene.to_graph())
        new, edit = E.random_edit(scene, np.random.default_rng(100 + seed), kinds=E.EDIT_KINDS)
        kinds_seen.add(edit.kind)
        assert json.dumps(scene.to_graph()) == graph and new != scene
        assert len({(o.size, o.color, o.shape) for o in new.objects}) == len(new.objects)
        for i, a in enumerate(new.objects):
            assert all(S.overlapping([b], a) is None for b in new.objects[i + 1 :])
        before = {o.id: o for o in scene.objects}
        after = {o.id: o for o in new.objects}
        changed = {i for i in before.keys() | after.keys() if before.get(i) != after.get(i)}
        assert changed == {edit.object_id}
        if edit.kind in ("recolor", "reshape", "resize"):
            field = {"recolor": "color", "reshape": "shape", "resize": "size"}[edit.kind]
            assert getattr(before[edit.object_id], field) != getattr(after[edit.object_id], field)
        if edit.kind == "move":
            assert math.dist(before[edit.object_id].position, after[edit.object_id].position) >= 0.6 - 1e-9
        if edit.kind == "add":
            assert edit.object_id not in before and edit.description.startswith("A ")
        if edit.kind == "remove":
            assert edit.object_id not in after
        if edit.after is not None:
            assert R.render(new).visible_fraction[edit.object_id] >= 0.2
        assert edit.description.endswith(".") and len(edit.description.split()) >= 4
    assert len(kinds_seen) >= 4
