"""Atomic, resumable training checkpoints (R9: resume reproduces the exact data order).

A checkpoint is one folder, `<run_dir>/checkpoints/step-0000010/`:

    model/                  full model: `save_pretrained` (safetensors, the model's own key names), or
                            `model.safetensors` for a plain `torch.nn.Module`
    adapter/                instead of model/ for a peft model: only the adapter (`save_pretrained`)
    trainable.safetensors   peft only: base-model weights trained outside the adapter (e.g. an unfrozen
                            vision tower), which the adapter alone would lose
    optimizer.pt            optimizer state dict (AdamW moments, step counts)
    scheduler.pt            learning-rate scheduler state dict
    rng.pt                  python `random`, numpy's global state, torch CPU and CUDA generators
    producer_state.json|pt  the Producer's own state (data order, numpy Generators, baselines, replay)
    extra.json|pt           the run config (or anything else the trainer wants back)
    meta.json               step, what each file is, the size of every file above
    COMPLETE                empty marker, written last

Atomicity: everything is written into `checkpoints/.tmp-step-0000010-<pid>-<host>/`, fsynced, the
marker written last, and only then the folder is renamed to its final name (a rename is atomic on
POSIX file systems). A process killed at any moment therefore leaves either no `step-*` folder or a
complete one; `latest_checkpoint` trusts only folders that hold the marker and whose files have the
sizes `meta.json` lists. Old checkpoints are renamed to `.del-…` before being deleted, so a kill
during deletion never leaves a marked folder with missing files. Leftovers of dead processes are
removed the next time the folder is scanned.

Producer state is saved as JSON when it survives a JSON round trip unchanged, else with `torch.save`
(loaded with pickle: checkpoints are trusted files, like any pickle). numpy Generators anywhere inside
it are stored as their `bit_generator.state` and come back as Generators in that exact state.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mmrl.errors import MMRLError

CHECKPOINTS = "checkpoints"
"""Sub-folder of the run folder that holds the checkpoints."""
MARKER = "COMPLETE"
META = "meta.json"
FORMAT = 1
"""Layout version written into meta.json."""

_STEP_NAME = re.compile(r"^step-(\d+)$")
_LEFTOVER_NAME = re.compile(r"^\.(tmp|old|del)-(step-\d+)-(\d+)-(.*)$")
_GENERATOR_TAG = "__numpy_generator__"
_RANDOM_STATE_TAG = "__numpy_random_state__"


# --------------------------------------------------------------------------------------------------
# Public API


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    """Final folder of the checkpoint of `step` (zero-padded so names sort like steps)."""
    return Path(run_dir) / CHECKPOINTS / f"step-{step:07d}"


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    producer_state: dict,
    extra: dict | None = None,
    keep: int = 2,
) -> Path:
    """Write the checkpoint of `step` atomically, prune old ones, and return its folder.

    `keep` most recent checkpoints stay (the one just written always does; `keep <= 0` keeps all).
    Checkpoints of steps later than `step` are deleted too: they belong to a timeline this run
    abandoned by resuming from an earlier step, and would otherwise win `resume=auto`.
    """
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    clean_leftovers(root)
    final = checkpoint_dir(run_dir, step)
    tmp = root / f".tmp-{final.name}-{_owner()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        model_kind = _save_model(model, tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(capture_rng_state(), tmp / "rng.pt")
        producer_file = _save_object(_encode_generators(producer_state), tmp, "producer_state")
        extra_file = _save_object(extra, tmp, "extra") if extra is not None else None
        meta = {
            "format": FORMAT,
            "step": step,
            "saved_at": time.time(),
            "model": model_kind,
            "model_class": type(_unwrap(model)).__name__,
            "scheduler": scheduler is not None,
            "producer_state": producer_file,
            "extra": extra_file,
            "files": _file_sizes(tmp),
        }
        _fsync_tree(tmp)
        _write_durably(tmp / META, json.dumps(meta, indent=1).encode())
        _write_durably(tmp / MARKER, b"")
        _fsync_dir(tmp)
        _publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune_checkpoints(run_dir, keep, current=final)
    return final


def load_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
) -> dict:
    """Restore weights, optimizer, scheduler and RNG states in place; return step, producer state, extra.

    Weights are copied into the existing parameters (never a new model), so the optimizer's
    references stay valid. Every saved key must match a key of `model` and vice versa (tied weights
    excepted); a mismatch is an MMRLError naming the keys.
    """
    path = Path(path)
    problem = checkpoint_problem(path)
    if problem:
        raise MMRLError(f"cannot resume from {path}: {problem}")
    meta = json.loads((path / META).read_text())
    _load_model(model, path, meta["model"])
    try:
        if optimizer is not None:
            optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True))
        if scheduler is not None and meta.get("scheduler", True):
            scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    except (ValueError, KeyError, RuntimeError) as e:
        raise MMRLError(f"checkpoint {path}: optimizer/scheduler state does not fit this run: {e}") from None
    restore_rng_state(torch.load(path / "rng.pt", weights_only=True))
    producer_state = _decode_generators(_load_object(path / meta["producer_state"]))
    extra = _load_object(path / meta["extra"]) if meta.get("extra") else None
    return {"step": int(meta["step"]), "producer_state": producer_state, "extra": extra}


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of the run, oldest step first (half-written folders are left out)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_NAME.match(p.name) and not checkpoint_problem(p)]
    return sorted(found, key=_step_of)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of the run, or None; leftovers of dead writers are removed."""
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        clean_leftovers(root)
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_resume(resume: str, run_dir: str | Path) -> Path | None:
    """Turn `train.resume` into a checkpoint folder: "" -> None, "auto" -> latest (or None), else a path."""
    resume = resume.strip()
    if not resume:
        return None
    if resume == "auto":
        return latest_checkpoint(run_dir)
    path = Path(resume).expanduser()
    if not path.is_dir():
        raise MMRLError(f"train.resume: checkpoint folder {path} does not exist")
    problem = checkpoint_problem(path)
    if problem:
        latest = latest_checkpoint(path.parent.parent) if path.parent.name == CHECKPOINTS else None
        hint = f"; the latest complete checkpoint there is {latest}" if latest else ""
        if (path / CHECKPOINTS).is_dir():
            hint = f"; {path} looks like a run folder: pass one of its checkpoints/step-* or resume=auto"
        raise MMRLError(f"train.resume: {path} is not a usable checkpoint: {problem}{hint}")
    return path


