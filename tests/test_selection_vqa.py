"""The `vqa` task and `mmrl import-vqa`: (image, question, answer) records, multiple choice made open-ended."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from mmrl import registry
from mmrl.cli import main
from mmrl.sample import read_dataset
from mmrl.selection import TaskVerifier
from pretext_tasks.vqa import normalize_vqa, read_vqa, vqa_reward


@pytest.fixture
def vqa_file(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    for name, colour in (("a.png", (200, 0, 0)), ("b.png", (0, 0, 200))):
        Image.new("RGB", (56, 56), colour).save(tmp_path / "img" / name)
    records = [
        {"id": "open", "image": "img/a.png", "question": "How many circles are there?", "answer": "3"},
        {"id": "letter", "image": "img/b.png", "question": "Which colour is it?", "choices": ["red", "blue", "green"],
         "answer": "B"},
        {"id": "index", "image": "img/a.png", "question": "Which shape?", "options": ["square", "disc"], "answer": 0},
        {"id": "text", "image": "img/a.png", "question": "What angle?", "choices": ["30", "60"], "answer": "60"},
        {"id": "no-image", "image": "img/missing.png", "question": "?", "answer": "1"},
        {"id": "bad-option", "image": "img/a.png", "question": "Which?", "choices": ["x", "y"], "answer": "D"},
        {"id": "no-question", "image": "img/a.png", "answer": "1"},
    ]  # fmt: skip
    path = tmp_path / "vqa.json"
    path.write_text(json.dumps(records))
    return path


def test_read_vqa_maps_answers_to_option_text_and_counts_skips(vqa_file: Path) -> None:
    report = read_vqa(vqa_file)
    assert {r.id: r.answer for r in report.records} == {"open": "3", "letter": "blue", "index": "square", "text": "60"}
    assert report.skipped == {"image file missing": 1, "answer names no option": 1, "no question": 1}
    assert read_vqa(vqa_file.parent).records == report.records  # a folder holding vqa.json


def test_import_vqa_writes_open_ended_samples(vqa_file: Path, tmp_path: Path, capsys) -> None:
    assert main(["import-vqa", "--in", str(vqa_file), "--out", str(tmp_path / "ds")]) == 0
    assert "4 records; skipped: 1 answer names no option" in capsys.readouterr().out
    samples = {s.id: s for s in read_dataset(tmp_path / "ds")}
    letter = samples["vqa-letter"]
    prompt = letter.messages[-1]["content"][1]["text"]
    assert letter.answer == "blue" and "Options" not in prompt and "red" not in prompt and "\\boxed{answer}" in prompt
    assert Path(letter.messages[-1]["content"][0]["image"]).is_file()  # copied into the dataset's media/
    verifier = TaskVerifier()
    task = registry.get_task("vqa")
    for sample in samples.values():
        assert verifier.solves(sample, task.reference_completion(sample))
    assert not verifier.solves(letter, "\\boxed{B}")  # open-ended: a letter is no answer


def test_keep_choices_lists_lettered_options(vqa_file: Path, tmp_path: Path) -> None:
    assert main(["import-vqa", "--in", str(vqa_file), "--out", str(tmp_path / "mc"), "--keep-choices"]) == 0
    sample = {s.id: s for s in read_dataset(tmp_path / "mc")}["vqa-letter"]
    assert sample.answer == "B" and "A. red; B. blue; C. green" in sample.messages[-1]["content"][1]["text"]


def test_import_vqa_errors_name_the_input(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["import-vqa", "--in", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "bad.json is not valid JSON" in capsys.readouterr().err


def test_vqa_reward_normalises_short_answers() -> None:
    assert normalize_vqa(" The  Red Car. ") == "red car"
    assert normalize_vqa("2.0") == "2" and normalize_vqa("1,000") == "1000" and normalize_vqa("0.50") == "0.5"
    assert vqa_reward("\\boxed{2.0}", "2", mode="boxed").parts == {"format": 1.0, "accuracy": 1.0}
    assert vqa_reward("\\boxed{3}", "2", mode="boxed").score == pytest.approx(0.1)
    assert vqa_reward("<answer>the red car</answer>", "Red car", mode="answer_tag").score == pytest.approx(1.0)
    assert vqa_reward(None, "2", mode="boxed").score == 0.0  # type: ignore[arg-type]
