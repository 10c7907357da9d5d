"""Rollout path on real tiny Qwen-VL models: encode, collate + log-probs, the HF engine (no mocks)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmrl.config import ModelConfig, RolloutConfig
from mmrl.contracts import EncodedPrompt, SamplingParams
from mmrl.errors import MediaError, MMRLError
from mmrl.rollout import (
    HFEngine,
    collate,
    completion_logprobs,
    encode_prompt,
    logprob_agreement,
    make_engine,
    sampling_params,
)
from mmrl.rollout.forward import shares_vision, suppressed_token_ids, unwrap_model
from mmrl.video import write_video

BUDGET = 4096


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A 3 s, 8 fps, 64x48 mp4 of random frames."""
    frames = np.random.default_rng(7).integers(0, 256, (24, 48, 64, 3), dtype=np.uint8)
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames, 8.0)


def _image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def _user(*content) -> list[dict]:
    return [{"role": "user", "content": list(content)}]


def _text(t: str) -> dict:
    return {"type": "text", "text": t}


def _placeholders(processor, prompt: EncodedPrompt) -> int:
    ids = prompt.input_ids
    return int(((ids == processor.image_token_id) | (ids == processor.video_token_id)).sum())


def _mixed_prompts(tiny, clip) -> list[EncodedPrompt]:
    """Different lengths, image sizes, two images, a video, text only."""
    cfg, _, processor = tiny
    messages = [
        _user({"type": "image", "image": _image(64, 64, 1)}, _text("Count.")),
        _user(
            {"type": "image", "image": _image(200, 120, 2)},
            {"type": "image", "image": _image(30, 90, 3)},
            _text("Compare the two pictures, please."),
        ),
        _user({"type": "video", "video": str(clip)}, _text("What moves?")),
        [{"role": "user", "content": "Only text here."}],
    ]
    return [encode_prompt(processor, m, cfg, max_prompt_tokens=BUDGET) for m in messages]


