"""Run configuration: nested dataclasses, loaded from YAML, overridden with `a.b=c` arguments.

Every field carries a docstring (the string literal right under it, CleanRL style). `field_docs`
reads them back from the source so that `--help` and error messages can quote them; a test checks
that no field lacks one. Unknown keys are errors that name the key and list the valid ones.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import os
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from mmrl.errors import ConfigError
from mmrl.game_config import SpyConfig

T = TypeVar("T")


def default_cache_dir() -> Path:
    """Where built artefacts (tiny models, the default corpus) live: $MMRL_CACHE, else the user cache."""
    if os.environ.get("MMRL_CACHE"):
        return Path(os.environ["MMRL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mmrl"


# --------------------------------------------------------------------------------------------------
# Schemas


@dataclass
class ModelConfig:
    path: str = "tiny:qwen2.5-vl"
    """Policy checkpoint: a local folder, a hub id, or `tiny:<family>` for the embedded default
    (a tiny random-init model of that family, built into the cache on first use)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype: `auto` (bfloat16 on GPU, float32 on CPU), `float32`, `bfloat16` or `float16`."""
    attn_implementation: str = "sdpa"
    """Attention kernel passed to transformers: `sdpa`, `eager` or `flash_attention_2`."""
    min_pixels: int = 4 * 28 * 28
    """Smallest pixel count an image is resized to (Qwen `smart_resize` lower bound)."""
    max_pixels: int = 256 * 28 * 28
    """Largest pixel count an image is resized to; bounds the image-token count per image."""
    video_min_pixels: int = 4 * 28 * 28
    """Smallest pixel count of one video frame."""
    video_max_pixels: int = 64 * 28 * 28
    """Largest pixel count of one video frame; bounds video tokens per frame."""
    video_fps: float = 2.0
    """Frames per second sampled from a video given as a file."""
    video_max_frames: int = 16
    """Most frames sampled from one video given as a file (evenly subsampled beyond this)."""


@dataclass
class CorpusConfig:
    root: str = ""
    """Folder the default corpus is built into; empty means `<cache>/corpus` (see MMRL_CACHE)."""
    seed: int = 0
    """Seed of every random choice in the corpus build; same seed, byte-identical files."""
    max_photos: int = 0
    """Use only the first N of scikit-image's bundled photos (0: all 14); small values make quick builds."""
    photo_size: int = 384
    """Longer side, in pixels, of the stored photos (scikit-image's bundled photos, resized)."""
    videos_per_photo: int = 2
    """Synthetic camera-motion videos (pans and zooms) made from each photo."""
    scene_videos: int = 8
    """Videos of animated procedural 3D scenes."""
    video_frames: int = 120
    """Frames per synthetic video (120 at 8 fps = 15 s: enough for 6 trimmed jigsaw clips)."""
    video_fps: float = 8.0
    """Frame rate of the synthetic videos."""
    video_size: tuple[int, int] = (256, 192)
    """Width and height of the synthetic videos, in pixels (both even)."""
    rgbd_scenes: int = 32
    """Procedural RGB-D scenes (RGB, depth, instance masks, boxes, scene graph)."""
    scene_size: tuple[int, int] = (320, 240)
    """Width and height of rendered RGB-D scenes, in pixels."""


@dataclass
class RolloutConfig:
    engine: Literal["hf", "vllm"] = "hf"
    """Generation engine: `hf` (transformers generate; everywhere) or `vllm` (GPU, optional extra)."""
    n: int = 4
    """Completions sampled per prompt (the GRPO group size G)."""
    max_new_tokens: int = 32
    """Most tokens generated per completion; longer ones are cut and marked truncated."""
    min_new_tokens: int = 0
    """Generate at least this many tokens before a stop token is allowed; for speed benchmarks at fixed length."""
    max_prompt_tokens: int = 2048
    """Most prompt tokens (text + visual) per prompt; a longer prompt is rejected, never cut."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1.0: off)."""
    top_k: int = 0
    """Top-k sampling (0: off)."""
    batch_size: int = 32
    """Most sequences (prompts x samples) generated in one engine call."""
    vllm_gpu_memory_utilization: float = 0.5
    """vLLM only: share of GPU memory its KV cache may take."""


