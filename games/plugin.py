"""The spy game as a plugin: the object the `mmrl.games` entry point `spy` names.

The engine reaches the game only through this object (`mmrl.registry.game("spy")`): its `Config` is the
schema of a run config's `game` section, `producer` plays it for training and for the cold start, `play`
backs `mmrl play`. This module imports only the schemas, so describing the config (`mmrl --help`) stays
light; the game's code, which needs torch and open3d, loads when a game is played.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from games.config import SpyConfig
from mmrl.config import RunConfig
from mmrl.contracts import Producer


class SpyGame:
    """Who is the spy (Vision-Zero, Wang et al. 2025, arXiv 2509.25541; docs/vision_zero.md)."""

    name: ClassVar[str] = "spy"
    Config: ClassVar[type] = SpyConfig

    @staticmethod
    def producer(cfg: RunConfig, processor: Any, rank: int = 0) -> Producer:
        """`games.spy.SpyProducer`: lock-step games, role-aware advantages, the Iterative-SPO schedule."""
        from games.spy import SpyProducer  # torch and open3d load here, not when the config is read

        return SpyProducer(cfg, processor, rank=rank)

    @staticmethod
    def play(cfg: RunConfig, out: Path, games: int | None = None) -> dict[str, float]:
        """`games.play.play_games`: games without training, written as transcripts to `out`."""
        from games.play import play_games  # as above

        return play_games(cfg, out, games)


__all__ = ["SpyGame"]
