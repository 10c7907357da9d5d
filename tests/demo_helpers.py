"""Helpers of the demo's browser tests and timing benchmark: start the real app in a subprocess on a free port,
and save screenshots as artefacts."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

SMALL_CORPUS = ("max_photos=2", "videos_per_photo=1", "scene_videos=0", "rgbd_scenes=0")
"""A default corpus that builds in a few seconds and still serves the image and video tasks."""
START_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_demo(
    corpus_root: Path,
    roots: Sequence[Path],
    env: dict[str, str] | None = None,
    log: Path | None = None,
    overrides: Sequence[str] = SMALL_CORPUS,
) -> Iterator[str]:
    """`mmrl demo` serving the default corpus at `corpus_root`, described by the corpus `overrides` (built on first
    use; default: the small one), with the given `--root`s; yields its URL."""
    port = free_port()
    args = [sys.executable, "-m", "mmrl.cli", "demo", "--port", str(port)]
    for root in roots:
        args += ["--root", str(root)]
    args += [f"root={corpus_root}", *overrides]
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mmrl demo exited with {proc.returncode}" + (f"; log: {log}" if log else ""))
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"mmrl demo did not answer on {url} within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()


def save_screenshot(page, name: str, folder: Path) -> Path:
    """A full-page PNG of `page` as `folder/name.png`, copied into $MMRL_ARTIFACTS when it is set."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    extra = os.environ.get("MMRL_ARTIFACTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(extra) / path.name)
    return path


def choose(page, elem_id: str, value: str) -> None:
    """Pick `value` in the gradio dropdown `#elem_id` the way a person does: open it, click the option."""
    page.click(f"#{elem_id} input")
    page.click(f"#{elem_id} [role=option][aria-label='{value}']")


def open_tab(page, name: str) -> None:
    page.click(f"button[role=tab]:has-text('{name}')")
