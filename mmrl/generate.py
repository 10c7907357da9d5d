"""`mmrl generate`: write a dataset of Samples from a pretext task, with exports and preview sheets.

Determinism: sample i (0-based) comes from draw attempt a = 0, 1, ... with the generator
`default_rng([seed, key, i])` for a = 0 and `default_rng([seed, key, i, a])` after a failed draw
(`draw_rng`), where key = `mmrl.task.task_key(task name)` (CRC-32 of the name), so two tasks given the
same seed draw different source items and shuffles. That one generator first picks the source item
(`items[rng.integers(len(items))]`, with replacement) and is then handed to `task.make(item, rng)`.
The Sample's id is rewritten to `<task>-<i:06d>` (a source item may be drawn twice). So the same task,
parameters, source and seed give the same dataset, byte for byte, in every format, and sample i does
not depend on how many samples are asked for.

Source items a task cannot use (`SkipItem`, counted under its reason) or cannot read (`MediaError`,
counted as `unreadable_media`) are skipped and the next attempt draws another item; after
`MAX_CONSECUTIVE_FAILURES` failed attempts in a row the run stops with an error naming the reasons.

Formats (documented with their columns in `data/README.md`): `jsonl`, the native `samples.jsonl` +
`media/` (`mmrl.sample.write_dataset`); `hf` and `verl` for other trainers (`mmrl.exporters`).

Every run also writes `generation.json` (task, parameters, seed, source, counts) and, with
`preview=K`, one PNG sheet per sample for the first K samples in `preview/`.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from tqdm.auto import tqdm

from mmrl import registry
from mmrl.config import CorpusConfig, to_dict
from mmrl.corpus import LazyCorpus
from mmrl.errors import MediaError, MMRLError, SkipItem
from mmrl.exporters import HF_FILES, VERL_FILE, write_hf, write_verl
from mmrl.preview import preview_sheet
from mmrl.sample import MEDIA_DIR, SAMPLES_FILE, Sample, write_dataset
from mmrl.suites import suite_entries
from mmrl.task import task_key

log = logging.getLogger(__name__)

Format = Literal["jsonl", "hf", "verl"]
FORMATS: tuple[str, ...] = ("jsonl", "hf", "verl")
MAX_CONSECUTIVE_FAILURES = 50
REPORT_FILE = "generation.json"
PREVIEW_DIR = "preview"
UNREADABLE = "unreadable_media"


@dataclass
class GenerationReport:
    """What a generation run did; saved as `generation.json` (no times or absolute output paths,
    so it is part of the byte-identical output)."""

    task: str
    params: dict[str, Any]
    """The task's full parameters after defaults and coercion."""
    seed: int
    source: str
    format: str
    requested: int
    written: int = 0
    attempts: int = 0
    """Draw attempts, failed ones included."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Failed draws by reason (`SkipItem.reason`, or `unreadable_media`)."""
    preview: int = 0


# --------------------------------------------------------------------------------------------------
# Drawing samples


def parse_params(items: Sequence[str]) -> dict[str, Any]:
    """`["grid=[2,3]", "answer_mode=boxed"]` -> `{"grid": [2, 3], "answer_mode": "boxed"}` (YAML values)."""
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise MMRLError(f"--param expects key=value, got '{item}'")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw  # not YAML: keep the text, the task's parameter types judge it
        params[key.strip()] = value
    return params


def source_items(task: Any, source: str | Path, corpus_cfg: CorpusConfig | None = None) -> Sequence[Any]:
    """The task's source items from `source`: `default` (the default corpus, built on first use only
    if the task reads it) or a path that must exist."""
    if str(source) == "default":
        where: Any = LazyCorpus(corpus_cfg or CorpusConfig())
    else:
        where = Path(source).expanduser()
        if not where.exists():
            raise MMRLError(f"source {where} does not exist (pass a folder of media, or `default`)")
    items = task.sources(where)
    if not len(items):
        raise MMRLError(f"task '{task.name}' found no source items in {source}")
    return items


