"""The settings of one `mmrl serve-data` process, apart from the server so that `mmrl --help` can describe
them without importing the web framework."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Annotated, Any

from mmrl.dataserver.wire import WireLimits


@dataclass
class ServerConfig:
    """One `mmrl serve-data` process (`--config X.yaml` plus `key=value` overrides)."""

    host: str = "127.0.0.1"
    """Address to bind. Anything but a loopback address needs a token."""
    port: Annotated[int, "[0, 65535]"] = 8765
    """TCP port; 0 picks a free one (printed at start)."""
    token: str = ""
    """Bearer token every endpoint but /health requires; prefer `--token` or MMRL_DATA_TOKEN to a file."""
    workers: Annotated[int, ">= 1"] = 1
    """Synthesizer workers (threads); with GPUs, one per GPU: worker w gets its own synthesizer(worker=w)."""
    request_queue: Annotated[int, ">= 1"] = 256
    """Requests waiting for a worker; beyond it new requests are refused (the client retries them)."""
    ready_queue: Annotated[int, ">= 1"] = 512
    """Finished results waiting for a client; while full the workers pause."""
    synthesizer: str = "identity"
    """Built-in synthesizer name or `package.module:Class` (mmrl.dataserver.synthesizers)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the synthesizer."""
    seed: Annotated[int, ">= 0"] = 0
    """Seed of every synthesis: request r gets numpy.random.default_rng([seed, crc32(r)])."""
    max_body_bytes: Annotated[int, ">= 1024"] = 64 * 1024 * 1024
    """Largest request body, in bytes; larger ones get 413 before they are read in full."""
    max_batch: Annotated[int, ">= 1"] = 256
    """Most requests in one POST /v1/requests."""
    max_image_pixels: Annotated[int, ">= 1"] = 4096 * 4096
    """Largest width x height of one image in a request (checked from the PNG header)."""
    max_description_chars: Annotated[int, ">= 1"] = 4000
    """Longest scene description, in characters."""

    def limits(self) -> WireLimits:
        return WireLimits(max_image_pixels=self.max_image_pixels, max_description_chars=self.max_description_chars)


def is_loopback(host: str) -> bool:
    """Whether `host` is `localhost` or a loopback IP literal (127.0.0.0/8, ::1); names are not resolved."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


__all__ = ["ServerConfig", "is_loopback"]
