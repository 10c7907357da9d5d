"""Iterative-SPO stage schedule: scripted accuracy / N/A sequences, switch steps worked out by hand."""

from __future__ import annotations

import json
from dataclasses import fields

import numpy as np
import pytest

from games.schedule import TOLERANCE, ScheduleConfig, StageSchedule, decision_accuracy, na_rate
from games.scoring import ABSTAIN, INVALID, Vote
from mmrl.config import field_docs
from mmrl.errors import ConfigError


def P(k: int) -> Vote:
    return Vote("player", k)


def run(schedule: StageSchedule, accs: list[float], nas: list[float] | None = None) -> str:
    """Feed the sequences; return the stage returned by each observe as a string of D/C."""
    nas = nas if nas is not None else [0.0] * len(accs)
    return "".join(schedule.observe(a, n)[0].upper() for a, n in zip(accs, nas))


# Rule thresholds that always hold, so only min_dwell (and d) decides when a switch happens.
ALWAYS = {"acc_to_clue": 0.0, "na_to_clue": 1.0, "err_to_decision": 0.0}


# --------------------------------------------------------------------------------------------------
# Config


def test_config_defaults_match_the_sheet_and_every_field_is_documented() -> None:
    cfg = ScheduleConfig()
    assert (cfg.mode, cfg.rho, cfg.min_dwell, cfg.patience, cfg.bias_correction, cfg.cycle, cfg.acc_mode) == (
        "adaptive",
        0.95,
        5,
        0,
        True,
        1,
        "mean",
    )
    assert (cfg.acc_to_clue, cfg.na_to_clue, cfg.err_to_decision, cfg.na_to_decision) == (0.9, 0.1, 0.4, 0.5)
    docs = field_docs(ScheduleConfig)
    assert all(docs.get(f.name) for f in fields(ScheduleConfig))


@pytest.mark.parametrize(
    "overrides",
    [
        {"mode": "random"},
        {"acc_mode": "median"},
        {"rho": 1.0},
        {"rho": -0.1},
        {"acc_to_clue": 1.5},
        {"na_to_decision": -0.2},
        {"min_dwell": -1},
        {"patience": -1},
        {"patience": 3, "min_dwell": 5},
        {"cycle": 0},
    ],
)
def test_config_rejects_bad_values(overrides: dict) -> None:
    with pytest.raises(ConfigError):
        ScheduleConfig(**overrides)


def test_config_checked_again_when_the_schedule_is_built() -> None:
    cfg = ScheduleConfig()
    cfg.cycle = 0  # e.g. a later override
    with pytest.raises(ConfigError):
        StageSchedule(cfg)


# --------------------------------------------------------------------------------------------------
# Adaptive rule


def test_starts_in_decision_and_first_switch_waits_for_min_dwell() -> None:
    s = StageSchedule()
    assert s.stage == "decision"
    # bias-corrected EMA of perfect steps is 1 from the first step; d reaches K_min = 5 on the 5th
    assert run(s, [1.0] * 5) == "DDDDC"
    assert s.metrics()["stage"] == 1.0 and s.metrics()["dwell"] == 0.0 and s.switches == 1


def test_clue_to_decision_waits_for_min_dwell_after_the_rule_holds() -> None:
    # After 5 perfect steps acc̄ = 1 - 0.95^5 = 0.22622. Then zeros: â = 0.22622 * 0.95^k / (1 - 0.95^(5+k)):
    #   k = 1: 0.811, k = 2: 0.677, k = 3: 0.576 -> error 0.424 >= 0.4 holds from the 3rd clue step.
    s = StageSchedule(ScheduleConfig(min_dwell=5))
    assert run(s, [1.0] * 5 + [0.0] * 5) == "DDDDC" + "CCCCD"  # the rule holds at k = 3, d = 5 at k = 5
    s = StageSchedule(ScheduleConfig(min_dwell=3))
    assert run(s, [1.0] * 3 + [1.0] * 2 + [0.0] * 3) == "DDC" + "CC" + "CCD"  # switches at obs 3 and obs 8


def test_decision_to_clue_exactly_when_the_corrected_ema_crosses() -> None:
    # rho 0.5, corrected â_t = acc̄_t / (1 - 0.5^t), acc = 0, 0, 1, 1, 1:
    #   acc̄ = 0, 0, 0.5, 0.75, 0.875 -> â = 0, 0, 0.571, 0.8, 0.903 (>= 0.9 only at t = 5)
    cfg = ScheduleConfig(rho=0.5, min_dwell=1)
    assert run(StageSchedule(cfg), [0, 0, 1, 1, 1]) == "DDDDC"
    # a longer dwell postpones it to t = 6 (â = 0.9375 / 0.984 = 0.952)
    assert run(StageSchedule(ScheduleConfig(rho=0.5, min_dwell=6)), [0, 0, 1, 1, 1, 1]) == "DDDDDC"


