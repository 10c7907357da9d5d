import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmrl.cli import build_parser, main
from mmrl.generate import generate

VERBS = sorted(build_parser()._subparsers._group_actions[0].choices)


def mmrl(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmrl.cli", *args], capture_output=True, text=True, env=env)


def test_top_level_help_lists_every_verb():
    out = mmrl("--help")
    assert out.returncode == 0
    assert "vision-language models" in out.stdout
    for verb in VERBS:
        assert verb in out.stdout


@pytest.mark.parametrize("verb", VERBS)
def test_each_verb_describes_itself(verb):
    out = mmrl(verb, "--help")
    assert out.returncode == 0, out.stderr
    assert f"usage: mmrl {verb}" in out.stdout
    assert len(out.stdout.split()) > 40  # a description, not just a usage line


def test_corpus_help_documents_config_keys():
    out = mmrl("corpus", "--help").stdout
    for key in ("rgbd_scenes", "video_frames", "seed", "root"):
        assert f"  {key} (" in out


def test_unknown_config_key_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rgbd_scene: 3\n")
    out = mmrl("corpus", "--config", str(bad), "--root", str(tmp_path / "c"))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "unknown config key 'rgbd_scene'" in lines[0] and str(bad) in lines[0] and "rgbd_scenes" in lines[0]
    out = mmrl("corpus", "--root", str(tmp_path / "c"), "video_frames=many")
    assert out.returncode == 2 and "'video_frames' expects int" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_build_tiny_writes_a_loadable_checkpoint(tmp_path):
    out = mmrl("build-tiny", "--family", "qwen2-vl", "--out", str(tmp_path / "tiny"), "--spec", "num_layers=3")
    assert out.returncode == 0, out.stderr
    assert str(tmp_path / "tiny") in out.stdout
    processor = AutoProcessor.from_pretrained(tmp_path / "tiny")
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "tiny")
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert model.config.get_text_config().num_hidden_layers == 3  # --spec sizes the build
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id


# --------------------------------------------------------------------------------------------------
# Bad values fail in one line, before any model or corpus is loaded

SPY = str(Path(__file__).resolve().parents[1] / "configs" / "spy_tiny.yaml")
EVAL = ["eval", "--model", "tiny:qwen2.5-vl", "--data", "data"]  # the dataset `workdir` makes
BAD_INPUTS = [
    # config values (issue 10): each used to fail after the model loaded, or to exit 0
    (["train", "train.lr=-1"], "config key 'train.lr' must be > 0, got -1.0"),
    (["train", "train.lr=.nan"], "config key 'train.lr' must be a finite number > 0, got nan"),
    (["train", "train.micro_batch_size=0"], "config key 'train.micro_batch_size' must be >= 1, got 0"),
    (["train", "rollout.n=0"], "config key 'rollout.n' must be >= 1, got 0"),
    (["train", "train.steps=-5"], "config key 'train.steps' must be >= 1, got -5"),
    (["sft", "sft.steps=-3"], "config key 'sft.steps' must be >= 1, got -3"),
    (["sft", "sft.batch_size=0"], "config key 'sft.batch_size' must be >= 1, got 0"),
    (["play", "--config", SPY, "game.games_per_step=0"], "config key 'game.games_per_step' must be >= 1, got 0"),
    (["corpus", "max_photos=-1"], "config key 'max_photos' must be >= 0, got -1"),
    (["train", "data.sources.1.weight=2"],
     "override 'data.sources.1.weight=2': 'data.sources' has no item '1' (valid indices: 0)"),
    # command-line arguments
    (["generate", "--task", "dominant_color", "--n", "2", "--out", "o", "--preview", "-1"],
     "argument --preview: must be >= 0, got -1"),
    (["generate", "--task", "dominant_color", "--n", "0", "--out", "o"], "argument --n: must be >= 1, got 0"),
    (["play", "--config", SPY, "--games", "0"], "argument --games: must be >= 1, got 0"),
    ([*EVAL, "--n", "0"], "argument --n: must be >= 1, got 0"),
    ([*EVAL, "--batch-size", "0"], "argument --batch-size: must be >= 1, got 0"),
    ([*EVAL, "--max-new-tokens", "-4"], "argument --max-new-tokens: must be >= 1, got -4"),
    ([*EVAL, "--max-prompt-tokens", "0"], "argument --max-prompt-tokens: must be >= 1, got 0"),
    ([*EVAL, "--max-pixels", "100"], "argument --max-pixels: must be >= 3136, got 100"),
    ([*EVAL, "--temperature", "-0.5"], "argument --temperature: must be a finite number >= 0, got '-0.5'"),
    ([*EVAL, "--temperature", "nan"], "argument --temperature: must be a finite number >= 0, got 'nan'"),
    # outputs: a folder that is a file, or eval's result file that is a folder
    (["build-tiny", "--out", "afile"], "--out afile is an existing file, not a folder"),
    (["corpus", "--root", "afile"], "corpus root afile is an existing file, not a folder"),
    (["corpus", "root=afile"], "corpus root afile is an existing file, not a folder"),
    (["train", "train.out_dir=afile"], "train.out_dir afile is an existing file, not a folder"),
    (["train", "train.cold_start=true", "sft.out_dir=afile"], "sft.out_dir afile is an existing file, not a folder"),
    (["sft", "sft.out_dir=afile"], "sft.out_dir afile is an existing file, not a folder"),
    (["play", "--config", SPY, "--out", "afile"], "--out afile is an existing file, not a folder"),
    (["play", "--config", SPY, "train.out_dir=afile"],
     "transcript folder afile/play lies inside afile, which is a file"),
    (["generate", "--task", "dominant_color", "--n", "2", "--out", "afile/o"],
     "--out afile/o lies inside afile, which is a file"),
    ([*EVAL, "--out", "data"], "--out data is an existing folder; give the path of a file"),
]  # fmt: skip


