"""Per-sequence seeded sampling and the static-cache decode loop of the HF engine.

Seeded sampling. Every sequence k carries its own 64-bit key, derived from the call's seed, a digest
of its prompt's content (token ids and visual tensors), the prompt's occurrence number among identical
prompts of the call, and the sample's index j among the prompt's n samples (`sequence_keys`); never from
its row in a batch. A token is drawn by the Gumbel-max trick: with processed logits x (placeholders
suppressed, divided by the temperature, top-k / top-p filtered to -inf) and independent standard
Gumbel noise g_v, argmax_v (x_v + g_v) is a sample from softmax(x) (Gumbel 1954; e.g. Maddison et al.
2014, "A* sampling"). The noise of (key_k, step t, token v) is a counter-based hash of the three
integers in plain int64 torch ops (`gumbel_noise`), so a sequence's draws are the same whatever its
batch-mates, its row or the batch size, and the hash compiles into the decode step. Uniforms come
from 32 hash bits as u = (h + 1/2) / 2^32 and g = -log(-log1p(-u)), which keeps the upper tail
(small -log u) at full float32 resolution: tokens more than ~23 nats below the best one are never
drawn (total mass < 152k · e^-23 ≈ 2e-5).

Static decode (`StaticDecoder`). One prefill per distinct prompt with the model's own forward (vision
tower + language model; M-RoPE positions from the model's `_prepare_position_ids_for_generation`,
exactly what `generate` uses), then the cache rows are copied, repeated per sample, into a
`transformers.StaticCache` of fixed length (prompt + max_new_tokens, rounded up to `LENGTH_BUCKET` when
the step is compiled),
and our own loop runs one token per step through the language model + lm_head. Decode positions are
(prompt tokens of the row + step) + the row's `rope_deltas` on all three M-RoPE axes, as in
`generate`. The one-token step (forward + sampling) is wrapped in `torch.compile(mode="reduce-overhead")`
(CUDA graphs) on CUDA and runs eagerly elsewhere. Finished rows keep receiving the pad token.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, StaticCache, TopKLogitsWarper, TopPLogitsWarper

from mmrl.contracts import EncodedPrompt, SamplingParams

_MASK32 = 0xFFFFFFFF
_MIX32 = 0x45D9F3B  # < 2^27: a 32-bit value times it stays below 2^63 (no int64 overflow)
_TWO_POW_M32 = 2.0**-32

LENGTH_BUCKET = 256
"""Static caches are allocated in multiples of this many positions, so that prompts of similar length
share one compiled decode step (a new cache length is a new CUDA graph)."""

STATIC_ATTENTION = ("sdpa", "eager")
"""Attention implementations the static decode step builds its (B, 1, 1, L) mask for."""


def prompt_digest(prompt: EncodedPrompt) -> bytes:
    """16-byte digest of a prompt's content: its token ids and every visual tensor (name, dtype, shape, bytes)."""
    h = hashlib.blake2b(digest_size=16)
    tensors = [("input_ids", prompt.input_ids)] + sorted(prompt.vision.items())
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()


