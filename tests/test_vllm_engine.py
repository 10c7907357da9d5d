"""The vLLM engine (mmrl/rollout/vllm.py).

Without vLLM (every machine): request building, sampling-parameter building and weight-sync
bookkeeping, checked against vLLM's types as recorded from the source of vLLM 0.30.0 and 0.34.0
(file:line cited next to each record), on a real tiny Qwen2.5-VL and its real processor.

With vLLM and a CUDA GPU: log-probs agree with the trainer's, weight sync is seen, prompts are
seeded one by one. Tolerances there are for bfloat16 (vLLM's and the trainer's kernels differ), far
below the jump a stale engine produces.
"""

from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from mmrl.config import ModelConfig
from mmrl.contracts import SamplingParams
from mmrl.models import load_policy
from mmrl.rollout import encode_prompt
from mmrl.rollout.vllm import (
    DEFAULT_PACKED_MODULES,
    MAX_BIASED_TOKENS,
    compare_checksums,
    engine_param_groups,
    policy_weights,
    prompt_seeds,
    sampling_kwargs,
    tensor_checksums,
    vllm_request,
)
from mmrl.tiny import TinySpec, build_tiny

# vllm.SamplingParams' public fields, read from the wheels (class SamplingParams, annotated fields):
# vllm 0.34.0 vllm/sampling_params.py:285-450, vllm 0.30.0 vllm/sampling_params.py:229-378.
SAMPLING_FIELDS_COMMON = {
    "n", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "watermarking", "top_p",
    "top_k", "min_p", "seed", "stop", "stop_token_ids", "ignore_eos", "max_tokens", "min_tokens", "logprobs",
    "prompt_logprobs", "logprob_token_ids", "flat_logprobs", "detokenize", "skip_special_tokens",
    "spaces_between_special_tokens", "include_stop_str_in_output", "output_kind", "stream_interval", "skip_clone",
    "output_text_buffer_length", "structured_outputs", "logit_bias", "allowed_token_ids", "extra_args", "bad_words",
    "skip_reading_prefix_cache", "thinking_token_budget", "repetition_detection", "routed_experts_prompt_start",
    "trace_decode_token_ids",
}  # fmt: skip
SAMPLING_FIELDS = {
    "0.30.0": SAMPLING_FIELDS_COMMON,
    "0.34.0": SAMPLING_FIELDS_COMMON | {"prompt_logprob_token_ids", "prompt_logprob_start"},
}
# Qwen2_5_VLForConditionalGeneration's weight-name mapping, vllm 0.34.0 model_executor/models/qwen2_5_vl.py:1306-1321
# (the same table in 0.30.0): WeightsMapper(orig_to_new_prefix=...) applied in order, first match wins.
QWEN25_PREFIXES = {
    "model.language_model.": "language_model.model.",
    "model.visual.": "visual.",
    "lm_head.": "language_model.lm_head.",
    "model.": "language_model.model.",
}
QWEN25_PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"], "qkv": ["qkv"]}
VOCAB_PADDING = 64  # vLLM pads the embedding rows to a multiple of 64, zero-filled (vocab_parallel_embedding.py:525)


