"""What a user owns is never destroyed or silently replaced, and files we read stay data.

build-tiny into a folder with other files, a fresh run into a folder that holds one, a cold start from
an SFT model made with other settings, dataset media paths that leave the dataset folder, and hub ids
that would download without being asked to.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from PIL import Image
from tiny_runs import QUICKSTART, ROOT, quickstart_config

from mmrl.config import RunConfig
from mmrl.errors import DatasetError, MMRLError
from mmrl.grpo.checkpoint import list_checkpoints
from mmrl.grpo.trainer import train
from mmrl.sample import read_dataset
from mmrl.sft import cold_start
from mmrl.tiny import TINY_MARKER, build_tiny


def mmrl_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mmrl.cli", *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600
    )


def digest(folder: Path) -> dict[str, str]:
    """Every file under `folder` with the sha256 of its bytes."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------------------------------
# build-tiny


@pytest.mark.slow
def test_build_tiny_refuses_a_folder_with_other_files_and_keeps_them(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("two years of work")
    (out / "data").mkdir()
    (out / "data" / "results.csv").write_text("1,2,3")
    before = digest(out)

    with pytest.raises(MMRLError, match=r"not empty \(2 entries: data, thesis.tex\).*--overwrite"):
        build_tiny("qwen2.5-vl", out)
    assert digest(out) == before

    cli = mmrl_cli("build-tiny", "--family", "qwen2.5-vl", "--out", str(out))
    assert cli.returncode == 2
    assert cli.stderr.count("\n") == 1 and "mmrl build-tiny: error:" in cli.stderr and "--overwrite" in cli.stderr
    assert digest(out) == before

    cli = mmrl_cli("build-tiny", "--family", "qwen2.5-vl", "--out", str(out), "--overwrite")
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert (out / "config.json").is_file() and not (out / "thesis.tex").exists()


def test_build_tiny_fills_an_empty_folder_and_replaces_an_earlier_build(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    build_tiny("qwen2-vl", out, seed=0)
    marker = json.loads((out / TINY_MARKER).read_text())
    assert marker["family"] == "qwen2-vl" and marker["seed"] == 0
    first = digest(out)

    build_tiny("qwen2-vl", out, seed=1)  # an earlier tiny build is ours to replace
    assert json.loads((out / TINY_MARKER).read_text())["seed"] == 1
    assert digest(out) != first

    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    with pytest.raises(MMRLError, match="not a folder"):
        build_tiny("qwen2-vl", a_file, overwrite=True)
    assert a_file.read_text() == "not a folder"


# --------------------------------------------------------------------------------------------------
# A fresh run into a folder that holds one


def quick(tmp_path: Path, *overrides: str) -> RunConfig:
    return quickstart_config(
        tmp_path, "train.cold_start=false", "train.steps=2", "train.save_every=1", "data.prompts_per_step=2",
        "rollout.n=2", "data.eval_samples=0", "log.plot=false", "log.tensorboard=false", *overrides,
    )  # fmt: skip


@pytest.mark.slow
def test_a_fresh_run_never_replaces_an_earlier_one_without_being_told(tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(quick(tmp_path))
    assert [p.name for p in list_checkpoints(run)] == ["step-0000001", "step-0000002"]
    before = digest(run)

    with pytest.raises(MMRLError) as err:
        train(quick(tmp_path, "train.steps=1"))
    message = str(err.value)
    assert "already holds a run" in message and "checkpoints" in message and "metrics.jsonl" in message
    assert "train.resume=auto" in message and "train.overwrite=true" in message and "train.out_dir" in message
    assert digest(run) == before  # no checkpoint pruned, no metrics line cut, final/ untouched

    # The same refusal from the CLI: one line, and before any model is loaded (an unbuilt tiny model stays unbuilt).
    cache = tmp_path / "empty-cache"
    env = {**os.environ, "MMRL_CACHE": str(cache)}
    cli = mmrl_cli("train", "--config", str(QUICKSTART), f"train.out_dir={run}", "train.cold_start=false",
                   "model.path=tiny:qwen3-vl", env=env)  # fmt: skip
    assert cli.returncode == 2 and cli.stderr.count("\n") == 1 and "already holds a run" in cli.stderr
    assert not (cache / "models").exists()
    assert digest(run) == before

    train(quick(tmp_path, "train.steps=1", "train.overwrite=true"))
    assert [p.name for p in list_checkpoints(run)] == ["step-0000001"]  # the old step-2 cannot win resume=auto
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1]


@pytest.mark.slow
def test_cold_start_reuses_only_a_model_made_with_the_same_settings(tmp_path: Path, capsys) -> None:
    base = ("train.cold_start=true", "sft.steps=1", "sft.batch_size=2")
    warm = cold_start(quick(tmp_path, *base))
    assert (warm / "config.json").is_file()
    assert "supervised fine-tuning into" in capsys.readouterr().out
    trained = digest(warm)

    assert cold_start(quick(tmp_path, *base)) == warm
    assert "reusing" in capsys.readouterr().out
    assert digest(warm) == trained

    with pytest.raises(MMRLError) as err:
        cold_start(quick(tmp_path, *base, "model.path=tiny:qwen3-vl", "sft.lr=1e-5"))
    message = str(err.value)
    assert "model.path: 'tiny:qwen2.5-vl' -> 'tiny:qwen3-vl'" in message and "sft.lr" in message
    assert "sft.out_dir" in message and "train.overwrite=true" in message
    assert digest(warm) == trained

    # Settings the SFT model does not depend on (GRPO's own) do not block reuse.
    assert cold_start(quick(tmp_path, *base, "train.lr=1e-6", "rollout.n=4")) == warm

    # A model made before a config key existed (its config.yaml lacks data.sources[i].steps) is reused.
    saved = warm.parent / "config.yaml"
    config = yaml.safe_load(saved.read_text())
    config["data"]["sources"] = [{k: v for k, v in s.items() if k != "steps"} for s in config["data"]["sources"]]
    saved.write_text(yaml.safe_dump(config))
    assert cold_start(quick(tmp_path, *base)) == warm

    cold_start(quick(tmp_path, *base, "model.path=tiny:qwen3-vl", "train.overwrite=true"))
    assert json.loads((warm / "config.json").read_text())["model_type"] == "qwen3_vl"
    assert "retraining" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------------
# Dataset media paths


@pytest.mark.parametrize("media_path", ["../outside.png", "OUTSIDE_ABSOLUTE", "/etc/passwd", "media/../../outside.png",
                                        "media/link.png"])  # fmt: skip
@pytest.mark.slow
def test_dataset_media_outside_its_folder_are_refused_with_file_and_line(tmp_path: Path, media_path: str) -> None:
    outside = tmp_path / "outside.png"
    Image.new("RGB", (8, 8), "red").save(outside)
    data = tmp_path / "data"
    (data / "media").mkdir(parents=True)
    Image.new("RGB", (8, 8), "blue").save(data / "media" / "ok.png")
    (data / "media" / "link.png").symlink_to(outside)
    path = str(outside) if media_path == "OUTSIDE_ABSOLUTE" else media_path

    def record(i: int, image: str) -> str:
        content = [{"type": "image", "image": image}, {"type": "text", "text": "Which colour?"}]
        return json.dumps({"id": f"s{i}", "task": "dominant_color", "answer": "red",
                           "messages": [{"role": "user", "content": content}]})  # fmt: skip

    (data / "samples.jsonl").write_text(record(0, "media/ok.png") + "\n" + record(1, path) + "\n")
    with pytest.raises(DatasetError) as err:
        read_dataset(data)
    assert f"{data / 'samples.jsonl'}:2:" in str(err.value) and "outside the dataset folder" in str(err.value)

    # eval reads the same file: one line naming it, before any model is loaded.
    cli = mmrl_cli("eval", "--model", "tiny:qwen2.5-vl", "--data", str(data),
                   env={**os.environ, "MMRL_CACHE": str(tmp_path / "cache")})  # fmt: skip
    assert cli.returncode == 2 and "samples.jsonl:2" in cli.stderr and "outside the dataset folder" in cli.stderr


@pytest.mark.slow
def test_train_and_sft_refuse_a_dataset_that_points_outside(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    content = [{"type": "image", "image": "/etc/hostname"}, {"type": "text", "text": "Which colour?"}]
    line = {"id": "s0", "task": "dominant_color", "answer": "red", "messages": [{"role": "user", "content": content}]}
    (data / "samples.jsonl").write_text(json.dumps(line) + "\n")
    for verb in ("train", "sft"):
        cli = mmrl_cli(verb, "--config", str(QUICKSTART), f"train.out_dir={tmp_path / verb}",
                       f"sft.out_dir={tmp_path / verb / 'sft'}", "train.cold_start=false", "train.steps=1",
                       "sft.steps=1", f"data.sources=[{{task: dominant_color, path: {data}}}]")  # fmt: skip
        assert cli.returncode == 2, (verb, cli.stderr[-2000:])
        assert "samples.jsonl:1" in cli.stderr and "outside the dataset folder" in cli.stderr


# --------------------------------------------------------------------------------------------------
# Hub ids download only when asked to


class _Hub(BaseHTTPRequestHandler):
    """A local stand-in for the Hub's HTTP endpoint that records every request and has no models."""

    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.requests.append(self.path)
        self.send_response(404)
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def local_hub():
    _Hub.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Hub.requests
    server.shutdown()


@pytest.mark.slow
def test_a_hub_id_is_never_fetched_unless_allowed(tmp_path: Path, local_hub) -> None:
    endpoint, requests = local_hub
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf"), "MMRL_CACHE": str(tmp_path / "c")}
    env.pop("HF_HUB_OFFLINE", None)

    script = (
        "import sys; from mmrl.config import ModelConfig; from mmrl.models import load_policy\n"
        "from mmrl.errors import MMRLError\n"
        "try:\n    load_policy(ModelConfig(path='someone/some-vl-model', allow_download=sys.argv[1] == '1'))\n"
        "except MMRLError as e:\n    print(e)\n"
    )
    off = subprocess.run([sys.executable, "-c", script, "0"], capture_output=True, text=True, env=env, timeout=300)
    assert "not in the Hugging Face cache" in off.stdout and "model.allow_download=true" in off.stdout
    assert requests == []  # not a single request left the machine

    offline = subprocess.run([sys.executable, "-c", script, "1"], capture_output=True, text=True,
                             env={**env, "HF_HUB_OFFLINE": "1"}, timeout=300)  # fmt: skip
    assert "cannot load" in offline.stdout and requests == []  # HF_HUB_OFFLINE wins over the flag

    on = subprocess.run([sys.executable, "-c", script, "1"], capture_output=True, text=True, env=env, timeout=300)
    assert "cannot load" in on.stdout
    assert any("some-vl-model" in r for r in requests)  # asked for it: the fetch was really attempted
