"""Random walks through web pages in headless Chromium that yield GUI inverse-dynamics pairs.

`explore(source, out_dir, ...)` walks a site (a local folder it serves on loopback itself, or an
http://127.0.0.1 URL; other hosts only from an allowlist, rate-limited) and writes a pair folder:
`pairs.jsonl` (the UIShift sheet's §10 record: the first action a_t between the screenshots S_t and
S_{t+k}, canonical coordinates = screenshot pixels, x first), `media/` (PNG screenshots),
`walks.jsonl` (every executed action of every walk, dropped ones included, so a walk can be replayed)
and `explore.json` (settings and counts). `default_pairs` explores the apps shipped in
`data/webapps/` once into the cache. How it works and what it drops: docs/web_explorer.md.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import numpy as np
from tqdm.auto import tqdm

from mmrl.durable import fsync_tree, owner, publish
from mmrl.errors import ConfigError
from mmrl.image_hash import diff_ratio, phash
from mmrl.web_browser import (
    check_url,
    execute,
    launch_browser,
    new_context,
    png_to_array,
    serve_folder,
    settle,
)
from mmrl.web_walk import NEAR_DUPLICATE_BITS, NO_CHANGE_RATIO, STEP_DEADLINE_S, Site, Walker, watch_page

WEBAPPS = Path(__file__).resolve().parent.parent / "data" / "webapps"
SOURCE_TAG = "web-playwright"
FORMAT_VERSION = 1  # bump when the walk or the record changes, so default_pairs rebuilds its cache


@dataclass
class ExploreReport:
    """What one exploration produced."""

    out_dir: Path
    """The pair folder."""
    pairs: int = 0
    """Pair records written (one per kept step and k)."""
    walks: int = 0
    """Walks started."""
    steps: int = 0
    """Actions executed (kept or dropped after the fact)."""
    actions: dict[str, int] = field(default_factory=dict)
    """Pair records per action type."""
    drops: dict[str, int] = field(default_factory=dict)
    """Steps or picks dropped, by reason (docs/web_explorer.md lists them)."""
    seconds: float = 0.0
    """Wall time of the exploration."""

    @property
    def seconds_per_pair(self) -> float:
        return self.seconds / max(self.pairs, 1)


@contextmanager
def _open_site(source: str | Path, allow_hosts: tuple[str, ...]) -> Iterator[Site]:
    text = str(source)
    if text.startswith(("http://", "https://")):
        check_url(text, allow_hosts)
        yield Site(base=text, starts=[text], local=False)
        return
    root = Path(source)
    if not root.is_dir():
        raise ConfigError(f"source {text!r} is neither a folder nor an http:// URL")
    if (root / "index.html").is_file():
        pages = ["index.html"]
    else:
        pages = sorted(f"{d.name}/index.html" for d in root.iterdir() if (d / "index.html").is_file())
    if not pages:
        raise ConfigError(f"source folder {root}: no index.html in it or in any folder right under it")
    with serve_folder(root) as base:
        yield Site(base=base, starts=[base + p for p in pages], local=True)


def _check(seed: int, walks: int, walk_length: tuple[int, int], k_values: tuple[int, ...], viewport) -> None:
    if walks < 1:
        raise ConfigError(f"walks must be >= 1, got {walks}")
    lo, hi = walk_length
    if not 1 <= lo <= hi:
        raise ConfigError(f"walk_length must be (min, max) with 1 <= min <= max, got {walk_length}")
    if not k_values or any(k < 1 or k > hi for k in k_values):
        raise ConfigError(f"k_values must be integers in 1..{hi} (the longest walk), got {k_values}")
    if min(viewport) < 64:
        raise ConfigError(f"viewport must be at least 64x64, got {viewport}")


def explore(
    source: str | Path,
    out_dir: Path,
    *,
    seed: int,
    walks: int,
    walk_length: tuple[int, int] = (5, 10),
    k_values: tuple[int, ...] = (1,),
    viewport: tuple[int, int] = (640, 400),
    allow_hosts: tuple[str, ...] = (),
    max_pairs: int | None = None,
    progress: bool = True,
) -> ExploreReport:
    """Explore `source` with `walks` random walks and write the pair folder `out_dir` (which must be empty).

    Walk w starts at start page w mod P with its own generator `default_rng([seed, w])` and takes
    `walk_length` (inclusive range) actions; each kept step t yields one pair per k with S_{t+k}
    observed. Stops early once `max_pairs` pairs are written. The same seed and site give the same
    pairs.jsonl, byte for byte.
    """
    _check(seed, walks, walk_length, k_values, viewport)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(f"out_dir {out_dir} is not empty; the explorer writes a fresh pair folder")
    (out_dir / "media").mkdir(parents=True, exist_ok=True)
    report = ExploreReport(out_dir=out_dir)
    actions: Counter = Counter()
    t0 = time.monotonic()
    bar = tqdm(total=max_pairs, desc="exploring", unit="pair", disable=not progress, dynamic_ncols=True)
    with (
        _open_site(source, allow_hosts) as site,
        launch_browser() as browser,
        open(out_dir / "pairs.jsonl", "w", encoding="utf-8") as pairs_file,
        open(out_dir / "walks.jsonl", "w", encoding="utf-8") as walks_file,
    ):
        walker = Walker(browser, site, viewport, allow_hosts)
        for w in range(walks):
            if max_pairs is not None and report.pairs >= max_pairs:
                break
            rng = np.random.default_rng([seed, w])
            length = int(rng.integers(walk_length[0], walk_length[1] + 1))
            start = site.starts[w % len(site.starts)]
            states, steps = walker.walk(rng, start, length)
            report.walks += 1
            traj = f"w{w:05d}"
            walk_line = {"traj_id": traj, "start_url": site.show(start), "viewport": list(viewport), "steps": steps}
            walks_file.write(json.dumps(walk_line, sort_keys=True) + "\n")
            budget = None if max_pairs is None else max_pairs - report.pairs
            for record in _pairs(traj, states, steps, k_values, site, viewport, out_dir, budget):
                pairs_file.write(json.dumps(record, sort_keys=True) + "\n")
                actions[record["action"]["action_type"]] += 1
                report.pairs += 1
                bar.update(1)
            bar.set_postfix(walks=report.walks, dropped=sum(walker.drops.values()), refresh=False)
    bar.close()
    report.steps = walker.steps
    report.drops = dict(sorted(walker.drops.items()))
    report.actions = dict(sorted(actions.items()))
    report.seconds = round(time.monotonic() - t0, 2)
    settings = {"source": str(source), "seed": seed, "walks": walks, "walk_length": list(walk_length)}
    settings |= {"k_values": list(k_values), "viewport": list(viewport), "allow_hosts": list(allow_hosts)}
    summary = {
        "settings": settings | {"max_pairs": max_pairs},
        "report": {k: v for k, v in asdict(report).items() if k != "out_dir"},
    }
    summary["broken_walks"] = walker.errors[:50]
    (out_dir / "explore.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return report


def _pairs(traj, states, steps, k_values, site, viewport, out_dir: Path, budget: int | None) -> Iterator[dict]:
    """Pair records of one walk (writing the screenshots they use), at most `budget` of them."""
    written: dict[int, str] = {}
    hashes: dict[int, str] = {}

    def image(i: int) -> str:
        if i not in written:
            rel = f"media/{traj}/s{i:02d}.png"
            (out_dir / rel).parent.mkdir(exist_ok=True)
            (out_dir / rel).write_bytes(states[i][0])
            written[i] = rel
        return written[i]

    def hash_of(i: int) -> str:
        if i not in hashes:
            hashes[i] = phash(png_to_array(states[i][0]))
        return hashes[i]

    count = 0
    for t, step in enumerate(steps):
        if step["dropped"]:
            continue
        for k in k_values:
            if t + k >= len(states) or (budget is not None and count >= budget):
                continue
            record = {
                "id": f"{traj}-t{t:02d}-k{k}",
                "source": SOURCE_TAG,
                "traj_id": traj,
                "step": t,
                "k": k,
                "url_before": site.show(states[t][1]),
                "url_after": site.show(states[t + k][1]),
                "viewport": list(viewport),
                "dpr": 1,
                "image_before": image(t),
                "image_after": image(t + k),
                "action": step["label"],
                "scroll_convention": "content",
                "diff_ratio": round(diff_ratio(png_to_array(states[t][0]), png_to_array(states[t + k][0])), 6),
                "phash_before": hash_of(t),
                "phash_after": hash_of(t + k),
            }
            if step["element"] is not None:
                record["element"] = step["element"]
            count += 1
            yield record


def replay(source: str | Path, walk: dict[str, Any], *, allow_hosts: tuple[str, ...] = ()) -> list[bytes]:
    """Re-execute one line of walks.jsonl from its start page; the screenshot of every state (PNG).

    States are observed with the explorer's own settle wait, so a deterministic site gives back the
    stored screenshots (docs/web_explorer.md, "Determinism").
    """
    viewport = tuple(walk["viewport"])
    with _open_site(source, allow_hosts) as site, launch_browser() as browser:
        context = new_context(browser, viewport, allow_hosts)
        try:
            page = context.new_page()
            navigations = [0]
            watch_page(context, page, Counter(), navigations)
            start = walk["start_url"]
            page.goto(urljoin(site.base, start.lstrip("/")) if site.local else start, timeout=10000)
            shots = [settle(page, navigations)]
            for step in walk["steps"]:
                navigations[0] = 0
                execute(page, step["executed"])
                shots.append(settle(page, navigations))
            return shots
        finally:
            with suppress(Exception):
                context.close()


def _webapps_digest() -> str:
    h = hashlib.sha256()
    for p in sorted(WEBAPPS.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(WEBAPPS).as_posix().encode() + b"\0" + p.read_bytes())
    for module in ("web_pages.js", "web_actions.py", "web_browser.py", "web_walk.py", "web_explorer.py"):
        h.update(Path(__file__).with_name(module).read_bytes())
    return h.hexdigest()[:16]


def default_pairs(
    cache_root: Path,
    *,
    seed: int = 0,
    n: int = 200,
    k_values: tuple[int, ...] = (1,),
    viewport: tuple[int, int] = (640, 400),
    walk_length: tuple[int, int] = (5, 10),
    progress: bool = True,
) -> Path:
    """The pair folder of `n` pairs explored on the apps in data/webapps/, built once per settings.

    Lives in `<cache_root>/gui_pairs/<key>`, key = a hash of the settings, the apps and the explorer
    code; built in a temp folder and renamed into place, so a reader never sees half a folder.
    """
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    settings = {"seed": seed, "n": n, "k": list(k_values), "viewport": list(viewport), "walk": list(walk_length)}
    blob = json.dumps(settings | {"apps": _webapps_digest(), "version": FORMAT_VERSION}, sort_keys=True)
    final = Path(cache_root) / "gui_pairs" / hashlib.sha256(blob.encode()).hexdigest()[:16]
    if (final / "explore.json").is_file():
        return final
    tmp = final.with_name(f".tmp-{final.name}-{owner()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        explore(WEBAPPS, tmp, seed=seed, walks=max(4 * n, 8), walk_length=walk_length, k_values=k_values,
                viewport=viewport, max_pairs=n, progress=progress)  # fmt: skip
        fsync_tree(tmp)
        if (final / "explore.json").is_file():  # another process finished first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


__all__ = [
    "NEAR_DUPLICATE_BITS",
    "NO_CHANGE_RATIO",
    "STEP_DEADLINE_S",
    "WEBAPPS",
    "ExploreReport",
    "default_pairs",
    "explore",
    "replay",
]
