"""`SynGRPOProducer`: task batches with synthesized samples mixed in, and the description task trained on the
delayed diversity reward (docs/syn_grpo.md; ../specs/syn_grpo.md §3, our design).

One step t (B = data.prompts_per_step, rho = dataserver.syn_fraction):

    poll the backend -> rejected requests mature with r_desc = 0; accepted samples wait in a local list
    drop waiting samples written more than max_sample_age versions ago (their descriptions are dropped too)
    k_syn = min(#waiting, floor(rho * B)) synthesized samples (oldest first) + B - k_syn from the task pool
        (`TaskProducer.prepare`: the pool part keeps its seeds, order and resume behaviour)
    one engine call for all B prompts -> score -> GRPO group advantages (task rollouts)
    each synthesized group -> r_div = 4 Var(accuracy) -> r_desc for its request (CreditBuffer.resolve)
    seeds for new descriptions: `descriptions_per_step` of this step's original samples -> one engine call
        -> submit one request per description (a refused submit is counted and dropped, never retried)
    matured descriptions (CreditBuffer.collect) join the step's rollouts, flagged `off_policy` so the trainer
        takes their behaviour log-probs as the old ones

The producer never waits on the backend: every backend call is non-blocking, and the time spent inside them
is measured (`dataserver/backend_s`; a step with more than 50 ms of it counts in `dataserver/waited_share`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections import Counter
from typing import Any

import numpy as np

from mmrl.config import RunConfig
from mmrl.contracts import EncodedPrompt, Engine, Rollout
from mmrl.dataserver.credit import CreditBuffer, PendingDescription
from mmrl.dataserver.description import (
    DESCRIPTION_TASK,
    accuracy_of,
    description_messages,
    description_reward,
    diversity_reward,
    parse_description,
)
from mmrl.dataserver.protocol import LOST, DataBackend, Rejected, SynthesisRequest, SynthesisResult
from mmrl.errors import ConfigError, MMRLError
from mmrl.grpo.advantages import group_advantages, zero_variance_groups
from mmrl.producers import Prepared, TaskProducer
from mmrl.rollout import sampling_params
from mmrl.rollout.encode import encode_prompt

log = logging.getLogger(__name__)

WAIT_THRESHOLD_S = 0.050
"""A step whose backend calls took longer than this in total counts as having waited. The calls are queue
operations (~0.2 ms); they can stall a few ms for the GIL while the client's I/O thread encodes images, but a
call that really waits on a server (a connection, a timeout of seconds) is far above 50 ms."""


def make_backend(cfg: RunConfig) -> DataBackend:
    """The backend `cfg.dataserver` names: in-process synthesis threads, or the HTTP client of `mmrl serve-data`."""
    ds = cfg.dataserver
    if ds.backend == "inprocess":
        from mmrl.dataserver.synthesizers import build_synthesizer
        from mmrl.dataserver.workers import WorkerPool

        build_synthesizer(ds.synthesizer, ds.synthesizer_params, 0)  # a bad name or parameter fails here, loudly
        return WorkerPool(lambda w: build_synthesizer(ds.synthesizer, ds.synthesizer_params, w), workers=ds.workers,
                          request_queue=ds.request_queue, ready_queue=ds.ready_queue, seed=cfg.data.seed)  # fmt: skip
    try:
        from mmrl.dataserver.client import HttpBackend
    except ImportError as e:
        raise ConfigError(f"dataserver.backend=http needs mmrl.dataserver.client, which cannot be imported ({e}); "
                          "use dataserver.backend=inprocess") from e  # fmt: skip
    return HttpBackend(list(ds.urls), ds.token or os.environ.get("MMRL_DATA_TOKEN", ""),
                       outbox=ds.request_queue, inbox=ds.ready_queue)  # fmt: skip


class SynGRPOProducer:
    """A `Producer`: the task mixture of `data.sources` plus synthesized samples and description rollouts."""

    def __init__(self, cfg: RunConfig, processor: Any, rank: int = 0, backend: DataBackend | None = None) -> None:
        if cfg.algorithm.dynamic_sampling or cfg.algorithm.replay:
            raise ConfigError("dataserver.enabled does not combine with algorithm.dynamic_sampling or "
                              "algorithm.replay (both resample the batch the synthesized share is set in)")  # fmt: skip
        ds = cfg.dataserver
        self.cfg, self.processor, self.rank = cfg, processor, rank
        self.pool = TaskProducer(cfg, processor, rank=rank)
        self.backend = backend if backend is not None else make_backend(cfg)
        self.credit = CreditBuffer(ds.desc_advantage, ds.ema_momentum, ds.desc_eps, ds.max_staleness,
                                   ds.desc_group_size)  # fmt: skip
        self.waiting: list[SynthesisResult] = []
        self.counts: Counter[str] = Counter()

    # -- Producer ---------------------------------------------------------------------------------------

    def produce(self, engine: Engine, step: int) -> tuple[list[Rollout], dict[str, float]]:
        cfg, ds = self.cfg, self.cfg.dataserver
        clock = _Clock()
        self._take_results(clock.call(self.backend.poll, ds.poll_max), step)
        want = cfg.data.prompts_per_step
        k_syn = min(len(self.waiting), math.floor(ds.syn_fraction * want))
        taken, self.waiting = self.waiting[:k_syn], self.waiting[k_syn:]
        synthesized = [p for p in (self._prepare_synthesized(r) for r in taken) if p is not None]
        originals = [self.pool.prepare(step, 0, slot) for slot in range(want - len(synthesized))]

        metrics: dict[str, float] = {"time/generate": 0.0}
        prepared = originals + [p for p, _ in synthesized]
        seed = int(np.random.default_rng([cfg.train.seed, self.rank, step, 0]).integers(2**31))
        t0 = time.perf_counter()
        completions = engine.generate(
            [p.prompt for p in prepared], cfg.rollout.n, sampling_params(cfg.rollout, seed=seed)
        )
        metrics["time/generate"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        ids = [f"{step}.0.{slot}" for slot in range(len(originals))]
        ids += [f"{step}.syn.{i}" for i in range(len(synthesized))]
        groups = [self.pool._score(p, comps, gid) for p, comps, gid in zip(prepared, completions, ids)]
        metrics["time/score"] = time.perf_counter() - t0
        rollouts = [r for g in groups for r in g]
        advantages = group_advantages(np.array([r.reward for r in rollouts]), [r.group_id for r in rollouts],
                                      cfg.algorithm.advantage, cfg.algorithm.advantage_eps)  # fmt: skip
        for r, a in zip(rollouts, advantages):
            r.advantage = float(a)
        for group, (_, result) in zip(groups[len(originals) :], synthesized):
            for r in group:
                r.meta["synthesized"] = True
            r_div = diversity_reward([accuracy_of(r.reward_parts, r.reward) for r in group])
            self.credit.resolve(result.request_id, description_reward(True, r_div, ds.w_valid), r_div, True, step)
        metrics |= self.pool._metrics(rollouts, rollouts)
        metrics |= _zero_std_shares(groups[: len(originals)], groups[len(originals) :])
        metrics["syn/share"] = len(synthesized) / max(len(prepared), 1)
        metrics["syn/waiting"] = float(len(self.waiting))

        if ds.syn_fraction > 0 and ds.descriptions_per_step > 0 and originals:
            t0 = time.perf_counter()
            self._describe(engine, step, originals, clock)
            metrics["time/describe"] = time.perf_counter() - t0
        matured = self.credit.collect(step)
        rollouts += [_description_rollout(entry, advantage) for entry, advantage in matured]
        metrics |= self.credit.metrics()
        metrics |= clock.call(self.backend.metrics)
        self.counts["steps"] += 1
        self.counts["waited_steps"] += int(clock.seconds > WAIT_THRESHOLD_S)
        metrics |= {f"syn/{k}": float(v) for k, v in self.counts.items()}
        metrics["dataserver/backend_s"] = clock.seconds
        metrics["dataserver/step_waited"] = float(clock.seconds > WAIT_THRESHOLD_S)
        metrics["dataserver/waited_share"] = self.counts["waited_steps"] / self.counts["steps"]
        return rollouts, metrics

    def evaluate(self, engine: Engine) -> dict[str, float]:
        """Held-out metrics on original samples only (`TaskProducer.evaluate`)."""
        return self.pool.evaluate(engine)

    def heldout(self, count: int) -> list[Prepared]:
        return self.pool.heldout(count)

    def sft_examples(self, step: int, count: int) -> list[tuple[EncodedPrompt, str]]:
        return self.pool.sft_examples(step, count)

    def state_dict(self) -> dict[str, Any]:
        """The pool's state (resume draws the same original samples), the credit buffer's baseline and counts,
        and this producer's counts. Waiting samples and pending descriptions are dropped on resume (counted)."""
        return {"pool": self.pool.state_dict(), "credit": self.credit.state_dict(), "counts": dict(self.counts),
                "waiting": len(self.waiting)}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Also takes a plain `TaskProducer` state, so a run may switch the data server on when resuming."""
        if "pool" not in state:
            self.pool.load_state_dict(state)
            return
        self.pool.load_state_dict(state["pool"])
        self.credit.load_state_dict(state.get("credit", {}))
        self.counts = Counter({k: int(v) for k, v in state.get("counts", {}).items()})
        self.counts["dropped_samples/resume"] += int(state.get("waiting", 0))

    def close(self) -> None:
        """Stop the backend's threads and connections."""
        self.backend.close()

    # -- internals --------------------------------------------------------------------------------------

    def _take_results(self, results: list[SynthesisResult], step: int) -> None:
        """Rejected requests mature now with r_desc = 0; accepted samples wait; too old ones are dropped; requests
        the backend lost drop their pending description (no verdict on it, so no reward either way)."""
        for result in results:
            if result.reject_reason == LOST:
                self.counts["lost_requests"] += 1
                self.credit.discard(result.request_id, "lost")
            elif result.accepted:
                self.waiting.append(result)
                if (result.sample.meta.get("synthesized") or {}).get("unchecked_new_instance"):
                    self.counts["unchecked_new_instance"] += 1  # outpaint without a detector (docs/syn_grpo.md)
            else:
                self.counts["rejected_results"] += 1
                self.credit.resolve(result.request_id, 0.0, 0.0, False, step)
        fresh = []
        for result in self.waiting:
            if step - result.policy_version > self.cfg.dataserver.max_sample_age:
                self.counts["dropped_samples/stale"] += 1
                self.credit.discard(result.request_id, "sample_stale")
            else:
                fresh.append(result)
        self.waiting = fresh

    def _prepare_synthesized(self, result: SynthesisResult) -> tuple[Prepared, SynthesisResult] | None:
        sample = result.sample
        try:
            task = next((s.reward_for(sample) for s in self.pool.sources if s.spec.task == sample.task), None)
            if task is None:
                raise MMRLError(f"its task {sample.task} is not one of data.sources")
            prompt = encode_prompt(self.processor, sample.messages, self.cfg.model,
                                   max_prompt_tokens=self.cfg.rollout.max_prompt_tokens)  # fmt: skip
        except MMRLError as e:
            self.counts["dropped_samples/unusable"] += 1
            self.credit.discard(result.request_id, "sample_unusable")
            log.warning("dropping synthesized sample %s: %s", sample.id, e)
            return None
        return Prepared(sample, prompt, task), result

    def _describe(self, engine: Engine, step: int, originals: list[Prepared], clock: _Clock) -> None:
        """Descriptions for a few of this step's original samples (one engine call), then one request each."""
        ds, cfg = self.cfg.dataserver, self.cfg
        rng = np.random.default_rng([cfg.data.seed, self.rank, step, 13])
        chosen = rng.choice(len(originals), size=min(ds.descriptions_per_step, len(originals)), replace=False)
        seeds, prompts = [], []
        for i in sorted(int(i) for i in chosen):
            try:
                messages = description_messages(originals[i].sample, think=ds.desc_think, mode=ds.desc_answer_mode)
                prompts.append(encode_prompt(self.processor, messages, cfg.model,
                                             max_prompt_tokens=cfg.rollout.max_prompt_tokens))  # fmt: skip
                seeds.append(originals[i].sample)
            except (Rejected, MMRLError) as e:
                self.counts["seeds_unusable"] += 1
                log.debug("no description prompt for %s: %s", originals[i].sample.id, e)
        if not prompts:
            return
        per_seed = ds.desc_group_size if ds.desc_advantage == "group" else 1
        sampling = dataclasses.replace(sampling_params(cfg.rollout, seed=int(rng.integers(2**31))),
                                       max_new_tokens=ds.desc_max_new_tokens)  # fmt: skip
        for i, (seed, prompt, comps) in enumerate(zip(seeds, prompts, engine.generate(prompts, per_seed, sampling))):
            for j, completion in enumerate(comps):
                request_id = f"{self.rank}.{step}.{i}.{j}"
                text = parse_description(completion.text, ds.desc_answer_mode)
                self.credit.add(PendingDescription(request_id, f"{self.rank}.{step}.{i}", step, prompt, completion,
                                                   seed_id=seed.id, description=text))  # fmt: skip
                if not text:
                    self.counts["empty_descriptions"] += 1
                    self.credit.resolve(request_id, 0.0, 0.0, False, step)
                elif clock.call(self.backend.submit, SynthesisRequest(request_id, seed, text, step)):
                    self.counts["submitted"] += 1
                else:
                    self.counts["submit_refused"] += 1
                    self.credit.discard(request_id, "refused")


