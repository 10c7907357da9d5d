"""The trainer's forward: batch prompt + completion, score the completion tokens.

One function computes log-probs for everything that needs them (the policy under gradients, the old
policy and the frozen reference under no_grad, SFT), so the numbers the trainer compares always come
from the same code. Batches are RIGHT-padded: every sequence then starts at position 0, and Qwen's
M-RoPE positions (computed by the model from `mm_token_type_ids`, the image/video grids and the
attention mask) are those of the sequence alone; the batch-vs-single tests check that (R3, R10 in docs/requirements.md).

The policy never emits image/video placeholder tokens: a completion holding one would make the
trainer's forward count more placeholders than there are visual features. Both engines suppress
them when sampling and `completion_logprobs` scores under the same restricted distribution, so the
engine's and the trainer's log-probs stay comparable (R6).

A GRPO group is n sequences of one prompt object. For the Qwen-VL families (`SHARED_VISION_MODEL_TYPES`)
`completion_logprobs` runs the vision tower once per distinct prompt of the batch and hands each
sequence its prompt's features through the models' `mm_encoder_outputs` forward argument (the
transformers 5 way to pass pre-encoded images/videos, Qwen3-VL's deepstack features included)
instead of re-encoding the same pixels n times. The features are shared by indexing, so the vision
tower's gradient is the sum over the group, as with one encoding per sequence. Other models take the
plain path (pixels repeated per sequence); both give the same log-probs and gradients (tested).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mmrl.contracts import EncodedPrompt
from mmrl.rollout.encode import VISION_KEYS

MODEL_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids", *VISION_KEYS)
"""Batch entries passed to the model's forward; the others (masks, lengths) are for the loss."""

_CHUNK_ELEMENTS = 1 << 24  # float32 logits processed at a time (64 MiB) when scoring completions

SHARED_VISION_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
"""`config.model_type`s whose forward takes `mm_encoder_outputs` in the layout `get_image_features` /
`get_video_features` return (per-item `pooler_output`, plus per-layer `deepstack_features` for Qwen3-VL):
`completion_logprobs` encodes each distinct prompt's media once for these, and repeats pixels otherwise."""

_MODALITIES = (("image", "pixel_values", "image_grid_thw"), ("video", "pixel_values_videos", "video_grid_thw"))


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside DDP / DataParallel (`.module`), torch.compile (`._orig_mod`) and peft
    (`get_base_model()`) wrappers, in any nesting; `model` itself when it is not wrapped."""
    inner = model
    for _ in range(16):  # wrappers nest a few levels at most
        nxt = getattr(inner, "module", None)
        if nxt is None:
            nxt = getattr(inner, "_orig_mod", None)
        if nxt is None and callable(getattr(inner, "get_base_model", None)):
            nxt = inner.get_base_model()
        if not isinstance(nxt, torch.nn.Module) or nxt is inner:
            break
        inner = nxt
    return inner


def suppressed_token_ids(model_or_config: Any) -> list[int]:
    """Image and video placeholder ids of a Qwen-VL model (or its config): never sampled, never scored.

    Looks through DDP, torch.compile and peft wrappers (`unwrap_model`). A module without a `config`
    is an error: returning no ids would silently score under a different distribution than the engines.
    """
    config = model_or_config
    if isinstance(model_or_config, torch.nn.Module):
        config = getattr(unwrap_model(model_or_config), "config", None)
        if config is None:
            raise TypeError(
                f"{type(model_or_config).__name__} has no `config` (nor does any model it wraps): cannot tell "
                "which image/video placeholder tokens to suppress"
            )
    ids = [getattr(config, "image_token_id", None), getattr(config, "video_token_id", None)]
    return [int(i) for i in ids if i is not None]


def shares_vision(model: torch.nn.Module) -> bool:
    """Whether `completion_logprobs` can encode a group's media once for `model` (see the module docstring)."""
    inner = unwrap_model(model)
    model_type = getattr(getattr(inner, "config", None), "model_type", None)
    return (
        model_type in SHARED_VISION_MODEL_TYPES
        and "mm_encoder_outputs" in inspect.signature(inner.forward).parameters
        and all(callable(getattr(inner, f"get_{m}_features", None)) for m, _, _ in _MODALITIES)
    )