def _qwen25_map_name(name: str) -> str | None:
    for old, new in QWEN25_PREFIXES.items():
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def _image(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Qwen2.5-VL checkpoint, its model (CPU) and processor, built once for this module."""
    cfg = ModelConfig(path=str(build_tiny("qwen2.5-vl", tmp_path_factory.mktemp("vllm-cpu") / "qwen2.5-vl")))
    model, processor = load_policy(cfg, device="cpu")
    return cfg, model.eval(), processor


# --- sampling parameters ---------------------------------------------------------------------------------------


def test_sampling_kwargs_use_vllm_fields_and_bias_placeholders():
    sampling = SamplingParams(max_new_tokens=7, min_new_tokens=1, temperature=0.7, top_p=0.9, top_k=0, seed=3)
    kwargs = sampling_kwargs(sampling, 4, seeds=[11, 12], stop_ids=[5, 6], banned=[151655, 151656])
    assert len(kwargs) == 2 and [k["seed"] for k in kwargs] == [11, 12]
    for version, fields in SAMPLING_FIELDS.items():
        assert set(kwargs[0]) <= fields, (version, set(kwargs[0]) - fields)
    first = kwargs[0]
    assert "allowed_token_ids" not in first  # capped at 1,024 ids by vLLM's sampler: a vocabulary list raises
    assert first["logit_bias"] == {151655: -100.0, 151656: -100.0}
    assert (first["n"], first["max_tokens"], first["min_tokens"], first["top_k"]) == (4, 7, 1, -1)
    assert first["temperature"] == 0.7 and first["top_p"] == 0.9 and first["stop_token_ids"] == [5, 6]
    assert first["logprobs"] == 0
    assert "logit_bias" not in sampling_kwargs(sampling, 1, seeds=[0], stop_ids=[5], banned=[])[0]
    with pytest.raises(Exception, match="logit_bias cap"):
        sampling_kwargs(sampling, 1, seeds=[0], stop_ids=[5], banned=list(range(MAX_BIASED_TOKENS + 1)))


def test_prompt_seeds_differ_per_prompt_and_repeat_per_call():
    seeds = prompt_seeds(1234, 64)
    assert seeds == prompt_seeds(1234, 64) and seeds[:8] == prompt_seeds(1234, 8)
    assert len(set(seeds)) == 64 and all(0 <= s < 2**62 for s in seeds)
    # vLLM seeds completion j of a request seed + j: the prompts' ranges must not overlap for any group size
    gaps = np.diff(np.sort(np.array(seeds, dtype=np.float64)))
    assert gaps.min() > 1e6
    assert set(prompt_seeds(1235, 64)).isdisjoint(seeds)
    with pytest.raises(Exception, match="seed"):
        prompt_seeds(-1, 2)


# --- requests --------------------------------------------------------------------------------------------------


def test_qwen25_video_request_carries_metadata_the_processor_turns_into_our_time_positions(tiny):
    """The metadata sent with the frames gives vLLM's HF processor the trainer's second_per_grid_ts."""
    cfg, _, processor = tiny
    frames = [_image(64, 48, 10 + i) for i in range(4)]
    messages = [
        {"role": "user", "content": [{"type": "video", "video": frames, "fps": 2.0}, {"type": "text", "text": "Go"}]}
    ]
    prompt = encode_prompt(processor, messages, cfg, max_prompt_tokens=1024)
    ours = prompt.vision["second_per_grid_ts"]

    request = vllm_request(prompt)
    ((array, meta),) = request["multi_modal_data"]["video"]
    assert array is prompt.media["video"][0][0] and "mm_processor_kwargs" not in request
    assert meta["do_sample_frames"] is False and meta["fps"] == pytest.approx(2.0)
    meta["frames_indices"].append(99)  # the request's metadata is a copy: the prompt's stays intact
    assert 99 not in prompt.media["video"][0][1]["frames_indices"]

    # vLLM 0.30: the metadata also goes as the HF processor kwarg; run that exact call on the real processor
    request = vllm_request(prompt, video_metadata_kwargs=True)
    kwargs = request["mm_processor_kwargs"]
    out = processor(text=[request["prompt"]], videos=[array], **kwargs, return_tensors="pt")
    assert torch.allclose(torch.as_tensor(out["second_per_grid_ts"], dtype=ours.dtype), ours)
    assert out["input_ids"][0].tolist() == prompt.input_ids.tolist()
    # without metadata, transformers assumes 24 fps: different time positions, which is the bug being fixed
    plain = processor(text=[request["prompt"]], videos=[array], return_tensors="pt")
    assert not torch.allclose(torch.as_tensor(plain["second_per_grid_ts"], dtype=ours.dtype), ours)


def test_requests_without_video_metadata_are_refused(tiny):
    cfg, _, processor = tiny
    frames = [_image(64, 48, i) for i in range(4)]
    messages = [
        {"role": "user", "content": [{"type": "video", "video": frames, "fps": 2.0}, {"type": "text", "text": "Go"}]}
    ]
    prompt = encode_prompt(processor, messages, cfg, max_prompt_tokens=1024)
    prompt.media["video"] = [(prompt.media["video"][0][0], {"fps": 2.0})]
    with pytest.raises(Exception, match="frames_indices"):
        vllm_request(prompt)


# --- weight sync bookkeeping -----------------------------------------------------------------------------------


def _engine_side(weights: list[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The tensors vLLM's Qwen2.5-VL holds after loading `weights`: renamed, q/k/v and gate/up concatenated
    in packed order, embedding rows zero-padded (the layout of the files cited at the top)."""
    parts: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for name, t in weights:
        mapped = _qwen25_map_name(name)
        target, order = mapped, 0
        for fused, members in QWEN25_PACKED.items():
            for k, member in enumerate(members):
                if f".{member}." in mapped and member != fused:
                    target, order = mapped.replace(f".{member}.", f".{fused}.", 1), k
        parts.setdefault(target, []).append((order, t))
    engine = {}
    for name, pieces in parts.items():
        t = torch.cat([p for _, p in sorted(pieces, key=lambda x: x[0])], dim=0)
        if name.endswith("embed_tokens.weight"):
            pad = -t.shape[0] % VOCAB_PADDING or VOCAB_PADDING
            t = torch.cat([t, t.new_zeros(pad, *t.shape[1:])])
        engine[name] = t
    return engine


def test_per_tensor_checksums_follow_vllm_fusing_and_detect_one_changed_tensor(tiny):
    _, model, _ = tiny
    weights = policy_weights(model, torch.bfloat16)
    engine = _engine_side(weights)
    groups, unmatched = engine_param_groups([n for n, _ in weights], engine, _qwen25_map_name, QWEN25_PACKED)
    assert unmatched == [] and sum(len(g) for g in groups.values()) == len(weights)
    qkv = next(n for n in groups if n.endswith("self_attn.qkv_proj.weight"))
    assert [h.rsplit(".", 2)[-2] for h in groups[qkv]] == ["q_proj", "k_proj", "v_proj"]
    assert any(n.startswith("visual.") and "gate_up_proj" in n for n in groups)

    trainer = tensor_checksums(weights)
    assert compare_checksums(trainer, groups, tensor_checksums(engine.items())) == []

    # one element of one k_proj one bfloat16 ulp off: only the fused qkv_proj holding it is flagged
    stale = {n: t.clone() for n, t in engine.items()}
    row = dict(weights)[groups[qkv][0]].shape[0]  # k_proj starts after q_proj's rows
    stale[qkv][row, 0] = (engine[qkv][row, 0].float() * (1 + 2**-7)).to(torch.bfloat16)  # bf16: 7 mantissa bits
    assert stale[qkv][row, 0] != engine[qkv][row, 0]
    assert compare_checksums(trainer, groups, tensor_checksums(stale.items())) == [qkv]

    # a change that keeps the global sum: one element swapped between two tensors; one global float64 sum (the
    # old check) cannot see it, per-tensor checksums name both
    a, b = sorted(n for n in engine if n.endswith("mlp.down_proj.weight"))[:2]
    shifted = {n: t.clone() for n, t in engine.items()}
    shifted[a][0, 0], shifted[b][0, 0] = engine[b][0, 0], engine[a][0, 0]
    assert engine[a][0, 0] != engine[b][0, 0]
    total = sum(float(t.double().sum()) for t in engine.values())
    assert sum(float(t.double().sum()) for t in shifted.values()) == pytest.approx(total, rel=1e-12)
    assert compare_checksums(trainer, groups, tensor_checksums(shifted.items())) == sorted([a, b])


def test_engine_names_of_tied_and_unknown_tensors():
    engine = {"language_model.model.layers.0.self_attn.qkv_proj.weight", "visual.blocks.0.attn.qkv.weight"}
    names = ["model.language_model.layers.0.self_attn.v_proj.weight", "model.visual.blocks.0.attn.qkv.weight",
             "lm_head.weight", "model.language_model.layers.0.self_attn.o_proj.weight"]  # fmt: skip
    groups, unmatched = engine_param_groups(names, engine, _qwen25_map_name, DEFAULT_PACKED_MODULES)
    assert groups == {
        "language_model.model.layers.0.self_attn.qkv_proj.weight": [names[0]],
        "visual.blocks.0.attn.qkv.weight": [names[1]],
    }
    assert unmatched == names[2:]
    dropped, unmatched = engine_param_groups(["lm_head.weight"], engine, lambda n: None, DEFAULT_PACKED_MODULES)
    assert dropped == {} and unmatched == ["lm_head.weight"]


def test_checksums_are_count_sum_and_sum_of_squares_across_chunks(monkeypatch):
    import mmrl.rollout.vllm as engine_module

    monkeypatch.setattr(engine_module, "CHECKSUM_CHUNK", 3)  # several chunks per tensor
    t = torch.arange(10, dtype=torch.bfloat16).reshape(2, 5)
    assert tensor_checksums([("w", t), ("v", t[:, :2])]) == {"w": (10, 45.0, 285.0), "v": (4, 12.0, 62.0)}


def test_policy_weights_look_through_ddp_compile_and_peft(tiny, tmp_path):
    _, model, _ = tiny
    plain = policy_weights(model)
    names = [n for n, _ in plain]
    assert names == [n for n, _ in model.named_parameters()]
    assert all(w.data_ptr() == p.data_ptr() for (_, w), p in zip(plain, model.parameters()))  # no copies

    compiled = torch.compile(model)  # the wrapper object only; never run
    assert [n for n, _ in compiled.named_parameters()][0].startswith("_orig_mod.")
    assert [n for n, _ in policy_weights(compiled)] == names

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        assert [n for n, _ in ddp.named_parameters()][0].startswith("module.")
        assert [n for n, _ in policy_weights(ddp)] == names
        assert [n for n, _ in policy_weights(torch.compile(ddp))] == names
    finally:
        dist.destroy_process_group()

    peft = pytest.importorskip("peft")
    lora_cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    wrapped = peft.get_peft_model(copy.deepcopy(model), lora_cfg)
    assert any("lora_A" in n for n, _ in wrapped.named_parameters())
    merged_view = dict(policy_weights(wrapped))
    assert list(merged_view) == names
    reference = dict(copy.deepcopy(wrapped).merge_and_unload().named_parameters())
    changed = [n for n in names if not torch.equal(merged_view[n], dict(model.named_parameters())[n])]
    assert changed and all(".q_proj." in n or ".v_proj." in n for n in changed)
    for n in names:
        torch.testing.assert_close(merged_view[n], reference[n], rtol=1e-5, atol=1e-6)
    assert any("lora_A" in n for n, _ in wrapped.named_parameters())  # the trainer's model is untouched


# --- on a GPU with vLLM ----------------------------------------------------------------------------------------

gpu_vllm = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or not torch.cuda.is_available(),
    reason="vLLM engine runs need vLLM and a CUDA GPU",
)

