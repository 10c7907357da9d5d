"""Pretext-task throughput on one core: samples/s of each task next to the bare decode of its inputs.

    .venv/bin/python benchmarks/pretext_throughput.py     # defaults: every row below, --items 40 --warmup 5

For each task, on the default corpus (built into $MMRL_CACHE or ~/.cache/mmrl on first use, about 30 s;
`--corpus-root` opens another built corpus):

- `image_jigsaw` (3x3 grid) on the corpus photos; decode = `mmrl.media.load_image` of the same file;
- `video_jigsaw` (6 clips) on the corpus videos; decode = `mmrl.video.read_frames(path, indices)` of
  exactly the frames the task samples (`Sample.meta["frame_indices"]`, learnt from one untimed `make`
  per video before timing, and checked against every timed Sample);
- `depth_jigsaw` (K = 6 points) on the corpus RGB-D scenes; decode = `RGBDItem.load()` (RGB PNG +
  16-bit depth PNG);
- `dominant_color`: draws its own image, nothing to decode: generation only, ratio n/a;
- `anomaly_grounding` (all 15 perturbation types, 8-16 of 48 frames), `object_counting` and
  `temporal_jigsaw` (6 clips) on the corpus videos, at VideoSSR's defaults (48 frames from the
  middle 90 %); decode = `read_frames` of the 48 frames the task shows (`Sample.meta["frame_indices"]`,
  learnt as for `video_jigsaw`). Grounding's Swap also decodes a second video inside make;
- `depth_jigsaw_scannet_size`: `depth_jigsaw` on the same scenes upscaled to ScanNet's frame sizes
  (colour 1296x968 JPEG, depth 640x480 16-bit PNG, written to a temporary ScanNet-layout folder and
  read with `mmrl.corpus.rgbd_folder`): the corpus scenes are 320x240, real RGB-D data is not.

Three things are timed per item:

- **decode**: the bare decode of the task's inputs (above);
- **make**: `task.make(item, rng)`, what `mmrl generate` does per sample (item and rng drawn as
  `mmrl.generate.iter_samples` draws them, with its own `draw_rng`: `rng = default_rng([seed, task_key, i])`,
  `items[rng.integers(n)]`),
  in memory, nothing written. The issue's target applies to this one: make <= 2x decode;
- **make + write**: make plus serialising that Sample with `mmrl.sample.write_dataset` into a temporary
  folder (PNG encoding of every tile / frame at compress_level 6, the JSONL line): what a user pays
  per sample of `mmrl generate --format jsonl` (its preview sheets, progress bar and report aside).

Interleaved in one process: for item i, decode and make run back to back (decode first for even i,
make first for odd i, so neither side always follows the other), then the write of that Sample. The
first `--warmup` items are untimed, and every source file is read once before timing (page cache warm:
decode measures CPU, not the disk). Per-item medians are reported; samples/s = 1 / median; the ratio
is the median over items of make_i / decode_i (each pair adjacent in time, so they share the machine's
load), with the same ratio of CPU times next to it.

One core: OMP/MKL/OpenBLAS/numexpr/OpenCV threads are set to 1 through the environment before numpy is
imported, and `torch.set_num_threads(1)` (torch is not used by these tasks); decord is opened with
`num_threads=1` by `mmrl.video`. The script warns when a phase's CPU time exceeds its wall time (more
than one busy thread). `--profile` prints cProfile of make and of write per task after the timed run.
"""

from __future__ import annotations

import os

# Before numpy (and anything that loads a BLAS / OpenMP runtime) is imported: one thread everywhere.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
os.environ["NUMEXPR_NUM_THREADS"] = "1"
os.environ["VECLIB_MAXIMUM_THREADS"] = "1"
os.environ["OPENCV_FOR_THREADS_NUM"] = "1"

import argparse
import cProfile
import importlib.util
import io
import platform
import pstats
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TARGET = 2.0
"""The issue's target: make costs at most this many times the bare decode of its inputs."""


