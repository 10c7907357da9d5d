"""gui_inverse_dynamics on a pair folder of real photos: determinism, the reference and baselines, the coordinate
convention of each family through its own processor, downscaling, filters, bad folders, `mmrl generate`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageDraw
from test_box_rewards import resized_image

from mmrl import registry
from mmrl.cli import main
from mmrl.errors import ConfigError, MMRLError, SkipItem
from mmrl.sample import read_dataset
from pretext_tasks.gui_pairs import PAIRS_FILE, PairWriter, read_pairs
from rewards.boxes import COORD_FAMILIES

NAME = "gui_inverse_dynamics"
RED = (255, 0, 0)
ACTIONS = [  # (action, before photo, after photo); the click box is painted red on its before screen
    ({"action_type": "click", "x": 150.0, "y": 90.0, "bbox": [120.0, 70.0, 200.0, 110.0]}, "chelsea", "coffee"),
    ({"action_type": "long_press", "x": 60.5, "y": 300.0, "bbox": [40.0, 280.0, 90.0, 330.0]}, "astronaut", "camera"),
    ({"action_type": "scroll", "direction": "down"}, "coffee", "chelsea"),
    ({"action_type": "input_text", "text": "hello world"}, "rocket", "astronaut"),
    ({"action_type": "open_app", "app_name": "Clock"}, "camera", "coffee"),
    ({"action_type": "navigate_back"}, "chelsea", "astronaut"),
    ({"action_type": "navigate_home"}, "astronaut", "chelsea"),
    ({"action_type": "wait"}, "coffee", "coffee_night"),
]


def photo(name: str) -> Image.Image:
    if name == "coffee_night":
        return Image.fromarray(skimage.data.coffee() // 2)
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def write_folder(folder: Path, actions=ACTIONS, size=None) -> Path:
    with PairWriter(folder) as writer:
        for i, (action, a, b) in enumerate(actions):
            before, after = photo(a), photo(b)
            if size:
                before, after = before.resize(size), after.resize(size)
            x1, y1, x2, y2 = action.get("bbox", (0, 0, 0, 0))
            if x2 > x1 and y2 > y1:
                before = before.copy()
                ImageDraw.Draw(before).rectangle([x1, y1, x2 - 1, y2 - 1], fill=RED)
            if after.size != before.size:
                after = after.resize(before.size)
            record = {"id": f"p{i}", "source": "test", "traj_id": f"t{i}", "step": 0, "k": 1, "action": action}
            writer.add(record, (f"t{i}/0", before), (f"t{i}/1", after))
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("pairs"))


def make_all(task, folder: Path, seed: int = 0):
    return [task.make(item, np.random.default_rng([seed, i])) for i, item in enumerate(task.sources(folder))]


def test_same_seed_same_bytes(folder):
    task = registry.get_task(NAME)
    first, again = make_all(task, folder), make_all(task, folder)
    for a, b in zip(first, again):
        assert a.id == b.id and a.answer == b.answer and a.meta == b.meta
        assert a.messages[0]["content"][2] == b.messages[0]["content"][2]
        assert all(a.messages[0]["content"][j]["image"].tobytes() == b.messages[0]["content"][j]["image"].tobytes()
                   for j in (0, 1))  # fmt: skip
    assert [s.id for s in make_all(task, folder, seed=1)] != [s.id for s in first]


@pytest.mark.parametrize("coords", COORD_FAMILIES)
def test_reference_scores_one_and_baselines_score_below(folder, coords):
    task = registry.get_task(NAME, coords=coords)
    samples = make_all(task, folder)
    assert {s.meta["split"] for s in samples} == {a["action_type"] for a, _, _ in ACTIONS}
    assert all(task.reward(task.reference_completion(s), s).score == 1.0 for s in samples)
    rng = np.random.default_rng(0)
    random = np.mean([task.reward(task.random_answer(s, rng), s).score for s in samples])
    constant = np.mean([task.reward(task.constant_answer(s), s).score for s in samples])
    assert 0.5 <= random < 0.75 and 0.5 <= constant < 0.75  # format always, the action seldom


def test_prompt_states_the_model_frame_and_never_the_answer(folder):
    for coords in COORD_FAMILIES:
        task = registry.get_task(NAME, coords=coords)
        for s in make_all(task, folder):
            text = s.messages[0]["content"][2]["text"]
            w, h = s.meta["model_size"]
            assert f"{w}x{h} pixels" in text and ("0-1000 grid" in text) == (coords != "qwen2.5-vl")
            assert [c["type"] for c in s.messages[0]["content"]] == ["image", "image", "text"]
            if "text" in s.answer:
                assert s.answer["text"] not in text


@pytest.mark.parametrize("coords", COORD_FAMILIES)
def test_reference_point_lands_in_the_box_the_processor_shows(folder, coords):
    """The before screen goes through the family's own tiny processor at the task's pixel budget: its grid is the
    prompt's `model_size`, and the reference reply's point, taken to the processor's resized pixels, lies on the
    red click box found in those pixels."""
    from transformers import AutoProcessor

    from mmrl.models import resolve_model_path

    processor = AutoProcessor.from_pretrained(resolve_model_path(f"tiny:{coords}"))
    ip = processor.image_processor
    factor = ip.patch_size * ip.merge_size
    budget = {"min_pixels": 4 * factor * factor, "max_pixels": 160 * factor * factor}
    ip.size = {"shortest_edge": budget["min_pixels"], "longest_edge": budget["max_pixels"]}
    task = registry.get_task(NAME, coords=coords, **budget)
    clicks = [s for s in make_all(task, folder) if "bbox" in s.answer]
    assert len(clicks) == 2
    for s in clicks:
        out = ip(images=[s.messages[0]["content"][0]["image"]], return_tensors="pt")
        grid = out["image_grid_thw"][0]
        w2, h2 = int(grid[2]) * ip.patch_size, int(grid[1]) * ip.patch_size
        assert [w2, h2] == s.meta["model_size"]
        resized = resized_image(processor, out["pixel_values"], grid)
        red = (resized[..., 0] - resized[..., 1]) > 1.5  # normalised units: pure red is about 3.6 apart
        ys, xs = np.nonzero(red)
        payload = json.loads(task.reference_completion(s).removeprefix("<answer>").removesuffix("</answer>"))
        px, py = payload["x"], payload["y"]
        if coords != "qwen2.5-vl":  # grid -> resized pixels
            px, py = px * w2 / 1000, py * h2 / 1000
        assert xs.min() - 1 <= px <= xs.max() + 2 and ys.min() - 1 <= py <= ys.max() + 2, (px, py, xs, ys)


def test_big_screenshots_are_downscaled_with_their_boxes(tmp_path):
    big = write_folder(tmp_path / "big", ACTIONS[:1], size=(900, 600))
    task = registry.get_task(NAME, max_side=450)
    (s,) = make_all(task, big)
    assert s.meta["image_size"] == [450, 300] and s.meta["original_size"] == [900, 600]
    assert s.answer["bbox"] == [60.0, 35.0, 100.0, 55.0] and (s.answer["x"], s.answer["y"]) == (75.0, 45.0)
    assert all(s.messages[0]["content"][j]["image"].size == (450, 300) for j in (0, 1))
    assert task.reward(task.reference_completion(s), s).score == 1.0


def test_filters_and_unverified_scrolls_are_skipped_with_their_reason(tmp_path):
    actions = [
        ({"action_type": "click", "x": 200.0, "y": 150.0, "bbox": [0.0, 0.0, 400.0, 250.0]}, "chelsea", "coffee"),
        ({"action_type": "click", "x": 10.0, "y": 10.0, "bbox": [100.0, 100.0, 120.0, 120.0]}, "chelsea", "coffee"),
        ({"action_type": "click", "x": 100.0, "y": 100.0, "bbox": [100.0, 100.0, 100.0, 120.0]}, "chelsea", "coffee"),
        ({"action_type": "click", "x": 100.0, "y": 100.0}, "chelsea", "coffee"),
    ]
    folder = write_folder(tmp_path / "f", actions)
    task = registry.get_task(NAME)
    reasons = []
    for item in task.sources(folder):
        with pytest.raises(SkipItem) as e:
            task.make(item, np.random.default_rng(0))
        reasons.append(e.value.reason)
    assert reasons == ["box_covers_too_much", "point_outside_box", "box_area_below_min", "no_bbox"]
    lines = (folder / PAIRS_FILE).read_text().splitlines()
    record = json.loads(lines[0]) | {"action": {"action_type": "scroll", "direction": "up"},
                                     "scroll_convention": "androidcontrol"}  # fmt: skip
    (folder / PAIRS_FILE).write_text(json.dumps(record) + "\n")
    with pytest.raises(SkipItem, match="androidcontrol"):
        task.make(task.sources(folder)[0], np.random.default_rng(0))


def test_bad_records_are_counted_and_escaping_paths_refused(folder, tmp_path):
    lines = (folder / PAIRS_FILE).read_text().splitlines()
    good = json.loads(lines[0])
    bad = [
        "not json",
        json.dumps({k: v for k, v in good.items() if k != "action"}),
        json.dumps(good | {"action": {"action_type": "teleport"}}),
        json.dumps(good | {"image_after": "media/none.png"}),
        json.dumps(good | {"k": 0}),
    ]
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / PAIRS_FILE).write_text("\n".join([lines[0], *bad]) + "\n")
    read = read_pairs(copy)
    assert len(read.items) == 1
    assert read.skipped == {"bad_json": 1, "missing_action": 1, "bad_action_type": 1, "missing_image": 1, "bad_k": 1}
    (copy / PAIRS_FILE).write_text(json.dumps(good | {"image_before": "../../etc/passwd"}) + "\n")
    with pytest.raises(MMRLError, match="leaves the folder"):
        read_pairs(copy)


def test_k_selects_records_and_a_folder_of_folders_is_read(folder, tmp_path):
    root = tmp_path / "root"
    write_folder(root / "a", ACTIONS[:2])
    write_folder(root / "b", ACTIONS[2:4])
    assert len(registry.get_task(NAME).sources(root)) == 4
    with pytest.raises(MMRLError, match="no pair with k"):
        registry.get_task(NAME, k=[2, 3]).sources(root)


@pytest.mark.slow
def test_the_default_source_explores_the_shipped_apps_once_and_makes_samples():
    """`source: default`: the web explorer walks data/webapps in a real browser into the cache, once."""
    task = registry.get_task(NAME, default_pairs=6)
    items = task.sources("default")
    assert len(items) >= 6 and len(task.sources("default")) == len(items)  # the second call reads the cache
    sample = task.make(items[0], np.random.default_rng(0))
    assert task.reward(task.reference_completion(sample), sample).score == 1.0


@pytest.mark.parametrize(
    "params, match",
    [({"max_box_coverage": 0.8}, "degenerate"), ({"k": [0]}, "k must"), ({"k": [1, 1]}, "k must"),
     ({"text_match": "fuzzy"}, "text_match"), ({"f1_threshold": 0.0}, "f1_threshold"), ({"coords": "x"}, "coords")],
)  # fmt: skip
def test_bad_settings_are_refused(params, match):
    with pytest.raises(ConfigError, match=match):
        registry.get_task(NAME, **params)


def test_evidence_is_deterministic_and_marks_the_click(folder):
    task = registry.get_task(NAME)
    s = make_all(task, folder)[0]
    (panel,) = task.evidence(s)
    (again,) = task.evidence(s)
    assert panel.image.tobytes() == again.image.tobytes() and '"click"' in panel.title
    assert panel.image.width <= 1060


def test_generate_cli_writes_one_split_per_action_type(folder, tmp_path):
    out = tmp_path / "data"
    assert main(["generate", "--task", NAME, "--source", str(folder), "--n", "16", "--out", str(out), "--quiet"]) == 0
    samples = read_dataset(out)
    task = registry.get_task(NAME)
    assert len(samples) == 16 and {s.meta["split"] for s in samples} <= {a["action_type"] for a, _, _ in ACTIONS}
    assert all(task.reward(task.reference_completion(s), s).score == 1.0 for s in samples)
