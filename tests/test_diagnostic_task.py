"""The task registry and the `dominant_color` diagnostic task: determinism, truth of the answer, reward."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmrl import registry
from mmrl.contracts import Reward
from mmrl.errors import ConfigError, MMRLError
from mmrl.registry import get_task, register, task_names
from mmrl.sample import Sample, read_dataset, write_dataset
from mmrl.task import Task
from pretext_tasks import answer_instruction
from pretext_tasks.diagnostic import COLOURS, DominantColorParams, DominantColorTask, draw_image
from rewards import format_ok


def make(task: Task, index: int, seed: int | None = None) -> Sample:
    return task.make(index, np.random.default_rng(index if seed is None else seed))


def image_of(sample: Sample) -> Image.Image:
    (item,) = sample.media()
    image = item["image"]
    return image if isinstance(image, Image.Image) else Image.open(image)


def text_of(sample: Sample) -> str:
    return next(
        i["text"]
        for m in sample.messages
        if isinstance(m["content"], list)
        for i in m["content"]
        if i["type"] == "text"
    )


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def colour_counts(image: Image.Image, palette: tuple[str, ...]) -> dict[str, int]:
    """Pixels per palette colour, each pixel assigned to the nearest palette colour (RGB distance)."""
    pixels = np.asarray(image.convert("RGB"), dtype=float).reshape(-1, 1, 3)
    table = np.array([COLOURS[c] for c in palette], dtype=float).reshape(1, -1, 3)
    nearest = np.linalg.norm(pixels - table, axis=2).argmin(axis=1)
    return dict(zip(palette, np.bincount(nearest, minlength=len(palette)).tolist()))


# --------------------------------------------------------------------------------------------------
# Registry


def test_registry_finds_the_diagnostic_task() -> None:
    assert "dominant_color" in task_names()
    task = get_task("dominant_color")
    assert isinstance(task, DominantColorTask) and isinstance(task, Task)
    assert task.name == "dominant_color" and task.params == DominantColorParams()
    assert registry.task_class("dominant_color") is DominantColorTask


def test_unknown_task_names_the_registered_ones() -> None:
    unknown = r"unknown task 'dominant_colour'.*did you mean 'dominant_color'.*installed tasks"
    with pytest.raises(MMRLError, match=unknown):
        get_task("dominant_colour")


def test_unknown_param_is_named_with_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown parameter 'colours'.*valid parameters: palette, image_size"):
        get_task("dominant_color", colours=["red", "blue"])


def test_params_are_coerced_and_checked_like_config_values() -> None:
    task = get_task("dominant_color", palette=["cyan", "pink", "black"], dominant_fraction=[0.6, 0.7], image_size=56)
    assert task.params.palette == ("cyan", "pink", "black") and task.params.dominant_fraction == (0.6, 0.7)
    with pytest.raises(ConfigError, match="image_size"):
        get_task("dominant_color", image_size="big")
    with pytest.raises(ConfigError, match="answer_mode"):
        get_task("dominant_color", answer_mode="xml")
    with pytest.raises(ConfigError, match="unknown palette colour.*mauve"):
        get_task("dominant_color", palette=["red", "mauve"])
    with pytest.raises(ConfigError, match="dominant_fraction"):
        get_task("dominant_color", dominant_fraction=[0.2, 0.5])  # not above 1/K
    with pytest.raises(ConfigError, match="pixel_noise"):
        get_task("dominant_color", pixel_noise=60)


def test_a_taken_name_cannot_be_registered_by_another_class() -> None:
    with pytest.raises(MMRLError, match="already registered"):

        @register("dominant_color")
        class Impostor:
            Params = DominantColorParams


# --------------------------------------------------------------------------------------------------
# Generation


def test_same_seed_same_sample_different_seed_different_image() -> None:
    task = get_task("dominant_color")
    a, b = make(task, 3, seed=11), make(task, 3, seed=11)
    assert png_bytes(image_of(a)) == png_bytes(image_of(b))
    assert text_of(a) == text_of(b) and a.answer == b.answer and a.meta == b.meta and a.id == b.id
    c = make(task, 3, seed=12)
    assert png_bytes(image_of(c)) != png_bytes(image_of(a)) and c.meta["seed"] != a.meta["seed"]


def test_sample_shape_and_meta() -> None:
    task = get_task("dominant_color", system_prompt="You are a careful viewer.")
    sample = make(task, 7)
    assert sample.id == "dominant_color-00000007" and sample.task == "dominant_color"
    system, user = sample.messages
    assert system == {"role": "system", "content": "You are a careful viewer."}
    assert user["role"] == "user" and [i["type"] for i in user["content"]] == ["image", "text"]
    assert image_of(sample).size == (112, 112) and image_of(sample).mode == "RGB"
    assert sample.answer in task.params.palette
    assert sample.meta["index"] == 7 and sample.meta["params"]["palette"] == list(task.params.palette)
    # The stored seed redraws the image exactly.
    image, facts = draw_image(task.params, np.random.default_rng(sample.meta["seed"]))
    assert png_bytes(image) == png_bytes(image_of(sample)) and facts["dominant"] == sample.answer


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"palette": ["red", "green", "blue", "yellow", "orange", "purple"], "dominant_fraction": [0.35, 0.5]},
        {"image_size": 28, "speckle": 0.0, "pixel_noise": 0},
    ],
    ids=["default", "six-colours-hard", "small-clean"],
)
def test_answer_is_the_colour_with_the_most_pixels(params: dict) -> None:
    task = get_task("dominant_color", **params)
    palette = task.params.palette
    for index in range(150):
        sample = make(task, index)
        counts = colour_counts(image_of(sample), palette)
        ranked = sorted(counts, key=counts.get, reverse=True)
        assert ranked[0] == sample.answer, (index, counts, sample.answer)
        lead = (counts[ranked[0]] - counts[ranked[1]]) / sum(counts.values())
        assert lead >= task.params.min_margin - 1e-9
        shares = {c: n / sum(counts.values()) for c, n in counts.items()}
        assert shares == pytest.approx(sample.meta["colour_fractions"], abs=1e-4)  # meta rounds to 4 digits


def test_answers_are_balanced_over_the_palette() -> None:
    task = get_task("dominant_color")
    counts = Counter(make(task, i).answer for i in range(800))
    assert set(counts) == set(task.params.palette)
    assert all(150 <= n <= 250 for n in counts.values()), counts  # expected 200 each


def test_prompt_does_not_leak_the_answer() -> None:
    task = get_task("dominant_color")
    texts_by_answer: dict[str, set[str]] = {}
    for i in range(60):
        sample = make(task, i)
        texts_by_answer.setdefault(sample.answer, set()).add(text_of(sample))
    assert set(texts_by_answer) == set(task.params.palette)
    assert len(set().union(*texts_by_answer.values())) == 1  # one prompt text for every answer
    (text,) = set().union(*texts_by_answer.values())
    assert text == (
        "Which colour covers most of the image: red, green, blue or yellow? Answer with only <answer>colour</answer>."
    )


def test_prompt_follows_the_answer_mode() -> None:
    boxed = make(get_task("dominant_color", answer_mode="boxed", list_options=False), 0)
    assert text_of(boxed) == "Which colour covers most of the image? Answer with only \\boxed{colour}."
    assert answer_instruction("raw", "colour") == "Answer with only the colour."
    with pytest.raises(ConfigError):
        answer_instruction("raw", think=True)


def test_sources_need_no_corpus() -> None:
    task = get_task("dominant_color", num_sources=5)
    assert list(task.sources()) == [0, 1, 2, 3, 4]
    assert len(get_task("dominant_color").sources(None)) == 1_000_000


# --------------------------------------------------------------------------------------------------
# Reward


def test_reward_right_wrong_garbage() -> None:
    task = get_task("dominant_color")
    sample = make(task, 0)
    wrong = next(c for c in task.params.palette if c != sample.answer)
    assert task.reward(f"<answer>{sample.answer}</answer>", sample) == Reward(1.0, {"format": 1.0, "accuracy": 1.0})
    assert task.reward(f"<answer> {sample.answer.upper()} </answer>\n", sample).score == 1.0
    assert task.reward(f"<answer>{wrong}</answer>", sample).score == pytest.approx(0.1)
    for garbage in ["", "blah", "<answer>" * 5000, "\\boxed{" * 3000, "\ufffd" * 10000, sample.answer]:
        assert task.reward(garbage, sample) == Reward(0.0, {"format": 0.0, "accuracy": 0.0})
    assert task.reward(None, sample).score == 0.0  # type: ignore[arg-type]


def test_reward_uses_the_samples_answer_mode() -> None:
    sample = make(get_task("dominant_color", answer_mode="boxed"), 0)
    task = get_task("dominant_color")  # default answer_tag: the Sample's own mode wins
    assert task.reward(f"\\boxed{{{sample.answer}}}", sample).score == 1.0
    assert format_ok(f"\\boxed{{{sample.answer}}}", sample.meta["answer_mode"])


# --------------------------------------------------------------------------------------------------
# Datasets


def test_dataset_round_trip(tmp_path: Path) -> None:
    task = get_task("dominant_color", system_prompt="Look closely.")
    samples = [make(task, i) for i in range(6)]
    write_dataset(samples, tmp_path / "ds")
    loaded = read_dataset(tmp_path / "ds")
    assert [s.id for s in loaded] == [s.id for s in samples]
    for original, back in zip(samples, loaded):
        assert back.task == "dominant_color" and back.answer == original.answer and back.meta == original.meta
        assert text_of(back) == text_of(original) and back.messages[0] == original.messages[0]
        assert np.array_equal(np.asarray(image_of(back)), np.asarray(image_of(original)))  # PNG is lossless
        assert task.reward(f"<answer>{back.answer}</answer>", back).score == 1.0
    # Writing the same samples again gives the same bytes.
    write_dataset([make(task, i) for i in range(6)], tmp_path / "again")
    assert (tmp_path / "ds" / "samples.jsonl").read_bytes() == (tmp_path / "again" / "samples.jsonl").read_bytes()
