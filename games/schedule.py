"""Iterative-SPO: which stage of the spy game (clue or decision) the next optimiser step trains.

Vision-Zero (Wang et al. 2025, arXiv 2509.25541, Algorithm 1) alternates between training the clue
stage and the decision stage. Both stages run every step (the decision votes score the clues);
only the active stage's samples get gradients: L_t = m_t L_clue + (1 − m_t) L_dec.

Modes (`ScheduleConfig.mode`):

- `adaptive` (mmrl default; the paper's rule with bias-corrected EMAs): start in DECISION; after
  every step update the EMAs of the decision accuracy and the N/A rate (ρ = 0.95, initial 0), then
      DECISION → CLUE  when  acc ≥ 0.9 ∧ na ≤ 0.1 ∧ d ≥ K_min      (the spy is too easy to find)
      CLUE → DECISION  when  (1 − acc ≥ 0.4 ∨ na ≥ 0.5) ∧ d ≥ K_min
  with d the number of steps completed in the current stage and K_min = `min_dwell`.
- `alternate` (the released code): decision when step mod 2·cycle < cycle, else clue; no EMAs
  decide anything (they are still tracked for the logs).
- `clue`, `decision`: that stage only (ablations).

Per-step inputs come from `decision_accuracy` and `na_rate` over the step's games.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any, Literal, get_args

import numpy as np

from games.config import AccMode, ScheduleConfig, ScheduleMode
from games.scoring import Vote
from mmrl.errors import ConfigError

Stage = Literal["decision", "clue"]

TOLERANCE = 1e-9
"""Slack on every threshold comparison, so a constant input equal to a threshold reaches it even
though the bias-corrected EMA of a constant can land one rounding error short of it."""


class StageSchedule:
    """The stage state machine. `stage` is the stage of the next step; after each step call
    `observe(acc, na)` with that step's decision accuracy and N/A rate.

    `observe`, precisely (t, d and the EMAs start at 0; the first step runs in DECISION):

    1. t ← t + 1;  acc̄ ← ρ acc̄ + (1 − ρ) acc;  na̅ ← ρ na̅ + (1 − ρ) na.
    2. d ← d + 1: d counts the steps completed in the current stage, the one just observed included.
    3. Adaptive mode, with â = acc̄ / (1 − ρ^t) and n̂ = na̅ / (1 − ρ^t) under bias correction (else
       acc̄, na̅): DECISION → CLUE if â ≥ acc_to_clue ∧ n̂ ≤ na_to_clue ∧ d ≥ min_dwell; CLUE → DECISION
       if (1 − â ≥ err_to_decision ∨ n̂ ≥ na_to_decision) ∧ d ≥ min_dwell; or either way if
       patience > 0 ∧ d ≥ patience. A switch sets d ← 0.
    4. Return the stage of the next step.

    So a stage always runs at least `min_dwell` steps (at least one), the earliest switch is decided by
    the `min_dwell`-th observation of a stage, and with patience P no stage runs more than P steps.
    In `alternate` mode the next step's index is t: decision when t mod 2·cycle < cycle.
    """

    def __init__(self, cfg: ScheduleConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else ScheduleConfig()
        self.cfg.validate()
        self._stage: Stage = self._fixed_stage(0)
        self.t = 0
        """EMA updates so far (= steps observed)."""
        self.d = 0
        """Steps completed in the current stage (reset to 0 by a switch)."""
        self.acc_ema = 0.0
        """EMA of the decision accuracy (uncorrected)."""
        self.na_ema = 0.0
        """EMA of the N/A rate (uncorrected)."""
        self.switches = 0
        """Stage changes so far."""

    # -- state machine ----------------------------------------------------------------------------

    @property
    def stage(self) -> Stage:
        """The stage the next optimiser step trains: `decision` or `clue`."""
        return self._stage

    def _fixed_stage(self, step: int) -> Stage:
        if self.cfg.mode == "alternate":
            return "decision" if step % (2 * self.cfg.cycle) < self.cfg.cycle else "clue"
        if self.cfg.mode == "clue":
            return "clue"
        return "decision"  # `decision`, and the start of `adaptive`

    def corrected(self) -> tuple[float, float]:
        """(accuracy, N/A rate) as the rule compares them: bias-corrected EMAs when `bias_correction`
        is on (0 before the first observation), else the raw EMAs."""
        if not self.cfg.bias_correction:
            return self.acc_ema, self.na_ema
        if self.t == 0:
            return 0.0, 0.0
        scale = 1.0 - self.cfg.rho**self.t
        return self.acc_ema / scale, self.na_ema / scale

    def _wants_switch(self) -> bool:
        cfg = self.cfg
        if cfg.patience > 0 and self.d >= cfg.patience:
            return True
        if self.d < cfg.min_dwell:
            return False
        acc, na = self.corrected()
        if self._stage == "decision":
            return acc >= cfg.acc_to_clue - TOLERANCE and na <= cfg.na_to_clue + TOLERANCE
        return 1.0 - acc >= cfg.err_to_decision - TOLERANCE or na >= cfg.na_to_decision - TOLERANCE

    def observe(self, acc: float, na: float) -> Stage:
        """Record the finished step's decision accuracy and N/A rate (both in [0, 1]); return the
        stage of the next step (see the class docstring for the exact order of updates)."""
        acc, na = float(acc), float(na)
        if not (0.0 <= acc <= 1.0 and 0.0 <= na <= 1.0):
            raise ValueError(f"acc and na must be in [0, 1], got acc={acc}, na={na}")
        rho = self.cfg.rho
        self.t += 1
        self.acc_ema = rho * self.acc_ema + (1.0 - rho) * acc
        self.na_ema = rho * self.na_ema + (1.0 - rho) * na
        self.d += 1
        new = self._stage
        if self.cfg.mode != "adaptive":
            new = self._fixed_stage(self.t)
        elif self._wants_switch():
            new = "clue" if self._stage == "decision" else "decision"
        if new != self._stage:
            self._stage = new
            self.d = 0
            self.switches += 1
        return self._stage

    # -- logging and checkpoints ------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        """Numbers to log: `acc_ema`, `na_ema` (raw EMAs), `acc_hat`, `na_hat` (as compared by the
        rule), `stage` (1 = clue, 0 = decision, for the next step), `dwell` (d), `switches`."""
        acc_hat, na_hat = self.corrected()
        return {
            "acc_ema": self.acc_ema,
            "na_ema": self.na_ema,
            "acc_hat": acc_hat,
            "na_hat": na_hat,
            "stage": 1.0 if self._stage == "clue" else 0.0,
            "dwell": float(self.d),
            "switches": float(self.switches),
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything `observe` depends on besides the config; plain Python values (JSON-safe)."""
        return {
            "stage": self._stage,
            "t": self.t,
            "d": self.d,
            "acc_ema": self.acc_ema,
            "na_ema": self.na_ema,
            "switches": self.switches,
            "config": asdict(self.cfg),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict`. The current config stays in force (a resumed run may change it); the
        saved one is kept in the dict for reference only."""
        stage = state["stage"]
        if stage not in get_args(Stage):
            raise ValueError(f"checkpointed stage must be one of {list(get_args(Stage))}, got {stage!r}")
        self._stage = stage
        self.t = int(state["t"])
        self.d = int(state["d"])
        self.acc_ema = float(state["acc_ema"])
        self.na_ema = float(state["na_ema"])
        self.switches = int(state.get("switches", 0))


# --------------------------------------------------------------------------------------------------
# Per-step inputs


def _check_games(votes_per_game: Sequence[Sequence[Vote]], spies: Sequence[int] | None = None) -> None:
    if len(votes_per_game) == 0:
        raise ValueError("need at least one game")
    if spies is not None and len(spies) != len(votes_per_game):
        raise ValueError(f"got {len(votes_per_game)} games but {len(spies)} spy seats")


def _plurality_is(votes: Sequence[Vote], spy: int) -> bool:
    """Whether the spy strictly out-polls every other option: each other seat, and N/A."""
    counts: dict[int | None, int] = {}
    for v in votes:
        if v.kind != "invalid":
            counts[v.player] = counts.get(v.player, 0) + 1  # abstentions under None
    spy_votes = counts.pop(spy, 0)
    return spy_votes > 0 and all(spy_votes > c for c in counts.values())


def decision_accuracy(votes_per_game: Sequence[Sequence[Vote]], spies: Sequence[int], mode: AccMode = "mean") -> float:
    """The step's decision accuracy acc_t over B games, each with its G decision votes.

    - `mean`: (1/B) Σ_b (votes naming spy_b) / G_b — abstentions and invalid votes count as misses;
      a game without votes counts 0.
    - `majority`: (1/B) Σ_b 1[the spy strictly out-polls every other seat and N/A] — the paper's
      acc_t = (1/B) Σ 1[argmax_y q(y | H) = s*] with q the empirical vote frequencies; a tie is a miss.
    """
    _check_games(votes_per_game, spies)
    if mode not in get_args(AccMode):
        raise ConfigError(f"acc_mode must be one of {list(get_args(AccMode))}, got {mode!r}")
    if mode == "majority":
        hits = [_plurality_is(votes, spy) for votes, spy in zip(votes_per_game, spies)]
    else:
        hits = [
            sum(v.kind == "player" and v.player == spy for v in votes) / len(votes) if votes else 0.0
            for votes, spy in zip(votes_per_game, spies)
        ]
    return float(np.mean(hits))


def na_rate(votes_per_game: Sequence[Sequence[Vote]]) -> float:
    """The step's N/A rate na_t = (1/B) Σ_b (abstentions in game b) / G_b: the empirical stand-in for
    the paper's q_θ(∅ | H), which a generative policy has no closed form for. A game without votes counts 0."""
    _check_games(votes_per_game)
    return float(
        np.mean([sum(v.kind == "abstain" for v in votes) / len(votes) if votes else 0.0 for votes in votes_per_game])
    )


__all__ = [
    "TOLERANCE",
    "AccMode",
    "ScheduleConfig",
    "ScheduleMode",
    "Stage",
    "StageSchedule",
    "decision_accuracy",
    "na_rate",
]
