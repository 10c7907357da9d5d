import subprocess
import sys

import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor

from mmrl.cli import build_parser

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


def test_build_tiny_writes_a_loadable_checkpoint(tmp_path):
    out = mmrl("build-tiny", "--family", "qwen2-vl", "--out", str(tmp_path / "tiny"))
    assert out.returncode == 0, out.stderr
    assert str(tmp_path / "tiny") in out.stdout
    processor = AutoProcessor.from_pretrained(tmp_path / "tiny")
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "tiny")
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    assert processor.tokenizer.convert_tokens_to_ids("<|image_pad|>") == model.config.image_token_id
