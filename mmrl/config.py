"""The run configuration: one dataclass per section (`model`, `rollout`, `algorithm`, `data`, `train`,
`log`, `corpus`, `sft`, `dataserver`, `game`), every field with a default, a docstring and, for numbers, a valid range.

`load_config(RunConfig, "run.yaml", ["train.lr=1e-6"])` builds one from YAML and overrides and checks it
(the machinery: `mmrl.config_tools`, whose public functions are importable from here too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from mmrl.config_tools import (
    NoGame,
    Rule,
    apply_override,
    describe,
    field_docs,
    from_dict,
    load_config,
    plugin_schema,
    save_config,
    to_dict,
    validate_config,
)


def default_cache_dir() -> Path:
    """Where built artefacts (tiny models, the default corpus) live: $MMRL_CACHE, else the user cache."""
    if os.environ.get("MMRL_CACHE"):
        return Path(os.environ["MMRL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mmrl"


# --------------------------------------------------------------------------------------------------
# Schemas


@dataclass
class ModelConfig:
    path: str = "tiny:qwen2.5-vl"
    """Policy checkpoint: a local folder, a hub id, or `tiny:<family>` for the embedded default
    (a tiny random-init model of that family, built into the cache on first use)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype: `auto` (bfloat16 on GPU, float32 on CPU), `float32`, `bfloat16` or `float16`."""
    attn_implementation: str = "sdpa"
    """Attention kernel passed to transformers: `sdpa`, `eager` or `flash_attention_2`."""
    min_pixels: Annotated[int, ">= 1"] = 4 * 28 * 28
    """Smallest pixel count an image is resized to (Qwen `smart_resize` lower bound)."""
    max_pixels: Annotated[int, ">= 1"] = 256 * 28 * 28
    """Largest pixel count an image is resized to; bounds the image-token count per image."""
    video_min_pixels: Annotated[int, ">= 1"] = 4 * 28 * 28
    """Smallest pixel count of one video frame."""
    video_max_pixels: Annotated[int, ">= 1"] = 64 * 28 * 28
    """Largest pixel count of one video frame; bounds video tokens per frame."""
    video_fps: Annotated[float, "> 0"] = 2.0
    """Frames per second sampled from a video given as a file."""
    video_max_frames: Annotated[int, ">= 1"] = 16
    """Most frames sampled from one video given as a file (evenly subsampled beyond this)."""
    video_fit_budget: bool = True
    """A prompt over `rollout.max_prompt_tokens` because of its videos is fitted instead of refused: smaller
    frames first (down to `video_min_pixels`), then fewer frames of videos given as files (timestamps kept);
    frames a task listed itself are never dropped (`mmrl.rollout.encode.fit_videos`, docs/video_memory.md)."""
    allow_download: bool = False
    """Let a hub id in `path` download from the Hugging Face Hub when it is not in the local cache.
    Off by default: nothing is fetched unless asked for; HF_HUB_OFFLINE=1 forbids it even when on."""

    def config_rules(self) -> list[Rule]:
        return [
            ("max_pixels", self.max_pixels >= self.min_pixels, f">= min_pixels ({self.min_pixels})"),
            (
                "video_max_pixels",
                self.video_max_pixels >= self.video_min_pixels,
                f">= video_min_pixels ({self.video_min_pixels})",
            ),
        ]


@dataclass
class CorpusConfig:
    root: str = ""
    """Folder the default corpus is built into; empty means `<cache>/corpus` (see MMRL_CACHE)."""
    seed: Annotated[int, ">= 0"] = 0
    """Seed of every random choice in the corpus build; same seed, byte-identical files."""
    max_photos: Annotated[int, ">= 0"] = 0
    """Use only the first N of scikit-image's bundled photos (0: all 14); small values make quick builds."""
    photo_size: Annotated[int, "[32, 8192]"] = 384
    """Longer side, in pixels, of the stored photos (scikit-image's bundled photos, resized)."""
    videos_per_photo: Annotated[int, ">= 0"] = 2
    """Synthetic camera-motion videos (pans and zooms) made from each photo."""
    scene_videos: Annotated[int, ">= 0"] = 8
    """Videos of animated procedural 3D scenes."""
    video_frames: Annotated[int, ">= 1"] = 120
    """Frames per synthetic video (120 at 8 fps = 15 s: enough for 6 trimmed jigsaw clips)."""
    video_fps: Annotated[float, "> 0"] = 8.0
    """Frame rate of the synthetic videos."""
    video_size: Annotated[tuple[int, int], "[16, 4096]"] = (256, 192)
    """Width and height of the synthetic videos, in pixels (both even)."""
    rgbd_scenes: Annotated[int, ">= 0"] = 32
    """Procedural RGB-D scenes (RGB, depth, instance masks, boxes, scene graph)."""
    scene_size: Annotated[tuple[int, int], "[16, 4096]"] = (320, 240)
    """Width and height of rendered RGB-D scenes, in pixels."""

    def config_rules(self) -> list[Rule]:
        return [("video_size", all(v % 2 == 0 for v in self.video_size), "even in width and height")]


