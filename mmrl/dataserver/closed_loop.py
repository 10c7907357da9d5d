"""The closed loop of self-synthesised data (ViPER, Zhang et al. 2025, arXiv 2510.24285; docs/viper.md): tasks whose
training Samples come from a pool the POLICY builds (e.g. `caption_refine` with `captioner: policy`, where the
policy captions the images), rebuilt from the current weights between optimiser steps.

Why a producer and not the data server: the pool depends on the policy, so building it inside the training
process, with the training engine, between two steps, fixes exactly which weights built it; an asynchronous
server would build from whatever checkpoint it saw last, and a resumed run could not serve the same pool.

A task takes part by duck typing (the engine reaches tasks by name only and imports no plugin):

    task.closed_loop -> bool                        the pool is on
    task.refresh_every -> int                       steps between builds, from the source's window start (0: once)
    task.refresh_pool(roles, seed_key, step) -> dict[str, float]   rebuild with `PolicyRoles`; metrics
    task.pool_step -> int | None                    the step whose weights built the pool
    task.pool_state() -> dict, task.load_pool_state(dict)          JSON for the producer's checkpoint state
    task.serving: bool                              set only while training prompts are drawn

Schedule: at step t a source with window [s, e) (no window: s = 0) that is active at t needs the pool of step
r(t) = s + ⌊(t − s) / k⌋ · k (k = refresh_every; k = 0: r(t) = s, the stage boundary); when `pool_step != r(t)`
the pool is rebuilt now, with the weights of step t = r(t). The pool's seed key is (data seed · 1000 + rank,
source index, 3, task key, r(t)). The pool goes into the producer's state, so a run resumed from the checkpoint
of any step serves the pool an uninterrupted run serves, and rebuilds at the same steps from the same weights.

Held-out evaluation and cold-start (SFT) examples are drawn with `serving` off: the task's own generator
(e.g. procedural captions), so evaluations stay comparable across refreshes and across a resume.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from mmrl import registry
from mmrl.config import RunConfig
from mmrl.contracts import Engine, Rollout
from mmrl.producers import SampleSource, TaskProducer
from mmrl.task import task_key

POOL_KIND = 3
"""The third entry of a pool's seed key (1 and 2 are a source's dataset order and live draws)."""


@dataclass
class PolicyRoles:
    """What a task needs to run the policy in its own roles (captioner, critic): the engine on the current
    weights and how prompts encode."""

    engine: Engine
    """Samples from the current policy weights (`Engine.generate`)."""
    processor: Any
    """The policy's processor (`mmrl.rollout.encode.encode_prompt`)."""
    model_config: Any
    """`mmrl.config.ModelConfig` (pixel budgets of encoded images)."""
    max_prompt_tokens: int = 4096
    """Most tokens of one prompt."""


def refresh_point(step: int, start: int, every: int) -> int:
    """r(t): the step whose weights the pool at step `step` comes from (module docstring)."""
    if every <= 0 or step < start:
        return start
    return start + (step - start) // every * every


def pool_sources(sources: Sequence[SampleSource]) -> list[SampleSource]:
    """The live sources whose task runs a closed loop."""
    return [s for s in sources if not s.spec.path and getattr(s.task, "closed_loop", False)]


def refresh_task_pools(sources: Sequence[SampleSource], roles: Any, step: int) -> dict[str, float]:
    """Rebuild every closed-loop pool that step `step` needs and does not have (see the schedule); returns the
    builds' metrics as `loop/<task>/<name>`."""
    metrics: dict[str, float] = {}
    for source in pool_sources(sources):
        if not source.spec.active(step):
            continue
        start = source.spec.steps[0] if source.spec.steps else 0
        point = refresh_point(step, start, int(source.task.refresh_every))
        if source.task.pool_step == point:
            continue
        key = (source.seed, source.index, POOL_KIND, task_key(source.spec.task), point)
        built = source.task.refresh_pool(roles, key, point)
        metrics |= {f"loop/{source.spec.task}/{k.removeprefix('loop/')}": v for k, v in built.items()}
    return metrics


@contextlib.contextmanager
def serving(sources: Sequence[SampleSource]) -> Iterator[None]:
    """Training draws come from the pools while inside (and only then)."""
    tasks = [s.task for s in pool_sources(sources)]
    for task in tasks:
        task.serving = True
    try:
        yield
    finally:
        for task in tasks:
            task.serving = False


def pool_states(sources: Sequence[SampleSource]) -> dict[str, Any]:
    """Source index -> its task's pool state, for the producer's checkpoint."""
    return {str(s.index): s.task.pool_state() for s in pool_sources(sources)}


def load_pool_states(sources: Sequence[SampleSource], states: dict[str, Any] | None) -> None:
    """Put the pools of `pool_states` back (absent: nothing was built yet)."""
    for s in pool_sources(sources):
        if states and str(s.index) in states:
            s.task.load_pool_state(states[str(s.index)])


def uses_task_pools(cfg: RunConfig) -> bool:
    """Whether some live source of `cfg.data.sources` runs a closed loop (`make_producer` then builds a
    `ClosedLoopProducer`)."""
    return any(
        not s.path and getattr(registry.get_task(s.task, **s.params), "closed_loop", False) for s in cfg.data.sources
    )


class ClosedLoopProducer(TaskProducer):
    """`TaskProducer` whose closed-loop tasks rebuild their pools from the engine's current weights at the
    scheduled steps, serve them to training draws, and keep them in the checkpoint state."""

    def produce(self, engine: Engine, step: int) -> tuple[list[Rollout], dict[str, float]]:
        roles = PolicyRoles(engine, self.processor, self.cfg.model, self.cfg.rollout.max_prompt_tokens)
        t0 = time.perf_counter()
        built = refresh_task_pools(self.sources, roles, step)
        if built:  # the step's time/step includes it; this says how much of it the pools took
            built["time/loop_refresh"] = time.perf_counter() - t0
        with serving(self.sources):
            rollouts, metrics = super().produce(engine, step)
        return rollouts, metrics | built

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"task_pools": pool_states(self.sources)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        load_pool_states(self.sources, state.get("task_pools"))
