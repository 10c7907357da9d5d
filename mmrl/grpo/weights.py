"""Model weights in and out of a checkpoint folder: full models, plain state dicts and peft adapters.

`save_model` writes `model/` (`save_pretrained` with the model's own key names, or `model.safetensors`
for a plain `torch.nn.Module`, tied weights stored once) or, for a peft model, `adapter/` plus
`trainable.safetensors` (base weights trained outside the adapter). `load_model` copies them into the
live model's parameters: every saved key must match one of the model's and vice versa (tied weights
excepted), else an MMRLError naming the keys. DDP / DataParallel / torch.compile wrappers are looked
through (`unwrap`). The folder format around these files is `mmrl.grpo.checkpoint`'s.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mmrl.errors import MMRLError


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
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


def save_model(model: torch.nn.Module, folder: Path) -> str:
    """Write the weights into `folder`; return the kind (`adapter`, `full`, `state_dict`) for meta.json."""
    model = unwrap(model)
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


def load_model(model: torch.nn.Module, path: Path, kind: str) -> None:
    model = unwrap(model)
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
