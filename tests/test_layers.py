"""The layer contract (pyproject's [tool.importlinter]): imports point down, every module is in a layer,
and the engine reaches plugins only by name."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from importlinter.api import read_configuration

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mmrl", "pretext_tasks", "games", "rewards", "demos")
LINT = Path(sys.executable).parent / "lint-imports"


def layer_modules() -> list[str]:
    contract = read_configuration(str(ROOT / "pyproject.toml"))["contracts_options"][0]
    return [m.strip() for layer in contract["layers"] for m in re.split(r"[:|]", layer)]


def lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml")], capture_output=True, text=True,
                          cwd=root, env={"PYTHONPATH": str(root), "PATH": ""}, timeout=300)  # fmt: skip


def test_the_layer_contract_holds() -> None:
    out = lint(ROOT)
    assert out.returncode == 0 and "1 kept, 0 broken" in out.stdout, out.stdout[-3000:] + out.stderr[-2000:]


def test_every_module_is_in_a_layer() -> None:
    listed = layer_modules()
    for package in PACKAGES:
        for file in sorted((ROOT / package).rglob("*.py")):
            module = ".".join(file.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            if module in PACKAGES:
                continue  # the package itself (`mmrl/__init__.py` holds only the version)
            assert any(module == m or module.startswith(m + ".") for m in listed), f"{module} is in no layer"


def test_the_engine_never_names_a_plugin_module() -> None:
    """The issue's check: no `import pretext_tasks` / `import games` anywhere in mmrl/, function bodies included."""
    pattern = re.compile(r"^\s*(from|import) (pretext_tasks|games)\b", re.M)
    offenders = [str(p) for p in (ROOT / "mmrl").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []


@pytest.mark.slow
def test_the_contract_catches_an_upward_import(tmp_path: Path) -> None:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    producers = tmp_path / "mmrl" / "producers.py"
    producers.write_text(producers.read_text() + "\nfrom pretext_tasks.diagnostic import DominantColorTask  # noqa\n")
    out = lint(tmp_path)
    assert out.returncode != 0 and "BROKEN" in out.stdout
    assert "mmrl.producers -> pretext_tasks.diagnostic" in out.stdout


@pytest.mark.slow
def test_the_training_path_does_not_import_the_dataset_writers_or_any_plugin() -> None:
    """Training imports the trainer and the producers; dataset exporters, `mmrl generate` and the plugins load
    only when something asks for them (a task by name, `mmrl generate`)."""
    code = (
        "import sys, mmrl.grpo.trainer, mmrl.sft\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pretext_tasks', 'games')"
        " or m in ('mmrl.generate', 'mmrl.exporters', 'mmrl.preview', 'mmrl.evaluate')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
