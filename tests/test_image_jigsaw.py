"""`image_jigsaw`: ground truth checked by reassembling the tiles, determinism, skips, the tiny model, training."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import skimage
from jigsaw_helpers import texts_of, write_samples
from PIL import Image

from mmrl.config import ModelConfig, RunConfig, load_config
from mmrl.contracts import SamplingParams
from mmrl.corpus import Corpus
from mmrl.errors import ConfigError, MediaError, SkipItem
from mmrl.models import load_policy
from mmrl.registry import get_task, task_class
from mmrl.rollout import HFEngine, encode_prompt
from mmrl.sample import Sample, read_dataset, write_dataset
from pretext_tasks.image_jigsaw import LABEL_BAND, ImageJigsaw, ImageJigsawParams, slot_origin
from rewards.ordering import answer_text

ROOT = Path(__file__).resolve().parents[1]
CHELSEA = Path(skimage.__file__).parent / "data" / "chelsea.png"  # 451 x 300: 451 % 3 = 1, 451 % 2 = 1


def noise_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def noise(tmp_path_factory) -> Path:
    """A 101 x 77 random image: neither side divides by 2, 3 or 4."""
    return noise_image(tmp_path_factory.mktemp("images") / "noise.png", 101, 77)


def tiles_of(sample: Sample) -> list[Image.Image]:
    """The images of the prompt, in the order they are shown."""
    return [item["image"] for item in sample.media()]


def reassemble(tiles_by_label: list[np.ndarray], answer: list[int], rows: int, cols: int) -> np.ndarray:
    """Put the tile shown under label answer[i] at raster position i and glue rows and columns.

    No tile sizes are assumed: if a tile had the wrong size the concatenation fails or the
    image differs from the source.
    """
    grid = [[tiles_by_label[answer[r * cols + c] - 1] for c in range(cols)] for r in range(rows)]
    return np.concatenate([np.concatenate(row, axis=1) for row in grid], axis=0)


def piece_sizes(total: int, parts: int) -> list[int]:
    """The sheet's slicing rule, written out again: the first `total % parts` pieces are 1 px longer."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


# --------------------------------------------------------------------------------------------------
# Registry and parameters


def test_registered_with_defaults() -> None:
    task = get_task("image_jigsaw")
    assert isinstance(task, ImageJigsaw) and task_class("image_jigsaw") is ImageJigsaw
    p = task.params
    assert (p.rows, p.cols, p.k, p.min_tile_side, p.composed, p.answer_mode, p.think) == (
        3, 3, 9, 28, False, "answer_tag", True
    )  # fmt: skip
    assert (p.gamma, p.partial_min_k, p.lenient_validity, p.repetition_penalty, p.reward_scale) == (
        0.2, 5, False, 0.5, "unit"
    )  # fmt: skip


