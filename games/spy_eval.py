"""Held-out evaluation of the spy game: how often the judge's vote names the spy, on games no step trains on.

`data.eval_samples` games are drawn as at step `HELDOUT_STEP`, a step no run reaches (the task producer's
held-out stream does the same), so every evaluation plays the same games. They are played twice:

- greedy: every clue and one judge vote at temperature 0 → `eval/reward`, `eval/accuracy`, `eval/spread`,
  `eval/top_share`;
- sampled (`data.eval_k` > 0): clues at `rollout.temperature` and k judge votes per game (one vote per
  civilian with `decision_mode: per_civilian`) → the same names with `_sampled`.

A vote scores 1 when it names the spy, else 0 (abstentions and invalid votes included): the catch rate of one
vote, which the game's decision reward (Vision-Zero Eq. 4) ranks the same way. Next to it, as for tasks:

- `eval/random_reward`: a vote for a seat drawn uniformly, 1/n_players (1/(n_players − 1) with `per_civilian`
  vote: a voter never names their own seat);
- `eval/constant_reward`: the best single seat voted every time, max_k (votes whose spy sits at k) / votes;
- `eval/constant_spread`: 1 / votes, its answer spread. A policy with the constant's spread votes one seat.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import numpy as np

from mmrl.contracts import Engine
from mmrl.producers import HELDOUT_STEP
from mmrl.task import answer_spread

if TYPE_CHECKING:
    from games.scoring import Vote
    from games.spy import SpyProducer
    from games.spy_game import Game


def vote_key(vote: Vote) -> str:
    """The answer a vote gives, for the answer spread: the seat, `abstain` or `invalid`."""
    return str(vote.player) if vote.kind == "player" else vote.kind


def vote_scores(games: list[Game]) -> tuple[list[float], list[str], list[int]]:
    """Per vote of the played (not dropped) games: 1.0 if it names the spy else 0.0, its key, the spy's seat."""
    scores, keys, spies = [], [], []
    for game in games:
        if game.dropped:
            continue
        for vote in game.votes:
            scores.append(1.0 if vote.kind == "player" and vote.player == game.spy else 0.0)
            keys.append(vote_key(vote))
            spies.append(game.spy)
    return scores, keys, spies


def evaluate(producer: SpyProducer, engine: Engine) -> dict[str, float]:
    """Play the held-out games greedy and sampled; return `eval/*` metrics with the two baselines (module doc)."""
    cfg = producer.cfg
    count = cfg.data.eval_samples
    if count <= 0:
        return {}
    runs = {"": {"greedy": True, "decision_samples": 1}}
    if cfg.data.eval_k > 0:
        runs["_sampled"] = {"greedy": False, "decision_samples": cfg.data.eval_k}
    stats = Counter(producer.stats)  # skipped pairs while drawing held-out games are not the training stream's
    out: dict[str, float] = {}
    try:
        for suffix, how in runs.items():
            games, _ = producer.play(engine, HELDOUT_STEP, count, **how)
            scores, keys, spies = vote_scores(games)
            if not scores:
                continue
            out[f"eval/reward{suffix}"] = out[f"eval/accuracy{suffix}"] = float(np.mean(scores))
            out[f"eval/spread{suffix}"], out[f"eval/top_share{suffix}"] = answer_spread(keys)
            if suffix == "":
                seats = producer.game.n_players - (producer.game.decision_mode == "per_civilian")
                best_seat = Counter(spies).most_common(1)[0][1] / len(spies)
                out |= {
                    "eval/random_reward": 1.0 / seats,
                    "eval/random_accuracy": 1.0 / seats,
                    "eval/constant_reward": best_seat,
                    "eval/constant_accuracy": best_seat,
                    "eval/constant_spread": 1.0 / len(spies),
                    "eval/dropped_games": float(sum(bool(g.dropped) for g in games)),
                }
    finally:
        producer.stats = stats
    return out


__all__ = ["evaluate", "vote_key", "vote_scores"]