def checkpoint_problem(path: str | Path) -> str:
    """Why `path` is not a complete checkpoint ("" when it is): marker, meta.json and file sizes."""
    path = Path(path)
    if not path.is_dir():
        return "no such folder"
    if not (path / MARKER).is_file():
        return f"no {MARKER} marker (half-written: the writer stopped before finishing)"
    try:
        meta = json.loads((path / META).read_text())
        files = meta["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{META} is missing or unreadable"
    for name, size in files.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, expected {size}"
    return ""


def prune_checkpoints(run_dir: str | Path, keep: int, *, current: Path) -> list[Path]:
    """Delete all but `current` and the `keep - 1` newest earlier checkpoints; return what was deleted."""
    current_step = _step_of(current)
    others = [p for p in list_checkpoints(run_dir) if p.name != current.name]
    later = [p for p in others if _step_of(p) > current_step]
    earlier = [p for p in others if _step_of(p) < current_step]
    doomed = later + (earlier[: max(0, len(earlier) - (keep - 1))] if keep > 0 else [])
    for folder in doomed:
        _remove_atomically(folder)
    return doomed


def clean_leftovers(root: Path) -> None:
    """Remove temp/old/deleting folders left by writers on this host that are no longer running.

    One exception: a writer killed while replacing a checkpoint of the same step, between moving the
    old one aside and renaming the new one in, leaves the old one as `.old-`: it is put back.
    """
    host = socket.gethostname()
    for p in sorted(root.iterdir()):
        match = _LEFTOVER_NAME.match(p.name)
        if not match or match.group(4) != host or _alive(int(match.group(3))):
            continue
        kind, final = match.group(1), root / match.group(2)
        if kind == "old" and not final.exists() and not checkpoint_problem(p):
            os.replace(p, final)
        else:
            shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# RNG states


def capture_rng_state() -> dict:
    """Every global generator a training step may draw from, in a form `torch.load(weights_only=True)` reads.

    numpy's global state is saved for safety only: mmrl code passes explicit Generators around.
    CUDA states are taken only when CUDA is already initialised (taking them would otherwise create
    a context on every GPU).
    """
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of `capture_rng_state`; CUDA states are restored for the devices both runs have."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, device)


def _encode_generators(obj: Any) -> Any:
    """Replace numpy Generators / RandomStates (at any depth) by tagged plain dicts of their state."""
    if isinstance(obj, np.random.Generator):
        return {_GENERATOR_TAG: _plain(obj.bit_generator.state)}
    if isinstance(obj, np.random.RandomState):
        return {_RANDOM_STATE_TAG: _plain(obj.get_state(legacy=False))}
    if isinstance(obj, dict):
        return {k: _encode_generators(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_encode_generators(v) for v in obj)
    return obj


def _decode_generators(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_GENERATOR_TAG}:
            state = obj[_GENERATOR_TAG]
            bit_generator = getattr(np.random, state["bit_generator"])()
            bit_generator.state = state
            return np.random.Generator(bit_generator)
        if set(obj) == {_RANDOM_STATE_TAG}:
            random_state = np.random.RandomState()
            random_state.set_state(obj[_RANDOM_STATE_TAG])
            return random_state
        return {k: _decode_generators(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_decode_generators(v) for v in obj)
    return obj


def _plain(value: Any) -> Any:
    """numpy arrays and scalars inside a bit-generator state -> lists and Python numbers (JSON-able)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return value


# --------------------------------------------------------------------------------------------------
# Model weights


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module that owns the weights: strip DDP/DataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _is_peft(model: torch.nn.Module) -> bool:
    peft = sys.modules.get("peft")  # a PeftModel cannot exist unless peft was imported
    return peft is not None and isinstance(model, peft.PeftModel)


def _adapter_names(model: torch.nn.Module) -> list[str]:
    return list(model.peft_config)


def _save_model(model: torch.nn.Module, folder: Path) -> str:
    """Write the weights into `folder`; return the kind (`adapter`, `full`, `state_dict`) for meta.json."""
    model = _unwrap(model)
    if _is_peft(model):
        model.save_pretrained(folder / "adapter")
        base = _trainable_base_weights(model)
        if base:
            save_file(base, folder / "trainable.safetensors")
        return "adapter"
    if hasattr(model, "save_pretrained"):
        # The model's own key names (not the legacy on-hub names transformers would convert back to),
        # so that `load_state_dict` on the live model matches key for key; from_pretrained reads both.
        with _no_transformers_progress_bar():  # a shard bar would cut through the training bar
            model.save_pretrained(folder / "model", save_original_format=False)
        return "full"
    (folder / "model").mkdir()
    save_file(_unique_tensors(model.state_dict()), folder / "model" / "model.safetensors")
    return "state_dict"


@contextlib.contextmanager
def _no_transformers_progress_bar() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _load_model(model: torch.nn.Module, path: Path, kind: str) -> None:
    model = _unwrap(model)
    if kind == "adapter":
        if not _is_peft(model):
            raise MMRLError(f"checkpoint {path} holds a LoRA adapter, but the model is not a peft model")
        _load_adapters(model, path / "adapter")
        if (path / "trainable.safetensors").is_file():
            _load_trainable_base(model, load_file(path / "trainable.safetensors"), path)
        return
    if _is_peft(model):
        raise MMRLError(f"checkpoint {path} holds full weights, but the model is a peft (LoRA) model")
    state: dict[str, torch.Tensor] = {}
    for file in sorted((path / "model").glob("*.safetensors")):
        state.update(load_file(file))
    _load_state_strict(model, state, path)


def _load_adapters(model: torch.nn.Module, folder: Path) -> None:
    """peft's `save_pretrained` puts the `default` adapter at the top and others in sub-folders."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    for name in _adapter_names(model):
        file = (folder if name == "default" else folder / name) / "adapter_model.safetensors"
        if not file.is_file():
            raise MMRLError(f"checkpoint adapter folder {folder} has no weights for adapter '{name}'")
        state = load_file(file)
        expected = set(get_peft_model_state_dict(model, adapter_name=name))
        if set(state) != expected:
            raise MMRLError(_mismatch(f"adapter '{name}' in {file}", set(state) - expected, expected - set(state)))
        set_peft_model_state_dict(model, state, adapter_name=name)


def _trainable_base_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters that are not adapter weights (their names hold no adapter-name part)."""
    adapters = set(_adapter_names(model))
    return {
        name: p.detach().contiguous()
        for name, p in model.named_parameters()
        if p.requires_grad and not adapters & set(name.split("."))
    }


def _load_trainable_base(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = set(_trainable_base_weights(model))
    if set(state) != expected:
        raise MMRLError(_mismatch(f"trainable base weights in {path}", set(state) - expected, expected - set(state)))
    model.load_state_dict(state, strict=False)


def _load_state_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """`load_state_dict(strict=True)`, except that a key may be absent when its tensor is tied to a saved one."""
    own = model.state_dict()
    present = {own[k].data_ptr() for k in state if k in own}
    unexpected = set(state) - set(own)
    missing = {k for k in own if k not in state and own[k].data_ptr() not in present}
    if unexpected or missing:
        raise MMRLError(_mismatch(f"model weights in {path}", unexpected, missing))
    model.load_state_dict(state, strict=False)


def _unique_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop aliases of tied weights (safetensors refuses shared storage); keep the first name of each."""
    seen: set[tuple[int, int]] = set()
    unique = {}
    for name, tensor in state.items():
        key = (tensor.data_ptr(), tensor.numel())
        if tensor.numel() and key in seen:
            continue
        seen.add(key)
        unique[name] = tensor.detach().contiguous()
    return unique


def _mismatch(what: str, unexpected: set[str], missing: set[str]) -> str:
    parts = []
    if unexpected:
        parts.append(f"unexpected keys {sorted(unexpected)[:5]}")
    if missing:
        parts.append(f"missing keys {sorted(missing)[:5]}")
    return f"{what} do not fit the model: " + "; ".join(parts)


# --------------------------------------------------------------------------------------------------
# Producer state / extra


def _save_object(obj: Any, folder: Path, name: str) -> str:
    """JSON when the object survives a JSON round trip unchanged (readable), else torch.save."""
    try:
        text = json.dumps(obj, allow_nan=False)
        if json.loads(text) == obj:
            (folder / f"{name}.json").write_text(text)
            return f"{name}.json"
    except (TypeError, ValueError):
        pass
    torch.save(obj, folder / f"{name}.pt")
    return f"{name}.pt"


def _load_object(file: Path) -> Any:
    if file.suffix == ".json":
        return json.loads(file.read_text())
    return torch.load(file, map_location="cpu", weights_only=False)  # our own file: arbitrary objects


# --------------------------------------------------------------------------------------------------
# File-system helpers


def _owner() -> str:
    """Who writes a temp folder: the pid and host, so a later scan can tell a dead writer's leftovers."""
    return f"{os.getpid()}-{socket.gethostname()}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _step_of(path: Path) -> int:
    match = _STEP_NAME.match(path.name)
    return int(match.group(1)) if match else -1


def _file_sizes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder under `folder` to disk, so a power loss cannot undo the rename's promise."""
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        elif p.is_dir():
            _fsync_dir(p)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; renames there are still atomic enough
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished temp folder to its final name (moving an older save of the same step aside)."""
    if final.exists():
        old = final.with_name(f".old-{final.name}-{_owner()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def _remove_atomically(folder: Path) -> None:
    """Rename first, then delete: a kill mid-delete leaves a `.del-` leftover, never a broken `step-`."""
    doomed = folder.with_name(f".del-{folder.name}-{_owner()}")
    shutil.rmtree(doomed, ignore_errors=True)
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


__all__ = [
    "CHECKPOINTS",
    "capture_rng_state",
    "checkpoint_dir",
    "checkpoint_problem",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "prune_checkpoints",
    "resolve_resume",
    "restore_rng_state",
    "save_checkpoint",
]
