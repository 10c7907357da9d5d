"""The delayed-reward buffer: description rollouts wait here, keyed by request id, until their reward matures.

A description written at policy version v gets its reward r_desc (`mmrl.dataserver.description`) only once
the data server has synthesized its sample and the producer has rolled that sample out, at some later
version t. The buffer holds the description (prompt, completion tokens, behaviour log-probs = the engine's
`Completion.logprobs`, v) until then; lag = t - v. Rewards maturing with lag > `max_staleness` are dropped,
and so are entries still pending when the current version passes v + `max_staleness` (they can no longer
mature in time); both are counted. Matured descriptions come out with their advantage:

`ema_baseline` (one description per seed). With b, s2 the EMA mean and variance of matured rewards, each
matured reward r, in maturation order (then request order), is scored against the statistics *before* it:

    A = (r - b) / (sqrt(s2) + eps)
    b' = mu * b + (1 - mu) * r,   s2' = mu * s2 + (1 - mu) * (r - b)^2

The first matured reward has no baseline yet: it sets b = r, s2 = 0 and gets A = 0. Dropped rewards
never touch b or s2. (Under group normalisation a constant baseline cancels; this is the "diversity
smoothing" of ../specs/syn_grpo.md §3.4, our definition.)

`group` (G_d descriptions per seed, one group): once every member has matured, A_i = (r_i - mean) /
(std + eps) over the group (population std); a member dropped for staleness drops its whole group. b and s2
are still updated (for the metrics) in the same order.

Checkpoints: `state_dict` keeps b, s2, the counters and the group-size settings, JSON-only. Pending
descriptions are **not** kept: their prompts hold processor tensors and their synthesis requests die with
the backend's queues, so a resumed run drops them deliberately (counted as `dropped/resume`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from mmrl.contracts import Completion, EncodedPrompt


@dataclass
class PendingDescription:
    """One description rollout waiting for its synthesized sample's verdict."""

    request_id: str
    group: str
    """Descriptions of the same seed in the same step (the `group` advantage normalises over it)."""
    policy_version: int
    """The step whose policy wrote it (its behaviour policy)."""
    prompt: EncodedPrompt
    completion: Completion
    """Tokens and behaviour log-probs, as the engine returned them."""
    seed_id: str = ""
    description: str = ""
    reward: float | None = None
    """r_desc once matured."""
    r_div: float = 0.0
    valid: bool = False
    matured_at: int | None = None


