"""`mmrl generate`: determinism, the hf / verl exports, preview sheets, skipped sources, CLI errors."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmrl import media
from mmrl.cli import main
from mmrl.errors import MMRLError, SkipItem
from mmrl.generate import generate, iter_samples, summary_line
from mmrl.preview import preview_sheet
from mmrl.registry import register, task_names
from mmrl.sample import Sample, read_dataset
from mmrl.task import Task
from rewards.match import exact_match

datasets = pytest.importorskip("datasets")

HF_COLUMNS = {"prompt", "images", "answer", "task", "id", "meta"}
VERL_COLUMNS = {"data_source", "prompt", "images", "ability", "reward_model", "extra_info", "problem", "answer"}
HAS_JIGSAW = "image_jigsaw" in task_names()


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def photo_folder(root: Path, *, corrupt: bool = True, small: bool = True) -> Path:
    """Two real photos (scikit-image's), plus a corrupt file and a too-small image on request."""
    import skimage

    root.mkdir(parents=True, exist_ok=True)
    data = Path(skimage.__file__).parent / "data"
    for name in ("chelsea.png", "coffee.png"):
        media.load_image(data / name).resize((120, 90)).save(root / name)
    if corrupt:
        (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 10)
    if small:
        Image.new("RGB", (20, 20), (200, 10, 10)).save(root / "tiny.png")
    return root


# A task that reads an image folder, like the real ones: small images are SkipItem, unreadable ones MediaError.
@dataclass
class ThumbParams:
    min_side: int = 32
    """Images with a shorter side are skipped."""


@register("test_folder_thumb")
@dataclass
class FolderThumbTask(Task):
    Params: ClassVar[type] = ThumbParams
    name: ClassVar[str]
    params: ThumbParams = field(default_factory=ThumbParams)

    def sources(self, corpus):
        from mmrl.corpus import image_folder

        return image_folder(corpus)

    def make(self, item, rng: np.random.Generator) -> Sample:
        image = media.load_image(item.path)  # MediaError for the corrupt file
        if min(image.size) < self.params.min_side:
            raise SkipItem("image_too_small", f"{item.path}: {image.size}")
        side = int(rng.integers(16, 33))
        content = [{"type": "image", "image": image.resize((side, side))}, {"type": "text", "text": "Name it."}]
        return Sample("x", self.name, [{"role": "user", "content": content}], item.id, {"answer_mode": "raw"})

    def reward(self, completion, sample):
        return exact_match(completion, sample.answer, mode="raw")


@dataclass
class ClipParams:
    frames: int = 3


@register("test_clip")
@dataclass
class ClipTask(Task):
    """Videos given as frame lists, like the video tasks' clips."""

    Params: ClassVar[type] = ClipParams
    name: ClassVar[str]
    params: ClipParams = field(default_factory=ClipParams)

    def sources(self, corpus):
        return range(10)

    def make(self, item, rng: np.random.Generator) -> Sample:
        frames = [np.full((28, 42, 3), int(v), np.uint8) for v in rng.integers(0, 255, self.params.frames)]
        content = [
            {"type": "text", "text": "Clip 1"},
            {"type": "video", "video": frames},
            {"type": "text", "text": "?"},
        ]
        return Sample("x", self.name, [{"role": "user", "content": content}], "a", {})

    def reward(self, completion, sample):
        return exact_match(completion, sample.answer, mode="raw")


# --------------------------------------------------------------------------------------------------
# Determinism


@pytest.mark.parametrize("fmt", ["jsonl", "hf", "verl"])
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path, fmt: str) -> None:
    def run(name: str, seed: int) -> dict[str, str]:
        generate("dominant_color", n=5, seed=seed, out=tmp_path / name, fmt=fmt, preview=2, progress=False)
        return tree_hashes(tmp_path / name)

    a, b, c = run("a", 7), run("b", 7), run("c", 8)
    assert a == b
    assert a.keys() == c.keys() and a != c
    assert {"generation.json", "preview/0000_dominant_color-000000.png"} <= a.keys()


