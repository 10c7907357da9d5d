"""diffusers pipelines for the generator backends: tiny random-init builds, a once-per-process loader, seeded
batched calls and a check of what comes out.

- `build_tiny_pipeline(kind, out_dir)` saves a tiny random-init Stable-Diffusion pipeline of one `kind`
  (`text2image`: 4-channel UNet; `inpaint`: 9-channel; `instruct_pix2pix`: 8-channel, the latents plus the
  source image's latents, as InstructPix2Pix conditions on them). All kinds share one VAE, one 2-layer CLIP
  text encoder and one character-level tokenizer written here; a pipeline loads back by path like a real one.
- `tiny_pipeline_dir(kind)` builds that once into `mmrl.config.default_cache_dir()` and reuses it; the build
  goes to a temp folder that is renamed into place (`mmrl.durable`), so two processes building at once
  both end with one complete folder and never see half of one.
- `load_pipeline(model, kind)` loads `"tiny"` (the cached build of `kind`), a local folder or a hub id that
  is already in the local cache (never downloads unless asked) ONCE per process: later calls with the same
  model, device and dtype return the same object.
- `run_pipeline(pipe, prompts, seeds, ...)` makes one batched call with one `torch.Generator` per item, so
  item i depends on its own seed only (the batch gives the same images as one-by-one calls up to float
  rounding of batched kernels); `seed_from(rng)` draws such a seed from a numpy Generator.
- `image_defect(pixels)` says why an output is unusable (non-finite pixels, one flat colour) or None.

The tiny pipelines' images are noise: they exist so that every code path runs on a CPU in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from mmrl.durable import fsync_dir, fsync_tree, owner, publish
from mmrl.errors import ConfigError

PipelineKind = Literal["text2image", "inpaint", "instruct_pix2pix"]
KINDS: tuple[str, ...] = ("text2image", "inpaint", "instruct_pix2pix")
UNET_INPUT_CHANNELS = {"text2image": 4, "inpaint": 9, "instruct_pix2pix": 8}
"""Latent channels the UNet of each kind reads: 4 noisy latents, + 4 masked-image latents + 1 mask (inpaint),
+ 4 source-image latents (InstructPix2Pix)."""
TINY_VERSION = 1
"""Bumped when the tiny builds change, so an older cached build is not mistaken for the current one."""
TINY_MARKER = "mmrl_tiny_diffusion.json"
"""File in every tiny build (kind, seed, version): tells a folder that a rebuild may replace."""
BLANK_TOLERANCE = 2 / 255
"""Largest per-channel spread (max - min, pixels in [0, 1]) of an image that counts as one flat colour."""

_LOADED: dict[tuple[str, str, str], Any] = {}
_LOAD_LOCK = threading.Lock()
_BUILD_LOCK = threading.Lock()
"""One tiny build at a time per process: a build seeds torch's process-wide RNG (threads would interleave their
draws), and diffusers' lazy imports are not thread-safe. Processes build side by side (see tiny_pipeline_dir)."""


# -- tiny random-init pipelines ----------------------------------------------------------------------------


