"""The delayed-reward buffer of Syn-GRPO: EMA-baseline and group advantages by hand, staleness drops, and the
description reward formulas."""

import json
import math

import pytest
import torch

from mmrl.contracts import Completion, EncodedPrompt
from mmrl.dataserver.credit import CreditBuffer, PendingDescription
from mmrl.dataserver.description import description_reward, diversity_reward, parse_description


def entry(request_id: str, version: int, group: str = "g") -> PendingDescription:
    prompt = EncodedPrompt(torch.tensor([1, 2, 3]))
    return PendingDescription(request_id, group, version, prompt, Completion([5, 6], [-0.5, -0.7], "x", "stop"))


def test_diversity_reward_is_four_times_the_population_variance():
    assert diversity_reward([1, 0, 1, 0]) == pytest.approx(1.0)  # p = 1/2: 4 p (1 - p) = 1
    assert diversity_reward([1, 0, 0, 0]) == pytest.approx(4 * 0.25 * 0.75)
    assert diversity_reward([1, 1, 1, 1]) == 0.0 and diversity_reward([0.0, 0.0]) == 0.0
    assert diversity_reward([0.2, 0.6]) == pytest.approx(4 * 0.04)
    assert diversity_reward([float("nan"), 1.0]) == 0.0 and diversity_reward([1.0]) == 0.0
    assert description_reward(True, 0.5, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)
    assert description_reward(False, 0.9, 0.1) == 0.0
    assert parse_description("<think>hm</think><answer> a red sky </answer>") == "a red sky"
    assert parse_description("no tags") == "" and parse_description(None) == ""


def test_ema_baseline_advantages_match_the_hand_computation():
    buf = CreditBuffer("ema_baseline", momentum=0.5, eps=0.1, max_staleness=4)
    for i in range(3):
        buf.add(entry(f"r{i}", 0, group=f"g{i}"))
    buf.resolve("r0", 0.4, 0.4, True, 1)  # first: b = 0.4, s2 = 0, A = 0
    buf.resolve("r1", 0.8, 0.8, True, 2)  # A = (0.8 - 0.4) / (0 + 0.1) = 4; b = 0.6, s2 = 0.5 * 0.16 = 0.08
    buf.resolve("r2", 0.2, 0.2, True, 2)  # A = (0.2 - 0.6) / (sqrt(0.08) + 0.1)
    out = buf.collect(2)
    assert [e.request_id for e, _ in out] == ["r0", "r1", "r2"]
    advantages = [a for _, a in out]
    assert advantages[0] == 0.0 and advantages[1] == pytest.approx(4.0)
    assert advantages[2] == pytest.approx(-0.4 / (math.sqrt(0.08) + 0.1))
    # b = 0.5 * 0.6 + 0.5 * 0.2 = 0.4; s2 = 0.5 * 0.08 + 0.5 * 0.16 = 0.12
    assert buf.baseline == pytest.approx(0.4) and buf.variance == pytest.approx(0.12)
    m = buf.metrics()
    assert m["desc/matured"] == 3 and m["desc/version_lag"] == pytest.approx((1 + 2 + 2) / 3)
    assert m["desc/baseline"] == pytest.approx(0.4) and buf.collect(3) == []


def test_group_advantages_wait_for_every_member_and_normalise_within_the_group():
    buf = CreditBuffer("group", eps=0.1, max_staleness=4, group_size=3)
    for i in range(3):
        buf.add(entry(f"a{i}", 0, group="A"))
    buf.resolve("a0", 1.0, 1.0, True, 1)
    buf.resolve("a1", 0.0, 0.0, False, 1)
    assert buf.collect(1) == []  # a2 has not matured
    buf.resolve("a2", 0.5, 0.5, True, 2)
    out = dict((e.request_id, a) for e, a in buf.collect(2))
    std = math.sqrt(((1 - 0.5) ** 2 + (0 - 0.5) ** 2 + 0) / 3)
    assert out == pytest.approx({"a0": 0.5 / (std + 0.1), "a1": -0.5 / (std + 0.1), "a2": 0.0})


def test_stale_rewards_and_expired_pending_descriptions_are_dropped():
    buf = CreditBuffer("ema_baseline", max_staleness=2)
    buf.add(entry("late", 0, "g1"))
    buf.add(entry("never", 0, "g2"))
    buf.add(entry("fine", 3, "g3"))
    buf.resolve("late", 0.9, 0.9, True, 3)  # lag 3 > 2: dropped, no baseline update
    assert buf.baseline is None
    assert buf.collect(3) == [] and buf.counts["dropped/stale"] == 2  # "never" expired at version 3 too
    buf.resolve("fine", 0.3, 0.3, True, 5)  # lag 2: kept
    assert [e.request_id for e, _ in buf.collect(5)] == ["fine"]
    assert not buf.resolve("never", 1.0, 1.0, True, 5)  # gone: the late result is counted, not credited
    # group mode: one stale member takes its whole group with it
    grp = CreditBuffer("group", max_staleness=1, group_size=2)
    grp.add(entry("x0", 0, "X"))
    grp.add(entry("x1", 0, "X"))
    grp.resolve("x0", 1.0, 1.0, True, 1)
    assert grp.collect(2) == [] and grp.counts["dropped/stale"] == 2


def test_state_is_json_and_a_resume_drops_pending_descriptions_deliberately():
    buf = CreditBuffer("ema_baseline", momentum=0.9)
    buf.add(entry("a", 0, "ga"))
    buf.add(entry("b", 0, "gb"))
    buf.resolve("a", 0.7, 0.7, True, 1)
    state = json.loads(json.dumps(buf.state_dict()))
    resumed = CreditBuffer("ema_baseline", momentum=0.9)
    resumed.load_state_dict(state)
    assert resumed.baseline == pytest.approx(0.7) and resumed.counts["dropped/resume"] == 1
    assert not resumed.resolve("b", 1.0, 1.0, True, 2)