@dataclass
class RolloutConfig:
    engine: Literal["hf", "vllm"] = "hf"
    """Generation engine: `hf` (transformers generate; everywhere) or `vllm` (GPU, optional extra)."""
    n: Annotated[int, ">= 1"] = 4
    """Completions sampled per prompt (the GRPO group size G)."""
    max_new_tokens: Annotated[int, ">= 1"] = 32
    """Most tokens generated per completion; longer ones are cut and marked truncated."""
    min_new_tokens: Annotated[int, ">= 0"] = 0
    """Generate at least this many tokens before a stop token is allowed; for speed benchmarks at fixed length."""
    max_prompt_tokens: Annotated[int, ">= 1"] = 2048
    """Most prompt tokens (text + visual) per prompt; a longer prompt is rejected, never cut."""
    temperature: Annotated[float, "> 0"] = 1.0
    """Sampling temperature."""
    top_p: Annotated[float, "(0, 1]"] = 1.0
    """Nucleus sampling threshold (1.0: off)."""
    top_k: Annotated[int, ">= 0"] = 0
    """Top-k sampling (0: off)."""
    batch_size: Annotated[int, ">= 1"] = 32
    """Most sequences (prompts x samples) generated in one engine call."""
    decode: Literal["auto", "generate", "static"] = "generate"
    """HF engine decode loop: `generate` (transformers' generate), `static` (static KV cache + our own
    one-token step, compiled with CUDA graphs on CUDA; on CUDA both size batches to free memory, at most
    `batch_size`) or `auto` (static on CUDA for unsharded Qwen-VL models with sdpa/eager attention, else generate).
    Both sample with per-sequence seeds, so the choice changes speed, not the distribution. The default stays
    `generate` until the static loop has run on a GPU (it is tested on CPU only; benchmarks/README.md)."""
    vllm_gpu_memory_utilization: Annotated[float, "(0, 1]"] = 0.5
    """vLLM only: share of GPU memory its KV cache may take."""

    def config_rules(self) -> list[Rule]:
        return [
            ("min_new_tokens", self.min_new_tokens <= self.max_new_tokens, f"<= max_new_tokens ({self.max_new_tokens})")
        ]


