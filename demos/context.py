"""What every tab of the demo shares: the corpus config, the allowed folders, limits, a scratch folder, and the
model the Model and Spy tabs sample from."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demos.safety import DEFAULT_MAX_UPLOAD_MB, Roots
from mmrl.config import CorpusConfig


@dataclass
class LoadedModel:
    """A policy loaded for sampling: where it came from, the model, its processor and the model config."""

    name: str
    model: Any
    processor: Any
    model_cfg: Any


@dataclass
class DemoContext:
    """Settings of one app instance (`mmrl demo` flags) and the state its tabs share."""

    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    """The default corpus the `default` source reads (built into the cache on first use)."""
    roots: Roots = field(default_factory=Roots)
    """Folders a user may type paths into (runs, datasets, checkpoints)."""
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    work_dir: Path = field(default_factory=lambda: Path("."))
    """Scratch folder of this instance: encoded videos, uploads (a temp folder, removed at exit)."""
    model: LoadedModel | None = None
    """The model loaded in the Model tab (the Spy tab plays with it too); one per app, shared by sessions."""
    model_lock: threading.Lock = field(default_factory=threading.Lock)
    """Held while the model loads or samples: one generation at a time on a CPU."""


__all__ = ["DemoContext", "LoadedModel"]
