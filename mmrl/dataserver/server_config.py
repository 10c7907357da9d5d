"""The settings of one `mmrl serve-data` process, apart from the server so that `mmrl --help` can describe
them without importing the web framework."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
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


def load_server_config(path: str | None, overrides: list[str]) -> ServerConfig:
    """The settings of `mmrl serve-data --config path key=value...`. `path` is a server config (the fields
    above), or a training config with a `dataserver:` section: then the server runs what that run asks for
    (its `synthesizer`, `synthesizer_params`, `workers`, queue sizes and token, seeded with `data.seed`), so
    one file describes both sides. Overrides name `ServerConfig` fields (`port=8601`) either way."""
    from mmrl.config import RunConfig
    from mmrl.config_tools import apply_override, load_config, validate_config

    if path is None or "dataserver" not in (_top_level(path) or {}):
        return load_config(ServerConfig, path, overrides)
    run = load_config(RunConfig, path)
    ds = run.dataserver
    cfg = ServerConfig(token=ds.token, workers=ds.workers, request_queue=ds.request_queue,
                       ready_queue=ds.ready_queue, synthesizer=ds.synthesizer, params=dict(ds.synthesizer_params),
                       seed=run.data.seed)  # fmt: skip
    for item in overrides:
        apply_override(cfg, item)
    validate_config(cfg)
    return cfg


def _top_level(path: str) -> dict | None:
    """The YAML mapping at `path`, or None when it is not one (`load_config` then says what is wrong)."""
    import yaml

    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return loaded if isinstance(loaded, dict) else None


def is_loopback(host: str) -> bool:
    """Whether `host` is `localhost` or a loopback IP literal (127.0.0.0/8, ::1); names are not resolved."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


__all__ = ["ServerConfig", "is_loopback", "load_server_config"]
