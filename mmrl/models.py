"""Policy checkpoints: path resolution, loading (model and processor), hub offline handling.

`resolve_model_path` turns `tiny:<family>` into a cached tiny build (`mmrl.tiny`, built on first use),
a local folder into itself, anything else into a hub id. `load_policy` loads tiny and real checkpoints
the same way; pixel budgets always come from the config, never from environment variables.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from filelock import FileLock

from mmrl.config import ModelConfig, default_cache_dir
from mmrl.errors import ConfigError, MMRLError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, ProcessorMixin

log = logging.getLogger(__name__)


def resolve_model_path(path: str) -> str:
    """`tiny:<family>` -> cached tiny build (built on first use); local folder -> itself; else a hub id."""
    if path.startswith("tiny:"):
        from mmrl.tiny import FAMILIES, build_tiny  # mmrl.tiny imports this module

        family = path.removeprefix("tiny:")
        if family not in FAMILIES:
            raise MMRLError(f"unknown tiny model '{path}'; valid: {', '.join('tiny:' + f for f in FAMILIES)}")
        out = default_cache_dir() / "models" / f"tiny-{family}"
        if not (out / "config.json").exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            if distributed_rank() > 0:
                # Under torch.distributed, transformers writes weights on rank 0 only: rank 0 builds.
                _wait_for(out / "config.json", timeout=600)
            else:
                with FileLock(str(out) + ".lock"):  # several processes may ask at once: one builds
                    if not (out / "config.json").exists():
                        log.info("building tiny %s model into %s (first use)", family, out)
                        build_tiny(family, out)
        return str(out)
    local = Path(path).expanduser()
    if local.is_dir():
        return str(local)
    if path.startswith(("/", ".", "~")) or local.exists():
        raise MMRLError(f"model path '{path}' does not exist or is not a folder")
    return path  # a hub id: read from the Hugging Face cache; fetched only with model.allow_download


def hub_download_allowed(cfg: ModelConfig) -> bool:
    """Whether a hub id may be fetched: only when the config asks for it and offline mode (HF_HUB_OFFLINE,
    TRANSFORMERS_OFFLINE) is not set."""
    from huggingface_hub import constants

    return cfg.allow_download and not constants.is_offline_mode()


@contextlib.contextmanager
def hub_offline(offline: bool) -> Iterator[None]:
    """Put huggingface_hub in offline mode for the block: every HTTP request it would make raises instead.

    `local_files_only` alone is not enough: building request headers fetches the Hub's agent registry.
    The flag is the module attribute `huggingface_hub.constants.HF_HUB_OFFLINE`, read at call time.
    """
    from huggingface_hub import constants

    was = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = was or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = was


def _from_pretrained(loader, path: str, cfg: ModelConfig, what: str, **kwargs):
    """`loader.from_pretrained(path)`, reading a hub id from the local cache only, unless downloads are allowed."""
    download = hub_download_allowed(cfg)
    try:
        with hub_offline(not download):
            return loader.from_pretrained(path, local_files_only=not download, **kwargs)
    except _LOAD_ERRORS as e:
        if not download and not Path(path).expanduser().is_dir():
            raise MMRLError(
                f"cannot load a {what} from '{path}': it is not a local folder and not in the Hugging Face cache, "
                "and downloads are off; point model.path at a local checkpoint, or set model.allow_download=true "
                "(with HF_HUB_OFFLINE unset) to fetch it"
            ) from None
        raise MMRLError(f"cannot load a {what} from '{path}': {_first_line(e)}") from None


def distributed_rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise MMRLError(f"waited {timeout:.0f}s for rank 0 to build {path.parent}; it did not appear")
        time.sleep(0.2)


def load_processor(cfg: ModelConfig) -> ProcessorMixin:
    """The checkpoint's processor with pixel budgets and frame sampling taken from `cfg`.

    Videos given as frames (a list of images or a (T, H, W, C) array) are used as given
    (`do_sample_frames=False`). To sample a decoded file at `cfg.video_fps` (at most
    `cfg.video_max_frames` frames), pass `processor_kwargs={"do_sample_frames": True,
    "video_metadata": meta}` with the decoder's metadata (transformers' `load_video` returns it).
    """
    from transformers import AutoProcessor

    path = resolve_model_path(cfg.path)
    processor = _from_pretrained(AutoProcessor, path, cfg, "processor")
    processor.image_processor.size = {"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels}
    if (vp := getattr(processor, "video_processor", None)) is not None:
        set_video_budget(vp, cfg.video_min_pixels, cfg.video_max_pixels, cfg.video_fps, cfg.video_max_frames)
    return processor


def set_video_budget(vp, min_pixels: int, max_pixels: int, fps: float, max_frames: int) -> None:
    """Per-frame pixel bounds and fps sampling on a Qwen video processor (Qwen2 and Qwen3 differ)."""
    vp.fps, vp.max_frames, vp.num_frames, vp.do_sample_frames = fps, max_frames, None, False
    if "Qwen3" in type(vp).__name__:
        # Qwen3's `size` bounds the whole clip (t*h*w); the per-frame cap is `max_video_tokens` tokens.
        factor = vp.patch_size * vp.merge_size
        vp.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels * max_frames}
        vp.cap_pixels_per_frame, vp.max_video_tokens = True, max(1, max_pixels // factor**2)
    else:
        vp.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}  # per frame
        vp.cap_pixels_per_frame = False  # no extra whole-clip cap (and no v5 warning about it)


def load_policy(cfg: ModelConfig, device: str | torch.device | None = None) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load (model, processor) for `cfg`; tiny and real checkpoints take the same path.

    `device` defaults to cuda when available, else cpu; `cfg.dtype="auto"` means bfloat16 on CUDA
    and float32 elsewhere. A hub id is read from the Hugging Face cache, and fetched only when
    `cfg.allow_download` is set (never under HF_HUB_OFFLINE=1). A missing or broken checkpoint raises
    MMRLError naming it.
    """
    from transformers import AutoModelForImageTextToText

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = _dtype(cfg.dtype, device)
    path = resolve_model_path(cfg.path)
    processor = load_processor(dataclasses.replace(cfg, path=path))
    model = _from_pretrained(
        AutoModelForImageTextToText, path, cfg, "model", dtype=dtype, attn_implementation=cfg.attn_implementation
    )
    return model.to(device), processor


def image_factor(processor: ProcessorMixin) -> int:
    """Side length, in pixels, that resized images are multiples of (patch x merge: 28 or 32)."""
    ip = processor.image_processor
    return int(ip.patch_size * ip.merge_size)


_LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError)  # what transformers raises for a bad folder


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise ConfigError(f"model.dtype '{name}' is not one of: auto, {', '.join(dtypes)}")
    return dtypes[name]
