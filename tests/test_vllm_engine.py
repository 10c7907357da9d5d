"""vLLM engine on a tiny Qwen-VL model: its log-probs agree with the trainer's, weight sync is seen (R6 in
docs/requirements.md).

Needs vLLM and a CUDA GPU; skipped elsewhere. Tolerances are for bfloat16 (vLLM's and the trainer's
kernels differ), far below the jump a stale engine produces.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("vllm")
if not torch.cuda.is_available():
    pytest.skip("vLLM engine tests need a CUDA GPU", allow_module_level=True)

from mmrl.config import ModelConfig, RolloutConfig  # noqa: E402
from mmrl.contracts import SamplingParams  # noqa: E402
from mmrl.models import load_policy  # noqa: E402
from mmrl.rollout import collate, completion_logprobs, encode_prompt, logprob_agreement, make_engine  # noqa: E402
from mmrl.rollout.vllm import VLLMEngine  # noqa: E402
from mmrl.tiny import TinySpec, build_tiny  # noqa: E402

# head_dim 64: vLLM's attention kernels do not take the default tiny head_dim of 16.
SPEC = TinySpec(hidden_size=128, num_heads=2, num_kv_heads=1, intermediate_size=256)


def _image(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module", params=["qwen2.5-vl", "qwen3-vl"])
def setup(request, tmp_path_factory):
    family = request.param
    cfg = ModelConfig(path=str(build_tiny(family, tmp_path_factory.mktemp("vllm") / family, spec=SPEC)))
    model, processor = load_policy(cfg, device="cuda")
    rollout = RolloutConfig(engine="vllm", max_prompt_tokens=1024, max_new_tokens=16, vllm_gpu_memory_utilization=0.3)
    engine = make_engine(rollout, model, processor)
    assert isinstance(engine, VLLMEngine) and engine.last_sync["ok"]
    frames = [_image(64, 48, 10 + i) for i in range(4)]
    messages = [
        [{"role": "user", "content": [{"type": "image", "image": _image(96, 64, 1)}, {"type": "text", "text": "Hi"}]}],
        [{"role": "user", "content": [{"type": "video", "video": frames, "fps": 2.0}, {"type": "text", "text": "Go"}]}],
        [{"role": "user", "content": "Only text."}],
    ]
    prompts = [encode_prompt(processor, m, cfg, max_prompt_tokens=1024) for m in messages]
    return model, engine, prompts


def _agreement(model, engine, prompts, temperature: float) -> float:
    out = engine.generate(prompts, 2, SamplingParams(max_new_tokens=16, temperature=temperature, seed=0))
    flat = [c for group in out for c in group]
    pad = engine.tokenizer.pad_token_id
    with torch.no_grad():
        batch = collate([p for p in prompts for _ in range(2)], [c.token_ids for c in flat], pad)
        trainer, _, mask = completion_logprobs(model, batch, temperature=temperature)
    return logprob_agreement([c.logprobs for c in flat], trainer, mask)


def test_engine_logprobs_agree_with_trainer(setup):
    model, engine, prompts = setup
    for temperature in (1.0, 0.7):
        assert _agreement(model, engine, prompts, temperature) < 0.02


def test_weight_sync_is_seen(setup):
    model, engine, prompts = setup
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    stale = _agreement(model, engine, prompts, 1.0)
    engine.sync_weights(model)
    assert engine.last_sync["ok"]
    fresh = _agreement(model, engine, prompts, 1.0)
    assert fresh < 0.02 < stale