@dataclass
class AlgorithmConfig:
    advantage: Literal["grpo", "dr_grpo", "rloo", "batch_std"] = "grpo"
    """Advantage estimator: `grpo` ((R - mean) / (std + eps)), `dr_grpo` (R - mean), `rloo`, `batch_std`."""
    advantage_eps: Annotated[float, "> 0"] = 1e-6
    """Epsilon added to the group std (grpo)."""
    loss: Literal["ppo_clip", "gspo"] = "ppo_clip"
    """Policy loss: `ppo_clip` (per-token ratio) or `gspo` (sequence-level ratio)."""
    clip_low: Annotated[float, "[0, 1)"] = 0.2
    """Lower clip range: the ratio is clipped at 1 - clip_low."""
    clip_high: Annotated[float, ">= 0"] = 0.2
    """Upper clip range: 1 + clip_high (DAPO clip-higher uses 0.28)."""
    dual_clip: Annotated[float, ">= 0"] = 0.0
    """Dual-clip constant c for negative advantages (0: off; 3 is usual)."""
    aggregation: Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"] = (
        "token-mean"
    )
    """Loss aggregation: `token-mean`, `seq-mean-token-mean`, `seq-mean-token-sum`, `seq-mean-token-sum-norm`."""
    kl_coef: Annotated[float, ">= 0"] = 0.0
    """KL weight beta against the frozen reference; 0 loads no reference model."""
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"
    """KL estimator: `k1`, `k2` or `k3`."""
    entropy_coef: Annotated[float, ">= 0"] = 0.0
    """Entropy bonus weight c_H (loss -= c_H * entropy)."""
    ppo_epochs: Annotated[int, ">= 1"] = 1
    """Passes over each rollout batch."""
    mini_batches: Annotated[int, ">= 1"] = 1
    """Optimiser steps per pass (the rollout batch is split into this many mini-batches)."""
    dynamic_sampling: bool = False
    """Drop groups whose rewards are all equal and refill with new prompts (DAPO)."""
    max_resample: Annotated[int, ">= 0"] = 3
    """Dynamic sampling: most extra generation rounds per step."""
    replay: bool = False
    """Selective Sample Replay (VL-Rethinker): train on |advantage|-weighted draws from the rollout buffer."""
    replay_alpha: Annotated[float, ">= 0"] = 1.0
    """Replay: sampling weight |A|^alpha."""
    replay_refill_factor: Annotated[int, ">= 1"] = 2
    """Replay: training set size = buffer size / refill factor."""

    def config_rules(self) -> list[Rule]:
        return [("dual_clip", self.dual_clip == 0 or self.dual_clip > 1, "0 (off) or > 1")]


@dataclass
class DataSource:
    task: str = "dominant_color"
    """Registry name of a task (live generator) or, with `path`, the task of a dataset on disk."""
    path: str = ""
    """Dataset folder (samples.jsonl + media); empty means generate Samples live from `source`."""
    source: str = "default"
    """Live generation: `default` (the default corpus) or a folder of source media."""
    weight: Annotated[float, ">= 0"] = 1.0
    """Relative share of this source in the mixture."""
    params: dict = field(default_factory=dict)
    """Task parameters (the task's own dataclass fields)."""
    steps: list[int] = field(default_factory=list)
    """`[start, end]`: the optimiser steps `start <= step < end` in which this source is drawn (a stage of a
    staged schedule, e.g. ViPER's caption stage then edit stage); empty: every step. Held-out evaluation
    draws from every source, whatever its window."""

    def active(self, step: int) -> bool:
        """Whether this source is drawn at optimiser step `step`."""
        return not self.steps or self.steps[0] <= step < self.steps[1]

    def config_rules(self) -> list[Rule]:
        window_ok = not self.steps or (len(self.steps) == 2 and 0 <= self.steps[0] < self.steps[1])
        return [("steps", window_ok, "empty or [start, end] with 0 <= start < end")]