def test_high_na_blocks_decision_to_clue() -> None:
    # as above, but N/A 0.5 at t = 5: na̅ = 0.25, 0.125, 0.0625 -> n̂ = 0.258, 0.127, 0.063 at t = 5, 6, 7
    cfg = ScheduleConfig(rho=0.5, min_dwell=1)
    assert run(StageSchedule(cfg), [0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0.5, 0, 0]) == "DDDDDDC"


def test_clue_to_decision_on_na_alone_or_error_alone() -> None:
    cfg = ScheduleConfig(rho=0.5, min_dwell=1)
    # N/A: after the switch at t = 5 (acc̄ 0.875), acc 1 / na 1 gives n̂ = 0.5 / 0.984 = 0.508 >= 0.5
    # while the error 1 - 0.952 is small: the "or" alone switches back
    assert run(StageSchedule(cfg), [0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]) == "DDDDCD"
    # error: acc 0.5 -> acc̄ 0.6875, 0.59375 -> â 0.698, 0.598 -> error 0.302, 0.402 (>= 0.4 at t = 7)
    assert run(StageSchedule(cfg), [0, 0, 1, 1, 1, 0.5, 0.5]) == "DDDDCCD"


def test_without_bias_correction_the_first_switch_needs_45_perfect_steps() -> None:
    # acc̄_k = 1 - 0.95^k >= 0.9  <=>  k >= 45 (0.95^44 = 0.105, 0.95^45 = 0.099)
    s = StageSchedule(ScheduleConfig(bias_correction=False))
    assert run(s, [1.0] * 45) == "D" * 44 + "C"
    assert s.metrics()["acc_ema"] == pytest.approx(1 - 0.95**45, abs=1e-12)
    assert s.metrics()["acc_hat"] == s.metrics()["acc_ema"]
    corrected = StageSchedule(ScheduleConfig(bias_correction=True))
    assert run(corrected, [1.0] * 45) == "DDDDC" + "C" * 40  # and it stays: the error is 0
    assert corrected.metrics()["acc_hat"] == pytest.approx(1.0, abs=1e-12)


def test_threshold_equality_counts_as_reached() -> None:
    # constant acc 0.9 / na 0.1: the corrected EMAs equal the thresholds (up to rounding)
    s = StageSchedule(ScheduleConfig())
    assert run(s, [0.9] * 5, [0.1] * 5) == "DDDDC"
    assert abs(s.metrics()["acc_hat"] - 0.9) < TOLERANCE


def test_d_counts_completed_steps_and_resets_on_switch() -> None:
    s = StageSchedule(ScheduleConfig(min_dwell=3, **ALWAYS))
    stages, dwell = "", []
    for _ in range(9):
        stages += s.observe(0.5, 0.0)[0].upper()
        dwell.append(s.metrics()["dwell"])
    # each stage runs exactly 3 steps: steps 0-2 decision, 3-5 clue, 6-8 decision, then clue
    assert stages == "DDCCCDDDC"
    assert dwell == [1, 2, 0, 1, 2, 0, 1, 2, 0]
    # min_dwell 0 and 1 both mean "at least one step": switch after every step
    for k in (0, 1):
        assert run(StageSchedule(ScheduleConfig(min_dwell=k, **ALWAYS)), [0.5] * 4) == "CDCD"


def test_patience_forces_a_switch() -> None:
    # acc 0.7: never >= 0.9 (stay in decision), error 0.3 < 0.4 (stay in clue): only patience switches
    assert run(StageSchedule(ScheduleConfig()), [0.7] * 100) == "D" * 100
    s = StageSchedule(ScheduleConfig(patience=8))
    assert run(s, [0.7] * 24) == "D" * 7 + "C" * 8 + "D" * 8 + "C"
    assert s.switches == 3
    # patience equal to min_dwell: every stage runs exactly that long
    assert run(StageSchedule(ScheduleConfig(patience=5)), [0.7] * 10) == "DDDDCCCCCD"


def test_random_runs_switch_exactly_when_the_rule_says() -> None:
    rng = np.random.default_rng(3)
    for trial in range(40):
        cfg = ScheduleConfig(
            rho=float(rng.choice([0.5, 0.8, 0.95])),
            min_dwell=int(rng.integers(0, 8)),
            bias_correction=bool(trial % 2),
        )
        if trial % 4 == 0:
            cfg.patience = max(cfg.min_dwell, 1) + int(rng.integers(0, 10))
        s = StageSchedule(cfg)
        runs, length = [], 0
        for _ in range(200):
            acc, na = float(rng.beta(3, 1)), float(rng.beta(1, 6))
            before, d_next = s.stage, s.d + 1
            after = s.observe(acc, na)
            m = s.metrics()
            if before == "decision":
                rule = m["acc_hat"] >= cfg.acc_to_clue - TOLERANCE and m["na_hat"] <= cfg.na_to_clue + TOLERANCE
            else:
                rule = 1 - m["acc_hat"] >= cfg.err_to_decision - TOLERANCE or m["na_hat"] >= 0.5 - TOLERANCE
            forced = cfg.patience > 0 and d_next >= cfg.patience
            assert (after != before) == ((rule and d_next >= cfg.min_dwell) or forced)
            length += 1
            if after != before:
                runs.append(length)
                length = 0
        assert all(r >= max(cfg.min_dwell, 1) for r in runs)
        if cfg.patience:
            assert all(r <= cfg.patience for r in runs)


