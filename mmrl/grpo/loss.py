"""Policy-gradient losses for GRPO-style training: PPO-clip, GSPO, KL penalties, entropy, aggregation.

All inputs are padded tensors of one micro-batch: B sequences, T completion positions.

    logprobs      (B, T)  log pi_theta(o_t | ...) of the sampled tokens, current policy, with grad
    old_logprobs  (B, T)  log pi_old, the behaviour policy that generated the tokens (no grad)
    ref_logprobs  (B, T)  log pi_ref, the frozen reference (no grad)
    advantages    (B,)    one advantage per sequence, broadcast to its tokens ((B, T) also accepted)
    mask          (B, T)  1/True on completion tokens that count, 0/False on padding

Padded positions may hold anything, NaN and ±inf included: every function that takes the mask
selects the real tokens (`torch.where`) instead of multiplying by it, in its inputs and in its
reductions. Multiplying is not enough: 0 * NaN = NaN and 0 * inf = NaN, in the value and in the
backward pass too (the gradient of exp at a padded NaN is 0 * NaN). Non-finite values on *real*
tokens are not hidden: they reach the loss, and the trainer skips that optimiser step.
Formulas and their sources: docs/grpo.md (policy loss, aggregation, KL, entropy).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mmrl.config import AlgorithmConfig

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3")
LOG_RATIO_CLAMP = 20.0  # exp(20) ~ 4.9e8: finite in fp32, far beyond any clip range
K3_CLAMP = 10.0


def _select(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """x on real tokens, 0 on padding (B, T): whatever padding held, neither values nor gradients see it."""
    return torch.where(mask.bool(), x, x.new_zeros(()))


def _per_token(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Advantages (B,) -> (B, 1) for broadcasting over T; (B, T) passes through."""
    if advantages.dim() == 1:
        return advantages.to(like.dtype).unsqueeze(-1)  # (B, 1)
    if advantages.shape != like.shape:
        raise ValueError(f"advantages must be (B,) or {tuple(like.shape)}, got {tuple(advantages.shape)}")
    return advantages.to(like.dtype)  # (B, T)