@dataclass
class DataConfig:
    sources: list[DataSource] = field(default_factory=lambda: [DataSource()])
    """Weighted mixture of Sample sources."""
    prompts_per_step: Annotated[int, ">= 1"] = 8
    """Prompts per optimiser step (each sampled `rollout.n` times)."""
    eval_samples: Annotated[int, ">= 0"] = 32
    """Held-out Samples scored before and after training (0: no evaluation)."""
    eval_k: Annotated[int, ">= 0"] = 4
    """Held-out evaluation also samples k completions per Sample at `rollout.temperature` (`eval/*_sampled`,
    the mean over them) next to the greedy ones (`eval/*`); 0: greedy only."""
    seed: Annotated[int, ">= 0"] = 0
    """Seed of data order and live generation."""
    prefetch: Annotated[int, ">= 0"] = 0
    """Draw and encode the prompts of up to this many future steps in worker processes while the current step
    generates and trains (0: off, all in the trainer's process). The Samples, their order and seeds are the same
    either way, and checkpoints hold the draws used, not those prefetched (`mmrl.prefetch`); resample rounds of
    dynamic sampling, not known in advance, wait for their draws. Applies to the task mixture of `data.sources`
    (GRPO and the supervised cold start); self-play games and Syn-GRPO draw in the trainer's process."""
    prefetch_workers: Annotated[int, ">= 1"] = 1
    """Worker processes that prefetch (with `prefetch > 0`); each holds its own copy of the sources and the
    processor and uses one CPU thread."""


@dataclass
class TrainConfig:
    steps: Annotated[int, ">= 1"] = 20
    """Optimiser steps (rollout batches) to run."""
    lr: Annotated[float, "> 0"] = 1e-5
    """Peak learning rate (AdamW)."""
    weight_decay: Annotated[float, ">= 0"] = 0.0
    """AdamW weight decay."""
    warmup_steps: Annotated[int, ">= 0"] = 0
    """Linear warm-up steps."""
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate schedule after warm-up: `constant`, `linear` or `cosine`."""
    grad_clip: Annotated[float, ">= 0"] = 1.0
    """Clip the gradient norm to this value (0: off)."""
    micro_batch_size: Annotated[int, ">= 1"] = 8
    """Sequences per forward/backward pass (gradient accumulation within a mini-batch)."""
    mixed_precision: Literal["no", "bf16"] = "bf16"
    """On CUDA, run forward passes under bf16 autocast (accelerate); ignored on CPU."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    vision_chunk_frames: Annotated[int, ">= 0"] = 0
    """Run the vision tower on at most this many frames of a video at a time in the trainer's forward (images: one
    at a time); the features equal one call's. 0: all media of a batch in one call. With `vision_checkpointing`,
    only one chunk's activations ever exist (docs/video_memory.md)."""
    vision_checkpointing: bool = False
    """Keep only the vision tower's inputs for the backward and recompute its activations there (per chunk of
    `vision_chunk_frames`); no effect when the vision module has nothing to train (`freeze_vision` and
    `freeze_projector`)."""
    prompt_once: bool = False
    """Run each distinct prompt of a group once through the decoder in the trainer's forward and its completions on
    the prompt's cached keys and values (same log-probs and gradients; the prompt's activations are kept once
    per group instead of once per sequence). Needs a shared-vision Qwen-VL model, no DDP wrapper and no
    `gradient_checkpointing`; the plain forward is used otherwise (docs/video_memory.md)."""
    freeze_vision: bool = False
    """Freeze the vision tower (the projector/merger stays trainable)."""
    freeze_projector: bool = False
    """Freeze the vision-language projector (merger)."""
    lora_rank: Annotated[int, ">= 0"] = 0
    """LoRA rank on the language model's linear layers (0: full fine-tuning)."""
    lora_alpha: Annotated[int, ">= 1"] = 16
    """LoRA alpha."""
    seed: Annotated[int, ">= 0"] = 0
    """Seed of sampling and initialisation."""
    out_dir: str = "runs/quickstart"
    """Run folder: metrics, TensorBoard events, plots, checkpoints."""
    save_every: Annotated[int, ">= 1"] = 10
    """Checkpoint every N steps (and at the end)."""
    keep_checkpoints: Annotated[int, ">= 1"] = 2
    """Most recent checkpoints kept."""
    resume: str = ""
    """`auto` (latest complete checkpoint in out_dir), a checkpoint folder, or empty (start fresh)."""
    overwrite: bool = False
    """Start fresh in an `out_dir` that already holds a run (checkpoints, metrics, final model),
    replacing it. Without it such a folder is refused unless `resume` is set."""
    max_nonfinite_steps: Annotated[int, ">= 1"] = 3
    """An optimiser step whose loss or gradient is NaN/inf is skipped (counted as `nonfinite_skipped`);
    after this many skipped in a row the run stops with an error."""
    cold_start: bool = False
    """Run the supervised cold start (`sft.*`) first, unless `<sft.out_dir>/final` exists, then train
    GRPO from its model."""
    eval_every: Annotated[int, ">= 0"] = 0
    """Score the held-out Samples every N steps (0: only before and after training)."""