def test_sample_i_does_not_depend_on_n(tmp_path: Path) -> None:
    generate("dominant_color", n=2, seed=3, out=tmp_path / "two", progress=False)
    generate("dominant_color", n=4, seed=3, out=tmp_path / "four", progress=False)
    two, four = read_dataset(tmp_path / "two"), read_dataset(tmp_path / "four")
    assert [s.answer for s in two] == [s.answer for s in four[:2]]
    assert [s.meta["seed"] for s in two] == [s.meta["seed"] for s in four[:2]]


@pytest.mark.skipif(not HAS_JIGSAW, reason="image_jigsaw is not registered yet")
def test_image_jigsaw_from_a_folder_is_deterministic(tmp_path: Path) -> None:
    src = photo_folder(tmp_path / "src", corrupt=False, small=False)
    for name in ("a", "b"):
        generate("image_jigsaw", params={"rows": 2, "cols": 2}, source=src, n=3, seed=1, out=tmp_path / name,
                 progress=False)  # fmt: skip
    assert tree_hashes(tmp_path / "a") == tree_hashes(tmp_path / "b")
    samples = read_dataset(tmp_path / "a")
    assert all(sorted(s.answer) == [1, 2, 3, 4] and len(s.media()) == 4 for s in samples)


# --------------------------------------------------------------------------------------------------
# Exports


def test_hf_export_has_trl_columns_and_real_images(tmp_path: Path) -> None:
    generate("dominant_color", n=4, seed=0, out=tmp_path / "hf", fmt="hf", progress=False)
    ds = datasets.load_from_disk(str(tmp_path / "hf"))
    assert set(ds.column_names) == HF_COLUMNS and len(ds) == 4
    assert isinstance(ds.features["images"].feature, datasets.Image)
    ref = read_dataset(_jsonl_twin(tmp_path, "dominant_color", n=4, seed=0))
    for row, sample in zip(ds, ref):
        (image,) = row["images"]
        assert isinstance(image, Image.Image) and image.size == (112, 112)
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(Image.open(sample.media()[0]["image"])))
        (message,) = row["prompt"]
        assert message["role"] == "user"
        assert [part["type"] for part in message["content"]] == ["image", "text"]
        assert "image" not in message["content"][0] and message["content"][0]["text"] is None  # unfilled placeholder
        assert row["answer"] == sample.answer and row["task"] == "dominant_color" and row["id"] == sample.id
        assert json.loads(row["meta"]) == sample.meta


def test_hf_rows_fill_trl_placeholders(tmp_path: Path) -> None:
    trl_data = pytest.importorskip("trl.data_utils")
    generate("dominant_color", n=2, seed=0, out=tmp_path / "hf", fmt="hf", progress=False)
    row = datasets.load_from_disk(str(tmp_path / "hf"))[0]
    messages = trl_data.prepare_multimodal_messages(row["prompt"], images=row["images"])
    assert messages[0]["content"][0]["image"] is row["images"][0]


def test_verl_export_has_documented_columns_and_decodable_images(tmp_path: Path) -> None:
    generate("dominant_color", n=3, seed=0, out=tmp_path / "v", fmt="verl", progress=False)
    table = pq.read_table(tmp_path / "v" / "train.parquet")
    assert set(table.column_names) == VERL_COLUMNS and table.num_rows == 3
    ref = read_dataset(_jsonl_twin(tmp_path, "dominant_color", n=3, seed=0))
    for index, (row, sample) in enumerate(zip(table.to_pylist(), ref)):
        (image,) = row["images"]
        decoded = Image.open(io.BytesIO(image["bytes"]))
        assert decoded.size == (112, 112)
        assert np.array_equal(np.asarray(decoded.convert("RGB")), np.asarray(Image.open(sample.media()[0]["image"])))
        (message,) = row["prompt"]
        assert message["role"] == "user" and message["content"].startswith("<image>")
        assert message["content"].count("<image>") == 1 and row["problem"] == message["content"]
        assert (
            row["reward_model"]
            == {"style": "rule", "ground_truth": sample.answer}
            == {
                "style": "rule",
                "ground_truth": row["answer"],
            }
        )
        assert row["data_source"] == "mmrl/dominant_color" and row["ability"] == "visual_perception"
        extra = row["extra_info"]
        assert extra["index"] == index and extra["id"] == sample.id and extra["task"] == "dominant_color"
        assert json.loads(extra["meta"]) == sample.meta and json.loads(extra["answer"]) == sample.answer