@dataclass
class TaskBench:
    """How to build one task and decode its inputs."""

    name: str
    """The row's name (`--tasks`)."""
    task: str
    """The registry name of the task."""
    params: dict[str, Any]
    input: str
    """What the task reads, for the table."""
    decode: Callable[[Any, dict[str, Any]], Any] | None
    """decode(item, plan) -> decoded inputs; None: nothing to decode."""
    files: Callable[[Any], list[Path]] = lambda item: []
    """The source files of an item (read once before timing, to warm the page cache)."""
    sources: Callable[[Any, Path], Any] | None = None
    """sources(corpus, scratch folder) -> items; None: the task's own `sources(corpus)`."""


def _decode_image(item: Any, plan: dict[str, Any]) -> Any:
    from mmrl import media

    return media.load_image(item.path)


def _decode_video(item: Any, plan: dict[str, Any]) -> Any:
    from mmrl.video import read_frames

    return read_frames(item.path, plan["frame_indices"][str(item.path)]).frames


def _decode_rgbd(item: Any, plan: dict[str, Any]) -> Any:
    return item.load()


SCANNET_COLOR, SCANNET_DEPTH = (1296, 968), (640, 480)
"""ScanNet's frame sizes: colour JPEG 1296x968, depth PNG 640x480 (registered to colour by the task)."""


def scannet_sized(corpus: Any, scratch: Path) -> Any:
    """The corpus RGB-D scenes upscaled to ScanNet's frame sizes, written in ScanNet's export layout
    (`color/<i>.jpg`, JPEG quality 90, bicubic; `depth/<i>.png`, 16-bit mm, nearest) and read back
    with `mmrl.corpus.rgbd_folder`, as a user's ScanNet export would be."""
    from PIL import Image

    from mmrl import media
    from mmrl.corpus import rgbd_folder

    root = scratch / "scannet_sized"
    (root / "color").mkdir(parents=True, exist_ok=True)
    (root / "depth").mkdir(parents=True, exist_ok=True)
    for i, item in enumerate(corpus.rgbd):
        image, depth = item.load()
        image.resize(SCANNET_COLOR, Image.Resampling.BICUBIC).save(root / "color" / f"{i:03d}.jpg", quality=90)
        big = Image.fromarray(depth).resize(SCANNET_DEPTH, Image.Resampling.NEAREST)
        media.save_depth(root / "depth" / f"{i:03d}.png", np.asarray(big))
    return rgbd_folder(root)


def _rgbd_files(item: Any) -> list[Path]:
    return [item.rgb_path, item.depth_path]


BENCHES = {
    b.name: b
    for b in (
        TaskBench(
            "image_jigsaw", "image_jigsaw", {"rows": 3, "cols": 3}, "corpus photos", _decode_image, lambda it: [it.path]
        ),
        TaskBench("video_jigsaw", "video_jigsaw", {"clips": 6}, "corpus videos", _decode_video, lambda it: [it.path]),
        TaskBench("depth_jigsaw", "depth_jigsaw", {"points": 6}, "corpus RGB-D scenes", _decode_rgbd, _rgbd_files),
        TaskBench("dominant_color", "dominant_color", {}, "none (synthetic)", None),
        TaskBench("anomaly_grounding", "anomaly_grounding", {}, "corpus videos", _decode_video, lambda it: [it.path]),
        TaskBench("object_counting", "object_counting", {}, "corpus videos", _decode_video, lambda it: [it.path]),
        TaskBench("temporal_jigsaw", "temporal_jigsaw", {}, "corpus videos", _decode_video, lambda it: [it.path]),
        TaskBench(
            "depth_jigsaw_scannet_size",
            "depth_jigsaw",
            {"points": 6},
            "corpus RGB-D scenes upscaled to 1296x968 JPEG + 640x480 depth",
            _decode_rgbd,
            _rgbd_files,
            scannet_sized,
        ),
    )
}
DEFAULT_TASKS = (
    "image_jigsaw,video_jigsaw,depth_jigsaw,dominant_color,depth_jigsaw_scannet_size,"
    "anomaly_grounding,object_counting,temporal_jigsaw"
)


