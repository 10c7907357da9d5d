"""Supervised cold start for the spy game: every turn of a game scripted without a model, with a reference reply.

A random-init policy never writes `\\boxed{}`: every clue is unparsable, every vote invalid, every reward and
advantage flat, and GRPO learns nothing. Task runs fix that with a short SFT pass on reference answers
(`mmrl.sft`); `sft_examples(producer, step, count)` gives the game's equivalent, (prompt, reference completion)
pairs, which `SpyProducer.sft_examples` hands to `mmrl.sft`.

Games and prompts are the real ones:

- a game is drawn exactly as `SpyProducer` draws training games (pair and spy seat from
  rng([data.seed, rank, step', index, attempt])), at step' = SFT_STEP + step: a stream of its own, so no cold-start
  game is a training game;
- clue turns are played in order (round 1..R, seat 1..n); each prompt is the real clue prompt whose history holds
  the earlier turns' reference clues and reasoning (the speaker's own reasoning, everyone's clues); the decision
  prompts (judge, or one per civilian) show all reference clues.

Reference completions use the format the prompts ask for, short reasoning then a box, and teach the format and
the vocabulary, no strategy (an honest start for RL, like `sft.shuffle_answers` for tasks):

- clue: `<role note> \\boxed{<one sentence>}`, the sentence true of the speaker's OWN picture (`clue_sentences`):
  for a scene, an object of its scene graph ("There is a red cube.", or with its size); for a chart, its type, title,
  a category, a series or a colour from its spec; for a photo (no metadata) or the blank spy view, a generic
  sentence. The spy's own picture is the modified one. The sentence is drawn uniformly among those no earlier clue
  of the game used (among all once every one was used): neither role is taught to avoid or to name the changed
  objects.
- vote: `<one sentence> \\boxed{k}` for a seat drawn uniformly (judge: 1..n; a civilian voter: the n − 1 other
  seats), or `\\boxed{N/A}` with probability NA_SHARE, never informed by the spy's seat:
  P(vote = spy) = (1 − NA_SHARE) / n for the judge, (1 − NA_SHARE) / (n − 1) for a voter, chance level.

The references are short on purpose (one sentence of reasoning) so that they fit the tiny recipe's 32 new tokens;
an instruct-tuned model follows the prompts' format without a cold start.

Proportions: a scripted game yields the turns a played game trains on: n·R clue turns (every seat in every round,
so one in n is a spy turn and each round has n) and its decision turns (judge: `game.decision_samples` votes on
the one judge prompt; per_civilian: one vote per civilian), so with n = 4, R = 2 and G = 4 two thirds are clues.
A step takes its `count` examples from games 0, 1, ... of its stream, each game's turns in a random order.
Every choice (sentences, votes, order) comes from rng([data.seed, rank, step', index, CONTENT_KEY]): the examples
are a pure function of (data.seed, rank, step), so a resumed cold start sees the same ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from games.charts import colors_by_category
from games.pairs import ImagePair
from games.schedule import Stage
from games.spy import MAX_BAD_DRAWS, SpyProducer
from games.spy_game import Game
from games.spy_prompts import SpokenClue
from mmrl.contracts import EncodedPrompt
from mmrl.errors import MMRLError

SFT_STEP = 2**41
"""Cold-start games of SFT step s are drawn as training step SFT_STEP + s would draw them (a training run never
gets there; the task producer's held-out stream sits at 2**40)."""
CONTENT_KEY = MAX_BAD_DRAWS
"""Last key of a game's reference rng: above every pair-drawing attempt (0..MAX_BAD_DRAWS − 1) of the same game."""
NA_SHARE = 0.1
"""Probability that a reference vote is N/A."""

THINKING = {
    "civilian": "I describe my picture.",
    "spy": "As the spy, I describe my picture.",
    "blank": "My picture is blank, so I guess.",
}
"""The reasoning before a reference clue, by role (the blank spy view apart)."""
GENERIC_CLUES = (
    "The picture shows a few things.",
    "It is a clear picture.",
    "Everything in it is easy to see.",
)
"""Clues for a picture without metadata (photos) and for the blank spy view: format only."""


@dataclass(frozen=True)
class ScriptedTurn:
    """One turn of a scripted game and its reference completion."""

    stage: Stage
    seat: int | None
    """The speaker's or voter's seat (1-based); None for the judge."""
    round: int
    """Clue round (1-based); 0 for decision turns."""
    messages: list[dict[str, Any]]
    """The real prompt; the judge's samples share one list (encoded once)."""
    target: str
    """The reference completion."""


def sft_examples(producer: SpyProducer, step: int, count: int) -> list[tuple[EncodedPrompt, str]]:
    """`count` (encoded prompt, reference completion) pairs: the turns of scripted games 0, 1, ... of `step`, each
    game's in its random order. A turn whose prompt exceeds `rollout.max_prompt_tokens` is skipped and counted
    (`sft_skipped_turns`); raises MMRLError when no prompt of a game fits."""
    out: list[tuple[EncodedPrompt, str]] = []
    index = 0
    while len(out) < count:
        _, turns = scripted_game(producer, step, index)
        encoded: dict[int, EncodedPrompt] = {}  # the judge's samples share one prompt: encode it once
        fitted = 0
        for turn in turns:
            if len(out) == count:
                break
            key = id(turn.messages)
            if key not in encoded:
                try:
                    encoded[key] = producer.encode(turn.messages)
                except MMRLError:  # too long for max_prompt_tokens
                    producer.stats["sft_skipped_turns"] += 1
                    continue
            out.append((encoded[key], turn.target))
            fitted += 1
        if not fitted:
            raise MMRLError(f"no prompt of cold-start game {index} of step {step} fits rollout.max_prompt_tokens")
        index += 1
    return out


def scripted_game(producer: SpyProducer, step: int, index: int) -> tuple[Game, list[ScriptedTurn]]:
    """Cold-start game `index` of SFT step `step` and its turns with reference completions, in a random order."""
    cfg, n = producer.cfg, producer.game.n_players
    game = producer.new_game(SFT_STEP + step, index)
    rng = np.random.default_rng([cfg.data.seed, producer.rank, SFT_STEP + step, index, CONTENT_KEY])
    turns: list[ScriptedTurn] = []
    spoken: list[SpokenClue] = []
    for round_ in range(1, producer.game.clue_rounds + 1):
        for seat in range(1, n + 1):
            view = game.spy_view if seat == game.spy else "original"
            sentences = clue_sentences(game.pair, view)
            said = {s.clue for s in spoken}
            fresh = [s for s in sentences if s not in said] or sentences
            clue = fresh[int(rng.integers(len(fresh)))]
            thinking = THINKING["blank" if view == "blank" else game.role(seat)]
            messages = producer.clue_messages(game, seat, round_, spoken)
            turns.append(ScriptedTurn("clue", seat, round_, messages, f"{thinking} \\boxed{{{clue}}}"))
            spoken.append(SpokenClue(round_, seat, clue, thinking))
    seats = range(1, n + 1)
    if producer.game.decision_mode == "judge":
        judge = producer.judge_messages(game, spoken)
        turns += [ScriptedTurn("decision", None, 0, judge, reference_vote(rng, seats))
                  for _ in range(producer.game.decision_samples)]  # fmt: skip
    else:
        for voter in (k for k in seats if k != game.spy):
            messages = producer.voter_messages(game, voter, spoken)
            vote = reference_vote(rng, [k for k in seats if k != voter])
            turns.append(ScriptedTurn("decision", voter, 0, messages, vote))
    return game, [turns[int(i)] for i in rng.permutation(len(turns))]


def reference_vote(rng: np.random.Generator, seats: Sequence[int]) -> str:
    """A format-only vote: N/A with probability NA_SHARE, else a seat drawn uniformly from `seats`."""
    if rng.random() < NA_SHARE:
        return "No clue stands out. \\boxed{N/A}"
    k = seats[int(rng.integers(len(seats)))]
    return f"Player {k} fits least. \\boxed{{{k}}}"


def clue_sentences(pair: ImagePair, view: str) -> list[str]:
    """One-sentence clues true of picture `view` of `pair` (`original`, `modified` or `blank`), no duplicates."""
    if view != "blank" and pair.kind == "scene":
        return scene_sentences(pair.meta[f"scene_{view}"])
    if view != "blank" and pair.kind == "chart":
        return chart_sentences(pair.meta[f"spec_{view}"])
    return list(GENERIC_CLUES)


def scene_sentences(graph: dict[str, Any]) -> list[str]:
    """Per object of the scene graph (`mmrl.scenes.Scene.to_graph`): its colour and shape, and with its size."""
    out: list[str] = []
    for o in graph["objects"]:
        color, shape, size = o["color"]["name"], o["shape"], o["size"]["name"]
        out += [f"There is {_a(color)} {color} {shape}.", f"There is {_a(size)} {size} {color} {shape}."]
    return list(dict.fromkeys(out))


def chart_sentences(spec: dict[str, Any]) -> list[str]:
    """From a chart spec (`games.charts.random_chart_spec`): its type, title, categories, series named in the
    legend (charts of two or more series) and the colours of bars, slices or series."""
    kind, categories, series, colors = spec["type"], spec["categories"], spec["series"], spec["colors"]
    out = [f"It is {_a(kind)} {kind} chart.", f"The title is {spec['title']}."]
    out += [f"One category is {c}." for c in categories]
    if len(series) > 1:
        out += [f"One series is {s['name']}." for s in series]
    if colors_by_category(spec):
        part = "slice" if kind == "pie" else "bar"
        out += [f"The {c} {part} is {color}." for c, color in zip(categories, colors)]
    elif len(series) == 1:
        out.append(f"The line is {colors[0]}.")
    else:
        out += [f"The {s['name']} {'line is' if kind == 'line' else 'bars are'} {color}."
                for s, color in zip(series, colors)]  # fmt: skip
    return list(dict.fromkeys(out))


def _a(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


__all__ = [
    "CONTENT_KEY",
    "GENERIC_CLUES",
    "NA_SHARE",
    "SFT_STEP",
    "THINKING",
    "ScriptedTurn",
    "chart_sentences",
    "clue_sentences",
    "reference_vote",
    "scene_sentences",
    "scripted_game",
    "sft_examples",
]