# --------------------------------------------------------------------------------------------------
# encode


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"])
def test_encode_images(tiny_models, family, tmp_path):
    cfg, _, processor = tiny_models[family]
    merge = processor.image_processor.merge_size
    _image(90, 60, 4).save(tmp_path / "b.png")
    one = encode_prompt(processor, _user({"type": "image", "image": _image(64, 64)}, _text("Hi")), cfg,
                        max_prompt_tokens=BUDGET)  # fmt: skip
    two = encode_prompt(
        processor,
        _user({"type": "image", "image": _image(200, 120)}, {"type": "image", "image": str(tmp_path / "b.png")}),
        cfg,
        max_prompt_tokens=BUDGET,
    )
    for prompt, n_images in ((one, 1), (two, 2)):
        grid = prompt.vision["image_grid_thw"]
        assert grid.shape == (n_images, 3)
        assert prompt.num_visual_tokens == int(grid.prod(-1).sum()) // merge**2 == _placeholders(processor, prompt)
        assert prompt.vision["pixel_values"].shape[0] == int(grid.prod(-1).sum())
        assert prompt.vision["mm_token_type_ids"].shape == prompt.input_ids.shape
        assert int((prompt.vision["mm_token_type_ids"] == 1).sum()) == prompt.num_visual_tokens
        assert prompt.text.endswith("<|im_start|>assistant\n") and prompt.text.count("<|image_pad|>") == n_images
        assert len(prompt.media["image"]) == n_images and prompt.input_ids.dtype == torch.long
    assert two.vision["image_grid_thw"][0].tolist() != two.vision["image_grid_thw"][1].tolist()
    lean = encode_prompt(processor, _user({"type": "image", "image": _image(64, 64)}, _text("Hi")), cfg,
                         max_prompt_tokens=BUDGET, keep_media=False)  # fmt: skip
    assert lean.media == {} and torch.equal(lean.input_ids, one.input_ids)
    # Sides under half the patch factor: the processor's rounding (not mmrl.media.smart_resize's) decides.
    for w, h in ((400, 10), (13, 13), (1000, 7)):
        odd = encode_prompt(processor, _user({"type": "image", "image": _image(w, h)}), cfg, max_prompt_tokens=BUDGET)
        assert odd.num_visual_tokens == _placeholders(processor, odd) > 0


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_encode_video_file_uses_decoded_frames(tiny_models, family, clip):
    cfg, _, processor = tiny_models[family]
    prompt = encode_prompt(processor, _user({"type": "video", "video": str(clip)}, _text("What moves?")), cfg,
                           max_prompt_tokens=BUDGET)  # fmt: skip
    # 3 s at cfg.video_fps=2 -> 6 decoded frames (source frames 0, 4, ..., 20) -> 3 temporal patches.
    frames, meta = prompt.media["video"][0]
    assert frames.shape == (6, 48, 64, 3) and meta["frames_indices"] == [0, 4, 8, 12, 16, 20]
    assert meta["fps"] == pytest.approx(8.0) and meta["total_num_frames"] == 24
    grid = prompt.vision["video_grid_thw"][0].tolist()
    assert grid[0] == 3
    merge = processor.video_processor.merge_size
    assert prompt.num_visual_tokens == grid[0] * grid[1] * grid[2] // merge**2 == _placeholders(processor, prompt)
    decoded = processor.tokenizer.decode(prompt.input_ids)
    if family == "qwen3-vl":  # per-patch timestamps from OUR frames: mean of (0, 0.5) s, (1, 1.5) s, (2, 2.5) s
        assert all(f"<{t:.1f} seconds>" in decoded for t in (0.25, 1.25, 2.25))
    else:  # second_per_grid_ts = temporal_patch / sampled fps = 2 / (6 / 24 * 8)
        assert prompt.vision["second_per_grid_ts"].tolist() == [pytest.approx(1.0)]
    smaller = encode_prompt(processor, _user({"type": "video", "video": str(clip)}), ModelConfig(
        path=cfg.path, video_fps=8.0, video_max_frames=4), max_prompt_tokens=BUDGET)  # fmt: skip
    assert smaller.media["video"][0][0].shape[0] == 4  # capped at video_max_frames


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"])
def test_encode_video_frames(tiny_models, family, tmp_path):
    cfg, _, processor = tiny_models[family]
    paths = []
    for i in range(3):
        _image(64, 48, 10 + i).save(tmp_path / f"f{i}.png")
        paths.append(str(tmp_path / f"f{i}.png"))
    items = {
        "paths": {"type": "video", "video": paths, "fps": 1.0},
        "pil": {"type": "video", "video": [_image(64, 48, i) for i in range(4)]},
        "array": {"type": "video", "video": np.stack([np.asarray(_image(64, 48, i)) for i in range(4)])},
        "single": {"type": "video", "video": [_image(64, 48)]},
        "stamped": {"type": "video", "video": [_image(64, 48, i) for i in range(4)], "timestamps": [0, 1, 3, 4]},
    }
    out = {k: encode_prompt(processor, _user(v, _text("Go")), cfg, max_prompt_tokens=BUDGET) for k, v in items.items()}
    for prompt in out.values():
        assert prompt.num_visual_tokens == _placeholders(processor, prompt) > 0
    assert [out[k].vision["video_grid_thw"][0, 0].item() for k in items] == [2, 2, 2, 1, 2]
    assert torch.equal(out["pil"].input_ids, out["array"].input_ids)
    assert torch.equal(out["pil"].vision["pixel_values_videos"], out["array"].vision["pixel_values_videos"])
    if family == "qwen3-vl":  # frames at i / fps: 1 fps -> patches at 0.5 s and 2.0 s
        decoded = processor.tokenizer.decode(out["paths"].input_ids)
        assert "<0.5 seconds>" in decoded and "<2.0 seconds>" in decoded
        decoded = processor.tokenizer.decode(out["stamped"].input_ids)  # given timestamps, patch means
        assert "<0.5 seconds>" in decoded and "<3.5 seconds>" in decoded
    if family == "qwen2.5-vl":  # default fps = cfg.video_fps = 2 -> 1 s per temporal patch
        assert out["pil"].vision["second_per_grid_ts"].tolist() == [pytest.approx(1.0)]
        assert out["paths"].vision["second_per_grid_ts"].tolist() == [pytest.approx(2.0)]
        assert out["stamped"].vision["second_per_grid_ts"].tolist() == [pytest.approx(2 / 0.75)]  # 3 gaps in 4 s