@dataclass
class Timings:
    """Per-item wall and CPU seconds of each phase, timed items only."""

    wall: dict[str, list[float]] = field(default_factory=lambda: {"decode": [], "make": [], "write": []})
    cpu: dict[str, list[float]] = field(default_factory=lambda: {"decode": [], "make": [], "write": []})
    skipped: Counter = field(default_factory=Counter)
    distinct: set[str] = field(default_factory=set)
    sample_media: str = ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated tasks: {', '.join(BENCHES)}")
    p.add_argument("--items", type=int, default=40, help="timed items per task (medians over these; at least 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed items per task before the timed ones")
    p.add_argument(
        "--corpus-root",
        default=None,
        help="a built default corpus to open; default: build / reuse mmrl.corpus.default_corpus(CorpusConfig())",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="as `mmrl generate --seed`: item i uses default_rng([seed, task_key, i])"
    )
    p.add_argument("--profile", action="store_true", help="after timing, cProfile make and write of each task")
    p.add_argument("--profile-lines", type=int, default=25, help="functions listed per profile")
    args = p.parse_args(argv)
    unknown = [t for t in args.tasks.split(",") if t not in BENCHES]
    if unknown:
        p.error(f"unknown task(s) {unknown}; choose from {', '.join(BENCHES)}")
    if args.items < 1 or args.warmup < 0:
        p.error("--items must be >= 1 and --warmup >= 0")
    return args


def one_thread() -> dict[str, str]:
    """Pin the libraries that have thread pools to one thread; returns what was set, for the header."""
    done = {"env": "OMP/OPENBLAS/MKL/NUMEXPR/VECLIB/OPENCV = 1"}
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        done["torch"] = f"{torch.__version__}, {torch.get_num_threads()} thread"
    if importlib.util.find_spec("cv2") is not None:
        import cv2

        cv2.setNumThreads(1)
        done["cv2"] = "1 thread"
    return done


def open_corpus(root: str | None) -> Any:
    from mmrl.config import CorpusConfig
    from mmrl.corpus import Corpus, default_corpus

    if root:
        return Corpus.open(Path(root).expanduser())
    return default_corpus(CorpusConfig())


def timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """(result, wall s, CPU s of the whole process) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def draw(task: Any, items: Any, seed: int, i: int, attempt: int) -> tuple[Any, np.random.Generator]:
    """Item and generator of draw attempt `attempt` of sample i, exactly as `mmrl.generate.iter_samples`
    (the same `draw_rng`, which mixes the task name into the key)."""
    from mmrl.generate import draw_rng

    rng = draw_rng(task.name, seed, i, attempt)
    return items[int(rng.integers(len(items)))], rng


def item_key(item: Any) -> str:
    return str(getattr(item, "id", item))


def plan_task(bench: TaskBench, task: Any, items: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Untimed preparation: warm the page cache with every file the run will read and, for video tasks,
    learn the frame indices a video task samples from each video (one make per distinct video)."""
    from mmrl.errors import SkipItem

    plan: dict[str, Any] = {"frame_indices": {}}
    seen: dict[str, Any] = {}
    for i in range(args.warmup + args.items):
        for attempt in range(3):  # the items a skip would move on to, too
            item, _ = draw(task, items, args.seed, i, attempt)
            seen.setdefault(item_key(item), item)
    for item in seen.values():
        for path in bench.files(item):
            Path(path).read_bytes()
        if bench.decode is _decode_video:
            try:
                sample = task.make(item, np.random.default_rng(0))
            except SkipItem:
                continue
            plan["frame_indices"][str(item.path)] = np.ravel(sample.meta["frame_indices"]).tolist()
    return plan