@pytest.mark.skipif(not HAS_JIGSAW, reason="image_jigsaw is not registered yet")
def test_multi_image_exports_keep_tiles_in_prompt_order(tmp_path: Path) -> None:
    src = photo_folder(tmp_path / "src", corrupt=False, small=False)
    kw = dict(params={"rows": 2, "cols": 3}, source=src, n=2, seed=4, progress=False)
    generate("image_jigsaw", out=tmp_path / "j", **kw)
    generate("image_jigsaw", out=tmp_path / "hf", fmt="hf", **kw)
    generate("image_jigsaw", out=tmp_path / "v", fmt="verl", **kw)
    ref = read_dataset(tmp_path / "j")
    hf = datasets.load_from_disk(str(tmp_path / "hf"))
    verl = pq.read_table(tmp_path / "v" / "train.parquet").to_pylist()
    for sample, h, v in zip(ref, hf, verl):
        tiles = [np.asarray(Image.open(item["image"])) for item in sample.media()]
        assert len(tiles) == 6
        assert [np.asarray(im.convert("RGB")).tolist() for im in h["images"]] == [t.tolist() for t in tiles]
        decoded = [np.asarray(Image.open(io.BytesIO(im["bytes"])).convert("RGB")) for im in v["images"]]
        assert [d.tolist() for d in decoded] == [t.tolist() for t in tiles]
        assert sum(p["type"] == "image" for p in h["prompt"][0]["content"]) == 6
        assert v["prompt"][0]["content"].count("<image>") == 6
        assert v["reward_model"]["ground_truth"] == ", ".join(map(str, sample.answer))


def test_videos_go_to_verl_as_frame_lists_and_are_refused_by_hf(tmp_path: Path) -> None:
    generate("test_clip", n=2, seed=0, out=tmp_path / "v", fmt="verl", progress=False)
    row = pq.read_table(tmp_path / "v" / "train.parquet").to_pylist()[0]
    assert "images" not in row and row["prompt"][0]["content"] == "Clip 1<video>?"
    (video,) = row["videos"]
    frames = [Image.open(io.BytesIO(base64.b64decode(uri.split("base64,", 1)[1]))) for uri in video["video"]]
    assert len(frames) == 3 and all(f.size == (42, 28) for f in frames)
    with pytest.raises(MMRLError, match="image tasks"):
        generate("test_clip", n=2, seed=0, out=tmp_path / "hf", fmt="hf", progress=False)


def _jsonl_twin(tmp_path: Path, task: str, **kw) -> Path:
    out = tmp_path / f"twin-{task}"
    generate(task, out=out, progress=False, **kw)
    return out


# --------------------------------------------------------------------------------------------------
# Preview


def test_preview_sheets_are_valid_pngs(tmp_path: Path) -> None:
    generate("dominant_color", n=4, seed=0, out=tmp_path / "p", preview=3, progress=False)
    sheets = sorted((tmp_path / "p" / "preview").glob("*.png"))
    assert [s.name for s in sheets] == [f"{i:04d}_dominant_color-{i:06d}.png" for i in range(3)]
    for sheet in sheets:
        with Image.open(sheet) as im:
            im.verify()
        with Image.open(sheet) as im:
            assert im.width == 1100 and 200 < im.height < 2000
    assert json.loads((tmp_path / "p" / "generation.json").read_text())["preview"] == 3


