"""Atomic, resumable training checkpoints (R9: resume reproduces the exact data order).

A checkpoint is one folder, `<run_dir>/checkpoints/step-0000010/`:

    model/                  the weights (written and read by `mmrl.grpo.weights`): the full model, or
                            for a peft model `adapter/` and `trainable.safetensors` instead
    optimizer.pt            optimizer state dict (AdamW moments, step counts)
    sharded/                instead of the two above, under FSDP: weights and optimizer state as each
                            rank holds them, one `__<rank>_0.distcp` file per rank plus `.metadata`
                            (torch.distributed.checkpoint; loads into any number of ranks, or one)
    scheduler.pt            learning-rate scheduler state dict
    rng.pt                  python `random`, numpy's global state, torch CPU and CUDA generators
    producer_state.json     the Producer's own state (data order, numpy Generators, baselines, replay)
    extra.json              the run config (or anything else the trainer wants back)
    meta.json               step, what each file is, the size and sha256 of every file above
    COMPLETE                marker, written last; holds the sha256 of meta.json

Atomicity: everything is written into `checkpoints/.tmp-step-0000010-<pid>-<host>/`, fsynced, the
marker written last, and only then the folder is renamed to its final name (a rename is atomic on
POSIX file systems). A process killed at any moment therefore leaves either no `step-*` folder or a
complete one; `latest_checkpoint` trusts only folders that hold the marker and whose files have the
sizes `meta.json` lists. Old checkpoints are renamed to `.del-…` before being deleted, so a kill
during deletion never leaves a marked folder with missing files. Leftovers of dead processes are
removed the next time the folder is scanned. The fsyncs, the publishing rename and the removal by
rename are `mmrl.durable`'s. A sharded checkpoint is written by every rank into the temp folder
rank 0 named (the run folder must then be on a file system all ranks share); rank 0 writes the rest
and publishes it once every rank's shard is on disk.

Integrity: the quick check (`checkpoint_problem`: marker, meta.json's digest, sizes) is cheap enough
to run on every listing. `resolve_resume` also recomputes the sha256 of every file, since a flipped
bit keeps the size: `resume=auto` walks back from the newest checkpoint to the newest intact one and
prints one line per checkpoint it skipped (and why); an explicit checkpoint folder that fails is an
MMRLError naming the bad file. When no checkpoint at all is intact, `auto` is an MMRLError listing
them: the user asked to resume, and starting over would prune the evidence. Format-1 checkpoints
(no sha256, empty marker) are checked by size only.

Untrusted folders stay data: nothing in a checkpoint is unpickled into arbitrary objects. Producer
state and `extra` are tagged JSON (`mmrl.grpo.state_json`), which brings back exactly what was saved
(tuples, numpy arrays and Generators, tensors, ...); anything else is refused when saving, naming its
key. The `.pt` files hold tensors and plain containers only and are read with
`torch.load(weights_only=True)`. Every file name `meta.json` gives must resolve inside the checkpoint
folder (no `..`, absolute paths, or symlinks out), and format-1 producer/extra `.pt` pickles are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmrl.durable import alive, fsync_dir, fsync_tree, owner, publish, remove_atomically, write_durably
from mmrl.errors import MMRLError
from mmrl.grpo.state_json import from_json, to_json
from mmrl.grpo.weights import load_model, save_model, unwrap

CHECKPOINTS = "checkpoints"
"""Sub-folder of the run folder that holds the checkpoints."""
MARKER = "COMPLETE"
META = "meta.json"
SHARDED = "sharded"
"""Sub-folder (and meta.json `model` kind) of the torch.distributed.checkpoint files of an FSDP run."""
FORMAT = 2
"""Layout version written into meta.json (1: sizes only; 2: also sha256 of every file, marker holds meta's)."""

_STEP_NAME = re.compile(r"^step-(\d+)$")
_LEFTOVER_NAME = re.compile(r"^\.(tmp|old|del)-(step-\d+)-(\d+)-(.*)$")


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
    sharded: bool = False,
) -> Path:
    """Write the checkpoint of `step` atomically, prune old ones, and return its folder.

    `keep` most recent checkpoints stay (the one just written always does; `keep <= 0` keeps all).
    Checkpoints of steps later than `step` are deleted too: they belong to a timeline this run
    abandoned by resuming from an earlier step, and would otherwise win `resume=auto`.
    `producer_state` and `extra` must be representable in tagged JSON (see the module docstring);
    anything else is an MMRLError naming its key, raised before anything is published.

    `sharded` (FSDP: each rank holds a shard of the weights and optimizer state): every rank calls
    this with its own shard; the model and optimizer go to `sharded/` through
    torch.distributed.checkpoint, and rank 0 alone writes the other files, publishes and prunes.
    """
    main = _rank() == 0
    root = Path(run_dir) / CHECKPOINTS
    final = checkpoint_dir(run_dir, step)
    tmp = root / f".tmp-{final.name}-{owner()}"
    setup_error = ""
    if main:
        try:
            root.mkdir(parents=True, exist_ok=True)
            clean_leftovers(root)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        except OSError as e:
            if not sharded:
                raise
            setup_error = str(e)
    if sharded:  # every rank writes its shard into rank 0's temp folder (or learns why there is none)
        tmp, setup_error = _from_rank0((tmp, setup_error))
        if setup_error:
            raise MMRLError(f"cannot write the checkpoint of step {step} into {root}: {setup_error}")
    shards_written = False
    try:
        if sharded:
            save_sharded_state(tmp / SHARDED, model, optimizer)  # collective: fails on every rank if one fails
            shards_written = True
            model_kind = SHARDED
        else:
            model_kind = save_model(model, tmp)
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        if not main:
            problem = _from_rank0("")  # wait until rank 0 has published, or failed to
            if problem:
                raise MMRLError(f"the checkpoint of step {step} failed on rank 0: {problem}")
            return final
        if scheduler is not None:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(capture_rng_state(), tmp / "rng.pt")
        producer_file = _save_json(producer_state, tmp, "producer_state")
        extra_file = _save_json(extra, tmp, "extra") if extra is not None else None
        sizes = _file_sizes(tmp)
        meta = {
            "format": FORMAT,
            "step": step,
            "saved_at": time.time(),
            "model": model_kind,
            "model_class": _model_class(model),
            "scheduler": scheduler is not None,
            "producer_state": producer_file,
            "extra": extra_file,
            "files": sizes,
            "sha256": _sha256_of(tmp, sizes),
        }
        fsync_tree(tmp)
        meta_bytes = json.dumps(meta, indent=1).encode()
        write_durably(tmp / META, meta_bytes)
        write_durably(tmp / MARKER, hashlib.sha256(meta_bytes).hexdigest().encode())
        fsync_dir(tmp)
        publish(tmp, final)
    except BaseException as e:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            if shards_written:  # the other ranks wait for the outcome
                _from_rank0(f"{type(e).__name__}: {e}")
        raise
    if sharded:
        _from_rank0("")
    prune_checkpoints(run_dir, keep, current=final)
    return final


