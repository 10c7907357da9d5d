"""Memory options of the trainer's forward for long videos (docs/video_memory.md), on real tiny Qwen-VL models:
chunked vision encoding equals one call, vision checkpointing keeps fewer activations and changes no number,
and `collate` no longer repeats a group's pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmrl.config import ModelConfig
from mmrl.rollout import batch_vision, collate, completion_logprobs, encode_prompt
from mmrl.rollout.forward import encode_vision, repeated_pixels
from mmrl.tiny import build_tiny

FAMILIES = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl")


def _video_prompt(tiny, frames: int, seed: int, size: int = 56):
    cfg, _, processor = tiny
    clip = np.random.default_rng(seed).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [{"type": "video", "video": list(clip), "fps": 2.0},
                                             {"type": "text", "text": "What moves?"}]}]  # fmt: skip
    return encode_prompt(processor, messages, cfg, max_prompt_tokens=4096)


def _image_prompt(tiny, seed: int):
    cfg, _, processor = tiny
    image = np.random.default_rng(seed).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "Hi"}]}]
    return encode_prompt(processor, messages, cfg, max_prompt_tokens=4096)


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_vision_equals_one_call(tiny_models, family):
    """Chunks of 2, 3 (rounded up to whole temporal patches) and 6 frames give one call's features."""
    _, model, _ = tiny_models[family]
    videos = [_video_prompt(tiny_models[family], 10, 1), _video_prompt(tiny_models[family], 4, 2, size=84)]
    pixels = torch.cat([p.vision["pixel_values_videos"] for p in videos])
    grids = torch.cat([p.vision["video_grid_thw"] for p in videos])
    calls: list[int] = []
    hook = model.model.visual.register_forward_pre_hook(lambda _, args: calls.append(int(args[0].shape[0])))
    try:
        with torch.no_grad():
            whole, whole_deep, kind = encode_vision(model, "video", pixels, grids)
            assert len(calls) == 1 and len(whole) == 2
            for chunk in (2, 3, 6):
                calls.clear()
                parts, deep, kind_c = encode_vision(model, "video", pixels, grids, chunk_frames=chunk)
                per_call = 2 * -(-chunk // 2)  # frames per call, whole temporal patches of 2
                expected = [-(-10 // per_call), -(-4 // per_call)]  # calls per video
                assert len(calls) == sum(expected) and kind_c is kind
                for a, b in zip(parts, whole):
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
                assert (deep is None) == (whole_deep is None) == (family != "qwen3-vl")
                for layer_a, layer_b in zip(deep or [], whole_deep or []):
                    for a, b in zip(layer_a, layer_b):
                        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    finally:
        hook.remove()


def test_collate_keeps_one_copy_of_a_groups_pixels(tiny_models):
    tiny = tiny_models["qwen2.5-vl"]
    video, image = _video_prompt(tiny, 6, 3), _image_prompt(tiny, 4)
    seqs = [video, video, video, image, image]
    batch = collate(seqs, [[5, 6]] * 5, pad_id=0)
    assert "pixel_values_videos" not in batch and "pixel_values" not in batch  # only the unique copies
    assert batch["video_grid_thw"].shape[0] == 3 and batch["image_grid_thw"].shape[0] == 2  # grids per sequence
    rebuilt = repeated_pixels(batch)
    expected = batch_vision(seqs)
    assert torch.equal(rebuilt["pixel_values_videos"], expected["pixel_values_videos"])
    assert torch.equal(rebuilt["pixel_values"], expected["pixel_values"])


def _step(model, batch, **options):
    model.zero_grad(set_to_none=True)
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logprobs, entropy, mask = completion_logprobs(model, batch, temperature=0.7, with_entropy=True, **options)
    (-(logprobs * mask).sum() / mask.sum() - 0.01 * (entropy * mask).sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return logprobs.detach(), grads, saved[0]


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen3-vl"])
def test_vision_checkpointing_saves_activations_and_changes_nothing(tiny_models, family):
    """Same log-probs and gradients with chunks + checkpointing, for a group and for distinct prompts; the
    forward keeps fewer bytes for the backward."""
    tiny = tiny_models[family]
    _, model, _ = tiny
    video, other = _video_prompt(tiny, 8, 5), _video_prompt(tiny, 6, 6)
    rng = np.random.default_rng(0)
    for seqs in ([video, video, video, other, other], [video, other]):
        completions = [rng.integers(10, 300, 4).tolist() for _ in seqs]
        batch = collate(seqs, completions, pad_id=0)
        lp, grads, saved = _step(model, batch)
        lp_c, grads_c, saved_c = _step(model, batch, vision_chunk_frames=2)
        lp_k, grads_k, saved_k = _step(model, batch, vision_chunk_frames=2, vision_checkpointing=True)
        assert saved_k < saved_c and saved_k < saved
        for other_lp, other_grads in ((lp_c, grads_c), (lp_k, grads_k)):
            torch.testing.assert_close(other_lp, lp, rtol=1e-5, atol=1e-6)
            assert other_grads.keys() == grads.keys() and any(n.startswith("model.visual.") for n in grads)
            for name, g in grads.items():
                assert float((other_grads[name] - g).norm()) <= 1e-5 * float(g.norm()) + 1e-12, name


def test_vision_checkpointing_is_skipped_for_a_frozen_vision_module(tiny_models):
    """Nothing to recompute when no vision parameter trains: the backward runs the tower no second time."""
    tiny = tiny_models["qwen2.5-vl"]
    _, model, _ = tiny
    video = _video_prompt(tiny, 4, 7)
    batch = collate([video, video], [[11, 12], [13, 14]], pad_id=0)
    visual = model.model.visual
    calls = [0]
    hook = visual.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        for frozen, expected_calls in ((False, 2), (True, 1)):
            visual.requires_grad_(not frozen)
            calls[0] = 0
            _step(model, batch, vision_checkpointing=True)
            assert calls[0] == expected_calls  # forward, plus the recomputation only while something trains
    finally:
        hook.remove()
        visual.requires_grad_(True)


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_once_equals_the_full_forward(tiny_models, family):
    """Each distinct prompt through the decoder once, completions on its cache: the same log-probs, entropies and
    gradients as one full forward per sequence (groups of prompts of different lengths, a video, an image, a
    text-only prompt, completions of different lengths, one of length 1)."""
    tiny = tiny_models[family]
    cfg, model, processor = tiny
    text = encode_prompt(processor, [{"role": "user", "content": "Only words here, nothing else."}], cfg,
                         max_prompt_tokens=4096)  # fmt: skip
    video, image = _video_prompt(tiny, 6, 8), _image_prompt(tiny, 9)
    seqs = [video, video, image, text, image, video, text]
    rng = np.random.default_rng(1)
    completions = [rng.integers(10, 300, n).tolist() for n in (5, 1, 3, 4, 6, 2, 3)]
    batch = collate(seqs, completions, pad_id=0)
    assert batch["prompt_group"].tolist() == [0, 0, 1, 2, 1, 0, 2]
    results, shapes = [], []
    layer = model.model.language_model.layers[0]
    hook = layer.register_forward_pre_hook(lambda _, args: shapes.append(tuple(args[0].shape[:2])))
    calls = {False: [(7, batch["input_ids"].shape[1])], True: [(3, int(batch["prompt_lengths"].max())), (7, 5)]}
    for once in (False, True):
        model.zero_grad(set_to_none=True)
        shapes.clear()
        logprobs, entropy, mask = completion_logprobs(
            model, batch, temperature=0.7, with_entropy=True, prompt_once=once
        )
        (-(logprobs * mask).sum() / mask.sum() - 0.01 * (entropy * mask).sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logprobs.detach(), entropy.detach(), grads))
        assert shapes == calls[once]  # 3 prompts, then 7 completions but their last token; or 7 full sequences
    hook.remove()
    model.zero_grad(set_to_none=True)
    (lp, ent, grads), (lp1, ent1, grads1) = results
    torch.testing.assert_close(lp1, lp, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(ent1, ent, rtol=1e-5, atol=2e-6)
    assert grads1.keys() == grads.keys()
    for name, g in grads.items():
        assert float((grads1[name] - g).norm()) <= 1e-5 * float(g.norm()) + 1e-12, name


def test_update_with_every_switch_equals_the_plain_update(tmp_path):
    """One `update_policy` step on fixed video rollouts: the same gradient norm and weights after it with the vision
    switches and `prompt_once` as without them (the trainer hook passes them through)."""
    from mmrl.config import AlgorithmConfig, RolloutConfig, RunConfig, TrainConfig
    from mmrl.contracts import Completion, Rollout
    from mmrl.grpo.trainer import setup_policy, update_policy

    path = str(build_tiny("qwen2.5-vl", tmp_path / "model"))
    clips = [np.random.default_rng(k).integers(0, 256, (6, 56, 56, 3), dtype=np.uint8) for k in range(2)]
    weights, norms = [], []
    for switches in ({}, {"vision_chunk_frames": 2, "vision_checkpointing": True, "prompt_once": True}):
        cfg = RunConfig()
        cfg.model = ModelConfig(path=path, dtype="float32")
        cfg.rollout = RolloutConfig(n=3, max_new_tokens=4)
        cfg.algorithm = AlgorithmConfig(kl_coef=0.0)
        cfg.train = TrainConfig(steps=1, lr=1e-2, micro_batch_size=6, out_dir=str(tmp_path / "run"), **switches)
        policy = setup_policy(cfg, 1)
        content = [[{"type": "video", "video": list(c)}, {"type": "text", "text": "Which way?"}] for c in clips]
        prompts = [encode_prompt(policy.processor, [{"role": "user", "content": c}], cfg.model, max_prompt_tokens=4096)
                   for c in content]  # fmt: skip
        rollouts = [
            Rollout(
                prompt=prompts[i // 3],
                completion=Completion([20 + i, 30, 40 + i][: 1 + i % 3], [0.0] * 3, "", "length"),
                reward=0.0,
                advantage=(-1.0) ** i,
                group_id=str(i // 3),
                sample_id=str(i // 3),
                task="video",
            )
            for i in range(6)
        ]
        metrics = update_policy(policy, rollouts, cfg, 0)
        assert metrics["grad_norm"] > 0
        norms.append(metrics["grad_norm"])
        weights.append({n: p.detach().clone() for n, p in policy.model.named_parameters()})
    for name, w in weights[0].items():
        # AdamW's first step moves each weight by lr * g / (|g| + eps): about lr * sign(g), but a gradient near
        # eps (1e-8: zero in exact arithmetic, e.g. of a key bias under softmax, or nearly so) moves it by a
        # fraction of lr that its rounding noise sets, and that differs between CPUs (one element of 16,384 moved
        # 1.2e-4 apart on an AMD EPYC). A wrong gradient moves most elements by ~lr; allow 10 % of lr.
        torch.testing.assert_close(weights[1][name], w, rtol=0, atol=1e-3, msg=name)
    assert norms[1] == pytest.approx(norms[0], rel=1e-5)