@dataclass
class AlgorithmConfig:
    advantage: Literal["grpo", "dr_grpo", "rloo", "batch_std"] = "grpo"
    """Advantage estimator: `grpo` ((R - mean) / (std + eps)), `dr_grpo` (R - mean), `rloo`, `batch_std`."""
    advantage_eps: float = 1e-6
    """Epsilon added to the group std (grpo)."""
    loss: Literal["ppo_clip", "gspo"] = "ppo_clip"
    """Policy loss: `ppo_clip` (per-token ratio) or `gspo` (sequence-level ratio)."""
    clip_low: float = 0.2
    """Lower clip range: the ratio is clipped at 1 - clip_low."""
    clip_high: float = 0.2
    """Upper clip range: 1 + clip_high (DAPO clip-higher uses 0.28)."""
    dual_clip: float = 0.0
    """Dual-clip constant c for negative advantages (0: off; 3 is usual)."""
    aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = (
        "token-mean"
    )
    """Loss aggregation: `token-mean`, `seq-mean-token-mean`, `seq-mean-token-sum`, `seq-mean-token-sum-norm`."""
    kl_coef: float = 0.0
    """KL weight beta against the frozen reference; 0 loads no reference model."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """KL estimator: `k1`, `k2` or `k3`."""
    entropy_coef: float = 0.0
    """Entropy bonus weight c_H (loss -= c_H * entropy)."""
    ppo_epochs: int = 1
    """Passes over each rollout batch."""
    mini_batches: int = 1
    """Optimiser steps per pass (the rollout batch is split into this many mini-batches)."""
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal and refill with new prompts (DAPO)."""
    max_resample: int = 3
    """Dynamic sampling: most extra generation rounds per step."""
    replay: bool = False
    """Selective Sample Replay (VL-Rethinker): train on |advantage|-weighted draws from the rollout buffer."""
    replay_alpha: float = 1.0
    """Replay: sampling weight |A|^alpha."""
    replay_refill_factor: int = 2
    """Replay: training set size = buffer size / refill factor."""


@dataclass
class DataSource:
    task: str = "dominant_color"
    """Registry name of a task (live generator) or, with `path`, the task of a dataset on disk."""
    path: str = ""
    """Dataset folder (samples.jsonl + media); empty means generate Samples live from `source`."""
    source: str = "default"
    """Live generation: `default` (the default corpus) or a folder of source media."""
    weight: float = 1.0
    """Relative share of this source in the mixture."""
    params: dict = field(default_factory=dict)
    """Task parameters (the task's own dataclass fields)."""


@dataclass
class DataConfig:
    sources: list[DataSource] = field(default_factory=lambda: [DataSource()])
    """Weighted mixture of Sample sources."""
    prompts_per_step: int = 8
    """Prompts per optimiser step (each sampled `rollout.n` times)."""
    eval_samples: int = 32
    """Held-out Samples scored before and after training (0: no evaluation)."""
    seed: int = 0
    """Seed of data order and live generation."""


@dataclass
class TrainConfig:
    steps: int = 20
    """Optimiser steps (rollout batches) to run."""
    lr: float = 1e-5
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate schedule after warm-up: `constant`, `linear` or `cosine`."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this value (0: off)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward pass (gradient accumulation within a mini-batch)."""
    mixed_precision: Literal["no", "bf16"] = "bf16"
    """On CUDA, run forward passes under bf16 autocast (accelerate); ignored on CPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    freeze_vision: bool = False
    """Freeze the vision tower (the projector/merger stays trainable)."""
    freeze_projector: bool = False
    """Freeze the vision-language projector (merger)."""
    lora_rank: int = 0
    """LoRA rank on the language model's linear layers (0: full fine-tuning)."""
    lora_alpha: int = 16
    """LoRA alpha."""
    seed: int = 0
    """Seed of sampling and initialisation."""
    out_dir: str = "runs/quickstart"
    """Run folder: metrics, TensorBoard events, plots, checkpoints."""
    save_every: int = 10
    """Checkpoint every N steps (and at the end)."""
    keep_checkpoints: int = 2
    """Most recent checkpoints kept."""
    resume: str = ""
    """`auto` (latest complete checkpoint in out_dir), a checkpoint folder, or empty (start fresh)."""
    cold_start: bool = False
    """Run the supervised cold start (`sft.*`) first, unless `<sft.out_dir>/final` exists, then train
    GRPO from its model."""
    eval_every: int = 0
    """Score the held-out Samples every N steps (0: only before and after training)."""


@dataclass
class SFTConfig:
    steps: int = 100
    """Optimiser steps of supervised fine-tuning (`mmrl sft`)."""
    batch_size: int = 16
    """Samples per SFT step."""
    lr: float = 1e-4
    """SFT learning rate (AdamW, constant after `train.warmup_steps`)."""
    shuffle_answers: bool = False
    """Pair each prompt with the answer of another Sample: teaches the output format, not the task
    (a format-only cold start whose accuracy stays at chance)."""
    out_dir: str = "runs/sft"
    """SFT run folder; the final model is saved in `<out_dir>/final`."""


