"""Headless Chromium for the web explorer: serving a folder on loopback, the host policy, a
deterministic browser context, the settle wait, executing one action, and perceptual hashes.

The browser is Debian's `chromium` (installed by scripts/setup.sh), driven by Playwright; the
explorer never downloads a browser. Every page runs under a watchdog: a call that does not return
within its deadline (a `while (true)` in a click handler blocks even Playwright's mouse call)
kills the page's renderer, which turns the hang into a crash the caller catches as `PageBroken`.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import io
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import psutil
from PIL import Image

from mmrl.errors import ConfigError, MMRLError

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
# Freezes what would make two renders of the same state differ: animations, transitions, the
# blinking caret, smooth scrolling.
FREEZE_CSS = (
    "*, *::before, *::after { animation: none !important; transition: none !important;"
    " caret-color: transparent !important; scroll-behavior: auto !important; }"
)
# The page's clock and Math.random are fixed too (a clock or a random banner would differ run to run).
FREEZE_JS = """
(() => {
  const fixed = 1704067200000;  // 2024-01-01T00:00:00Z
  const RealDate = Date;
  class FixedDate extends RealDate { constructor(...a) { a.length ? super(...a) : super(fixed); } }
  FixedDate.now = () => fixed;
  window.Date = FixedDate;
  let s = 0x9e3779b9;
  Math.random = () => { s = (s + 0x6d2b79f5) | 0; let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t; return ((t ^ (t >>> 14)) >>> 0) / 4294967296; };
  const install = () => { const st = document.createElement("style"); st.textContent = %s;
    (document.head || document.documentElement).appendChild(st); };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", install); else install();
})();
"""
# One raster thread and no partial raster: with several, anti-aliased edges came out +-1 in some
# channels in about 1 of 8 renders of the same page (measured on chromium 156, software raster).
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-smooth-scrolling",
    "--font-render-hinting=none",
    "--force-color-profile=srgb",
    "--num-raster-threads=1",
    "--disable-partial-raster",
)
PAGES_JS = (Path(__file__).with_name("web_pages.js")).read_text(encoding="utf-8")


class PageBroken(MMRLError):
    """The page hung, crashed its renderer or looped on redirects; `reason` names which."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------------
# Sources and the host policy


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        pass


@contextlib.contextmanager
def serve_folder(root: Path) -> Iterator[str]:
    """Serve `root` read-only on 127.0.0.1 (a free port) for the duration; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="mmrl-web-serve", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def check_url(url: str, allow_hosts: tuple[str, ...]) -> None:
    """Refuse a source URL that is not http(s) on loopback or on the config's allowlist."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"source {url!r}: only http:// or https:// URLs (or a local folder) can be explored")
    host = host_of(url)
    if host not in LOOPBACK_HOSTS and host not in {h.lower() for h in allow_hosts}:
        raise ConfigError(
            f"source {url!r}: host {host!r} is not loopback; add it to allow_hosts to explore it "
            "(explored sites get clicked at random: only sites you own or are allowed to test)"
        )


@dataclass
class RateLimit:
    """At least `interval_s` between two actions on a page of the same non-loopback host."""

    interval_s: float = 1.0
    """Seconds between actions (navigations included) on one allowlisted host; loopback is unlimited."""
    last: dict[str, float] = field(default_factory=dict)
    """Monotonic time of the last action per host."""

    def wait(self, url: str) -> None:
        host = host_of(url)
        if not host or host in LOOPBACK_HOSTS:
            return
        gap = self.interval_s - (time.monotonic() - self.last.get(host, -1e9))
        if gap > 0:
            time.sleep(gap)
        self.last[host] = time.monotonic()


# --------------------------------------------------------------------------------------------------
# Images