# head_dim 64: vLLM's attention kernels do not take the default tiny head_dim of 16.
SPEC = TinySpec(hidden_size=128, num_heads=2, num_kv_heads=1, intermediate_size=256)


@pytest.fixture(scope="module", params=["qwen2.5-vl", "qwen3-vl"])
def setup(request, tmp_path_factory):
    from mmrl.config import RolloutConfig
    from mmrl.rollout import make_engine
    from mmrl.rollout.vllm import VLLMEngine

    family = request.param
    cfg = ModelConfig(path=str(build_tiny(family, tmp_path_factory.mktemp("vllm") / family, spec=SPEC)))
    model, processor = load_policy(cfg, device="cuda")
    rollout = RolloutConfig(engine="vllm", max_prompt_tokens=1024, max_new_tokens=16, vllm_gpu_memory_utilization=0.3)
    engine = make_engine(rollout, model, processor)
    assert isinstance(engine, VLLMEngine) and engine.last_sync["ok"], engine.last_sync
    frames = [_image(64, 48, 10 + i) for i in range(4)]
    messages = [
        [{"role": "user", "content": [{"type": "image", "image": _image(96, 64, 1)}, {"type": "text", "text": "Hi"}]}],
        [{"role": "user", "content": [{"type": "video", "video": frames, "fps": 2.0}, {"type": "text", "text": "Go"}]}],
        [{"role": "user", "content": "Only text."}],
    ]
    prompts = [encode_prompt(processor, m, cfg, max_prompt_tokens=1024) for m in messages]
    return model, engine, prompts


