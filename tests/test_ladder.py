"""The learning ladder (scripts/ladder.py): its verdict rule, its cue sources, the docs table, and (slow) a
rung trained end to end whose held-out reward must clear both baselines."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from mmrl.config import RunConfig, load_config
from mmrl.video import read_frames, video_info

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("ladder", ROOT / "scripts" / "ladder.py")
ladder = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ladder)
RUNGS = sorted((ROOT / "configs" / "ladder").glob("*.yaml"))
FAMILIES = {"image_jigsaw", "video_jigsaw", "depth_jigsaw", "anomaly_grounding", "object_counting",
            "temporal_jigsaw", "spy", "referring_grounding", "object_detection", "gui_inverse_dynamics",
            "caption_refine", "edit_prediction"}  # fmt: skip


def row(**changes) -> dict:
    base = {"name": "r", "after_reward_sampled": 0.6, "after_spread": 0.5, "random": 0.3, "constant": 0.4,
            "constant_spread": 1 / 32}  # fmt: skip
    return base | changes


def test_every_task_family_has_a_rung_whose_config_loads() -> None:
    assert FAMILIES <= {p.stem for p in RUNGS}
    for path in RUNGS:
        cfg = load_config(RunConfig, path, [])
        assert cfg.train.steps > 0 and cfg.data.eval_samples > 0 and cfg.data.eval_k > 0, path.name
        assert cfg.train.out_dir == f"runs/ladder/{path.stem}", path.name


def test_a_rung_learns_only_above_both_baselines_with_more_than_one_answer() -> None:
    assert ladder.verdict(row(), 0.05) == "learns"
    assert ladder.verdict(row(after_reward_sampled=0.44), 0.05).startswith("below the bar (0.450)")  # < constant
    assert ladder.verdict(row(constant=0.2, random=0.58), 0.05).startswith("below")  # < random + margin
    assert ladder.verdict(row(after_spread=1 / 32), 0.05).startswith("below")  # one reply to every prompt
    assert ladder.verdict({"name": "r", "error": "boom"}, 0.05) == "failed: boom"


def test_ramps_give_each_tile_its_column_by_brightness_and_repeat_byte_for_byte(tmp_path: Path) -> None:
    first = ladder.write_ramps(tmp_path / "a", count=12, seed=3)
    again = ladder.write_ramps(tmp_path / "b", count=12, seed=3)
    other = ladder.write_ramps(tmp_path / "c", count=12, seed=4)

    def digest(folder: Path) -> list[str]:
        return [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.png"))]

    assert digest(first) == digest(again) != digest(other)
    rewritten = digest(ladder.write_ramps(tmp_path / "a", count=12, seed=3))  # in place, through a staging folder
    assert rewritten == digest(first) and sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]
    for path in sorted(first.glob("*.png")):
        pixels = np.asarray(Image.open(path), dtype=float)
        thirds = [pixels[:, i * 56 : (i + 1) * 56].mean() for i in range(3)]
        assert thirds[0] + 20 < thirds[1] < thirds[2] - 20, (path.name, thirds)


def test_fades_give_each_clip_its_place_in_time_by_brightness_and_repeat_byte_for_byte(tmp_path: Path) -> None:
    kwargs = dict(count=3, size=32, fps=4.0, seconds=6.0)
    first = ladder.write_fades(tmp_path / "a", seed=3, **kwargs)
    again = ladder.write_fades(tmp_path / "b", seed=3, **kwargs)
    other = ladder.write_fades(tmp_path / "c", seed=4, **kwargs)

    def digest(folder: Path) -> list[str]:
        return [hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.mp4"))]

    assert digest(first) == digest(again) != digest(other)
    for path in sorted(first.glob("*.mp4")):
        info = video_info(path)
        assert info.num_frames == 24 and abs(info.fps - 4.0) < 1e-6, (path.name, info)
        frames = read_frames(path, list(range(24))).frames.astype(float)  # decoded back through decord
        thirds = [frames[i * 8 : (i + 1) * 8].mean() for i in range(3)]
        assert thirds[0] + 20 < thirds[1] < thirds[2] - 20, (path.name, thirds)


def test_the_table_goes_between_the_markers_and_the_prose_stays(tmp_path: Path) -> None:
    page = tmp_path / "ladder.md"
    page.write_text(f"# Ladder\nintro\n{ladder.TABLE_START}\nold\n{ladder.TABLE_END}\nfindings\n")
    ladder.write_table(page, "| new |")
    assert page.read_text() == f"# Ladder\nintro\n{ladder.TABLE_START}\n| new |\n{ladder.TABLE_END}\nfindings\n"


def test_a_reused_cold_start_adds_its_step_times_and_the_ceiling_shows_beside_its_rung(tmp_path: Path) -> None:
    sft = tmp_path / "sft"
    sft.mkdir()
    steps = [{"step": k, "time": 1000.0 + 30 * k, "time/step": 30.0} for k in range(1, 5)]  # 4 steps of 30 s
    (sft / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))
    assert ladder.cold_start_minutes(sft, finished_before=2000.0) == pytest.approx(2.0)  # ran before: reused
    assert ladder.cold_start_minutes(sft, finished_before=1050.0) == 0.0  # ran inside this command: counted already
    assert ladder.cold_start_minutes(tmp_path / "none", finished_before=2000.0) == 0.0
    row = {"name": "r", "setting": "s", "steps": 1, "minutes": 3.0, "before_reward": 0.1, "after_reward": 0.2,
           "before_reward_sampled": 0.1, "after_reward_sampled": 0.2, "random": 0.1, "constant": 0.2,
           "constant_spread": 0.02, "after_spread": 0.02, "after_top_share_sampled": 1.0}  # fmt: skip
    assert "| 3.0* |" in ladder.table([{**row, "cold_start_reused": True}], 0.05)
    assert "| 3.0 |" in ladder.table([row], 0.05)
    ceiling = {**row, "before_reward": 0.9, "before_reward_sampled": 0.85}
    assert "| 0.900 / 0.850 |" in ladder.table([row], 0.05, {"r": ceiling})
    assert "| — |" in ladder.table([row], 0.05, {"other": ceiling})


def test_the_docs_table_has_a_measured_row_for_every_task_family() -> None:
    text = (ROOT / "docs" / "ladder.md").read_text()
    table = text.split(ladder.TABLE_START)[1].split(ladder.TABLE_END)[0]
    rows = {line.split("|")[1].strip() for line in table.strip().splitlines()[2:]}
    assert FAMILIES <= rows


@pytest.mark.slow
def test_the_cue_rung_learns_above_both_baselines(tmp_path: Path) -> None:
    """The whole ladder path on one rung: cold start, GRPO, held-out eval greedy and sampled, the verdict."""
    config = ROOT / "configs" / "ladder" / "image_jigsaw_cue.yaml"
    ramps = ladder.write_ramps(tmp_path / "ramps")
    assert yaml.safe_load(config.read_text())["data"]["sources"][0]["source"] == "runs/ladder/cues/ramps"
    result = ladder.run_rung(config, tmp_path / "runs", [f"data.sources.0.source={ramps}"])
    assert "error" not in result, result
    assert ladder.verdict(result, 0.05) == "learns", result
    assert result["after_reward_sampled"] > result["before_reward_sampled"] + 0.1
