"""`mmrl select`: score a pool's difficulty for one policy and write the hard part of it as a dataset.

OUT gets:
- `difficulty.jsonl`: one line per sample, fsynced as it is scored (MCTS: `K`, `iterations`, `solved`,
  `steps`, `tokens`; pass rate: `pass_rate`, `passes`, `n`, `difficulty`, `tokens`), in the order samples
  finish; a rerun with the same OUT skips the samples already there (resume after a kill);
- `selected/`: the kept samples in the native format (`samples.jsonl` + `media/`), pool order;
- `sweep.md` / `sweep.json`: how many samples each threshold keeps (the paper's ablation rows);
- `select.json`: the settings and the summary. A resumed run must use the same method.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from mmrl.contracts import Engine
from mmrl.errors import MMRLError
from mmrl.sample import SAMPLES_FILE, Sample, read_dataset, write_dataset
from mmrl.selection.mcts import Codec, MCTSParams, SearchStats, Verifier, search
from mmrl.selection.passrate import PassRateParams, pass_rates
from mmrl.selection.records import DIFFICULTY_FILE, DifficultyLog, KeepRule, sweep, sweep_markdown

Method = Literal["mcts", "passrate"]
SELECTED_DIR = "selected"


@dataclass
class SelectReport:
    """What a `select_pool` call did."""

    total: int
    """Samples in the pool."""
    resumed: int
    """Samples already scored by an earlier run (not redone)."""
    scored: int
    """Samples scored by this call."""
    solved: int
    """Scored samples (all runs) solved at least once."""
    skipped: int
    """Samples that could not be scored (bad media, prompt over budget): excluded from the selection."""
    kept: int
    """Samples in the selected dataset."""
    rule: str
    seconds: float
    engine_calls: int

    def summary(self) -> str:
        return (f"{self.total} samples ({self.resumed} resumed, {self.scored} scored now, {self.skipped} skipped), "
                f"{self.solved} solved; kept {self.kept} with {self.rule}; {self.engine_calls} engine calls "
                f"in {self.seconds:.1f}s")  # fmt: skip


def select_pool(
    samples: list[Sample],
    out: str | Path,
    engine: Engine,
    codec: Codec,
    verifier: Verifier,
    *,
    method: Method = "mcts",
    mcts: MCTSParams | None = None,
    passrate: PassRateParams | None = None,
    keep: KeepRule | None = None,
    progress: bool = True,
    judge: str = "task",
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> SelectReport:
    """Score the samples of `samples` not yet in OUT/difficulty.jsonl, then write the selection (module docstring).

    `judge` names the verifier in OUT/select.json (a resumed run must judge the same way, e.g.
    "task" or "critic:<model>"). `on_record` is called after each line is durable (tests use it to pace a kill).
    """
    if method not in ("mcts", "passrate"):
        raise MMRLError(f"--method must be mcts or passrate, got {method!r}")
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise MMRLError("the pool has duplicate sample ids; selection records are keyed by id")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mcts, passrate, keep = mcts or MCTSParams(), passrate or PassRateParams(), keep or KeepRule()
    settings = {"method": method, "judge": judge, "mcts": asdict(mcts), "passrate": asdict(passrate)}
    _check_settings(out / "select.json", settings)
    difficulty = DifficultyLog(out / DIFFICULTY_FILE)
    records = {r["id"]: r for r in difficulty.read()}
    if any(r.get("method") != method for r in records.values()):
        raise MMRLError(f"{difficulty.path} holds another method's scores; use another --out for --method {method}")
    pool = set(ids)
    resumed = sum(1 for i in records if i in pool)
    todo = [s for s in samples if s.id not in records]

    start = time.perf_counter()
    bar = tqdm(total=len(samples), initial=resumed, desc=f"select ({method})", unit="sample", disable=not progress,
               dynamic_ncols=True)  # fmt: skip
    solved = sum(bool(r.get("solved")) for i, r in records.items() if i in pool)
    done = resumed
    stats = SearchStats()
    if method == "mcts":
        results = search(todo, engine, codec, verifier, mcts, stats)
    else:
        results = pass_rates(todo, engine, codec, verifier, passrate, stats)
    try:
        for result in results:
            record = result.record()
            difficulty.append(record)
            records[record["id"]] = record
            solved += bool(record.get("solved"))
            done += 1
            bar.update(1)
            bar.set_postfix(solved=f"{solved / done:.0%}", refresh=False)
            if on_record is not None:
                on_record(record)
    finally:
        bar.close()

    ordered = [records[i] for i in ids]
    kept = [s for s, r in zip(samples, ordered) if keep.keeps(r)]
    write_dataset(kept, out / SELECTED_DIR, overwrite=True)
    rows = sweep(ordered, method)
    (out / "sweep.md").write_text(sweep_markdown(rows, len(samples)))
    (out / "sweep.json").write_text(json.dumps([{"rule": r, "kept": k} for r, k in rows], indent=1) + "\n")
    report = SelectReport(
        total=len(samples), resumed=resumed, scored=len(todo), solved=sum(bool(r.get("solved")) for r in ordered),
        skipped=sum(bool(r.get("skipped")) for r in ordered), kept=len(kept), rule=keep.describe(method),
        seconds=time.perf_counter() - start, engine_calls=stats.engine_calls,
    )  # fmt: skip
    judged = {k: getattr(verifier, k) for k in ("calls", "unreadable", "errors") if hasattr(verifier, k)}
    _write_json(out / "select.json", {**settings, "report": asdict(report), "verifier": judged})
    return report


def _check_settings(path: Path, settings: dict[str, Any]) -> None:
    """A resumed run must score the same way, or its lines would mix two difficulty scales."""
    if not path.exists():
        _write_json(path, settings)
        return
    old = json.loads(path.read_text())
    scheduling = ("max_trees", "batch_prompts")  # how many samples share an engine call: free to change
    for key in ("method", "judge", settings["method"]):
        before, now = old.get(key, "task" if key == "judge" else None), settings[key]  # older files: task judge
        if isinstance(now, dict) and isinstance(before, dict):
            before = {k: v for k, v in before.items() if k not in scheduling}
            now = {k: v for k, v in now.items() if k not in scheduling}
        if before != now:
            raise MMRLError(f"{path.parent} was scored with other settings ({key}: {before} vs {now}); "
                            "use another --out or delete it")  # fmt: skip


def _write_json(path: Path, value: Any) -> None:
    """Write by rename, so a kill never leaves half a settings file behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(tmp, path)


def load_pool(data: str | Path, limit: int | None = None) -> list[Sample]:
    """The Samples of a native dataset folder (its first `limit`)."""
    folder = Path(data).expanduser()
    if not (folder / SAMPLES_FILE).exists():
        raise MMRLError(f"--data {folder} has no {SAMPLES_FILE}: give a folder written by `mmrl generate` or "
                        "`mmrl import-vqa`")  # fmt: skip
    samples = read_dataset(folder)
    return samples[:limit] if limit is not None else samples


__all__ = ["SELECTED_DIR", "Method", "SelectReport", "load_pool", "select_pool"]
