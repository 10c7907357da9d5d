"""The web explorer with the real browser (Debian's chromium through Playwright), on loopback only.

Covered: pair folder contents, byte-identical reruns, replaying stored walks gives the stored
screenshots back, drops counted by reason (new tab, dialog, destructive text, HTTP 404), the host
policy, hung / crashed / redirect-looping pages skipped while the exploration goes on, and Ctrl-C
leaving no browser process behind.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("playwright")
if __import__("shutil").which("chromium") is None:
    pytest.skip("Debian's chromium is not installed (scripts/setup.sh installs it)", allow_module_level=True)

from mmrl import web_explorer, web_walk  # noqa: E402
from mmrl.errors import ConfigError  # noqa: E402
from mmrl.image_hash import hamming, phash  # noqa: E402
from mmrl.web_actions import DESTRUCTIVE, MAX_BOX_SHARE  # noqa: E402
from mmrl.web_browser import RateLimit, check_url, launch_browser  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _records(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]


def _write_site(root: Path, pages: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, body in pages.items():
        (root / name).write_text(f"<!doctype html><html><body style='font:16px sans-serif'>{body}</body></html>")
    return root


# --------------------------------------------------------------------------------------------------
# Pure helpers


def test_phash_is_stable_and_tells_screens_apart():
    def screen(lines: list[str], bar: tuple[int, int, int]) -> np.ndarray:
        im = Image.new("RGB", (320, 200), (244, 245, 248))
        draw = ImageDraw.Draw(im)
        draw.rectangle([0, 0, 319, 30], fill=bar)
        for i, line in enumerate(lines):
            draw.text((12, 40 + 18 * i), line, fill=(20, 30, 50))
        return np.asarray(im)

    text = ["Buy milk", "Call the plumber", "Water the plants", "Read chapter 4", "Fix the bike light"]
    base = screen(text, (43, 76, 126))
    nudged = screen([*text[:-1], "Fix the bike lights"], (43, 76, 126))  # one character more
    other = screen(["Settings", "Dark theme", "Compact rows", "Language"], (120, 40, 40))
    assert phash(base) == phash(base.copy())
    assert hamming(phash(base), phash(nudged)) <= web_explorer.NEAR_DUPLICATE_BITS
    assert hamming(phash(base), phash(other)) > 3 * web_explorer.NEAR_DUPLICATE_BITS


def test_hosts_other_than_loopback_are_refused_unless_allowlisted(tmp_path):
    check_url("http://127.0.0.1:8000/app/", ())
    check_url("http://localhost/", ())
    with pytest.raises(ConfigError, match="example.com"):
        check_url("https://example.com/", ())
    with pytest.raises(ConfigError, match="only http"):
        check_url("file:///etc/passwd", ())
    check_url("https://example.com/", ("example.com",))  # allowlisted: accepted (then rate-limited)
    with pytest.raises(ConfigError, match="example.com"):
        web_explorer.explore("http://example.com/", tmp_path / "out", seed=0, walks=1, progress=False)
    with pytest.raises(ConfigError, match="neither a folder"):
        web_explorer.explore(tmp_path / "missing", tmp_path / "out2", seed=0, walks=1, progress=False)


def test_rate_limit_spaces_actions_on_an_allowlisted_host():
    rate = RateLimit(interval_s=0.25)
    t0 = time.monotonic()
    for _ in range(3):
        rate.wait("https://example.com/a")
    assert time.monotonic() - t0 >= 0.5
    t0 = time.monotonic()
    for _ in range(3):
        rate.wait("http://127.0.0.1:9/")  # loopback: never slowed down
    assert time.monotonic() - t0 < 0.1


def test_destructive_text_is_recognised():
    for text in ["Delete account", "Log out", "logout", "Buy now", "Checkout", "Submit order", "Unsubscribe"]:
        assert DESTRUCTIVE.search(text), text
    for text in ["Add", "Settings", "Payload viewer", "Removed items list"]:
        assert not DESTRUCTIVE.search(text), text


# --------------------------------------------------------------------------------------------------
# The default apps: records, determinism, cache, replay


@pytest.mark.slow
def test_default_pairs_are_valid_deterministic_cached_and_replayable(tmp_path):
    n = 12
    folder = web_explorer.default_pairs(tmp_path / "cache", seed=3, n=n, k_values=(1, 2), progress=False)
    records = _records(folder)
    assert len(records) == n
    assert {r["k"] for r in records} <= {1, 2}
    for r in records:
        for key in ("image_before", "image_after"):
            path = (folder / r[key]).resolve()
            assert path.is_relative_to(folder.resolve()) and r[key].startswith("media/")
            with Image.open(path) as im:
                assert list(im.size) == r["viewport"] == [640, 400]
        action = r["action"]
        if action["action_type"] == "click":
            x1, y1, x2, y2 = action["bbox"]
            assert x1 <= action["x"] <= x2 and y1 <= action["y"] <= y2
            assert 0 < (x2 - x1) * (y2 - y1) <= MAX_BOX_SHARE * 640 * 400
        assert r["url_before"].startswith("/") and r["dpr"] == 1 and r["scroll_convention"] == "content"
        if r["url_before"] == r["url_after"] and r["k"] == 1:
            assert r["diff_ratio"] > web_explorer.NO_CHANGE_RATIO

    # Cached: the second call returns the same folder without exploring again.
    stamp = (folder / "pairs.jsonl").stat().st_mtime_ns
    assert web_explorer.default_pairs(tmp_path / "cache", seed=3, n=n, k_values=(1, 2), progress=False) == folder
    assert (folder / "pairs.jsonl").stat().st_mtime_ns == stamp

    # Same seed, same site: the same bytes.
    again = tmp_path / "again"
    web_explorer.explore(web_explorer.WEBAPPS, again, seed=3, walks=4 * n, k_values=(1, 2), max_pairs=n, progress=False)
    assert (again / "pairs.jsonl").read_bytes() == (folder / "pairs.jsonl").read_bytes()
    for r in records:
        assert (again / r["image_after"]).read_bytes() == (folder / r["image_after"]).read_bytes()

    # Replay: re-executing each walk from its start gives back every stored screenshot.
    walks = {w["traj_id"]: w for w in map(json.loads, (folder / "walks.jsonl").read_text().splitlines())}
    for traj in sorted({r["traj_id"] for r in records}):
        shots = web_explorer.replay(web_explorer.WEBAPPS, walks[traj])
        for r in (r for r in records if r["traj_id"] == traj):
            for key, index in (("phash_before", r["step"]), ("phash_after", r["step"] + r["k"])):
                replayed = phash(np.asarray(Image.open(__import__("io").BytesIO(shots[index])).convert("RGB")))
                assert hamming(replayed, r[key]) <= 2, (r["id"], key)


# --------------------------------------------------------------------------------------------------
# Drops and broken pages


def test_side_effects_are_dropped_and_counted(tmp_path):
    site = _write_site(
        tmp_path / "site",
        {
            "index.html": (
                "<h1>Side effects</h1>"
                "<p><a href='other.html' target='_blank'>Open in a new tab</a></p>"
                "<p><button onclick=\"alert('hi')\">Say hi</button></p>"
                "<p><button onclick=\"document.body.innerHTML='<h1>gone</h1>'\">Delete everything</button></p>"
                "<p><a href='missing.html'>A broken link</a></p>"
            ),
            "other.html": "<h1>Other</h1>",
        },
    )
    report = web_explorer.explore(site, tmp_path / "out", seed=0, walks=6, walk_length=(3, 3), progress=False)
    for reason in ("new_tab", "dialog", "destructive", "http_error"):
        assert report.drops.get(reason, 0) >= 1, (reason, report.drops)
    # Nothing kept here: every action on this page is a side effect or destructive.
    kept = [r for r in _records(tmp_path / "out") if r["url_before"] == "/index.html"]
    assert not [r for r in kept if r["element"]["name"] in ("Open in a new tab", "Say hi", "Delete everything")]
    assert "Delete everything" not in (tmp_path / "out" / "walks.jsonl").read_text()  # never clicked


def test_hung_and_redirect_looping_pages_are_skipped_and_exploring_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(web_walk, "STEP_DEADLINE_S", 3.0)
    site = _write_site(
        tmp_path / "site",
        {
            "index.html": (
                "<h1>Traps</h1><p><button onclick='while (true) {}'>Freeze</button></p>"
                "<p><a href='loop_a.html'>Loop</a></p>"
                "<p><button onclick=\"this.textContent = this.textContent + '!'; "
                "document.body.style.background = '#' + (this.textContent.length % 9) + 'a3'\">Grow</button></p>"
            ),
            "loop_a.html": "<script>location.replace('loop_b.html')</script>a",
            "loop_b.html": "<script>location.replace('loop_a.html')</script>b",
        },
    )
    report = web_explorer.explore(site, tmp_path / "out", seed=1, walks=6, walk_length=(2, 2), progress=False)
    assert report.drops.get("hang", 0) >= 1, report.drops
    assert report.drops.get("redirect_loop", 0) >= 1, report.drops
    assert report.walks == 6 and report.pairs >= 1  # the other walks still produced pairs


def test_a_crashed_renderer_is_counted_and_the_browser_goes_on(tmp_path):
    with web_explorer._open_site(_write_site(tmp_path / "site", {"index.html": "<button>ok</button>"}), ()) as site:
        with launch_browser() as browser:
            walker = web_walk.Walker(browser, site, (320, 200), ())
            crashed = web_walk.Site(base=site.base, starts=["chrome://crash"], local=False)
            states, steps = walker.walk(np.random.default_rng(0), crashed.starts[0], 2)
            assert states == [] and steps == []
            assert sum(n for reason, n in walker.drops.items() if reason.startswith("start_")) == 1
            states, _ = walker.walk(np.random.default_rng(0), site.starts[0], 1)
            assert len(states) >= 1  # the same browser explores the next walk


# --------------------------------------------------------------------------------------------------
# Ctrl-C


@pytest.mark.slow
def test_sigint_leaves_no_browser_process(tmp_path):
    code = (
        "from pathlib import Path; from mmrl.web_explorer import explore, WEBAPPS; "
        f"explore(WEBAPPS, Path({str(tmp_path / 'out')!r}), seed=0, walks=500, progress=False)"
    )
    # SIGINT as a terminal delivers it: a suite started in the background (`cmd &` in a script) runs with SIGINT
    # ignored, which its children inherit, and Python then installs no KeyboardInterrupt handler at all
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    seen: set[int] = set()
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            kids = psutil.Process(proc.pid).children(recursive=True)
            seen |= {k.pid for k in kids}
            names = Counter(k.name() for k in kids if k.is_running())
            walks = tmp_path / "out" / "walks.jsonl"
            if any("chrom" in name for name in names) and walks.is_file() and walks.stat().st_size > 0:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the explorer never started its browser")
        seen |= {k.pid for k in psutil.Process(proc.pid).children(recursive=True)}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.5)
    left = [pid for pid in seen if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes left behind: {left}"