class _Clock:
    """Sums the seconds spent inside backend calls."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def call(self, fn, *args):
        t0 = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds += time.perf_counter() - t0


def _zero_std_shares(original: list[list[Rollout]], synthesized: list[list[Rollout]]) -> dict[str, float]:
    """`frac_zero_std_groups/original` and `/synthesized`: share of groups whose rewards are all equal."""
    out = {}
    for name, groups in (("original", original), ("synthesized", synthesized)):
        if groups:
            rollouts = [r for g in groups for r in g]
            flat = zero_variance_groups(np.array([r.reward for r in rollouts]), [r.group_id for r in rollouts])
            out[f"frac_zero_std_groups/{name}"] = len(flat) / len(groups)
    return out


def _description_rollout(entry: PendingDescription, advantage: float) -> Rollout:
    return Rollout(
        prompt=entry.prompt,
        completion=entry.completion,
        reward=float(entry.reward),
        advantage=advantage,
        group_id=f"desc.{entry.group}",
        sample_id=entry.seed_id,
        task=DESCRIPTION_TASK,
        reward_parts={"r_div": entry.r_div, "valid": float(entry.valid)},
        meta={"off_policy": True, "policy_version": entry.policy_version, "request_id": entry.request_id},
    )


__all__ = ["WAIT_THRESHOLD_S", "SynGRPOProducer", "make_backend"]
