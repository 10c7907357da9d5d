"""Generation with transformers' `generate`: runs everywhere, samples from the training model itself.

Prompts arrive encoded (`mmrl.rollout.encode`), so the processor never runs here: each prompt's
visual tensors are reused by its n samples. Sequences (prompts x samples) are generated in
LEFT-padded batches of at most `batch_size`; the model derives M-RoPE positions from the attention
mask and `mm_token_type_ids`, so a prompt's completion does not depend on its batch-mates (tested
with greedy decoding).

Shared prefill: when a batch holds several samples of one prompt, the prompt is encoded (vision
tower + language model) once. Each distinct prompt minus its last token is run through the model
with a cache, the cache rows are repeated for the prompt's samples (`Cache.reorder_cache`, the
beam-search row selection), and `generate` continues from that cache with the full left-padded
batch: it runs the last prompt token of every sequence, then samples as usual, with the same random
draws as without the shared prefill. Qwen-VL models keep M-RoPE offsets (`rope_deltas`) from their
last prefill; they are cleared so that `generate` recomputes every sequence's 3D positions from the
full inputs, exactly as in a plain call. Used for the Qwen-VL families (`SHARED_PREFILL_MODEL_TYPES`)
when the batch repeats a prompt and has images or videos; otherwise every sequence is prefilled by
`generate`. (Without image/video grids a Qwen forward numbers left-padded tokens from the first
column, not from each prompt's first token as `generate` does, so text-only batches keep the plain path.)

Reported log-probs are those of the sampled tokens under the distribution actually sampled from:
softmax(logits / temperature) after top-k and top-p filtering (renormalised), with image/video
placeholder tokens suppressed. This is what vLLM reports with `logprobs_mode="processed_logprobs"`,
so both engines mean the same thing. With top_k=0 and top_p=1 it equals
`completion_logprobs(..., temperature=T)`; the trainer recomputes the unfiltered tempered
log-probs for the loss anyway. They are recorded step by step by a logits processor (one (B, V)
float32 tensor at a time) instead of `output_scores`, which would keep (steps, B, V) in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TopKLogitsWarper, TopPLogitsWarper

from mmrl.contracts import Completion, EncodedPrompt, SamplingParams
from mmrl.rollout.forward import SHARED_VISION_MODEL_TYPES, batch_vision, suppressed_token_ids, unwrap_model

if TYPE_CHECKING:
    from transformers import ProcessorMixin

log = logging.getLogger(__name__)

SHARED_PREFILL_MODEL_TYPES = SHARED_VISION_MODEL_TYPES
"""`config.model_type`s whose `generate` derives M-RoPE positions from the full inputs once
`model.model.rope_deltas` is None, so that a batch can start from a shared, repeated prompt cache."""

_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")
_PIXEL_KEYS = ("pixel_values", "pixel_values_videos")


class HFEngine:
    """`Engine` on transformers' `generate`, sampling from the very model object being trained.

    No weights are copied: `sync_weights` with the same model is a no-op, and with another model
    object the engine adopts it. `seed` seeds the engine's own generator, which provides a seed for
    calls whose SamplingParams.seed is None; the caller's global RNG state is never changed.
    """

    def __init__(self, model: torch.nn.Module, processor: ProcessorMixin, *, batch_size: int = 32, seed: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.batch_size = batch_size
        self._seeds = torch.Generator().manual_seed(seed)
        gen = model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
        pad = gen.pad_token_id if gen.pad_token_id is not None else self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.eos_ids[0])

    def generate(self, prompts: list[EncodedPrompt], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        """`n` completions per prompt: result[i][j] is the j-th sample of prompts[i].

        temperature == 0 decodes greedily (log-probs then under the untempered distribution).
        The same `sampling.seed` gives the same completions for the same prompts and batch_size.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if sampling.min_new_tokens < 0:
            raise ValueError(f"min_new_tokens must be >= 0, got {sampling.min_new_tokens}")
        items = [i for i in range(len(prompts)) for _ in range(n)]  # sequence k samples prompts[items[k]]
        seed = sampling.seed
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=self._seeds))
        device = next(self.model.parameters()).device
        flat: list[Completion] = []
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=_cuda_devices(device)):
                torch.manual_seed(seed)
                for start in range(0, len(items), self.batch_size):
                    chunk = [prompts[i] for i in items[start : start + self.batch_size]]
                    flat.extend(self._generate_batch(chunk, sampling, device))
        finally:
            self.model.train(was_training)
        return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]

    def sync_weights(self, model: torch.nn.Module) -> None:
        """The HF engine samples from the training model itself: nothing to copy.

        Given a different model object (e.g. a reloaded checkpoint), the engine adopts it.
        """
        if model is not self.model:
            log.info("HF engine: adopting a new model object for generation")
            self.model = model

    def _generate_batch(
        self, prompts: Sequence[EncodedPrompt], sampling: SamplingParams, device: torch.device
    ) -> list[Completion]:
        inputs = _left_pad(prompts, self.pad_id)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        prompt_len = inputs["input_ids"].shape[1]
        greedy = sampling.temperature == 0
        recorder = _LogprobRecorder(sampling)
        kwargs = dict(
            max_new_tokens=sampling.max_new_tokens,
            min_new_tokens=sampling.min_new_tokens,
            do_sample=not greedy,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            suppress_tokens=suppressed_token_ids(self.model),
            repetition_penalty=1.0,  # checkpoints' generation_config may set one: it would bias the log-probs
            logits_processor=LogitsProcessorList([recorder]),
            return_dict_in_generate=True,
            use_cache=True,
        )
        if not greedy:  # explicit values override a checkpoint's generation_config (Qwen ships top_k=1)
            kwargs.update(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
        if self._can_share_prefill(prompts):
            inputs = self._shared_prefill(prompts, inputs, device)
        out = self.model.generate(**inputs, **kwargs)
        new = out.sequences[:, prompt_len:]  # (B, S)
        logprobs = recorder.finish(new)  # (B, S)
        return [self._completion(new[b].tolist(), logprobs[b].tolist()) for b in range(new.shape[0])]

    def _can_share_prefill(self, prompts: Sequence[EncodedPrompt]) -> bool:
        """Whether `_shared_prefill` applies to this batch (see the module docstring)."""
        if len({id(p) for p in prompts}) == len(prompts) or min(len(p) for p in prompts) < 2:
            return False
        if not any("image_grid_thw" in p.vision or "video_grid_thw" in p.vision for p in prompts):
            return False
        inner = unwrap_model(self.model)
        return (
            getattr(inner.config, "model_type", None) in SHARED_PREFILL_MODEL_TYPES
            and hasattr(getattr(inner, "model", None), "rope_deltas")
            and getattr(inner.generation_config, "cache_implementation", None) is None
        )

    @torch.no_grad()
    def _shared_prefill(
        self, prompts: Sequence[EncodedPrompt], inputs: dict[str, torch.Tensor], device: torch.device
    ) -> dict[str, object]:
        """`generate` inputs for `prompts` that start from a cache prefilled once per distinct prompt.

        The distinct prompts are left-padded to the batch's length T and run without their last
        token; row k of the batch then takes the cache row of its prompt. `generate` gets the full
        (B, T) tokens and mask (it runs only the uncached last column), the grids for M-RoPE, and no
        pixels: the images and videos are already in the cache.
        """
        rows: dict[int, int] = {}  # id(prompt) -> its row among the distinct prompts (first-appearance order)
        distinct: list[EncodedPrompt] = []
        for p in prompts:
            if id(p) not in rows:
                rows[id(p)] = len(distinct)
                distinct.append(p)
        head = {k: v.to(device) for k, v in _left_pad(distinct, self.pad_id).items()}
        if head["input_ids"].shape[1] != inputs["input_ids"].shape[1]:
            raise AssertionError("distinct prompts padded to another length than their batch")
        head = {k: v[:, :-1] if k in _TOKEN_KEYS else v for k, v in head.items()}
        cache = self.model(**head, use_cache=True, logits_to_keep=1).cache
        cache.reorder_cache(torch.tensor([rows[id(p)] for p in prompts], dtype=torch.long, device=device))
        unwrap_model(self.model).model.rope_deltas = None  # stale (distinct rows): generate recomputes them
        return {**{k: v for k, v in inputs.items() if k not in _PIXEL_KEYS}, "cache": cache}

    def _completion(self, tokens: list[int], logprobs: list[float]) -> Completion:
        """Cut at the first stop token (kept); no stop token means the length limit was hit."""
        stops = [k for k, t in enumerate(tokens) if t in self.eos_ids]
        end = stops[0] + 1 if stops else len(tokens)
        ids = tokens[:end]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return Completion(ids, logprobs[:end], text, "stop" if stops else "length")


class _LogprobRecorder(LogitsProcessor):
    """Records log p(sampled token) step by step, under the distribution `generate` samples from.

    Custom logits processors run after the default ones (here: placeholder suppression) and before
    the sampling warpers, so we apply temperature, top-k and top-p ourselves with transformers' own
    warpers, in generate's order. The token sampled at step t is only known at step t+1 (last
    column of `input_ids`), so we keep one step's (B, V) log-probs; `finish` reads the last token.
    """

    def __init__(self, sampling: SamplingParams):
        self.temperature = sampling.temperature if sampling.temperature > 0 else 1.0
        self.warpers = []
        if sampling.temperature > 0 and sampling.top_k > 0:
            self.warpers.append(TopKLogitsWarper(top_k=sampling.top_k))
        if sampling.temperature > 0 and sampling.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p=sampling.top_p))
        self.previous: torch.Tensor | None = None  # (B, V) log-probs of the last step
        self.steps: list[torch.Tensor] = []  # each (B,)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.previous is not None:
            self.steps.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        x = scores.float() / self.temperature
        for warp in self.warpers:
            x = warp(input_ids, x)
        self.previous = torch.log_softmax(x, dim=-1)
        return scores  # observe only: sampling is generate's business

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """(B, S) log-probs of the generated tokens (values past a stop token are meaningless)."""
        if self.previous is not None:
            self.steps.append(self.previous.gather(1, new_tokens[:, -1:]).squeeze(1))
        if len(self.steps) != new_tokens.shape[1]:
            raise AssertionError(f"recorded {len(self.steps)} steps for {new_tokens.shape[1]} generated tokens")
        return torch.stack(self.steps, dim=1).cpu()


