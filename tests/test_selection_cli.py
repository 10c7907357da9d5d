"""`mmrl select` on the real tiny model, end to end: generate a pool, score it (MCTS and pass rate), train on the
selected set with configs/thinklite_tiny.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmrl.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_select_names_a_missing_dataset_and_a_bad_threshold(tmp_path: Path, capsys) -> None:
    assert main(["select", "--data", str(tmp_path / "none"), "--model", "tiny:qwen2.5-vl", "--out", str(tmp_path)]) == 2
    assert "has no samples.jsonl" in capsys.readouterr().err
    args = ["select", "--data", str(tmp_path), "--model", "m", "--out", str(tmp_path / "o"), "--threshold", "vqa"]
    assert main(args) == 2
    assert "--threshold takes TASK=SCORE" in capsys.readouterr().err


@pytest.mark.slow
def test_generate_select_and_train_on_the_selected_set(tmp_path: Path, capsys) -> None:
    pool, out = tmp_path / "pool", tmp_path / "select"
    assert main(["generate", "--task", "dominant_color", "--n", "10", "--out", str(pool), "--quiet",
                 "--param", "image_size=56"]) == 0  # fmt: skip
    select = ["select", "--data", str(pool), "--model", "tiny:qwen2.5-vl", "--quiet", "--max-iterations", "2",
              "--max-steps", "2", "--step-tokens", "4", "--trees", "4"]  # fmt: skip
    assert main([*select, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "10 samples (0 resumed, 10 scored now" in printed and "| K > 5 or unsolved |" in printed
    records = [json.loads(line) for line in (out / "difficulty.jsonl").read_text().splitlines()]
    assert len(records) == 10 and all(r["iterations"] == (r["K"] or 2) and r["tokens"] > 0 for r in records)
    kept = (out / "selected" / "samples.jsonl").read_text().splitlines()
    assert len(kept) == sum(r["K"] is None or r["K"] > 5 for r in records)
    assert (out / "sweep.md").exists() and json.loads((out / "select.json").read_text())["method"] == "mcts"

    assert main([*select, "--out", str(out)]) == 0  # a rerun resumes: nothing left to score
    assert "10 resumed, 0 scored now" in capsys.readouterr().out

    rates = tmp_path / "passrate"
    assert main([*select[:6], "--method", "passrate", "--n", "2", "--max-new-tokens", "4", "--out", str(rates)]) == 0
    lines = [json.loads(line) for line in (rates / "difficulty.jsonl").read_text().splitlines()]
    assert len(lines) == 10 and all(r["n"] == 2 and r["difficulty"] == 1 - r["pass_rate"] for r in lines)

    if kept:
        run = tmp_path / "run"
        overrides = ["model.path=tiny:qwen2.5-vl", f"data.sources.0.path={out / 'selected'}", "train.steps=2",
                     f"train.out_dir={run}", "data.eval_samples=0", "data.prompts_per_step=2", "rollout.n=2",
                     "train.save_every=100", "train.eval_every=0", "train.micro_batch_size=4"]  # fmt: skip
        assert main(["train", "--config", str(ROOT / "configs" / "thinklite_tiny.yaml"), *overrides]) == 0
        metrics = (run / "metrics.jsonl").read_text().splitlines()
        assert len([m for m in map(json.loads, metrics) if "reward" in json.dumps(m)]) >= 2