def test_preview_shows_every_tile_and_the_first_and_last_video_frames() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255), (128, 0, 0),
               (0, 128, 0), (0, 0, 128)]  # fmt: skip
    content = [{"type": "text", "text": "Tiles in shuffled order."}]
    for j, colour in enumerate(colours):
        content += [
            {"type": "text", "text": f"Tile {j + 1}: "},
            {"type": "image", "image": Image.new("RGB", (40, 30), colour)},
        ]
    frames = [np.full((20, 30, 3), (10 * k, 200, 90), np.uint8) for k in range(12)]
    content += [{"type": "text", "text": "Clip 1"}, {"type": "video", "video": frames}]
    sheet = preview_sheet(Sample("s", "t", [{"role": "user", "content": content}], [2, 1], {}))
    pixels = np.asarray(sheet).reshape(-1, 3)
    for colour in [*colours, (0, 200, 90), (110, 200, 90)]:
        assert (pixels == colour).all(axis=1).sum() > 500, colour  # each tile, first and last frame, enlarged


# --------------------------------------------------------------------------------------------------
# Bad sources


def test_bad_sources_are_skipped_counted_and_reported(tmp_path: Path) -> None:
    src = photo_folder(tmp_path / "src")
    report = generate("test_folder_thumb", source=src, n=6, seed=0, out=tmp_path / "out", progress=False)
    assert report.written == 6 == len(read_dataset(tmp_path / "out"))
    assert set(report.skipped) == {"image_too_small", "unreadable_media"}
    assert report.attempts == 6 + sum(report.skipped.values())
    saved = json.loads((tmp_path / "out" / "generation.json").read_text())
    assert saved["skipped"] == report.skipped and saved["written"] == 6 and saved["source"] == str(src)
    line = summary_line(report, tmp_path / "out")
    assert "image_too_small" in line and "unreadable_media" in line


def test_only_bad_sources_stop_with_a_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "bad"
    src.mkdir()
    (src / "broken.png").write_bytes(b"garbage")
    Image.new("RGB", (10, 10)).save(src / "small.png")
    with pytest.raises(MMRLError, match=r"50 source items in a row were unusable \(image_too_small: \d+, unr"):
        generate("test_folder_thumb", source=src, n=2, seed=0, out=tmp_path / "out", progress=False)


def test_iter_samples_keys_draws_by_seed_task_and_index() -> None:
    import zlib

    from mmrl.registry import get_task

    task = get_task("dominant_color")
    first = [s.meta["seed"] for s, _ in iter_samples(task, range(1000), 3, seed=5)]
    again = [s.meta["seed"] for s, _ in iter_samples(task, range(1000), 3, seed=5)]
    rng = np.random.default_rng([5, zlib.crc32(b"dominant_color"), 1])  # the key data/README.md states
    item = int(rng.integers(1000))
    assert first == again and task.make(item, rng).meta["seed"] == first[1]


# --------------------------------------------------------------------------------------------------
# CLI


