"""The data server's wire format: `SynthesisRequest` / `SynthesisResult` <-> plain JSON values.

A Sample travels whole, its images inline as base64 PNG (lossless: the pixels that arrive are the pixels
that left, byte for byte, in the image's own mode). Images given as paths are read with
`mmrl.media.load_image` on the sending side, so the receiver never opens a file it was told to. Video
content items are refused for now (no synthesizer takes them).

Decoding is strict and names the field at fault (`requests[2].seed.messages[0].content[1].image`): only
JSON values are accepted, never anything evaluated or unpickled; unknown fields are errors; an image is
checked against `max_image_pixels` from its PNG header, before its pixels are decompressed.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from mmrl.dataserver.protocol import SynthesisRequest, SynthesisResult
from mmrl.errors import MMRLError
from mmrl.media import load_image
from mmrl.sample import ROLES, Sample

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMAGE_KEY = "png_base64"
"""An image content item on the wire: `{"type": "image", "image": {"png_base64": "..."}, ...}`."""


class WireError(MMRLError):
    """A record that is not a valid request or result; the message names the field."""


@dataclass(frozen=True)
class WireLimits:
    """What the receiving side accepts in one record (the body size is capped by the server itself)."""

    max_image_pixels: int = 4096 * 4096
    """Largest width x height of one image."""
    max_description_chars: int = 4000
    """Longest scene description, in characters."""
    max_id_chars: int = 256
    """Longest request or sample id."""
    max_images: int = 16
    """Most images in one Sample."""


# --------------------------------------------------------------------------------------------------
# Encoding (sender side: the client for requests, the server for results)


def encode_image(image: Image.Image) -> str:
    """`image` as base64 PNG text; the same pixels always give the same text (zlib level 1, no metadata)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def encode_sample(sample: Sample) -> dict[str, Any]:
    """The wire record of `sample`: its fields, images inline. Raises `WireError` for a video item or an
    image that is neither a PIL image nor a readable path."""
    messages = []
    for i, message in enumerate(sample.messages):
        content = message.get("content")
        if isinstance(content, list):
            content = [_encode_item(item, f"sample '{sample.id}' messages[{i}].content[{j}]")
                       for j, item in enumerate(content)]  # fmt: skip
        messages.append({**message, "content": content})
    return {"id": sample.id, "task": sample.task, "messages": messages, "answer": sample.answer, "meta": sample.meta}


def _encode_item(item: Any, where: str) -> Any:
    if not isinstance(item, dict) or item.get("type") != "image":
        if isinstance(item, dict) and item.get("type") == "video":
            raise WireError(f"{where}: video content items cannot be sent to the data server (images only, for now)")
        return item
    value = item.get("image")
    if isinstance(value, (str, Path)):
        value = load_image(value)  # MediaError names the file
    if not isinstance(value, Image.Image):
        raise WireError(f"{where}.image: expected a PIL image or a path, got {type(value).__name__}")
    return {**item, "image": {IMAGE_KEY: encode_image(value)}}


def encode_request(request: SynthesisRequest) -> dict[str, Any]:
    """The wire record of `request`."""
    return {"request_id": request.request_id, "seed": encode_sample(request.seed),
            "description": request.description, "policy_version": request.policy_version}  # fmt: skip


def encode_result(result: SynthesisResult) -> dict[str, Any]:
    """The wire record of `result` (its sample, when accepted, with images inline)."""
    sample = None if result.sample is None else encode_sample(result.sample)
    return {
        "request_id": result.request_id,
        "policy_version": result.policy_version,
        "sample": sample,
        "reject_reason": result.reject_reason,
        "latency_s": float(result.latency_s),
        "meta": result.meta,
    }


# --------------------------------------------------------------------------------------------------
# Decoding (receiver side), strict


def decode_request(record: Any, limits: WireLimits = WireLimits(), where: str = "request") -> SynthesisRequest:
    """The `SynthesisRequest` in `record` (a parsed JSON value), or `WireError` naming the bad field."""
    _fields(record, where, required={"request_id", "seed", "description", "policy_version"})
    description = _string(record["description"], f"{where}.description")
    if len(description) > limits.max_description_chars:
        raise WireError(f"{where}.description: {len(description)} characters, more than the "
                        f"limit of {limits.max_description_chars}")  # fmt: skip
    return SynthesisRequest(
        request_id=_identifier(record["request_id"], f"{where}.request_id", limits),
        seed=decode_sample(record["seed"], limits, f"{where}.seed"),
        description=description,
        policy_version=_integer(record["policy_version"], f"{where}.policy_version"),
    )