def tiny_tokenizer(work_dir: Path):
    """A CLIP tokenizer over printable ASCII characters (each with and without CLIP's end-of-word mark), no
    merges: every character is one token, so any prompt tokenizes. Its source files go to `work_dir`."""
    from transformers import CLIPTokenizer

    work_dir.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(33, 127)]  # printable ASCII; CLIP's byte-to-unicode map keeps these as they are
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    (work_dir / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (work_dir / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return CLIPTokenizer(str(work_dir / "vocab.json"), str(work_dir / "merges.txt"), model_max_length=32)


def tiny_components(kind: str, tokenizer_dir: Path) -> dict[str, Any]:
    """The modules of a tiny pipeline of `kind` (tokenizer, text encoder, UNet, VAE, DDIM scheduler), drawn from
    torch's global RNG in that order (seed it first). DDIM with eta = 0 adds no noise after the first draw."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if kind not in UNET_INPUT_CHANNELS:
        raise ConfigError(f"unknown diffusers pipeline kind '{kind}'; valid kinds: {', '.join(KINDS)}")
    tokenizer = tiny_tokenizer(tokenizer_dir)
    n = len(tokenizer)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=n, hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=32,
                                                bos_token_id=n - 2, eos_token_id=n - 1,
                                                pad_token_id=n - 1))  # fmt: skip
    unet = UNet2DConditionModel(sample_size=16, in_channels=UNET_INPUT_CHANNELS[kind], out_channels=4,
                                layers_per_block=1, block_out_channels=(32, 64),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=16)  # fmt: skip
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=16, sample_size=32)  # fmt: skip
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1
    )
    return {"vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet, "scheduler": scheduler}


def _pipeline_class(kind: str):
    import diffusers

    return {
        "text2image": diffusers.StableDiffusionPipeline,
        "inpaint": diffusers.StableDiffusionInpaintPipeline,
        "instruct_pix2pix": diffusers.StableDiffusionInstructPix2PixPipeline,
    }[kind]


def build_tiny_pipeline(kind: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny random-init Stable-Diffusion pipeline of `kind` (module docstring) to `out_dir` and return it.

    The build is written to a temp folder beside `out_dir` and renamed into place, so a reader never sees a
    half-written pipeline. An existing `out_dir` is replaced only when it is empty or an earlier tiny build (it
    holds `TINY_MARKER`); any other folder is refused. Same seed, same weights. The caller's torch RNG state is
    left as it was."""
    import torch

    if kind not in UNET_INPUT_CHANNELS:
        raise ConfigError(f"unknown diffusers pipeline kind '{kind}'; valid kinds: {', '.join(KINDS)}")
    out = Path(out_dir).expanduser()
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / TINY_MARKER).is_file())):
        raise ConfigError(f"{out} exists and is neither empty nor an earlier tiny diffusers build; building there "
                          "would replace it: choose an empty or new folder")  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{owner()}.", dir=out.parent))
    try:
        with _BUILD_LOCK:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                parts = tiny_components(kind, tmp / "_tokenizer_src")
            shutil.rmtree(tmp / "_tokenizer_src")  # save_pretrained writes the tokenizer's own copy
            pipe = _pipeline_class(kind)(**parts, safety_checker=None, feature_extractor=None,
                                         requires_safety_checker=False)  # fmt: skip
            pipe.save_pretrained(tmp)
        marker = {"kind": kind, "seed": seed, "version": TINY_VERSION}
        (tmp / TINY_MARKER).write_text(json.dumps(marker) + "\n")
        fsync_tree(tmp)
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def tiny_pipeline_dir(kind: str, cache_dir: str | Path | None = None) -> Path:
    """The cached tiny pipeline of `kind` under `cache_dir` (default `mmrl.config.default_cache_dir()`), built on
    first use. Concurrent first uses each build into their own temp folder; the first rename wins and the
    others drop their copy (a rename onto a non-empty folder fails), so the folder is never half there."""
    from mmrl.config import default_cache_dir

    if kind not in UNET_INPUT_CHANNELS:
        raise ConfigError(f"unknown diffusers pipeline kind '{kind}'; valid kinds: {', '.join(KINDS)}")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "diffusion"
    final = root / f"tiny-{kind}-v{TINY_VERSION}"
    if (final / "model_index.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.{owner()}.", dir=root))
    try:
        built = build_tiny_pipeline(kind, staging / "pipe")
        try:
            os.replace(built, final)
            fsync_dir(root)
        except OSError:
            if not (final / "model_index.json").is_file():  # not a lost race: a real problem
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


# -- loading once per process ------------------------------------------------------------------------------


def resolve_device(device: str = "") -> str:
    """`device`, or `cuda` when a GPU is visible, else `cpu`."""
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def load_pipeline(model: str, kind: str, *, device: str = "", dtype: str = "auto", allow_download: bool = False,
                  cache_dir: str | Path | None = None):  # fmt: skip
    """The diffusers pipeline at `model`, loaded once per process and shared (keyed by path, device and dtype).

    `model`: `"tiny"` (the cached tiny build of `kind`, see `tiny_pipeline_dir`), a local folder, or a hub id
    already in the local cache; the class comes from the folder's `model_index.json` (any diffusers pipeline).
    Nothing is downloaded unless `allow_download`. `dtype`: `auto` (float16 on a GPU, float32 on CPU),
    `float16`, `bfloat16` or `float32`."""
    import torch
    from diffusers import DiffusionPipeline

    if not model:
        raise ConfigError(f"no diffusers model given for the {kind} pipeline: use 'tiny', a folder or a cached hub id")
    if dtype not in ("auto", "float16", "bfloat16", "float32"):
        raise ConfigError(f"diffusers dtype '{dtype}' is not one of auto, float16, bfloat16, float32")
    device = resolve_device(device)
    path = str(tiny_pipeline_dir(kind, cache_dir)) if model == "tiny" else model
    if dtype == "auto":
        dtype = "float32" if device == "cpu" else "float16"
    key = (str(Path(path).expanduser().resolve()) if Path(path).expanduser().exists() else path, device, dtype)
    with _LOAD_LOCK:
        if key in _LOADED:
            return _LOADED[key]
        try:
            pipe = DiffusionPipeline.from_pretrained(path, dtype=getattr(torch, dtype),
                                                     local_files_only=not allow_download)  # fmt: skip
        except (OSError, ValueError) as e:
            hint = "" if allow_download else " (allow_download is off: only local folders and cached ids load)"
            raise ConfigError(f"cannot load the diffusers {kind} pipeline '{model}'{hint}: {e}") from e
        pipe.set_progress_bar_config(disable=True)
        _LOADED[key] = pipe.to(device)
        return _LOADED[key]