def png_to_array(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


# --------------------------------------------------------------------------------------------------
# The browser


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise MMRLError(
            "the web explorer needs Debian's chromium: run scripts/setup.sh as root or `apt-get install chromium`"
        )
    return path


def _descendants() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _kill(pids: set[int]) -> None:
    for pid in sorted(pids):
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()


CLOSE_TIMEOUT_S = 5.0
"""Longest a graceful close of the browser or of Playwright's driver may take before their processes are killed."""


def _bounded(close: Any, before: set[int]) -> None:
    """`close()`, but if it has not returned after `CLOSE_TIMEOUT_S` (a Ctrl-C that landed inside Playwright's
    dispatcher can leave it waiting for an answer that never comes), kill the processes started since `before`:
    the driver's pipe then closes and the call returns or raises. Errors of the close are ignored."""
    timer = threading.Timer(CLOSE_TIMEOUT_S, lambda: _kill(_descendants() - before))
    timer.daemon = True
    timer.start()
    try:
        with contextlib.suppress(Exception):
            close()
    finally:
        timer.cancel()


@contextlib.contextmanager
def launch_browser() -> Iterator[Any]:
    """A headless Chromium that is closed on every exit path, Ctrl-C and SIGTERM included.

    SIGTERM is turned into KeyboardInterrupt while the browser is open (main thread only), so the
    same unwinding closes it. Processes the browser started that survive the close are killed: only
    those that appeared since this call, so other browsers of the same program are left alone.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:  # pragma: no cover - the dev extra installs it
        raise MMRLError("the web explorer needs the playwright package: pip install 'playwright>=1.45'") from e
    before = _descendants()
    old_term = None
    if threading.current_thread() is threading.main_thread():

        def _on_term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt("SIGTERM")

        old_term = signal.signal(signal.SIGTERM, _on_term)
    pw = sync_playwright().start()
    try:
        browser = pw.chromium.launch(
            executable_path=chromium_path(),
            headless=True,
            args=list(CHROMIUM_ARGS),
        )
        try:
            yield browser
        finally:
            _bounded(browser.close, before)
    finally:
        _bounded(pw.stop, before)
        _kill(_descendants() - before)
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[dict[str, bool]]:
    """Kill this program's Chromium renderers if the block has not finished after `seconds`.

    Yields a flag dict; `fired` is True when the deadline passed (the caller reports a hang, not a crash).
    """
    state = {"fired": False}

    def fire() -> None:
        state["fired"] = True
        for pid in _descendants():
            with contextlib.suppress(psutil.Error):
                if "--type=renderer" in psutil.Process(pid).cmdline():
                    psutil.Process(pid).kill()

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield state
    finally:
        timer.cancel()


def new_context(browser: Any, viewport: tuple[int, int], allow_hosts: tuple[str, ...]) -> Any:
    """A fresh context (empty storage, no history) with every rendering setting fixed.

    Requests to hosts other than loopback and `allow_hosts` are aborted (a page cannot reach out).
    """
    context = browser.new_context(
        viewport={"width": viewport[0], "height": viewport[1]},
        screen={"width": viewport[0], "height": viewport[1]},
        device_scale_factor=1,
        locale="en-US",
        timezone_id="UTC",
        reduced_motion="reduce",
        color_scheme="light",
        service_workers="block",
        accept_downloads=False,
    )
    context.add_init_script(FREEZE_JS % repr(FREEZE_CSS).replace("'", '"'))
    context.add_init_script(PAGES_JS)
    allowed = LOOPBACK_HOSTS | {h.lower() for h in allow_hosts}

    def guard(route: Any) -> None:
        if urlsplit(route.request.url).scheme in ("http", "https") and host_of(route.request.url) not in allowed:
            route.abort("blockedbyclient")
        else:
            route.continue_()

    context.route("**/*", guard)
    return context


SETTLE_INTERVAL_S = 0.3
SETTLE_MAX_S = 3.0
MAX_NAVIGATIONS_PER_STEP = 10


def settle(page: Any, navigations: list[int]) -> bytes:
    """Wait for the page to be still and return its viewport screenshot (PNG bytes).

    Load event, then network idle (best effort, 1.5 s), then screenshots every 300 ms until two in a
    row are byte-identical with no main-frame navigation between them (at most 3 s; the last one is
    used). More than 10 main-frame navigations within one step is a redirect loop (`PageBroken`).
    """

    def loaded() -> None:
        with contextlib.suppress(Exception):
            page.wait_for_load_state("load", timeout=5000)
        with contextlib.suppress(Exception):
            page.wait_for_load_state("networkidle", timeout=1500)

    def shoot() -> tuple[bytes, int]:
        if navigations[0] > MAX_NAVIGATIONS_PER_STEP:
            raise PageBroken("redirect_loop", f"{navigations[0]} main-frame navigations in one step")
        try:
            return page.screenshot(timeout=5000, animations="disabled", caret="hide"), navigations[0]
        except Exception as e:  # a navigation swapping documents has nothing to capture yet: once more
            if "Unable to capture screenshot" not in str(e):
                raise
        loaded()
        return page.screenshot(timeout=5000, animations="disabled", caret="hide"), navigations[0]

    loaded()
    shot = shoot()
    deadline = time.monotonic() + SETTLE_MAX_S
    while time.monotonic() < deadline:
        page.wait_for_timeout(SETTLE_INTERVAL_S * 1000)
        again = shoot()
        if again == shot:
            return shot[0]
        if again[1] != shot[1]:
            loaded()
            again = shoot()
        shot = again
    return shot[0]


def page_js(page: Any, call: str, *args: Any) -> Any:
    """Call one of web_pages.js's helpers (every document of a `new_context` context has them).

    A navigation that lands between the settle wait and this call destroys the page's JS context:
    then wait for the new document and try once more.
    """
    script = "([call, args]) => window.__mmrl[call](...args)"
    try:
        return page.evaluate(script, [call, list(args)])
    except Exception as e:
        if "context was destroyed" not in str(e) and "navigat" not in str(e):
            raise
        with contextlib.suppress(Exception):
            page.wait_for_load_state("load", timeout=5000)
        return page.evaluate(script, [call, list(args)])


def execute(page: Any, action: dict[str, Any]) -> None:
    """Perform one executed action (the explorer's own record: points, wheel deltas, keys)."""
    kind = action["action_type"]
    if kind == "click":
        page.mouse.click(action["x"], action["y"])
    elif kind == "input_text":
        fx, fy = action["focus"]
        page.mouse.click(fx, fy)
        page.keyboard.press("Control+A")
        page.keyboard.type(action["text"])
    elif kind == "scroll":
        px, py = action["point"]
        page.mouse.move(px, py)
        page.mouse.wheel(action["delta"][0], action["delta"][1])
    elif kind == "navigate_back":
        page.go_back(timeout=5000)
    else:
        raise MMRLError(f"unknown executed action {kind!r}")


__all__ = [
    "LOOPBACK_HOSTS",
    "PageBroken",
    "RateLimit",
    "check_url",
    "chromium_path",
    "execute",
    "host_of",
    "launch_browser",
    "new_context",
    "page_js",
    "png_to_array",
    "serve_folder",
    "settle",
    "watchdog",
]