# --------------------------------------------------------------------------------------------------
# KL to the reference


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate (B, T) of KL(pi_theta || pi_ref) from the sampled tokens (Schulman 2020 "k1/k2/k3").

    With log r = log pi_ref(x) - log pi_theta(x), x ~ pi_theta:

        k1 = -log r = logp - logp_ref           unbiased, high variance, can be < 0
        k2 = 1/2 (log r)^2                      biased, low variance, >= 0
        k3 = (r - 1) - log r                    unbiased, low variance, >= 0  (GRPO, Shao et al. 2024)

    k3 clamps: log r is clamped to [-20, 20] before exp, and k3 to [-10, 10]. Where the policy has
    pushed a token far below the reference (log r large), r = exp(log r) explodes (exp(89) is inf
    in fp32, exp(12) already overflows fp16) and one token's k3 and its gradient (r - 1) would
    dominate the whole batch, or turn the loss into inf/NaN. The clamps bound the value and zero the
    gradient of those outlier tokens (the same bounds verl uses). k1 and k2 have no exp and are not clamped.

    Gradients (on-policy, trainers.md §5): E[grad k1] = 0; k2 follows reverse KL(pi_theta || pi_ref);
    k3 follows forward KL(pi_ref || pi_theta).
    """
    diff = logprobs - ref_logprobs  # (B, T) = -log r
    if estimator == "k1":
        return diff
    if estimator == "k2":
        return 0.5 * diff.square()
    if estimator == "k3":
        log_r = (-diff).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # (B, T)
        return (log_r.exp() - log_r - 1.0).clamp(-K3_CLAMP, K3_CLAMP)
    raise ValueError(f"unknown KL estimator {estimator!r}; valid: {', '.join(KL_ESTIMATORS)}")


# --------------------------------------------------------------------------------------------------
# Policy terms


class ClipTerms(NamedTuple):
    """What a clipped policy objective gives per token: its loss, where the clip cut the gradient, the ratio."""

    loss: torch.Tensor
    """(B, T) per-token loss l^pg."""
    side: torch.Tensor
    """(B, T) int8: -1 / +1 where the lower / upper bound (or the log-ratio guard) cut the gradient, else 0."""
    ratio: torch.Tensor
    """(B, T) the importance ratio the loss used (per token; s_i broadcast over its tokens for GSPO)."""


def _clipped_surrogate(
    ratio: torch.Tensor, adv: torch.Tensor, clip_low: float, clip_high: float, dual_clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """-min(ratio A, clip(ratio) A) [dual-clipped for A < 0]; returns (loss (B, T), side (B, T) int8)."""
    if dual_clip and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (or 0 for off), got {dual_clip}")
    unclipped = ratio * adv  # (B, T)
    clipped = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * adv  # (B, T)
    objective = torch.minimum(unclipped, clipped)  # (B, T)
    with torch.no_grad():  # where the clipped branch wins strictly, the token's gradient is cut
        cut = clipped < unclipped
        side = torch.where(cut, torch.sign(ratio.detach() - 1.0), torch.zeros_like(ratio)).to(torch.int8)
    if dual_clip:
        lower_bound = dual_clip * adv  # (B, T), only binding where A < 0
        dual = (adv < 0) & (objective < lower_bound)
        objective = torch.where(adv < 0, torch.maximum(objective, lower_bound), objective)
        side = torch.where(dual, torch.ones_like(side), side)
    return -objective, side


def ppo_clip_terms(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float,
    clip_high: float,
    dual_clip: float = 0.0,
) -> ClipTerms:
    """Per-token PPO-clip loss (B, T) and clip indicator (B, T).

        rho_t = exp(logp_t - old_logp_t)                       (log-ratio clamped to [-20, 20])
        l_t   = -min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A)

    PPO (Schulman et al. 2017) as used by GRPO (Shao et al. 2024, DeepSeekMath); eps_low != eps_high is
    DAPO's clip-higher (Yu et al. 2025: 0.2 / 0.28). Dual-clip (Ye et al. 2020), for A < 0 and c > 1:

        l_t = -max(min(rho_t A, clip(rho_t) A), c A)

    which bounds the loss of a negative-advantage token whose ratio has run away.

    Indicator (int8): -1 where the lower bound 1 - eps_low cut the gradient (A < 0, rho < 1 - eps_low),
    +1 where the upper bound did (A > 0, rho > 1 + eps_high, or dual-clip: A < 0, rho > c), else 0.
    The ±20 log-ratio guard cuts the gradient too (a clamp has none outside its range): a guarded
    token counts -1 / +1 by the guard's side, whatever its advantage.
    """
    raw_log_ratio = logprobs - old_logprobs  # (B, T)
    ratio = raw_log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()  # (B, T)
    loss, side = _clipped_surrogate(ratio, _per_token(advantages, ratio), clip_low, clip_high, dual_clip)
    return ClipTerms(loss, _mark_guarded(side, raw_log_ratio), ratio)


def _mark_guarded(side: torch.Tensor, raw_log_ratio: torch.Tensor) -> torch.Tensor:
    """Clip indicator (B, T) with tokens whose log-ratio (B, T), or (B, 1) per sequence, is beyond ±20 set
    to the guard's side (sign of the log-ratio). NaN is not beyond anything: it stays as it was."""
    with torch.no_grad():
        guarded = raw_log_ratio.abs() > LOG_RATIO_CLAMP
        return torch.where(guarded, torch.sign(raw_log_ratio).to(side.dtype), side)


