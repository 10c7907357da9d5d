"""The texts players and judges of the spy game read (Vision-Zero; Wang et al. 2025, arXiv 2509.25541).

Pure functions from what a seat may know to chat messages; the wording is ours (docs/vision_zero.md). The one rule
they enforce is visibility: a player's prompt shows every earlier clue, its **own** earlier reasoning, and
never another player's reasoning (`history_block`); the judge sees clues only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from games.pairs import SpyView

GAME_NAME = "Who is the spy?"
NO_CLUE = "(no clue: nothing usable in \\boxed{})"
"""How a turn without a parsable clue appears in everyone's history."""


@dataclass(frozen=True)
class SpokenClue:
    """One clue turn as the history block knows it."""

    round: int
    """Clue round, 1-based."""
    seat: int
    """Speaker's seat, 1-based."""
    clue: str | None
    """The boxed clue (`games.scoring.parse_clue`), None when the turn gave none."""
    thinking: str
    """The speaker's private reasoning: shown back to the speaker only."""


def history_block(spoken: Sequence[SpokenClue], viewer: int | None) -> str:
    """All clues so far, round by round in speaking order; the `viewer`'s own turns also show its reasoning.

    `viewer` None (the judge) sees clues only. Everyone's clue is shown to everyone; reasoning only to its owner.
    """
    if not spoken:
        return "No clues have been given yet: you are the first to speak."
    lines = ["Clues so far:"]
    for r in sorted({s.round for s in spoken}):
        lines.append(f"Round {r}:")
        for s in (t for t in spoken if t.round == r):
            clue = s.clue if s.clue is not None else NO_CLUE
            if s.seat == viewer:
                lines.append(f"- Player {s.seat} (you). Your private reasoning then: {s.thinking or '(none)'}")
                lines.append(f"  Your clue: {clue}")
            else:
                lines.append(f"- Player {s.seat}: {clue}")
    return "\n".join(lines)


def _setup(n_players: int, clue_rounds: int, difference: str, spy_view: SpyView) -> str:
    how = (
        f"The spy's picture differs from it: {difference}."
        if spy_view == "modified"
        else "The spy is shown only a blank grey image instead."
    )
    return (
        f'"{GAME_NAME}" is a picture game for {n_players} players. {n_players - 1} of them, the civilians, are '
        f"shown the same picture; exactly one player, the spy, is not. {how} Players speak in turn, one clue "
        f"each per round, for {clue_rounds} round{'s' if clue_rounds > 1 else ''}; afterwards the players are "
        "judged on their clues and whoever is voted the spy loses points."
    )


def clue_text(
    *,
    seat: int,
    round_: int,
    is_spy: bool,
    n_players: int,
    clue_rounds: int,
    difference: str,
    spy_view: SpyView,
    spoken: Sequence[SpokenClue],
) -> str:
    """The text of player `seat`'s clue turn in round `round_` (its picture goes before it)."""
    if not is_spy:
        role = (
            "You are a CIVILIAN: the picture above is the shared one. Point out one specific detail of it that no "
            "earlier clue has mentioned, so the other civilians can tell you saw the real picture, without "
            "describing the whole picture."
        )
    elif spy_view == "modified":
        role = (
            "You are the SPY: the picture above is the different one, and you do not know what was changed. "
            "Blend in: mention a detail the real picture most likely shares with yours, stay consistent with the "
            "earlier clues, and avoid anything that might be one of the differences."
        )
    else:
        role = (
            "You are the SPY: you see a blank image. Guess from the earlier clues what the real picture shows and "
            "give a clue that fits it, so that nobody suspects you."
        )
    return "\n\n".join(
        [
            f"You are Player {seat}. This is clue round {round_} of {clue_rounds}.",
            _setup(n_players, clue_rounds, difference, spy_view),
            role,
            "Think it through step by step first; your reasoning stays private (only you will see it again). "
            "Then write your clue as a single sentence inside \\boxed{}, different from every earlier clue.",
            history_block(spoken, seat),
        ]
    )


def judge_text(
    *, n_players: int, clue_rounds: int, difference: str, spy_view: SpyView, spoken: Sequence[SpokenClue]
) -> str:
    """The judge's text (the civilians' picture goes before it): all clues, no reasoning."""
    return "\n\n".join(
        [
            "You are the judge of this game.",
            _setup(n_players, clue_rounds, difference, spy_view),
            "The picture above is the civilians' picture. Civilians tried to show they know it; the spy tried "
            "to pass as one of them. Look for the clue that does not fit: one that contradicts the picture or "
            "the other clues, or is vague, evasive or unsure.",
            f"Reason step by step first. Then give the spy's player number (1 to {n_players}) inside \\boxed{{}}, "
            "or \\boxed{N/A} if you cannot tell.",
            history_block(spoken, None),
        ]
    )


def voter_text(
    *, seat: int, n_players: int, clue_rounds: int, difference: str, spy_view: SpyView, spoken: Sequence[SpokenClue]
) -> str:
    """Civilian `seat`'s vote (its own picture, the shared one, goes before it): clues and its own reasoning."""
    return "\n\n".join(
        [
            f"You are Player {seat}, a CIVILIAN: the picture above is the shared one.",
            _setup(n_players, clue_rounds, difference, spy_view),
            "The clue rounds are over; now vote in private. Compare every clue with your picture and with the "
            "others, and look for one that does not fit: wrong, vague, evasive or unsure.",
            f"Reason step by step first. Then give the spy's player number (1 to {n_players}) inside \\boxed{{}}, "
            "or \\boxed{N/A} if you cannot tell.",
            history_block(spoken, seat),
        ]
    )


def messages(image: Image.Image, text: str) -> list[dict[str, Any]]:
    """One user turn: the picture, then the text."""
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]


__all__ = ["GAME_NAME", "NO_CLUE", "SpokenClue", "clue_text", "history_block", "judge_text", "messages", "voter_text"]