@pytest.mark.parametrize(
    "params, match",
    [
        ({"rows": 1, "cols": 1}, "rows"),
        ({"rows": 1, "cols": 2}, "answer would always be 2, 1"),
        ({"rows": 0, "cols": 4}, "rows"),
        ({"min_tile_side": 0}, "min_tile_side"),
        ({"max_side": -1}, "max_side"),
        ({"answer_mode": "raw"}, "think"),  # raw cannot ask for <think>
        ({"answer_mode": "xml"}, "answer_mode"),
        ({"grid": [3, 3]}, "unknown parameter 'grid'"),
    ],
)
def test_bad_params_are_config_errors(params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        get_task("image_jigsaw", **params)


# --------------------------------------------------------------------------------------------------
# Ground truth against the media


@pytest.mark.parametrize("rows, cols", [(3, 3), (2, 2), (1, 3), (3, 1), (2, 3), (4, 5)])
def test_answer_reassembles_the_source_pixel_for_pixel(rows: int, cols: int, noise: Path) -> None:
    for source in (CHELSEA, noise):
        original = np.asarray(Image.open(source).convert("RGB"))
        task = get_task("image_jigsaw", rows=rows, cols=cols, max_side=0, min_tile_side=10)
        for seed in range(5):
            sample = task.make(source, np.random.default_rng(seed))
            tiles = [np.asarray(t) for t in tiles_of(sample)]
            assert len(tiles) == rows * cols
            assert np.array_equal(reassemble(tiles, sample.answer, rows, cols), original), (source, seed)


def test_uneven_sizes_follow_the_slicing_rule() -> None:
    # 451 = 150 + 150 + 151 would be wrong: the rule gives the first 451 % 3 = 1 column the extra pixel.
    task = get_task("image_jigsaw", max_side=0)
    sample = task.make(CHELSEA, np.random.default_rng(0))
    tiles = tiles_of(sample)
    for i in range(9):  # the tile that belongs at raster position i
        tile = tiles[sample.answer[i] - 1]
        assert tile.size == (piece_sizes(451, 3)[i % 3], piece_sizes(300, 3)[i // 3])
    assert sorted({t.width for t in tiles}) == [150, 151]


def test_composed_image_holds_the_tiles_in_shown_slots(noise: Path) -> None:
    for rows, cols, source in [(3, 3, CHELSEA), (2, 3, noise), (1, 3, noise)]:
        original = np.asarray(Image.open(source).convert("RGB"))
        height, width = original.shape[:2]
        widths, heights = piece_sizes(width, cols), piece_sizes(height, rows)
        task = get_task("image_jigsaw", rows=rows, cols=cols, max_side=0, composed=True, min_tile_side=10)
        for seed in range(3):
            sample = task.make(source, np.random.default_rng(seed))
            (composed,) = tiles_of(sample)
            canvas = np.asarray(composed)
            cell = (max(widths), max(heights))
            crops = []
            for label in range(1, rows * cols + 1):
                true_index = sample.answer.index(label)  # the grid position of the tile labelled `label`
                w, h = widths[true_index % cols], heights[true_index // cols]
                x, y = slot_origin(label - 1, cols, cell)
                crops.append(canvas[y : y + h, x : x + w])
                band = canvas[y - LABEL_BAND : y, x : x + cell[0]]
                assert (band < 128).any(), "a label is drawn in the band above each slot"
            assert np.array_equal(reassemble(crops, sample.answer, rows, cols), original), (source, seed)


def test_downscaled_source(tmp_path: Path) -> None:
    source = noise_image(tmp_path / "big.png", 600, 400)
    sample = get_task("image_jigsaw", max_side=300).make(source, np.random.default_rng(0))
    assert sample.meta["image_size"] == [300, 200]
    expected = np.asarray(Image.open(source).resize((300, 200), Image.Resampling.BICUBIC))
    assert np.array_equal(reassemble([np.asarray(t) for t in tiles_of(sample)], sample.answer, 3, 3), expected)


def test_identity_never_drawn_and_shuffles_cover_all_others(tmp_path: Path) -> None:
    source = noise_image(tmp_path / "small.png", 64, 64)
    task = get_task("image_jigsaw", rows=2, cols=2)
    answers = Counter(tuple(task.make(source, np.random.default_rng(s)).answer) for s in range(300))
    assert (1, 2, 3, 4) not in answers
    assert set(answers) == set(itertools.permutations(range(1, 5))) - {(1, 2, 3, 4)}  # the other 23
    three = get_task("image_jigsaw", rows=1, cols=3, min_tile_side=16)  # the smallest grid allowed: 5 answers
    assert len({tuple(three.make(source, np.random.default_rng(s)).answer) for s in range(40)}) == 5


# --------------------------------------------------------------------------------------------------
# Prompt


def test_prompt_states_grid_labels_and_format() -> None:
    task = get_task("image_jigsaw", rows=2, cols=3, think=False)
    sample = task.make(CHELSEA, np.random.default_rng(0))
    content = sample.messages[0]["content"]
    assert [i["type"] for i in content] == ["text"] + ["text", "image"] * 6 + ["text"]
    texts = texts_of(sample)
    assert texts[0] == (
        "A picture was cut into a grid of 2 rows and 3 columns, 6 tiles in all. "
        "The tiles are shown below in shuffled order, each after its label (Tile 1 to Tile 6).\n"
    )
    assert texts[1:7] == ["Tile 1: "] + [f"\nTile {j}: " for j in range(2, 7)]
    assert texts[-1] == (
        "\nReassemble the picture: for each grid position in raster order (left to right along the top row, "
        "then row by row downwards), give the label of the tile that belongs there, as 6 comma-separated "
        "numbers. Answer with only <answer>labels</answer>. Example of the format for 6 tiles: "
        "<answer>2, 4, 6, 1, 3, 5</answer>"
    )
    think = get_task("image_jigsaw", answer_mode="boxed").make(CHELSEA, np.random.default_rng(0))
    assert "Think inside <think></think>, then answer with \\boxed{labels}." in texts_of(think)[-1]
    assert texts_of(think)[-1].endswith("\\boxed{2, 4, 6, 8, 1, 3, 5, 7, 9}")
    composed = get_task("image_jigsaw", composed=True).make(CHELSEA, np.random.default_rng(0))
    assert "written above it" in texts_of(composed)[0] and len(texts_of(composed)) == 2


def test_prompt_text_does_not_depend_on_the_answer() -> None:
    task = get_task("image_jigsaw")
    samples = [task.make(CHELSEA, np.random.default_rng(s)) for s in range(10)]
    assert len({tuple(s.answer) for s in samples}) > 1
    assert len({tuple(texts_of(s)) for s in samples}) == 1


def test_meta() -> None:
    sample = get_task("image_jigsaw", max_side=0).make(CHELSEA, np.random.default_rng(0))
    m = sample.meta
    assert m["source"] == "chelsea.png" and m["grid"] == [3, 3] and m["image_size"] == [451, 300]
    assert sorted(m["order"]) == list(range(9)) and m["answer_mode"] == "answer_tag" and m["think"] is True
    assert m["params"]["rows"] == 3 and isinstance(m["seed"], int) and sample.task == "image_jigsaw"
    assert m["tile_boxes"][0] == [0, 0, 151, 100] and m["tile_boxes"][-1] == [301, 200, 451, 300]


# --------------------------------------------------------------------------------------------------
# Determinism, sources, skips, errors


def test_same_seed_same_bytes_different_seed_differs(tmp_path: Path) -> None:
    for name, params in {"tiles": {}, "composed": {"composed": True, "rows": 2, "cols": 2}}.items():
        task = get_task("image_jigsaw", **params)
        first = write_samples(task, CHELSEA, tmp_path / f"{name}-a", 1, n=3)
        assert write_samples(task, CHELSEA, tmp_path / f"{name}-b", 1, n=3) == first
        assert write_samples(task, CHELSEA, tmp_path / f"{name}-c", 2, n=3) != first


def test_dataset_round_trip_keeps_pixels_and_answer(tmp_path: Path) -> None:
    task = get_task("image_jigsaw", rows=2, cols=2, max_side=0)
    sample = task.make(CHELSEA, np.random.default_rng(3))
    (back,) = read_dataset(write_dataset([sample], tmp_path / "ds"))
    assert back.answer == sample.answer and back.meta == sample.meta
    tiles = [np.asarray(Image.open(item["image"])) for item in back.media()]
    assert np.array_equal(reassemble(tiles, back.answer, 2, 2), np.asarray(Image.open(CHELSEA)))
    assert task.reward(answer_text(back.answer), back).score == 0.0  # the prompt asked for <think> first
    assert task.reward(task.reference_completion(back), back).score == 1.0


def test_sources(tmp_path: Path) -> None:
    task = get_task("image_jigsaw")
    noise_image(tmp_path / "a.png", 90, 90)
    (tmp_path / "sub").mkdir()
    noise_image(tmp_path / "sub" / "b.jpg", 90, 90)
    items = task.sources(tmp_path)
    assert [i.id for i in items] == ["a.png", "sub/b.jpg"]
    assert task.sources(str(tmp_path)) == items
    corpus = Corpus(root=tmp_path, photos=items[:1], videos=[], rgbd=[], manifest={})
    assert task.sources(corpus) == items[:1]
    with pytest.raises(ConfigError, match="needs source images"):
        task.sources(None)
    sample = task.make(items[1], np.random.default_rng(0))
    assert sample.meta["source"] == "sub/b.jpg" and sample.id.startswith("image_jigsaw-sub/b.jpg-")


def test_too_small_images_are_skipped(tmp_path: Path) -> None:
    task = get_task("image_jigsaw")  # 3x3, tiles of at least 28 px: at least 84 x 84
    task.make(noise_image(tmp_path / "ok.png", 84, 84), np.random.default_rng(0))
    for name, (w, h) in {"narrow.png": (83, 200), "flat.png": (200, 83)}.items():
        with pytest.raises(SkipItem, match=name) as info:
            task.make(noise_image(tmp_path / name, w, h), np.random.default_rng(0))
        assert info.value.reason == "image_too_small"
    two = get_task("image_jigsaw", rows=2, cols=2)
    two.make(noise_image(tmp_path / "56.png", 56, 56), np.random.default_rng(0))
    with pytest.raises(SkipItem):
        two.make(noise_image(tmp_path / "55.png", 55, 56), np.random.default_rng(0))
    # the check applies after downscaling: 1000 x 100 -> 448 x 45, rows of 15 px
    with pytest.raises(SkipItem, match="448x45"):
        task.make(noise_image(tmp_path / "strip.png", 1000, 100), np.random.default_rng(0))


def test_unreadable_files_raise_media_error_naming_them(tmp_path: Path) -> None:
    task = get_task("image_jigsaw")
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(MediaError, match="corrupt.png"):
        task.make(bad, np.random.default_rng(0))
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(MediaError, match="empty.jpg"):
        task.make(tmp_path / "empty.jpg", np.random.default_rng(0))


# --------------------------------------------------------------------------------------------------
# Reward


def test_reward_uses_the_stored_answer() -> None:
    task = get_task("image_jigsaw", rows=2, cols=2, think=False)
    sample = task.make(CHELSEA, np.random.default_rng(0))
    assert task.reward(answer_text(sample.answer), sample).score == 1.0
    assert task.reference_completion(sample) == answer_text(sample.answer)
    wrong = next(p for p in itertools.permutations(range(1, 5)) if list(p) != sample.answer)
    assert task.reward(answer_text(wrong), sample).score == pytest.approx(1 / 6)  # K = 4: no partial credit
    sample.meta["order"] = [0, 1, 2, 3]  # the reward never recomputes the shuffle
    sample.meta["seed"] = 0
    assert task.reward(answer_text(sample.answer), sample).score == 1.0
    assert task.reward("<answer>" * 3000, sample).score == 0.0


def test_reward_follows_the_samples_prompt_and_the_tasks_knobs() -> None:
    boxed = get_task("image_jigsaw", answer_mode="boxed").make(CHELSEA, np.random.default_rng(0))
    task = get_task("image_jigsaw", reward_scale="raw")  # a default-format task scoring a boxed Sample
    reference = task.reference_completion(boxed)
    assert reference.startswith("<think>") and reference.endswith(f"\\boxed{{{', '.join(map(str, boxed.answer))}}}")
    assert task.reward(reference, boxed).score == pytest.approx(1.2)
    assert task.reward(answer_text(boxed.answer, "boxed"), boxed).score == 0.0  # the prompt asked for <think>


# --------------------------------------------------------------------------------------------------
# The real processor and the tiny model


@pytest.fixture(scope="module")
def tiny():
    cfg = ModelConfig()
    model, processor = load_policy(cfg, device="cpu")
    return cfg, model.eval(), processor


@pytest.mark.parametrize("composed", [False, True])
def test_samples_encode_and_generate_with_the_tiny_model(tiny, tmp_path: Path, composed: bool) -> None:
    cfg, model, processor = tiny
    source = noise_image(tmp_path / "112.png", 112, 112)
    task = get_task("image_jigsaw", rows=2, cols=2, think=False, composed=composed)
    sample = task.make(source, np.random.default_rng(0))
    prompt = encode_prompt(processor, sample.messages, cfg, max_prompt_tokens=4096)
    images = int((prompt.input_ids == processor.image_token_id).sum())
    assert prompt.num_visual_tokens == images > 0
    assert prompt.vision["image_grid_thw"].shape[0] == (1 if composed else 4)
    assert "Tile 4: <|vision_start|><|image_pad|>" in prompt.text or composed
    engine = HFEngine(model, processor, batch_size=4, seed=0)
    (completions,) = engine.generate([prompt], 2, SamplingParams(max_new_tokens=8, temperature=1.0, seed=0))
    assert len(completions) == 2
    for c in completions:
        assert 1 <= len(c.token_ids) <= 8
        assert 0.0 <= task.reward(c.text, sample).score <= 1.0
    assert task.reward(task.reference_completion(sample), sample).score == 1.0


# --------------------------------------------------------------------------------------------------
# A tiny training run


@pytest.mark.slow
def test_tiny_training_run_completes(tmp_path: Path) -> None:
    from mmrl.grpo.trainer import train
    from mmrl.logging import read_metrics

    cfg: RunConfig = load_config(
        RunConfig,
        ROOT / "configs" / "image_jigsaw_tiny.yaml",
        [
            f"train.out_dir={tmp_path / 'run'}",
            f"sft.out_dir={tmp_path / 'sft'}",
            "train.cold_start=false",
            "train.steps=3",
            "data.prompts_per_step=2",
            "rollout.n=4",
            "data.eval_samples=2",
            "log.progress=false",
        ],
    )
    photos = tmp_path / "photos"  # a folder source: no default-corpus build inside the test
    photos.mkdir()
    for i in range(3):
        noise_image(photos / f"p{i}.png", 160, 120, seed=i)
    cfg.data.sources[0].source = str(photos)
    run = train(cfg)
    records = read_metrics(run)
    steps = [r for r in records if r["step"] >= 1]
    assert [r["step"] for r in steps] == [1, 2, 3]
    for r in steps:
        assert 0.0 <= r["reward/mean"] <= 1.0 and "reward/image_jigsaw/format" in r
        assert "reward/image_jigsaw/exact" in r
    assert (run / "final" / "config.json").is_file()


def test_params_dataclass_documents_every_field() -> None:
    from mmrl.config import field_docs

    docs = field_docs(ImageJigsawParams)
    assert all(docs.get(f) for f in ImageJigsawParams.__dataclass_fields__), docs
