"""The objects that cross module boundaries, and the interfaces the engine programs against.

    Reward          what every reward function returns: a score and its named parts
    SamplingParams  how an engine samples
    EncodedPrompt   a prompt after the chat template and the processor
    Completion      one sampled continuation
    Rollout         a scored completion with its advantage: Producers make them, the trainer consumes them
    Engine          generates completions (`mmrl.rollout`: hf, vllm)
    Producer        turns an engine into Rollouts (tasks: `mmrl.producers`; games: their plugin)
    Game            a self-play game plugin (entry-point group `mmrl.games`)

The task contract is the base class `mmrl.task.Task`. Shapes are per item (no batch dimension):
batching is the job of `mmrl.rollout.forward.collate` and of the engines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

if TYPE_CHECKING:
    import torch

    from mmrl.config import RunConfig

REWARD_PARTS = {
    "format": "1 when the reply has the asked answer format (tags, box, think block), else 0",
    "accuracy": "1 when the answer is right, else 0 (or a graded share, documented by the task)",
    "exact": "1 when the whole answer is right, for rewards that also give partial credit (ordering)",
}
"""Reward part names with a meaning outside the task: `mmrl eval` counts an answer as exact when its
`exact` part is 1, else its `accuracy` part is 1, else its score is at least 1 (`Reward.is_exact`).
Any other part name is only logged (`reward/<task>/<part>`)."""


@dataclass(frozen=True)
class Reward:
    """A scored completion.

    `score` is what the advantage estimator sees; `parts` are what the trainer logs, so a run shows
    *why* a score moved (format learnt first, accuracy later). Scores lie in [0, 1] unless a reward's
    docstring says otherwise (game rewards, penalties). Reward functions never raise on model
    output: a malformed completion gets `score = 0` with every part present and 0.
    """

    score: float
    """The scalar the trainer optimises."""
    parts: dict[str, float] = field(default_factory=dict)
    """Named components (`format`, `accuracy`, `exact`: see `REWARD_PARTS`), each logged as `reward/<name>`."""

    @classmethod
    def zero(cls, *names: str) -> Reward:
        """Score 0 with each named part set to 0 (the answer to unusable output)."""
        return cls(0.0, {name: 0.0 for name in names})

    @property
    def is_exact(self) -> bool:
        """Whether the answer counts as exactly right: the `exact` part is 1 when the reward has one,
        else the `accuracy` part is 1, else the score is at least 1 (`REWARD_PARTS`)."""
        for name in ("exact", "accuracy"):
            if name in self.parts:
                return self.parts[name] >= 1.0
        return self.score >= 1.0


@dataclass
class SamplingParams:
    max_new_tokens: int = 32
    """Most tokens generated per completion."""
    min_new_tokens: int = 0
    """Generate at least this many tokens before a stop token is allowed (for speed benchmarks at fixed
    length). While it holds, stop tokens are masked out of the sampled distribution, so the engine's
    log-probs of those steps exclude the stop tokens' mass and differ slightly from the trainer's."""
    temperature: float = 1.0
    """Softmax temperature; logprobs are reported under this tempered distribution."""
    top_p: float = 1.0
    """Nucleus threshold (1.0: off)."""
    top_k: int = 0
    """Top-k (0: off)."""
    seed: int | None = None
    """Seed of this call's sampling (None: continue the engine's own generator)."""
    prompt_seeds: list[int] | None = None
    """One seed (>= 0) per prompt of the call, overriding `seed` for them: prompt i's samples then depend
    only on prompt_seeds[i], their own index and the weights, not on the call's other prompts, their order
    or the call's seed. For callers that batch independent searches (MCTS trees) and need each search's
    draws to be those of the search run alone."""


@dataclass
class EncodedPrompt:
    """One prompt after the chat template and the processor, ready for generation and for the trainer.

    `input_ids` is (T,) long. `vision` holds the processor's visual tensors for this prompt only:
    `pixel_values` (N_patches, D) + `image_grid_thw` (N_images, 3), and/or `pixel_values_videos` +
    `video_grid_thw` (+ `second_per_grid_ts` for Qwen2.5-VL), plus `mm_token_type_ids` (T,) where
    the processor returns it. Media are processed once per prompt and shared by the whole group.
    """

    input_ids: torch.Tensor
    vision: dict[str, torch.Tensor] = field(default_factory=dict)
    text: str = ""
    """The templated prompt text (for logs)."""
    num_visual_tokens: int = 0
    """Image/video placeholder tokens inside `input_ids`."""
    media: dict[str, list] = field(default_factory=dict)
    """The loaded media, for engines that run their own processor (vLLM): `image` -> RGB PIL images,
    `video` -> ((T, H, W, 3) uint8 frames, processor video metadata) pairs, in prompt order."""
    fitted: str = ""
    """How `encode_prompt` shrank this prompt's videos to fit `rollout.max_prompt_tokens`
    (`model.video_fit_budget`); empty when they are shown as configured."""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class Completion:
    """One sampled continuation of a prompt."""

    token_ids: list[int]
    """Generated tokens, padding removed, the stop token included when one was generated."""
    logprobs: list[float]
    """Log-probability of each generated token under the engine's (tempered) sampling distribution."""
    text: str
    """Decoded completion, special tokens skipped."""
    finish_reason: Literal["stop", "length"]
    """`stop`: ended with a stop token; `length`: cut at max_new_tokens."""


