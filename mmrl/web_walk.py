"""One random walk of the web explorer: act, observe, and keep or drop the step (with the reason).

A walk runs in a fresh browser context from its start page; `Walker` holds what the walks of one
exploration share: drop counts, element novelty, the per-host rate limit and the kept transitions
that the near-duplicate rule compares with. The drop rules are the UIShift sheet's §10
(docs/web_explorer.md lists them).
"""

from __future__ import annotations

from collections import Counter
from contextlib import suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from mmrl.image_hash import diff_ratio, hamming, phash
from mmrl.web_actions import Choice, Novelty, choose
from mmrl.web_browser import (
    MAX_NAVIGATIONS_PER_STEP,
    PageBroken,
    RateLimit,
    execute,
    new_context,
    page_js,
    png_to_array,
    settle,
    watchdog,
)

NO_CHANGE_RATIO = 0.003  # at most 0.3 % of pixels changed and the same URL: the action did nothing visible
# Perceptual hashes this close (of 64 bits) show the same screen; two different toggles on one page
# land about 4 bits apart, a re-render of the same state 0.
NEAR_DUPLICATE_BITS = 2
STEP_DEADLINE_S = 20.0  # an action plus its settle wait that takes longer is a hang


@dataclass
class Site:
    """Where the walks go: a folder served on loopback, or a URL."""

    base: str
    """Origin of a served folder (its URLs are recorded relative to it: the port changes per run)."""
    starts: list[str]
    """Start URLs; walk w starts at starts[w % len(starts)]."""
    local: bool
    """True for a served folder."""

    def show(self, url: str) -> str:
        return "/" + url[len(self.base) :] if self.local and url.startswith(self.base) else url


class Walker:
    """State shared by the walks of one exploration: drop counts, novelty, kept transitions."""

    def __init__(self, browser: Any, site: Site, viewport: tuple[int, int], allow_hosts: tuple[str, ...]) -> None:
        self.browser, self.site, self.viewport, self.allow_hosts = browser, site, viewport, allow_hosts
        self.drops: Counter = Counter()
        self.novelty = Novelty()
        self.rate = RateLimit()
        self.kept: dict[tuple[str, str], list[tuple[str, str]]] = {}  # parent state -> kept (url, phash) after it
        self.steps = 0
        self.errors: list[str] = []  # why walks broke off (the first lines go to explore.json)

    def walk(self, rng: np.random.Generator, start: str, length: int) -> tuple[list[tuple[bytes, str]], list[dict]]:
        """Run one walk from `start`: the observed states (PNG, URL) and the executed steps."""
        context = new_context(self.browser, self.viewport, self.allow_hosts)
        flags: Counter = Counter()
        navigations = [0]
        states: list[tuple[bytes, str]] = []
        steps: list[dict] = []
        try:
            page = context.new_page()
            watch_page(context, page, flags, navigations)
            with watchdog(STEP_DEADLINE_S) as dog:
                try:
                    self.rate.wait(start)
                    page.goto(start, timeout=10000)
                    states.append((settle(page, navigations), page.url))
                except Exception as e:
                    reason = "start_" + _broken_reason(e, dog, flags, navigations)
                    self.drops[reason] += 1
                    self.errors.append(f"{reason} ({start}): {str(e)[:200]}")
                    return states, steps
            depth = 0
            for _ in range(length):
                png, url = states[-1]
                choice = None
                flags.clear()
                navigations[0] = 0
                with watchdog(STEP_DEADLINE_S) as dog:
                    try:
                        path = urlsplit(url).path
                        choice = choose(rng, page, path, self.novelty, depth > 0, self.viewport, self.drops)
                        if choice is None:
                            self.drops["no_action"] += 1
                            break
                        self.rate.wait(url)
                        execute(page, choice.executed)
                        after = settle(page, navigations)
                        blank = page_js(page, "blank")
                    except Exception as e:
                        reason = _broken_reason(e, dog, flags, navigations)
                        self.drops[reason] += 1
                        self.errors.append(f"{reason} ({choice and choice.executed}): {str(e)[:200]}")
                        break
                self.steps += 1
                after_url = page.url
                reason = self._verdict(flags, blank, png, after, url, after_url)
                if reason:
                    self.drops[reason] += 1
                steps.append(_step_record(choice, reason, self.site.show(after_url)))
                states.append((after, after_url))
                if choice.label["action_type"] == "navigate_back":
                    depth -= 1
                elif after_url != url:
                    depth += 1
        finally:
            with suppress(Exception):
                context.close()
        return states, steps

    def _verdict(self, flags: Counter, blank: bool, before: bytes, after: bytes, url: str, after_url: str) -> str:
        """Why a step is dropped ("" = kept); a kept step is remembered for the near-duplicate check."""
        for reason in ("new_tab", "dialog", "download", "http_error", "offsite"):
            if flags[reason]:
                return reason
        if blank or after_url.startswith(("about:", "chrome-error:")):
            return "blank_page"
        a, b = png_to_array(before), png_to_array(after)
        if diff_ratio(a, b) <= NO_CHANGE_RATIO and after_url == url:
            return "no_change"
        parent = (url, phash(a))
        after_key = (after_url, phash(b))
        seen = self.kept.setdefault(parent, [])
        if any(u == after_url and hamming(h, after_key[1]) <= NEAR_DUPLICATE_BITS for u, h in seen):
            return "near_duplicate"
        seen.append(after_key)
        return ""