def loaded_pipelines() -> int:
    """How many pipelines this process holds (tests check that a second load reuses the first)."""
    return len(_LOADED)


# -- seeded, batched calls ---------------------------------------------------------------------------------


def seed_from(rng: np.random.Generator) -> int:
    """A torch seed drawn from `rng` (one draw), so an item's noise follows its own numpy Generator."""
    return int(rng.integers(2**62))


def run_pipeline(pipe, prompts: Sequence[str], seeds: Sequence[int], *, images: Sequence[Image.Image] | None = None,
                 steps: int = 2, size: tuple[int, int] | None = None, **call_kwargs: Any) -> np.ndarray:  # fmt: skip
    """One batched call of `pipe`: prompt i with `torch.Generator('cpu').manual_seed(seeds[i])` (and source image
    `images[i]` for an editing pipeline, all of one size). `size` = (width, height) for text-to-image, None for the
    pipeline's default. Returns float pixels (N, H, W, 3) as the pipeline decoded them, NaN included (clamping
    keeps NaN, so `image_defect` still sees it). CPU generators make the noise the same on every device."""
    import torch

    if len(prompts) != len(seeds) or (images is not None and len(images) != len(prompts)):
        raise ValueError(f"{len(prompts)} prompts, {len(seeds)} seeds and "
                         f"{'no' if images is None else len(images)} images do not pair up")  # fmt: skip
    if not prompts:
        return np.zeros((0, 0, 0, 3), np.float32)
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    kwargs: dict[str, Any] = dict(call_kwargs)
    if images is not None:
        kwargs["image"] = list(images)
    if size is not None:
        kwargs["width"], kwargs["height"] = size
    with torch.inference_mode():
        out = pipe(prompt=list(prompts), generator=generators, num_inference_steps=steps, output_type="np", **kwargs)
    return np.asarray(out.images, dtype=np.float32)


def image_defect(pixels: np.ndarray, blank_tolerance: float = BLANK_TOLERANCE) -> str | None:
    """Why a generated image is unusable, or None. `pixels`: (H, W, 3) floats in [0, 1] (uint8 is rescaled).

    - non-finite: any NaN or inf (a diverged UNet or VAE);
    - blank: every channel's spread max - min <= `blank_tolerance` (one flat colour)."""
    arr = np.asarray(pixels)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255
    if arr.size == 0:
        return "empty image"
    if not np.isfinite(arr).all():
        return "non-finite pixels (NaN or inf)"
    spread = np.ptp(arr.reshape(-1, arr.shape[-1]), axis=0) if arr.ndim == 3 else np.ptp(arr)
    if float(np.max(spread)) <= blank_tolerance:
        return "blank: one flat colour"
    return None


def to_pil(pixels: np.ndarray) -> Image.Image:
    """Float pixels in [0, 1] (finite) to an RGB image, rounded to the nearest level."""
    return Image.fromarray(np.rint(np.clip(pixels, 0, 1) * 255).astype(np.uint8), "RGB")


def changed_fraction(before: np.ndarray | Image.Image, after: np.ndarray | Image.Image, threshold: int = 32) -> float:
    """Fraction of pixels whose largest channel difference exceeds `threshold` (0..255):
    |{p : max_c |a_pc - b_pc| > threshold}| / (H W). Both images must have one size."""
    a = np.asarray(before, dtype=np.int16)
    b = np.asarray(after, dtype=np.int16)
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")
    diff = np.abs(a - b)
    return float((diff.max(axis=-1) > threshold).mean()) if diff.ndim == 3 else float((diff > threshold).mean())


__all__ = [
    "BLANK_TOLERANCE",
    "KINDS",
    "build_tiny_pipeline",
    "changed_fraction",
    "image_defect",
    "load_pipeline",
    "loaded_pipelines",
    "resolve_device",
    "run_pipeline",
    "seed_from",
    "tiny_components",
    "tiny_pipeline_dir",
    "tiny_tokenizer",
    "to_pil",
]
