"""The data server's wire format: lossless round trips through JSON text, strict validation naming the field."""

from __future__ import annotations

import base64
import copy
import io
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mmrl.dataserver.protocol import SynthesisRequest, SynthesisResult
from mmrl.dataserver.wire import (
    WireError,
    WireLimits,
    decode_request,
    decode_result,
    encode_image,
    encode_request,
    encode_result,
)
from mmrl.media import load_image
from mmrl.sample import Sample


def picture(mode: str = "RGB", size: tuple[int, int] = (37, 23), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)


def grounding_sample(image) -> Sample:
    return Sample(
        id="rec-7",
        task="referring_grounding",
        messages=[
            {"role": "system", "content": "You locate objects."},
            {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "the red cube"}]},
        ],
        answer={"box": [3, 4, 20.5, 18], "label": "cube"},
        meta={"image_size": [37, 23], "coords": "qwen2.5-vl", "params": {"min_box": 4}, "label_ids": [2]},
    )


def through_json(record: dict) -> dict:
    return json.loads(json.dumps(record))


def request_record(**changes) -> dict:
    record = encode_request(SynthesisRequest("req-1", grounding_sample(picture()), "a snowy street", 3))
    record.update(changes)
    return record


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_a_request_round_trips_with_byte_identical_pixels(mode: str) -> None:
    image = picture(mode)
    request = SynthesisRequest("req-1", grounding_sample(image), "a snowy street at night", 3)
    back = decode_request(through_json(encode_request(request)))
    assert (back.request_id, back.description, back.policy_version) == ("req-1", "a snowy street at night", 3)
    assert back.seed.answer == request.seed.answer and back.seed.meta == request.seed.meta
    assert back.seed.messages[0] == request.seed.messages[0]
    got = back.seed.messages[1]["content"][0]["image"]
    assert (got.mode, got.size, got.tobytes()) == (image.mode, image.size, image.tobytes())
    assert back.seed.messages[1]["content"][1] == {"type": "text", "text": "the red cube"}


def test_an_image_given_as_a_path_travels_as_its_decoded_pixels(tmp_path) -> None:
    path = tmp_path / "seed.png"
    picture("RGBA").save(path)  # load_image composites alpha over white: the receiver sees what training sees
    record = encode_request(SynthesisRequest("req-1", grounding_sample(str(path)), "a beach", 0))
    got = decode_request(through_json(record)).seed.messages[1]["content"][0]["image"]
    assert got.tobytes() == load_image(path).tobytes() and got.mode == "RGB"


def test_the_same_request_encodes_to_the_same_bytes() -> None:
    def text() -> str:
        return json.dumps(encode_request(SynthesisRequest("r", grounding_sample(picture(seed=5)), "d", 1)))

    assert text() == text()


def test_results_round_trip_accepted_and_rejected() -> None:
    image = picture(seed=2)
    accepted = SynthesisResult("req-1", 4, sample=grounding_sample(image), latency_s=0.25, meta={"scale": 0.5})
    back = decode_result(through_json(encode_result(accepted)))
    assert back.accepted and (back.request_id, back.policy_version, back.latency_s, back.meta) == (
        "req-1",
        4,
        0.25,
        {"scale": 0.5},
    )
    assert back.sample.messages[1]["content"][0]["image"].tobytes() == image.tobytes()
    rejected = decode_result(through_json(encode_result(SynthesisResult("req-2", 1, reject_reason="new_instance"))))
    assert not rejected.accepted and rejected.reject_reason == "new_instance" and rejected.sample is None


def test_a_video_item_is_refused_by_both_sides() -> None:
    sample = grounding_sample(picture())
    sample.messages[1]["content"].append({"type": "video", "video": [picture(), picture()]})
    with pytest.raises(WireError, match=r"sample 'rec-7' messages\[1\]\.content\[2\]: video"):
        encode_request(SynthesisRequest("r", sample, "d", 0))
    record = request_record()
    record["seed"]["messages"][1]["content"].append({"type": "video", "video": ["a.mp4"]})
    with pytest.raises(WireError, match=r"request\.seed\.messages\[1\]\.content\[2\]: video"):
        decode_request(record)


def png_base64(image: Image.Image) -> str:
    return encode_image(image)


