"""Evaluation suites: fixed, seeded sets of blocks drawn from the pretext generators (`mmrl generate --suite NAME`).

A suite is a `Suite` (a name and its blocks, each a task with parameters under a split name), declared
under the entry-point group `mmrl.suites` (the built-in `viu`: `pretext_tasks.viu`). Entry e of a suite
draws its samples with `mmrl.generate.iter_samples` at the seed `default_rng([seed, e]).integers(2**31)`,
so an entry's samples do not depend on the other entries or on how many are asked for.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mmrl import registry
from mmrl.errors import ConfigError


@dataclass(frozen=True)
class SuiteEntry:
    """One block of a suite: `n` samples of `task` with `params`, under a split name."""

    task: str
    split: str
    params: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    """Short name of the block inside its split (e.g. the perturbation type); part of the sample ids."""

    @property
    def key(self) -> str:
        return "-".join(x for x in (self.task, self.split, self.label) if x)


@dataclass(frozen=True)
class Suite:
    """A named evaluation suite: what a `mmrl.suites` entry point names."""

    name: str
    blocks: Callable[[], list[SuiteEntry]]
    """The suite's blocks, in their fixed order."""


def suite_entries(name: str, overrides: dict[str, Any] | None = None) -> list[SuiteEntry]:
    """The entries of suite `name`, with `overrides` applied to the parameters of every entry whose task
    has that parameter (e.g. `frames`, `frame_max_pixels`, `min_frame_gap` for small models). A key no
    task of the suite has raises `ConfigError`."""
    entries = registry.suite(name).blocks()
    overrides = overrides or {}
    fields = {e.task: {f.name for f in dataclasses.fields(registry.task_class(e.task).Params)} for e in entries}
    unused = [k for k in overrides if not any(k in names for names in fields.values())]
    if unused:
        valid = sorted(set().union(*fields.values()))
        raise ConfigError(f"suite '{name}': no task has parameter(s) {unused}; valid: {', '.join(valid)}")
    out = []
    for e in entries:
        mine = {k: v for k, v in overrides.items() if k in fields[e.task]}
        out.append(SuiteEntry(e.task, e.split, {**e.params, **mine}, e.label))
    return out


__all__ = ["Suite", "SuiteEntry", "suite_entries"]
