"""Generation with vLLM's offline `LLM` (GPU, optional extra: `pip install mmrl[vllm]`, versions in
requirements-gpu.lock).

vLLM runs its own copy of the processor on the raw media, so an `EncodedPrompt` carries the loaded
images and frames (`EncodedPrompt.media`) next to the templated text, and vLLM is given
`{"prompt": text, "multi_modal_data": {"image": [...], "video": [(frames, metadata), ...]}}`. To make
vLLM's processor the same as ours we start it from a folder holding the checkpoint's files plus our
processor (pixel budgets, frame sampling off), and every result is checked: vLLM's prompt token ids
must equal the trainer's `input_ids`, else we raise instead of training on mismatched visual tokens
(R3 in docs/requirements.md).

Checked against the source of vLLM 0.30.0 and 0.34.0 (file:line below is "0.34 path:line / 0.30
path:line"; where the two differ, the engine detects the feature, it does not pin one):

- Image/video placeholder tokens are never sampled: they get `logit_bias` -100 (the most negative
  bias vLLM keeps, sampling_params.py:512 / :438). A whole-vocabulary `allowed_token_ids` fails: the
  GPU sampler of Model Runner V2 (the default on CUDA in both: config/vllm.py:675-722 in 0.30) holds
  at most 1,024 allowed ids or biased ids per request (v1/worker/gpu/sample/logit_bias.py:20-21,
  raised at :66 / :10-11). The bias is added before
  temperature (v1/worker/gpu/sample/sampler.py:251-262), so a placeholder's probability is at most
  exp(-100 / T) times the top token's: under 1e-30 for T <= 1.4.
- Every prompt gets its own seed, derived from the call seed and the prompt's index
  (`prompt_seeds`). vLLM seeds the n completions of one request seed, seed+1, ..., seed+n-1
  (v1/engine/parallel_sampling.py:81 / :79): with one seed per call, every prompt of a batch drew
  the same noise.
- Videos go as `(frames, metadata)` for every family. Qwen2.5-VL's time positions use
  second_per_grid_ts = temporal_patch_size / sampled_fps, computed by the HF processor from that
  metadata. vLLM 0.34 requires it ("Video metadata is required", multimodal/parse.py:827) and hands
  it to the HF processor (models/qwen2_5_vl.py:1214-1231). vLLM 0.30 drops it for Qwen2.5-VL
  (multimodal/parse.py:788-796, no metadata hook in models/qwen2_5_vl.py), and transformers then
  assumes 24 fps; there we pass it as the processor kwarg `video_metadata` instead, and turn vLLM's
  processor cache off, since on a partial cache hit it reprocesses only the missing items with the
  full kwargs (multimodal/processing/processor.py:1402-1437 in 0.30).
- Weights go from the training model to vLLM in-process: a `worker_extension_cls` whose methods run
  on every worker through `LLM.collective_rpc` (entrypoints/llm.py:583 / :567), loading through the
  worker's own `reload_weights(weights_iterator=...)` where it exists (v1/worker/gpu_worker.py:645 /
  :523), else `model.load_weights`. We keep the engine core in this process
  (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) so the tensors are handed over, not serialised.
- After every sync, the prefix cache (KV of old weights, entrypoints/llm.py:842 / :796), the
  processor cache (llm.py:416 / :407) and the encoder cache (vision embeddings of old weights,
  v1/engine/llm_engine.py:418 / :364) are reset.
- The sync is verified per tensor (`tensor_checksums`, `compare_checksums`): each engine parameter's
  (sum, sum of squares) in float64 against those of the trainer tensors loaded into it. The pair is
  additive, so it is unchanged by vLLM's fusing of q/k/v and gate/up and by vocabulary padding
  (zero-filled, layers/vocab_parallel_embedding.py:525). Names are mapped with the model's own
  `hf_to_vllm_mapper` and `packed_modules_mapping` (models/qwen2_5_vl.py:1306-1321,
  qwen3_vl.py:1952-1978).
- The trainer's model is unwrapped first (DDP `.module`, torch.compile `._orig_mod`, peft), and peft
  LoRA layers are sent merged under the base model's names (`policy_weights`).

Log-probs: vLLM is started with `logprobs_mode="processed_logprobs"` (config/model.py:107), i.e.
after the bias, temperature and top-k/top-p, the same definition as `HFEngine`.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mmrl.contracts import Completion, EncodedPrompt, SamplingParams
from mmrl.errors import MMRLError
from mmrl.models import hub_offline
from mmrl.rollout.forward import suppressed_token_ids, unwrap_model

if TYPE_CHECKING:
    from transformers import ProcessorMixin

    from mmrl.config import RolloutConfig

log = logging.getLogger(__name__)

PLACEHOLDER_BIAS = -100.0
"""Logit bias of image/video placeholder tokens: vLLM clamps biases to [-100, 100] (sampling_params.py:512)."""

MAX_BIASED_TOKENS = 1024
"""vLLM's per-request cap on `logit_bias` entries (and on `allowed_token_ids`): gpu/sample/logit_bias.py:20-21."""