def draw_rng(task_name: str, seed: int, i: int, attempt: int = 0) -> np.random.Generator:
    """The generator of draw attempt `attempt` of sample `i` of task `task_name` (see the module docstring)."""
    key = task_key(task_name)
    return np.random.default_rng([seed, key, i] if attempt == 0 else [seed, key, i, attempt])


def iter_samples(
    task: Any, items: Sequence[Any], n: int, seed: int, skipped: Counter | None = None
) -> Iterator[tuple[Sample, int]]:
    """Yield (sample i, attempts it took) for i < n, drawn as the module docstring describes.

    Failed draws are counted in `skipped` by reason. Raises MMRLError after
    `MAX_CONSECUTIVE_FAILURES` failed draws in a row.
    """
    skipped = Counter() if skipped is None else skipped
    for i in range(n):
        reasons: Counter = Counter()
        for attempt in range(MAX_CONSECUTIVE_FAILURES):
            rng = draw_rng(task.name, seed, i, attempt)
            item = items[int(rng.integers(len(items)))]
            try:
                sample = task.make(item, rng)
            except SkipItem as e:
                reason = e.reason
            except MediaError as e:
                reason = UNREADABLE
                log.debug("unreadable source item %r: %s", item, e)
            else:
                sample.id = f"{task.name}-{i:06d}"
                yield sample, attempt + 1
                break
            skipped[reason] += 1
            reasons[reason] += 1
        else:
            detail = ", ".join(f"{r}: {c}" for r, c in sorted(reasons.items()))
            raise MMRLError(
                f"task '{task.name}': {MAX_CONSECUTIVE_FAILURES} source items in a row were unusable ({detail}) "
                f"while drawing sample {i}; check the source or the task parameters"
            )


def generate(
    task_name: str,
    *,
    n: int,
    out: str | Path,
    params: dict[str, Any] | None = None,
    source: str | Path = "default",
    seed: int = 0,
    fmt: Format = "jsonl",
    preview: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    corpus_cfg: CorpusConfig | None = None,
) -> GenerationReport:
    """Write `n` Samples of task `task_name` into `out` in format `fmt`; returns the report.

    `out` must be empty or absent unless `overwrite`, which first removes this module's own outputs
    (samples.jsonl, media/, preview/, generation.json, train.parquet, the hf files) and nothing else.
    """
    if fmt not in FORMATS:
        raise MMRLError(f"unknown format '{fmt}'; valid formats: {', '.join(FORMATS)}")
    if n < 1:
        raise MMRLError(f"--n must be at least 1, got {n}")
    task = registry.get_task(task_name, **(params or {}))
    items = source_items(task, source, corpus_cfg)
    root = Path(out).expanduser()
    _prepare_out(root, overwrite)
    report = GenerationReport(task_name, to_dict(task.params), seed, str(source), fmt, n, preview=min(preview, n))
    skipped: Counter = Counter()
    drawn = iter_samples(task, items, n, seed, skipped)
    return _write(drawn, root, report, skipped, desc=f"generate {task_name}", progress=progress)


def generate_suite(
    suite: str,
    *,
    n: int,
    out: str | Path,
    params: dict[str, Any] | None = None,
    source: str | Path = "default",
    seed: int = 0,
    preview: int = 0,
    overwrite: bool = False,
    progress: bool = True,
    corpus_cfg: CorpusConfig | None = None,
) -> GenerationReport:
    """Write `n` Samples of every entry of evaluation suite `suite` (a registered suite, `mmrl.suites`) into
    one jsonl dataset in `out`; `params` override every entry's task parameters. Sample ids are
    `<suite>-<task>-<split>[-<label>]-<i:04d>`; each Sample's meta gets `split` and `suite`."""
    if n < 1:
        raise MMRLError(f"--n must be at least 1, got {n}")
    entries = suite_entries(suite, params)
    tasks = [registry.get_task(e.task, **e.params) for e in entries]  # every parameter checked before any work
    items_of: dict[str, Sequence[Any]] = {}
    for entry, task in zip(entries, tasks):  # sources listed once per task name, before `out` is touched
        if entry.task not in items_of:
            items_of[entry.task] = source_items(task, source, corpus_cfg)
    root = Path(out).expanduser()
    _prepare_out(root, overwrite)
    total = n * len(entries)
    report = GenerationReport(f"suite:{suite}", {e.key: e.params for e in entries}, seed, str(source), "jsonl",
                              total, preview=min(preview, total))  # fmt: skip
    skipped: Counter = Counter()

    def drawn() -> Iterator[tuple[Sample, int]]:
        for e, (entry, task) in enumerate(zip(entries, tasks)):
            entry_seed = int(np.random.default_rng([seed, e]).integers(2**31))
            for i, (sample, attempts) in enumerate(iter_samples(task, items_of[entry.task], n, entry_seed, skipped)):
                sample.id = f"{suite}-{entry.key}-{i:04d}"
                sample.meta = {**sample.meta, "split": entry.split, "suite": suite}
                yield sample, attempts

    return _write(drawn(), root, report, skipped, desc=f"suite {suite}", progress=progress)


