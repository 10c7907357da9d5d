"""Tagged JSON: plain data plus the exact types a training loop keeps in its state, written as JSON
and read back equal and of the same types, without unpickling anything.

Plain JSON stays as it is; everything else becomes a one-key dict whose key is a tag: tuples, dicts
with non-string keys, non-finite floats, numpy arrays and scalars (dtype, shape, bytes), numpy
Generators / RandomStates (their exact bit-generator state) and torch tensors (as safetensors bytes).
Any other type is refused when encoding, naming its key. Checkpoints store the producer state and
`extra` this way (`mmrl.grpo.checkpoint`).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from mmrl.errors import MMRLError

_GENERATOR_TAG = "__numpy_generator__"
_RANDOM_STATE_TAG = "__numpy_random_state__"
_TUPLE_TAG = "__tuple__"
_DICT_TAG = "__dict__"
_FLOAT_TAG = "__float__"
_NUMPY_TAG = "__numpy__"
_TENSOR_TAG = "__torch_tensor__"
_NUMPY_KINDS = "biufcmMSU"
"""numpy dtype kinds whose bytes are the values (bool, ints, floats, complex, times, strings); not object/void."""
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
"""`repr` of each non-finite float -> the float."""


def to_json(value: Any, where: str) -> Any:
    """`value` as JSON data that `from_json` turns back into an equal value of the same types.

    Plain JSON stays as it is (dicts with string keys, lists, str, int, finite float, bool, None);
    everything else becomes a one-key dict whose key is a tag. Exact types only: a subclass (Counter,
    IntEnum, ...) would come back as its base class, so it is refused like any unknown type, with
    `where` (the key path, e.g. `producer_state['stats']`) in the MMRLError.
    """
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        return value if math.isfinite(value) else {_FLOAT_TAG: repr(value)}  # "nan", "inf", "-inf"
    if kind is list:
        return [to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if kind is tuple:
        return {_TUPLE_TAG: [to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if kind is dict:
        if all(type(k) is str for k in value) and not (len(value) == 1 and next(iter(value)) in _DECODERS):
            return {k: to_json(v, f"{where}[{k!r}]") for k, v in value.items()}
        pairs = [[to_json(k, f"{where} key {k!r}"), to_json(v, f"{where}[{k!r}]")] for k, v in value.items()]
        return {_DICT_TAG: pairs}
    if kind is np.random.Generator:
        return {_GENERATOR_TAG: _plain(value.bit_generator.state)}
    if kind is np.random.RandomState:
        return {_RANDOM_STATE_TAG: _plain(value.get_state(legacy=False))}
    scalar = isinstance(value, np.generic)
    if (kind is np.ndarray or scalar) and value.dtype.kind in _NUMPY_KINDS:
        array = np.asarray(value)
        data = base64.b64encode(array.tobytes()).decode()  # C order, whatever the strides
        return {_NUMPY_TAG: {"dtype": array.dtype.str, "shape": list(array.shape), "scalar": scalar, "data": data}}
    if isinstance(value, torch.Tensor) and value.layout == torch.strided:
        blob = save_safetensors_bytes({"tensor": value.detach().cpu().contiguous()})
        return {_TENSOR_TAG: base64.b64encode(blob).decode()}
    raise MMRLError(
        f"cannot checkpoint {where}: a {kind.__module__}.{kind.__qualname__} has no exact JSON form "
        "(use dict, list, tuple, str, int, float, bool, None, numpy arrays/scalars/Generators or tensors)"
    )


def from_json(value: Any) -> Any:
    """Inverse of `to_json`; also reads format-1 producer state (plain JSON with Generator tags)."""
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1:
            ((tag, body),) = value.items()
            if tag in _DECODERS:
                return _DECODERS[tag](body)
        return {k: from_json(v) for k, v in value.items()}
    return value


def _plain(value: Any) -> Any:
    """numpy arrays and scalars inside a bit-generator state -> lists and Python numbers (JSON-able)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return value


def _generator_from(state: dict) -> np.random.Generator:
    """A Generator in the exact saved state; only numpy's own bit generators are constructed."""
    bit_generator_class = getattr(np.random, state["bit_generator"], None)
    if not (isinstance(bit_generator_class, type) and issubclass(bit_generator_class, np.random.BitGenerator)):
        raise ValueError(f"{state['bit_generator']!r} is not a numpy bit generator")
    bit_generator = bit_generator_class()
    bit_generator.state = state
    return np.random.Generator(bit_generator)


def _random_state_from(state: dict) -> np.random.RandomState:
    random_state = np.random.RandomState()
    random_state.set_state(state)
    return random_state


def _numpy_from(body: dict) -> np.ndarray | np.generic:
    dtype = np.dtype(body["dtype"])
    if dtype.kind not in _NUMPY_KINDS:
        raise ValueError(f"numpy dtype {dtype} is not stored by value")
    array = np.frombuffer(base64.b64decode(body["data"]), dtype=dtype).reshape(body["shape"]).copy()
    return array[()] if body["scalar"] else array


_DECODERS: dict[str, Callable[[Any], Any]] = {
    _TUPLE_TAG: lambda body: tuple(from_json(v) for v in body),
    _DICT_TAG: lambda body: {from_json(k): from_json(v) for k, v in body},
    _FLOAT_TAG: lambda body: _NON_FINITE[body],
    _GENERATOR_TAG: _generator_from,
    _RANDOM_STATE_TAG: _random_state_from,
    _NUMPY_TAG: _numpy_from,
    _TENSOR_TAG: lambda body: load_safetensors_bytes(base64.b64decode(body))["tensor"],
}
"""Tag -> reader of the tagged body. Malformed bodies raise ValueError/KeyError/TypeError (-> MMRLError)."""


__all__ = ["from_json", "to_json"]
