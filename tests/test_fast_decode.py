"""The HF engine's static-cache decode loop and per-sequence seeded sampling, on real tiny Qwen-VL models."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from PIL import Image

from mmrl.config import RolloutConfig
from mmrl.contracts import SamplingParams
from mmrl.rollout import HFEngine, collate, completion_logprobs, encode_prompt, make_engine
from mmrl.rollout.decode import (
    LENGTH_BUCKET,
    StaticDecoder,
    TokenChooser,
    cache_length,
    gumbel_noise,
    kv_bytes_per_sequence,
    sequence_keys,
    sequences_that_fit,
    token_hashes,
)

FAMILIES = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl")


@pytest.fixture(scope="module")
def tiny(tiny_models):
    """family -> (cfg, model, processor, prompts): the session's tiny models (conftest.py) with image prompts
    (one, two images) and a text-only one."""
    out = {}
    for family in FAMILIES:
        cfg, model, processor = tiny_models[family]
        messages = [
            _user({"type": "image", "image": _image(64, 64, 1)}, _text("Count.")),
            _user(
                {"type": "image", "image": _image(120, 90, 2)},
                {"type": "image", "image": _image(40, 80, 3)},
                _text("Compare the two pictures, please."),
            ),
            [{"role": "user", "content": "Only text here."}],
        ]
        prompts = [encode_prompt(processor, m, cfg, max_prompt_tokens=4096) for m in messages]
        out[family] = (cfg, model, processor, prompts)
    return out


def _image(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _user(*content) -> list[dict]:
    return [{"role": "user", "content": list(content)}]


def _text(t: str) -> dict:
    return {"type": "text", "text": t}


def _ids(out) -> list[list[list[int]]]:
    return [[c.token_ids for c in group] for group in out]


def _assert_same(out, ref, atol: float = 1e-5) -> None:
    assert _ids(out) == _ids(ref)
    for group, ref_group in zip(out, ref):
        for c, r in zip(group, ref_group):
            np.testing.assert_allclose(c.logprobs, r.logprobs, atol=atol)
            assert c.finish_reason == r.finish_reason and c.text == r.text


# --------------------------------------------------------------------------------------------------
# static loop == generate loop


@pytest.mark.parametrize("family", FAMILIES)
def test_static_greedy_equals_generate(tiny, family):
    """Greedy: the static loop reproduces transformers' generate token for token (M-RoPE, left padding, text-only)."""
    _, model, processor, prompts = tiny[family]
    greedy = SamplingParams(max_new_tokens=10, temperature=0)
    static = HFEngine(model, processor, batch_size=8, decode="static").generate(prompts, 2, greedy)
    plain = HFEngine(model, processor, batch_size=8, decode="generate").generate(prompts, 2, greedy)
    _assert_same(static, plain)
    assert all(len(c.token_ids) == 10 or c.finish_reason == "stop" for g in static for c in g)


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingParams(max_new_tokens=10, seed=3),
        SamplingParams(max_new_tokens=10, temperature=0.7, top_k=5, top_p=0.8, seed=4),
        SamplingParams(max_new_tokens=10, min_new_tokens=10, seed=5),
    ],
    ids=["plain", "filtered", "min_new"],
)
def test_static_samples_equal_generate(tiny, sampling):
    """Both loops draw with the same per-sequence noise: the same samples and log-probs from the same logits."""
    _, model, processor, prompts = tiny["qwen2.5-vl"]
    static = HFEngine(model, processor, batch_size=4, decode="static").generate(prompts, 3, sampling)
    plain = HFEngine(model, processor, batch_size=5, decode="generate").generate(prompts, 3, sampling)
    _assert_same(static, plain)


