"""Tiny Qwen-VL checkpoints: build, load back through plain transformers, template, sampling, budgets."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
from transformers.video_utils import load_video

from mmrl.config import ModelConfig
from mmrl.errors import ConfigError, MMRLError
from mmrl.models import image_factor, load_policy, load_processor, resolve_model_path
from mmrl.tiny import FAMILIES, TinySpec, build_tiny, parse_spec

MODEL_CLASSES = {
    "qwen2-vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"),
    "qwen2.5-vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
    "qwen3-vl": ("Qwen3VLForConditionalGeneration", "Qwen3VLProcessor"),
}


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    """(family, folder, model, processor): each family built once, loaded with plain Auto classes."""
    family = request.param
    folder = build_tiny(family, tmp_path_factory.mktemp("models") / f"tiny-{family}", seed=0)
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    return family, folder, model, processor


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _chat(processor, content: list[dict], **kwargs):
    messages = [{"role": "user", "content": content}]
    return processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, add_generation_prompt=True, return_tensors="pt", **kwargs
    )


def _sample(model, inputs, seed: int = 0) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model.generate(**inputs, do_sample=True, num_return_sequences=4, max_new_tokens=8)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_build_loads_back(tiny):
    family, folder, model, processor = tiny
    model_cls, processor_cls = MODEL_CLASSES[family]
    assert type(model).__name__ == model_cls and type(processor).__name__ == processor_cls
    tok = processor.tokenizer
    assert model.config.text_config.vocab_size == len(tok) and 1000 < len(tok) < 4100
    for name in ("image", "video", "vision_start", "vision_end"):
        token = f"<|{name}_pad|>" if name in ("image", "video") else f"<|{name}|>"
        assert getattr(model.config, f"{name}_token_id") == tok.convert_tokens_to_ids(token)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    # <think> is one token on qwen3-vl, and survives skip_special_tokens (rewards parse it).
    ids = tok("<think>red</think>")["input_ids"]
    assert (len(ids) == 3) == (family == "qwen3-vl")
    assert tok.decode(ids, skip_special_tokens=True) == "<think>red</think>"
    text = 'How many red circles? <answer>3</answer> \\boxed{12} {"bbox_2d": [1, 2]}'
    assert tok.decode(tok(text)["input_ids"]) == text
    assert image_factor(processor) == (32 if family == "qwen3-vl" else 28)
    head_dim = model.config.text_config.hidden_size // model.config.text_config.num_attention_heads
    assert sum(model.config.text_config.rope_parameters["mrope_section"]) == head_dim // 2
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_chat_template_layout(tiny, tmp_path):
    _, _, _, processor = tiny
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image", "image": _image(64, 64)}, {"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": "ok"},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    expected = (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Hi<|im_end|>\n"
        "<|im_start|>assistant\nok<|im_end|>\n<|im_start|>assistant\n"
    )
    assert text == expected
    no_system = [{"role": "user", "content": "Hi"}]
    assert processor.apply_chat_template(no_system) == "<|im_start|>user\nHi<|im_end|>\n"
    with_default = processor.apply_chat_template(no_system, default_system="You look.")
    assert with_default.startswith("<|im_start|>system\nYou look.<|im_end|>\n<|im_start|>user\n")
    # Two images of different sizes (a PIL image and a file path): one vision_start each,
    # and as many image_pad tokens as the grids imply (t*h*w / merge^2).
    _image(200, 120).save(tmp_path / "b.png")
    two = [{"type": "image", "image": _image(64, 64)}, {"type": "image", "path": str(tmp_path / "b.png")}]
    inputs = _chat(processor, two)
    ids, tok = inputs["input_ids"][0].tolist(), processor.tokenizer
    merge = processor.image_processor.merge_size
    assert ids.count(tok.convert_tokens_to_ids("<|vision_start|>")) == 2
    assert ids.count(processor.image_token_id) == int(inputs["image_grid_thw"].prod(-1).sum()) // merge**2
    assert inputs["image_grid_thw"][0].tolist() != inputs["image_grid_thw"][1].tolist()


def test_sample_image(tiny):
    _, _, model, processor = tiny
    inputs = _chat(processor, [{"type": "image", "image": _image(64, 64)}, {"type": "text", "text": "Count."}])
    out = _sample(model, inputs)
    prompt_len = inputs["input_ids"].shape[1]
    assert out.shape[0] == 4 and prompt_len < out.shape[1] <= prompt_len + 8
    assert torch.equal(out[:, :prompt_len], inputs["input_ids"].expand(4, -1))
    texts = processor.batch_decode(out[:, prompt_len:], skip_special_tokens=True)
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)
    assert torch.equal(_sample(model, inputs), out)  # seeded sampling repeats


def test_sample_video_frames(tiny):
    family, _, model, processor = tiny
    frames = [_image(64, 48, seed=i) for i in range(6)]
    inputs = _chat(processor, [{"type": "video", "video": frames}, {"type": "text", "text": "What moves?"}])
    t, h, w = inputs["video_grid_thw"][0].tolist()
    assert t == 3  # frames used as given: 6 frames / temporal patch 2
    n_pad = (inputs["input_ids"] == processor.video_token_id).sum().item()
    assert n_pad == t * h * w // processor.video_processor.merge_size**2
    out = _sample(model, inputs)
    assert out.shape[0] == 4 and out.shape[1] > inputs["input_ids"].shape[1]
    assert len(processor.batch_decode(out[:, inputs["input_ids"].shape[1] :])) == 4


def test_video_file_sampled_at_config_fps(tiny, tmp_path):
    # The v5 processor decodes paths only with torchcodec; decode with PyAV (installed) and let the
    # processor sample at cfg.video_fps from the decoder's metadata.
    _, folder, _, _ = tiny
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(24):  # 3 s at 8 fps
            frame = av.VideoFrame.from_ndarray(np.asarray(_image(64, 48, seed=i)), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    frames, meta = load_video(str(path), backend="pyav")
    assert frames.shape == (24, 48, 64, 3)
    for fps, max_frames, grid_t in ((2.0, 16, 3), (4.0, 4, 2)):  # 6 frames; 12 capped at 4
        processor = load_processor(ModelConfig(path=str(folder), video_fps=fps, video_max_frames=max_frames))
        kwargs = {"do_sample_frames": True, "video_metadata": [meta]}
        inputs = _chat(processor, [{"type": "video", "video": frames}], processor_kwargs=kwargs)
        assert inputs["video_grid_thw"][0, 0].item() == grid_t


def test_build_is_deterministic(tiny, tmp_path):
    family, folder, _, _ = tiny
    state = torch.random.get_rng_state()
    again = build_tiny(family, tmp_path / "again", seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    for name in ("model.safetensors", "tokenizer.json", "config.json", "processor_config.json"):
        assert _sha(again / name) == _sha(folder / name), name
    if family == "qwen2.5-vl":  # another seed changes the weights (one family is enough)
        other = build_tiny(family, tmp_path / "other", seed=1)
        assert _sha(other / "model.safetensors") != _sha(folder / "model.safetensors")
        assert not list(tmp_path.glob(".*")), "temporary build folders left behind"
        bigger = build_tiny(family, tmp_path / "bigger", spec=TinySpec(hidden_size=128, num_layers=3, vision_depth=3))
        text = AutoConfig.from_pretrained(bigger).text_config
        assert (text.hidden_size, text.num_hidden_layers) == (128, 3)
        assert sum(text.rope_parameters["mrope_section"]) == 128 // text.num_attention_heads // 2


def test_load_policy_honours_pixel_budget(tiny):
    _, folder, _, _ = tiny
    big = _image(448, 448)
    counts = []
    for max_pixels in (256 * 28 * 28, 16 * 28 * 28):
        model, processor = load_policy(ModelConfig(path=str(folder), max_pixels=max_pixels), device="cpu")
        inputs = _chat(processor, [{"type": "image", "image": big}])
        counts.append((inputs["input_ids"] == processor.image_token_id).sum().item())
    assert model.dtype == torch.float32 and model.device.type == "cpu"  # dtype auto on CPU
    assert counts[1] < counts[0] and counts[1] <= 16
    model, _ = load_policy(ModelConfig(path=str(folder), dtype="bfloat16"))
    assert model.dtype == torch.bfloat16 and model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="float8"):
        load_policy(ModelConfig(path=str(folder), dtype="float8"))


def test_resolve_model_path(tmp_path, monkeypatch):
    missing = tmp_path / "nope"
    with pytest.raises(MMRLError, match="nope"):
        resolve_model_path(str(missing))
    with pytest.raises(MMRLError, match="tiny:qwen2.5-vl"):
        resolve_model_path("tiny:llava")
    with pytest.raises(MMRLError, match="qwen3-vl"):
        build_tiny("llava", tmp_path / "x")
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert resolve_model_path("Qwen/Qwen2.5-VL-3B-Instruct") == "Qwen/Qwen2.5-VL-3B-Instruct"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(MMRLError, match="broken"):
        load_policy(ModelConfig(path=str(broken)), device="cpu")
    # tiny:<family> is built into the cache on first use, then reused.
    monkeypatch.setenv("MMRL_CACHE", str(tmp_path / "cache"))
    first = resolve_model_path("tiny:qwen2-vl")
    assert first == str(tmp_path / "cache" / "models" / "tiny-qwen2-vl")
    stamp = (Path(first) / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_path("tiny:qwen2-vl") == first
    assert (Path(first) / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        (["hidden=3"], "tiny spec 'hidden=3': expected key=value with key one of hidden_size, "),
        (["num_layers"], "tiny spec 'num_layers': expected key=value"),
        (["num_layers=two"], "tiny spec 'num_layers=two': num_layers must be a positive integer"),
        (["num_layers=0"], "tiny spec 'num_layers=0': num_layers must be a positive integer"),
        (["hidden_size=130"], "tiny spec: hidden_size (130) must divide by num_heads (4)"),
        (["vision_heads=3"], "tiny spec: vision_hidden_size (32) must divide by vision_heads (3)"),
    ],
)
def test_a_bad_tiny_spec_is_refused_naming_the_key(pairs, message):
    with pytest.raises(MMRLError, match="^" + re.escape(message)):
        parse_spec(pairs)


def test_a_tiny_spec_sets_only_the_keys_given():
    assert parse_spec(["hidden_size=128", "num_layers=4"]) == TinySpec(hidden_size=128, num_layers=4)