CHECKSUM_TOLERANCE = 1e-9
"""Relative difference of an engine parameter's checksums from the trainer's that counts as a failed sync.

Both sides hold the same bfloat16 (or float16/float32) values; the float64 sums differ only by
summation order (~1e-16 per addition), so 1e-9 is far above rounding yet detects a one-ulp change of
a single element in a tensor of up to ~10^6 elements through the sum of squares."""

CHECKSUM_CHUNK = 1 << 22
"""Elements per float64 chunk when summing a tensor: bounds the temporary copy at 32 MiB per tensor."""

DEFAULT_PACKED_MODULES = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
"""vLLM's fusing of HF projections, for models that do not declare `packed_modules_mapping`."""

Checksum = tuple[int, float, float]
"""(number of elements, sum, sum of squares) of one tensor, accumulated in float64."""


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise MMRLError(
            "rollout.engine=vllm needs vLLM: pip install mmrl[vllm] on a CUDA machine, versions in "
            "requirements-gpu.lock (or use rollout.engine=hf)"
        ) from None
    return vllm


class VLLMEngine:
    """`Engine` on a colocated vLLM `LLM` (same GPU, same process as the trainer, one worker).

    `model_path` is the policy's checkpoint (local folder or hub id); `processor` is the trainer's
    processor, whose settings vLLM then uses too. Weights of the live policy are pushed with
    `sync_weights` (call it after each optimiser step, and once at start when the policy does not
    come straight from `model_path`).
    """

    def __init__(
        self,
        model_path: str,
        processor: ProcessorMixin,
        *,
        dtype: torch.dtype = torch.bfloat16,
        gpu_memory_utilization: float = 0.5,
        max_model_len: int = 4096,
        seed: int = 0,
        limit_mm_per_prompt: dict[str, int] | None = None,
    ):
        vllm = _import_vllm()
        if not torch.cuda.is_available():
            raise MMRLError("rollout.engine=vllm needs a CUDA GPU; use rollout.engine=hf on this machine")
        # Engine core in this process: collective_rpc then hands tensors to the worker without pickling.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.dtype = dtype
        qwen25 = type(processor).__name__.startswith("Qwen2_5_VL")
        # Qwen2.5-VL on a vLLM that drops video metadata (0.30): the metadata goes as a processor kwarg.
        self.video_metadata_kwargs = qwen25 and not _vllm_passes_qwen25_video_metadata()
        self._folder = _model_folder(model_path, processor)  # kept alive as long as the engine
        kwargs: dict[str, Any] = dict(
            model=self._folder.name,
            dtype=str(dtype).removeprefix("torch."),
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            seed=seed,
            worker_extension_cls=f"{__name__}.MMRLWorkerExtension",
            limit_mm_per_prompt=limit_mm_per_prompt or {"image": 8, "video": 2},
        )
        if self.video_metadata_kwargs:
            kwargs["mm_processor_cache_gb"] = 0  # see the module docstring (partial cache hits)
        if _version_at_least(vllm.__version__, (0, 10, 2)):
            kwargs["logprobs_mode"] = "processed_logprobs"
        else:
            log.warning("vLLM %s reports raw (untempered) log-probs; mean |Δ| vs trainer is meaningful only at T=1",
                        vllm.__version__)  # fmt: skip
        self.llm = vllm.LLM(**kwargs)
        self._sampling_cls = vllm.SamplingParams
        self._rng = np.random.default_rng(seed)
        self.banned_ids = suppressed_token_ids(self.llm.llm_engine.model_config.hf_config)
        self.eos_ids = _eos_ids(Path(self._folder.name), self.tokenizer)
        self.last_sync: dict[str, Any] = {}

    @classmethod
    def from_model(
        cls, model: torch.nn.Module, processor: ProcessorMixin, cfg: RolloutConfig, *, seed: int = 0
    ) -> VLLMEngine:
        """Engine for the policy `model` (its checkpoint path and dtype; wrappers looked through), synced once."""
        inner = unwrap_model(model)
        config = getattr(inner, "config", None)
        path = getattr(inner, "name_or_path", "") or getattr(config, "_name_or_path", "")
        if not path:
            raise MMRLError("rollout.engine=vllm needs the policy's checkpoint path (model.name_or_path is empty)")
        engine = cls(
            path,
            processor,
            dtype=next(inner.parameters()).dtype,
            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            max_model_len=cfg.max_prompt_tokens + cfg.max_new_tokens,
            seed=seed,
        )
        engine.sync_weights(model)
        return engine

    def generate(self, prompts: list[EncodedPrompt], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        """`n` completions per prompt (vLLM's `SamplingParams(n=...)`), prompt i seeded by `prompt_seeds`
        (or by `sampling.prompt_seeds[i]` when the caller names them)."""
        call_seed = sampling.seed if sampling.seed is not None else int(self._rng.integers(0, 2**62))
        seeds = sampling.prompt_seeds if sampling.prompt_seeds is not None else prompt_seeds(call_seed, len(prompts))
        if len(seeds) != len(prompts):
            raise MMRLError(f"prompt_seeds has {len(seeds)} seeds for {len(prompts)} prompts")
        params = [
            self._sampling_cls(**kw)
            for kw in sampling_kwargs(sampling, n, seeds=seeds, stop_ids=self.eos_ids, banned=self.banned_ids)
        ]
        requests = [vllm_request(p, video_metadata_kwargs=self.video_metadata_kwargs) for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=False)  # one SamplingParams per prompt: llm.py:427
        results = []
        for prompt, out in zip(prompts, outputs):
            _check_prompt(prompt, list(out.prompt_token_ids or []), self.tokenizer)
            results.append([self._completion(c) for c in out.outputs])
        return results

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Load `model`'s weights into vLLM, reset vLLM's caches, compare per-tensor checksums.

        `last_sync` keeps the outcome: `ok`, the number of engine parameters checked, the mismatched
        ones and the trainer tensors vLLM has no parameter for. A failed check is logged as a warning.
        """
        weights = policy_weights(model, self.dtype)
        trainer = tensor_checksums(weights)
        reports = self.llm.collective_rpc("mmrl_load_weights", args=(weights,))
        self._reset_caches()
        report = reports[0]
        mismatched = compare_checksums(trainer, report["groups"], report["checksums"])
        checked = len(report["groups"])
        ok = checked > 0 and not mismatched and len(reports) == 1
        self.last_sync = {
            "ok": ok,
            "checked": checked,
            "mismatched": mismatched,
            "unmatched": report["unmatched"],
            "workers": len(reports),
        }
        log.info("vllm weight sync: %d engine tensors checked, %d mismatched, %d trainer tensors without an engine "
                 "parameter", checked, len(mismatched), len(report["unmatched"]))  # fmt: skip
        if report["unmatched"]:
            log.warning("vllm weight sync: no engine parameter for %s", ", ".join(report["unmatched"][:8]))
        if len(reports) != 1:
            log.warning("vllm weight sync: %d workers (tensor parallel); checksums are compared for one unsharded "
                        "worker only", len(reports))  # fmt: skip
        if mismatched:
            log.warning("vllm weight sync: checksums differ for %s; the engine may sample from stale weights",
                        ", ".join(mismatched[:8]))  # fmt: skip

    def _reset_caches(self) -> None:
        """Forget KV blocks and vision embeddings computed with the previous weights (feature-detected)."""
        if not self.llm.reset_prefix_cache():
            log.warning("vllm: the prefix cache could not be reset (requests still running)")
        self.llm.reset_mm_cache()
        reset_encoder = getattr(self.llm.llm_engine, "reset_encoder_cache", None)
        if callable(reset_encoder):
            reset_encoder()

    def _completion(self, c: Any) -> Completion:
        ids = list(c.token_ids)
        logprobs = [float(step[token].logprob) for step, token in zip(c.logprobs or [], ids)]
        if len(logprobs) != len(ids):
            raise MMRLError(f"vLLM returned {len(logprobs)} log-probs for {len(ids)} tokens")
        stopped = c.finish_reason == "stop" or (ids and ids[-1] in self.eos_ids)
        return Completion(ids, logprobs, c.text, "stop" if stopped else "length")


def prompt_seeds(call_seed: int, count: int) -> list[int]:
    """One seed per prompt: the first word of `SeedSequence([call_seed, i])`, in [0, 2^62).

    Deterministic in (call_seed, i), independent across i. vLLM seeds request i's n completions
    seed_i + j (parallel_sampling.py:81), so seeds that are 62-bit random, not consecutive, keep the
    prompts' ranges disjoint with overwhelming probability and never overflow int64.
    """
    if call_seed < 0:
        raise MMRLError(f"sampling seed must be >= 0, got {call_seed}")
    return [int(np.random.SeedSequence([call_seed, i]).generate_state(1, np.uint64)[0] >> 2) for i in range(count)]


def sampling_kwargs(
    sampling: SamplingParams, n: int, *, seeds: Sequence[int], stop_ids: Sequence[int], banned: Sequence[int]
) -> list[dict[str, Any]]:
    """Keyword arguments of `vllm.SamplingParams` for each prompt (field names: sampling_params.py:285-450).

    `banned` token ids (the image/video placeholders) get `PLACEHOLDER_BIAS`; `stop_ids` end a completion.
    """
    if len(banned) > MAX_BIASED_TOKENS:
        raise MMRLError(f"{len(banned)} banned tokens exceed vLLM's logit_bias cap of {MAX_BIASED_TOKENS}")
    if n < 1:
        raise MMRLError(f"completions per prompt must be >= 1, got {n}")
    common: dict[str, Any] = dict(
        n=n,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k if sampling.top_k > 0 else -1,  # -1: off in every vLLM version
        max_tokens=sampling.max_new_tokens,
        min_tokens=sampling.min_new_tokens,
        logprobs=0,  # the sampled token's log-prob only
        stop_token_ids=list(stop_ids),
        skip_special_tokens=True,
    )
    if banned:
        common["logit_bias"] = {int(i): PLACEHOLDER_BIAS for i in banned}
    return [{**common, "seed": int(seed)} for seed in seeds]


def vllm_request(prompt: EncodedPrompt, *, video_metadata_kwargs: bool = False) -> dict[str, Any]:
    """vLLM's prompt dict for one encoded prompt: templated text + raw media.

    Videos go as (frames, metadata) with frame sampling off, so vLLM's processor sees the frames we
    decoded and the fps they were sampled at (Qwen3-VL timestamps, Qwen2.5-VL second_per_grid_ts).
    `video_metadata_kwargs`: also pass the metadata as the HF processor kwarg `video_metadata`, for
    vLLM versions that drop it (0.30 for Qwen2.5-VL; see the module docstring).
    """
    if not prompt.text:
        raise MMRLError("the vLLM engine needs EncodedPrompt.text (encode prompts with mmrl.rollout.encode)")
    mm: dict[str, list] = {}
    if prompt.media.get("image"):
        mm["image"] = list(prompt.media["image"])
    request: dict[str, Any] = {"prompt": prompt.text}
    videos = prompt.media.get("video") or []
    for i, (_, meta) in enumerate(videos):
        missing = {"fps", "frames_indices", "total_num_frames"} - set(meta)
        if missing:
            raise MMRLError(f"video {i} of the prompt has no {sorted(missing)} in its metadata (mmrl.rollout.encode)")
    if videos:
        # copies: Qwen3-VL's timestamp helper extends frames_indices in place
        mm["video"] = [(frames, {**meta, "frames_indices": list(meta["frames_indices"]), "do_sample_frames": False})
                       for frames, meta in videos]  # fmt: skip
    if videos and video_metadata_kwargs:
        # transformers' VideoMetadata(**dict) takes no do_sample_frames (video_utils.make_batched_metadata)
        request["mm_processor_kwargs"] = {
            "video_metadata": [{**meta, "frames_indices": list(meta["frames_indices"])} for _, meta in videos]
        }
    if prompt.num_visual_tokens and not mm:
        raise MMRLError("the vLLM engine needs the prompt's media: encode with keep_media=True")
    if mm:
        request["multi_modal_data"] = mm
    return request


class MMRLWorkerExtension:
    """Methods vLLM mixes into its workers (`worker_extension_cls`); called through `LLM.collective_rpc`."""

    def mmrl_load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> dict[str, Any]:
        """Load HF-named tensors (vLLM maps names and fuses q/k/v, gate/up); return the checksum report.

        The report: `groups` engine name -> HF names loaded into it, `checksums` engine name ->
        `Checksum`, `unmatched` HF names with no engine parameter.
        """
        reload = getattr(self, "reload_weights", None)  # Worker.reload_weights: gpu_worker.py:645 / :523
        if callable(reload):
            reload(weights_iterator=iter(weights), is_checkpoint_format=True)
        else:
            self._mmrl_model().load_weights(weights=weights)
        return self.mmrl_checksums([name for name, _ in weights])

    def mmrl_checksums(self, hf_names: list[str]) -> dict[str, Any]:
        """Checksum report (see `mmrl_load_weights`) of the engine parameters that `hf_names` load into."""
        model = self._mmrl_model()
        params = dict(model.named_parameters())
        mapper = getattr(model, "hf_to_vllm_mapper", None)
        # WeightsMapper.map_name (0.34 models/utils.py:91) is _map_name in 0.30 (utils.py:76)
        map_name = getattr(mapper, "map_name", None) or getattr(mapper, "_map_name", None)
        packed = getattr(model, "packed_modules_mapping", None) or DEFAULT_PACKED_MODULES
        groups, unmatched = engine_param_groups(hf_names, params.keys(), map_name, packed)
        return {
            "groups": groups,
            "checksums": tensor_checksums((name, params[name]) for name in groups),
            "unmatched": unmatched,
        }

    def _mmrl_model(self) -> torch.nn.Module:
        runner = self.model_runner  # type: ignore[attr-defined]
        get_model = getattr(runner, "get_model", None)
        return get_model() if callable(get_model) else runner.model


def engine_param_groups(
    hf_names: Iterable[str],
    engine_names: Iterable[str],
    map_name: Callable[[str], str | None] | None,
    packed: Mapping[str, Sequence[str]],
) -> tuple[dict[str, list[str]], list[str]]:
    """Which HF tensors land in which engine parameter, and the HF names that land nowhere.

    A name is first mapped by the model's `hf_to_vllm_mapper` (`map_name`; None drops the tensor,
    e.g. a tied lm_head), then, if that is not an engine parameter, each dotted component that is a
    member of a fused module (`packed`, e.g. q_proj in qkv_proj) is replaced by the fused name.
    """
    engine = set(engine_names)
    groups: dict[str, list[str]] = {}
    unmatched: list[str] = []
    for hf_name in hf_names:
        mapped = map_name(hf_name) if map_name is not None else hf_name
        target = _engine_name(mapped, engine, packed) if mapped is not None else None
        if target is None:
            unmatched.append(hf_name)
        else:
            groups.setdefault(target, []).append(hf_name)
    return groups, unmatched


def _engine_name(name: str, engine: set[str], packed: Mapping[str, Sequence[str]]) -> str | None:
    if name in engine:
        return name
    parts = name.split(".")
    for i, part in enumerate(parts):
        for fused, members in packed.items():
            if part in members and part != fused:
                candidate = ".".join([*parts[:i], fused, *parts[i + 1 :]])
                if candidate in engine:
                    return candidate
    return None


def tensor_checksums(named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, Checksum]:
    """name -> (numel, Σx, Σx²) in float64, summed in chunks of `CHECKSUM_CHUNK` elements.

    Additive over concatenation (a fused qkv equals q + k + v) and over zero padding, unlike a hash;
    per tensor, unlike one global sum, which a change in one tensor hides among billions of
    elements. The tensors are not copied whole: at most one float64 chunk lives at a time, and the
    results come back to the host in one transfer.
    """
    names, sums = [], []
    for name, t in named:
        flat = t.detach().reshape(-1)
        s = torch.zeros(2, dtype=torch.float64, device=flat.device)
        for chunk in flat.split(CHECKSUM_CHUNK):
            c = chunk.double()
            s[0] += c.sum()
            s[1] += c.square().sum()
        names.append((name, flat.numel()))
        sums.append(s)
    values = torch.stack([s.to(sums[0].device) for s in sums]).tolist() if sums else []
    return {name: (numel, v[0], v[1]) for (name, numel), v in zip(names, values)}


def compare_checksums(
    trainer: Mapping[str, Checksum],
    groups: Mapping[str, Sequence[str]],
    engine: Mapping[str, Checksum],
    *,
    tolerance: float = CHECKSUM_TOLERANCE,
) -> list[str]:
    """Engine parameters whose checksums differ from the sum of their trainer tensors' (sorted names).

    |Σx_e - Σx_t| must be <= tolerance * sqrt(n_t Σx²_t) (>= tolerance * Σ|x|, Cauchy-Schwarz) and
    |Σx²_e - Σx²_t| <= tolerance * Σx²_t. Element counts are not compared: vLLM pads the vocabulary.
    """
    bad = []
    for engine_name, hf_names in groups.items():
        n = sum(trainer[h][0] for h in hf_names)
        s = sum(trainer[h][1] for h in hf_names)
        q = sum(trainer[h][2] for h in hf_names)
        _, s_e, q_e = engine[engine_name]
        scale = float(np.sqrt(n * q))
        if abs(s_e - s) > tolerance * scale or abs(q_e - q) > tolerance * q:
            bad.append(engine_name)
    return sorted(bad)


_LORA_PARAM = re.compile(r"(^|\.)lora_[A-Za-z_]+(\.|$)")
_SAVED_COPY = re.compile(r"\.modules_to_save\.[^.]+\.")


def policy_weights(model: torch.nn.Module, dtype: torch.dtype | None = None) -> list[tuple[str, torch.Tensor]]:
    """The policy's parameters under the plain transformers model's names, LoRA merged, in `dtype`.

    Looks through DDP / DataParallel (`.module`), torch.compile (`._orig_mod`) and peft
    (`get_base_model()`) wrappers. A peft LoRA layer's weight is sent as base + Σ active adapters'
    delta (peft's `get_delta_weight`, i.e. scaling * B @ A) under the base name (`x.base_layer.weight`
    -> `x.weight`); adapter tensors are not sent; a `modules_to_save` copy replaces the original.
    The trainer's model is not modified. Tensors already in `dtype` are not copied.
    """
    inner = unwrap_model(model)
    merged: dict[str, torch.Tensor] = {}
    for module_name, module in inner.named_modules():
        if not _is_lora_layer(module):
            continue
        base = module.base_layer.weight
        weight = base.detach()
        if not getattr(module, "merged", False) and not getattr(module, "disable_adapters", False):
            for adapter in _active_adapters(module):
                if getattr(module, "use_dora", {}).get(adapter, False):
                    raise MMRLError(f"{module_name}: DoRA adapters cannot be merged on the fly; merge_and_unload first")
                with torch.no_grad():
                    weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
        merged[f"{module_name}.base_layer.weight" if module_name else "base_layer.weight"] = weight
    out: dict[str, torch.Tensor] = {}
    for name, p in inner.named_parameters():
        if _LORA_PARAM.search(name) or ".original_module." in name:
            continue
        tensor = merged.get(name, p.detach())
        plain = _SAVED_COPY.sub(".", name).replace(".base_layer.", ".")
        if plain in out:
            raise MMRLError(f"two parameters map to '{plain}' (several modules_to_save adapters?); merge first")
        out[plain] = tensor if dtype is None else tensor.to(dtype)
    return list(out.items())


def _is_lora_layer(module: torch.nn.Module) -> bool:
    """A peft LoRA layer (duck-typed: peft is optional): a wrapped `base_layer` and `get_delta_weight`."""
    return (
        isinstance(getattr(module, "base_layer", None), torch.nn.Module)
        and callable(getattr(module, "get_delta_weight", None))
        and isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict)
        and isinstance(getattr(module.base_layer, "weight", None), torch.Tensor)
    )


def _active_adapters(module: torch.nn.Module) -> list[str]:
    active = getattr(module, "active_adapters", None) or getattr(module, "active_adapter", [])
    active = [active] if isinstance(active, str) else list(active)
    return [a for a in active if a in module.lora_A]


def _vllm_passes_qwen25_video_metadata() -> bool:
    """Whether this vLLM hands Qwen2.5-VL's (frames, metadata) metadata to the HF processor.

    vLLM 0.34's Qwen2.5-VL processor overrides `_get_hf_mm_inputs` for that (models/qwen2_5_vl.py:1214);
    0.30's does not.
    """
    try:
        from vllm.model_executor.models import qwen2_5_vl
    except ImportError:
        return True
    return "_get_hf_mm_inputs" in vars(qwen2_5_vl.Qwen2_5_VLMultiModalProcessor)


def _check_prompt(prompt: EncodedPrompt, engine_ids: list[int], tokenizer: Any) -> None:
    """vLLM's prompt must be token-for-token the trainer's, or log-probs would be computed on another input."""
    ours = prompt.input_ids.tolist()
    if engine_ids == ours:
        return
    at = next((i for i, (a, b) in enumerate(zip(ours, engine_ids)) if a != b), min(len(ours), len(engine_ids)))
    raise MMRLError(
        f"vLLM encoded the prompt differently from the trainer ({len(engine_ids)} vs {len(ours)} tokens, first "
        f"difference at token {at}: {tokenizer.decode(engine_ids[at : at + 8])!r} vs "
        f"{tokenizer.decode(ours[at : at + 8])!r}); check that vLLM's processor settings match model.* pixel budgets"
    )


def _model_folder(model_path: str, processor: ProcessorMixin) -> tempfile.TemporaryDirectory:
    """A temporary folder with our processor's files and links to every other file of the checkpoint."""
    source = Path(model_path)
    if not source.is_dir():
        from huggingface_hub import snapshot_download

        # The policy was loaded from this hub id already (mmrl.models.load_policy, which downloads only with
        # model.allow_download): its files are in the cache, and nothing more is fetched here.
        try:
            with hub_offline(True):
                source = Path(snapshot_download(model_path, local_files_only=True))
        except Exception as e:  # huggingface_hub's LocalEntryNotFoundError and kin
            raise MMRLError(f"rollout.engine=vllm: '{model_path}' is not in the Hugging Face cache: {e}") from None
    folder = tempfile.TemporaryDirectory(prefix="mmrl-vllm-")
    processor.save_pretrained(folder.name)  # written first: links must never be written through
    for f in source.iterdir():
        target = Path(folder.name) / f.name
        if f.is_file() and not target.exists():
            target.symlink_to(f.resolve())
    return folder


def _eos_ids(folder: Path, tokenizer: Any) -> list[int]:
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(folder).eos_token_id
    except OSError:
        eos = None
    eos = eos if eos is not None else tokenizer.eos_token_id
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def _version_at_least(version: str, minimum: tuple[int, ...]) -> bool:
    parts = []
    for piece in version.split("+")[0].split(".")[: len(minimum)]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts) >= minimum
