"""Importers of a user's annotated photos (COCO detection, RefCOCO-style records) on fixtures written here from
real photos (scikit-image) of mixed sizes and formats."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data as photos

from mmrl import registry
from mmrl.cli import main
from mmrl.errors import MMRLError, SkipItem
from mmrl.sample import read_dataset
from pretext_tasks.grounding_import import load_coco, load_referring
from rewards.boxes import from_model_box, to_model_box


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """images/astronaut.jpg (512x512), images/coffee.png (600x400), images/chelsea.jpg (451x300)."""
    root = tmp_path_factory.mktemp("annotated")
    (root / "images").mkdir()
    Image.fromarray(photos.astronaut()).save(root / "images" / "astronaut.jpg", quality=90)
    Image.fromarray(photos.coffee()).save(root / "images" / "coffee.png")
    Image.fromarray(photos.chelsea()).save(root / "images" / "chelsea.jpg", quality=90)
    return root


def write(path: Path, content) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def coco_doc() -> dict:
    """Two usable images of three, and one usable box of each kind of bad annotation; paths relative to `folder`."""
    return {
        "images": [
            {"id": 1, "file_name": "images/astronaut.jpg", "width": 512, "height": 512},
            {"id": 2, "file_name": "images/coffee.png", "width": 600, "height": 400},
            {"id": 3, "file_name": "images/missing.jpg", "width": 10, "height": 10},
        ],
        "annotations": [
            {"image_id": 1, "category_id": 1, "bbox": [150, 20, 200, 230], "iscrowd": 0},  # the face
            {"image_id": 1, "category_id": 2, "bbox": [300, 250, 180, 250]},
            {"image_id": 2, "category_id": 3, "bbox": [180, 40, 260, 250]},  # the cup
            {"image_id": 2, "category_id": 3, "bbox": [0, 0, 600, 400], "iscrowd": 1},  # crowd: skipped
            {"image_id": 2, "category_id": 9, "bbox": [1, 1, 5, 5]},  # unknown category
            {"image_id": 2, "category_id": 3, "bbox": [10, 10, 0, 5]},  # zero area
            {"image_id": 2, "category_id": 3, "bbox": [500, 300, 200, 50]},  # x2 = 700 > 600
            {"image_id": 7, "category_id": 3, "bbox": [1, 1, 5, 5]},  # unknown image
            {"image_id": 1, "category_id": 1, "bbox": [1, "a", 5, 5]},
        ],
        "categories": [{"id": 1, "name": "face"}, {"id": 2, "name": "flag"}, {"id": 3, "name": "cup"}],
    }


def test_coco_import_keeps_good_boxes_and_counts_the_rest(folder):
    path = write(folder / "c.json", coco_doc())
    result = load_coco(path)
    assert [i.path.name for i in result.items] == ["astronaut.jpg", "coffee.png"]
    assert result.items[0].boxes == (("face", (150.0, 20.0, 350.0, 250.0)), ("flag", (300.0, 250.0, 480.0, 500.0)))
    assert result.items[1].boxes == (("cup", (180.0, 40.0, 440.0, 290.0)),)
    assert result.items[0].categories == ("cup", "face", "flag")
    assert dict(result.skipped) == {
        "missing_image": 1, "crowd": 1, "unknown_category": 1, "zero_area": 1, "box_outside_image": 1,
        "unknown_image": 1, "bad_box": 1,
    }  # fmt: skip


def test_coco_samples_and_box_round_trip(folder):
    path = write(folder / "c2.json", coco_doc())
    task = registry.get_task("object_detection", categories_per_prompt=[1, 3], empty_share=0.0)
    items = task.sources(path)
    sample = task.make(items[1], np.random.default_rng(0))  # coffee.png, 600x400
    assert sample.meta["image_size"] == [600, 400] and sample.meta["categories"][0] in ("cup", "face", "flag")
    assert "cup" in sample.meta["categories"]  # the one present category is always asked (empty_share 0)
    assert sample.answer["objects"] == [{"label": "cup", "box": [180.0, 40.0, 440.0, 290.0]}]
    # 600x400 under the default budget (256 * 28 * 28 px) -> 532x364 (qwen2.5-vl); the box goes there and back.
    assert sample.meta["model_size"] == [532, 364]
    box = sample.answer["objects"][0]["box"]
    model = to_model_box(box, [600, 400], [532, 364], "qwen2.5-vl")
    assert model == pytest.approx([180 * 532 / 600, 40 * 364 / 400, 440 * 532 / 600, 290 * 364 / 400])
    assert from_model_box(model, [600, 400], [532, 364], "qwen2.5-vl") == pytest.approx(box, abs=1e-9)
    assert task.reward(task.reference_completion(sample), sample).score == 1.0
    assert task.evidence(sample)


def test_refcoco_records_jsonl(folder):
    lines = [
        {"image": "images/chelsea.jpg", "expression": "the cat's left ear", "bbox": [100, 20, 80, 70]},
        {"image": "images/astronaut.jpg", "sentence": "the flag", "box": [300, 250, 480, 500], "category": "flag"},
        {"image": "images/coffee.png", "sent": "  the   cup  ", "bbox": [180, 40, 260, 250]},
        {"image": "images/nope.jpg", "expression": "x", "bbox": [0, 0, 5, 5]},
        {"image": "images/chelsea.jpg", "bbox": [0, 0, 5, 5]},
        {"image": "images/chelsea.jpg", "caption": "too wide", "box": [0, 0, 600, 5]},
        {"image": "images/chelsea.jpg", "caption": "no box"},
    ]
    path = write(folder / "refs.jsonl", "\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    result = load_referring(path)
    assert [i.expression for i in result.items] == ["the cat's left ear", "the flag", "the cup"]
    assert result.items[0].boxes == (("object", (100.0, 20.0, 180.0, 90.0)),)
    assert dict(result.skipped) == {
        "missing_image": 1, "missing_expression": 1, "box_outside_image": 1, "bad_box": 1, "bad_record": 1
    }  # fmt: skip
    task = registry.get_task("referring_grounding", coords="qwen3-vl", min_pixels=4 * 32 * 32, max_pixels=256 * 32 * 32)
    sample = task.make(result.items[1], np.random.default_rng(0))
    assert sample.meta["expression"] == "the flag" and sample.meta["target_category"] == "flag"
    assert "Locate the flag in the image" in sample.messages[0]["content"][1]["text"]
    # qwen3-vl: a 0-1000 grid over the 512x512 photo: [300, 250, 480, 500] -> [586, 488, 938, 977] (rounded).
    assert task.reference_completion(sample) == "<answer>[586, 488, 938, 977]</answer>"
    assert task.reward(task.reference_completion(sample), sample).score == 1.0


def test_paths_may_not_leave_the_folder(folder, tmp_path):
    outside = tmp_path / "outside.jpg"
    Image.fromarray(photos.astronaut()).save(outside)
    for bad in (str(outside), "../" * 8 + str(outside).lstrip("/"), "images/../../x.jpg"):
        path = write(folder / "evil" / "refs.json", [{"image": bad, "expression": "x", "bbox": [0, 0, 5, 5]}])
        with pytest.raises(MMRLError, match=r"record 0.*outside"):
            load_referring(path)


def test_unusable_files_raise_naming_the_file(folder):
    with pytest.raises(MMRLError, match=r"bad\.json.*not valid JSON"):
        load_referring(write(folder / "bad" / "bad.json", "{"))
    with pytest.raises(MMRLError, match=r"nothing\.json.*no usable record.*missing_image 1"):
        load_referring(write(folder / "nothing.json", [{"image": "nope.jpg", "expression": "x", "bbox": [0, 0, 1, 1]}]))
    with pytest.raises(MMRLError, match="not a COCO detection file"):
        load_coco(write(folder / "notcoco.json", [1, 2]))
    with pytest.raises(MMRLError, match="exactly one"):
        load_coco(folder)  # several .json files in it
    with pytest.raises(MMRLError, match="does not exist"):
        load_coco(folder / "nowhere")


def test_a_photo_rotated_by_exif_is_skipped(folder):
    image = Image.fromarray(photos.chelsea())  # 451x300
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees, so it loads as 300x451
    image.save(folder / "images" / "rotated.jpg", exif=exif)
    path = write(
        folder / "rot" / "r.json", [{"image": "../images/rotated.jpg", "expression": "x", "bbox": [0, 0, 5, 5]}]
    )
    with pytest.raises(MMRLError, match="outside"):  # '..' leaves the annotation file's folder
        load_referring(path)
    path = write(folder / "r.json", [{"image": "images/rotated.jpg", "expression": "x", "bbox": [0, 0, 5, 5]}])
    (item,) = load_referring(path).items
    with pytest.raises(SkipItem, match="size_mismatch"):
        registry.get_task("referring_grounding").make(item, np.random.default_rng(0))


def test_generate_from_an_annotation_file(folder, tmp_path):
    path = write(folder / "gen.json", [
        {"image": "images/astronaut.jpg", "expression": "the face", "bbox": [150, 20, 200, 230]},
        {"image": "images/coffee.png", "expression": "the cup", "bbox": [180, 40, 260, 250]},
    ])  # fmt: skip
    out = tmp_path / "rec"
    assert main(["generate", "--task", "referring_grounding", "--source", str(path), "--n", "4", "--out", str(out),
                 "--quiet"]) == 0  # fmt: skip
    samples = read_dataset(out)
    assert {s.meta["expression"] for s in samples} <= {"the face", "the cup"}
    task = registry.get_task("referring_grounding")
    assert all(task.reward(task.reference_completion(s), s).score == 1.0 for s in samples)
