"""`mmrl play`: play spy games with a policy, without training, into a transcript folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from games.spy import SpyProducer
from games.transcripts import TranscriptWriter
from mmrl.config import RunConfig
from mmrl.errors import ConfigError
from mmrl.models import load_policy
from mmrl.rollout import make_engine


def play_games(cfg: RunConfig, out: str | Path, n_games: int | None = None) -> dict[str, float]:
    """Play `n_games` (default `game.games_per_step`) games, `game.games_per_step` at a time in lock-step, with
    the policy `model.path` and the engine `rollout.engine`; write them to the transcript folder `out` (replacing
    earlier transcripts there). Games are those of training steps 0, 1, ... with the same seeds. Returns a summary:
    `games` played and `dropped`, then shares (printed as percentages by `mmrl play`): `spy_caught`, `votes_n/a`,
    `votes_invalid`, `turns_without_a_clue`."""
    if cfg.game.name != "spy":
        raise ConfigError("mmrl play needs a game: set game.name=spy (in the config or as an override)")
    total = cfg.game.games_per_step if n_games is None else n_games
    if total < 1:
        raise ConfigError(f"--games must be >= 1, got {total}")
    model, processor = load_policy(cfg.model)
    engine = make_engine(cfg.rollout, model, processor, seed=cfg.train.seed)
    producer = SpyProducer(cfg, processor)
    writer = TranscriptWriter(out)
    played, dropped, step = [], 0, 0
    while len(played) + dropped < total:
        games, _ = producer.play(engine, step, min(cfg.game.games_per_step, total - len(played) - dropped))
        ok = [g for g in games if not g.dropped]
        writer.write([(g.record(), g.pictures()) for g in ok])
        played += ok
        dropped += len(games) - len(ok)
        step += 1
    votes = [v for g in played for v in g.votes]
    return {
        "games": float(len(played)),
        "dropped": float(dropped),
        "spy_caught": float(np.mean([g.outcome() == "caught" for g in played])) if played else 0.0,
        "votes_n/a": float(np.mean([v.kind == "abstain" for v in votes])) if votes else 0.0,
        "votes_invalid": float(np.mean([v.kind == "invalid" for v in votes])) if votes else 0.0,
        "turns_without_a_clue": float(np.mean([t.clue is None for g in played for t in g.clues])) if played else 0.0,
    }


__all__ = ["play_games"]
