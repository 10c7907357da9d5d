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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mmrl.errors import ConfigError

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
    dtype: str = "auto"
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
    video_frames: int = 48
    """Frames per synthetic video."""
    video_fps: float = 8.0
    """Frame rate of the synthetic videos."""
    video_size: tuple[int, int] = (256, 192)
    """Width and height of the synthetic videos, in pixels (both even)."""
    rgbd_scenes: int = 32
    """Procedural RGB-D scenes (RGB, depth, instance masks, boxes, scene graph)."""
    scene_size: tuple[int, int] = (320, 240)
    """Width and height of rendered RGB-D scenes, in pixels."""


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
        type_name = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
        lines.append(f"  {prefix}{f.name} ({type_name}, default {default!r}): {docs.get(f.name, '')}")
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
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


__all__ = [
    "CorpusConfig",
    "ModelConfig",
    "apply_override",
    "default_cache_dir",
    "describe",
    "field_docs",
    "from_dict",
    "load_config",
    "save_config",
    "to_dict",
]
