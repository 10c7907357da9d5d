"""`mmrl eval`: the scoring path (reference answers score 1.0), the random baseline, the tiny model end to end."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmrl.baselines import (
    central_answers,
    constant_completions,
    random_completions,
    reference_completions,
    score,
)
from mmrl.cli import main
from mmrl.config import ModelConfig
from mmrl.evaluate import evaluate_dataset, format_table
from mmrl.generate import generate
from mmrl.models import load_policy
from mmrl.registry import get_task, task_names
from mmrl.rollout import encode_prompt
from mmrl.sample import Sample, read_dataset
from rewards.ordering import parse_permutation

HAS_JIGSAW = "image_jigsaw" in task_names()


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "dc"
    generate("dominant_color", params={"image_size": 56}, n=6, seed=0, out=out, progress=False)
    return out


@pytest.fixture(scope="module")
def jigsaw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not HAS_JIGSAW:
        pytest.skip("image_jigsaw is not registered yet")
    import skimage

    out = tmp_path_factory.mktemp("eval") / "jig"
    photos = Path(skimage.__file__).parent / "data"
    src = out.parent / "src"
    src.mkdir()
    for name in ("chelsea.png", "coffee.png"):
        (src / name).write_bytes((photos / name).read_bytes())
    generate("image_jigsaw", params={"rows": 2, "cols": 3}, source=src, n=6, seed=0, out=out, progress=False)
    return out


@pytest.fixture(scope="module")
def policy():
    return load_policy(ModelConfig(path="tiny:qwen2.5-vl"), device="cpu")


def test_reference_answers_score_accuracy_one(colours: Path) -> None:
    samples = read_dataset(colours)
    result = evaluate_dataset(None, None, samples, completions=reference_completions(samples))
    row = result["groups"]["task"]["dominant_color"]
    answers = [s.answer for s in samples]
    top = max(answers.count(a) for a in answers)
    assert row["model"] == {
        "count": 6,
        "accuracy": 1.0,
        "mean_reward": 1.0,
        "spread": len(set(answers)) / 6,  # the reference answers are as varied as the dataset
        "top_share": top / 6,
    }
    assert row["random"]["count"] == 6 and row["random"]["accuracy"] < 1.0
    # The best constant answers the most common colour for every sample: right exactly as often as it occurs.
    assert row["constant"]["accuracy"] == pytest.approx(top / 6) and row["constant"]["top_share"] == 1.0
    assert row["constant"]["spread"] == pytest.approx(1 / 6)
    assert result["evaluated"] == 6 and result["skipped"] == {} and "split" not in result["groups"]


def test_best_constant_is_the_single_reply_with_the_best_mean_reward(colours: Path) -> None:
    """On a skewed dataset (4 of 6 samples answer the same colour), the constant row answers that colour for
    all: accuracy 4/6, above a random guess drawn from the answers, and its spread shows one answer."""
    samples = read_dataset(colours)
    skewed = [dataclasses.replace(s, answer="green" if i < 4 else s.answer) for i, s in enumerate(samples)]
    constant = constant_completions(skewed)
    assert constant == ["<answer>green</answer>"] * 6
    result = evaluate_dataset(None, None, skewed, completions=constant, baseline_draws=8)
    row = result["groups"]["task"]["dominant_color"]
    assert row["constant"]["mean_reward"] == pytest.approx(row["model"]["mean_reward"])
    assert row["constant"]["mean_reward"] >= max(4 / 6 * 1.0 + 2 / 6 * 0.1 - 1e-9, row["random"]["mean_reward"])
    assert row["model"]["top_share"] == 1.0  # the collapsed policy is visible as such
    table = format_table(result)
    assert "constant" in table and "spread" in table and "top share" in table


def test_best_constant_also_tries_the_per_position_median_of_number_answers() -> None:
    """Issue 12: the best constant count vector is often no sample's answer. On counts 1,4,4 / 4,1,4 / 4,4,1 every
    observed vector scores 0.611 as a constant, the per-position median 4,4,4 scores 2/3 on each sample."""
    samples = [Sample(f"c{i}", "object_counting", [], answer, {"answer_mode": "raw"})
               for i, answer in enumerate(["1,4,4", "4,1,4", "4,4,1"])]  # fmt: skip
    assert central_answers([s.answer for s in samples]) == ["4,4,4", "4,4,4"]
    constant = constant_completions(samples)
    assert constant == ["4,4,4"] * 3
    assert [r.reward for r in score(samples, constant)] == pytest.approx([2 / 3] * 3)
    observed = [np.mean([r.reward for r in score(samples, [s.answer] * 3)]) for s in samples]
    assert observed == pytest.approx([(1 + 2 * (0.25 + 1 + 0) / 3) / 3] * 3)  # 0.611 < 2/3
    assert central_answers(["5.5-19.0", "1.0-3.5", "2.5-9.0"]) == ["2.5-9.0", "5.5-19.0"]
    assert central_answers([[3, 1, 2], [2, 3, 1], [3, 2, 1]]) == [[3, 2, 1], [3, 1, 1]]
    assert central_answers(["red", "blue"]) == [] and central_answers(["1, 2", "1,2,3"]) == []


def test_wrong_answers_score_zero_accuracy(colours: Path) -> None:
    samples = read_dataset(colours)
    scored = score(samples, ["<answer>magenta</answer>"] * len(samples))
    assert [s.accuracy for s in scored] == [0.0] * 6
    assert all(s.parts == {"format": 1.0, "accuracy": 0.0} for s in scored)


def test_random_baseline_for_colours_guesses_from_the_answers_seen(colours: Path) -> None:
    samples = read_dataset(colours)
    guesses = random_completions(samples, np.random.default_rng(0))
    answers = {f"<answer>{s.answer}</answer>" for s in samples}
    assert set(guesses) <= answers
    assert sorted(guesses) == sorted(f"<answer>{s.answer}</answer>" for s in samples)  # a shuffle


def test_jigsaw_reference_scores_one_and_random_guesses_are_permutations(jigsaw: Path) -> None:
    samples = read_dataset(jigsaw)
    result = evaluate_dataset(None, None, samples, completions=reference_completions(samples), baseline_draws=32)
    row = result["groups"]["task"]["image_jigsaw"]
    assert row["model"]["accuracy"] == 1.0 and row["model"]["mean_reward"] == 1.0
    assert row["random"]["accuracy"] < 0.2  # exact order of 6 tiles by chance: 1/720
    task = get_task("image_jigsaw", rows=2, cols=3)
    for guess, sample in zip(random_completions(samples, np.random.default_rng(1)), samples):
        assert sorted(parse_permutation(guess, 6)) == [1, 2, 3, 4, 5, 6]
        assert task.reward(guess, sample).parts["format"] > 0


def test_results_group_by_split_when_samples_carry_one(colours: Path) -> None:
    samples = read_dataset(colours)
    for i, s in enumerate(samples):
        s.meta["split"] = "hard" if i % 3 == 0 else "easy"
    result = evaluate_dataset(None, None, samples, completions=reference_completions(samples))
    splits = result["groups"]["split"]
    assert {k: v["model"]["count"] for k, v in splits.items()} == {"easy": 4, "hard": 2}
    assert "split" in format_table(result) and "hard" in format_table(result)


def test_prompts_over_budget_are_skipped_and_counted(tmp_path: Path, policy) -> None:
    model, processor = policy
    generate("dominant_color", params={"image_size": 56}, n=2, seed=0, out=tmp_path / "small", progress=False)
    generate("dominant_color", params={"image_size": 224}, n=1, seed=0, out=tmp_path / "big", progress=False)
    small, big = read_dataset(tmp_path / "small"), read_dataset(tmp_path / "big")
    big[0].id = "big"
    cfg = ModelConfig()
    budget = len(encode_prompt(processor, small[0].messages, cfg, max_prompt_tokens=10_000)) + 8
    assert len(encode_prompt(processor, big[0].messages, cfg, max_prompt_tokens=10_000)) > budget
    result = evaluate_dataset(
        model, processor, [*small, *big], max_prompt_tokens=budget, max_new_tokens=4, batch_size=2, progress=False
    )
    assert result["skipped"] == {"prompt_over_budget": 1} and result["evaluated"] == 2
    assert result["groups"]["task"]["dominant_color"]["model"]["count"] == 2
    assert "skipped 1: prompt_over_budget 1" in format_table(result)


@pytest.mark.slow
def test_cli_eval_tiny_model_writes_table_and_json(colours: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "mmrl.cli", "eval", "--model", "tiny:qwen2.5-vl", "--data", str(colours), "--n", "4",
         "--batch-size", "3", "--max-new-tokens", "6", "--out", str(out), "--quiet"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert ["task", "policy", "count", "accuracy", "mean", "reward", "spread", "top", "share"] in rows
    model_row = next(r for r in rows if r[:2] == ["dominant_color", "model"])
    random_row = next(r for r in rows if r[:2] == ["dominant_color", "random"])
    constant_row = next(r for r in rows if r[:2] == ["dominant_color", "constant"])
    assert model_row[2] == random_row[2] == constant_row[2] == "4" and float(constant_row[6]) == 1.0
    result = json.loads(out.read_text())
    assert result["model"] == "tiny:qwen2.5-vl" and result["evaluated"] == 4 and len(result["per_sample"]) == 4
    assert result["groups"]["task"]["dominant_color"]["model"]["count"] == 4
    assert 0.0 <= result["groups"]["task"]["dominant_color"]["model"]["mean_reward"] <= 1.0
    assert result["settings"]["max_new_tokens"] == 6 and result["settings"]["temperature"] == 0.0


def test_cli_eval_help_and_errors(tmp_path: Path, capsys) -> None:
    proc = subprocess.run([sys.executable, "-m", "mmrl.cli", "eval", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "random" in proc.stdout and "--max-prompt-tokens" in proc.stdout
    assert main(["eval", "--model", "tiny:qwen2.5-vl", "--data", str(tmp_path / "none"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmrl eval: error: no dataset at")
    generate("dominant_color", n=1, out=tmp_path / "v", fmt="verl", progress=False)
    assert main(["eval", "--model", "tiny:qwen2.5-vl", "--data", str(tmp_path / "v"), "--quiet"]) == 2
    assert "parquet export" in capsys.readouterr().err