def test_over_budget_prompt_is_rejected_with_advice(tiny_models):
    cfg, _, processor = tiny_models["qwen2.5-vl"]
    messages = _user({"type": "image", "image": _image(448, 448)}, _text("Describe."))
    fits = encode_prompt(processor, messages, cfg, max_prompt_tokens=BUDGET)
    with pytest.raises(MMRLError) as err:
        encode_prompt(processor, messages, cfg, max_prompt_tokens=len(fits) - 1)
    message = str(err.value)
    assert f"prompt needs {len(fits)} tokens" in message and f"{fits.num_visual_tokens} visual" in message
    assert "448x448" in message and "model.max_pixels" in message and "rollout.max_prompt_tokens" in message
    assert encode_prompt(processor, messages, cfg, max_prompt_tokens=len(fits)).input_ids.shape == fits.input_ids.shape


def test_corrupt_media_raise_media_error(tiny_models, tmp_path):
    cfg, _, processor = tiny_models["qwen2.5-vl"]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(MediaError, match="broken.png"):
        encode_prompt(processor, _user({"type": "image", "image": str(bad)}), cfg, max_prompt_tokens=BUDGET)
    video = tmp_path / "broken.mp4"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage" * 10)
    with pytest.raises(MediaError, match="broken.mp4"):
        encode_prompt(processor, _user({"type": "video", "video": str(video)}), cfg, max_prompt_tokens=BUDGET)


# --------------------------------------------------------------------------------------------------
# collate + completion_logprobs


def test_collate_layout(tiny_models, clip):
    _, _, processor = tiny_models["qwen2.5-vl"]
    prompts = _mixed_prompts(tiny_models["qwen2.5-vl"], clip)
    group = [prompts[0], prompts[0], prompts[2]]  # a repeated prompt object (GRPO group) and a video
    batch = collate(group, [[5, 6, 7], [8], [9, 10]], pad_id=0)
    lengths = [len(p) + n for p, n in zip(group, (3, 1, 2))]
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["completion_mask"].sum(1).tolist() == [3, 1, 2]
    assert batch["input_ids"][1, len(group[1]) : len(group[1]) + 1].tolist() == [8]
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()  # right padding with pad_id
    assert batch["attention_mask"][:, 0].all()  # every sequence starts at column 0
    assert batch["image_grid_thw"].shape == (2, 3)  # the repeated prompt's image, once per sequence
    assert "pixel_values" not in batch  # the group's pixels are kept once, in `unique_pixel_values`
    assert torch.equal(batch["unique_pixel_values"], prompts[0].vision["pixel_values"])
    assert batch["video_grid_thw"].shape == (1, 3) and batch["second_per_grid_ts"].shape == (1,)
    assert (batch["mm_token_type_ids"][batch["completion_mask"] == 1] == 0).all()
    assert int((batch["mm_token_type_ids"] == 1).sum()) == 2 * prompts[0].num_visual_tokens


def _reference_logprobs(model, prompts, completions, temperature: float) -> list[torch.Tensor]:
    """Plain full-sequence log-softmax, one unpadded sequence at a time (no logits_to_keep, no chunks).

    Image/video placeholders are excluded from the distribution, as in both engines.
    """
    out = []
    for p, c in zip(prompts, completions):
        ids = torch.cat([p.input_ids, torch.tensor(c)])[None]  # (1, T + n)
        vision = {k: v for k, v in p.vision.items() if k != "mm_token_type_ids"}
        types = torch.cat([p.vision["mm_token_type_ids"], torch.zeros(len(c), dtype=torch.long)])[None]
        logits = model(input_ids=ids, mm_token_type_ids=types, **vision).logits[0].float() / temperature
        logits[:, [model.config.image_token_id, model.config.video_token_id]] = -torch.inf  # never sampled
        logp = torch.log_softmax(logits, -1)[len(p) - 1 : -1]  # rows predicting the completion
        out.append(logp.gather(-1, torch.tensor(c)[:, None]).squeeze(-1))
    return out


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"])
def test_batch_logprobs_equal_single_runs(tiny_models, family, clip):
    """R10/R3: b right-padded sequences score like b runs at batch size 1 (mixed sizes, video, text-only)."""
    _, model, _ = tiny_models[family]
    prompts = _mixed_prompts(tiny_models[family], clip)
    completions = [[11, 250, 37, 90, 5], [42] * 9, [7, 8, 9], [300, 301, 302, 303, 304, 305, 306]]
    with torch.no_grad():
        batch = collate(prompts, completions, pad_id=0)
        logprobs, entropy, mask = completion_logprobs(model, batch, temperature=0.7, with_entropy=True)
        assert logprobs.shape == entropy.shape == mask.shape == (4, 9) and mask.dtype == torch.bool
        assert mask.sum(1).tolist() == [len(c) for c in completions]
        assert (logprobs[~mask] == 0).all() and (logprobs[mask] < 0).all() and (entropy[mask] > 0).all()
        for i, (p, c) in enumerate(zip(prompts, completions)):
            single, single_entropy, _ = completion_logprobs(
                model, collate([p], [c], pad_id=0), temperature=0.7, with_entropy=True
            )
            torch.testing.assert_close(logprobs[i, : len(c)], single[0], atol=1e-4, rtol=0)
            torch.testing.assert_close(entropy[i, : len(c)], single_entropy[0], atol=1e-4, rtol=0)
        for i, ref in enumerate(_reference_logprobs(model, prompts, completions, 0.7)):  # token j <- logits j-1
            torch.testing.assert_close(logprobs[i, : len(ref)], ref, atol=1e-4, rtol=0)


