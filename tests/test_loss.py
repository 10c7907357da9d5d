"""Policy losses, KL estimators, aggregation and entropy against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from mmrl.config import AlgorithmConfig
from mmrl.grpo.loss import (
    AGGREGATIONS,
    aggregate,
    gspo_terms,
    kl_penalty,
    policy_loss,
    ppo_clip_terms,
    token_entropy_from_logits,
)

# B = 2 sequences, T = 3 positions; sequence 1 has one padded position.
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
# old log-probs 0, so ratio = exp(logp) = the numbers below (the padded ratio is 1).
RATIOS = torch.tensor([[0.5, 1.1, 1.5], [0.5, 1.5, 1.0]], dtype=torch.float64)
ADV = torch.tensor([1.0, -2.0], dtype=torch.float64)


def _logp(ratios: torch.Tensor = RATIOS) -> torch.Tensor:
    return ratios.log().clone().requires_grad_(True)


def _cfg(**kw: object) -> AlgorithmConfig:
    return AlgorithmConfig(**kw)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# PPO-clip


def test_ppo_clip_values_indicator_and_gradient() -> None:
    logp = _logp()
    loss, side, _ = ppo_clip_terms(logp, torch.zeros_like(logp), ADV, 0.2, 0.2)
    # A = +1: rho 0.5 -> -min(0.5, 0.8) = -0.5      rho 1.1 -> -min(1.1, 1.1) = -1.1
    #         rho 1.5 -> -min(1.5, 1.2) = -1.2 (clipped high)
    # A = -2: rho 0.5 -> -min(-1.0, 0.8 * -2 = -1.6) = 1.6 (clipped low)
    #         rho 1.5 -> -min(-3.0, 1.2 * -2 = -2.4) = 3.0   pad rho 1 -> -min(-2, -2) = 2
    expected = torch.tensor([[-0.5, -1.1, -1.2], [1.6, 3.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(loss, expected)
    assert side.tolist() == [[0, 0, 1], [-1, 0, 0]]
    # d l / d logp = -A rho where unclipped, 0 where clipped: (-0.5, -1.1, 0), (0, 3.0, 2.0)
    (grad,) = torch.autograd.grad(loss.sum(), logp)
    torch.testing.assert_close(grad, torch.tensor([[-0.5, -1.1, 0.0], [0.0, 3.0, 2.0]], dtype=torch.float64))


def test_clip_higher_is_asymmetric() -> None:
    ratios = torch.tensor([[1.25, 1.5, 0.7]], dtype=torch.float64)
    logp = _logp(ratios)
    up, _, _ = ppo_clip_terms(logp, torch.zeros_like(logp), torch.tensor([1.0], dtype=torch.float64), 0.2, 0.28)
    # A = +1, upper bound 1.28: rho 1.25 unclipped -> -1.25 (would be -1.2 at 0.2); rho 1.5 -> -1.28;
    # rho 0.7 below 1 - 0.2 but A > 0 takes the unclipped min -> -0.7
    torch.testing.assert_close(up, torch.tensor([[-1.25, -1.28, -0.7]], dtype=torch.float64))
    down, side, _ = ppo_clip_terms(logp, torch.zeros_like(logp), torch.tensor([-1.0], dtype=torch.float64), 0.2, 0.28)
    # A = -1, lower bound still 0.8: rho 0.7 -> -min(-0.7, -0.8) = 0.8 (clipped low); others unclipped
    torch.testing.assert_close(down, torch.tensor([[1.25, 1.5, 0.8]], dtype=torch.float64))
    assert side.tolist() == [[0, 0, -1]]


def test_dual_clip_bounds_negative_advantage_loss() -> None:
    ratios = torch.tensor([[4.0, 2.0], [4.0, 1.0]], dtype=torch.float64)
    adv = torch.tensor([-2.0, 1.0], dtype=torch.float64)
    logp = _logp(ratios)
    plain, _, _ = ppo_clip_terms(logp, torch.zeros_like(logp), adv, 0.2, 0.2)
    dual, side, _ = ppo_clip_terms(logp, torch.zeros_like(logp), adv, 0.2, 0.2, dual_clip=3.0)
    # A = -2, rho 4: -min(-8, -2.4) = 8; dual: -max(-8, 3 * -2 = -6) = 6.
    # A = -2, rho 2: -min(-4, -2.4) = 4 < 6: dual inactive.  A = +1: untouched (-1.2, -1.0).
    torch.testing.assert_close(plain, torch.tensor([[8.0, 4.0], [-1.2, -1.0]], dtype=torch.float64))
    torch.testing.assert_close(dual, torch.tensor([[6.0, 4.0], [-1.2, -1.0]], dtype=torch.float64))
    assert side.tolist() == [[1, 0], [1, 0]]
    (grad,) = torch.autograd.grad(dual.sum(), logp)
    # dual-clipped token: constant c A -> no gradient; rho 2, A -2: -A rho = 4
    torch.testing.assert_close(grad, torch.tensor([[0.0, 4.0], [0.0, -1.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="dual_clip"):
        ppo_clip_terms(logp, torch.zeros_like(logp), adv, 0.2, 0.2, dual_clip=0.5)


# --------------------------------------------------------------------------------------------------
# GSPO

# log-ratios: sequence 0 (0.1, -0.2, 0.4): mean 0.3 / 3 = 0.1, s_0 = e^0.1 = 1.1051709181
#             sequence 1 (-0.6, -0.2, pad 9.0): mean -0.8 / 2 = -0.4, s_1 = e^-0.4 = 0.6703200460
GSPO_LOG_RATIO = torch.tensor([[0.1, -0.2, 0.4], [-0.6, -0.2, 9.0]], dtype=torch.float64)
S0, S1 = 1.1051709181, 0.6703200460
GSPO_ADV = torch.tensor([1.0, -1.0], dtype=torch.float64)


def test_gspo_value_and_sequence_level_gradient() -> None:
    old = torch.full((2, 3), -1.0, dtype=torch.float64)
    logp = (old + GSPO_LOG_RATIO).requires_grad_(True)
    terms, side, _ = gspo_terms(logp, old, GSPO_ADV, MASK, 0.2, 0.2)
    # s_0 inside [0.8, 1.2], A = +1: every token -1.1051709181.
    # s_1 = 0.67 < 0.8, A = -1: -min(-0.670, 0.8 * -1) = 0.8, clipped low on every token.
    torch.testing.assert_close(terms, torch.tensor([[-S0] * 3, [0.8] * 3], dtype=torch.float64))
    assert side.tolist() == [[0, 0, 0], [-1, -1, -1]]
    loss = aggregate(terms, MASK, "seq-mean-token-mean")
    # (1/2)(-1.1051709181 + 0.8) = -0.1525854591
    assert loss.item() == pytest.approx(-0.1525854591, abs=1e-9)
    (grad,) = torch.autograd.grad(loss, logp)
    # d/d logp_{0,t} = -(1/B) A_0 s_0 (1/|o_0|) = -1.1051709181 / 6 = -0.1841951530; clipped sequence 1: 0
    torch.testing.assert_close(
        grad, torch.tensor([[-0.1841951530] * 3, [0.0] * 3], dtype=torch.float64), atol=1e-9, rtol=0
    )


def test_gspo_gradient_equals_sequence_level_objective() -> None:
    old = torch.full((2, 3), -1.0, dtype=torch.float64)
    logp = (old + GSPO_LOG_RATIO).requires_grad_(True)
    terms, _, _ = gspo_terms(logp, old, GSPO_ADV, MASK, 0.5, 0.5)  # wide clip: both sequences unclipped
    (grad_token,) = torch.autograd.grad(aggregate(terms, MASK, "seq-mean-token-mean"), logp)
    # GSPO paper objective: -(1/B) sum_i min(s_i A_i, clip(s_i) A_i), s_i = exp(mean_t log-ratio) with grad
    s = (((logp - old) * MASK).sum(-1) / MASK.sum(-1)).exp()
    seq_obj = -torch.minimum(s * GSPO_ADV, s.clamp(0.5, 1.5) * GSPO_ADV).mean()
    (grad_seq,) = torch.autograd.grad(seq_obj, logp)
    torch.testing.assert_close(grad_token, grad_seq)
    # by hand: sequence 1, -(1/2)(-1) s_1 (1/2) = 0.1675800115 on its 2 real tokens
    assert grad_token[1, 0].item() == pytest.approx(S1 / 4, abs=1e-9)
    assert grad_token[1, 2].item() == 0.0


# --------------------------------------------------------------------------------------------------
# Aggregation

PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 99.0]])  # 99 sits on the padded position


@pytest.mark.parametrize(
    ("mode", "kwargs", "expected"),
    [
        ("token-mean", {}, 3.0),  # (1 + 2 + 3 + 4 + 5) / 5
        ("token-mean", {"num_tokens": 10}, 1.5),  # 15 / 10
        ("seq-mean-token-mean", {}, 3.25),  # (6/3 + 9/2) / 2 = (2 + 4.5) / 2
        ("seq-mean-token-mean", {"num_seqs": 4}, 1.625),  # 6.5 / 4
        ("seq-mean-token-sum", {}, 7.5),  # (6 + 9) / 2
        ("seq-mean-token-sum", {"num_seqs": 5}, 3.0),  # 15 / 5
        ("seq-mean-token-sum-norm", {}, 2.5),  # 15 / (2 * T = 3)
        ("seq-mean-token-sum-norm", {"max_len": 4}, 1.875),  # 15 / (2 * 4)
        ("seq-mean-token-sum-norm", {"num_seqs": 4, "max_len": 5}, 0.75),  # 15 / (4 * 5)
    ],
)
def test_aggregation_modes(mode: str, kwargs: dict, expected: float) -> None:
    assert aggregate(PER_TOKEN, MASK, mode, **kwargs).item() == pytest.approx(expected)
    assert aggregate(PER_TOKEN, MASK.bool(), mode, **kwargs).item() == pytest.approx(expected)


def test_aggregation_empty_mask_and_unknown_mode() -> None:
    for mode in AGGREGATIONS:
        assert aggregate(PER_TOKEN, torch.zeros_like(MASK), mode).item() == 0.0
    with pytest.raises(ValueError, match="token-mean"):
        aggregate(PER_TOKEN, MASK, "sum")


@pytest.mark.parametrize("mode", AGGREGATIONS)
@pytest.mark.parametrize("loss_name", ["ppo_clip", "gspo"])
def test_gradient_accumulation_matches_full_batch(mode: str, loss_name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    b, t = 4, 5
    old = -torch.rand(b, t, generator=gen, dtype=torch.float64)
    logp = (old + 0.3 * torch.randn(b, t, generator=gen, dtype=torch.float64)).requires_grad_(True)
    adv = torch.tensor([1.0, -0.5, 2.0, -1.5], dtype=torch.float64)
    lengths = torch.tensor([5, 4, 1, 2])  # uneven: micro-batch 0 has 9 tokens, micro-batch 1 has 3
    mask = (torch.arange(t)[None] < lengths[:, None]).double()
    ref = old + 0.1
    ent = torch.rand(b, t, generator=gen, dtype=torch.float64)
    cfg = _cfg(loss=loss_name, aggregation=mode, kl_coef=0.1, entropy_coef=0.01, clip_low=0.1, clip_high=0.1)
    step = {"num_tokens": float(mask.sum()), "num_seqs": float(b), "max_len": 8}

    full, _ = policy_loss(logp, old, adv, mask, cfg, ref_logprobs=ref, entropy=ent, **step)
    (g_full,) = torch.autograd.grad(full, logp)

    total = torch.zeros((), dtype=torch.float64)
    local = torch.zeros((), dtype=torch.float64)
    for rows in (slice(0, 2), slice(2, 4)):
        part, _ = policy_loss(
            logp[rows], old[rows], adv[rows], mask[rows], cfg, ref_logprobs=ref[rows], entropy=ent[rows], **step
        )
        total = total + part
        bad, _ = policy_loss(
            logp[rows], old[rows], adv[rows], mask[rows], cfg, ref_logprobs=ref[rows], entropy=ent[rows], max_len=8
        )
        local = local + bad
    (g_acc,) = torch.autograd.grad(total, logp)
    torch.testing.assert_close(total, full)
    torch.testing.assert_close(g_acc, g_full)
    if mode == "token-mean":  # micro-batch token counts (9, 3) differ: local means do not add up
        assert abs(local.item() - full.item()) > 1e-3
    else:  # local row count 2 instead of 4: each micro-batch is weighted twice
        torch.testing.assert_close(local, 2 * full)


# --------------------------------------------------------------------------------------------------
# KL estimators


def test_kl_estimators_by_hand() -> None:
    logp = torch.tensor([[math.log(0.5), math.log(0.25), -1.0]], dtype=torch.float64)
    ref = torch.tensor([[math.log(0.25), math.log(0.5), -1.0]], dtype=torch.float64)
    ln2 = math.log(2.0)
    # token 0: logp - ref = ln 2;  token 1: -ln 2;  token 2: equal -> 0 for every estimator
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([[ln2, -ln2, 0.0]], dtype=torch.float64))
    # k2 = (ln 2)^2 / 2 = 0.2402265070 both ways
    torch.testing.assert_close(
        kl_penalty(logp, ref, "k2"), torch.tensor([[0.2402265070, 0.2402265070, 0.0]], dtype=torch.float64)
    )
    # k3 = r - 1 - ln r: token 0 r = 0.25/0.5 = 0.5 -> 0.5 - 1 + ln 2 = 0.1931471806;
    #                    token 1 r = 2 -> 2 - 1 - ln 2 = 0.3068528194
    torch.testing.assert_close(
        kl_penalty(logp, ref, "k3"), torch.tensor([[0.1931471806, 0.3068528194, 0.0]], dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl_penalty(logp, ref, "k4")


def test_k2_k3_nonnegative_and_k3_clamped() -> None:
    gen = torch.Generator().manual_seed(1)
    logp = -5 * torch.rand(8, 16, generator=gen)
    ref = -5 * torch.rand(8, 16, generator=gen)
    assert (kl_penalty(logp, ref, "k2") >= 0).all()
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    assert (kl_penalty(logp, ref, "k1") < 0).any()
    # policy far below the reference: log r = 0 - (-30) = 30 -> clamped to 20 -> k3 ~ 4.9e8 -> clamped to 10
    far = torch.tensor([[-30.0, -200.0]], requires_grad=True)
    k3 = kl_penalty(far, torch.zeros_like(far), "k3")
    assert k3.tolist() == [[10.0, 10.0]]
    (grad,) = torch.autograd.grad(k3.sum(), far)
    assert torch.isfinite(grad).all()


# --------------------------------------------------------------------------------------------------
# policy_loss: terms, metrics


def test_policy_loss_metrics_by_hand() -> None:
    logp = _logp()
    loss, m = policy_loss(logp, torch.zeros_like(logp), ADV, MASK, _cfg())
    # token-mean over the 5 real tokens of the ppo_clip terms above: (-0.5 - 1.1 - 1.2 + 1.6 + 3.0) / 5 = 0.36
    assert loss.item() == pytest.approx(0.36)
    assert m["loss/policy"] == pytest.approx(0.36)
    assert m["clip_frac"] == pytest.approx(2 / 5)
    assert m["clip_frac_low"] == pytest.approx(1 / 5)
    assert m["clip_frac_high"] == pytest.approx(1 / 5)
    assert m["ratio_mean"] == pytest.approx((0.5 + 1.1 + 1.5 + 0.5 + 1.5) / 5)  # 1.02
    # k3(old || current) per token = 1/rho - 1 + ln rho:
    # rho 0.5: 2 - 1 - 0.6931472 = 0.3068528;  rho 1.1: 0.9090909 - 1 + 0.0953102 = 0.0044011;
    # rho 1.5: 0.6666667 - 1 + 0.4054651 = 0.0721318;  mean (2 * 0.3068528 + 0.0044011 + 2 * 0.0721318) / 5
    assert m["approx_kl_old"] == pytest.approx(0.1524741, abs=1e-6)
    assert m["num_tokens"] == 5.0
    assert "loss/kl" not in m and "entropy" not in m
    assert all(isinstance(v, float) for v in m.values())


def test_policy_loss_metrics_are_local_under_global_counts() -> None:
    logp = _logp()
    loss, m = policy_loss(logp, torch.zeros_like(logp), ADV, MASK, _cfg(), num_tokens=10)
    assert loss.item() == pytest.approx(1.8 / 10)  # share of a 10-token step
    assert m["loss/policy"] == pytest.approx(0.36)  # this micro-batch's own mean


def test_gspo_through_policy_loss() -> None:
    old = torch.full((2, 3), -1.0, dtype=torch.float64)
    logp = (old + GSPO_LOG_RATIO).requires_grad_(True)
    cfg = _cfg(loss="gspo", aggregation="seq-mean-token-mean")
    loss, m = policy_loss(logp, old, GSPO_ADV, MASK, cfg)
    assert loss.item() == pytest.approx(-0.1525854591, abs=1e-9)
    assert m["clip_frac"] == pytest.approx(2 / 5)  # sequence 1's 2 tokens
    assert m["clip_frac_low"] == pytest.approx(2 / 5) and m["clip_frac_high"] == 0.0
    assert m["ratio_mean"] == pytest.approx((3 * S0 + 2 * S1) / 5, abs=1e-6)  # metrics are float32


def test_kl_term_and_kl_coef_zero() -> None:
    logp = _logp()
    old = torch.zeros_like(logp)
    ref = logp.detach() + math.log(2.0)  # log r = ln 2 on every token: k3 = 2 - 1 - ln 2 = 0.3068528194
    base, _ = policy_loss(logp, old, ADV, MASK, _cfg())
    same, m0 = policy_loss(logp, old, ADV, MASK, _cfg(kl_coef=0.0), ref_logprobs=ref)
    assert same.item() == base.item()  # kl_coef = 0: the reference is only logged
    assert m0["loss/kl"] == pytest.approx(0.3068528194)
    with_kl, m = policy_loss(logp, old, ADV, MASK, _cfg(kl_coef=0.1), ref_logprobs=ref)
    assert with_kl.item() - base.item() == pytest.approx(0.1 * 0.3068528194)
    with_k1, _ = policy_loss(logp, old, ADV, MASK, _cfg(kl_coef=0.1, kl_estimator="k1"), ref_logprobs=ref)
    assert with_k1.item() - base.item() == pytest.approx(0.1 * -math.log(2.0))
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(logp, old, ADV, MASK, _cfg(kl_coef=0.1))


def test_entropy_bonus_sign() -> None:
    logp = _logp()
    old = torch.zeros_like(logp)
    ent = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 50.0]], dtype=torch.float64, requires_grad=True)
    base, _ = policy_loss(logp, old, ADV, MASK, _cfg())
    bonus, m = policy_loss(logp, old, ADV, MASK, _cfg(entropy_coef=0.1), entropy=ent)
    # token-mean entropy (1 + 2 + 3 + 4 + 5) / 5 = 3; loss -= 0.1 * 3
    assert m["entropy"] == pytest.approx(3.0)
    assert bonus.item() - base.item() == pytest.approx(-0.3)
    (grad,) = torch.autograd.grad(bonus, ent)  # more entropy, lower loss: -0.1 / 5 per real token
    torch.testing.assert_close(grad, -0.02 * MASK.double())
    logged, _ = policy_loss(logp, old, ADV, MASK, _cfg(), entropy=ent)
    assert logged.item() == base.item()
    with pytest.raises(ValueError, match="entropy"):
        policy_loss(logp, old, ADV, MASK, _cfg(entropy_coef=0.1))


def test_token_level_advantages_accepted() -> None:
    logp = _logp()
    per_seq, _, _ = ppo_clip_terms(logp, torch.zeros_like(logp), ADV, 0.2, 0.2)
    per_tok, _, _ = ppo_clip_terms(logp, torch.zeros_like(logp), ADV[:, None].expand(2, 3), 0.2, 0.2)
    torch.testing.assert_close(per_seq, per_tok)
    with pytest.raises(ValueError, match="advantages"):
        ppo_clip_terms(logp, torch.zeros_like(logp), torch.ones(2, 2), 0.2, 0.2)


# --------------------------------------------------------------------------------------------------
# Entropy from logits


def test_entropy_of_uniform_logits_is_log_v() -> None:
    h = token_entropy_from_logits(torch.zeros(2, 3, 4), chunk=2)
    torch.testing.assert_close(h, torch.full((2, 3), math.log(4.0)))  # ln 4 = 1.3862944


@pytest.mark.parametrize("chunk", [1, 3, 7, 1024])
def test_chunked_entropy_matches_naive_values_and_gradients(chunk: int) -> None:
    gen = torch.Generator().manual_seed(2)
    logits = (3 * torch.randn(2, 7, 11, generator=gen)).requires_grad_(True)
    weights = torch.rand(2, 7, generator=gen)
    naive = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    chunked = token_entropy_from_logits(logits, chunk=chunk)
    torch.testing.assert_close(chunked, naive)
    (g_naive,) = torch.autograd.grad((naive * weights).sum(), logits)
    (g_chunk,) = torch.autograd.grad((chunked * weights).sum(), logits)
    torch.testing.assert_close(g_chunk, g_naive)


def test_chunked_entropy_bf16_and_no_grad() -> None:
    logits = torch.randn(1, 5, 9, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        h = token_entropy_from_logits(logits.bfloat16(), chunk=2)
    assert h.dtype == torch.float32 and h.shape == (1, 5)
    naive = -(logits.bfloat16().float().softmax(-1) * logits.bfloat16().float().log_softmax(-1)).sum(-1)
    torch.testing.assert_close(h, naive)


# --------------------------------------------------------------------------------------------------
# Non-finite values: padding selected away, guarded tokens counted


@pytest.mark.parametrize("mode", AGGREGATIONS)
@pytest.mark.parametrize("poison", [math.nan, -math.inf, math.inf])
@pytest.mark.parametrize("loss_name", ["ppo_clip", "gspo"])
def test_nonfinite_padding_changes_neither_loss_nor_gradients(loss_name: str, poison: float, mode: str) -> None:
    gen = torch.Generator().manual_seed(4)
    b, t = 3, 4
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)  # row 2: empty
    old = -torch.rand(b, t, generator=gen, dtype=torch.float64)
    clean = {
        "logprobs": old + 0.3 * torch.randn(b, t, generator=gen, dtype=torch.float64),
        "old_logprobs": old,
        "ref_logprobs": old + 0.1 * torch.randn(b, t, generator=gen, dtype=torch.float64),
        "entropy": torch.rand(b, t, generator=gen, dtype=torch.float64),
    }
    poisoned = {k: v.masked_fill(~mask, poison) for k, v in clean.items()}
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    # k1 has no clamp that could hide a non-finite value; the entropy bonus is on: every input is used.
    cfg = _cfg(loss=loss_name, aggregation=mode, kl_coef=0.1, kl_estimator="k1", entropy_coef=0.01)

    def run(inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict, tuple[torch.Tensor, torch.Tensor]]:
        leaves = {k: v.clone().requires_grad_(k in ("logprobs", "entropy")) for k, v in inputs.items()}
        loss, metrics = policy_loss(
            leaves["logprobs"], leaves["old_logprobs"], adv, mask, cfg,
            ref_logprobs=leaves["ref_logprobs"], entropy=leaves["entropy"], max_len=6,
        )  # fmt: skip
        return loss, metrics, torch.autograd.grad(loss, (leaves["logprobs"], leaves["entropy"]))

    loss, metrics, grads = run(clean)
    bad_loss, bad_metrics, bad_grads = run(poisoned)
    assert torch.isfinite(bad_loss) and all(torch.isfinite(g).all() for g in bad_grads)
    torch.testing.assert_close(bad_loss, loss, rtol=0, atol=0)
    assert bad_metrics == metrics
    for bad, good in zip(bad_grads, grads):
        torch.testing.assert_close(bad, good, rtol=0, atol=0)
        assert (bad[~mask] == 0).all()

    # A non-finite value on a real token is not hidden: the loss shows it, for the trainer to skip the step.
    poisoned["logprobs"][0, 1] = math.nan
    assert torch.isnan(run(poisoned)[0])


def test_tokens_cut_by_the_log_ratio_guard_count_in_clip_frac() -> None:
    # log-ratios beyond ±20: the clamp has no gradient there, so those tokens' gradient is cut.
    #   A = +1: -25 (guard, low; the clip alone would let it through: -min(rho, 0.8) = -rho)
    #           +25 (guard and clip, high)     0.0 (untouched)
    #   A = -1: +25 (guard, high; the clip alone would let it through: -min(-rho, -1.2) = rho)
    #           -25 (guard and clip, low)      0.0 (untouched)
    log_ratio = torch.tensor([[-25.0, 25.0, 0.0], [25.0, -25.0, 0.0]], dtype=torch.float64)
    old = torch.full_like(log_ratio, -1.0)
    logp = (old + log_ratio).requires_grad_(True)
    mask = torch.ones_like(log_ratio)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    terms, side, _ = ppo_clip_terms(logp, old, adv, 0.2, 0.2)
    assert side.tolist() == [[-1, 1, 0], [1, -1, 0]]
    (grad,) = torch.autograd.grad(terms.sum(), logp)
    assert (grad[:, :2] == 0).all() and (grad[:, 2] != 0).all()  # the counted tokens are those without gradient
    _, m = policy_loss(logp, old, adv, mask, _cfg())
    assert m["clip_frac"] == pytest.approx(4 / 6)
    assert m["clip_frac_low"] == pytest.approx(2 / 6) and m["clip_frac_high"] == pytest.approx(2 / 6)

    # GSPO: sequence 0 has mean log-ratio +25 with A < 0 (the clip alone would not count it), sequence 1 is fine.
    seq_log_ratio = torch.tensor([[25.0, 25.0, 25.0], [0.1, -0.1, 0.0]], dtype=torch.float64)
    _, m = policy_loss(
        old + seq_log_ratio, old, torch.tensor([-1.0, 1.0], dtype=torch.float64), mask, _cfg(loss="gspo")
    )
    assert m["clip_frac"] == pytest.approx(3 / 6) and m["clip_frac_high"] == pytest.approx(3 / 6)
