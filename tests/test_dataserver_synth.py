"""Synthesizers and their verification: procedural re-rendering (labels exact, props never of a referred
category, shadows on the kept objects rejected, deterministic), the checks of `verify`, and the outpaint
synthesizer on a tiny random-init diffusers pipeline built here."""

import zlib
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from mmrl.dataserver.procedural import ProceduralSynthesizer, parse_description
from mmrl.dataserver.protocol import Rejected, SynthesisRequest
from mmrl.dataserver.synthesizers import build_synthesizer
from mmrl.dataserver.verify import check_image, check_kept_region
from mmrl.sample import Sample
from mmrl.scene_render import render
from mmrl.scenes import Camera, Scene, SceneObject, place_object, random_scene
from rewards.boxes import answer_boxes, transform_answer_boxes

W, H = 160, 120


def scene_sample(scene: Scene, label_ids: list[int], *, ovd: bool = False, sid: str = "seed") -> Sample:
    """A grounding-shaped Sample (the contract's meta) of a procedural scene: REC of one object, or OVD of
    every object of the labelled objects' categories."""
    r = render(scene)
    objs = [scene.object(i) for i in label_ids]
    if ovd:
        answer = {"objects": [{"label": o.shape, "box": list(r.boxes[o.id])} for o in objs]}
        extra = {"categories": sorted({o.shape for o in objs})}
    else:
        answer = {"box": list(r.boxes[objs[0].id]), "label": objs[0].shape}
        extra = {"expression": f"the {objs[0].describe()}", "target_category": objs[0].shape, "target_id": objs[0].id}
    content = [{"type": "image", "image": Image.fromarray(r.rgb)}, {"type": "text", "text": "Find it."}]
    meta = {"params": {}, "image_size": [scene.camera.width, scene.camera.height], "coords": "qwen2.5-vl",
            "model_size": [168, 112], "scene": scene.to_graph(), "label_ids": label_ids, "keep_ids": label_ids,
            **extra}  # fmt: skip
    return Sample(sid, "referring_grounding", [{"role": "user", "content": content}], answer, meta)


def rec_seed(i: int) -> Sample:
    scene = random_scene(np.random.default_rng(i), n_objects=(4, 6), width=W, height=H)
    return scene_sample(scene, [scene.objects[0].id], sid=f"s{i}")


def request(
    seed: Sample, rid: str = "r0", text: str = "a crowded street of small blue cones and cubes"
) -> SynthesisRequest:
    return SynthesisRequest(rid, seed, text, policy_version=0)


def pool_rng(rid: str, seed: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(rid.encode())])  # what WorkerPool hands a synthesizer


def test_procedural_keeps_label_boxes_and_never_adds_a_referred_category():
    synth = build_synthesizer("procedural", {"props": [3, 6]})
    accepted, reasons = 0, []
    for i in range(12):
        seed = rec_seed(i)
        try:
            out = synth(request(seed, f"r{i}"), pool_rng(f"r{i}"))
        except Rejected as e:
            reasons.append(e.reason)
            continue
        accepted += 1
        new_scene = Scene.from_graph(out.meta["scene"])
        target = seed.meta["target_id"]
        assert np.abs(np.subtract(out.answer["box"], seed.answer["box"])).max() <= 1
        assert out.answer["label"] == seed.answer["label"]
        assert [o.shape for o in new_scene.objects if o.id != target].count(seed.meta["target_category"]) == 0
        assert new_scene.object(target) == Scene.from_graph(seed.meta["scene"]).object(target)
        assert len(new_scene.objects) >= 2 and out.meta["synthesized"]["dropped"]
        assert out.messages[0]["content"][1] == seed.messages[0]["content"][1]  # the same prompt text
        image = out.messages[0]["content"][0]["image"]
        assert image.size == (W, H) and image.tobytes() != seed.messages[0]["content"][0]["image"].tobytes()
    assert accepted >= 8, reasons
    assert set(reasons) <= {"foreground_changed", "labels_moved"}