def decode_result(record: Any, limits: WireLimits = WireLimits(), where: str = "result") -> SynthesisResult:
    """The `SynthesisResult` in `record`, or `WireError` naming the bad field."""
    _fields(record, where, required={"request_id", "policy_version", "sample", "reject_reason", "latency_s", "meta"})
    sample = None if record["sample"] is None else decode_sample(record["sample"], limits, f"{where}.sample")
    reason = record["reject_reason"]
    if reason is not None:
        reason = _string(reason, f"{where}.reject_reason")
    if (sample is None) == (reason is None):
        raise WireError(f"{where}: needs exactly one of 'sample' and 'reject_reason'")
    latency = record["latency_s"]
    if isinstance(latency, bool) or not isinstance(latency, (int, float)) or not math.isfinite(latency):
        raise WireError(f"{where}.latency_s: expected a finite number, got {latency!r}")
    return SynthesisResult(
        request_id=_identifier(record["request_id"], f"{where}.request_id", limits),
        policy_version=_integer(record["policy_version"], f"{where}.policy_version"),
        sample=sample,
        reject_reason=reason,
        latency_s=float(latency),
        meta=_mapping(record["meta"], f"{where}.meta"),
    )


def decode_sample(record: Any, limits: WireLimits = WireLimits(), where: str = "sample") -> Sample:
    """The Sample in a wire record, images decoded to PIL; `WireError` naming the bad field."""
    _fields(record, where, required={"id", "task", "messages", "answer", "meta"})
    sample_id = _identifier(record["id"], f"{where}.id", limits)
    task = _string(record["task"], f"{where}.task")
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise WireError(f"{where}.messages: expected a non-empty list")
    images = 0
    decoded = []
    for i, message in enumerate(messages):
        at = f"{where}.messages[{i}]"
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise WireError(f"{at}: expected an object with a role in {ROLES}")
        content = message.get("content")
        if isinstance(content, list):
            items = []
            for j, item in enumerate(content):
                items.append(_decode_item(item, f"{at}.content[{j}]", limits))
                images += items[-1]["type"] == "image"
            if images > limits.max_images:
                raise WireError(f"{at}: more than {limits.max_images} images in one sample")
            content = items
        elif not isinstance(content, str):
            raise WireError(f"{at}.content: expected a string or a list of items")
        decoded.append({**message, "content": content})
    return Sample(sample_id, task, decoded, record["answer"], _mapping(record["meta"], f"{where}.meta"))


def _decode_item(item: Any, where: str, limits: WireLimits) -> dict[str, Any]:
    kind = item.get("type") if isinstance(item, dict) else None
    if kind == "text":
        _string(item.get("text"), f"{where}.text")
        return item
    if kind == "video":
        raise WireError(f"{where}: video content items are not accepted (images only, for now)")
    if kind != "image":
        raise WireError(f"{where}: expected an object with type 'text' or 'image', got {kind!r}")
    value = item.get("image")
    if not isinstance(value, dict) or set(value) != {IMAGE_KEY}:
        raise WireError(f"{where}.image: expected {{'{IMAGE_KEY}': <base64 PNG>}}")
    return {**item, "image": decode_image(value[IMAGE_KEY], limits, f"{where}.image")}


def decode_image(text: Any, limits: WireLimits = WireLimits(), where: str = "image") -> Image.Image:
    """The image in base64 PNG `text`, fully decoded; its size is checked from the header first."""
    if not isinstance(text, str):
        raise WireError(f"{where}: expected base64 text, got {type(text).__name__}")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise WireError(f"{where}: not valid base64 ({e})") from None
    if not data.startswith(PNG_SIGNATURE):
        raise WireError(f"{where}: not a PNG image")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
            w, h = im.size  # from the header: nothing decompressed yet
            if w * h > limits.max_image_pixels:
                raise WireError(f"{where}: {w}x{h} pixels, more than the limit of {limits.max_image_pixels}")
            im.load()
            return im.copy()
    except WireError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        raise WireError(f"{where}: cannot decode the PNG ({type(e).__name__}: {e})") from None


def _fields(record: Any, where: str, required: set[str]) -> None:
    if not isinstance(record, dict):
        raise WireError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing, unknown = required - set(record), set(record) - required
    if missing:
        raise WireError(f"{where}: missing field(s) {sorted(missing)}")
    if unknown:
        raise WireError(f"{where}: unknown field(s) {sorted(map(str, unknown))}")


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise WireError(f"{where}: expected a string, got {type(value).__name__}")
    return value


def _identifier(value: Any, where: str, limits: WireLimits) -> str:
    value = _string(value, where)
    if not value or len(value) > limits.max_id_chars:
        raise WireError(f"{where}: expected 1 to {limits.max_id_chars} characters, got {len(value)}")
    return value


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireError(f"{where}: expected an integer, got {value!r}")
    return value


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise WireError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


__all__ = [
    "WireError",
    "WireLimits",
    "decode_image",
    "decode_request",
    "decode_result",
    "decode_sample",
    "encode_image",
    "encode_request",
    "encode_result",
    "encode_sample",
]
