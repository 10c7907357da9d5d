"""Who is the spy: multi-turn, multi-role self-play as a Producer (Vision-Zero; Wang et al. 2025, arXiv 2509.25541).

`SpyProducer` has `TaskProducer`'s interface, so the trainer loop runs it unchanged. One step plays
`game.games_per_step` games in lock-step: a turn of all B games is ONE engine call, for both engines.

    draw B pairs and spy seats (uniform)
    for round r = 1..R, for seat k = 1..n:      one call, B prompts x 1 sample     (clue turns)
    decision:                                   one call: judge, B prompts x G samples,
                                                or per_civilian, B·n_c prompts x 1 sample
    clue rewards from the votes (Eq. 1)  ->  role baselines (Eq. 2)  ->  A_k = r_k − b_role(k) on all of k's turns
    vote rewards (Eq. 4)  ->  group-normalised per game (Eq. 5)
    the stage schedule observes the step's vote accuracy and N/A rate (Algorithm 1)
    return the rollouts of the stage this step trains (the other stage ran forward only)

Rewards (docs/vision_zero.md), with v_s the votes for the spy, v_cj for civilian j, v̄_c their mean, n_c = n − 1:

    r_spy = −β (v_s − v̄_c),    r_cj = (β / n_c)(v_s − v̄_c) − λ (v_cj − v̄_c)              (Eq. 1, zero-sum)
    b_spy ← α b_spy + (1 − α) mean r_spy,   b_civ ← α b_civ + (1 − α) mean r_c,   A = r − b   (Eq. 2)
    r_vote = +1 spy / −0.5 N/A / −1 otherwise,   A_vote = (r − μ_game) / (σ_game + ε)         (Eqs. 4-5)

Under torch.distributed the baseline targets and the schedule's inputs are global-batch means (all-reduced), so
every process holds the same baselines and stage. Every random choice comes from
`numpy.random.default_rng([seed, rank, step, ...])`: a resumed run plays the same games. Bad model output never
raises (no clue, invalid votes are counted); a pair that cannot be built is skipped and counted; a game whose
prompt outgrows `rollout.max_prompt_tokens` is dropped and counted.

`sft_examples(step, count)` feeds the supervised cold start (`mmrl.sft`): turns of games scripted without a model,
with reference completions (`games.spy_sft`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from games import spy_prompts as prompts
from games.pairs import pair_source
from games.schedule import Stage, StageSchedule, decision_accuracy, na_rate
from games.scoring import (
    RoleBaselines,
    clue_rewards,
    count_kinds,
    decision_advantages,
    decision_rewards,
    parse_clue,
    parse_vote,
)
from games.spy_eval import evaluate as heldout_evaluate
from games.spy_game import Game, Turn
from games.transcripts import TranscriptWriter
from mmrl.config import RunConfig, validate_config
from mmrl.contracts import Completion, EncodedPrompt, Engine, Rollout
from mmrl.errors import ConfigError, MediaError, MMRLError, SkipItem
from mmrl.rollout import sampling_params
from mmrl.rollout.encode import encode_prompt

log = logging.getLogger(__name__)

TASK = "spy"
"""Registry name of the game: the `task` of its rollouts."""
MAX_BAD_DRAWS = 32  # unusable pairs in a row for one game before the run stops


def global_sum(values: np.ndarray) -> np.ndarray:
    """`values` summed over the data-parallel processes when torch.distributed is initialised, else as they are."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return np.asarray(values, dtype=np.float64)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    total = torch.as_tensor(np.asarray(values, dtype=np.float64), device=device)
    dist.all_reduce(total)
    return total.cpu().numpy()


