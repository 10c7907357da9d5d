"""The demo app's page timings, read from the browser's own clocks (Debian's Chromium via Playwright).

    .venv/bin/python benchmarks/demo_timing.py            # defaults: --rounds 3, the default corpus

It starts the real `mmrl demo` in a subprocess on a free port (the default corpus is built first, untimed,
when it is missing), then measures in one headless page:

- **first screen**: a fresh page load, from navigation start (Navigation Timing's time origin) to the moment the
  first task's pictures are all decoded (`img.complete && naturalWidth > 0` for every picture of the prompt and
  the evidence), with `performance.now()`; also `domContentLoaded` and `loadEventEnd` of the navigation entry.
  Measured `--rounds` times (a new page each), after one untimed warm-up load;
- **switch**: for each image task, `performance.now()` from the click on the task's entry in the dropdown to the
  moment the status line names the new sample and every picture has decoded. The tasks are cycled `--rounds`
  times (after one untimed warm-up cycle: the first draw of a task imports its module).

Targets (issue 17): first screen < 3 s, switching image tasks < 1 s, on this CPU. Medians and [min-max].
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from demo_helpers import running_demo  # noqa: E402

from mmrl.config import CorpusConfig  # noqa: E402
from mmrl.corpus import build_default_corpus, corpus_root  # noqa: E402
from mmrl.web_browser import launch_browser  # noqa: E402

IMAGE_TASKS = ("dominant_color", "image_jigsaw", "depth_jigsaw", "referring_grounding", "object_detection",
               "gui_inverse_dynamics")  # fmt: skip
PICTURES_READY = """sampleId => {
  const status = document.querySelector('#task-status');
  if (!status || !status.innerText.includes(sampleId)) return false;
  const imgs = [...document.querySelectorAll('#task-images img, #task-evidence img')];
  return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
}"""


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):7.3f} s  [{min(values):.3f}-{max(values):.3f}]"


def first_screen(browser, url: str) -> dict[str, float]:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(url)
        page.wait_for_function(PICTURES_READY, arg="image_jigsaw-000000", timeout=120_000)
        shown = page.evaluate("() => performance.now()") / 1000
        nav = page.evaluate("() => performance.getEntriesByType('navigation')[0].toJSON()")
        return {"pictures": shown, "dom": nav["domContentLoadedEventEnd"] / 1000, "load": nav["loadEventEnd"] / 1000}
    finally:
        page.close()


def switch_times(page, tasks: tuple[str, ...]) -> dict[str, float]:
    out = {}
    for task in tasks:
        page.click("#task-select input")
        option = page.locator(f"#task-select [role=option][aria-label='{task}']")
        option.wait_for()
        page.evaluate("() => { window.__switchStart = performance.now(); }")
        option.click()
        page.wait_for_function(PICTURES_READY, arg=f"{task}-000000", timeout=120_000)
        out[task] = page.evaluate("() => performance.now() - window.__switchStart") / 1000
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="timed page loads and task cycles (default 3)")
    parser.add_argument("--corpus-root", default="", help="a built default corpus (default: the cache's)")
    args = parser.parse_args()
    cfg = CorpusConfig(root=args.corpus_root)
    build_default_corpus(cfg, progress=True)  # untimed: the app then finds it complete
    with running_demo(corpus_root(cfg), [Path.cwd()], overrides=()) as url, launch_browser() as browser:
        first_screen(browser, url)  # warm-up: the server's first draw, the browser's caches
        loads = [first_screen(browser, url) for _ in range(args.rounds)]
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.wait_for_function(PICTURES_READY, arg="image_jigsaw-000000", timeout=120_000)
        switch_times(page, IMAGE_TASKS)  # warm-up cycle
        rounds = [switch_times(page, IMAGE_TASKS) for _ in range(args.rounds)]
    print(f"first screen, pictures decoded   {summary([r['pictures'] for r in loads])}   (target < 3 s)")
    print(f"  DOMContentLoaded               {summary([r['dom'] for r in loads])}")
    print(f"  load event                     {summary([r['load'] for r in loads])}")
    for task in IMAGE_TASKS:
        print(f"switch to {task:22s} {summary([r[task] for r in rounds])}   (target < 1 s)")
    every = [t for r in rounds for t in r.values()]
    print(f"switch, every image task         {summary(every)}   (target < 1 s)")


if __name__ == "__main__":
    main()