def run_main(argv: list[str]) -> int:
    """`mmrl.cli.main(argv)`, with argparse's usage errors (SystemExit) returned as their exit code."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty cache and a working folder holding a file `afile` and a one-sample dataset `data`."""
    monkeypatch.setenv("MMRL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "afile").write_text("not a folder")
    generate("dominant_color", n=1, out=tmp_path / "work" / "data", progress=False)
    monkeypatch.chdir(tmp_path / "work")
    return tmp_path


@pytest.mark.parametrize("argv, message", BAD_INPUTS, ids=[" ".join(argv) for argv, _ in BAD_INPUTS])
def test_bad_values_fail_in_one_line_before_any_work(workdir, capsys, argv, message):
    start = time.perf_counter()
    code = run_main(argv)
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0] == f"mmrl {argv[0]}: error: {message}"
    assert elapsed < 10
    assert not any((workdir / "cache").iterdir())  # no tiny model built, no corpus
    assert sorted(p.name for p in (workdir / "work").iterdir()) == ["afile", "data"]  # no run folder


def test_bad_values_import_no_model_code(workdir):
    """All the bad inputs above in one process: not one imports torch or the model code."""
    script = """
import json, sys
from mmrl.cli import main
codes = []
for argv in json.loads(sys.argv[1]):
    try:
        codes.append(main(argv))
    except SystemExit as e:
        codes.append(e.code)
print(codes, [m for m in ("torch", "mmrl.models", "mmrl.grpo.trainer") if m in sys.modules])
"""
    argvs = json.dumps([argv for argv, _ in BAD_INPUTS])
    out = subprocess.run([sys.executable, "-c", script, argvs], capture_output=True, text=True)
    assert out.stdout.strip() == f"{[2] * len(BAD_INPUTS)} []", out.stderr[-2000:]


def test_help_shows_config_ranges_and_argument_ranges():
    assert "  train.lr (float, > 0, default 1e-05): " in mmrl("train", "--help").stdout
    assert "  max_photos (int, >= 0, default 0): " in mmrl("corpus", "--help").stdout
    assert "at least model.min_pixels = 3136" in " ".join(mmrl("eval", "--help").stdout.split())
