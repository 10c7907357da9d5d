"""Synthesizers for the data server's fault tests, loaded by the server subprocess as
`dataserver_plugins:<Class>` (the tests put this folder on its PYTHONPATH)."""

from __future__ import annotations

import time

import numpy as np

from mmrl.dataserver.protocol import SynthesisRequest
from mmrl.dataserver.synthesizers import IdentitySynthesizer, build_synthesizer
from mmrl.sample import Sample


class SlowSynthesizer(IdentitySynthesizer):
    """The identity synthesizer, `delay_s` seconds per request: a server slower than training."""

    name = "slow"

    def __init__(self, worker: int = 0, delay_s: float = 0.5) -> None:
        super().__init__(worker)
        self.delay_s = delay_s

    def __call__(self, request: SynthesisRequest, rng: np.random.Generator) -> Sample:
        time.sleep(self.delay_s)
        return super().__call__(request, rng)


class RaisingSynthesizer:
    """A buggy synthesizer: raises on every request whose description contains `boom`."""

    name = "raising"

    def __init__(self, worker: int = 0) -> None:
        self.identity = IdentitySynthesizer(worker)

    def __call__(self, request: SynthesisRequest, rng: np.random.Generator) -> Sample:
        if "boom" in request.description:
            raise RuntimeError("synthesizer bug")
        return self.identity(request, rng)


class DelayedSynthesizer:
    """A built-in synthesizer (`inner`, built with the other params) that sleeps `delay_s` before each request:
    real synthesis on a server slower than training, so requests are still queued when it is killed."""

    name = "delayed"

    def __init__(self, worker: int = 0, inner: str = "procedural", delay_s: float = 0.5, **params: object) -> None:
        self.inner = build_synthesizer(inner, params, worker)
        self.delay_s = delay_s

    def __call__(self, request: SynthesisRequest, rng: np.random.Generator) -> Sample:
        time.sleep(self.delay_s)
        return self.inner(request, rng)
