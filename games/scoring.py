"""Who-is-the-spy scoring: clue and vote parsing, clue and decision rewards, role-aware advantages.

The game (Vision-Zero; Wang et al. 2025, arXiv 2509.25541): n players, one of them the spy, whose
picture differs. Players give clues in `\\boxed{…}`, then a decision stage votes for the spy (a
player number or N/A). This module turns the texts into rewards and advantages; it never sees a
model. Seats are 1-based everywhere (player 1 .. n); reward arrays are indexed by seat - 1.

- `parse_clue`, `parse_vote`: untrusted model output in, never raises, one linear pass per text.
- `clue_rewards`: the zero-sum clue reward of paper Eq. 1 from the decision-stage votes.
- `RoleBaselines`, `role_advantages`: Role-Advantage Estimation (paper Eq. 2), one EMA baseline
  for the spy and one for the civilians; clue advantages are reward - role baseline.
- `decision_rewards`, `decision_advantages`: the verifiable vote reward (paper Eq. 4, or the
  released code's shaped variant) and its group normalisation (Eq. 5).

Game rewards are a documented exception to mmrl's [0, 1] reward range: they are signed.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from mmrl.errors import ConfigError
from rewards.extract import BOXED_OPEN, boxed_span, parse_int

VoteKind = Literal["player", "abstain", "invalid"]
DecisionReward = Literal["paper", "shaped"]
RaeUpdate = Literal["per_step", "per_game"]

_THINK_TAGS = re.compile(r"</?think>")
_NUMBER = re.compile(r"(?<![0-9])[0-9]+(?![0-9])")  # a maximal run of digits
_TEXT_MACRO = re.compile(r"^\\(?:text|textbf|textrm|mathrm|mathbf)\{(.*)\}$", re.DOTALL)
_ABSTAIN_WORDS = frozenset({"n/a", "na"})
# `"spy": 3`, `"spy": "3"`, `'spy': "N/A"`: a key and a short scalar value, anywhere in the text.
_JSON_SPY = re.compile(r"[\"']spy[\"']\s*:\s*(?:([0-9]+)|\"([^\"\n]{0,16})\"|'([^'\n]{0,16})')", re.IGNORECASE)

FORMAT_MIN_REASONING = 10
"""Shaped decision reward: `fmt` needs more than this many characters of reasoning before the box."""


# --------------------------------------------------------------------------------------------------
# Parsing


def _first_boxed(text: str) -> tuple[int, int, int] | None:
    """(start of `\\boxed{`, content start, content end) of the first `\\boxed{…}` whose braces balance.

    Braces nested inside the box are kept: `\\boxed{a{b}c}` has content `a{b}c`. A box that never
    closes is skipped; among complete boxes the one that opens first wins (an outer box before an
    inner one). The brace matching is `rewards.extract.boxed_span`, shared with the task rewards so
    both pair braces identically and in linear time on 100k-character replies.
    """
    span = boxed_span(text, "first")
    return None if span is None else (span[0] - len(BOXED_OPEN), span[0], span[1])


def _first_block(text: str, open_tag: str, close_tag: str) -> tuple[int, str] | None:
    """(start of the opening tag, content) of the first `open_tag…close_tag` pair, as a non-greedy
    regex would find it, in two `str.find` calls: if the first opening tag has no closing tag after
    it, no later one has either."""
    start = text.find(open_tag)
    if start < 0:
        return None
    end = text.find(close_tag, start + len(open_tag))
    return None if end < 0 else (start, text[start + len(open_tag) : end])


def parse_clue(text: str) -> tuple[str | None, str]:
    """(clue, thinking) of a clue-stage completion; both stripped of surrounding whitespace.

    - clue: the content of the first complete `\\boxed{…}` (braces nested inside are kept, unlike
      the released code's non-greedy regex, which cut `\\boxed{a {b} c}` at the first `}`); else
      the content of the first `<answer>…</answer>`; None when neither gives non-blank text.
    - thinking, the player's private reasoning (shown back to that player only): the content of the
      first `<think>…</think>` when there is one; else the text before the box the clue came from
      (before `<answer>` for an answer-tag clue; the whole text when there is no clue), with stray
      `<think>`/`</think>` tags removed.

    Non-string input gives `(None, "")`.
    """
    if not isinstance(text, str):
        return None, ""
    clue: str | None = None
    cut = len(text)
    boxed = _first_boxed(text)
    if boxed is not None and text[boxed[1] : boxed[2]].strip():
        clue, cut = text[boxed[1] : boxed[2]].strip(), boxed[0]
    else:
        answer = _first_block(text, "<answer>", "</answer>")
        if answer is not None and answer[1].strip():
            cut, clue = answer[0], answer[1].strip()
    think = _first_block(text, "<think>", "</think>")
    thinking = think[1] if think is not None else _THINK_TAGS.sub("", text[:cut])
    return clue, thinking.strip()


@dataclass(frozen=True)
class Vote:
    """One decision-stage vote: for a player (1-based seat), an abstention (N/A), or unparseable."""

    kind: VoteKind
    """`player` (a vote for seat `player`), `abstain` (N/A) or `invalid` (no usable answer)."""
    player: int | None = None
    """The seat voted for (1-based) when `kind == "player"`, else None."""

    def __post_init__(self) -> None:
        if self.kind not in get_args(VoteKind):
            raise ValueError(f"unknown vote kind {self.kind!r}; valid: {', '.join(get_args(VoteKind))}")
        if (self.kind == "player") != (self.player is not None):
            raise ValueError(f"a {self.kind!r} vote {'needs' if self.kind == 'player' else 'takes no'} player")
        if self.player is not None and (isinstance(self.player, bool) or self.player < 1):
            raise ValueError(f"player must be a seat number >= 1, got {self.player!r}")


ABSTAIN = Vote("abstain")
INVALID = Vote("invalid")


def _is_abstain(content: str) -> bool:
    content = content.strip()
    inner = _TEXT_MACRO.match(content)
    if inner is not None:
        content = inner.group(1)
    return "".join(content.split()).rstrip(".").lower() in _ABSTAIN_WORDS


def _seat(number: str, n_players: int) -> Vote:
    # parse_int, not int(): a boxed 5000-digit number made int() raise (past sys.int_max_str_digits).
    k = parse_int(number)
    return Vote("player", k) if k is not None and 1 <= k <= n_players else INVALID


def _json_vote(text: str, n_players: int) -> Vote:
    found = _JSON_SPY.search(text)
    if found is None:
        return INVALID
    if found.group(1) is not None:
        return _seat(found.group(1), n_players)
    value = (found.group(2) if found.group(2) is not None else found.group(3)).strip()
    if _is_abstain(value):
        return ABSTAIN
    return _seat(value, n_players) if value.isascii() and value.isdigit() else INVALID


def parse_vote(text: str, n_players: int) -> Vote:
    """The vote in a decision-stage completion (docs/vision_zero.md; the released code's rule, braces balanced).

    1. The content of the first complete `\\boxed{…}`: `N/A` or `NA` in any case (spaces, a final
       period or a `\\text{…}` wrapper allowed) is an abstention; else the first standalone number
       (a maximal run of digits; `Player 3`, `P3`, `3.` all give 3) is the vote when it is a seat
       1..n_players and **invalid** otherwise (`0`, `7` of 4, `12`).
    2. When there is no box, or the box holds neither N/A nor a number: a JSON-style `"spy": k`
       anywhere in the text (`{"spy": 2}`, `{"spy": "2"}`, `{"spy": "N/A"}`), by the same rules.
    3. Anything else is invalid.

    Never raises on `text` (non-string input is invalid); `n_players < 1` raises ValueError.
    """
    if n_players < 1:
        raise ValueError(f"n_players must be >= 1, got {n_players}")
    if not isinstance(text, str):
        return INVALID
    boxed = _first_boxed(text)
    if boxed is not None:
        content = text[boxed[1] : boxed[2]]
        if _is_abstain(content):
            return ABSTAIN
        number = _NUMBER.search(content)
        if number is not None:
            return _seat(number.group(), n_players)
    return _json_vote(text, n_players)


def has_format(text: str) -> bool:
    """The shaped decision reward's `fmt`: a complete, non-blank `\\boxed{…}` with more than
    `FORMAT_MIN_REASONING` (10) characters of reasoning (stripped) before it."""
    if not isinstance(text, str):
        return False
    boxed = _first_boxed(text)
    if boxed is None or not text[boxed[1] : boxed[2]].strip():
        return False
    return len(text[: boxed[0]].strip()) > FORMAT_MIN_REASONING


# --------------------------------------------------------------------------------------------------
# Vote counting


def _check_seat(seat: int, n_players: int, what: str) -> None:
    if n_players < 2:
        raise ValueError(f"a game needs n_players >= 2, got {n_players}")
    if not 1 <= seat <= n_players:
        raise ValueError(f"{what} must be a seat in 1..{n_players}, got {seat}")


def vote_counts(votes: Sequence[Vote], n_players: int) -> np.ndarray:
    """Votes received per seat, int64 (n_players,) indexed by seat - 1; abstentions and invalid
    votes are not counted. A vote for a seat above `n_players` raises ValueError."""
    counts = np.zeros(n_players, dtype=np.int64)
    for vote in votes:
        if vote.kind == "player":
            if vote.player > n_players:  # type: ignore[operator]
                raise ValueError(f"vote for player {vote.player} in a game of {n_players}")
            counts[vote.player - 1] += 1  # type: ignore[operator]
    return counts


def count_kinds(votes: Sequence[Vote]) -> dict[str, int]:
    """How many votes are of each kind: `{"player": …, "abstain": …, "invalid": …}` (for metrics)."""
    counts = dict.fromkeys(get_args(VoteKind), 0)
    for vote in votes:
        counts[vote.kind] += 1
    return counts


# --------------------------------------------------------------------------------------------------
# Clue rewards and Role-Advantage Estimation


def clue_rewards(votes: Sequence[Vote], spy: int, n_players: int, beta: float = 0.1, lam: float = 0.1) -> np.ndarray:
    """Zero-sum clue rewards of one game, float64 (n_players,) indexed by seat - 1 (paper Eq. 1).

    Wang et al. 2025, *Vision-Zero* (arXiv 2509.25541), Eq. 1. With v_s the votes the spy received,
    v_cj the votes civilian j received, n_c = n_players - 1 and v̄_c = (1/n_c) Σ_j v_cj (abstentions
    and invalid votes not counted):

        r_spy = −β (v_s − v̄_c)
        r_cj  = (β / n_c)(v_s − v̄_c) − λ (v_cj − v̄_c)

    β sets the spy-versus-civilians competition, λ penalises civilians that draw suspicion. The
    rewards sum to 0 (up to rounding). Worked example (docs/vision_zero.md): 4 players, spy 2, votes
    {1: 2, 2: 5, 3: 0, 4: 0} and one N/A give (+0.011, −0.433, +0.211, +0.211).
    """
    _check_seat(spy, n_players, "spy")
    v = vote_counts(votes, n_players).astype(np.float64)
    civ = np.arange(n_players) != spy - 1
    n_c = n_players - 1
    v_s = v[spy - 1]
    v_c = v[civ].mean()
    rewards = np.empty(n_players)
    rewards[spy - 1] = -beta * (v_s - v_c)
    rewards[civ] = beta / n_c * (v_s - v_c) - lam * (v[civ] - v_c)
    return rewards


@dataclass
class RoleBaselines:
    """Role-Advantage Estimation (paper Eq. 2): one EMA reward baseline per role, both starting at 0.

    Wang et al. 2025, *Vision-Zero* (arXiv 2509.25541), Eq. 2:

        b_spy ← α b_spy + (1 − α) mean(spy rewards)
        b_civ ← α b_civ + (1 − α) mean(civilian rewards)
        A_k   = r_k − b_role(k)

    The spy's seat has an information disadvantage, so raw zero-sum rewards would push the spy
    down and the civilians up regardless of clue quality; the baselines remove that offset.
    Order: **update first, then subtract** (`update`, then `advantages`; `role_advantages` does
    both). α = 1 freezes the baselines at their value (0 from a fresh start: no RAE).
    """

    alpha: float = 0.95
    """EMA weight of the old baseline (paper 0.95; the released code 0.9, updated once per game)."""
    b_spy: float = 0.0
    """Current spy baseline."""
    b_civ: float = 0.0
    """Current civilian baseline."""
    updates: int = 0
    """How many updates have been applied (for logging and checkpoints)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"RAE alpha must be in [0, 1], got {self.alpha}")

    def update(self, spy_rewards: Sequence[float], civilian_rewards: Sequence[float]) -> None:
        """One EMA step per role. The spy target is the mean over the given spy rewards (one per game);
        the civilian target the mean over all given civilian rewards of all games, which equals the
        mean of the per-game civilian means (the paper's (1/n_c) Σ_j r_cj) when every game has the
        same n_c. Raises ValueError for an empty or non-finite input."""
        spy = np.asarray(spy_rewards, dtype=np.float64).ravel()
        civ = np.asarray(civilian_rewards, dtype=np.float64).ravel()
        if spy.size == 0 or civ.size == 0:
            raise ValueError("RoleBaselines.update needs at least one spy and one civilian reward")
        if not (np.all(np.isfinite(spy)) and np.all(np.isfinite(civ))):
            raise ValueError("RoleBaselines.update got a NaN or infinite reward")
        a = self.alpha
        self.b_spy = a * self.b_spy + (1.0 - a) * float(spy.mean())
        self.b_civ = a * self.b_civ + (1.0 - a) * float(civ.mean())
        self.updates += 1

    def advantages(self, rewards: np.ndarray, spy_seat: int) -> np.ndarray:
        """Clue advantages of one game, float64 (n_players,): r_k − b_spy at the spy's seat, r_k − b_civ
        elsewhere. Uses the current baselines as they are: call `update` first (paper order)."""
        r = np.asarray(rewards, dtype=np.float64)
        if r.ndim != 1:
            raise ValueError(f"rewards must be 1-D (n_players,), got shape {r.shape}")
        _check_seat(spy_seat, len(r), "spy_seat")
        adv = r - self.b_civ
        adv[spy_seat - 1] = r[spy_seat - 1] - self.b_spy
        return adv

    def state_dict(self) -> dict[str, Any]:
        """The baselines and update count, plain floats (JSON-safe), for checkpoints."""
        return {"alpha": self.alpha, "b_spy": self.b_spy, "b_civ": self.b_civ, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the baselines and update count; `alpha` stays as configured (the config decides)."""
        self.b_spy = float(state["b_spy"])
        self.b_civ = float(state["b_civ"])
        self.updates = int(state["updates"])


def _split_roles(rewards: np.ndarray, spy: int) -> tuple[float, np.ndarray]:
    r = np.asarray(rewards, dtype=np.float64)
    if r.ndim != 1:
        raise ValueError(f"per-game rewards must be 1-D (n_players,), got shape {r.shape}")
    _check_seat(spy, len(r), "spy")
    return float(r[spy - 1]), np.delete(r, spy - 1)


def role_advantages(
    batch_rewards: Sequence[np.ndarray],
    spies: Sequence[int],
    baselines: RoleBaselines,
    mode: RaeUpdate = "per_step",
) -> list[np.ndarray]:
    """Update `baselines` with a batch of games, then return each game's clue advantages (n_players,).

    - `per_step` (mmrl default): one update with the batch means (spy rewards of all games; all
      civilian rewards of all games), then every game's advantages from the updated baselines.
    - `per_game` (the released code, with alpha 0.9): games in order, each one update with that
      game's rewards followed by that game's advantages. The code averaged each update over the
      data-parallel ranks' games; a sequential per-game update is the single-process reading.

    Call it on decision-only steps too when reproducing the code (it kept updating the baselines).
    An empty batch returns [] and leaves the baselines untouched.
    """
    if len(batch_rewards) != len(spies):
        raise ValueError(f"got {len(batch_rewards)} games but {len(spies)} spy seats")
    if mode not in get_args(RaeUpdate):
        raise ConfigError(f"unknown RAE update mode {mode!r}; valid: {', '.join(get_args(RaeUpdate))}")
    if not batch_rewards:
        return []
    roles = [_split_roles(r, s) for r, s in zip(batch_rewards, spies)]
    if mode == "per_game":
        out = []
        for (spy_r, civ_r), rewards, spy in zip(roles, batch_rewards, spies):
            baselines.update([spy_r], civ_r)
            out.append(baselines.advantages(rewards, spy))
        return out
    baselines.update([s for s, _ in roles], np.concatenate([c for _, c in roles]))
    return [baselines.advantages(r, s) for r, s in zip(batch_rewards, spies)]


# --------------------------------------------------------------------------------------------------
# Decision rewards


def decision_rewards(
    votes: Sequence[Vote],
    spy: int,
    mode: DecisionReward = "paper",
    texts: Sequence[str] | None = None,
) -> np.ndarray:
    """Per-vote decision rewards, float64 (len(votes),) (paper Eq. 4, or the code's shaped variant).

    Wang et al. 2025, *Vision-Zero* (arXiv 2509.25541), Eq. 4; with a = +1 for a vote naming the spy,
    −0.5 for an abstention (N/A), −1 for a wrong or invalid vote:

    - `paper`: r = a.
    - `shaped` (the released code): r = 0.3·(2·fmt − 1) + 1.2·a + 0.99·1[a > 0], fmt = `has_format`
      of the vote's completion (`texts`, required) → correct 2.49 / 1.89 (with / without fmt),
      N/A −0.30 / −0.90, wrong −0.90 / −1.50.

    Normalise a game's G rewards with `decision_advantages` (paper Eq. 5).
    """
    if mode not in get_args(DecisionReward):
        raise ConfigError(f"unknown decision reward {mode!r}; valid: {', '.join(get_args(DecisionReward))}")
    if spy < 1:
        raise ValueError(f"spy must be a seat number >= 1, got {spy}")
    a = np.array(
        [1.0 if v.kind == "player" and v.player == spy else -0.5 if v.kind == "abstain" else -1.0 for v in votes],
        dtype=np.float64,
    )
    if mode == "paper":
        return a
    if texts is None:
        raise ValueError("decision_rewards(mode='shaped') needs the completions (texts) for the format term")
    if len(texts) != len(votes):
        raise ValueError(f"got {len(votes)} votes but {len(texts)} texts")
    fmt = np.array([has_format(t) for t in texts], dtype=np.float64)
    return 0.3 * (2.0 * fmt - 1.0) + 1.2 * a + 0.99 * (a > 0)


def decision_advantages(
    rewards: np.ndarray, group_ids: Sequence[Hashable] | None = None, eps: float = 1e-8
) -> np.ndarray:
    """Group-normalised decision advantages (paper Eq. 5): A_i = (r_i − μ_g) / (σ_g + eps), with μ_g, σ_g
    the mean and population std of the rewards of i's group (default: all rewards are one game's group).

    This is `mmrl.grpo.advantages.group_advantages(..., "grpo")`: a group whose rewards are all equal
    gets exactly 0 (the released code centres such a group, which gives the same 0).
    """
    # Imported here: the `mmrl.grpo` package pulls in torch, which scoring itself never needs.
    from mmrl.grpo.advantages import group_advantages

    r = np.asarray(rewards, dtype=np.float64)
    ids: Sequence[Hashable] = [0] * len(r) if group_ids is None else group_ids
    return group_advantages(r, ids, "grpo", eps=eps)


__all__ = [
    "ABSTAIN",
    "FORMAT_MIN_REASONING",
    "INVALID",
    "DecisionReward",
    "RaeUpdate",
    "RoleBaselines",
    "Vote",
    "VoteKind",
    "clue_rewards",
    "count_kinds",
    "decision_advantages",
    "decision_rewards",
    "has_format",
    "parse_clue",
    "parse_vote",
    "role_advantages",
    "vote_counts",
]