def load_checkpoint(
    path: str | Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    sharded: bool = False,
) -> dict:
    """Restore weights, optimizer, scheduler and RNG states in place; return step, producer state, extra.

    Weights are copied into the existing parameters (never a new model), so the optimizer's
    references stay valid. Every saved key must match a key of `model` and vice versa (tied weights
    excepted); a mismatch is an MMRLError naming the keys. Only the quick check runs here (marker,
    sizes, file names); `resolve_resume`, the way a run finds its checkpoint, verifies the checksums.

    A sharded checkpoint (`sharded/`, written under FSDP) loads into a model sharded over any number
    of ranks, or into a plain model; under FSDP every rank calls this. `sharded` says that `model`
    is FSDP-sharded: a full-model checkpoint cannot be copied into it and is an MMRLError.
    """
    path = Path(path)
    problem = checkpoint_problem(path)
    if problem:
        raise MMRLError(f"cannot resume from {path}: {problem}")
    meta = json.loads((path / META).read_text())
    if meta["model"] == SHARDED:
        load_sharded_state(path / SHARDED, model, optimizer)
    elif sharded:
        raise MMRLError(
            f"cannot resume from {path} under FSDP: it holds a full {meta['model']!r} model written without FSDP; "
            "resume it with the launch config it was written with (e.g. configs/accelerate/ddp.yaml)"
        )
    else:
        load_model(model, path, meta["model"])
    try:
        if optimizer is not None and meta["model"] != SHARDED:
            optimizer.load_state_dict(_load_tensors(path / "optimizer.pt"))
        if scheduler is not None and meta.get("scheduler", True):
            scheduler.load_state_dict(_load_tensors(path / "scheduler.pt"))
    except (ValueError, KeyError, RuntimeError) as e:
        raise MMRLError(f"checkpoint {path}: optimizer/scheduler state does not fit this run: {e}") from None
    restore_rng_state(_load_tensors(path / "rng.pt"))
    producer_state = _load_json(path / meta["producer_state"])
    extra = _load_json(path / meta["extra"]) if meta.get("extra") else None
    return {"step": int(meta["step"]), "producer_state": producer_state, "extra": extra}


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints of the run, oldest step first (half-written folders are left out)."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _STEP_NAME.match(p.name) and not checkpoint_problem(p)]
    return sorted(found, key=_step_of)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of the run, or None; leftovers of dead writers are removed.

    Complete by the quick check (`checkpoint_problem`: sizes, not contents); `resolve_resume("auto")`
    is the one that also verifies checksums and walks back past corrupt checkpoints.
    """
    root = Path(run_dir) / CHECKPOINTS
    if root.is_dir():
        clean_leftovers(root)
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_resume(resume: str, run_dir: str | Path) -> Path | None:
    """Turn `train.resume` into a verified checkpoint folder: "" -> None, "auto" -> the newest intact
    checkpoint (None when the run has none yet), else that folder, which must be intact.

    Both read every file once to compare its sha256 with meta.json. `auto` prints one line to stderr
    for each newer checkpoint it skipped, naming it and why, and is an MMRLError when checkpoints
    exist but none is intact; an explicit folder that fails is an MMRLError naming the bad file.
    """
    resume = resume.strip()
    if not resume:
        return None
    if resume == "auto":
        return _newest_intact(Path(run_dir))
    path = Path(resume).expanduser()
    if not path.is_dir():
        raise MMRLError(f"train.resume: checkpoint folder {path} does not exist")
    problem = checkpoint_problem(path, checksums=True)
    if problem:
        latest = latest_checkpoint(path.parent.parent) if path.parent.name == CHECKPOINTS else None
        hint = f"; the latest complete checkpoint there is {latest}" if latest and latest != path else ""
        if (path / CHECKPOINTS).is_dir():
            hint = f"; {path} looks like a run folder: pass one of its checkpoints/step-* or resume=auto"
        raise MMRLError(f"train.resume: {path} is not a usable checkpoint: {problem}{hint}")
    return path


def checkpoint_problem(path: str | Path, *, checksums: bool = False) -> str:
    """Why `path` is not a usable checkpoint ("" when it is).

    Quick check: the marker, meta.json (its sha256 against the marker's), every file name meta.json
    gives (inside the folder, listed, producer/extra state in JSON) and every file size. With
    `checksums`, also the sha256 of every file, which catches corruption that keeps the size.
    """
    path = Path(path)
    if not path.is_dir():
        return "no such folder"
    if not (path / MARKER).is_file():
        return f"no {MARKER} marker (half-written: the writer stopped before finishing)"
    try:
        meta_bytes = (path / META).read_bytes()
        meta_digest = (path / MARKER).read_text().strip()  # empty in format 1
        if meta_digest and hashlib.sha256(meta_bytes).hexdigest() != meta_digest:
            return f"{META} checksum mismatch"
        meta = json.loads(meta_bytes)
        problem = _meta_problem(path, meta)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"{META} is missing or unreadable"
    if problem or not checksums or meta.get("format", 1) < 2:  # format 1 recorded sizes only
        return problem
    actual = _sha256_of(path, meta["files"])
    for name in sorted(actual):
        if actual[name] != meta["sha256"][name]:
            return f"{name} checksum mismatch"
    return ""


def _newest_intact(run_dir: Path) -> Path | None:
    """`resume=auto`: the newest `step-*` folder whose contents pass the full check (see `resolve_resume`)."""
    root = run_dir / CHECKPOINTS
    if not root.is_dir():
        return None
    clean_leftovers(root)
    skipped = []
    for folder in sorted((p for p in root.iterdir() if _STEP_NAME.match(p.name)), key=_step_of, reverse=True):
        problem = checkpoint_problem(folder, checksums=True)
        if not problem:
            if _is_main_process():  # every DDP rank resolves the same folder; one of them reports
                for line in skipped:
                    print(f"resume=auto: skipped checkpoint {line}", file=sys.stderr)
            return folder
        skipped.append(f"{folder}: {problem}")
    if skipped:
        raise MMRLError(
            f"train.resume=auto: no checkpoint in {root} is intact ({'; '.join(skipped)}); move them away "
            "to start over, or repair one"
        )
    return None


def _meta_problem(path: Path, meta: dict) -> str:
    """The quick check of a parsed meta.json: format, file names and sizes ("" when fine)."""
    layout = meta.get("format", 1)
    if layout > FORMAT:
        return f"checkpoint format {layout} is newer than this mmrl reads ({FORMAT})"
    files = meta["files"]
    if layout >= 2 and set(meta["sha256"]) != set(files):
        return f"{META} lists sizes and checksums of different files"
    for name, size in files.items():
        if not _resolves_inside(path, name):
            return f"{META} names file {name!r}, which is outside the checkpoint folder"
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, expected {size}"
    for key in ("producer_state", "extra"):
        name = meta.get(key)
        if name is None and key == "extra":
            continue
        if name not in files:
            return f"{META} names {key} file {name!r}, which it does not list among the checkpoint's files"
        if not str(name).endswith(".json"):
            return (
                f"{key} file {name!r} is not JSON: pickled state (format-1 `.pt`) is refused, "
                "since unpickling a file can run any code"
            )
    return ""


def _resolves_inside(folder: Path, name: str) -> bool:
    """Whether `folder / name` names a path inside `folder`, symlinks followed (no `..`, no absolute path)."""
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        return False
    return (folder / name).resolve().is_relative_to(folder.resolve())


def prune_checkpoints(run_dir: str | Path, keep: int, *, current: Path) -> list[Path]:
    """Delete all but `current` and the `keep - 1` newest earlier checkpoints; return what was deleted."""
    current_step = _step_of(current)
    others = [p for p in list_checkpoints(run_dir) if p.name != current.name]
    later = [p for p in others if _step_of(p) > current_step]
    earlier = [p for p in others if _step_of(p) < current_step]
    doomed = later + (earlier[: max(0, len(earlier) - (keep - 1))] if keep > 0 else [])
    for folder in doomed:
        remove_atomically(folder)
    return doomed


def clean_leftovers(root: Path) -> None:
    """Remove temp/old/deleting folders left by writers on this host that are no longer running.

    One exception: a writer killed while replacing a checkpoint of the same step, between moving the
    old one aside and renaming the new one in, leaves the old one as `.old-`: it is put back.
    """
    host = socket.gethostname()
    for p in sorted(root.iterdir()):
        match = _LEFTOVER_NAME.match(p.name)
        if not match or match.group(4) != host or alive(int(match.group(3))):
            continue
        kind, final = match.group(1), root / match.group(2)
        if kind == "old" and not final.exists() and not checkpoint_problem(p):
            os.replace(p, final)
        else:
            shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Sharded (FSDP) model and optimizer state


def save_sharded_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write the model and optimizer state as this rank holds it (its shards) with torch.distributed.checkpoint.

    Collective under torch.distributed: every rank calls it with the same `folder`; it returns once
    every rank's file and rank 0's `.metadata` are written (and fsynced). Without a process group it
    writes a single rank's (full) state.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, _plain_optimizer(optimizer))
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=folder)


def load_sharded_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Inverse of `save_sharded_state`, into the shards this rank holds now (the saving run may have had
    another number of ranks). Missing or unexpected keys are an MMRLError naming the checkpoint."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    optimizers = [_plain_optimizer(optimizer)] if optimizer is not None else []
    model_state, optimizer_state = get_state_dict(model, optimizers)
    state = {"model": model_state} | ({"optimizer": optimizer_state} if optimizers else {})
    try:
        dcp.load(state, checkpoint_id=folder)
        set_state_dict(model, optimizers, model_state_dict=state["model"], optim_state_dict=state.get("optimizer", {}))
    except (CheckpointException, RuntimeError, ValueError, KeyError) as e:  # CheckpointException: a BaseException
        raise MMRLError(
            f"checkpoint {folder.parent}: sharded model/optimizer state does not fit this run: {e}"
        ) from None


def _model_class(model: torch.nn.Module) -> str:
    """The model's own class name (FSDP2 swaps in a subclass named `FSDP<name>`)."""
    cls = type(unwrap(model))
    if cls.__name__.startswith("FSDP") and cls.__bases__[0].__name__ == cls.__name__[4:]:
        cls = cls.__bases__[0]
    return cls.__name__


def _plain_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's wrapper (which would count the step DCP uses to build empty state)."""
    return getattr(optimizer, "optimizer", optimizer)


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _from_rank0(value: Any) -> Any:
    """Rank 0's `value` on every rank (itself without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


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


# --------------------------------------------------------------------------------------------------
# Tensor files, producer state / extra (tagged JSON files)


def _load_tensors(file: Path) -> Any:
    """`torch.load` restricted to tensors and plain containers: a pickle that asks for anything else is refused."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0]
        raise MMRLError(
            f"checkpoint file {file} is not plain tensor data (only tensors and plain containers are unpickled, "
            f"since unpickling anything else can run code): {reason}"
        ) from None


def _save_json(obj: Any, folder: Path, name: str) -> str:
    """Write `obj` as tagged JSON to `<name>.json`; return the file name for meta.json."""
    text = json.dumps(to_json(obj, name), allow_nan=False)
    (folder / f"{name}.json").write_text(text)
    return f"{name}.json"


def _load_json(file: Path) -> Any:
    try:
        return from_json(json.loads(file.read_text()))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:  # UnicodeDecodeError: ValueError
        raise MMRLError(f"checkpoint file {file} is not readable tagged JSON: {type(e).__name__}: {e}") from None


# --------------------------------------------------------------------------------------------------
# Folder names, file sizes and checksums


def _step_of(path: Path) -> int:
    match = _STEP_NAME.match(path.name)
    return int(match.group(1)) if match else -1


def _file_sizes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def _sha256_of(folder: Path, names: Iterable[str]) -> dict[str, str]:
    """sha256 hex digest of each named file. Files are hashed in parallel threads (hashlib releases the GIL)."""

    def digest(name: str) -> str:
        with open(folder / name, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    names = sorted(names)
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(names)))) as pool:
        return dict(zip(names, pool.map(digest, names)))


def _is_main_process() -> bool:
    """Rank 0 of a `torchrun` / `accelerate launch` job (RANK unset: a single process)."""
    return int(os.environ.get("RANK", "0")) == 0


__all__ = [
    "CHECKPOINTS",
    "SHARDED",
    "capture_rng_state",
    "checkpoint_dir",
    "checkpoint_problem",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_sharded_state",
    "prune_checkpoints",
    "resolve_resume",
    "restore_rng_state",
    "save_checkpoint",
    "save_sharded_state",
]