def jpeg_base64() -> str:
    buf = io.BytesIO()
    picture().save(buf, format="JPEG")
    return base64.b64encode(buf.getvalue()).decode()


def set_image(record: dict, value) -> dict:
    record["seed"]["messages"][1]["content"][0]["image"] = value
    return record


IMAGE = "request.seed.messages[1].content[0].image"
BAD_REQUESTS = [
    (lambda r: r.pop("request_id") and r, "request: missing field(s) ['request_id']"),
    (lambda r: {**r, "extra": 1}, "request: unknown field(s) ['extra']"),
    (lambda r: {**r, "request_id": ""}, "request.request_id: expected 1 to 256 characters"),
    (lambda r: {**r, "request_id": "x" * 257}, "request.request_id: expected 1 to 256 characters"),
    (lambda r: {**r, "policy_version": "3"}, "request.policy_version: expected an integer"),
    (lambda r: {**r, "policy_version": True}, "request.policy_version: expected an integer"),
    (lambda r: {**r, "description": None}, "request.description: expected a string"),
    (lambda r: {**r, "description": "x" * 4001}, "request.description: 4001 characters, more than the limit of 4000"),
    (lambda r: {**r, "seed": []}, "request.seed: expected a JSON object, got list"),
    (lambda r: r["seed"].pop("answer") and r, "request.seed: missing field(s) ['answer']"),
    (lambda r: r["seed"].update(messages=[]) or r, "request.seed.messages: expected a non-empty list"),
    (lambda r: r["seed"]["messages"][0].update(role="robot") or r, "request.seed.messages[0]: expected an object"),
    (lambda r: r["seed"]["messages"][0].update(content=5) or r, "request.seed.messages[0].content: expected"),
    (lambda r: r["seed"].update(meta=[]) or r, "request.seed.meta: expected a JSON object"),
    (lambda r: set_image(r, "/etc/passwd"), f"{IMAGE}: expected {{'png_base64'"),
    (lambda r: set_image(r, {"png_base64": "%%%"}), f"{IMAGE}: not valid base64"),
    (lambda r: set_image(r, {"png_base64": jpeg_base64()}), f"{IMAGE}: not a PNG image"),
    (lambda r: set_image(r, {"png_base64": png_base64(picture())[:200]}), f"{IMAGE}: cannot decode the PNG"),
    (lambda r: set_image(r, {"png_base64": png_base64(picture(size=(100, 100)))}), f"{IMAGE}: 100x100 pixels"),
]


@pytest.mark.parametrize(("mutate", "message"), BAD_REQUESTS, ids=[m for _, m in BAD_REQUESTS])
def test_a_bad_request_is_refused_naming_the_field(mutate, message: str) -> None:
    record = mutate(copy.deepcopy(request_record()))
    with pytest.raises(WireError) as info:
        decode_request(record, WireLimits(max_image_pixels=50 * 50))
    assert str(info.value).startswith(message)


def test_a_huge_image_is_refused_from_its_header_before_decompression() -> None:
    """A 5000 x 5000 PNG of one colour is ~150 kB on the wire and 25 MB decoded."""
    flat = png_base64(Image.new("L", (5000, 5000)))
    assert len(flat) < 200_000
    with pytest.raises(WireError, match="5000x5000 pixels, more than the limit of 16777216"):
        decode_request(set_image(request_record(), {"png_base64": flat}))


def test_a_result_needs_exactly_one_of_sample_and_reason() -> None:
    record = encode_result(SynthesisResult("r", 0, reject_reason="x"))
    with pytest.raises(WireError, match="exactly one of 'sample' and 'reject_reason'"):
        decode_result({**record, "reject_reason": None})
    with pytest.raises(WireError, match=r"result\.latency_s: expected a finite number"):
        decode_result({**record, "latency_s": float("nan")})


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(seed_changes=st.dictionaries(st.sampled_from(["id", "task", "messages", "answer", "meta", "x"]), JSON_VALUES),
       top_changes=st.dictionaries(st.sampled_from(["request_id", "description", "policy_version", "seed"]),
                                   JSON_VALUES, max_size=2))  # fmt: skip
def test_decoding_any_json_gives_a_request_or_a_wire_error(seed_changes: dict, top_changes: dict) -> None:
    record = request_record()
    record["seed"].update(seed_changes)
    record.update(top_changes)
    try:
        decode_request(record)
    except WireError:
        pass
