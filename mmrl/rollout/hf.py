"""The HF engine: samples from the training model itself with transformers, everywhere.

Prompts arrive encoded (`mmrl.rollout.encode`), so the processor never runs here: each prompt's
visual tensors are reused by its n samples. Sequences (prompts x samples) are generated in
LEFT-padded batches of at most `batch_size`; the model derives M-RoPE positions from the attention
mask and `mm_token_type_ids`, so a prompt's completion does not depend on its batch-mates.

Two decode loops (`HFEngine(decode=...)`, `rollout.decode`): transformers' `generate`, or the
static-cache loop of `mmrl.rollout.decode.StaticDecoder` (one prefill per distinct prompt, then a
one-token step over a `StaticCache`, compiled with CUDA graphs on CUDA; the default on CUDA).
Both draw tokens with per-sequence keys (Gumbel-max with counter-based noise, `mmrl.rollout.decode`):
sequence k's key comes from the call's seed, its prompt's content and its sample index, so its
tokens do not depend on its batch-mates, its row or the batch size, and the two loops draw the same
tokens from the same logits (tested). In `generate` the draw happens in a logits processor
(`_SeededSampler`) that hands generate's greedy argmax a one-hot score.

Shared prefill: when a batch holds several samples of one prompt, the prompt is encoded (vision
tower + language model) once. Each distinct prompt minus its last token is run through the model
with a cache, the cache rows are repeated for the prompt's samples (`Cache.reorder_cache`, the
beam-search row selection), and `generate` continues from that cache with the full left-padded
batch: it runs the last prompt token of every sequence, then samples as usual, with the same draws
as without the shared prefill. Qwen-VL models keep M-RoPE offsets (`rope_deltas`) from their
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
log-probs for the loss anyway. They are recorded step by step (one (B,) tensor per step) instead
of `output_scores`, which would keep (steps, B, V) in memory.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from mmrl.contracts import Completion, EncodedPrompt, SamplingParams
from mmrl.rollout.decode import (
    StaticDecoder,
    TokenChooser,
    cache_length,
    kv_bytes_per_sequence,
    sequence_keys,
    sequences_that_fit,
)
from mmrl.rollout.forward import SHARED_VISION_MODEL_TYPES, batch_vision, suppressed_token_ids, unwrap_model

if TYPE_CHECKING:
    from transformers import ProcessorMixin

log = logging.getLogger(__name__)

SHARED_PREFILL_MODEL_TYPES = SHARED_VISION_MODEL_TYPES
"""`config.model_type`s whose `generate` derives M-RoPE positions from the full inputs once
`model.model.rope_deltas` is None, so that a batch can start from a shared, repeated prompt cache."""

_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")
_PIXEL_KEYS = ("pixel_values", "pixel_values_videos")


DECODE_MODES = ("auto", "generate", "static")


class HFEngine:
    """`Engine` on transformers, sampling from the very model object being trained.

    No weights are copied: `sync_weights` with the same model is a no-op, and with another model
    object the engine adopts it. `seed` seeds the engine's own generator, which provides a seed for
    calls whose SamplingParams.seed is None; the caller's global RNG state is never changed.

    `decode` picks the decode loop: `generate` (transformers' `generate`), `static` (`StaticDecoder`:
    a static KV cache and our own one-token step, compiled with CUDA graphs on CUDA) or `auto`
    (static on CUDA for the Qwen-VL families with sdpa/eager attention and unsharded weights, generate
    otherwise). Both
    loops sample with per-sequence keys (`mmrl.rollout.decode`), so a sequence's completion does not
    depend on its batch-mates or the batch size, and the two loops draw the same tokens from the
    same logits. On CUDA both size their batches to free memory (at most `batch_size`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        processor: ProcessorMixin,
        *,
        batch_size: int = 32,
        seed: int = 0,
        decode: str = "generate",
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if decode not in DECODE_MODES:
            raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, got '{decode}'")
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.batch_size = batch_size
        self.decode = decode
        self._seeds = torch.Generator().manual_seed(seed)
        gen = model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_ids = [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
        pad = gen.pad_token_id if gen.pad_token_id is not None else self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.eos_ids[0])
        self._decoder: StaticDecoder | None = None
        self._choosers: dict[tuple, TokenChooser] = {}
        self.last_batch_sizes: list[int] = []  # sequences per decode batch of the last call (for logs and tests)
        if decode == "static" and not self._static_supported():
            raise ValueError(
                f"decode='static' needs a Qwen-VL model ({', '.join(SHARED_PREFILL_MODEL_TYPES)}) with full-attention "
                "text layers and sdpa or eager attention; use decode='generate' for this model"
            )

    def generate(self, prompts: list[EncodedPrompt], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        """`n` completions per prompt: result[i][j] is the j-th sample of prompts[i].

        temperature == 0 decodes greedily (log-probs then under the untempered distribution).
        The same `sampling.seed` gives the same completions for the same prompts, whatever the
        batch size or the other prompts of the call (per-sequence keys, `decode.sequence_keys`).
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if sampling.min_new_tokens < 0:
            raise ValueError(f"min_new_tokens must be >= 0, got {sampling.min_new_tokens}")
        if not prompts:
            return []
        items = [i for i in range(len(prompts)) for _ in range(n)]  # sequence k samples prompts[items[k]]
        seed = sampling.seed
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=self._seeds))
        device = next(self.model.parameters()).device
        keys = sequence_keys(prompts, n, seed, sampling.prompt_seeds).to(device)
        static = self.uses_static(device)
        per_call = self._sequences_per_call(prompts, sampling, device)
        flat: list[Completion] = []
        self.last_batch_sizes = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(items), per_call):
                chunk = [prompts[i] for i in items[start : start + per_call]]
                chunk_keys = keys[start : start + per_call]
                self.last_batch_sizes.append(len(chunk))
                run = self._static_batch if static else self._generate_batch
                flat.extend(run(chunk, chunk_keys, sampling, device))
        finally:
            self.model.train(was_training)
        return [flat[i * n : (i + 1) * n] for i in range(len(prompts))]

    def uses_static(self, device: torch.device) -> bool:
        """Whether calls on `device` run the static-cache decode loop (see the class docstring)."""
        if self.decode == "static":
            return True
        return self.decode == "auto" and device.type == "cuda" and self._static_supported()

    def _static_supported(self) -> bool:
        """Qwen-VL family, full-attention sdpa/eager text layers, and unsharded weights (FSDP's DTensor
        parameters need the all-gathers of the wrapped forward: such models keep `generate`)."""
        inner = unwrap_model(self.model)
        sharded = any(type(p).__name__ == "DTensor" for p in inner.parameters())
        return (
            getattr(inner.config, "model_type", None) in SHARED_PREFILL_MODEL_TYPES
            and StaticDecoder.supports(inner)
            and not sharded
        )

    def _sequences_per_call(
        self, prompts: Sequence[EncodedPrompt], sampling: SamplingParams, device: torch.device
    ) -> int:
        """Sequences per decode call: `batch_size`, on CUDA capped by what fits in free memory.

        Per sequence: its KV cache (`kv_bytes_per_sequence` at the cache length of the longest
        prompt) plus ~6 (V,) float32/int64 temporaries of the sampling step; the budget is 80 % of the
        free memory (driver-free + cached by torch + the kept static cache) minus 1 GiB.
        """
        if device.type != "cuda":
            return self.batch_size
        inner = unwrap_model(self.model)
        dtype = next(inner.parameters()).dtype
        length = cache_length(max(len(p) for p in prompts), sampling.max_new_tokens)
        head = inner.get_output_embeddings()
        vocab = head.weight.shape[0] if head is not None else inner.config.get_text_config().vocab_size
        per_seq = kv_bytes_per_sequence(inner.config, length, dtype) + 6 * 8 * vocab
        free, _ = torch.cuda.mem_get_info(device)
        free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        if self._decoder is not None and self._decoder._cache is not None:
            rows, kept_len = self._decoder._cache_key[:2]
            free += rows * kv_bytes_per_sequence(inner.config, kept_len, dtype)
        return sequences_that_fit(self.batch_size, per_seq, free)

    def _chooser(self, sampling: SamplingParams, vocab: int, device: torch.device) -> TokenChooser:
        """One `TokenChooser` per sampling setting (a compiled step then sees the same object every call)."""
        key = (sampling.temperature, sampling.top_k, sampling.top_p, sampling.min_new_tokens, vocab, str(device))
        if key not in self._choosers:
            self._choosers[key] = TokenChooser(
                sampling, vocab, device, banned_ids=suppressed_token_ids(self.model), stop_ids=self.eos_ids
            )
        return self._choosers[key]

    def _static_batch(
        self, prompts: Sequence[EncodedPrompt], keys: torch.Tensor, sampling: SamplingParams, device: torch.device
    ) -> list[Completion]:
        inner = unwrap_model(self.model)
        if self._decoder is None or self._decoder.model is not inner:
            self._decoder = StaticDecoder(inner, compile_step=device.type == "cuda")
        distinct, rows = _distinct_prompts(prompts)
        inputs = {k: v.to(device) for k, v in _left_pad(distinct, self.pad_id).items()}
        row_index = torch.tensor(rows, dtype=torch.long, device=device)
        chooser = self._chooser(sampling, inner.lm_head.weight.shape[0], device)
        tokens, logprobs = self._decoder.generate(
            inputs, row_index, keys, chooser,
            max_new_tokens=sampling.max_new_tokens, stop_ids=self.eos_ids, pad_id=self.pad_id,
        )  # fmt: skip
        tokens, logprobs = tokens.cpu(), logprobs.cpu()
        return [self._completion(tokens[b].tolist(), logprobs[b].tolist()) for b in range(tokens.shape[0])]

    def sync_weights(self, model: torch.nn.Module) -> None:
        """The HF engine samples from the training model itself: nothing to copy.

        Given a different model object (e.g. a reloaded checkpoint), the engine adopts it.
        """
        if model is not self.model:
            log.info("HF engine: adopting a new model object for generation")
            self.model = model

    def _generate_batch(
        self, prompts: Sequence[EncodedPrompt], keys: torch.Tensor, sampling: SamplingParams, device: torch.device
    ) -> list[Completion]:
        inputs = _left_pad(prompts, self.pad_id)
        inputs = {k: v.to(device) for k, v in inputs.items()}
        prompt_len = inputs["input_ids"].shape[1]
        sampler = _SeededSampler(sampling, keys, prompt_len)
        kwargs = dict(
            max_new_tokens=sampling.max_new_tokens,
            min_new_tokens=sampling.min_new_tokens,
            do_sample=False,  # `_SeededSampler` draws the token; generate's argmax then picks exactly it
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
            suppress_tokens=suppressed_token_ids(self.model),
            repetition_penalty=1.0,  # checkpoints' generation_config may set one: it would bias the log-probs
            logits_processor=LogitsProcessorList([sampler]),
            return_dict_in_generate=True,
            use_cache=True,
        )
        # A checkpoint's generation_config may set sampling knobs (Qwen ships top_k=1): generate must not
        # apply them, our sampler does all of it.
        kwargs.update(temperature=None, top_k=None, top_p=None)
        if self._can_share_prefill(prompts):
            inputs = self._shared_prefill(prompts, inputs, device)
        out = self.model.generate(**inputs, **kwargs)
        new = out.sequences[:, prompt_len:]  # (B, S)
        logprobs = sampler.finish(new)  # (B, S)
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
        distinct, rows = _distinct_prompts(prompts)
        head = {k: v.to(device) for k, v in _left_pad(distinct, self.pad_id).items()}
        if head["input_ids"].shape[1] != inputs["input_ids"].shape[1]:
            raise AssertionError("distinct prompts padded to another length than their batch")
        head = {k: v[:, :-1] if k in _TOKEN_KEYS else v for k, v in head.items()}
        cache = self.model(**head, use_cache=True, logits_to_keep=1).cache
        cache.reorder_cache(torch.tensor(rows, dtype=torch.long, device=device))
        unwrap_model(self.model).model.rope_deltas = None  # stale (distinct rows): generate recomputes them
        return {**{k: v for k, v in inputs.items() if k not in _PIXEL_KEYS}, "cache": cache}

    def _completion(self, tokens: list[int], logprobs: list[float]) -> Completion:
        """Cut at the first stop token (kept); no stop token means the length limit was hit."""
        stops = [k for k, t in enumerate(tokens) if t in self.eos_ids]
        end = stops[0] + 1 if stops else len(tokens)
        ids = tokens[:end]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return Completion(ids, logprobs[:end], text, "stop" if stops else "length")


class _SeededSampler(LogitsProcessor):
    """Draws each sequence's next token with its own key and records its log-prob, inside `generate`.

    Custom logits processors run after generate's own (placeholder suppression, min_new_tokens), so
    `scores` are the logits with those tokens at -inf; `TokenChooser` applies temperature, top-k and
    top-p, draws with the sequence's Gumbel noise and reports log_softmax of the processed logits at
    the drawn token. The returned scores are 0 at the drawn token and -inf elsewhere, so generate's
    greedy argmax takes exactly that token (then replaces it by padding in finished rows).
    """

    def __init__(self, sampling: SamplingParams, keys: torch.Tensor, prompt_len: int):
        self.sampling = sampling
        self.chooser: TokenChooser | None = None  # built at the first step, for the logits' vocabulary
        self.keys = keys
        self.prompt_len = prompt_len
        self.steps: list[torch.Tensor] = []  # each (B,)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_len
        if self.chooser is None:
            self.chooser = TokenChooser(self.sampling, scores.shape[-1], scores.device)
        token, logp = self.chooser(scores, self.keys, step)
        self.steps.append(logp)
        return torch.full_like(scores, -math.inf).scatter_(1, token[:, None], 0.0)

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """(B, S) log-probs of the generated tokens (values past a stop token are meaningless)."""
        if len(self.steps) != new_tokens.shape[1]:
            raise AssertionError(f"recorded {len(self.steps)} steps for {new_tokens.shape[1]} generated tokens")
        return torch.stack(self.steps, dim=1).cpu()


def _distinct_prompts(prompts: Sequence[EncodedPrompt]) -> tuple[list[EncodedPrompt], list[int]]:
    """The distinct prompt objects in first-appearance order, and each prompt's row among them (a GRPO group
    passes one object n times: it is prefilled once)."""
    rows: dict[int, int] = {}  # id(prompt) -> row
    distinct: list[EncodedPrompt] = []
    for p in prompts:
        if id(p) not in rows:
            rows[id(p)] = len(distinct)
            distinct.append(p)
    return distinct, [rows[id(p)] for p in prompts]


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