@dataclass
class LogConfig:
    tensorboard: bool = True
    """Write TensorBoard events next to the JSONL metrics."""
    progress: bool = True
    """Show a progress bar."""
    plot: bool = True
    """Write the reward-curve PNG at the end."""
    samples_every: int = 5
    """Log a few completions every N steps (0: never)."""


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Policy checkpoint and pixel budgets."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Generation engine and sampling."""
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    """Advantages, loss, KL, entropy and sampling tricks."""
    data: DataConfig = field(default_factory=DataConfig)
    """Sample sources and batch size."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, freezing, LoRA, checkpoints."""
    log: LogConfig = field(default_factory=LogConfig)
    """Metrics, TensorBoard, plots."""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    """The default corpus used by live generators with `source: default`."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Supervised cold start (`mmrl sft`)."""
    game: SpyConfig = field(default_factory=SpyConfig)
    """Self-play game (`game.name: spy`) producing the rollouts instead of the task mixture of `data`."""


# --------------------------------------------------------------------------------------------------
# Field docs


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Map each field of dataclass `cls` to the docstring written right under it in the source."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe(cls: type, prefix: str = "") -> str:
    """One line per field (nested dataclasses flattened as `a.b`): name, type, default, doc."""
    lines = []
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            lines.append(describe(hint, prefix + f.name + "."))
            continue
        default = _default_of(f)
        lines.append(f"  {prefix}{f.name} ({_type_name(hint)}, default {default!r}): {docs.get(f.name, '')}")
        item = (typing.get_args(hint) or (None,))[0]
        if typing.get_origin(hint) is list and dataclasses.is_dataclass(item):
            lines.append(describe(item, prefix + f.name + "[]."))
    return "\n".join(lines)


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


# --------------------------------------------------------------------------------------------------
# Loading


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build a `cls` instance from defaults, then the YAML file at `path`, then `a.b=c` overrides.

    Override values are parsed as YAML scalars/lists (`train.lr=1e-6`, `data.tasks=[a,b]`).
    """
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        data = loaded or {}
    config = from_dict(cls, data, source=source)
    for item in overrides or []:
        apply_override(config, item)
    return config


def from_dict(cls: type[T], data: dict[str, Any], source: str = "", prefix: str = "") -> T:
    """Build `cls` from a nested dict, validating keys and value types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{_where(source)}'{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(_unknown_key_message(f"{prefix}{key}", key, names, source))
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = from_dict(hint, value or {}, source, f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, hint, f"{prefix}{key}", source)
    return cls(**kwargs)


def apply_override(config: Any, item: str) -> None:
    """Apply one `a.b=c` override to `config` in place."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key=value (e.g. model.max_pixels=200704)")
    dotted, raw = item.split("=", 1)
    parts = dotted.strip().split(".")
    target = config
    for depth, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(target)]
        if part not in names:
            raise ConfigError(_unknown_key_message(".".join(parts[: depth + 1]), part, names, "override"))
        if depth == len(parts) - 1:
            hint = typing.get_type_hints(type(target))[part]
            if dataclasses.is_dataclass(hint):
                raise ConfigError(f"override '{item}' sets a whole section; set one of its keys instead")
            try:
                value = yaml.safe_load(raw) if raw.strip() else ""
            except yaml.YAMLError:
                value = raw
            setattr(target, part, _coerce(value, hint, dotted, "override"))
        else:
            target = getattr(target, part)
            if not dataclasses.is_dataclass(target):
                raise ConfigError(f"override '{item}': '{'.'.join(parts[: depth + 1])}' is not a section")


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain nested dicts/lists (for saving next to a run)."""
    return _plain(dataclasses.asdict(config))


def save_config(config: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _where(source: str) -> str:
    return f"{source}: " if source else ""


def _unknown_key_message(dotted: str, key: str, valid: list[str], source: str) -> str:
    hint = difflib.get_close_matches(key, valid, n=1)
    suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
    return f"{_where(source)}unknown config key '{dotted}'{suggestion}; valid keys here: {', '.join(valid)}"


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `hint`, converting where lossless (int -> float, list -> tuple)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)

    def fail() -> ConfigError:
        return ConfigError(f"{_where(source)}config key '{key}' expects {_type_name(hint)}, got {value!r}")

    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):  # e.g. the items of `data.sources`
        return from_dict(hint, value, source, f"{key}.")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                continue
        raise fail()
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{_where(source)}config key '{key}' must be one of {list(args)}, got {value!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-6` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise fail()
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `run.name=42` is a string the user meant
        raise fail()
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise fail()
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise fail()
            return tuple(_coerce(v, a, key, source) for v, a in zip(value, args))
        item = args[0] if args else Any
        items = [_coerce(v, item, key, source) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise fail()
        return dict(value)
    return value


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + "|".join(map(str, typing.get_args(hint)))
    if typing.get_origin(hint) is not None:
        return str(hint).replace("typing.", "").replace("mmrl.config.", "")
    return getattr(hint, "__name__", None) or str(hint)


__all__ = [
    "CorpusConfig",
    "ModelConfig",
    "SpyConfig",
    "apply_override",
    "default_cache_dir",
    "describe",
    "field_docs",
    "from_dict",
    "load_config",
    "save_config",
    "to_dict",
]