def _agreement(model, engine, prompts, temperature: float) -> float:
    from mmrl.rollout import collate, completion_logprobs, logprob_agreement

    out = engine.generate(prompts, 2, SamplingParams(max_new_tokens=16, temperature=temperature, seed=0))
    flat = [c for group in out for c in group]
    pad = engine.tokenizer.pad_token_id
    with torch.no_grad():
        batch = collate([p for p in prompts for _ in range(2)], [c.token_ids for c in flat], pad)
        trainer, _, mask = completion_logprobs(model, batch, temperature=temperature)
    return logprob_agreement([c.logprobs for c in flat], trainer, mask)


@gpu_vllm
def test_engine_logprobs_agree_with_trainer(setup):
    model, engine, prompts = setup
    for temperature in (1.0, 0.7):
        assert _agreement(model, engine, prompts, temperature) < 0.02


@gpu_vllm
def test_prompts_are_seeded_one_by_one(setup):
    _, engine, prompts = setup
    sampling = SamplingParams(max_new_tokens=16, temperature=1.0, seed=5)
    first = engine.generate([prompts[2], prompts[2]], 1, sampling)
    again = engine.generate([prompts[2], prompts[2]], 1, sampling)
    assert [g[0].token_ids for g in first] == [g[0].token_ids for g in again]
    assert first[0][0].token_ids != first[1][0].token_ids  # same prompt, own seed: own noise
    banned = set(engine.banned_ids)
    assert not any(banned & set(c.token_ids) for g in first for c in g)


@gpu_vllm
def test_weight_sync_is_seen(setup):
    model, engine, prompts = setup
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    stale = _agreement(model, engine, prompts, 1.0)
    engine.sync_weights(model)
    assert engine.last_sync["ok"] and not engine.last_sync["mismatched"], engine.last_sync
    fresh = _agreement(model, engine, prompts, 1.0)
    assert fresh < 0.02 < stale