def sequence_log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B,) length-normalised log-ratio (1/|o_i|) sum_t mask (logp_t - old_logp_t); 0 for an empty row."""
    length = mask.to(logprobs.dtype).sum(-1).clamp(min=1.0)  # (B,)
    return _select(mask, logprobs - old_logprobs).sum(-1) / length


def gspo_terms(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
    dual_clip: float = 0.0,
) -> ClipTerms:
    """GSPO-token loss (B, T) and clip indicator (B, T) (Zheng et al. 2025, Group Sequence Policy Optimization).

        s_i     = exp((1/|o_i|) sum_t (logp_{i,t} - old_logp_{i,t}))          sequence ratio (B,)
        s_{i,t} = sg[s_i] * exp(logp_{i,t} - sg[logp_{i,t}])                  = s_i in value (B, T)
        l_{i,t} = -min(s_{i,t} A_i, clip(s_{i,t}, 1 - eps_low, 1 + eps_high) A_i)

    Every token of sequence i carries the value of the sequence-level term, and d s_{i,t} / d logp_{i,t}
    = s_i, so with `seq-mean-token-mean` aggregation the gradient is exactly GSPO's
    -(1/B) sum_i A_i grad s_i (unclipped sequences); clipping is decided per sequence (s_i).
    The paper's clip ranges are 3e-4 / 4e-4. `dual_clip` works as in `ppo_clip_terms`, on s_i.
    Indicator: -1 / +1 on every token of a sequence clipped at the lower / upper bound, else 0; a
    sequence whose mean log-ratio is beyond ±20 counts by the guard's side, since s_i is then the
    guard's bound e^±20, not its own ratio. Padded positions are selected away first (module docstring).
    """
    logprobs, old_logprobs = _select(mask, logprobs), _select(mask, old_logprobs)
    raw_seq_log_ratio = sequence_log_ratio(logprobs, old_logprobs, mask)  # (B,)
    s = raw_seq_log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP).exp()  # (B,)
    ratio = s.detach().unsqueeze(-1) * (logprobs - logprobs.detach()).exp()  # (B, T), value s_i
    loss, side = _clipped_surrogate(ratio, _per_token(advantages, ratio), clip_low, clip_high, dual_clip)
    return ClipTerms(loss, _mark_guarded(side, raw_seq_log_ratio.unsqueeze(-1)), ratio)


# --------------------------------------------------------------------------------------------------
# Aggregation


def aggregate(
    per_token: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_len: int | None = None,
) -> torch.Tensor:
    """Reduce per-token terms l_{i,t} (B, T) to the scalar this micro-batch adds to the step's loss.

    Over the sequences i of the micro-batch, with m_{i,t} the mask and len_i = sum_t m_{i,t}:

        token-mean                sum_i sum_t m l / N_tok                        (DAPO, Yu et al. 2025)
        seq-mean-token-mean       sum_i [(1/len_i) sum_t m l] / N_seq            (GRPO, Shao et al. 2024)
        seq-mean-token-sum        sum_i [sum_t m l] / N_seq
        seq-mean-token-sum-norm   sum_i [sum_t m l] / (N_seq * L_max)            (Dr.GRPO, Liu et al. 2025)

    Gradient accumulation: N_tok (`num_tokens`) and N_seq (`num_seqs`) are the counts of the WHOLE
    optimiser step (all micro-batches, all ranks), so that summing the micro-batch losses gives exactly
    the full-batch loss (trainers.md §4: TRL `dapo` vs `bnpo`). `max_len` is L_max, the configured
    maximum completion length (a constant, as in Dr.GRPO). When None, the micro-batch's own values are
    used: its masked token count, its row count B, and its padded width T. An empty sequence counts
    in N_seq and adds 0; a zero count is replaced by 1 so that an all-padding batch gives 0, not NaN.
    Padded l_{i,t} are selected away, not multiplied by m: a NaN or inf there changes nothing.
    """
    m = mask.to(per_token.dtype)  # (B, T)
    masked = _select(mask, per_token)  # (B, T)
    if mode == "token-mean":
        if num_tokens is None:  # a tensor, not float(): no host sync on GPU
            return masked.sum() / m.sum().clamp(min=1.0)
        return masked.sum() / max(float(num_tokens), 1.0)
    n_seq = float(per_token.shape[0]) if num_seqs is None else float(num_seqs)
    if mode == "seq-mean-token-mean":
        per_seq = masked.sum(-1) / m.sum(-1).clamp(min=1.0)  # (B,)
        return per_seq.sum() / max(n_seq, 1.0)
    if mode == "seq-mean-token-sum":
        return masked.sum() / max(n_seq, 1.0)
    if mode == "seq-mean-token-sum-norm":
        length = float(per_token.shape[-1]) if max_len is None else float(max_len)
        return masked.sum() / max(n_seq * length, 1.0)
    raise ValueError(f"unknown aggregation {mode!r}; valid: {', '.join(AGGREGATIONS)}")


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    return float(_select(mask, x.detach().float()).sum() / mask.to(torch.float32).sum().clamp(min=1.0))


# --------------------------------------------------------------------------------------------------
# Total loss


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: AlgorithmConfig,
    *,
    ref_logprobs: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
    num_tokens: float | None = None,
    num_seqs: float | None = None,
    max_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The micro-batch's share of the step loss, and its metrics.

        loss = agg(l^pg) + kl_coef * agg(k) - entropy_coef * agg(H)

    l^pg from `ppo_clip_terms` (cfg.loss = "ppo_clip") or `gspo_terms` ("gspo"); k = `kl_penalty` with
    cfg.kl_estimator; H the per-token entropy (B, T) (e.g. `token_entropy_from_logits`, with grad);
    agg = `aggregate` with cfg.aggregation and the step-wide `num_tokens` / `num_seqs` / `max_len`.
    `ref_logprobs` is required when kl_coef != 0, `entropy` when entropy_coef != 0; given otherwise,
    they are only logged. Every per-token input is selected by the mask first, so padded positions
    may hold NaN or ±inf (module docstring); a non-finite value on a real token makes the loss
    non-finite, for the trainer to skip the step.

    Metrics (python floats, no grad, over the masked tokens of this micro-batch):
      loss/policy, loss/kl  the aggregation formula with this micro-batch's own counts (a mean that is
                            comparable across micro-batches; not the share added to the step loss)
      entropy               mean token entropy (if given)
      clip_frac, clip_frac_low, clip_frac_high   fraction of tokens whose gradient was cut (any / lower /
                            upper bound; dual-clip counts as upper; tokens beyond the ±20 log-ratio
                            guard count by its side)
      ratio_mean            mean importance ratio used by the loss (per token; s_i for GSPO)
      approx_kl_old         mean k3 between pi_old and pi_theta (how far the update has moved)
      num_tokens            masked token count (weights for averaging metrics over micro-batches)
    """
    logprobs, old_logprobs = _select(mask, logprobs), _select(mask, old_logprobs)
    ref_logprobs = _select(mask, ref_logprobs) if ref_logprobs is not None else None
    entropy = _select(mask, entropy) if entropy is not None else None
    if cfg.loss == "ppo_clip":
        pg, side, ratio = ppo_clip_terms(logprobs, old_logprobs, advantages, cfg.clip_low, cfg.clip_high, cfg.dual_clip)
    elif cfg.loss == "gspo":
        pg, side, ratio = gspo_terms(
            logprobs, old_logprobs, advantages, mask, cfg.clip_low, cfg.clip_high, cfg.dual_clip
        )
    else:
        raise ValueError(f"unknown policy loss {cfg.loss!r}; valid: ppo_clip, gspo")

    def agg(x: torch.Tensor) -> torch.Tensor:
        return aggregate(x, mask, cfg.aggregation, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)

    def agg_local(x: torch.Tensor) -> float:
        return float(aggregate(x.detach(), mask, cfg.aggregation, max_len=max_len))

    loss = agg(pg)
    metrics: dict[str, float] = {"loss/policy": agg_local(pg)}

    if cfg.kl_coef != 0.0 and ref_logprobs is None:
        raise ValueError(f"kl_coef = {cfg.kl_coef} needs ref_logprobs")
    if ref_logprobs is not None:
        kl = kl_penalty(logprobs, ref_logprobs, cfg.kl_estimator)  # (B, T)
        if cfg.kl_coef != 0.0:
            loss = loss + cfg.kl_coef * agg(kl)
        metrics["loss/kl"] = agg_local(kl)

    if cfg.entropy_coef != 0.0 and entropy is None:
        raise ValueError(f"entropy_coef = {cfg.entropy_coef} needs entropy")
    if entropy is not None:
        if cfg.entropy_coef != 0.0:
            loss = loss - cfg.entropy_coef * agg(entropy)
        metrics["entropy"] = _masked_mean(entropy, mask)

    with torch.no_grad():
        metrics["clip_frac"] = _masked_mean(side != 0, mask)
        metrics["clip_frac_low"] = _masked_mean(side < 0, mask)
        metrics["clip_frac_high"] = _masked_mean(side > 0, mask)
        metrics["ratio_mean"] = _masked_mean(ratio, mask)
        metrics["approx_kl_old"] = _masked_mean(kl_penalty(logprobs, old_logprobs, "k3"), mask)
        metrics["num_tokens"] = float(mask.to(torch.float32).sum())
    return loss, metrics


