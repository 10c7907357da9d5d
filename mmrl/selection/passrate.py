"""Pass-rate difficulty: the cheap proxy of MCTS K.

For each sample the policy writes `n` whole replies to the task's own prompt at the GRPO temperature;

    pass rate  p = (replies the verifier accepts) / n,      difficulty = 1 − p

ThinkLite-VL (arXiv 2504.07934, §4.3) compares this "self-consistency" selection (accuracy < 0.2 over 50
rollouts) with MCTS and finds it within about 0.7 benchmark points at a fraction of the cost. Replies are
generated for `batch_prompts` samples per engine call (n each).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from mmrl.contracts import Engine, SamplingParams
from mmrl.errors import MMRLError
from mmrl.sample import Sample
from mmrl.selection.mcts import Codec, SearchStats, Verifier


@dataclass
class PassRateParams:
    """Settings of the pass-rate scorer."""

    n: int = 8
    """Replies per sample (the paper's proxy uses 50; fewer is cheaper and noisier)."""
    temperature: float = 1.0
    """Sampling temperature (the GRPO rollout temperature)."""
    max_new_tokens: int = 256
    """Most tokens per reply."""
    batch_prompts: int = 8
    """Samples per engine call (each sampled n times)."""
    seed: int = 0
    """Seed of the sampling: sample S's n replies are drawn from `prompt_seeds` = [hash of (seed, S's id)], so
    they do not depend on the batch S lands in, its place in the pool, or a resume."""

    def __post_init__(self) -> None:
        if self.n < 1 or self.batch_prompts < 1 or self.max_new_tokens < 1 or self.temperature < 0:
            from mmrl.errors import ConfigError

            raise ConfigError(f"pass-rate settings out of range: {self}")


@dataclass
class PassRateResult:
    """One sample's pass rate (a line of `difficulty.jsonl`)."""

    sample_id: str
    task: str
    passes: int
    n: int
    tokens: int
    skipped: str | None = None

    @property
    def pass_rate(self) -> float | None:
        return None if self.skipped else self.passes / self.n

    def record(self) -> dict[str, Any]:
        rate = self.pass_rate
        out = {"id": self.sample_id, "task": self.task, "method": "passrate", "pass_rate": rate, "passes": self.passes,
               "n": self.n, "difficulty": None if rate is None else 1.0 - rate, "solved": bool(self.passes),
               "tokens": self.tokens}  # fmt: skip
        if self.skipped:
            out["skipped"] = self.skipped
        return out


def pass_rates(
    samples: Iterable[Sample],
    engine: Engine,
    codec: Codec,
    verifier: Verifier,
    params: PassRateParams,
    stats: SearchStats | None = None,
) -> Iterator[PassRateResult]:
    """Score every sample; yields results in pool order, a batch at a time."""
    stats = stats if stats is not None else SearchStats()
    batch: list[tuple[Sample, Any]] = []
    for sample in samples:
        try:
            batch.append((sample, codec.encode(sample)))
        except MMRLError as e:
            reason = stats.count_skip(e)
            yield PassRateResult(sample.id, sample.task, 0, params.n, 0, skipped=f"{reason}: {e}")
            continue
        if len(batch) == params.batch_prompts:
            yield from _score(batch, engine, verifier, params, stats)
            batch = []
    if batch:
        yield from _score(batch, engine, verifier, params, stats)


def sample_seed(seed: int, sample_id: str) -> int:
    """The sampling seed of one sample's replies, in [0, 2^62): a function of (seed, sample id) only."""
    return int(np.random.default_rng([seed, 3, zlib.crc32(sample_id.encode("utf-8"))]).integers(2**62))


def _score(batch, engine, verifier, params, stats) -> Iterator[PassRateResult]:
    seeds = [sample_seed(params.seed, sample.id) for sample, _ in batch]
    sampling = SamplingParams(max_new_tokens=params.max_new_tokens, temperature=params.temperature,
                              prompt_seeds=seeds)  # fmt: skip
    outputs = engine.generate([prompt for _, prompt in batch], params.n, sampling)
    stats.engine_calls += 1
    stats.sequences += len(batch) * params.n
    verdicts = iter(
        verifier.solves_all([(sample, c.text) for (sample, _), group in zip(batch, outputs) for c in group])
    )
    for (sample, _), group in zip(batch, outputs):
        passes = sum(next(verdicts) for _ in group)
        yield PassRateResult(sample.id, sample.task, passes, params.n, sum(len(c.token_ids) for c in group))


__all__ = ["PassRateParams", "PassRateResult", "pass_rates", "sample_seed"]
