"""Generation with vLLM's offline `LLM` (GPU, optional extra: `pip install mmrl[vllm]`).

vLLM runs its own copy of the processor on the raw media, so an `EncodedPrompt` carries the loaded
images and frames (`EncodedPrompt.media`) next to the templated text, and vLLM is given
`{"prompt": text, "multi_modal_data": {"image": [...], "video": [...]}}` (vLLM docs,
features/multimodal_inputs.md, "Offline Inference"). To make vLLM's processor the same as ours we
start it from a folder holding the checkpoint's files plus our processor (pixel budgets, frame
sampling off), and every result is checked: vLLM's prompt token ids must equal the trainer's
`input_ids`, else we raise instead of training on mismatched visual tokens (R3 in docs/requirements.md).

Weights go from the training model to vLLM in-process: vLLM's documented RLHF pattern is a
`worker_extension_cls` whose methods run on every worker through `LLM.collective_rpc(name, args=...)`
(vLLM examples/offline_inference/rlhf.py and rlhf_utils.py), and load tensors with
`model_runner.model.load_weights(weights=[(name, tensor), ...])`. We keep the engine core in this
process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) so the tensors are handed over, not serialised. After
each sync the engine's parameter checksum is logged next to the trainer's (R6).

Log-probs: vLLM is started with `logprobs_mode="processed_logprobs"` (vLLM >= 0.10.2), i.e. after
temperature and top-k/top-p, the same definition as `HFEngine`. This module is written against
vLLM's documented API and has not been run here (vLLM does not install on CPU machines).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mmrl.contracts import Completion, EncodedPrompt, SamplingParams
from mmrl.errors import MMRLError
from mmrl.models import hub_offline
from mmrl.rollout.forward import suppressed_token_ids

if TYPE_CHECKING:
    from transformers import ProcessorMixin

    from mmrl.config import RolloutConfig

log = logging.getLogger(__name__)

CHECKSUM_TOLERANCE = 1e-3
"""Relative difference between the trainer's and the engine's weight checksums that counts as a failed sync."""


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError:
        raise MMRLError(
            "rollout.engine=vllm needs vLLM: pip install mmrl[vllm] on a CUDA machine (or use rollout.engine=hf)"
        ) from None
    return vllm


class VLLMEngine:
    """`Engine` on a colocated vLLM `LLM` (same GPU, same process as the trainer).

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
        self.qwen3 = "Qwen3" in type(getattr(processor, "video_processor", None)).__name__
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
        if _version_at_least(vllm.__version__, (0, 10, 2)):
            kwargs["logprobs_mode"] = "processed_logprobs"
        else:
            log.warning("vLLM %s reports raw (untempered) log-probs; mean |Δ| vs trainer is meaningful only at T=1",
                        vllm.__version__)  # fmt: skip
        self.llm = vllm.LLM(**kwargs)
        self._sampling_cls = vllm.SamplingParams
        self._seeds = torch.Generator().manual_seed(seed)
        vocab = self.llm.llm_engine.model_config.get_vocab_size()
        banned = set(suppressed_token_ids(self.llm.llm_engine.model_config.hf_config))
        self._allowed = [i for i in range(vocab) if i not in banned]  # placeholders are never sampled
        self.eos_ids = _eos_ids(Path(self._folder.name), self.tokenizer)
        self.last_sync: dict[str, float | bool] = {}

    @classmethod
    def from_model(
        cls, model: torch.nn.Module, processor: ProcessorMixin, cfg: RolloutConfig, *, seed: int = 0
    ) -> VLLMEngine:
        """Engine for the policy `model` (its checkpoint path and dtype), its weights synced once."""
        path = getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", "")
        if not path:
            raise MMRLError("rollout.engine=vllm needs the policy's checkpoint path (model.name_or_path is empty)")
        engine = cls(
            path,
            processor,
            dtype=next(model.parameters()).dtype,
            gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
            max_model_len=cfg.max_prompt_tokens + cfg.max_new_tokens,
            seed=seed,
        )
        engine.sync_weights(model)
        return engine

    def generate(self, prompts: list[EncodedPrompt], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        """`n` completions per prompt (vLLM's `SamplingParams(n=...)`), seeded by `sampling.seed`."""
        seed = sampling.seed
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=self._seeds))
        params = self._sampling_cls(
            n=n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else -1,  # -1: off in every vLLM version
            max_tokens=sampling.max_new_tokens,
            min_tokens=sampling.min_new_tokens,
            logprobs=0,  # the sampled token's log-prob only
            seed=seed,
            stop_token_ids=self.eos_ids,
            allowed_token_ids=self._allowed,
            skip_special_tokens=True,
        )
        outputs = self.llm.generate([vllm_request(p, qwen3=self.qwen3) for p in prompts], params, use_tqdm=False)
        results = []
        for prompt, out in zip(prompts, outputs):
            _check_prompt(prompt, list(out.prompt_token_ids or []), self.tokenizer)
            results.append([self._completion(c) for c in out.outputs])
        return results

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Load `model`'s weights into vLLM, then compare weight checksums (logged; `last_sync` keeps them)."""
        weights = _named_tensors(model, self.dtype)
        engine_sum = float(self.llm.collective_rpc("mmrl_load_weights", args=(weights,))[0])
        trainer_sum = weight_checksum(t for _, t in weights)
        rel = abs(engine_sum - trainer_sum) / max(abs(trainer_sum), 1e-12)
        ok = rel <= CHECKSUM_TOLERANCE
        self.last_sync = {"weight_checksum": engine_sum, "trainer_checksum": trainer_sum, "ok": ok}
        log.info("vllm weight sync: weight_checksum=%.8e trainer=%.8e rel_diff=%.2e", engine_sum, trainer_sum, rel)
        if not ok:
            log.warning("vllm weight sync: checksums differ by %.2e (> %.0e); the engine may sample from stale "
                        "weights, watch logprob agreement", rel, CHECKSUM_TOLERANCE)  # fmt: skip

    def _completion(self, c: Any) -> Completion:
        ids = list(c.token_ids)
        logprobs = [float(step[token].logprob) for step, token in zip(c.logprobs or [], ids)]
        if len(logprobs) != len(ids):
            raise MMRLError(f"vLLM returned {len(logprobs)} log-probs for {len(ids)} tokens")
        stopped = c.finish_reason == "stop" or (ids and ids[-1] in self.eos_ids)
        return Completion(ids, logprobs, c.text, "stop" if stopped else "length")