def test_procedural_ovd_keeps_every_labelled_object_and_adds_none_of_their_categories():
    scene = random_scene(np.random.default_rng(3), n_objects=5, width=W, height=H)
    labelled = [o.id for o in scene.objects[:2]]
    seed = scene_sample(scene, labelled, ovd=True)
    out = ProceduralSynthesizer(props=(4, 6))(request(seed, "ovd", "many cubes spheres cylinders cones tori"),
                                              pool_rng("ovd"))  # fmt: skip
    cats = set(seed.meta["categories"])
    new_scene = Scene.from_graph(out.meta["scene"])
    assert all(o.shape not in cats for o in new_scene.objects if o.id not in labelled)
    for (_, got), (_, want) in zip(answer_boxes(out.answer), answer_boxes(seed.answer), strict=True):
        assert np.abs(np.subtract(got, want)).max() <= 1


def test_a_props_shadow_on_the_kept_object_is_rejected_and_a_clear_prop_is_not():
    camera = Camera.look_at((4.0, 0.6, 3.0), (0.0, 0.0, 0.2), W, H)
    kept = place_object(0, "sphere", "red", "small", (0.0, 0.0))
    base = Scene((kept,), camera, light_dir=(-1.0, 0.0, 1.0))
    seed = scene_sample(base, [0])
    synth = ProceduralSynthesizer()
    shadowing = place_object(1, "cube", "blue", "large", (-0.9, 0.0))  # between the sphere and the light
    with pytest.raises(Rejected) as e:
        synth.build_sample(request(seed), replace(base, objects=(kept, shadowing)), {})
    assert e.value.reason == "foreground_changed"
    clear = place_object(1, "cube", "blue", "large", (0.0, -1.6))  # shadow falls away from the sphere
    out = synth.build_sample(request(seed), replace(base, objects=(kept, clear), ground_color=(90, 160, 90)), {})
    assert out.answer["box"] == [float(v) for v in seed.answer["box"]]


def test_procedural_rejects_a_new_instance_of_the_referred_category():
    camera = Camera.look_at((4.0, 0.6, 3.0), (0.0, 0.0, 0.2), W, H)
    kept = place_object(0, "sphere", "red", "small", (0.0, 0.0))
    base = Scene((kept,), camera, light_dir=(1.0, 0.0, 1.0))
    seed = scene_sample(base, [0])
    intruder = SceneObject(7, "sphere", "blue", "small", (0.0, -1.5, 0.175))
    with pytest.raises(Rejected) as e:
        ProceduralSynthesizer().build_sample(request(seed), replace(base, objects=(kept, intruder)), {})
    assert e.value.reason == "new_instance"


def test_same_request_id_and_seed_give_the_same_bytes_and_other_ids_differ():
    seed = rec_seed(5)
    synth = ProceduralSynthesizer()
    images = []
    for rid in ("a", "a", "b"):
        out = synth(request(seed, rid), pool_rng(rid))
        images.append(np.asarray(out.messages[0]["content"][0]["image"]).tobytes())
    assert images[0] == images[1] != images[2]


