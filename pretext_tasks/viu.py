"""The `viu` evaluation suite (`mmrl generate --suite viu`): an equivalent of VideoSSR's VIUBench (He et
al. 2025, arXiv 2511.06281; docs/videossr.md). No builder or scorer of VIUBench is released; this one
uses the same generators with an Easy and a Hard split per task [ours]:

| task              | Easy                                      | Hard                                          |
|-------------------|-------------------------------------------|-----------------------------------------------|
| object_counting   | 1–3 frames × 1–3 shapes, size 0.2–0.4     | 1–3 frames × 2–4 shapes, size 0.1–0.2         |
| anomaly_grounding | 8–16 of 48 frames, strength 1             | 3–6 of 48 frames, strength 0.5                |
| temporal_jigsaw   | 6 clips of 8 frames                       | 8 clips of 6 frames                           |

Grounding is made once per VIUBench column type (channel_swap, rotate180, zoom_out, mirror, shuffle),
so the table can also be read per type (`meta["perturbation"]`). Every sample carries
`meta["split"]` (`easy` / `hard`) and `meta["suite"]`. VIUBench's metrics are exact match for counting
and jigsaw (`mmrl eval`'s accuracy column) and mean IoU for grounding (its mean-reward column).
"""

from __future__ import annotations

from mmrl.suites import Suite, SuiteEntry

VIU_GROUNDING_TYPES = ("channel_swap", "rotate180", "zoom_out", "mirror", "shuffle")
"""The perturbation types of VIUBench's grounding columns (Channel, Rotate, ZoomOut, Mirror, Shuffle)."""


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


VIU = Suite("viu", viu_entries)
"""The entry point `viu` of `mmrl.suites`."""

__all__ = ["VIU", "VIU_GROUNDING_TYPES", "viu_entries"]
