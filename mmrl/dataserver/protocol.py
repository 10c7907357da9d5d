"""The contract of the Syn-GRPO data server (docs/syn_grpo.md, ../specs: Huang et al. 2025, arXiv 2511.19343).

    producer ──SynthesisRequest──► backend (in-process threads, or HTTP to `mmrl serve-data`)
                                     └─ synthesizer: seed Sample + description → new Sample, or `Rejected(reason)`
    producer ◄──SynthesisResult────┘   (accepted sample or reject reason, with the request's policy version)

Every backend has the same three calls and none of them blocks the trainer: `submit` refuses (returns False)
when the request queue is full or the server cannot be reached; `poll` returns what has finished so far.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from mmrl.sample import Sample


@dataclass
class SynthesisRequest:
    """One synthesis job: a seed Sample and the scene description the policy wrote for it."""

    request_id: str
    """Unique per run; the delayed diversity reward is credited to the description through it."""
    seed: Sample
    """The Sample whose foreground (and labels) the new sample keeps; its image in memory or as a path."""
    description: str
    """The policy's new scene description (the text inside its `<answer>`); may be empty."""
    policy_version: int
    """The trainer step whose policy wrote the description."""


@dataclass
class SynthesisResult:
    """What became of one request: a verified new Sample, or the reason it was rejected."""

    request_id: str
    policy_version: int
    """Copied from the request: how old the sample is when the producer takes it."""
    sample: Sample | None = None
    """The synthesized Sample (new image, labels transformed); None when rejected."""
    reject_reason: str | None = None
    """Why no sample came out (`foreground_changed`, `new_instance`, `synthesizer_error`, ...); None if accepted.
    `LOST` is no verdict on the description: the backend lost the request (a server restarted with it queued)."""
    latency_s: float = 0.0
    """Seconds from the request's arrival at the backend to its result."""
    meta: dict = field(default_factory=dict)
    """Synthesizer facts for logging (canvas offset and scale, props added)."""

    @property
    def accepted(self) -> bool:
        return self.sample is not None


LOST = "lost"
"""The `reject_reason` of a request the backend lost (`HttpBackend`: queued on a server that then restarted):
the producer drops its description's pending reward instead of crediting it 0 (`desc/dropped/lost`)."""


class Rejected(Exception):
    """Raised by a synthesizer or a verifier: the request yields no sample, for the reason given."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Synthesizer(Protocol):
    """Makes one new Sample from a request, or raises `Rejected`. Deterministic given `rng`."""

    name: str

    def __call__(self, request: SynthesisRequest, rng: np.random.Generator) -> Sample: ...


class DataBackend(Protocol):
    """Where synthesis requests go and results come back from; no call waits on synthesis."""

    def submit(self, request: SynthesisRequest) -> bool:
        """Queue `request`; False (and counted in `metrics`) when it cannot be queued now. Never raises on a
        full queue or an unreachable server."""
        ...

    def poll(self, max_results: int) -> list[SynthesisResult]:
        """Up to `max_results` finished results, oldest first; [] when none is ready."""
        ...

    def metrics(self) -> dict[str, float]:
        """Queue depths, synthesis latency, rejects by reason, failures (`dataserver/...` names)."""
        ...

    def close(self) -> None:
        """Stop workers and connections; results not yet polled are dropped."""
        ...


__all__ = ["LOST", "DataBackend", "Rejected", "SynthesisRequest", "SynthesisResult", "Synthesizer"]
