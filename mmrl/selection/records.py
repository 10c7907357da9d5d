"""`difficulty.jsonl` (append-only, one fsynced line per sample), keep rules, the threshold sweep, rank correlation.

A line is written and fsynced as soon as its sample is scored, so a killed run loses at most the samples in
flight; a line cut by the kill is dropped on resume (the file is truncated back to its last full line).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmrl.errors import MMRLError

log = logging.getLogger(__name__)

DIFFICULTY_FILE = "difficulty.jsonl"
PAPER_K_THRESHOLDS = (1, 5, 10, 20, 30, 40)
"""The K thresholds of ThinkLite-VL's ablation table (`K > t or unsolved`)."""
PASS_RATE_THRESHOLDS = (0.1, 0.2, 0.3, 0.5, 0.8, 1.0)


class DifficultyLog:
    """The append-only `difficulty.jsonl` of one selection run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> list[dict[str, Any]]:
        """The complete lines written so far; a torn last line (a kill mid-write) is cut off the file."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.warning(
                "%s: dropping a torn last line (%d bytes) left by an interrupted run", self.path, len(data) - end
            )
            with open(self.path, "r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        records = []
        for number, line in enumerate(data[:end].decode("utf-8").splitlines(), 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise MMRLError(f"{self.path} line {number} is not JSON ({e}); delete the file to start over") from None
            if not isinstance(record, dict) or "id" not in record:
                raise MMRLError(f"{self.path} line {number} has no sample id; delete the file to start over")
            records.append(record)
        return records

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one line and fsync it before returning."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


@dataclass
class KeepRule:
    """Which scored samples the selected dataset keeps."""

    min_k: int = 5
    """MCTS: keep solved samples with K > min_k (ThinkLite-VL: 5)."""
    unsolved: bool = True
    """MCTS: also keep the samples unsolved after the last iteration (the paper does)."""
    max_pass_rate: float = 0.2
    """Pass rate: keep samples whose pass rate is below this (the paper's self-consistency proxy: 0.2)."""

    def keeps(self, record: Mapping[str, Any]) -> bool:
        if record.get("skipped"):
            return False
        if record.get("method") == "passrate":
            return record["pass_rate"] < self.max_pass_rate
        if record["K"] is None:
            return self.unsolved
        return record["K"] > self.min_k

    def describe(self, method: str) -> str:
        if method == "passrate":
            return f"pass rate < {self.max_pass_rate:g}"
        return f"K > {self.min_k}" + (" or unsolved" if self.unsolved else "")


def sweep(records: Sequence[Mapping[str, Any]], method: str) -> list[tuple[str, int]]:
    """(rule, kept count) rows over the scored (not skipped) records, like the paper's threshold ablation."""
    scored = [r for r in records if not r.get("skipped")]
    if method == "passrate":
        rows = [(f"pass rate < {t:g}", sum(r["pass_rate"] < t for r in scored)) for t in PASS_RATE_THRESHOLDS]
        rows.append(("never passed (pass rate 0)", sum(r["pass_rate"] == 0 for r in scored)))
    else:
        unsolved = sum(r["K"] is None for r in scored)
        rows = [(f"K > {t} or unsolved", unsolved + sum(r["K"] is not None and r["K"] > t for r in scored))
                for t in PAPER_K_THRESHOLDS]  # fmt: skip
        rows.append(("unsolved only", unsolved))
        rows.append(("K > 5 only (solved)", sum(r["K"] is not None and r["K"] > 5 for r in scored)))
    rows.append(("all scored", len(scored)))
    return rows


def sweep_markdown(rows: Sequence[tuple[str, int]], total: int) -> str:
    lines = ["| rule | kept | share |", "|---|---:|---:|"]
    lines += [f"| {rule} | {kept} | {kept / total if total else 0:.1%} |" for rule, kept in rows]
    return "\n".join(lines) + "\n"


def difficulty_value(record: Mapping[str, Any], max_iterations: int = 50) -> float | None:
    """One number per record, larger = harder: K (unsolved: max_iterations + 1) or 1 − pass rate."""
    if record.get("skipped"):
        return None
    if record.get("method") == "passrate":
        return 1.0 - record["pass_rate"]
    return float(record["K"]) if record["K"] is not None else float(max(record["iterations"], max_iterations) + 1)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation ρ: Pearson's r of the ranks (ties get their mean rank); nan if a side is constant."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"spearman needs two equal-length sequences of at least 2 values, got {len(x)} and {len(y)}")
    rx, ry = _ranks(np.asarray(x, dtype=float)), _ranks(np.asarray(y, dtype=float))
    if rx.std() == 0 or ry.std() == 0:
        return float("nan")
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(1, len(values) + 1)
    for v in np.unique(values):  # ties: the mean of their ranks
        tied = values == v
        ranks[tied] = ranks[tied].mean()
    return ranks


__all__ = ["DIFFICULTY_FILE", "DifficultyLog", "KeepRule", "difficulty_value", "spearman", "sweep", "sweep_markdown"]