def sequence_keys(
    prompts: Sequence[EncodedPrompt], n: int, seed: int, prompt_seeds: Sequence[int] | None = None
) -> torch.Tensor:
    """(len(prompts) · n, 2) int64 keys in [0, 2^32): row i·n + j is sample j of prompts[i].

    key = blake2b(seed, content digest of the prompt, occurrence of that content among the call's
    prompts so far, j). Two identical prompts in one call thus still get different samples, and a
    prompt's samples do not depend on the other prompts of the call. With `prompt_seeds`
    (`SamplingParams.prompt_seeds`), key = blake2b(prompt_seeds[i], j): the caller names each prompt's
    stream itself, and neither the call's seed nor the prompt's content enter.
    """
    if prompt_seeds is not None:
        if len(prompt_seeds) != len(prompts) or any(int(s) < 0 for s in prompt_seeds):
            raise ValueError(f"prompt_seeds needs one seed >= 0 per prompt ({len(prompts)}), got {list(prompt_seeds)}")
        keys = torch.empty(len(prompts) * n, 2, dtype=torch.long)
        for i, own in enumerate(prompt_seeds):
            for j in range(n):
                h = hashlib.blake2b(f"prompt-seed|{int(own)}|{j}".encode(), digest_size=8).digest()
                keys[i * n + j, 0] = int.from_bytes(h[:4], "little")
                keys[i * n + j, 1] = int.from_bytes(h[4:], "little")
        return keys
    keys = torch.empty(len(prompts) * n, 2, dtype=torch.long)
    seen: dict[bytes, int] = {}
    digests: dict[int, bytes] = {}
    for i, p in enumerate(prompts):
        if id(p) not in digests:
            digests[id(p)] = prompt_digest(p)
        d = digests[id(p)]
        occurrence = seen.get(d, 0)
        seen[d] = occurrence + 1
        for j in range(n):
            h = hashlib.blake2b(f"{seed}|{occurrence}|{j}|".encode() + d, digest_size=8).digest()
            keys[i * n + j, 0] = int.from_bytes(h[:4], "little")
            keys[i * n + j, 1] = int.from_bytes(h[4:], "little")
    return keys


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer (two multiply-xorshift rounds) on int64 tensors holding values in [0, 2^32)."""
    x = (((x >> 16) ^ x) * _MIX32) & _MASK32
    x = (((x >> 16) ^ x) * _MIX32) & _MASK32
    return (x >> 16) ^ x


def token_hashes(vocab_size: int, device: torch.device | str) -> torch.Tensor:
    """(V,) int64 mixed token ids, the per-token half of `gumbel_noise` (precomputed once per vocabulary)."""
    return _mix32(torch.arange(vocab_size, dtype=torch.long, device=device) + 0x9E3779B9 & _MASK32)


def gumbel_noise(keys: torch.Tensor, step: torch.Tensor | int, token_mix: torch.Tensor) -> torch.Tensor:
    """(B, V) float32 standard Gumbel noise, a pure function of (keys[b], step, token id).

    `keys` (B, 2) int64 from `sequence_keys`, `step` the 0-based index of the generated token,
    `token_mix` = `token_hashes(V)`. g = -log(-log1p(-u)), u = (h + 1/2) / 2^32.
    """
    step = torch.as_tensor(step, dtype=torch.long, device=keys.device)
    row = _mix32(keys[:, 1] ^ _mix32(keys[:, 0] ^ _mix32(step & _MASK32)))  # (B,)
    salt = _mix32(row ^ 0x5BD1E995)
    h = _mix32(row[:, None] ^ token_mix[None, :])
    h = _mix32((h + salt[:, None]) & _MASK32)
    u = ((h.to(torch.float32) + 0.5) * _TWO_POW_M32).clamp(max=1.0 - 2.0**-24)
    return -torch.log(-torch.log1p(-u))


class TokenChooser:
    """Processed logits, the chosen token and its log-prob, for one decode step of many sequences.

    x = logits (float32) with `banned` ids and, before `min_new_tokens`, the stop ids set to -inf;
    then x / temperature, top-k, top-p (transformers' warpers, generate's order). The reported
    log-prob is log_softmax(x)[token] (vLLM's "processed_logprobs"). temperature == 0: greedy argmax of
    x without temperature or filters; otherwise argmax(x + Gumbel noise of the sequence's key).
    """

    def __init__(
        self,
        sampling: SamplingParams,
        vocab_size: int,
        device: torch.device | str,
        *,
        banned_ids: Sequence[int] = (),
        stop_ids: Sequence[int] = (),
    ):
        self.greedy = sampling.temperature == 0
        self.temperature = 1.0 if self.greedy else float(sampling.temperature)
        self.min_new_tokens = int(sampling.min_new_tokens)
        self.warpers: list[Any] = []
        if not self.greedy and sampling.top_k > 0:
            self.warpers.append(TopKLogitsWarper(top_k=sampling.top_k))
        if not self.greedy and sampling.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p=sampling.top_p))
        banned = [i for i in banned_ids if 0 <= i < vocab_size]
        stops = [i for i in stop_ids if 0 <= i < vocab_size]
        self.banned = torch.tensor(banned, dtype=torch.long, device=device) if banned else None
        self.stops = torch.tensor(stops, dtype=torch.long, device=device) if stops and self.min_new_tokens else None
        self.token_mix = None if self.greedy else token_hashes(vocab_size, device)

    def process(self, logits: torch.Tensor, step: torch.Tensor | int) -> torch.Tensor:
        """(B, V) float32 processed logits x (see the class docstring)."""
        x = logits.float()
        if self.banned is not None:
            x = x.index_fill(-1, self.banned, -math.inf)
        if self.stops is not None:
            blocked = x.index_fill(-1, self.stops, -math.inf)
            x = torch.where(torch.as_tensor(step, device=x.device) < self.min_new_tokens, blocked, x)
        if self.temperature != 1.0:
            x = x / self.temperature
        for warp in self.warpers:
            x = warp(None, x)
        return x

    def choose(
        self, x: torch.Tensor, keys: torch.Tensor, step: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(token (B,) long, log-prob (B,) float32) from processed logits x."""
        scores = x if self.greedy else x + gumbel_noise(keys, step, self.token_mix)
        token = scores.argmax(dim=-1)
        logp = torch.log_softmax(x, dim=-1).gather(1, token[:, None]).squeeze(1)
        return token, logp

    def __call__(
        self, logits: torch.Tensor, keys: torch.Tensor, step: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.choose(self.process(logits, step), keys, step)


def kv_bytes_per_sequence(config: Any, length: int, dtype: torch.dtype) -> int:
    """KV-cache bytes of one sequence of `length` positions: 2 · layers · kv_heads · head_dim · length · dtype bytes."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return 2 * text.num_hidden_layers * kv_heads * head_dim * length * torch.finfo(dtype).bits // 8


def sequences_that_fit(
    requested: int, per_sequence_bytes: int, free_bytes: int, *, margin: float = 0.8, reserve_bytes: int = 1 << 30
) -> int:
    """Sequences of `per_sequence_bytes` that fit in `margin` · free memory - `reserve_bytes`, in [1, `requested`]."""
    budget = margin * free_bytes - reserve_bytes
    return max(1, min(requested, int(budget // max(per_sequence_bytes, 1))))


def cache_length(prompt_len: int, max_new_tokens: int, bucket: int = LENGTH_BUCKET) -> int:
    """Static cache length: prompt + new tokens, rounded up to a multiple of `bucket`."""
    need = prompt_len + max_new_tokens
    return -(-need // bucket) * bucket


class StaticDecoder:
    """Prefill with the model's forward, then decode over a `StaticCache` with an optionally compiled step.

    `model` is the unwrapped transformers Qwen-VL model (`*ForConditionalGeneration`). The cache of the
    last call is kept and reused when the next call has the same (rows, length): a compiled step is
    specialised to the cache tensors' addresses, so a new cache means a new CUDA graph.
    """

    def __init__(self, model: torch.nn.Module, *, compile_step: bool, compile_options: dict[str, Any] | None = None):
        self.model = model
        self.compile_step = compile_step
        self.compile_options = compile_options or {"mode": "reduce-overhead", "dynamic": False}
        """`torch.compile` arguments of the step (CUDA graphs by default; tests trace it with `fullgraph=True`)."""
        self.length_bucket = LENGTH_BUCKET if compile_step else 1  # uncompiled: no graph to share, no padding
        self.attn = model.config._attn_implementation
        if self.attn not in STATIC_ATTENTION:
            raise ValueError(f"static decode needs attn_implementation in {STATIC_ATTENTION}, got '{self.attn}'")
        # The text configs the attention layers read their implementation from (switched during a decode step).
        configs = {
            id(m.config): m.config for m in model.model.language_model.modules() if hasattr(m, "num_key_value_groups")
        }
        self._attn_configs = list(configs.values()) if self.attn == "sdpa" else []
        self._cache: StaticCache | None = None
        self._cache_key: tuple | None = None
        self._step_fn = None

    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        """Whether this decoder can run `model` (full-attention text layers, sdpa or eager attention)."""
        config = getattr(model, "config", None)
        inner = getattr(model, "model", None)
        if config is None or inner is None or not hasattr(inner, "language_model") or not hasattr(model, "lm_head"):
            return False
        text = config.get_text_config(decoder=True)
        layer_types = getattr(text, "layer_types", None) or ["full_attention"]
        return config._attn_implementation in STATIC_ATTENTION and all(t == "full_attention" for t in layer_types)

    def release(self) -> None:
        """Free the kept cache (the next call allocates a new one, and a compiled step re-records)."""
        self._cache, self._cache_key = None, None

    def _get_cache(self, rows: int, length: int, like: torch.Tensor) -> StaticCache:
        key = (rows, length, like.dtype, like.device)
        if self._cache is None or self._cache_key != key:
            self._cache = None  # free the old one before allocating
            cache = StaticCache(config=self.model.config, max_cache_len=length)
            shaped = like[:1].expand(rows, *like.shape[1:])  # (rows, kv_heads, *, head_dim): sizes only
            for layer in cache.layers:
                layer.lazy_initialization(shaped, shaped)
            self._cache, self._cache_key = cache, key
        return self._cache

    def _switch_attention(self, implementation: str) -> None:
        for config in self._attn_configs:
            config._attn_implementation_internal = implementation

    def _step(self) -> torch.nn.Module:
        if self._step_fn is None:
            step = _DecodeStep(self.model.model.language_model, self.model.lm_head)
            # Compiled as a Module (as transformers compiles its own decode step): the language model's
            # parameters are then static inputs of the CUDA graph, never copied per replay.
            self._step_fn = torch.compile(step, **self.compile_options) if self.compile_step else step
        return self._step_fn

    @torch.no_grad()
    def generate(
        self,
        distinct: dict[str, torch.Tensor],
        rows: torch.Tensor,
        keys: torch.Tensor,
        chooser: TokenChooser,
        *,
        max_new_tokens: int,
        stop_ids: Sequence[int],
        pad_id: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, log-probs), each (B, S) with S <= max_new_tokens; row b continues distinct prompt rows[b].

        `distinct`: LEFT-padded inputs of the distinct prompts (input_ids, attention_mask, mm_token_type_ids,
        visual tensors), on the model's device. `keys` (B, 2) per-sequence sampling keys.
        """
        model, device = self.model, distinct["input_ids"].device
        batch, prompt_len = rows.shape[0], distinct["input_ids"].shape[1]
        # Prefill: the model's forward with generate's own M-RoPE positions (this also sets rope_deltas).
        model_kwargs = {k: v for k, v in distinct.items() if k != "input_ids"}
        positions = model._prepare_position_ids_for_generation(distinct["input_ids"], dict(model_kwargs))
        deltas = model.model.rope_deltas
        model.model.rope_deltas = None  # per-call state of the model: never leave it stale
        out = model(**distinct, position_ids=positions, use_cache=True, logits_to_keep=1)
        first_logits = out.logits[:, -1][rows]  # (B, V)
        prefix = out.cache
        valid = distinct["attention_mask"].bool()[rows]  # (B, T)
        # Next text position of each row: its prompt token count (+ the M-RoPE offset of its prompt).
        next_pos = (valid.sum(1) + deltas.to(device).view(-1)[rows]).to(torch.long)

        length = cache_length(prompt_len, max_new_tokens, self.length_bucket)
        like = prefix.layers[0].keys
        cache = self._get_cache(batch, length, like)
        for layer, src in zip(cache.layers, prefix.layers, strict=True):
            layer.keys[:, :, :prompt_len].copy_(src.keys[rows])
            layer.values[:, :, :prompt_len].copy_(src.values[rows])
            layer.keys[:, :, prompt_len:].zero_()
            layer.values[:, :, prompt_len:].zero_()
            layer.cumulative_length.fill_(prompt_len)
        del out, prefix

        attend = torch.zeros(batch, 1, 1, length, dtype=torch.bool, device=device)
        attend[:, 0, 0, :prompt_len] = valid
        stops = torch.tensor(list(stop_ids), dtype=torch.long, device=device)
        tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
        logprobs = torch.zeros(batch, max_new_tokens, dtype=torch.float32, device=device)
        finished = torch.zeros(batch, dtype=torch.bool, device=device)

        token, logp = chooser(first_logits, keys, 0)
        tokens[:, 0], logprobs[:, 0] = token, logp
        finished |= torch.isin(token, stops)
        step_fn = self._step()
        step_t = torch.zeros((), dtype=torch.long, device=device)
        positions = next_pos - 1  # text position of the token fed at step s: next_pos - 1 + s
        steps = 1
        for s in range(1, max_new_tokens):
            if s % 16 == 0 and bool(finished.all()):  # a host sync now and then, not every step
                break
            attend[:, 0, 0, prompt_len + s - 1] = True  # the slot the fed token is written to
            step_t.fill_(s)
            mask = attend if self.attn == "sdpa" else _additive(attend, like.dtype)
            if self.compile_step:  # the last step's graph outputs were copied out: they may be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            self._switch_attention(DECODE_ATTENTION)
            try:
                token, logp = step_fn(tokens[:, s - 1 : s], positions, mask, keys, step_t, cache, chooser)
            finally:
                self._switch_attention(self.attn)
            token = torch.where(finished, torch.full_like(token, pad_id), token)
            tokens[:, s], logprobs[:, s] = token, logp
            finished |= torch.isin(token, stops)
            steps = s + 1
        return tokens[:, :steps], logprobs[:, :steps]


class _DecodeStep(torch.nn.Module):
    """One decode step: the language model on one token per sequence over the static cache, lm_head, sampling.

    Holds the model's own language model and lm_head as submodules (shared, not copied).
    """

    def __init__(self, language_model: torch.nn.Module, lm_head: torch.nn.Module):
        super().__init__()
        self.language_model = language_model
        self.lm_head = lm_head

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor,
        keys: torch.Tensor,
        step: torch.Tensor,
        cache: StaticCache,
        chooser: TokenChooser,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(token, log-prob), each (B,), of step `step`; `positions` (B,) + step is each row's text position."""
        pos = (positions + step).view(1, -1, 1).expand(3, -1, 1)
        hidden = self.language_model(
            input_ids=tokens, position_ids=pos, attention_mask=mask, cache=cache, use_cache=True
        ).last_hidden_state
        return chooser(self.lm_head(hidden[:, -1]), keys, step)


DECODE_ATTENTION = "mmrl_decode_sdpa"
"""Attention implementation the static decode step switches sdpa layers to (`decode_sdpa_attention`)."""


def decode_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA for one query token per sequence with grouped-query attention, without copying K/V per query head.

    transformers' sdpa path repeats every key/value head n_rep times when a mask is given under
    torch.compile (a full copy of the cache per layer and step). With one query token the n_rep query
    heads sharing a key/value head can instead stand in the query-length axis: query (B, H, 1, d) ->
    (B, H_kv, n_rep, d) (heads g·n_rep .. g·n_rep + n_rep - 1 use key/value head g, as in `repeat_kv`),
    and the (B, 1, 1, L) mask broadcasts over it.
    """
    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    if q_len != 1 or heads % kv_heads:
        raise ValueError(f"decode attention takes one query token and H % H_kv == 0, got {tuple(query.shape)}")
    grouped = query.reshape(batch, kv_heads, heads // kv_heads, dim)
    out = F.scaled_dot_product_attention(grouped, key, value, attn_mask=attention_mask, dropout_p=0.0, scale=scaling)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(DECODE_ATTENTION, decode_sdpa_attention)


def _additive(attend: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Eager attention adds its mask: 0 where attended, the dtype's minimum elsewhere."""
    return torch.zeros(attend.shape, dtype=dtype, device=attend.device).masked_fill(~attend, torch.finfo(dtype).min)