@dataclass
class CreditBuffer:
    """Holds description rollouts until their delayed reward matures; hands them out with advantages."""

    mode: Literal["ema_baseline", "group"] = "ema_baseline"
    """Advantage estimator (module docstring)."""
    momentum: float = 0.9
    """mu of the EMA baseline."""
    eps: float = 0.1
    """Added to the std in both estimators."""
    max_staleness: int = 4
    """Most versions between writing a description and its reward maturing."""
    group_size: int = 4
    """G_d: members of a `group` (ignored by `ema_baseline`)."""
    baseline: float | None = None
    """b: EMA mean of matured rewards (None before the first)."""
    variance: float = 0.0
    """s2: EMA variance of matured rewards."""
    counts: Counter = field(default_factory=Counter)
    _pending: dict[str, PendingDescription] = field(default_factory=dict)
    _ready: list[tuple[PendingDescription, float]] = field(default_factory=list)
    _step_rewards: list[tuple[float, float, int]] = field(default_factory=list)

    def add(self, entry: PendingDescription) -> None:
        """Hold `entry` until `resolve` gives its reward."""
        if entry.request_id in self._pending:
            raise ValueError(f"request id {entry.request_id} is already pending")
        self._pending[entry.request_id] = entry
        self.counts["added"] += 1

    def resolve(self, request_id: str, r_desc: float, r_div: float, valid: bool, version: int) -> bool:
        """The reward of `request_id` matured at policy version `version`; False when the id is not pending
        (dropped earlier, or from before a resume)."""
        entry = self._pending.get(request_id)
        if entry is None:
            self.counts["unknown_results"] += 1
            return False
        entry.reward, entry.r_div, entry.valid, entry.matured_at = float(r_desc), float(r_div), bool(valid), version
        lag = version - entry.policy_version
        if lag > self.max_staleness:
            self._drop([request_id], "stale")
            return True
        if self.mode == "ema_baseline":
            del self._pending[request_id]
            self._mature([entry], [self._ema_advantage(entry.reward)])
        else:
            members = [e for e in self._pending.values() if e.group == entry.group]
            if len(members) == self.group_size and all(e.reward is not None for e in members):
                for e in members:
                    del self._pending[e.request_id]
                rewards = np.array([e.reward for e in members])
                advantages = (rewards - rewards.mean()) / (rewards.std() + self.eps)
                for e in members:
                    self._ema_update(float(e.reward))
                self._mature(members, advantages.tolist())
        return True

    def discard(self, request_id: str, reason: str) -> None:
        """Drop a pending description that will get no reward (its request was refused or its sample went
        stale before training); in `group` mode its whole group goes with it."""
        if request_id in self._pending:
            self._drop([request_id], reason)

    def collect(self, version: int) -> list[tuple[PendingDescription, float]]:
        """The descriptions matured since the last call, with their advantages; first drops the pending ones
        that can no longer mature within `max_staleness` of `version`."""
        expired = [k for k, e in self._pending.items() if e.reward is None and version - e.policy_version >
                   self.max_staleness]  # fmt: skip
        if expired:
            self._drop(expired, "stale")
        out, self._ready = self._ready, []
        return out

    def metrics(self) -> dict[str, float]:
        """This step's matured rewards (`desc/r_div`, `desc/reward`, `desc/version_lag`, `desc/matured`), the
        baseline, and running counts (`desc/pending`, `desc/dropped/<reason>`)."""
        m: dict[str, float] = {
            "desc/pending": float(len(self._pending)),
            "desc/matured": float(len(self._step_rewards)),
        }
        if self._step_rewards:
            r_desc, r_div, lag = (np.array(col, dtype=np.float64) for col in zip(*self._step_rewards))
            m |= {"desc/r_div": float(r_div.mean()), "desc/reward": float(r_desc.mean()),
                  "desc/version_lag": float(lag.mean()), "desc/version_lag_max": float(lag.max())}  # fmt: skip
        if self.baseline is not None:
            m["desc/baseline"], m["desc/baseline_std"] = self.baseline, math.sqrt(self.variance)
        m |= {f"desc/{k}": float(v) for k, v in self.counts.items()}
        self._step_rewards = []
        return m

    # -- checkpoint state -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"baseline": self.baseline, "variance": self.variance, "counts": dict(self.counts),
                "dropped_pending": len(self._pending)}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore b, s2 and the counts; descriptions pending at the checkpoint are counted as `dropped/resume`
        (module docstring), as are any pending now."""
        self.baseline = None if state.get("baseline") is None else float(state["baseline"])
        self.variance = float(state.get("variance", 0.0))
        self.counts = Counter({k: int(v) for k, v in state.get("counts", {}).items()})
        self.counts["dropped/resume"] += int(state.get("dropped_pending", 0)) + len(self._pending)
        self._pending, self._ready = {}, []

    # -- internals ------------------------------------------------------------------------------------------

    def _ema_advantage(self, r: float) -> float:
        if self.baseline is None:
            self._ema_update(r)
            return 0.0
        advantage = (r - self.baseline) / (math.sqrt(self.variance) + self.eps)
        self._ema_update(r)
        return advantage

    def _ema_update(self, r: float) -> None:
        if self.baseline is None:
            self.baseline, self.variance = r, 0.0
            return
        mu, delta = self.momentum, r - self.baseline
        self.baseline = mu * self.baseline + (1 - mu) * r
        self.variance = mu * self.variance + (1 - mu) * delta * delta

    def _mature(self, entries: list[PendingDescription], advantages: list[float]) -> None:
        for e, a in zip(entries, advantages):
            self._ready.append((e, float(a)))
            self._step_rewards.append((float(e.reward), e.r_div, int(e.matured_at) - e.policy_version))
        self.counts["matured_total"] += len(entries)

    def _drop(self, request_ids: list[str], reason: str) -> None:
        doomed = set(request_ids)
        if self.mode == "group":
            groups = {self._pending[k].group for k in request_ids}
            doomed |= {k for k, e in self._pending.items() if e.group in groups}
        for k in doomed:
            del self._pending[k]
        self.counts[f"dropped/{reason}"] += len(doomed)


__all__ = ["CreditBuffer", "PendingDescription"]