def test_gradients_flow_through_chunked_scoring(tiny_models, clip):
    _, model, _ = tiny_models["qwen2.5-vl"]
    prompts = _mixed_prompts(tiny_models["qwen2.5-vl"], clip)[:3]
    batch = collate(prompts, [[11, 12, 13], [14, 15], [16]], pad_id=0)
    with torch.no_grad():
        frozen, frozen_entropy, _ = completion_logprobs(model, batch, with_entropy=True)
    model.zero_grad()
    logprobs, entropy, mask = completion_logprobs(model, batch, with_entropy=True)
    torch.testing.assert_close(logprobs, frozen)  # recomputation in backward changes nothing forward
    torch.testing.assert_close(entropy, frozen_entropy)
    loss = -(logprobs * mask).sum() / mask.sum() - 0.01 * (entropy * mask).sum() / mask.sum()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["lm_head.weight"] is not None and grads["lm_head.weight"].abs().sum() > 0
    vision = [g for n, g in grads.items() if n.startswith("model.visual.")]
    assert any(g is not None and g.abs().sum() > 0 for g in vision)  # through the images too
    model.zero_grad()


@pytest.mark.parametrize("family", ["qwen2-vl", "qwen2.5-vl", "qwen3-vl"])
def test_shared_vision_equals_per_sequence_vision(tiny_models, family, clip):
    """Groups encode each distinct image/video once: same log-probs, entropies and gradients as per sequence."""
    cfg, model, processor = tiny_models[family]
    image, two_images, video, text = _mixed_prompts(tiny_models[family], clip)
    single = encode_prompt(processor, _user({"type": "image", "image": _image(90, 60, 5)}, _text("Shape?")), cfg,
                           max_prompt_tokens=BUDGET)  # fmt: skip
    seqs = [image, two_images, image, video, single, two_images, text, image, video, text]  # groups + singles
    rng = np.random.default_rng(0)
    completions = [rng.integers(10, 300, int(rng.integers(1, 8))).tolist() for _ in seqs]
    batch = collate(seqs, completions, pad_id=0)
    distinct = [image, two_images, video, single]  # with media, in first-appearance order
    images = [p for p in distinct if "image_grid_thw" in p.vision]
    assert torch.equal(batch["unique_pixel_values"], torch.cat([p.vision["pixel_values"] for p in images]))
    assert torch.equal(batch["unique_image_grid_thw"], torch.cat([p.vision["image_grid_thw"] for p in images]))
    assert batch["unique_image_index"].tolist() == [0, 1, 2, 0, 3, 1, 2, 0]  # one per row of image_grid_thw
    assert batch["unique_video_index"].tolist() == [0, 0] and batch["unique_video_grid_thw"].shape == (1, 3)
    assert not any(k.startswith("unique_") for k in collate(distinct, completions[:4], pad_id=0))  # no repeats
    assert shares_vision(model)

    rows: list[int] = []  # patch rows of each vision tower call
    hook = model.model.visual.register_forward_pre_hook(lambda _, args: rows.append(int(args[0].shape[0])))
    results = {}
    try:
        for share in (False, True):
            model.zero_grad(set_to_none=True)
            rows.clear()
            logprobs, entropy, mask = completion_logprobs(model, batch, temperature=0.7, with_entropy=True,
                                                          share_vision=share)  # fmt: skip
            (-(logprobs * mask).sum() / mask.sum() - 0.01 * (entropy * mask).sum()).backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            results[share] = (logprobs.detach(), entropy.detach(), grads, sum(rows))
    finally:
        hook.remove()
        model.zero_grad(set_to_none=True)
    (lp, ent, grads, patches), (lp1, ent1, grads1, patches1) = results[False], results[True]
    distinct_patches = sum(p.vision[k].shape[0] for p in distinct for k in ("pixel_values", "pixel_values_videos")
                           if k in p.vision)  # fmt: skip
    assert patches1 == distinct_patches < patches  # each distinct image/video through the vision tower once
    torch.testing.assert_close(lp1, lp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ent1, ent, rtol=1e-5, atol=1e-6)
    assert grads1.keys() == grads.keys() and any(n.startswith("model.visual.") for n in grads)
    for name, g in grads.items():  # the shared features' gradient is the sum over the group
        assert float((grads1[name] - g).norm()) <= 1e-5 * float(g.norm()) + 1e-12, name