def run_task(bench: TaskBench, items: Any, args: argparse.Namespace, out_dir: Path) -> tuple[Timings, Any]:
    from mmrl.errors import SkipItem
    from mmrl.generate import MAX_CONSECUTIVE_FAILURES
    from mmrl.registry import get_task
    from mmrl.sample import write_dataset

    task = get_task(bench.task, **bench.params)
    plan = plan_task(bench, task, items, args)
    result = Timings()
    for i in range(args.warmup + args.items):
        keep = i >= args.warmup
        for attempt in range(MAX_CONSECUTIVE_FAILURES):
            item, rng = draw(task, items, args.seed, i, attempt)
            phases: dict[str, tuple[float, float]] = {}
            sample = None
            order = ("decode", "make") if i % 2 == 0 else ("make", "decode")
            try:
                for phase in order:
                    if phase == "make":
                        sample, *phases["make"] = timed(lambda: task.make(item, rng))  # noqa: B023
                    elif bench.decode is not None:
                        _, *phases["decode"] = timed(lambda: bench.decode(item, plan))  # noqa: B023
            except SkipItem as e:
                if keep:
                    result.skipped[e.reason] += 1
                continue
            break
        else:
            raise RuntimeError(f"{bench.name}: {MAX_CONSECUTIVE_FAILURES} skipped draws in a row at item {i}")
        if bench.decode is _decode_video:
            used = np.ravel(sample.meta["frame_indices"]).tolist()
            if used != plan["frame_indices"][str(item.path)]:
                raise AssertionError(f"{bench.task} sampled other frames of {item.path} than planned")
        sample.id = f"{bench.task}-{i:06d}"  # as mmrl generate names them
        _, *phases["write"] = timed(lambda: write_dataset([sample], out_dir, overwrite=True))  # noqa: B023
        if keep:
            result.distinct.add(item_key(item))
            for phase, (wall, cpu) in phases.items():
                result.wall[phase].append(wall)
                result.cpu[phase].append(cpu)
            if not result.sample_media:
                result.sample_media = describe_media(sample)
    return result, task


def describe_media(sample: Any) -> str:
    """`9 images 128x85`, `6 videos x 4 frames 256x192`: what one Sample carries."""
    media = sample.media()
    images = [m["image"] for m in media if m["type"] == "image"]
    videos = [m["video"] for m in media if m["type"] == "video"]
    parts = []
    if images:
        sizes = Counter(f"{im.width}x{im.height}" for im in images)
        parts.append(f"{len(images)} image{'s' * (len(images) > 1)} " + "/".join(sizes))
    if videos:
        frame = np.asarray(videos[0][0])
        parts.append(f"{len(videos)} videos x {len(videos[0])} frames {frame.shape[1]}x{frame.shape[0]}")
    return ", ".join(parts)


def summarise(name: str, bench: TaskBench, t: Timings) -> dict[str, Any]:
    med = {k: statistics.median(v) for k, v in t.wall.items() if v}
    both = [m + w for m, w in zip(t.wall["make"], t.wall["write"])]
    med["make+write"] = statistics.median(both)
    row: dict[str, Any] = {"task": name, "input": bench.input, "n": len(t.wall["make"]), "med": med}
    row["distinct"], row["skipped"], row["media"] = len(t.distinct), dict(t.skipped), t.sample_media
    if t.wall["decode"]:
        row["ratio"] = statistics.median(m / d for m, d in zip(t.wall["make"], t.wall["decode"]))
        row["ratio_write"] = statistics.median(b / d for b, d in zip(both, t.wall["decode"]))
        row["ratio_cpu"] = statistics.median(m / d for m, d in zip(t.cpu["make"], t.cpu["decode"]))
    # More CPU than wall time means more than one busy thread: the one-core premise would not hold.
    row["cpu_over_wall"] = {
        k: statistics.median(c / w for c, w in zip(t.cpu[k], t.wall[k])) for k in t.wall if t.wall[k]
    }
    return row