def test_description_words_steer_the_draw_and_unknown_words_are_ignored():
    steer = parse_description("Many BIG blue Balls, a red sky, and qwzx rings; few? no: many")
    assert steer.colors == ("blue", "red") and steer.shapes == ("sphere", "torus") and steer.sizes == ("large",)
    assert steer.count == ""  # both many and few: the whole range
    assert parse_description("a sparse field").count == "few" and parse_description("zzz") == type(steer)()
    with pytest.raises(Rejected) as e:
        ProceduralSynthesizer()(request(rec_seed(1), text="   "), pool_rng("x"))
    assert e.value.reason == "empty_description"
    plain = Sample("p", "dominant_color", [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "red")
    with pytest.raises(Rejected) as e:
        ProceduralSynthesizer()(request(plain), pool_rng("x"))
    assert e.value.reason == "unsupported_seed"


def test_verify_checks():
    img = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    assert check_image(Image.fromarray(img), (W, H)).shape == (H, W, 3)
    for bad in (np.full((H, W, 3), 7, np.uint8), np.full((H, W, 3), np.nan), img[:, :-1], img[..., 0]):
        with pytest.raises(Rejected) as e:
            check_image(bad, (W, H))
        assert e.value.reason == "bad_image"
    with pytest.raises(Rejected):
        check_image(img, (W, H), max_pixels=W * H - 1)
    mask = np.zeros((H, W), bool)
    mask[10:20, 10:20] = True
    assert check_kept_region(img, img, mask) == 0.0
    shadowed = img.copy()
    shadowed[10:12, 10:20] //= 3  # 20 % of the kept pixels darkened
    with pytest.raises(Rejected) as e:
        check_kept_region(img, shadowed, mask)
    assert e.value.reason == "foreground_changed"
    rec = {"box": [10, 20, 30, 40], "label": "cube"}
    assert transform_answer_boxes(rec, 0.5, (4, 6)) == {"box": [9.0, 16.0, 19.0, 26.0], "label": "cube"}
    ovd = {"objects": [{"label": "a", "box": [0, 0, 2, 2]}, {"label": "b", "box": [2, 2, 4, 4]}]}
    assert [b for _, b in answer_boxes(transform_answer_boxes(ovd, 2.0, (1, 0)))] == [[1, 0, 5, 4], [5, 4, 9, 8]]
    assert answer_boxes("red") == [] and answer_boxes({"box": [1, "x", 2, 3]}) == []


# -- outpaint on a tiny random-init diffusers pipeline ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_inpaint(tmp_path_factory):
    from mmrl.dataserver.outpaint import build_tiny_inpaint

    return build_tiny_inpaint(tmp_path_factory.mktemp("tiny-inpaint"))


def photo_seed() -> Sample:
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    content = [{"type": "image", "image": img}, {"type": "text", "text": "Where is the cube?"}]
    meta = {"target_category": "cube", "image_size": [64, 64]}
    return Sample("p", "referring_grounding", [{"role": "user", "content": content}],
                  {"box": [10, 12, 30, 40], "label": "cube"}, meta)  # fmt: skip


def test_outpaint_keeps_the_foreground_pixels_and_moves_the_labels(tiny_inpaint):
    synth = build_synthesizer("outpaint", {"model": str(tiny_inpaint), "steps": 2, "margin": 0})
    seed = photo_seed()
    out = synth(request(seed, "o1", "a red sky over a beach"), pool_rng("o1"))
    facts = out.meta["synthesized"]
    s, (dx, dy) = facts["scale"], facts["offset"]
    assert 0.6 <= s <= 1 and out.answer == transform_answer_boxes(seed.answer, s, (dx, dy))
    x1, y1, x2, y2 = (int(round(v)) for v in out.answer["box"])
    src = seed.messages[0]["content"][0]["image"]
    shrunk = np.asarray(src.resize((round(64 * s), round(64 * s)), Image.Resampling.BICUBIC))
    new = np.asarray(out.messages[0]["content"][0]["image"])
    inner = (slice(y1 + 1, y2 - 1), slice(x1 + 1, x2 - 1))  # the kept box, away from rounding at its edges
    assert np.array_equal(new[inner], shrunk[inner[0].start - dy : inner[0].stop - dy,
                                             inner[1].start - dx : inner[1].stop - dx])  # fmt: skip
    assert facts["kept_mad"] == 0.0 and facts["unchecked_new_instance"] is True
    again = synth(request(seed, "o1", "a red sky over a beach"), pool_rng("o1"))
    assert np.asarray(again.messages[0]["content"][0]["image"]).tobytes() == new.tobytes()


def test_outpaint_rejects_nan_and_blank_outputs_and_uses_a_detector(tiny_inpaint):
    import torch

    from mmrl.dataserver.outpaint import OutpaintSynthesizer

    seed = photo_seed()
    found = OutpaintSynthesizer(
        model=str(tiny_inpaint), steps=1, detector=lambda image, cats: [("cube", [40, 0, 60, 20])]
    )
    with pytest.raises(Rejected) as e:
        found(request(seed, "d"), pool_rng("d"))
    assert e.value.reason == "new_instance"
    synth = OutpaintSynthesizer(model=str(tiny_inpaint), steps=1)
    conv = synth.pipe.vae.decoder.conv_out
    with torch.no_grad():
        conv.weight.zero_()  # the decoder paints one flat colour
        with pytest.raises(Rejected) as e:
            synth(request(seed, "b"), pool_rng("b"))
        assert e.value.reason == "bad_image"
        conv.bias.fill_(float("nan"))
        with pytest.raises(Rejected) as e:
            synth(request(seed, "n"), pool_rng("n"))
        assert e.value.reason == "bad_image"
