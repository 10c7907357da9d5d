"""The GUI dataset importers, each on a small fixture written here in its dataset's own layout (real photos from
skimage as screenshots of mixed sizes), with its coordinate quirks: source -> canonical -> source round trips,
canonical -> model -> canonical through each family's tiny processor, the sheet's filters counted by reason."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from mmrl import registry
from mmrl.cli import main
from mmrl.errors import MMRLError, SkipItem
from pretext_tasks.gui_import import ImportOptions, finger_to_content, import_gui
from pretext_tasks.gui_import_web import parse_call
from pretext_tasks.gui_pairs import read_pairs
from rewards.boxes import COORD_FAMILIES
from rewards.gui import from_model_point, point_in_box, to_model_point


def photo(name: str, size: tuple[int, int] | None = None) -> Image.Image:
    image = Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
    return image.resize(size) if size else image


def save(image: Image.Image, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path.name


def records(folder: Path) -> list[dict]:
    return [item.record for item in read_pairs(folder).items]


def by_step(folder: Path, k: int = 1) -> dict:
    return {(r["traj_id"], r["step"]): r for r in records(folder) if r["k"] == k}


# --------------------------------------------------------------------------------------------------
# AndroidControl: absolute pixels; bbox = the smallest a11y node containing the point; JSON-string actions;
# protobuf JSON omits zero-valued bounds; scroll labels of unverified meaning.


def write_androidcontrol(root: Path) -> None:
    names = ["chelsea", "coffee", "chelsea"]
    shots = [save(photo(n, (451, 300)), root / "ep1" / f"{i}.png") for i, n in enumerate(names)]
    screen = {"boundsInScreen": {"right": 451, "bottom": 300}}  # left = top = 0, omitted as protobuf JSON does
    button = {"boundsInScreen": {"left": 100, "top": 40, "right": 220, "bottom": 90}}
    icon = {"boundsInScreen": {"left": 140, "top": 50, "right": 180, "bottom": 80}}
    forest = {"windows": [{"tree": {"nodes": [screen, button, icon]}}]}
    episode = {
        "episode_id": 17, "goal": "open the cat", "screenshots": [f"{s}" for s in shots],
        "screenshot_widths": [451, 451, 451], "screenshot_heights": [300, 300, 300],
        "accessibility_trees": [forest, forest, forest],
        "actions": [json.dumps({"action_type": "click", "x": 150, "y": 60}),
                    json.dumps({"action_type": "scroll", "direction": "up"})],
        "step_instructions": ["tap the icon", "scroll"],
    }  # fmt: skip
    (root / "ep1" / "episode.json").write_text(json.dumps(episode))
    other = [save(photo("coffee"), root / "ep2" / f"{i}.png") for i in range(3)]
    whole = {"windows": [{"tree": {"nodes": [{"boundsInScreen": {"right": 600, "bottom": 400}}]}}]}
    episode2 = {
        "episode_id": 18, "screenshots": other, "screenshot_widths": [600, 600, 999], "screenshot_heights": [400] * 3,
        "accessibility_trees": [whole] * 3,
        "actions": [json.dumps({"action_type": "click", "x": 10, "y": 10}),  # only the whole screen contains it
                    json.dumps({"action_type": "open_app", "app_name": "Clock"})],
    }  # fmt: skip
    (root / "ep2" / "episode.json").write_text(json.dumps(episode2))


def test_androidcontrol(tmp_path):
    write_androidcontrol(tmp_path / "in")
    report = import_gui("androidcontrol", tmp_path / "in", tmp_path / "out", ImportOptions(k_values=(1, 2)))
    pairs = by_step(tmp_path / "out")
    click = pairs[("17", 0)]["action"]
    assert click == {"action_type": "click", "x": 150.0, "y": 60.0, "bbox": [140.0, 50.0, 180.0, 80.0]}  # the icon
    assert pairs[("17", 1)]["scroll_convention"] == "androidcontrol" and pairs[("17", 1)]["action"]["direction"] == "up"
    # ep2: the click's only container is the whole screen (> 50 %); screenshot 2 is not the stated 999 px wide.
    assert report.dropped == {"box_covers_too_much": 1, "unreadable_image": 2}
    assert report.pairs == 3 and report.action_types == {"click": 2, "scroll": 1}  # 17: (0,1), (1,1), (0,2)
    assert by_step(tmp_path / "out", k=2)[("17", 0)]["action"] == click  # k = 2 keeps the first action
    # Round trip: canonical is the source's absolute pixels.
    assert (click["x"], click["y"]) == (150, 60)
    finger = import_gui("androidcontrol", tmp_path / "in", tmp_path / "f", ImportOptions(android_scroll="finger"))
    assert finger.pairs == 2 and by_step(tmp_path / "f")[("17", 1)]["action"]["direction"] == "down"
    assert by_step(tmp_path / "f")[("17", 1)]["scroll_convention"] == "content"


# --------------------------------------------------------------------------------------------------
# AITW: normalised (y, x) points and (y, x, h, w) boxes; tap vs swipe by the 0.04 distance; base64 images.


def encoded(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def aitw_step(episode: str, step: int, image: Image.Image, action: int, **results) -> dict:
    out = {
        "episode_id": episode, "step_id": step, "episode_length": 4, "goal_info": "find coffee",
        "image/width": image.width, "image/height": image.height, "image/encoded": encoded(image),
        # two boxes as (y, x, h, w): a wide bar and a small button inside it
        "image/ui_annotations_positions": [0.1, 0.2, 0.3, 0.6, 0.2, 0.35, 0.1, 0.1],
        "image/ui_annotations_text": ["bar", "ok"], "image/ui_annotations_ui_types": ["TEXT", "ICON_CHECK"],
        "results/action_type": action, "results/type_action": "", "results/yx_touch": [-1, -1],
        "results/yx_lift": [-1, -1],
    }  # fmt: skip
    return out | {f"results/{k}": v for k, v in results.items()}


def write_aitw(root: Path) -> None:
    shot = photo("astronaut", (320, 480))  # portrait phone-like: W 320, H 480
    steps = [
        aitw_step("e1", 0, shot, 4, yx_touch=[0.25, 0.4], yx_lift=[0.26, 0.41]),  # tap: distance 0.014
        aitw_step("e1", 1, shot, 4, yx_touch=[0.8, 0.5], yx_lift=[0.2, 0.52]),  # finger up
        aitw_step("e1", 2, shot, 3, type_action="coffee"),
        aitw_step("e1", 3, shot, 10),  # task complete: the last screen
        aitw_step("e2", 0, photo("chelsea", (300, 200)), 7),  # press enter: no counterpart
        aitw_step("e2", 1, photo("chelsea", (300, 200)), 5),
        aitw_step("e2", 3, photo("chelsea", (300, 200)), 6),  # step 2 missing
        aitw_step("e2", 4, photo("chelsea", (300, 200)), 10),
    ]
    path = root / "aitw_general.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(json.dumps(s) for s in steps) + "\n")


def test_aitw(tmp_path):
    write_aitw(tmp_path / "in")
    report = import_gui("aitw", tmp_path / "in", tmp_path / "out")
    pairs = by_step(tmp_path / "out")
    tap = pairs[("e1", 0)]["action"]
    assert tap["action_type"] == "click" and (tap["x"], tap["y"]) == pytest.approx((0.4 * 320, 0.25 * 480))
    assert tap["bbox"] == pytest.approx([0.35 * 320, 0.2 * 480, 0.45 * 320, 0.3 * 480])  # the button, not the bar
    # Round trip to AITW's own layout: point (y, x) = (y/H, x/W); box (y, x, h, w).
    assert (tap["y"] / 480, tap["x"] / 320) == pytest.approx((0.25, 0.4))
    x1, y1, x2, y2 = tap["bbox"]
    assert [y1 / 480, x1 / 320, (y2 - y1) / 480, (x2 - x1) / 320] == pytest.approx([0.2, 0.35, 0.1, 0.1])
    assert pairs[("e1", 1)]["action"] == {"action_type": "scroll", "direction": "down"}  # finger up: content down
    assert pairs[("e1", 2)]["action"] == {"action_type": "input_text", "text": "coffee"}
    assert pairs[("e2", 3)]["action"] == {"action_type": "navigate_home"}
    assert report.dropped == {"unsupported_action:press_enter": 1, "missing_step": 2}  # (1,2) and (2,3) span the gap
    assert report.pairs == 4


@pytest.mark.parametrize(
    "dx, dy, content", [(0, -5, "down"), (0, 5, "up"), (-5, 1, "right"), (5, -1, "left"), (3, 3, "up")]
)
def test_finger_swipes_become_content_directions(dx, dy, content):
    assert finger_to_content(dx, dy) == content


# --------------------------------------------------------------------------------------------------
# GUI Odyssey: points on [0, 1000] whatever the device; scroll = finger start and end.


def write_guiodyssey(root: Path) -> None:
    shots = {"a.png": photo("chelsea"), "b.png": photo("coffee", (451, 300)), "c.png": photo("chelsea"),
             "d.png": photo("coffee", (451, 300)), "e.png": photo("rocket")}  # fmt: skip
    for name, image in shots.items():
        save(image, root / "screenshots" / name)
    episode = {
        "episode_id": "odyssey_7", "device_info": {"device_name": "Pixel Fold", "w": 1840, "h": 2208},
        "task_info": {"instruction": "x"},
        "step_info": [
            {"step": 0, "screenshot": "a.png", "action": "CLICK", "info": [[500, 250]]},
            {"step": 1, "screenshot": "b.png", "action": "SCROLL", "info": [[300, 800], [320, 200]]},
            {"step": 2, "screenshot": "c.png", "action": "TYPE", "info": "hello"},
            {"step": 3, "screenshot": "d.png", "action": "BACK", "info": ""},
            {"step": 4, "screenshot": "e.png", "action": "COMPLETE", "info": ""},
        ],
    }  # fmt: skip
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "odyssey_7.json").write_text(json.dumps(episode))


def test_guiodyssey(tmp_path):
    root = tmp_path / "in"
    write_guiodyssey(root)
    report = import_gui("guiodyssey", root, tmp_path / "out", ImportOptions(point_box=0.05))
    pairs = by_step(tmp_path / "out")
    click = pairs[("odyssey_7", 0)]["action"]
    assert (click["x"], click["y"]) == pytest.approx((451 * 0.5, 300 * 0.25))  # the stored image's size, not device
    assert click["bbox"] == pytest.approx([225.5 - 22.55, 75 - 15, 225.5 + 22.55, 75 + 15])
    assert (click["x"] * 1000 / 451, click["y"] * 1000 / 300) == pytest.approx((500, 250))  # round trip
    assert pairs[("odyssey_7", 1)]["action"]["direction"] == "down"
    assert pairs[("odyssey_7", 2)]["action"]["text"] == "hello"
    assert report.dropped == {"screen_size_changed": 1}  # d -> e: the rocket is portrait
    assert import_gui("guiodyssey", root, tmp_path / "o2", ImportOptions(point_box=0.0)).dropped["no_bbox"] == 1


# --------------------------------------------------------------------------------------------------
# Mind2Web: bounding_box_rect "x,y,w,h" in CSS px of the full page, inside a JSON-string `attributes`;
# "-1,-1,-1,-1" = not rendered; full-page screenshots; a window cut at the element's scroll offset.


def m2w_action(uid: str, op: str, rect: str, value: str = "", original: str | None = None) -> dict:
    attrs = json.dumps({"backend_node_id": "136", "bounding_box_rect": rect, "class": "btn"})
    return {"action_uid": uid, "operation": {"op": op, "original_op": original or op, "value": value},
            "pos_candidates": [{"tag": "button", "attributes": attrs}], "neg_candidates": []}  # fmt: skip


def write_mind2web(root: Path) -> None:
    page = Image.new("RGB", (640, 1500), (255, 255, 255))
    page.paste(photo("coffee"), (0, 0))
    page.paste(photo("chelsea", (640, 426)), (0, 800))
    task = {
        "annotation_id": "t1", "website": "shop", "confirmed_task": "buy a cat",
        "actions": [
            m2w_action("u0", "CLICK", "100.5,900,120,40"),  # window 2 (800..1200): box y 100..140
            m2w_action("u1", "TYPE", "10,30,200,20", value="Kittens"),
            m2w_action("u2", "SELECT", "10,60,200,20", value="Large"),
            m2w_action("u3", "CLICK", "-1,-1,-1,-1"),
            m2w_action("u4", "CLICK", "5,5,10,10"),
        ],
    }  # fmt: skip
    for i in range(5):
        shot = page if i % 2 == 0 else page.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        save(shot, root / "screenshots" / "t1" / f"u{i}.png")
    (root / "train_0.json").write_text(json.dumps([task]))


def test_mind2web(tmp_path):
    root = tmp_path / "in"
    write_mind2web(root)
    report = import_gui("mind2web", root, tmp_path / "out", ImportOptions(viewport=(640, 400)))
    pairs = by_step(tmp_path / "out")
    rec = pairs[("t1-0", 0)]
    click = rec["action"]
    assert rec["viewport"] == [640, 400] and rec["scroll_offset"] == [0, 800]
    assert click["bbox"] == [100.5, 100.0, 220.5, 140.0] and (click["x"], click["y"]) == (160.5, 120.0)
    # Round trip to the page: CSS = canonical / dpr + scroll offset; "x,y,w,h".
    x1, y1, x2, y2 = click["bbox"]
    assert f"{x1},{y1 + 800:g},{x2 - x1:g},{y2 - y1:g}" == "100.5,900,120,40"
    # The window is the same on both screens: the after screen is cut at the element's offset too.
    after = Image.open(tmp_path / "out" / rec["image_after"])
    assert after.size == (640, 400)
    assert pairs[("t1-1", 0)]["action"] == {"action_type": "input_text", "text": "Kittens"}
    assert report.dropped == {"unsupported_action:select": 1, "element_not_rendered": 1}
    assert report.pairs == 2  # the last action has no after screen


# --------------------------------------------------------------------------------------------------
# BrowserGym: element bbox [x, y, w, h] in CSS px, × device pixel ratio; action strings; go_back; scroll(dx, dy).


def write_browsergym(root: Path) -> None:
    ep = root / "ep_0"
    props = {"a12": {"visibility": 1.0, "bbox": [20.0, 30.5, 60.0, 20.0], "clickable": True, "set_of_marks": True},
             "h1": {"visibility": 0.0, "bbox": [0, 0, 10, 10], "clickable": False}}  # fmt: skip
    steps = [
        ("click('a12')", "coffee"), ("fill('b7', 'cat food')", "chelsea"), ("scroll(0, 350.5)", "coffee"),
        ("go_back()", "chelsea"), ("click('h1')", "coffee"), ("noop()\nclick('a12')", "chelsea"),
        ("send_msg_to_user('done')", "coffee"), (None, "chelsea"),
    ]  # fmt: skip
    lines = []
    for i, (action, name) in enumerate(steps):
        save(photo(name, (640, 400)), ep / f"screenshot_step_{i}.png")  # CSS 320x200 at DPR 2
        lines.append({"step": i, "url": f"http://127.0.0.1:8000/p{i}", "action": action,
                      "extra_element_properties": props, "device_pixel_ratio": 2})  # fmt: skip
    (ep / "steps.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")


def test_browsergym(tmp_path):
    write_browsergym(tmp_path / "in")
    report = import_gui("browsergym", tmp_path / "in", tmp_path / "out")
    pairs = by_step(tmp_path / "out")
    rec = pairs[("ep_0", 0)]
    assert rec["action"]["bbox"] == [40.0, 61.0, 160.0, 101.0] and (rec["action"]["x"], rec["action"]["y"]) == (100, 81)
    assert [v / 2 for v in rec["action"]["bbox"]][:2] == [20.0, 30.5]  # round trip: canonical / DPR = CSS
    assert rec["url_before"].endswith("/p0") and rec["url_after"].endswith("/p1") and rec["dpr"] == 2
    assert pairs[("ep_0", 1)]["action"] == {"action_type": "input_text", "text": "cat food"}
    assert pairs[("ep_0", 2)]["action"] == {"action_type": "scroll", "direction": "down"}
    assert pairs[("ep_0", 3)]["action"] == {"action_type": "navigate_back"}
    assert report.dropped == {"element_not_visible": 1, "multi_action": 1, "unsupported_action:send_msg_to_user": 1}


def test_action_strings_are_read_as_literals_never_run():
    assert parse_call("click('a1', button='left')") == ("click", ["a1"])
    assert parse_call("__import__('os').system('true')") is None
    assert parse_call("click(open('x'))") is None
    assert parse_call("click(") is None


# --------------------------------------------------------------------------------------------------
# Every importer: canonical -> model -> canonical through each family's tiny processor, and the task's reference.


@pytest.fixture(scope="module")
def processors():
    from transformers import AutoProcessor

    from mmrl.models import resolve_model_path

    out = {}
    for family in COORD_FAMILIES:
        processor = AutoProcessor.from_pretrained(resolve_model_path(f"tiny:{family}"))
        ip = processor.image_processor
        f = ip.patch_size * ip.merge_size
        budget = {"min_pixels": 4 * f * f, "max_pixels": 120 * f * f}
        ip.size = {"shortest_edge": budget["min_pixels"], "longest_edge": budget["max_pixels"]}
        out[family] = (ip, budget)
    return out


WRITERS = {"androidcontrol": write_androidcontrol, "aitw": write_aitw, "guiodyssey": write_guiodyssey,
           "mind2web": write_mind2web, "browsergym": write_browsergym}  # fmt: skip


@pytest.mark.parametrize("fmt", list(WRITERS))
def test_imported_pairs_map_through_every_family(fmt, tmp_path, processors):
    WRITERS[fmt](tmp_path / "in")
    out = tmp_path / "pairs"
    options = ImportOptions(viewport=(640, 400)) if fmt == "mind2web" else ImportOptions()
    import_gui(fmt, tmp_path / "in", out, options)
    for family, (ip, budget) in processors.items():
        task = registry.get_task("gui_inverse_dynamics", coords=family, **budget)
        samples = []
        for item in task.sources(out):
            try:
                samples.append(task.make(item, np.random.default_rng(0)))
            except SkipItem as e:  # AndroidControl's scroll labels stay unverified by default
                assert e.reason == "scroll_convention_unverified" and fmt == "androidcontrol"
        assert samples
        for s in samples:
            grid = ip(images=[s.messages[0]["content"][0]["image"]], return_tensors="pt")["image_grid_thw"][0]
            assert [int(grid[2]) * ip.patch_size, int(grid[1]) * ip.patch_size] == s.meta["model_size"]
            assert task.reward(task.reference_completion(s), s).score == 1.0
            if "bbox" in s.answer:
                point = (s.answer["x"], s.answer["y"])
                assert from_model_point(to_model_point(point, s.meta), s.meta) == pytest.approx(point)
                assert point_in_box(point, s.answer["bbox"])


def test_cli_verb_and_bad_input(tmp_path, capsys):
    write_androidcontrol(tmp_path / "in")
    assert main(["import-gui", "--format", "androidcontrol", "--in", str(tmp_path / "in"), "--out",
                 str(tmp_path / "out"), "--k", "1,2"]) == 0  # fmt: skip
    assert "3 pairs" in capsys.readouterr().out and len(records(tmp_path / "out")) == 3
    with pytest.raises(MMRLError, match="unknown GUI dataset format"):
        import_gui("rico", tmp_path / "in", tmp_path / "x")
    with pytest.raises(MMRLError, match="no \\*.json files"):
        import_gui("androidcontrol", tmp_path / "out" / "media", tmp_path / "x")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "e.json").write_text(json.dumps({"screenshots": ["../../x.png"], "actions": []}))
    with pytest.raises(MMRLError, match="leaves the folder"):
        import_gui("androidcontrol", tmp_path / "bad", tmp_path / "y")


def test_the_import_gui_verb_runs_an_importer_by_the_tasks_name(tmp_path):
    """`mmrl import-gui` reaches the importers through the task plugin (the CLI never names a plugin module)."""
    from mmrl.cli import main

    write_aitw(tmp_path / "in")
    assert main(["import-gui", "--format", "aitw", "--in", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--k", "1,2"]) == 0  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "out" / "pairs.jsonl").read_text().splitlines()]
    assert {r["k"] for r in records} == {1, 2} and all(r["source"] for r in records)
    assert main(["import-gui", "--format", "nope", "--in", str(tmp_path / "in"), "--out", str(tmp_path / "o2")]) == 2
