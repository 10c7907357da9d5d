"""Synthesizers by name: what a data-server worker runs on each request (`mmrl.dataserver.protocol.Synthesizer`).

`build_synthesizer(name, params, worker)` gives worker `worker` its own instance (a GPU pipeline is loaded
once per worker). Names: the built-in ones in `SYNTHESIZERS`, or `package.module:attribute` naming a
user's synthesizer class (called as `attribute(worker=worker, **params)`). Built in: `identity` (the seed
unchanged; tests and overhead), `procedural` (`mmrl.dataserver.procedural`: a new scene around the kept
objects) and `outpaint` (`mmrl.dataserver.outpaint`: diffusers outpainting around the kept foreground).
"""

from __future__ import annotations

import copy
import importlib
from typing import Any

import numpy as np

from mmrl.dataserver.protocol import Rejected, SynthesisRequest, Synthesizer
from mmrl.errors import ConfigError
from mmrl.sample import Sample


class IdentitySynthesizer:
    """The seed Sample unchanged, as a new Sample (id `<seed id>~<request id>`): for tests and for measuring
    the server's own overhead. An empty description is rejected (`empty_description`), as with every
    synthesizer."""

    name = "identity"

    def __init__(self, worker: int = 0) -> None:
        self.worker = worker

    def __call__(self, request: SynthesisRequest, rng: np.random.Generator) -> Sample:
        if not request.description.strip():
            raise Rejected("empty_description")
        sample = copy.deepcopy(request.seed)
        sample.id = f"{request.seed.id}~{request.request_id}"
        sample.meta = {**sample.meta, "synthesized": {"synthesizer": self.name, "request_id": request.request_id}}
        return sample


SYNTHESIZERS: dict[str, type | str] = {
    "identity": IdentitySynthesizer,
    "procedural": "mmrl.dataserver.procedural:ProceduralSynthesizer",
    "outpaint": "mmrl.dataserver.outpaint:OutpaintSynthesizer",
}
"""Built-in synthesizers: a class, or `module:Class` imported on first use (open3d, diffusers load lazily)."""


def build_synthesizer(name: str, params: dict[str, Any] | None = None, worker: int = 0) -> Synthesizer:
    """The synthesizer `name` for worker `worker`, built with `params`; a clear error for an unknown name."""
    params = dict(params or {})
    builtin = SYNTHESIZERS.get(name)
    if isinstance(builtin, str):
        name = builtin
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"synthesizer '{name}' cannot be loaded: {e}") from e
    elif builtin is not None:
        factory = builtin
    else:
        raise ConfigError(f"unknown synthesizer '{name}'; built-in: {', '.join(sorted(SYNTHESIZERS))}, "
                          "or 'package.module:Class'")  # fmt: skip
    try:
        return factory(worker=worker, **params)
    except TypeError as e:
        raise ConfigError(f"synthesizer '{name}' does not take these parameters {sorted(params)}: {e}") from e


__all__ = ["SYNTHESIZERS", "IdentitySynthesizer", "build_synthesizer"]