def test_suppressed_token_ids_look_through_wrappers(tiny_models):
    _, model, _ = tiny_models["qwen2.5-vl"]
    ids = [model.config.image_token_id, model.config.video_token_id]
    assert suppressed_token_ids(model) == suppressed_token_ids(model.config) == ids

    class Wrapper(torch.nn.Module):  # like DDP: the model under `.module`, no `.config` of its own
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert suppressed_token_ids(Wrapper(model)) == ids and unwrap_model(Wrapper(model)) is model
    with pytest.raises(TypeError, match="no `config`"):
        suppressed_token_ids(torch.nn.Linear(2, 2))  # [] would shift every log-prob silently


# --------------------------------------------------------------------------------------------------
# HF engine


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_engine_logprobs_match_trainer(tiny_models, family, clip):
    """R6 parity: the engine's reported log-probs are the trainer's (temperature 1 and 0.7, no top-p/k)."""
    _, model, processor = tiny_models[family]
    prompts = _mixed_prompts(tiny_models[family], clip)
    engine = HFEngine(model, processor, batch_size=5)  # 12 sequences -> batches of 5, 5, 2
    for temperature in (1.0, 0.7):
        out = engine.generate(prompts, 3, SamplingParams(max_new_tokens=10, temperature=temperature, seed=3))
        flat = [c for group in out for c in group]
        with torch.no_grad():
            batch = collate([p for p in prompts for _ in range(3)], [c.token_ids for c in flat], engine.pad_id)
            trainer, _, mask = completion_logprobs(model, batch, temperature=temperature)
        assert logprob_agreement([c.logprobs for c in flat], trainer, mask) < 1e-4
        for k, c in enumerate(flat):
            torch.testing.assert_close(torch.tensor(c.logprobs), trainer[k, : len(c.token_ids)], atol=1e-4, rtol=0)