def test_compiled_step_is_one_graph(tiny):
    """The step torch.compile wraps traces as ONE graph (fullgraph: no break, which CUDA graphs need), with the
    decode attention switched in and a bucketed cache, and the compiled loop still samples what generate does."""
    _, model, processor, prompts = tiny["qwen2.5-vl"]
    engine = HFEngine(model, processor, batch_size=8, decode="static")
    options = {"backend": "aot_eager", "fullgraph": True, "dynamic": False}
    engine._decoder = StaticDecoder(model, compile_step=True, compile_options=options)
    torch._dynamo.reset()
    for sampling in (SamplingParams(max_new_tokens=6, seed=1), SamplingParams(max_new_tokens=6, temperature=0)):
        compiled = engine.generate(prompts, 2, sampling)
        assert engine._decoder._cache_key[:2] == (6, LENGTH_BUCKET)
        _assert_same(compiled, HFEngine(model, processor, decode="generate").generate(prompts, 2, sampling))
    torch._dynamo.reset()


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_static_logprobs_match_trainer(tiny, family):
    """R6 parity on the static loop: reported log-probs = the trainer's tempered log-probs of the same tokens."""
    _, model, processor, prompts = tiny[family]
    engine = HFEngine(model, processor, batch_size=4, decode="static")
    for temperature in (1.0, 0.7):
        out = engine.generate(prompts, 2, SamplingParams(max_new_tokens=8, temperature=temperature, seed=2))
        flat = [c for group in out for c in group]
        with torch.no_grad():
            batch = collate([p for p in prompts for _ in range(2)], [c.token_ids for c in flat], engine.pad_id)
            trainer, _, _ = completion_logprobs(model, batch, temperature=temperature)
        for k, c in enumerate(flat):
            torch.testing.assert_close(torch.tensor(c.logprobs), trainer[k, : len(c.token_ids)], atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------------
# per-sequence seeds


@pytest.mark.parametrize("decode", ["generate", "static"])
def test_samples_do_not_depend_on_batch_mates_or_batch_size(tiny, decode):
    """A prompt's samples are the same alone, among other prompts, and at batch_size 1 or 8."""
    _, model, processor, prompts = tiny["qwen2.5-vl"]
    sampling = SamplingParams(max_new_tokens=8, seed=9)
    wide = HFEngine(model, processor, batch_size=8, decode=decode)
    together = wide.generate(prompts, 3, sampling)
    assert wide.last_batch_sizes == [8, 1]
    alone = wide.generate(prompts[1:2], 3, sampling)
    _assert_same(alone, together[1:2], atol=1e-4)
    reordered = wide.generate([prompts[2], prompts[0]], 3, sampling)
    _assert_same(reordered, [together[2], together[0]], atol=1e-4)
    narrow = HFEngine(model, processor, batch_size=1, decode=decode).generate(prompts[:2], 3, sampling)
    _assert_same(narrow, together[:2], atol=1e-4)


def test_seeds_repeat_and_differ(tiny):
    _, model, processor, prompts = tiny["qwen2.5-vl"]
    engine = HFEngine(model, processor, batch_size=8, decode="static")
    first = engine.generate(prompts, 2, SamplingParams(max_new_tokens=8, seed=1))
    assert _ids(engine.generate(prompts, 2, SamplingParams(max_new_tokens=8, seed=1))) == _ids(first)
    assert _ids(engine.generate(prompts, 2, SamplingParams(max_new_tokens=8, seed=2))) != _ids(first)
    assert all(group[0].token_ids != group[1].token_ids for group in first)  # samples of one prompt differ
    twin = copy.deepcopy(prompts[0])  # same content, another object: a second occurrence, other samples
    doubled = engine.generate([prompts[0], twin], 2, SamplingParams(max_new_tokens=8, seed=1))
    assert _ids(doubled)[0] == _ids(first)[0] and _ids(doubled)[1] != _ids(first)[0]


@pytest.mark.parametrize("decode", ["generate", "static"])
def test_prompt_seeds_name_each_prompts_stream_whatever_the_call(tiny, decode):
    """SamplingParams.prompt_seeds (the MCTS trees' seeds): a prompt's samples follow its own seed alone, not the
    call's seed, its batch-mates or the copies of the same prompt beside it."""
    _, model, processor, prompts = tiny["qwen2.5-vl"]
    engine = HFEngine(model, processor, batch_size=8, decode=decode)

    def run(batch, seeds, call_seed=0):
        return _ids(engine.generate(batch, 2, SamplingParams(max_new_tokens=8, seed=call_seed, prompt_seeds=seeds)))

    together = run(prompts, [11, 12, 13])
    assert run(prompts[1:2], [12], call_seed=99) == together[1:2]  # alone, another call seed
    assert run([prompts[2], prompts[1]], [13, 12]) == [together[2], together[1]]
    repeated = run([prompts[0], prompts[0], prompts[0]], [11, 5, 11])  # one object three times
    assert repeated[0] == repeated[2] == together[0] and repeated[1] != together[0]
    with pytest.raises(ValueError, match="one seed >= 0 per prompt"):
        run(prompts, [1, 2])


def test_sequence_keys():
    """Keys depend on seed, content, occurrence and sample index, not on a prompt's position in the call."""
    from mmrl.contracts import EncodedPrompt

    a = EncodedPrompt(torch.tensor([1, 2, 3]), {"pixel_values": torch.ones(2, 4)})
    b = EncodedPrompt(torch.tensor([1, 2, 3]), {"pixel_values": torch.zeros(2, 4)})
    keys = sequence_keys([a, b], 2, seed=0)
    assert keys.shape == (4, 2) and keys.dtype == torch.long and 0 <= int(keys.min()) and int(keys.max()) < 2**32
    assert torch.equal(sequence_keys([b, a], 2, seed=0), keys[[2, 3, 0, 1]])
    assert torch.equal(sequence_keys([a], 2, seed=0), keys[:2])
    assert not torch.equal(sequence_keys([a], 2, seed=1), keys[:2])
    assert len({tuple(k) for k in sequence_keys([a, a, b], 3, seed=0).tolist()}) == 9


def test_gumbel_noise_is_standard_gumbel_and_samples_the_softmax():
    keys = sequence_keys_for_rows(4000)
    mix = token_hashes(6, "cpu")
    g = gumbel_noise(keys, 5, mix)
    assert torch.equal(g, gumbel_noise(keys, 5, mix)) and not torch.equal(g, gumbel_noise(keys, 6, mix))
    assert torch.isfinite(g).all()
    assert abs(float(g.mean()) - 0.5772) < 0.03 and abs(float(g.var()) - math.pi**2 / 6) < 0.1
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -math.inf, 0.5]]).expand(4000, -1)
    chooser = TokenChooser(SamplingParams(temperature=1.0), 6, "cpu")
    token, logp = chooser(logits, keys, 3)
    freq = torch.bincount(token, minlength=6).float() / 4000
    probs = torch.softmax(logits[0], -1)
    assert freq[4] == 0 and (freq - probs).abs().max() < 0.03  # 4000 draws: sd <= 0.008
    torch.testing.assert_close(logp, probs.log()[token])