@dataclass
class Rollout:
    """One completion with everything the trainer needs: made by Producers, consumed by the Trainer."""

    prompt: EncodedPrompt
    """Shared (same object) by every rollout of the group."""
    completion: Completion
    reward: float
    """Scalar reward used for the advantage (the sum of the task's reward parts)."""
    advantage: float
    group_id: str
    """Rollouts with the same group id were sampled from the same prompt in the same step."""
    sample_id: str
    task: str
    reward_parts: dict[str, float] = field(default_factory=dict)
    role: str = "policy"
    """Player role for multi-role games; `policy` for single-turn tasks."""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def truncated(self) -> bool:
        return self.completion.finish_reason == "length"


class Engine(Protocol):
    """A generation engine. `hf` runs everywhere; `vllm` is for GPUs."""

    def generate(self, prompts: list[EncodedPrompt], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        """`n` completions for each prompt: result[i][j] is the j-th sample of prompts[i]."""
        ...

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Make the engine sample from `model`'s current weights."""
        ...


class Producer(Protocol):
    """Makes the experience of one optimiser step; owns how advantages are computed.

    The trainer calls nothing else, so it knows neither tasks nor games.
    """

    def produce(self, engine: Engine, step: int) -> tuple[list[Rollout], dict[str, float]]:
        """The Rollouts (advantages set) of step `step`, and the metrics of making them."""
        ...

    def evaluate(self, engine: Engine) -> dict[str, float]:
        """Held-out metrics (`eval/reward`, ...) of the engine's current weights; {} when there is no held-out set."""
        ...

    def sft_examples(self, step: int, count: int) -> list[tuple[EncodedPrompt, str]]:
        """`count` (prompt, reference completion) pairs for supervised step `step` (the cold start)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue the same data order (JSON-representable)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Game(Protocol):
    """A self-play game: the object a `mmrl.games` entry point names.

    The run config's `game` section is built with `Config` when `game.name` is this game's name.
    """

    name: ClassVar[str]
    """The registry name (`game.name` in a config)."""
    Config: ClassVar[type]
    """Dataclass of the `game` section (a `name` field plus the game's own keys, one docstring per field)."""

    @staticmethod
    def producer(cfg: RunConfig, processor: Any, rank: int = 0) -> Producer:
        """The Producer that plays the game for training (and for the cold start's examples)."""
        ...

    @staticmethod
    def play(cfg: RunConfig, out: Path, games: int | None = None) -> dict[str, float]:
        """`mmrl play`: play `games` games without training, write transcripts to `out`, return a summary."""
        ...