# --------------------------------------------------------------------------------------------------
# Entropy


def _chunk_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H = logsumexp(z) - sum_v softmax(z)_v z_v over the last dim, in float32. (B, t, V) -> (B, t)."""
    z = logits.float()  # (B, t, V)
    return torch.logsumexp(z, dim=-1) - (F.softmax(z, dim=-1) * z).sum(-1)


def token_entropy_from_logits(logits: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Per-token entropy H_t = -sum_v p_v log p_v (B, T) of the softmax of `logits` (B, T, V), in float32.

    The float32 softmax is formed `chunk` positions at a time, so at most (B, chunk, V) of it exists at
    once. With autograd on, each chunk is checkpointed (recomputed in backward) so that the saved
    activations do not grow back to (B, T, V) either. Logits should already be divided by the
    sampling temperature if the entropy of the sampling distribution is wanted.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    track = torch.is_grad_enabled() and logits.requires_grad
    parts = []
    for start in range(0, logits.shape[1], chunk):
        piece = logits[:, start : start + chunk]  # (B, t, V)
        parts.append(checkpoint(_chunk_entropy, piece, use_reentrant=False) if track else _chunk_entropy(piece))
    if not parts:
        return logits.new_zeros(logits.shape[:2], dtype=torch.float32)
    return torch.cat(parts, dim=1)  # (B, T)
