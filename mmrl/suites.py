"""Fixed, seeded evaluation suites built from the pretext generators (`mmrl generate --suite NAME`).

`viu`: an equivalent of VideoSSR's VIUBench (He et al. 2025, arXiv 2511.06281; fact sheet
`shared/specs/videossr.md` §8). No builder or scorer of VIUBench is released; this one uses the same
generators with an Easy and a Hard split per task [ours]:

| task              | Easy                                      | Hard                                          |
|-------------------|-------------------------------------------|-----------------------------------------------|
| object_counting   | 1–3 frames × 1–3 shapes, size 0.2–0.4     | 1–3 frames × 2–4 shapes, size 0.1–0.2         |
| anomaly_grounding | 8–16 of 48 frames, strength 1             | 3–6 of 48 frames, strength 0.5                |
| temporal_jigsaw   | 6 clips of 8 frames                       | 8 clips of 6 frames                           |

Grounding is made once per VIUBench column type (channel_swap, rotate180, zoom_out, mirror, shuffle),
so the table can also be read per type (`meta["perturbation"]`). Every sample carries
`meta["split"]` (`easy` / `hard`) and `meta["suite"]`. VIUBench's metrics are exact match for counting
and jigsaw (`mmrl eval`'s accuracy column) and mean IoU for grounding (its mean-reward column).

Entry e of a suite draws its samples with `mmrl.generate.iter_samples` at the seed
`default_rng([seed, e]).integers(2**31)`, so an entry's samples do not depend on the other entries
or on how many are asked for.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mmrl.errors import ConfigError, MMRLError

VIU_GROUNDING_TYPES = ("channel_swap", "rotate180", "zoom_out", "mirror", "shuffle")
"""The perturbation types of VIUBench's grounding columns (Channel, Rotate, ZoomOut, Mirror, Shuffle)."""


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


def viu_entries() -> list[SuiteEntry]:
    """The `viu` suite's blocks, in their fixed order (see the module docstring)."""
    entries = [
        SuiteEntry("object_counting", "easy"),
        SuiteEntry("object_counting", "hard", {"instances_per_frame": [2, 4], "size_range": [0.1, 0.2]}),
    ]
    for kind in VIU_GROUNDING_TYPES:
        entries.append(SuiteEntry("anomaly_grounding", "easy", {"perturbations": [kind]}, kind))
        entries.append(
            SuiteEntry(
                "anomaly_grounding", "hard", {"perturbations": [kind], "segment_frames": [3, 6], "strength": 0.5}, kind
            )
        )
    entries += [
        SuiteEntry("temporal_jigsaw", "easy", {"clips": 6}),
        SuiteEntry("temporal_jigsaw", "hard", {"clips": 8}),
    ]
    return entries


SUITES = {"viu": viu_entries}
"""Suite name -> function returning its entries."""


def suite_entries(name: str, overrides: dict[str, Any] | None = None) -> list[SuiteEntry]:
    """The entries of suite `name`, with `overrides` applied to the parameters of every entry whose task
    has that parameter (e.g. `frames`, `frame_max_pixels`, `min_frame_gap` for small models). A key no
    task of the suite has raises `ConfigError`."""
    from pretext_tasks.registry import task_class

    if name not in SUITES:
        raise MMRLError(f"unknown suite '{name}'; valid suites: {', '.join(SUITES)}")
    entries = SUITES[name]()
    overrides = overrides or {}
    fields = {e.task: {f.name for f in dataclasses.fields(task_class(e.task).Params)} for e in entries}
    unused = [k for k in overrides if not any(k in names for names in fields.values())]
    if unused:
        valid = sorted(set().union(*fields.values()))
        raise ConfigError(f"suite '{name}': no task has parameter(s) {unused}; valid: {', '.join(valid)}")
    out = []
    for e in entries:
        mine = {k: v for k, v in overrides.items() if k in fields[e.task]}
        out.append(SuiteEntry(e.task, e.split, {**e.params, **mine}, e.label))
    return out


__all__ = ["SUITES", "VIU_GROUNDING_TYPES", "SuiteEntry", "suite_entries", "viu_entries"]