def _cuda_devices(device: torch.device) -> list[int]:
    """CUDA devices whose RNG `fork_rng` must save and restore (none on CPU)."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _left_pad(prompts: Sequence[EncodedPrompt], pad_id: int) -> dict[str, torch.Tensor]:
    """LEFT-padded generation inputs: input_ids, attention_mask (B, T), mm_token_type_ids, visual tensors."""
    B, T = len(prompts), max(len(p) for p in prompts)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(B, T, dtype=torch.long)
    mm_types = torch.zeros(B, T, dtype=torch.long)
    for i, p in enumerate(prompts):
        input_ids[i, T - len(p) :] = p.input_ids
        attention_mask[i, T - len(p) :] = 1
        if "mm_token_type_ids" in p.vision:
            mm_types[i, T - len(p) :] = p.vision["mm_token_type_ids"]
    out = {"input_ids": input_ids, "attention_mask": attention_mask, **batch_vision(list(prompts))}
    if any("mm_token_type_ids" in p.vision for p in prompts):
        out["mm_token_type_ids"] = mm_types
    return out


def logprob_agreement(
    engine_logprobs: torch.Tensor | Sequence[Sequence[float]], trainer_logprobs: torch.Tensor, mask: torch.Tensor
) -> float:
    """Mean |logp_engine - logp_trainer| over completion tokens (R6: stale weights make it jump).

    `engine_logprobs` is (B, Lc) aligned like `completion_logprobs`' output, or the per-completion
    lists of `Completion.logprobs` (padded here). Returns 0.0 when the mask selects no token.
    """
    trainer = trainer_logprobs.detach().float().cpu()
    m = mask.detach().cpu().bool()
    if not isinstance(engine_logprobs, torch.Tensor):
        engine = torch.zeros_like(trainer)
        for i, row in enumerate(engine_logprobs):
            k = min(len(row), engine.shape[1])
            engine[i, :k] = torch.as_tensor(list(row)[:k], dtype=torch.float32)
    else:
        engine = engine_logprobs.detach().float().cpu()
    if int(m.sum()) == 0:
        return 0.0
    return float((engine - trainer).abs()[m].mean())