def _write(
    drawn: Iterator[tuple[Sample, int]],
    root: Path,
    report: GenerationReport,
    skipped: Counter,
    *,
    desc: str,
    progress: bool,
) -> GenerationReport:
    """Write the drawn (Sample, attempts) pairs into `root` in `report.format`, with preview sheets of the
    first `report.preview` and a progress bar; fill in the report's counts and save it as generation.json."""
    bar = tqdm(total=report.requested, desc=desc, unit="sample", disable=not progress, dynamic_ncols=True)

    def stream() -> Iterator[Sample]:
        for sample, attempts in drawn:
            if report.written < report.preview:
                name = f"{report.written:04d}_{_safe(sample.id)}.png"
                preview_sheet(sample).save(root / PREVIEW_DIR / name, compress_level=6)
            report.attempts += attempts
            report.written += 1
            bar.update(1)
            if skipped:
                bar.set_postfix(skipped=sum(skipped.values()), refresh=False)
            yield sample

    if report.preview > 0:
        (root / PREVIEW_DIR).mkdir(parents=True, exist_ok=True)
    try:
        if report.format == "jsonl":
            write_dataset(stream(), root, overwrite=True)
        elif report.format == "hf":
            write_hf(stream(), root)
        else:
            write_verl(stream(), root / VERL_FILE)
    finally:
        bar.close()
    report.skipped = dict(sorted(skipped.items()))
    (root / REPORT_FILE).write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report


def summary_line(report: GenerationReport, out: str | Path, seconds: float | None = None) -> str:
    """One line for the console: what was written where, and what was skipped by reason."""
    took = f" in {seconds:.1f}s" if seconds is not None else ""
    line = f"wrote {report.written} {report.task} samples to {out} ({report.format}){took}"
    total = sum(report.skipped.values())
    if total:
        line += f"; skipped {total} source items: " + ", ".join(f"{r} {c}" for r, c in report.skipped.items())
    else:
        line += "; skipped 0 source items"
    if report.preview:
        line += f"; {report.preview} preview sheets in {Path(out) / PREVIEW_DIR}"
    return line


def _prepare_out(root: Path, overwrite: bool) -> None:
    if root.exists() and not root.is_dir():
        raise MMRLError(f"output {root} exists and is not a folder")
    if root.is_dir() and any(root.iterdir()):
        if not overwrite:
            raise MMRLError(f"output folder {root} is not empty (pass --overwrite to replace a generated dataset)")
        for name in (SAMPLES_FILE, REPORT_FILE, VERL_FILE, *HF_FILES):
            (root / name).unlink(missing_ok=True)
        for shard in root.glob("data-*.arrow"):
            shard.unlink()
        for sub in (MEDIA_DIR, PREVIEW_DIR):
            shutil.rmtree(root / sub, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


__all__ = [
    "FORMATS",
    "GenerationReport",
    "MAX_CONSECUTIVE_FAILURES",
    "draw_rng",
    "generate",
    "iter_samples",
    "parse_params",
    "source_items",
    "summary_line",
]