def fmt_ms(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{1000 * seconds:.2f}"


def fmt_rate(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{1 / seconds:.0f}"


def report(rows: list[dict[str, Any]], args: argparse.Namespace, header: list[str]) -> str:
    lines = [
        *header,
        f"{args.warmup} warm-up + {args.items} timed items per task, decode and make interleaved per item; "
        "per-item medians; ratio = median over items of make_i / decode_i",
        "",
        "| task | input | first timed Sample carries | decode ms | make ms | make+write ms | decode items/s "
        "| make samples/s | make+write samples/s | **make / decode** | make / decode (CPU) | make+write / decode "
        f"| make <= {TARGET:g}x decode |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m = r["med"]
        decode = m.get("decode")
        has = "ratio" in r
        verdict = ("yes" if r["ratio"] <= TARGET else "**no**") if has else "n/a"
        lines.append(
            f"| {r['task']} | {r['input']} | {r['media']} | {fmt_ms(decode)} | {fmt_ms(m['make'])} "
            f"| {fmt_ms(m['make+write'])} | {fmt_rate(decode)} | {fmt_rate(m['make'])} | {fmt_rate(m['make+write'])} "
            f"| **{r['ratio']:.2f}** | {r['ratio_cpu']:.2f} | {r['ratio_write']:.2f} | {verdict} |"
            if has
            else f"| {r['task']} | {r['input']} | {r['media']} | n/a | {fmt_ms(m['make'])} | {fmt_ms(m['make+write'])} "
            f"| n/a | {fmt_rate(m['make'])} | {fmt_rate(m['make+write'])} | n/a | n/a | n/a | n/a |"
        )
    lines.append("")
    for r in rows:
        skipped = ", ".join(f"{k}: {v}" for k, v in r["skipped"].items()) or "none"
        cow = ", ".join(f"{k} {v:.2f}" for k, v in r["cpu_over_wall"].items())
        lines.append(
            f"{r['task']}: {r['n']} timed items from {r['distinct']} distinct sources; "
            f"skipped draws {skipped}; CPU/wall {cow}"
        )
        if any(v > 1.1 for v in r["cpu_over_wall"].values()):
            lines.append(f"  WARNING: {r['task']} used more CPU than wall time: more than one thread was busy")
    return "\n".join(lines)


def profile_task(bench: TaskBench, task: Any, items: Any, args: argparse.Namespace, out_dir: Path) -> None:
    from mmrl.errors import SkipItem
    from mmrl.sample import write_dataset

    make_prof, write_prof = cProfile.Profile(), cProfile.Profile()
    for i in range(args.warmup, args.warmup + args.items):
        item, rng = draw(task, items, args.seed, i, 0)
        try:
            sample = make_prof.runcall(task.make, item, rng)
        except SkipItem:  # a skipped draw: its cost is in the profile, nothing to write
            continue
        sample.id = f"{bench.task}-{i:06d}"
        write_prof.runcall(write_dataset, [sample], out_dir, overwrite=True)
    for what, prof in (("make", make_prof), ("write", write_prof)):
        for key in ("tottime", "cumulative"):
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(key).print_stats(args.profile_lines)
            print(f"\n=== cProfile {bench.name} {what}, {args.items} items, by {key} ===")
            print(buf.getvalue().strip())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    threads = one_thread()
    import decord
    import PIL

    from mmrl.corpus import Corpus

    if args.items < 20:
        print(f"note: --items {args.items} is under the 20 items the issue asks for", file=sys.stderr)
    t0 = time.perf_counter()
    corpus: Corpus = open_corpus(args.corpus_root)
    print(f"[corpus {corpus.root}: {time.perf_counter() - t0:.1f} s]", file=sys.stderr, flush=True)
    load_before = os.getloadavg()
    header = [
        f"pretext-task throughput on one core: Python {platform.python_version()}, numpy {np.__version__}, "
        f"Pillow {PIL.__version__}, decord {decord.__version__}; threads: {threads}",
        f"corpus: {corpus.root} ({len(corpus.photos)} photos, {len(corpus.videos)} videos, {len(corpus.rgbd)} "
        f"RGB-D scenes); seed {args.seed}",
    ]
    rows, tasks = [], {}
    with tempfile.TemporaryDirectory(prefix="mmrl-pretext-bench-") as tmp:
        for name in args.tasks.split(","):
            bench = BENCHES[name]
            t1 = time.perf_counter()
            from mmrl.registry import get_task

            if bench.sources is not None:
                items = bench.sources(corpus, Path(tmp))
            else:
                items = get_task(bench.task, **bench.params).sources(corpus)
            timings, task = run_task(bench, items, args, Path(tmp) / name)
            tasks[name] = (task, items)
            rows.append(summarise(name, bench, timings))
            print(f"[{name}: {time.perf_counter() - t1:.1f} s]", file=sys.stderr, flush=True)
        load_after = os.getloadavg()
        header.append(
            f"1-min load average {load_before[0]:.2f} before, {load_after[0]:.2f} after, on {os.cpu_count()} CPUs"
        )
        print(report(rows, args, header))
        cli = " ".join(argv if argv is not None else sys.argv[1:])
        print(f"\ncommand: .venv/bin/python benchmarks/pretext_throughput.py {cli}".rstrip())
        if args.profile:
            for name, (task, items) in tasks.items():
                profile_task(BENCHES[name], task, items, args, Path(tmp) / f"{name}-profile")
    return 0


if __name__ == "__main__":
    sys.exit(main())