class SpyProducer:
    """The spy game as a Producer: `produce(engine, step) -> (rollouts, metrics)`, checkpointable state."""

    def __init__(self, cfg: RunConfig, processor: Any, rank: int = 0) -> None:
        if cfg.game.name != TASK:
            raise ConfigError(f"SpyProducer needs game.name: {TASK}, got {cfg.game.name!r}")
        validate_config(cfg)  # a config built in code has not been through load_config's checks
        self.cfg = cfg
        self.game = cfg.game
        self.processor = processor
        self.rank = rank
        """Data-parallel rank: ranks play disjoint games."""
        self.pairs = pair_source(dataclasses.replace(cfg.game.pairs))  # replace() re-validates overridden params
        self.baselines = RoleBaselines(alpha=cfg.game.rae_alpha)
        self.schedule = StageSchedule(cfg.game.schedule)
        self.stats: Counter = Counter()
        self._transcripts: TranscriptWriter | None = None

    # -- experience -------------------------------------------------------------------------------

    def produce(self, engine: Engine, step: int) -> tuple[list[Rollout], dict[str, float]]:
        """Play one step's games; return the rollouts of the stage this step trains, and the metrics."""
        stage = self.schedule.stage
        games, metrics = self.play(engine, step)
        played = [g for g in games if not g.dropped]
        # Every process learns whether any process is left without a game, so all raise together instead of
        # the others waiting for it in the next collective.
        (empty,) = global_sum(np.array([0.0 if played else 1.0]))
        if empty:
            first = next((g.dropped for g in games if g.dropped), "")
            raise MMRLError(
                f"every game of step {step} was dropped on {empty:.0f} process(es) (raise rollout.max_prompt_tokens "
                f"or lower model.max_pixels); {'here: ' + first if not played else 'not on this process'}"
            )
        self._clue_advantages(games)
        votes, spies = [g.votes for g in played], [g.spy for g in played]
        local = len(played) * np.array(
            [decision_accuracy(votes, spies, self.game.schedule.acc_mode), na_rate(votes), 1]
        )
        acc_sum, na_sum, count = global_sum(local)  # the schedule sees the global batch on every process
        acc, na = acc_sum / count, na_sum / count
        self.schedule.observe(min(max(acc, 0.0), 1.0), min(max(na, 0.0), 1.0))
        rollouts = [_rollout(g, t) for g in played for t in (g.clues if stage == "clue" else g.decisions)]
        metrics |= self._metrics(played, rollouts, stage, acc, na)
        self._write_transcripts(step, played)
        return rollouts, metrics

    def play(
        self,
        engine: Engine,
        step: int,
        count: int | None = None,
        *,
        greedy: bool = False,
        decision_samples: int | None = None,
    ) -> tuple[list[Game], dict[str, float]]:
        """Play `count` (default `game.games_per_step`) games in lock-step and score them: clue rewards and
        group-normalised vote rewards. Clue advantages stay None (they need the baselines: `produce`).
        `greedy` decodes every turn at temperature 0; `decision_samples` overrides the judge's
        `game.decision_samples` (held-out evaluation, `games.spy_eval`)."""
        g = self.game
        games = [self.new_game(step, i) for i in range(count or g.games_per_step)]
        timer = {"time/generate": 0.0, "time/encode": 0.0, "time/score": 0.0}
        calls = 0
        for round_ in range(1, g.clue_rounds + 1):
            for seat in range(1, g.n_players + 1):
                turns = self._turns(
                    engine,
                    games,
                    lambda game, seat=seat, round_=round_: [self.clue_messages(game, seat, round_)],
                    n=1,
                    seed_call=(step, calls),
                    min_new_tokens=g.clue_min_new_tokens,
                    timer=timer,
                    greedy=greedy,
                )
                calls += 1
                for game, ((prompt, completions),) in turns:
                    clue, thinking = parse_clue(completions[0].text)
                    game.clues.append(
                        Turn("clue", game.role(seat), seat, round_, prompt, completions[0], clue, thinking)
                    )
        judge = g.decision_mode == "judge"
        turns = self._turns(
            engine,
            games,
            (lambda game: [self.judge_messages(game)])
            if judge
            else (lambda game: [self.voter_messages(game, k) for k in self._civilians(game)]),
            n=(decision_samples or g.decision_samples) if judge else 1,
            seed_call=(step, calls),
            min_new_tokens=g.decision_min_new_tokens,
            timer=timer,
            greedy=greedy,
        )
        for game, encoded in turns:
            voters = [None] if judge else self._civilians(game)
            for voter, (prompt, completions) in zip(voters, encoded):
                for c in completions:
                    vote = parse_vote(c.text, g.n_players)
                    game.decisions.append(
                        Turn("decision", "judge" if judge else "civilian", voter, 0, prompt, c, vote=vote)
                    )
        t0 = time.perf_counter()
        for game in games:
            if not game.dropped:
                self._score(game)
        timer["time/score"] += time.perf_counter() - t0
        return games, timer

    def new_game(self, step: int, index: int) -> Game:
        """Game `index` of `step`: spy seat (uniform) and pair from rng([data.seed, rank, step, index, attempt])."""
        for attempt in range(MAX_BAD_DRAWS):
            rng = np.random.default_rng([self.cfg.data.seed, self.rank, step, index, attempt])
            spy = int(rng.integers(1, self.game.n_players + 1))
            try:
                pair = self.pairs.draw(rng, step * self.game.games_per_step + index)
            except (SkipItem, MediaError) as e:  # an unusable pair: count it, draw another
                self.stats[f"skipped/{getattr(e, 'reason', 'unreadable_media')}"] += 1
                log.warning("skipping an image pair: %s", e)
                continue
            game_id = f"{step + 1}-{self.rank}-{index}"
            return Game(game_id, step, pair, spy, self.game.n_players, self.game.pairs.spy_view)
        raise MMRLError(f"{MAX_BAD_DRAWS} unusable image pairs in a row (game.pairs: {self.game.pairs}); see the log")

    def _turns(
        self,
        engine: Engine,
        games: list[Game],
        build: Callable[[Game], list[list[dict[str, Any]]]],
        *,
        n: int,
        seed_call: tuple[int, int],
        min_new_tokens: int,
        timer: dict[str, float],
        greedy: bool = False,
    ) -> list[tuple[Game, list[tuple[EncodedPrompt, list[Completion]]]]]:
        """Encode every live game's prompts for this turn and generate them in ONE engine call (lock-step).

        A game whose prompt cannot be encoded is dropped (counted) and plays no further turn."""
        t0 = time.perf_counter()
        encoded: list[tuple[Game, list[EncodedPrompt]]] = []
        for game in games:
            if game.dropped:
                continue
            try:
                encoded.append((game, [self.encode(m) for m in build(game)]))
            except MMRLError as e:  # too long for max_prompt_tokens (the history grows with every turn)
                game.dropped = str(e)
                self.stats["dropped_games"] += 1
                log.warning("dropping game %s: %s", game.id, e)
        timer["time/encode"] += time.perf_counter() - t0
        flat = [p for _, ps in encoded for p in ps]
        if not flat:
            return []
        step, call = seed_call
        seed = int(np.random.default_rng([self.cfg.train.seed, self.rank, step, call]).integers(2**31))
        sampling = dataclasses.replace(sampling_params(self.cfg.rollout, seed=seed), min_new_tokens=min_new_tokens)
        if greedy:
            sampling = dataclasses.replace(sampling, temperature=0.0)
        t0 = time.perf_counter()
        completions = iter(engine.generate(flat, n, sampling))
        timer["time/generate"] += time.perf_counter() - t0
        return [(game, [(p, next(completions)) for p in ps]) for game, ps in encoded]

    def encode(self, messages: list[dict[str, Any]]) -> EncodedPrompt:
        """One turn's chat messages encoded for the policy (MMRLError when over `rollout.max_prompt_tokens`)."""
        return encode_prompt(
            self.processor, messages, self.cfg.model, max_prompt_tokens=self.cfg.rollout.max_prompt_tokens
        )

    def _civilians(self, game: Game) -> list[int]:
        return [k for k in range(1, game.n_players + 1) if k != game.spy]

    def _common(self, game: Game, spoken: Sequence[prompts.SpokenClue] | None) -> dict[str, Any]:
        """The prompt arguments every turn shares; the history is `spoken` (the cold start's scripted clues)
        or, when None, the clues `game` has played so far."""
        return {
            "n_players": game.n_players,
            "clue_rounds": self.game.clue_rounds,
            "difference": game.pair.difference,
            "spy_view": game.spy_view,
            "spoken": game.spoken() if spoken is None else spoken,
        }

    def clue_messages(
        self, game: Game, seat: int, round_: int, spoken: Sequence[prompts.SpokenClue] | None = None
    ) -> list[dict[str, Any]]:
        """Player `seat`'s clue turn of round `round_`: its own picture and the history it may see."""
        text = prompts.clue_text(seat=seat, round_=round_, is_spy=seat == game.spy, **self._common(game, spoken))
        return prompts.messages(game.image(seat), text)

    def judge_messages(self, game: Game, spoken: Sequence[prompts.SpokenClue] | None = None) -> list[dict[str, Any]]:
        """The judge's turn: the civilians' picture and every clue, no reasoning."""
        return prompts.messages(game.pair.original, prompts.judge_text(**self._common(game, spoken)))

    def voter_messages(
        self, game: Game, seat: int, spoken: Sequence[prompts.SpokenClue] | None = None
    ) -> list[dict[str, Any]]:
        """Civilian `seat`'s private vote: its (the shared) picture, every clue and its own reasoning."""
        return prompts.messages(game.pair.original, prompts.voter_text(seat=seat, **self._common(game, spoken)))

    # -- rewards and advantages -------------------------------------------------------------------

    def _score(self, game: Game) -> None:
        """Clue rewards (Eq. 1) from the votes; vote rewards (Eq. 4) normalised over the game's votes (Eq. 5)."""
        g = self.game
        votes = [t.vote for t in game.decisions]
        # + 0.0 turns -β·0 = -0.0 into 0.0 (no "-0.000" in transcripts)
        game.clue_rewards = clue_rewards(votes, game.spy, g.n_players, beta=g.beta, lam=g.lam) + 0.0  # type: ignore[arg-type]
        for t in game.clues:
            t.reward = float(game.clue_rewards[t.seat - 1])
        texts = [t.completion.text for t in game.decisions]
        rewards = decision_rewards(votes, game.spy, g.decision_reward, texts)  # type: ignore[arg-type]
        for t, r, a in zip(game.decisions, rewards, decision_advantages(rewards)):
            t.reward, t.advantage = float(r), float(a)

    def _clue_advantages(self, games: list[Game]) -> None:
        """Role-Advantage Estimation (paper Eq. 2): update the baselines with global-batch means, then
        A_k = r_k − b_role(k) on every clue turn of player k.

        Per process and game slot i: (spy reward, 1, Σ civilian rewards, n_c), zeros for a dropped game; summed over
        the games (`per_step`) or kept per slot (`per_game`, slots in order), then over processes. Each row is one
        update with targets Σ spy / count and Σ civ / count: `per_step` equals `role_advantages(..., "per_step")`
        over the global batch."""
        stats = np.zeros((len(games), 4))
        for i, game in enumerate(games):
            if not game.dropped:
                r = game.clue_rewards
                civ = np.delete(r, game.spy - 1)  # type: ignore[arg-type]
                stats[i] = [r[game.spy - 1], 1.0, civ.sum(), civ.size]  # type: ignore[index]
        per_game = self.game.rae_update == "per_game"
        rows = global_sum(stats if per_game else stats.sum(axis=0, keepdims=True))
        for i, (spy_sum, spies, civ_sum, civs) in enumerate(rows):
            if spies > 0:
                self.baselines.update([spy_sum / spies], [civ_sum / civs])
            if per_game and not games[i].dropped:
                self._assign(games[i])
        if not per_game:
            for game in games:
                if not game.dropped:
                    self._assign(game)

    def _assign(self, game: Game) -> None:
        advantages = self.baselines.advantages(game.clue_rewards, game.spy)  # type: ignore[arg-type]
        for t in game.clues:
            t.advantage = float(advantages[t.seat - 1]) + 0.0  # type: ignore[operator]

    # -- metrics and transcripts ------------------------------------------------------------------

    def _metrics(
        self, games: list[Game], rollouts: list[Rollout], stage: Stage, acc: float, na: float
    ) -> dict[str, float]:
        turns = [t for g in games for t in g.clues + g.decisions]
        lengths = np.array([len(t.completion.token_ids) for t in turns])
        votes = [v for g in games for v in g.votes]
        rewards = np.array([r.reward for r in rollouts])
        adv = np.array([r.advantage for r in rollouts])
        spy_r = [g.clue_rewards[g.spy - 1] for g in games]  # type: ignore[index]
        civ_r = [r for g in games for k, r in enumerate(g.clue_rewards, 1) if k != g.spy]  # type: ignore[arg-type]
        clues = [t for g in games for t in g.clues]
        m = {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std()),
            f"reward/{TASK}/clue_spy": float(np.mean(spy_r)),
            f"reward/{TASK}/clue_civilian": float(np.mean(civ_r)),
            f"reward/{TASK}/decision": float(np.mean([t.reward for g in games for t in g.decisions])),
            "adv/mean": float(adv.mean()),
            "adv/std": float(adv.std()),
            "adv/abs_mean": float(np.abs(adv).mean()),
            "game/stage": 1.0 if stage == "clue" else 0.0,
            "game/games": float(len(games)),
            "game/acc": acc,
            "game/na_rate": na,
            "game/catch_rate": float(np.mean([g.outcome() == "caught" for g in games])),
            "game/invalid_vote_rate": count_kinds(votes)["invalid"] / max(len(votes), 1),
            "game/no_clue_rate": float(np.mean([t.clue is None for t in clues])),
            "game/baseline_spy": self.baselines.b_spy,
            "game/baseline_civilian": self.baselines.b_civ,
            "completion_len/mean": float(lengths.mean()),
            "completion_len/max": float(lengths.max()),
            "truncated_frac": float(np.mean([t.completion.finish_reason == "length" for t in turns])),
            "tokens_generated": float(lengths.sum()),
        }
        m |= {f"schedule/{k}": v for k, v in self.schedule.metrics().items() if k != "stage"}
        m |= {k: float(v) for k, v in self.stats.items()}
        return m

    def _write_transcripts(self, step: int, games: list[Game]) -> None:
        """Process 0 writes the first `game.transcript_games` games of every `log.samples_every`-th step."""
        every, keep = self.cfg.log.samples_every, self.game.transcript_games
        if self.rank != 0 or keep == 0 or every == 0:
            return
        if self._transcripts is None:  # the first step of this process: drop records a resumed run replays
            self._transcripts = TranscriptWriter(Path(self.cfg.train.out_dir) / "transcripts", keep_through=step)
        if (step + 1) % every == 0:
            self._transcripts.write([(g.record(), g.pictures()) for g in games[:keep]])

    def sft_examples(self, step: int, count: int) -> list[tuple[EncodedPrompt, str]]:
        """`count` (prompt, reference completion) pairs for supervised cold-start step `step`: turns of games
        scripted without a model (`games.spy_sft`: real prompts, format-teaching references, votes at chance).
        Deterministic in (data.seed, rank, step); `sft.shuffle_answers` does not apply (votes never name the
        spy more often than chance anyway)."""
        from games.spy_sft import sft_examples  # imports this module

        return sft_examples(self, step, count)

    def evaluate(self, engine: Engine) -> dict[str, float]:
        """Held-out play of `data.eval_samples` games, greedy and sampled, next to the random and best-constant
        votes (`games.spy_eval.evaluate`)."""
        return heldout_evaluate(self, engine)

    # -- checkpoint state -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "baselines": self.baselines.state_dict(),
            "schedule": self.schedule.state_dict(),
            "stats": dict(self.stats),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "baselines" not in state or "schedule" not in state:
            raise MMRLError("the checkpoint's producer state is not a spy game's (was it saved by a task run?)")
        self.baselines.load_state_dict(state["baselines"])
        self.schedule.load_state_dict(state["schedule"])
        self.stats = Counter(state.get("stats", {}))


def _rollout(game: Game, t: Turn) -> Rollout:
    label = f"r{t.round}p{t.seat}" if t.stage == "clue" else (f"vote{t.seat}" if t.seat else "judge")
    return Rollout(
        prompt=t.prompt,
        completion=t.completion,
        reward=t.reward,
        advantage=float(t.advantage or 0.0),
        group_id=f"{game.id}/{t.stage}",
        sample_id=f"{game.id}/{label}",
        task=TASK,
        reward_parts={t.stage: t.reward},
        role=t.role,
        meta={"stage": t.stage, "game": game.id, "seat": t.seat, "round": t.round, "spy": game.spy},
    )


__all__ = ["TASK", "SpyProducer", "global_sum"]
