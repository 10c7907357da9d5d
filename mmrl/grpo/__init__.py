"""GRPO building blocks: group advantages, policy losses and aggregation, Selective Sample Replay."""

from mmrl.grpo.advantages import ESTIMATORS, group_advantages, zero_variance_groups
from mmrl.grpo.loss import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    aggregate,
    gspo_terms,
    kl_penalty,
    policy_loss,
    ppo_clip_terms,
    sequence_log_ratio,
    token_entropy_from_logits,
)
from mmrl.grpo.replay import select_replay

__all__ = [
    "AGGREGATIONS",
    "ESTIMATORS",
    "KL_ESTIMATORS",
    "aggregate",
    "group_advantages",
    "gspo_terms",
    "kl_penalty",
    "policy_loss",
    "ppo_clip_terms",
    "select_replay",
    "sequence_log_ratio",
    "token_entropy_from_logits",
    "zero_variance_groups",
]