def test_filtered_sampling_reports_renormalised_logprobs(tiny_models, clip):
    """With top-k / top-p the engine reports log-probs under the filtered, renormalised distribution."""
    _, model, processor = tiny_models["qwen2.5-vl"]
    prompts = _mixed_prompts(tiny_models["qwen2.5-vl"], clip)[:2]
    engine = HFEngine(model, processor)
    for sampling in (SamplingParams(max_new_tokens=6, top_k=3, seed=0), SamplingParams(max_new_tokens=6, top_p=0.5)):
        flat = [c for group in engine.generate(prompts, 2, sampling) for c in group]
        with torch.no_grad():
            batch = collate([p for p in prompts for _ in range(2)], [c.token_ids for c in flat], engine.pad_id)
            trainer, _, mask = completion_logprobs(model, batch)
        engine_lp = torch.zeros_like(trainer)
        for k, c in enumerate(flat):
            engine_lp[k, : len(c.logprobs)] = torch.tensor(c.logprobs)
        assert (engine_lp[mask] >= trainer[mask] - 1e-5).all() and (engine_lp[mask] > trainer[mask] + 1e-3).any()
        if sampling.top_k == 3:  # exact: log-softmax over the 3 best logits of the full distribution
            for k, c in enumerate(flat):
                p = prompts[k // 2]
                ids = torch.cat([p.input_ids, torch.tensor(c.token_ids)])[None]
                vision = {key: v for key, v in p.vision.items() if key != "mm_token_type_ids"}
                types = torch.cat([p.vision["mm_token_type_ids"], torch.zeros(len(c.token_ids), dtype=torch.long)])
                with torch.no_grad():
                    logits = model(input_ids=ids, mm_token_type_ids=types[None], **vision).logits[0, len(p) - 1 : -1]
                top = logits.float().topk(3, dim=-1)
                assert (top.indices == torch.tensor(c.token_ids)[:, None]).any(-1).all()  # sampled inside the top 3
                kept = torch.log_softmax(top.values, -1)[top.indices == torch.tensor(c.token_ids)[:, None]]
                torch.testing.assert_close(torch.tensor(c.logprobs), kept, atol=1e-4, rtol=0)


def test_engine_structure_and_determinism(tiny_models, clip):
    _, model, processor = tiny_models["qwen2.5-vl"]
    prompts = _mixed_prompts(tiny_models["qwen2.5-vl"], clip)
    engine = HFEngine(model, processor, batch_size=4)
    state = torch.random.get_rng_state()
    out = engine.generate(prompts, 2, SamplingParams(max_new_tokens=6, seed=11))
    assert torch.equal(torch.random.get_rng_state(), state)  # caller's RNG untouched
    assert len(out) == 4 and all(len(group) == 2 for group in out)
    placeholders = {processor.image_token_id, processor.video_token_id}
    for group in out:
        for c in group:
            assert 1 <= len(c.token_ids) == len(c.logprobs) <= 6 and isinstance(c.text, str)
            assert all(lp <= 0 for lp in c.logprobs) and not placeholders & set(c.token_ids)
            if c.finish_reason == "length":
                assert len(c.token_ids) == 6 and c.token_ids[-1] not in engine.eos_ids
            else:
                assert c.token_ids[-1] in engine.eos_ids
            assert c.text == processor.tokenizer.decode(c.token_ids, skip_special_tokens=True)
    assert any(c.finish_reason == "length" for group in out for c in group)
    again = engine.generate(prompts, 2, SamplingParams(max_new_tokens=6, seed=11))
    assert [[c.token_ids for c in g] for g in again] == [[c.token_ids for c in g] for g in out]
    other = engine.generate(prompts, 2, SamplingParams(max_new_tokens=6, seed=12))
    assert [[c.token_ids for c in g] for g in other] != [[c.token_ids for c in g] for g in out]
    assert out[0][0].token_ids != out[0][1].token_ids  # samples of one prompt differ
    # seed=None draws from the engine's own generator: a fresh engine with the same seed repeats it
    unseeded = [HFEngine(model, processor, seed=5).generate(prompts[:1], 2, SamplingParams(max_new_tokens=4))
                for _ in range(2)]  # fmt: skip
    assert [c.token_ids for c in unseeded[0][0]] == [c.token_ids for c in unseeded[1][0]]


def test_completion_cut_at_stop_token(tiny_models):
    _, model, processor = tiny_models["qwen2.5-vl"]
    engine = HFEngine(model, processor)
    eos, pad = engine.eos_ids[0], engine.pad_id
    stopped = engine._completion([5, 6, eos, pad, pad], [-1.0, -2.0, -3.0, 0.0, 0.0])
    assert stopped.token_ids == [5, 6, eos] and stopped.logprobs == [-1.0, -2.0, -3.0]
    assert stopped.finish_reason == "stop" and "<|im_end|>" not in stopped.text
    assert engine._completion([5, 6, 7], [-1.0] * 3).finish_reason == "length"


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_greedy_alone_equals_in_padded_batch(tiny_models, family, clip):
    """Left padding + M-RoPE: a prompt's greedy completion does not depend on its batch-mates."""
    _, model, processor = tiny_models[family]
    prompts = _mixed_prompts(tiny_models[family], clip)
    engine = HFEngine(model, processor)
    greedy = SamplingParams(max_new_tokens=8, temperature=0)
    batched = engine.generate(prompts, 1, greedy)
    for prompt, group in zip(prompts, batched):
        alone = engine.generate([prompt], 1, greedy)[0][0]
        assert alone.token_ids == group[0].token_ids
        np.testing.assert_allclose(alone.logprobs, group[0].logprobs, atol=1e-4)


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_shared_prefill_equals_plain_generate(tiny_models, family, clip, monkeypatch):
    """A group's prompt is prefilled once and its cache repeated: same samples as one prefill per sequence."""
    _, model, processor = tiny_models[family]
    prompts = _mixed_prompts(tiny_models[family], clip)
    engine = HFEngine(model, processor, batch_size=7)  # 4 x 3 sequences: a group split over two batches
    sampling = SamplingParams(max_new_tokens=8, seed=5)
    prefills = []
    real = engine._shared_prefill
    monkeypatch.setattr(engine, "_shared_prefill", lambda *a: prefills.append(len(a[0])) or real(*a))
    shared = engine.generate(prompts, 3, sampling)
    assert prefills == [7, 5]
    monkeypatch.setattr(engine, "_can_share_prefill", lambda prompts: False)
    plain = engine.generate(prompts, 3, sampling)
    for group, plain_group in zip(shared, plain):
        for c, ref in zip(group, plain_group):  # the same random draws from (numerically) the same distribution
            assert c.token_ids == ref.token_ids
            np.testing.assert_allclose(c.logprobs, ref.logprobs, atol=1e-5)
    monkeypatch.undo()
    greedy = SamplingParams(max_new_tokens=8, temperature=0)
    for prompt, group in zip(prompts, engine.generate(prompts, 3, greedy)):
        alone = engine.generate([prompt], 1, greedy)[0][0]  # no repeat: plain prefill
        assert all(c.token_ids == alone.token_ids for c in group)


def test_min_new_tokens(tiny_models, clip):
    """No stop token before min_new_tokens: stop tokens are masked (and left out of the reported log-probs)."""
    cfg, model, processor = tiny_models["qwen2.5-vl"]
    prompts = _mixed_prompts(tiny_models["qwen2.5-vl"], clip)[:2]
    engine = HFEngine(model, processor)
    engine.eos_ids = list(range(0, model.config.text_config.vocab_size, 2))  # half the vocabulary stops
    free = [c for g in engine.generate(prompts, 4, SamplingParams(max_new_tokens=6, seed=1)) for c in g]
    assert any(len(c.token_ids) < 3 for c in free)
    forced = [c for g in engine.generate(prompts, 4, SamplingParams(max_new_tokens=6, min_new_tokens=3, seed=1))
              for c in g]  # fmt: skip
    assert all(len(c.token_ids) >= 3 and not set(c.token_ids[:3]) & set(engine.eos_ids) for c in forced)
    assert any(c.finish_reason == "stop" for c in forced)
    with torch.no_grad():
        batch = collate([p for p in prompts for _ in range(4)], [c.token_ids for c in forced], engine.pad_id)
        trainer, _, _ = completion_logprobs(model, batch)
    for k, c in enumerate(forced):
        lp = torch.tensor(c.logprobs)
        assert (lp[:3] > trainer[k, :3] + 1e-3).all()  # renormalised without the stop tokens
        torch.testing.assert_close(lp[3:], trainer[k, 3 : len(c.token_ids)], atol=1e-4, rtol=0)
    exact = engine.generate(prompts, 2, SamplingParams(max_new_tokens=5, min_new_tokens=5, seed=2))
    assert all(len(c.token_ids) == 5 and c.finish_reason == "length" for g in exact for c in g)
    with pytest.raises(ValueError, match="min_new_tokens"):
        engine.generate(prompts, 1, SamplingParams(min_new_tokens=-1))


def test_producer_passes_min_new_tokens(tiny_models):
    from mmrl.config import RunConfig
    from mmrl.producers import TaskProducer

    cfg_model, model, processor = tiny_models["qwen2.5-vl"]
    cfg = RunConfig(model=cfg_model, rollout=RolloutConfig(n=2, max_new_tokens=4, min_new_tokens=4))
    cfg.data.prompts_per_step = 2
    engine = HFEngine(model, processor)
    engine.eos_ids = list(range(0, model.config.text_config.vocab_size, 2))
    seen = []
    generate = engine.generate
    engine.generate = lambda prompts, n, sampling: seen.append(sampling) or generate(prompts, n, sampling)
    rollouts, _ = TaskProducer(cfg, processor).produce(engine, 0)
    assert [s.min_new_tokens for s in seen] == [4]
    assert len(rollouts) == 4 and all(len(r.completion.token_ids) == 4 for r in rollouts)


def test_video_prompt_generation(tiny_models, clip):
    cfg, model, processor = tiny_models["qwen3-vl"]
    prompt = encode_prompt(processor, _user({"type": "video", "video": str(clip)}, _text("What moves?")), cfg,
                           max_prompt_tokens=BUDGET)  # fmt: skip
    engine = make_engine(RolloutConfig(engine="hf", batch_size=2), model, processor)
    out = engine.generate([prompt], 3, sampling_params(RolloutConfig(max_new_tokens=5), seed=0))
    assert len(out[0]) == 3 and all(1 <= len(c.token_ids) <= 5 for c in out[0])
    engine.sync_weights(model)
    assert engine.model is model  # same object: nothing copied


def test_sync_weights_adopts_another_model(tiny_models):
    _, model, processor = tiny_models["qwen2.5-vl"]
    _, other, _ = tiny_models["qwen2-vl"]
    engine = HFEngine(model, processor)
    engine.sync_weights(other)
    assert engine.model is other


def test_logprob_agreement():
    trainer = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert logprob_agreement([[-1.0, -2.5], [-0.4]], trainer, mask) == pytest.approx(0.2)
    assert logprob_agreement(trainer + 0.1 * mask, trainer, mask) == pytest.approx(0.1)
    assert logprob_agreement(trainer, trainer, torch.zeros_like(mask)) == 0.0


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM installed")
def test_vllm_engine_needs_vllm(tiny_models):
    _, model, processor = tiny_models["qwen2.5-vl"]
    with pytest.raises(MMRLError, match=r"pip install mmrl\[vllm\]"):
        make_engine(RolloutConfig(engine="vllm"), model, processor)


def test_vllm_requests_carry_text_and_raw_media(tiny_models, clip):
    """What the vLLM engine sends (checked without vLLM): templated text + the media we decoded."""
    from mmrl.rollout.vllm import vllm_request

    for family in ("qwen2.5-vl", "qwen3-vl"):
        image, _, _, text = _mixed_prompts(tiny_models[family], clip)
        request = vllm_request(image)
        assert request["prompt"] == image.text and "<|image_pad|>" in request["prompt"]
        assert request["multi_modal_data"]["image"][0] is image.media["image"][0]
        request = vllm_request(text)
        assert request == {"prompt": text.text}
        # every family's videos go as (frames, metadata): Qwen3-VL timestamps, Qwen2.5-VL second_per_grid_ts
        video = _mixed_prompts(tiny_models[family], clip)[2]
        frames, meta = vllm_request(video)["multi_modal_data"]["video"][0]
        assert frames.shape == (6, 48, 64, 3) and meta["frames_indices"] == [0, 4, 8, 12, 16, 20]
        assert meta["do_sample_frames"] is False and meta["fps"] == pytest.approx(8.0)
    cfg, _, processor = tiny_models["qwen2.5-vl"]
    lean = encode_prompt(processor, _user({"type": "image", "image": _image(64, 64)}), cfg, max_prompt_tokens=BUDGET,
                         keep_media=False)  # fmt: skip
    with pytest.raises(MMRLError, match="keep_media=True"):
        vllm_request(lean)


def test_vllm_model_folder_uses_our_processor(tiny_models, tmp_path):
    """vLLM starts from the checkpoint's files plus OUR processor settings; the checkpoint is untouched."""
    import json

    from mmrl.rollout.vllm import _model_folder

    cfg, _, processor = tiny_models["qwen2.5-vl"]
    source = Path(cfg.path)
    before = {f.name: f.read_bytes() for f in source.iterdir() if f.is_file()}
    processor.image_processor.size = {"shortest_edge": 4 * 28 * 28, "longest_edge": 32 * 28 * 28}
    try:
        folder = _model_folder(str(source), processor)
        root = Path(folder.name)
        assert (root / "model.safetensors").is_symlink() and (root / "config.json").is_symlink()
        saved = json.loads((root / "processor_config.json").read_text())
        assert saved["image_processor"]["size"]["longest_edge"] == 32 * 28 * 28
        assert not (root / "processor_config.json").is_symlink()
    finally:
        processor.image_processor.size = {"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels}
    assert {f.name: f.read_bytes() for f in source.iterdir() if f.is_file()} == before
    folder.cleanup()
