"""A task written in another package, installed next to mmrl, is generated and trained by name.

The example plugin of docs/writing_a_task.md (examples/brightest_quadrant) is installed with pip into a
temporary folder (no index, no build isolation: nothing is downloaded); `mmrl` then runs in a subprocess
with that folder on its path, so `importlib.metadata` finds the plugin's entry point like any installed one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # pip installs and mmrl subprocesses

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "brightest_quadrant"


def run(*args: str, site: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example plugin, installed from its own pyproject.toml into a folder of its own."""
    site = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("source") / EXAMPLE.name
    shutil.copytree(EXAMPLE, source)  # setuptools builds inside the source folder: never in the repository
    out = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--no-build-isolation",
         "--disable-pip-version-check", "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    (entry_points,) = site.glob("mmrl_brightest_quadrant-*.dist-info/entry_points.txt")
    assert "brightest_quadrant = brightest_quadrant:BrightestQuadrant" in entry_points.read_text()
    return site


def test_an_installed_plugin_task_generates_and_trains_by_name(site: Path, tmp_path: Path) -> None:
    out = run("-m", "mmrl.cli", "generate", "--task", "brightest_quadrant", "--n", "4", "--out", str(tmp_path / "bq"),
              "--quiet", site=site, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "bq" / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 4 and {r["task"] for r in records} == {"brightest_quadrant"}
    assert {r["answer"] for r in records} <= {"top-left", "top-right", "bottom-left", "bottom-right"}

    train = run("-m", "mmrl.cli", "train", "--config", str(ROOT / "configs" / "quickstart.yaml"),
                "data.sources=[{task: brightest_quadrant}]", "train.cold_start=false", "train.steps=2",
                "data.prompts_per_step=2", "rollout.n=2", "data.eval_samples=2", "log.progress=false",
                f"train.out_dir={tmp_path / 'run'}", site=site, cwd=tmp_path)  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [0, 1, 2] and "reward/brightest_quadrant" in metrics[1]

    evaluated = run("-m", "mmrl.cli", "eval", "--model", "tiny:qwen2.5-vl", "--data", str(tmp_path / "bq"),
                    "--max-new-tokens", "8", "--quiet", site=site, cwd=tmp_path)  # fmt: skip
    assert evaluated.returncode == 0 and "brightest_quadrant" in evaluated.stdout, evaluated.stderr[-3000:]


def test_without_the_plugin_the_name_is_unknown_and_the_installed_ones_are_listed(tmp_path: Path) -> None:
    out = run("-m", "mmrl.cli", "generate", "--task", "brightest_quadrant", "--n", "1", "--out", str(tmp_path / "x"),
              site=tmp_path, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2
    assert "unknown task 'brightest_quadrant'" in out.stderr and "installed tasks: anomaly_grounding" in out.stderr


def write_distribution(site: Path, name: str, entry_points: str, module: str = "") -> None:
    """A minimal installed distribution: METADATA, entry_points.txt and, optionally, one module."""
    info = site / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    if module:
        (site / f"{name.replace('-', '_')}.py").write_text(module)


def test_a_name_declared_by_two_packages_is_an_error_naming_both(tmp_path: Path) -> None:
    write_distribution(tmp_path, "copycat", "[mmrl.tasks]\ndominant_color = copycat:Task\n")
    out = run("-m", "mmrl.cli", "generate", "--task", "image_jigsaw", "--n", "1", "--out", str(tmp_path / "x"),
              site=tmp_path, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2
    assert "task name 'dominant_color' is declared by two installed packages" in out.stderr
    assert "mmrl (pretext_tasks.diagnostic:DominantColorTask)" in out.stderr and "copycat (copycat:Task)" in out.stderr


def test_a_broken_plugin_names_itself(tmp_path: Path) -> None:
    write_distribution(tmp_path, "broken-plugin", "[mmrl.tasks]\nbroken = broken_plugin:Broken\n",
                       "import a_module_that_does_not_exist\n")  # fmt: skip
    out = run("-m", "mmrl.cli", "generate", "--task", "broken", "--n", "1", "--out", str(tmp_path / "x"),
              site=tmp_path, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2 and out.stderr.count("\n") == 1
    assert "task 'broken' (broken_plugin:Broken, package broken-plugin) failed to import" in out.stderr
    assert "a_module_that_does_not_exist" in out.stderr
