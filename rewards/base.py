"""The Reward value every reward function returns: one score plus the named parts it was built from."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Reward:
    """A scored completion.

    `score` is what the advantage estimator sees; `parts` are what the trainer logs, so a run shows
    *why* a score moved (format learnt first, accuracy later). Scores lie in [0, 1] unless a reward's
    docstring says otherwise (game rewards, penalties). Reward functions never raise on model
    output: a malformed completion gets `score = 0` with every part present and 0.
    """

    score: float
    """The scalar the trainer optimises."""
    parts: dict[str, float] = field(default_factory=dict)
    """Named components (`format`, `accuracy`, ...), each logged as `reward/<name>`."""

    @classmethod
    def zero(cls, *names: str) -> Reward:
        """Score 0 with each named part set to 0 (the answer to unusable output)."""
        return cls(0.0, {name: 0.0 for name in names})


__all__ = ["Reward"]