def sequence_keys_for_rows(rows: int) -> torch.Tensor:
    gen = np.random.default_rng(0)
    return torch.from_numpy(gen.integers(0, 2**32, (rows, 2), dtype=np.int64))


# --------------------------------------------------------------------------------------------------
# stop tokens, lengths, memory sizing, config


def test_stop_tokens_and_lengths(tiny):
    """A model that likes its stop token: rows stop at different steps, get cut there, and padding is dropped;
    min_new_tokens holds stops back; both loops agree."""
    _, model, processor, prompts = tiny["qwen2.5-vl"]
    eager = copy.deepcopy(model)
    engine = HFEngine(eager, processor, batch_size=8, decode="static")
    eos = engine.eos_ids[0]
    sampling = SamplingParams(max_new_tokens=12, temperature=1.5, seed=0)
    with torch.no_grad():  # point the stop token's output row along a typical final hidden state
        hidden = eager.model.language_model(input_ids=prompts[2].input_ids[None]).last_hidden_state[0].mean(0)
        row_norm = eager.lm_head.weight.norm(dim=1).mean()
        for alpha in (10.0, 12.0, 14.0, 16.0):
            eager.lm_head.weight[eos] = alpha * row_norm * hidden / hidden.norm()
            out = engine.generate(prompts, 4, sampling)
            reasons = {c.finish_reason for g in out for c in g}
            if reasons == {"stop", "length"}:
                break
    assert reasons == {"stop", "length"}, "could not make the tiny model stop sometimes"
    for c in (c for g in out for c in g):
        if c.finish_reason == "stop":
            assert c.token_ids[-1] in engine.eos_ids and not set(c.token_ids[:-1]) & set(engine.eos_ids)
        else:
            assert len(c.token_ids) == 12 and not set(c.token_ids) & set(engine.eos_ids)
        assert len(c.logprobs) == len(c.token_ids)
    plain = HFEngine(eager, processor, batch_size=8, decode="generate").generate(prompts, 4, sampling)
    _assert_same(out, plain)
    forced = engine.generate(prompts, 4, SamplingParams(max_new_tokens=12, min_new_tokens=12, temperature=1.5, seed=0))
    assert all(c.finish_reason == "length" and len(c.token_ids) == 12 for g in forced for c in g)
    short = engine.generate(prompts, 2, SamplingParams(max_new_tokens=1, seed=0))
    assert all(len(c.token_ids) == 1 for g in short for c in g)
    with torch.no_grad():  # a stronger pull: every row stops early and the loop ends before max_new_tokens
        eager.lm_head.weight[eos] *= 2.0
    early = SamplingParams(max_new_tokens=40, temperature=1.5, seed=0)
    out = engine.generate(prompts, 2, early)
    assert all(c.finish_reason == "stop" for g in out for c in g)
    _assert_same(out, HFEngine(eager, processor, batch_size=8, decode="generate").generate(prompts, 2, early))


def test_memory_sizing(tiny):
    cfg_model = tiny["qwen2.5-vl"][1].config
    text = cfg_model.get_text_config(decoder=True)
    head_dim = text.hidden_size // text.num_attention_heads
    expect = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * 300 * 2
    assert kv_bytes_per_sequence(cfg_model, 300, torch.bfloat16) == expect
    assert sequences_that_fit(64, 10**9, 100 * 10**9) == 64
    assert sequences_that_fit(64, 10**9, 20 * 10**9, margin=0.5, reserve_bytes=0) == 10
    assert sequences_that_fit(64, 10**12, 10**9) == 1
    assert cache_length(40, 256) == 2 * LENGTH_BUCKET and cache_length(0, LENGTH_BUCKET) == LENGTH_BUCKET


def test_config_reaches_engine(tiny):
    _, model, processor, _ = tiny["qwen2.5-vl"]
    # static stays opt-in until it has run on a GPU
    assert make_engine(RolloutConfig(), model, processor).decode == "generate"
    assert not make_engine(RolloutConfig(), model, processor).uses_static(torch.device("cpu"))
    engine = make_engine(RolloutConfig(decode="static", batch_size=3), model, processor)
    assert engine.decode == "static" and engine.uses_static(torch.device("cpu")) and engine.batch_size == 3
    with pytest.raises(ValueError, match="decode must be one of"):
        HFEngine(model, processor, decode="fast")