@dataclass
class SFTConfig:
    steps: Annotated[int, ">= 1"] = 100
    """Optimiser steps of supervised fine-tuning (`mmrl sft`)."""
    batch_size: Annotated[int, ">= 1"] = 16
    """Samples per SFT step."""
    lr: Annotated[float, "> 0"] = 1e-4
    """SFT learning rate (AdamW, constant after `train.warmup_steps`)."""
    shuffle_answers: bool = False
    """Pair each prompt with the answer of another Sample: teaches the output format, not the task
    (a format-only cold start whose accuracy stays at chance)."""
    out_dir: str = "runs/sft"
    """SFT run folder; the final model is saved in `<out_dir>/final`."""


@dataclass
class LogConfig:
    tensorboard: bool = True
    """Write TensorBoard events next to the JSONL metrics."""
    progress: bool = True
    """Show a progress bar."""
    plot: bool = True
    """Write the reward-curve PNG at the end."""
    samples_every: Annotated[int, ">= 0"] = 5
    """Log a few completions every N steps (0: never)."""


@dataclass
class DataServerConfig:
    enabled: bool = False
    """Mix synthesized samples into training (Syn-GRPO, docs/syn_grpo.md); off: plain task batches."""
    backend: Literal["inprocess", "http"] = "http"
    """`inprocess` (synthesis threads in the trainer's process: one node, tests) or `http` (`mmrl serve-data`
    processes at `urls`)."""
    urls: list[str] = field(default_factory=list)
    """Data servers for the `http` backend (`http://host:port`), used round-robin."""
    token: str = ""
    """Bearer token of the `http` servers (also read from MMRL_DATA_TOKEN when empty)."""
    synthesizer: str = "outpaint"
    """In-process backend: `procedural`, `outpaint`, `identity` (tests) or `package.module:Class`."""
    synthesizer_params: dict = field(default_factory=dict)
    """Keyword parameters of the synthesizer (e.g. `model`, `steps` for `outpaint`)."""
    workers: Annotated[int, ">= 1"] = 1
    """In-process backend: synthesis threads."""
    request_queue: Annotated[int, ">= 1"] = 256
    """Most requests waiting for synthesis; a full queue refuses new ones (counted, never retried)."""
    ready_queue: Annotated[int, ">= 1"] = 512
    """Most finished samples waiting for the trainer; a full queue pauses synthesis."""
    syn_fraction: Annotated[float, "[0, 1]"] = 0.5
    """rho: most synthesized samples per batch, as a share of `data.prompts_per_step` (0: server off)."""
    max_sample_age: Annotated[int, ">= 0"] = 8
    """Synthesized samples whose description is older than this many policy versions are dropped."""
    max_staleness: Annotated[int, ">= 0"] = 4
    """Description rollouts whose reward matures more than this many versions after generation are dropped."""
    descriptions_per_step: Annotated[int, ">= 0"] = 2
    """Seed samples per step for which the policy writes new descriptions (each gets `desc_group_size`
    descriptions under `desc_advantage: group`, one otherwise)."""
    desc_advantage: Literal["ema_baseline", "group"] = "ema_baseline"
    """Advantage of a matured description: `ema_baseline` (A = (r - b) / (sigma_b + desc_eps)) or `group`
    (group-normalised over the `desc_group_size` descriptions of one seed)."""
    desc_group_size: Annotated[int, ">= 2"] = 4
    """G_d: descriptions per seed under `desc_advantage: group`."""
    ema_momentum: Annotated[float, "[0, 1)"] = 0.9
    """mu: momentum of the EMA mean b and variance sigma_b^2 of matured description rewards."""
    desc_eps: Annotated[float, "> 0"] = 0.1
    """Added to sigma_b (ema_baseline) or the group std (group): bounds |A| by about 1 / desc_eps while the
    spread of the rewards is still near 0."""
    w_valid: Annotated[float, "[0, 1]"] = 0.1
    """Share of validity in the description reward: r_desc = w_valid * valid + (1 - w_valid) * r_div."""
    desc_max_new_tokens: Annotated[int, ">= 1"] = 96
    """Most tokens of one description rollout."""
    desc_think: bool = True
    """Ask for reasoning in `<think>` before the description (answer_tag mode only)."""
    desc_answer_mode: Literal["answer_tag", "raw"] = "answer_tag"
    """Where the description is in the reply: inside `<answer>` (empty without it), or `raw`, the whole reply
    (for a policy that has not learnt the tags, such as the untrained tiny model)."""
    poll_max: Annotated[int, ">= 1"] = 64
    """Most results taken from the backend per step."""

    def config_rules(self) -> list[Rule]:
        return [("urls", not (self.enabled and self.backend == "http") or bool(self.urls),
                 "at least one URL when dataserver.enabled and backend is http")]  # fmt: skip


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Policy checkpoint and pixel budgets."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Generation engine and sampling."""
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    """Advantages, loss, KL, entropy and sampling tricks."""
    data: DataConfig = field(default_factory=DataConfig)
    """Sample sources and batch size."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, freezing, LoRA, checkpoints."""
    log: LogConfig = field(default_factory=LogConfig)
    """Metrics, TensorBoard, plots."""
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    """The default corpus used by live generators with `source: default`."""
    sft: SFTConfig = field(default_factory=SFTConfig)
    """Supervised cold start (`mmrl sft`)."""
    dataserver: DataServerConfig = field(default_factory=DataServerConfig)
    """Syn-GRPO: synthesized samples from a data server mixed into the batches (docs/syn_grpo.md)."""
    game: Any = field(default_factory=NoGame, metadata={"plugin": "game"})
    """Self-play game producing the rollouts instead of the task mixture of `data`: `game.name` names a
    registered game (`spy`), whose own keys then make up the rest of this section."""

    def config_rules(self) -> list[Rule]:
        weighted = [s for s in self.data.sources if s.weight > 0]
        game = bool(self.game.name)
        rules = [("data.sources", bool(weighted) or game, "a list with at least one source of weight > 0")]
        idle = next((t for t in range(self.train.steps) if weighted and not any(s.active(t) for s in weighted)), None)
        covered = f"`steps` windows that give every training step a source of weight > 0 (step {idle} has none)"
        rules.append(("data.sources", idle is None or game, covered))
        run_rules = getattr(self.game, "run_rules", None)  # a game's rules that involve other sections
        return rules + (run_rules(self) if run_rules is not None else [])


__all__ = [
    "AlgorithmConfig",
    "CorpusConfig",
    "DataConfig",
    "DataServerConfig",
    "DataSource",
    "LogConfig",
    "ModelConfig",
    "NoGame",
    "RolloutConfig",
    "Rule",
    "RunConfig",
    "SFTConfig",
    "TrainConfig",
    "apply_override",
    "default_cache_dir",
    "describe",
    "field_docs",
    "from_dict",
    "load_config",
    "plugin_schema",
    "save_config",
    "to_dict",
    "validate_config",
]