# --------------------------------------------------------------------------------------------------
# Other modes


@pytest.mark.parametrize("cycle, pattern", [(1, "DC" * 6), (3, "DDDCCC" * 2)])
def test_alternate_mode(cycle: int, pattern: str) -> None:
    s = StageSchedule(ScheduleConfig(mode="alternate", cycle=cycle))
    stages = s.stage[0].upper()  # step 0
    stages += run(s, [1.0] * 11)  # steps 1..11, whatever the accuracy
    assert stages == pattern


@pytest.mark.parametrize("mode", ["clue", "decision"])
def test_fixed_modes(mode: str) -> None:
    s = StageSchedule(ScheduleConfig(mode=mode))
    assert s.stage == mode
    assert run(s, [1.0] * 10 + [0.0] * 10, [0.0] * 10 + [1.0] * 10) == mode[0].upper() * 20
    assert s.switches == 0 and s.metrics()["dwell"] == 20


# --------------------------------------------------------------------------------------------------
# Checkpoints, metrics and input checks


@pytest.mark.parametrize("mode", ["adaptive", "alternate"])
def test_state_dict_round_trip_gives_identical_future(mode: str) -> None:
    # blocks of 15 easy steps (acc ~0.97) and 15 hard ones (acc ~0.4), with noise: both stages occur
    rng = np.random.default_rng(11)
    level = [0.97 if (i // 15) % 2 == 0 else 0.4 for i in range(120)]
    seq = [(min(1.0, lv + float(rng.uniform(-0.03, 0.03))), float(rng.uniform(0, 0.05))) for lv in level]
    cfg = dict(mode=mode, cycle=2, min_dwell=3, rho=0.8)
    a = StageSchedule(ScheduleConfig(**cfg))
    for acc, na in seq[:37]:
        a.observe(acc, na)
    b = StageSchedule(ScheduleConfig(**cfg))
    assert b.metrics() != a.metrics()
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.stage == a.stage and b.metrics() == a.metrics() and b.state_dict() == a.state_dict()
    future_a, future_b = [], []
    for acc, na in seq[37:]:
        future_a.append((a.observe(acc, na), a.metrics()))
        future_b.append((b.observe(acc, na), b.metrics()))
    assert future_a == future_b
    assert len({stage for stage, _ in future_a}) == 2  # the sequence exercises both stages


# --------------------------------------------------------------------------------------------------
# Per-step accuracy and N/A rate

GAMES = [
    [P(2), P(2), P(1), ABSTAIN],  # spy 2: 2/4 right; plurality spy (2 > 1, 1)       -> hit
    [P(1), P(3), P(3), INVALID],  # spy 1: 1/4;       player 3 out-polls the spy      -> miss
    [ABSTAIN, ABSTAIN, P(3), INVALID],  # spy 3: 1/4; N/A out-polls the spy           -> miss
    [P(4), P(1), INVALID, INVALID],  # spy 4: 1/4;    tie 1-1                         -> miss
    [P(1), INVALID, INVALID, INVALID],  # spy 1: 1/4; sole valid vote (invalid is no option) -> hit
]
SPIES = [2, 1, 3, 4, 1]


def test_decision_accuracy_and_na_rate_by_hand() -> None:
    assert decision_accuracy(GAMES, SPIES, "mean") == pytest.approx((0.5 + 4 * 0.25) / 5)
    assert decision_accuracy(GAMES, SPIES, "majority") == pytest.approx(2 / 5)
    assert na_rate(GAMES) == pytest.approx((0.25 + 0.5) / 5)  # one N/A in game 1, two in game 3


def test_accuracy_edge_cases() -> None:
    assert decision_accuracy([[], [P(1)]], [1, 1]) == 0.5  # a game without votes counts 0
    assert decision_accuracy([[ABSTAIN]], [1], "majority") == 0.0
    assert na_rate([[], [ABSTAIN, P(1)]]) == 0.25
    with pytest.raises(ValueError):
        decision_accuracy([], [])
    with pytest.raises(ValueError):
        decision_accuracy(GAMES, SPIES[:2])
    with pytest.raises(ValueError):
        na_rate([])
    with pytest.raises(ConfigError):
        decision_accuracy(GAMES, SPIES, "argmax")  # type: ignore[arg-type]