def vllm_request(prompt: EncodedPrompt, *, qwen3: bool) -> dict[str, Any]:
    """vLLM's prompt dict for one encoded prompt: templated text + raw media (+ video fps for Qwen2.x).

    Qwen3-VL videos go as (frames, metadata) so vLLM renders our timestamps; Qwen2(.5)-VL videos as
    frames, with the sampled fps as a per-request processor kwarg (second_per_grid_ts).
    """
    if not prompt.text:
        raise MMRLError("the vLLM engine needs EncodedPrompt.text (encode prompts with mmrl.rollout.encode)")
    mm: dict[str, list] = {}
    if prompt.media.get("image"):
        mm["image"] = list(prompt.media["image"])
    request: dict[str, Any] = {"prompt": prompt.text}
    videos = prompt.media.get("video") or []
    if videos and qwen3:
        mm["video"] = [(frames, {**meta, "do_sample_frames": False}) for frames, meta in videos]
    elif videos:
        mm["video"] = [frames for frames, _ in videos]
        fps = [len(m["frames_indices"]) / m["total_num_frames"] * m["fps"] for _, m in videos]
        request["mm_processor_kwargs"] = {"fps": fps if len(fps) > 1 else fps[0]}
    if prompt.num_visual_tokens and not mm:
        raise MMRLError("the vLLM engine needs the prompt's media: encode with keep_media=True")
    if mm:
        request["multi_modal_data"] = mm
    return request


class MMRLWorkerExtension:
    """Methods vLLM mixes into its workers (`worker_extension_cls`); called through `LLM.collective_rpc`."""

    def mmrl_load_weights(self, weights: list[tuple[str, torch.Tensor]]) -> float:
        """Load HF-named tensors (vLLM maps names and fuses q/k/v, gate/up), return the new checksum."""
        model = self.model_runner.model  # type: ignore[attr-defined]
        model.load_weights(weights=weights)
        return weight_checksum(p for _, p in model.named_parameters())

    def mmrl_weight_checksum(self) -> float:
        return weight_checksum(p for _, p in self.model_runner.model.named_parameters())  # type: ignore[attr-defined]


def weight_checksum(tensors: Any) -> float:
    """Sum of all elements in float64: unchanged by vLLM's fusing (q/k/v concat) and renaming of tensors.

    Counts each tensor once (tied embeddings share storage). Exact equality is not expected across
    dtype casts; compare with a relative tolerance.
    """
    seen: set[int] = set()
    total = 0.0
    for t in tensors:
        key = t.data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += float(t.detach().double().sum())
    return total


def _named_tensors(model: torch.nn.Module, dtype: torch.dtype) -> list[tuple[str, torch.Tensor]]:
    """The policy's HF-named parameters in the engine's dtype (a merged LoRA is the caller's job, R8)."""
    names = [n for n, _ in model.named_parameters()]
    if any("lora_" in n for n in names):
        raise MMRLError("merge LoRA adapters into the policy before syncing weights to vLLM (merge_and_unload)")
    return [(n, p.detach().to(dtype)) for n, p in model.named_parameters()]


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
