"""Synthesizers for the data server's fault tests, loaded by the server subprocess as
`dataserver_plugins:<Class>` (the tests put this folder on its PYTHONPATH)."""

from __future__ import annotations

import time

import numpy as np

from mmrl.dataserver.protocol import SynthesisRequest
from mmrl.dataserver.synthesizers import IdentitySynthesizer
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