def watch_page(context: Any, page: Any, flags: Counter, navigations: list[int]) -> None:
    """Count the side effects the sheet drops: new tabs, dialogs, downloads, HTTP errors, blocked hosts."""

    def on_page(p: Any) -> None:
        flags["new_tab"] += 1
        with suppress(Exception):
            p.close()

    def on_dialog(d: Any) -> None:
        flags["dialog"] += 1
        with suppress(Exception):
            d.dismiss()

    def on_download(d: Any) -> None:
        flags["download"] += 1
        with suppress(Exception):
            d.cancel()

    def on_response(r: Any) -> None:
        if r.frame == page.main_frame and r.request.is_navigation_request() and r.status >= 400:
            flags["http_error"] += 1

    def on_failed(request: Any) -> None:
        if request.is_navigation_request() and "blocked" in (request.failure or "").lower():
            flags["offsite"] += 1

    def on_nav(frame: Any) -> None:
        if frame == page.main_frame:
            navigations[0] += 1

    def on_crash(_: Any) -> None:
        flags["crash"] += 1

    context.on("page", on_page)
    page.on("crash", on_crash)
    page.on("dialog", on_dialog)
    page.on("download", on_download)
    page.on("response", on_response)
    page.on("requestfailed", on_failed)
    page.on("framenavigated", on_nav)


def _broken_reason(error: Exception, dog: dict[str, bool], flags: Counter, navigations: list[int]) -> str:
    """Name what broke a walk: a redirect loop (too many main-frame navigations, even when they kept
    the page too busy to answer), a hang (the watchdog or a Playwright timeout), a renderer crash,
    else `page_error` (any other failure of the page or of the browser call)."""
    if isinstance(error, PageBroken):
        return error.reason
    if navigations[0] > MAX_NAVIGATIONS_PER_STEP:
        return "redirect_loop"
    if dog["fired"] or type(error).__name__ == "TimeoutError":
        return "hang"
    if "redirect" in str(error).lower():
        return "redirect_loop"
    return "crash" if flags["crash"] or "crash" in str(error).lower() else "page_error"


def _step_record(choice: Choice, reason: str, url_after: str) -> dict[str, Any]:
    return {
        "executed": choice.executed,
        "label": choice.label,
        "element": choice.element,
        "dropped": reason or None,
        "url_after": url_after,
    }


__all__ = ["NEAR_DUPLICATE_BITS", "NO_CHANGE_RATIO", "STEP_DEADLINE_S", "Site", "Walker", "watch_page"]
