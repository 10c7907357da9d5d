"""One game of Who is the spy as data: its pair, the spy's seat, every turn, the votes and rewards.

Made and scored by `games.spy.SpyProducer`; `Game.record()` is the JSON-safe transcript of a game
(`games.transcripts` writes and renders it). Seats are 1-based.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image

from games import spy_prompts as prompts
from games.pairs import ImagePair, SpyView
from games.schedule import Stage, decision_accuracy
from games.scoring import Vote, count_kinds, vote_counts
from mmrl.contracts import Completion, EncodedPrompt

Role = Literal["spy", "civilian", "judge"]


@dataclass
class Turn:
    """One generation in one game: a clue turn or one decision sample."""

    stage: Stage
    role: Role
    seat: int | None
    """The speaker's or voter's seat (1-based); None for the judge."""
    round: int
    """Clue round (1-based); 0 for decision turns."""
    prompt: EncodedPrompt
    completion: Completion
    clue: str | None = None
    """Clue turns: the boxed clue (`parse_clue`), None when there is none."""
    thinking: str = ""
    """Clue turns: the private reasoning, shown back to its speaker only."""
    vote: Vote | None = None
    """Decision turns: the parsed vote (`parse_vote`)."""
    reward: float = 0.0
    """Clue reward (Eq. 1) or vote reward (Eq. 4)."""
    advantage: float | None = None
    """None until computed (clue advantages need the role baselines: `SpyProducer.produce`)."""


@dataclass
class Game:
    """One game: its pair, the spy's seat, every turn and, once scored, its rewards."""

    id: str
    """`{step + 1}-{rank}-{index}`: numbered like the logs (metrics of producer step s are logged as step s + 1)."""
    step: int
    """The producer step that played it (0-based)."""
    pair: ImagePair
    spy: int
    """The spy's seat, 1-based."""
    n_players: int
    spy_view: SpyView
    clues: list[Turn] = field(default_factory=list)
    decisions: list[Turn] = field(default_factory=list)
    dropped: str = ""
    """Why the game stopped early (a prompt over the token budget); empty for a played game."""
    clue_rewards: np.ndarray | None = None
    """Eq. 1 rewards, (n_players,) indexed by seat − 1."""

    def role(self, seat: int) -> Role:
        return "spy" if seat == self.spy else "civilian"

    def image(self, seat: int) -> Image.Image:
        """What `seat` sees: the spy's view for the spy, the original for civilians."""
        return self.pair.spy_image(self.spy_view) if seat == self.spy else self.pair.original

    def pictures(self) -> dict[str, Image.Image]:
        """The pictures a transcript shows: `original` (the civilians') and `spy` (the spy's view)."""
        return {"original": self.pair.original, "spy": self.pair.spy_image(self.spy_view)}

    def spoken(self) -> list[prompts.SpokenClue]:
        return [prompts.SpokenClue(t.round, t.seat, t.clue, t.thinking) for t in self.clues]  # type: ignore[arg-type]

    @property
    def votes(self) -> list[Vote]:
        return [t.vote for t in self.decisions if t.vote is not None]

    def outcome(self) -> str:
        """`caught` (the spy strictly out-polls every other seat and N/A), `escaped`, or `no votes`."""
        if not any(v.kind == "player" for v in self.votes):
            return "no votes"
        return "caught" if decision_accuracy([self.votes], [self.spy], "majority") == 1.0 else "escaped"

    def record(self) -> dict[str, Any]:
        """The game as JSON-safe data: pair, roles, every turn (prompt text, completion, parse), votes, rewards."""
        kinds = count_kinds(self.votes)
        return {
            "game": self.id,
            "step": self.step + 1,  # as metrics.jsonl and samples.jsonl number it
            "pair": {
                "id": self.pair.id,
                "kind": self.pair.kind,
                "difference": self.pair.difference,
                "changes": [c.get("description", "") for c in self.pair.changes],
            },
            "n_players": self.n_players,
            "spy": self.spy,
            "spy_view": self.spy_view,
            "roles": [self.role(k) for k in range(1, self.n_players + 1)],
            "clues": [_turn_record(t) for t in self.clues],
            "votes": [_turn_record(t) for t in self.decisions],
            "vote_counts": vote_counts(self.votes, self.n_players).tolist(),
            "abstain": kinds["abstain"],
            "invalid": kinds["invalid"],
            "clue_rewards": None if self.clue_rewards is None else self.clue_rewards.tolist(),
            "outcome": self.outcome(),
        }


def _turn_record(t: Turn) -> dict[str, Any]:
    out: dict[str, Any] = {
        "stage": t.stage,
        "role": t.role,
        "seat": t.seat,
        "round": t.round,
        "prompt": t.prompt.text,
        "completion": t.completion.text,
        "finish_reason": t.completion.finish_reason,
    }
    if t.stage == "clue":
        out |= {"clue": t.clue, "thinking": t.thinking}
    elif t.vote is not None:
        out["vote"] = {"player": t.vote.player, "abstain": "N/A", "invalid": None}[t.vote.kind]
    return out | {"reward": t.reward, "advantage": t.advantage}


__all__ = ["Game", "Role", "Turn"]