@pytest.mark.slow
def test_cli_generate_matches_the_python_api(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mmrl.cli", "generate", "--task", "dominant_color", "--param", "image_size=56",
         "--n", "3", "--seed", "2", "--out", str(tmp_path / "cli"), "--format", "hf", "--preview", "1", "--quiet"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "wrote 3 dominant_color samples" in out.stdout and "skipped 0" in out.stdout
    generate("dominant_color", params={"image_size": 56}, n=3, seed=2, out=tmp_path / "api", fmt="hf", preview=1,
             progress=False)  # fmt: skip
    assert tree_hashes(tmp_path / "cli") == tree_hashes(tmp_path / "api")  # also: same bytes across processes
    assert json.loads((tmp_path / "cli" / "generation.json").read_text())["params"]["image_size"] == 56


def test_cli_help_describes_generate() -> None:
    out = subprocess.run([sys.executable, "-m", "mmrl.cli", "generate", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for word in ("--task", "--param", "--source", "--format", "--preview", "byte-identical", "data/README.md"):
        assert word in out.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "dominant_colour"], "unknown task 'dominant_colour' (did you mean 'dominant_color'?)"),
        (["--task", "dominant_color", "--param", "colours=[red]"], "unknown parameter 'colours'"),
        (["--task", "dominant_color", "--param", "image_size"], "--param expects key=value"),
        (["--task", "test_folder_thumb", "--source", "/no/such/folder"], "source /no/such/folder does not exist"),
    ],
)
def test_cli_errors_are_one_clear_line(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    code = main(["generate", *args, "--n", "2", "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("mmrl generate: error: ") and message in err[0]


def test_cli_refuses_a_non_empty_output_unless_overwrite(tmp_path: Path, capsys) -> None:
    args = ["generate", "--task", "dominant_color", "--n", "2", "--out", str(tmp_path / "o"), "--quiet"]
    assert main(args) == 0
    assert main(args) == 2 and "not empty (pass --overwrite" in capsys.readouterr().err
    (tmp_path / "o" / "notes.txt").write_text("mine")
    assert main([*args[:3], "--n", "1", *args[5:], "--overwrite"]) == 0
    assert len(read_dataset(tmp_path / "o")) == 1 and len(list((tmp_path / "o" / "media").iterdir())) == 1
    assert (tmp_path / "o" / "notes.txt").read_text() == "mine"  # only our own outputs are replaced


def test_real_tasks_skip_bad_sources_in_the_generation_loop(tmp_path: Path) -> None:
    """Unreadable image, too-short video, all-zero depth map: skipped, counted by reason, reported."""
    from mmrl import media, scene_render, scenes
    from mmrl.video import write_video

    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(images / "good.png")
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    report = generate("image_jigsaw", source=images, n=12, seed=0, out=tmp_path / "img", progress=False)
    assert report.written == 12 and report.skipped.get("unreadable_media", 0) > 0

    videos = tmp_path / "videos"
    ramp = np.stack([np.full((48, 64, 3), 2 * i, np.uint8) for i in range(120)])
    write_video(videos / "long.mp4", ramp, fps=8)
    write_video(videos / "short.mp4", ramp[:10], fps=8)
    report = generate("video_jigsaw", source=videos, n=8, seed=0, out=tmp_path / "vid", progress=False)
    assert report.written == 8 and report.skipped.get("video_too_short", 0) > 0

    rgbd = tmp_path / "rgbd"
    rendering = scene_render.render(scenes.random_scene(np.random.default_rng(1)))
    for name, depth in (("good", rendering.depth), ("zeros", np.zeros_like(rendering.depth))):
        (rgbd / name).mkdir(parents=True)
        Image.fromarray(rendering.rgb).save(rgbd / name / "rgb.png")
        media.save_depth(rgbd / name / "depth.png", depth)
    report = generate("depth_jigsaw", source=rgbd, n=4, seed=0, out=tmp_path / "depth", progress=False)
    assert report.written == 4 and report.skipped.get("no_valid_depth", 0) > 0
    saved = json.loads((tmp_path / "depth" / "generation.json").read_text())
    assert saved["skipped"] == report.skipped


def test_two_tasks_with_one_seed_draw_different_sources_or_shuffles(tmp_path: Path) -> None:
    """Issue 12: sample i was drawn with `default_rng([seed, i])` whatever the task, so video_jigsaw and
    temporal_jigsaw sample 0 at one seed came from the same video with the same shuffle (both draw the item,
    then the shuffle's seed, first). The key now holds the task name; each task stays byte-identical per seed."""
    from mmrl.corpus import camera_motion_frames
    from mmrl.video import write_video

    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8))
    videos = tmp_path / "videos"
    for v in range(5):
        frames = list(camera_motion_frames(photo, "pan_right", 120, (128, 96), np.random.default_rng(v)))
        write_video(videos / f"v{v}.mp4", frames, 8.0)
    runs = {}
    for task in ("video_jigsaw", "temporal_jigsaw"):
        for run in range(2):
            out = tmp_path / f"{task}-{run}"
            generate(task, source=videos, n=3, seed=0, out=out, progress=False)
            runs[task, run] = out
        assert tree_hashes(runs[task, 0]) == tree_hashes(runs[task, 1])

    def drawn(task: str) -> list[tuple[str, tuple[int, ...]]]:
        return [(s.meta["source"], tuple(s.answer)) for s in read_dataset(runs[task, 0])]

    jigsaw, temporal = drawn("video_jigsaw"), drawn("temporal_jigsaw")
    assert jigsaw[0] != temporal[0] and jigsaw != temporal  # before: equal sample for sample