def batch_vision(prompts: list[EncodedPrompt]) -> dict[str, torch.Tensor]:
    """Visual tensors of `prompts` concatenated in batch order (one set per item, repeats included).

    Qwen models consume `pixel_values` / `image_grid_thw` (and the video ones) as flat lists that
    they walk in batch order, so item i's images must come right after item i-1's.
    """
    out = {}
    for key in VISION_KEYS:
        parts = [p.vision[key] for p in prompts if key in p.vision]
        if parts:
            out[key] = torch.cat(parts, dim=0)
    return out


def collate(prompts: list[EncodedPrompt], completions: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """RIGHT-padded batch of prompt + completion sequences for `completion_logprobs`.

    Returns `input_ids`, `attention_mask`, `completion_mask` (1 on completion tokens) and
    `mm_token_type_ids` (0 on completion and pad tokens), all (B, L); `prompt_lengths` (B,); and
    the prompts' visual tensors concatenated in batch order. The same prompt object may appear
    several times (a GRPO group): the batch then holds each distinct prompt's media once, for
    `completion_logprobs` to encode once: `unique_pixel_values` + `unique_image_grid_thw` (distinct
    prompts in first-appearance order) and `unique_image_index` (one entry per row of `image_grid_thw`:
    that image's row among the unique ones), and the same three for videos (`unique_pixel_values_videos`,
    ...). The grids stay one row per sequence's image (M-RoPE reads them), but the pixels are not
    repeated per sequence (a group of 16 would hold 16 copies of a long video's patches):
    `completion_logprobs` rebuilds them from the unique ones only for a model that cannot share
    features (`repeated_pixels`). With those entries comes `prompt_group` (B,): each sequence's distinct
    prompt, numbered in first-appearance order.
    """
    if len(prompts) != len(completions) or not prompts:
        raise ValueError(f"need one completion per prompt, got {len(prompts)} prompts, {len(completions)} completions")
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    B, L = len(prompts), max(lengths)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(B, L, dtype=torch.long)
    completion_mask = torch.zeros(B, L, dtype=torch.long)
    with_types = any("mm_token_type_ids" in p.vision for p in prompts)
    mm_types = torch.zeros(B, L, dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        T, n = len(p), len(c)
        input_ids[i, :T] = p.input_ids
        input_ids[i, T : T + n] = torch.as_tensor(c, dtype=torch.long)
        attention_mask[i, : T + n] = 1
        completion_mask[i, T : T + n] = 1
        if "mm_token_type_ids" in p.vision:
            mm_types[i, :T] = p.vision["mm_token_type_ids"]
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "completion_mask": completion_mask,
        "prompt_lengths": torch.tensor([len(p) for p in prompts], dtype=torch.long),
        **batch_vision(prompts),
    }
    if with_types:
        batch["mm_token_type_ids"] = mm_types
    unique = _unique_vision(prompts)
    if unique:
        groups: dict[int, int] = {}
        batch["prompt_group"] = torch.tensor([groups.setdefault(id(p), len(groups)) for p in prompts])
    for _, pixel_key, _ in _MODALITIES:
        if f"unique_{pixel_key}" in unique:
            del batch[pixel_key]
    batch.update(unique)
    return batch


def repeated_pixels(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The per-sequence pixel tensors (`pixel_values`, `pixel_values_videos`) that `collate` left out because its
    `unique_*` entries carry them: unique item j's patch rows, for each entry j of `unique_<modality>_index`."""
    out = {}
    for modality, pixel_key, grid_key in _MODALITIES:
        if pixel_key in batch or f"unique_{pixel_key}" not in batch:
            continue
        sizes = batch[f"unique_{grid_key}"].prod(-1).tolist()
        items = torch.split(batch[f"unique_{pixel_key}"], sizes)
        out[pixel_key] = torch.cat([items[j] for j in batch[f"unique_{modality}_index"].tolist()])
    return out


def _unique_vision(prompts: list[EncodedPrompt]) -> dict[str, torch.Tensor]:
    """The `unique_*` entries of `collate`: empty unless some prompt object repeats and carries media."""
    distinct: dict[int, EncodedPrompt] = {}
    for p in prompts:
        distinct.setdefault(id(p), p)
    if len(distinct) == len(prompts):
        return {}
    out = {}
    for modality, pixel_key, grid_key in _MODALITIES:
        counts = {key: int(p.vision[grid_key].shape[0]) if grid_key in p.vision else 0 for key, p in distinct.items()}
        if not any(counts.values()):
            continue
        starts, total = {}, 0
        for key, count in counts.items():  # first-appearance order
            starts[key], total = total, total + count
        with_media = [p for key, p in distinct.items() if counts[key]]
        out[f"unique_{pixel_key}"] = torch.cat([p.vision[pixel_key] for p in with_media])
        out[f"unique_{grid_key}"] = torch.cat([p.vision[grid_key] for p in with_media])
        out[f"unique_{modality}_index"] = torch.cat(
            [torch.arange(starts[id(p)], starts[id(p)] + counts[id(p)], dtype=torch.long) for p in prompts]
        )
    return out


def completion_logprobs(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    share_vision: bool = True,
    vision_chunk_frames: int = 0,
    vision_checkpointing: bool = False,
    prompt_once: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Log-prob of each completion token under softmax(logits / temperature), aligned to completion positions.

    Returns `logprobs` (B, Lc) float32, `entropy` (B, Lc) float32 or None, and `mask` (B, Lc) bool,
    where Lc is the longest completion in the batch and column j is the j-th completion token.
    The lm_head runs only on the Lc positions that predict completion tokens (the model's
    `logits_to_keep`, given per-row positions), and the float32 log-softmax runs in chunks, each
    recomputed in backward when gradients are on, so no (B, L, V) float32 tensor ever exists.
    Works under gradients (policy loss) and under no_grad (old / reference log-probs).

    When the batch repeats a prompt (`collate`'s `unique_*` entries) and `shares_vision(model)`, each
    distinct image/video is encoded once and its features are reused by every sequence of its group;
    `share_vision=False` forces the plain path (pixels encoded once per sequence), e.g. to compare them.

    `vision_chunk_frames` > 0 runs the vision tower on at most that many frames of a video at a time
    (`encode_vision`), and `vision_checkpointing` keeps only each call's inputs for the backward and
    recomputes its activations there (`train.vision_chunk_frames`, `train.vision_checkpointing`); either
    routes the media through `encode_vision` for shared-vision models even when no prompt repeats.

    `prompt_once` (`train.prompt_once`) also runs each distinct prompt of a group once through the
    decoder and the completions on its cached keys and values (`_prompt_once_logits`), when the batch
    repeats a prompt with media, the model shares vision, is not wrapped for DDP and does not checkpoint
    its layers; the plain forward otherwise.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to score completions, got {temperature}")
    device = next(model.parameters()).device
    input_ids = batch["input_ids"].to(device)
    B, L = input_ids.shape
    prompt_lengths = batch["prompt_lengths"].to(device)
    completion_lengths = batch["completion_mask"].to(device).sum(1)
    Lc = max(int(completion_lengths.max()), 1)
    steps = torch.arange(Lc, device=device)
    positions = (prompt_lengths[:, None] - 1 + steps).clamp(max=L - 1)  # (B, Lc) rows whose logits we keep
    targets = input_ids.gather(1, (positions + 1).clamp(max=L - 1))  # (B, Lc) the tokens they predict
    mask = steps[None, :] < completion_lengths[:, None]  # (B, Lc)

    inputs = {k: v.to(device) for k, v in batch.items() if k in MODEL_KEYS}
    plan = _vision_plan(batch, vision_chunk_frames > 0 or vision_checkpointing)
    shared = bool(plan) and share_vision and shares_vision(model)
    inner = unwrap_model(model)
    if shared and prompt_once and "prompt_group" in batch and _can_cache(model, inner):
        logits = _prompt_once_logits(model, inner, inputs, batch, plan, Lc, device,
                                     vision_chunk_frames, vision_checkpointing)  # fmt: skip
    else:
        if shared:
            inputs = _with_shared_vision(inner, inputs, plan, device, vision_chunk_frames, vision_checkpointing)
        else:
            inputs.update({k: v.to(device) for k, v in repeated_pixels(batch).items()})
        logits = model(**inputs, logits_to_keep=positions, use_cache=False).logits  # (B, Lc, V)

    suppressed = torch.tensor(suppressed_token_ids(model), dtype=torch.long, device=device)
    rows = max(1, _CHUNK_ELEMENTS // (B * logits.shape[-1]))
    recompute = torch.is_grad_enabled() and logits.requires_grad
    logprob_parts, entropy_parts = [], []
    for s in range(0, Lc, rows):
        args = (logits[:, s : s + rows], targets[:, s : s + rows], suppressed, temperature, with_entropy)
        lp, ent = checkpoint(_score, *args, use_reentrant=False) if recompute else _score(*args)
        logprob_parts.append(lp)
        entropy_parts.append(ent)
    logprobs = torch.cat(logprob_parts, dim=1) * mask  # (B, Lc); 0 past each completion
    entropy = torch.cat(entropy_parts, dim=1) * mask if with_entropy else None
    return logprobs, entropy, mask


VisionPlan = dict[str, tuple[torch.Tensor, torch.Tensor, list[int]]]
"""Per modality: (pixels of the items to encode, their grids, for each sequence's item the item it uses)."""


def _vision_plan(batch: dict[str, torch.Tensor], always: bool) -> VisionPlan:
    """Per modality (pixels, grids, index): the media to encode once each and, per sequence's item, which one.

    From `collate`'s `unique_*` entries when prompts repeat; otherwise, when `always`, the batch's own media
    with each item its own (identity index); else empty (the model encodes its pixels itself)."""
    plan = {}
    for modality, pixel_key, grid_key in _MODALITIES:
        if f"unique_{pixel_key}" in batch:
            index = batch[f"unique_{modality}_index"].tolist()
            plan[modality] = (batch[f"unique_{pixel_key}"], batch[f"unique_{grid_key}"], index)
        elif always and pixel_key in batch:
            plan[modality] = (batch[pixel_key], batch[grid_key], list(range(int(batch[grid_key].shape[0]))))
    return plan


def _with_shared_vision(
    inner: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    plan: VisionPlan,
    device: torch.device,
    chunk_frames: int = 0,
    checkpointing: bool = False,
) -> dict[str, Any]:
    """`inputs` with each modality's pixels replaced by `mm_encoder_outputs`, each planned item encoded once.

    `encode_vision` returns one feature tensor per item (and, for Qwen3-VL, per-layer deepstack features
    split the same way); selecting them with the plan's index gives every sequence its own entries in
    batch order, which is the order the model scatters them into the placeholder tokens. The grids stay
    in `inputs` for M-RoPE.
    """
    encoded = {}
    for modality, pixel_key, _ in _MODALITIES:
        if modality not in plan:
            continue
        pixels, grids, index = plan[modality]
        pooled, deepstack, output_type = encode_vision(
            inner, modality, pixels.to(device), grids.to(device), chunk_frames=chunk_frames, checkpointing=checkpointing
        )
        fields: dict[str, Any] = {"pooler_output": tuple(pooled[j] for j in index)}
        if deepstack is not None:
            fields["deepstack_features"] = [tuple(layer[j] for j in index) for layer in deepstack]
        encoded[modality] = output_type(**fields)
        inputs = {k: v for k, v in inputs.items() if k != pixel_key}
    return {**inputs, "mm_encoder_outputs": encoded}


def _can_cache(model: torch.nn.Module, inner: torch.nn.Module) -> bool:
    """Whether `_prompt_once_logits` may run: a cache with gradients through it, M-RoPE offsets to read, and no
    DDP wrapper (its gradient hooks expect one forward per backward)."""
    return (
        not isinstance(model, torch.nn.parallel.DistributedDataParallel)
        and not _checkpoints_layers(inner)  # transformers turns the cache off then
        and hasattr(getattr(inner, "model", None), "rope_deltas")
    )


def _checkpoints_layers(inner: torch.nn.Module) -> bool:
    name = (
        "is_activation_checkpointing"
        if hasattr(type(inner), "is_activation_checkpointing")
        else "is_gradient_checkpointing"
    )
    return bool(getattr(inner, name, False))


def _prompt_once_logits(
    model: torch.nn.Module,
    inner: torch.nn.Module,
    inputs: dict[str, torch.Tensor],
    batch: dict[str, torch.Tensor],
    plan: VisionPlan,
    Lc: int,
    device: torch.device,
    chunk_frames: int,
    checkpointing: bool,
) -> torch.Tensor:
    """(B, Lc, V) logits predicting each completion token, with each distinct prompt run once through the model.

    Pass 1 runs the U distinct prompts (right-padded to the longest, T tokens; their media encoded once)
    with a cache, keeping the logits of each prompt's last token: they predict completion token 0. The
    cache rows are then repeated for the sequences of each group (`reorder_cache`, an index_select: the
    gradient of a prompt's keys and values is the sum over its group). Pass 2 runs the B completions on that
    cache: tokens 0 .. Lc-2 of each completion (the last predicts nothing), mask = [prompt mask of the row's
    prompt | completion mask], M-RoPE positions of completion token j = prompt length + j + the prompt's
    `rope_deltas` (text positions continue after the prompt's largest position, as in generation). A sequence's
    numbers are those of the full forward: causal attention makes the prompt's states independent of
    what follows it (tested against `completion_logprobs` without `prompt_once`).
    """
    group = batch["prompt_group"].to(device)  # (B,)
    U = int(group.max()) + 1
    first = torch.stack([torch.nonzero(group == u)[0, 0] for u in range(U)])  # (U,) a row of each prompt
    prompt_lengths = batch["prompt_lengths"].to(device)
    T = int(prompt_lengths.max())
    ids = inputs["input_ids"]
    prompt_mask = (torch.arange(T, device=device)[None, :] < prompt_lengths[first][:, None]).long()  # (U, T)
    head: dict[str, Any] = {"input_ids": ids[first, :T] * prompt_mask, "attention_mask": prompt_mask}
    if "mm_token_type_ids" in inputs:
        head["mm_token_type_ids"] = inputs["mm_token_type_ids"][first, :T] * prompt_mask
    identity = {}
    for modality, _, grid_key in _MODALITIES:
        if modality in plan:
            pixels, grids, index = plan[modality]
            head[grid_key] = grids.to(device)
            identity[modality] = (pixels, grids, list(range(int(grids.shape[0]))))
            if modality == "video" and "second_per_grid_ts" in inputs:  # one per video row: take each first use
                head["second_per_grid_ts"] = inputs["second_per_grid_ts"][[index.index(j) for j in range(len(grids))]]
    head = _with_shared_vision(inner, head, identity, device, chunk_frames, checkpointing)
    out = model(**head, logits_to_keep=(prompt_lengths[first] - 1)[:, None], use_cache=True)
    first_logits, cache = out.logits, out.cache  # (U, 1, V)
    deltas = inner.model.rope_deltas  # (U, 1): M-RoPE offsets of the distinct prompts
    inner.model.rope_deltas = None  # stale for any later forward
    cache.reorder_cache(group)
    steps = torch.arange(Lc, device=device)
    columns = (prompt_lengths[:, None] + steps).clamp(max=ids.shape[1] - 1)  # (B, Lc)
    completion = ids.gather(1, columns)
    completion_mask = batch["completion_mask"].to(device).gather(1, columns)
    positions = (prompt_lengths[:, None] + steps + deltas[group]).expand(3, -1, -1)  # (3, B, Lc), text positions
    if Lc == 1:
        return first_logits[group]
    keep = Lc - 1  # the last completion token predicts nothing
    tail = model(
        input_ids=completion[:, :keep],
        attention_mask=torch.cat([prompt_mask[group], completion_mask[:, :keep]], dim=1),
        position_ids=positions[..., :keep],
        cache=cache,
        use_cache=True,
    ).logits  # (B, Lc - 1, V)
    return torch.cat([first_logits[group], tail], dim=1)


def encode_vision(
    model: torch.nn.Module,
    modality: str,
    pixels: torch.Tensor,
    grids: torch.Tensor,
    *,
    chunk_frames: int = 0,
    checkpointing: bool = False,
) -> tuple[list[torch.Tensor], list[list[torch.Tensor]] | None, type]:
    """Features of each image or video (`get_image_features` / `get_video_features` of a Qwen-VL model).

    Returns (one merged feature tensor per item, per-layer deepstack features per item or None, the
    output class). `chunk_frames` = 0 encodes all items in one call. `chunk_frames` = c > 0 encodes one
    item at a time and a video c frames at a time: ceil(c / temporal_patch_size) temporal patches, i.e. the
    contiguous patch rows t0*h*w ... t1*h*w of its (t, h, w) grid, encoded as a clip of grid (t1 - t0, h, w).
    This equals one call because the Qwen-VL vision towers never mix temporal patches: attention is
    limited to one temporal patch (`cu_seqlens` per frame, Qwen2.5-VL's windows inside a frame), positions
    depend on (h, w) only, and the merger pools 2x2 neighbours of one frame (tested to float rounding).

    `checkpointing` wraps each call in `torch.utils.checkpoint` (non-reentrant): the backward keeps the
    call's pixels, not its activations, and runs the call again. With chunks, at most one chunk's
    activations exist at a time in forward and backward. It is skipped when nothing would be kept anyway:
    no gradients enabled, or no trainable parameter in the vision module (`train.freeze_vision` together
    with `train.freeze_projector`; with the tower alone frozen the merger still trains, and only its
    activations are kept).
    """
    encode = getattr(model, f"get_{modality}_features")
    visual = getattr(model, "visual", None) or getattr(getattr(model, "model", None), "visual", None)
    trainable = visual is None or any(p.requires_grad for p in visual.parameters())
    checkpointing = checkpointing and torch.is_grad_enabled() and trainable
    output_type: list[type] = []

    def run(px: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = encode(px, grid, return_dict=True)
        if not output_type:
            output_type.append(type(out))
        deep = getattr(out, "deepstack_features", None) or []
        return (*out.pooler_output, *(f for layer in deep for f in layer))  # items, then layers x items

    sizes = grids.prod(-1).tolist()
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    if chunk_frames > 0:
        vision_config = getattr(getattr(model, "config", None), "vision_config", None)
        step = -(-chunk_frames // int(getattr(vision_config, "temporal_patch_size", 2)))  # temporal patches per call
        calls = []  # (items, first row, end row, grids of the call)
        for i, (t, h, w) in enumerate(grids.tolist()):
            for t0 in range(0, t, step):
                t1 = min(t, t0 + step)
                part = torch.tensor([[t1 - t0, h, w]], dtype=grids.dtype, device=grids.device)
                calls.append(([i], starts[i] + t0 * h * w, starts[i] + t1 * h * w, part))
    else:
        calls = [(list(range(len(sizes))), 0, int(pixels.shape[0]), grids)]

    pooled: list[list[torch.Tensor]] = [[] for _ in sizes]
    deepstack: list[list[list[torch.Tensor]]] = []
    for items, begin, end, grid in calls:
        args = (pixels[begin:end], grid)
        parts = checkpoint(run, *args, use_reentrant=False) if checkpointing else run(*args)
        n = len(items)
        layers = (len(parts) - n) // n
        while len(deepstack) < layers:
            deepstack.append([[] for _ in sizes])
        for k, item in enumerate(items):
            pooled[item].append(parts[k])
            for layer in range(layers):
                deepstack[layer][item].append(parts[n + layer * n + k])
    features = [_join(p) for p in pooled]
    deep_features = [[_join(p) for p in layer] for layer in deepstack] if deepstack else None
    return features, deep_features, output_type[0]


def _join(pieces: list[torch.Tensor]) -> torch.Tensor:
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def _score(
    logits: torch.Tensor, targets: torch.Tensor, suppressed: torch.Tensor, temperature: float, with_entropy: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(target), entropy) per position of a (B, c, V) logits chunk; entropy is zeros when not asked."""
    x = logits.float() / temperature  # (B, c, V)
    if suppressed.numel():
        x = x.index_fill(-1, suppressed, torch.finfo(x.dtype).min)  # finite: keeps 0 * x free of NaN
    logp = F.log_softmax(x, dim=-1)
    lp = logp.gather(-1, targets[..., None]).squeeze(-1)  # (B, c)
    if not with_entropy:
        return lp, torch.zeros_like(lp)
    return lp, -(logp.exp() * logp).sum(-1)
