"""The spy game producer: visibility, lock-step play, rewards and advantages, stages, determinism, resume,
transcripts, the supervised cold start's scripted games, and a tiny CPU cold start + training run (slow).

Games run with the real tiny model and HF engine. The random-init tiny model never writes `\\boxed{}`, so
its clues and votes never parse; tests that need real clues and votes (marker strings, votes for given
seats) use `ScriptedEngine`, an Engine that answers from a script with the real tokenizer's token ids.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from games.config import SpyConfig
from games.scoring import RoleBaselines, parse_clue, parse_vote, role_advantages
from games.spy import SpyProducer
from games.spy_prompts import NO_CLUE, SpokenClue, clue_text, history_block, judge_text, voter_text
from games.spy_sft import GENERIC_CLUES, NA_SHARE, THINKING, chart_sentences, scripted_game
from games.transcripts import IMAGES, TranscriptWriter, read_transcripts
from mmrl.config import RunConfig, load_config, validate_config
from mmrl.contracts import Completion, EncodedPrompt, SamplingParams
from mmrl.errors import ConfigError, MMRLError
from mmrl.logging import read_metrics
from mmrl.producers import HELDOUT_STEP, TaskProducer, make_producer
from mmrl.rollout import make_engine

ROOT = Path(__file__).resolve().parents[1]
N, R = 4, 2  # players, clue rounds


def config(tmp_path: Path, *overrides: str) -> RunConfig:
    return load_config(
        RunConfig,
        None,
        [
            "game.name=spy",
            f"game.n_players={N}",
            f"game.clue_rounds={R}",
            "game.games_per_step=2",
            "game.decision_samples=3",
            "game.clue_min_new_tokens=0",
            "game.decision_min_new_tokens=0",
            "game.transcript_games=0",
            "game.pairs.size=[128, 96]",
            "model.max_pixels=50176",
            "rollout.max_new_tokens=8",
            "rollout.temperature=0.8",
            f"train.out_dir={tmp_path / 'run'}",
            *overrides,
        ],
    )


class ScriptedEngine:
    """Answers from a script: clue turns `THINK-<seat>-<round> ... \\boxed{CLUE-<seat>-<round>}`, votes drawn
    from VOTES with numpy seeded by the call's sampling seed (so a seeded step repeats). Records every call."""

    VOTES = [
        "I pick \\boxed{1}",
        "so \\boxed{2}",
        "\\boxed{3}",
        "surely \\boxed{4}",
        "\\boxed{N/A}",
        "no idea",
        "\\boxed{",
    ]

    def __init__(self, tokenizer, clue_text: str = "THINK-{seat}-{round} looks \\boxed{{CLUE-{seat}-{round}}}"):
        self.tokenizer = tokenizer
        self.clue_text = clue_text
        self.calls: list[tuple[int, int]] = []

    def generate(self, prompts: list[EncodedPrompt], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        self.calls.append((len(prompts), n))
        rng = np.random.default_rng(sampling.seed)
        out = []
        for p in prompts:
            turn = re.search(r"You are Player (\d+)\. This is clue round (\d+)", p.text)
            if turn:
                texts = [self.clue_text.format(seat=turn.group(1), round=turn.group(2))] * n
            else:
                texts = [self.VOTES[int(rng.integers(len(self.VOTES)))] for _ in range(n)]
            out.append([self._completion(t) for t in texts])
        return out

    def _completion(self, text: str) -> Completion:
        ids = self.tokenizer(text)["input_ids"]
        return Completion(ids, [0.0] * len(ids), text, "stop")

    def sync_weights(self, model) -> None:
        pass


def counting(engine):
    """Record (prompts, n) of every call of a real engine's generate."""
    calls: list[tuple[int, int]] = []
    generate = engine.generate

    def wrapped(prompts, n, sampling):
        calls.append((len(prompts), n))
        return generate(prompts, n, sampling)

    engine.generate = wrapped
    return calls


# --------------------------------------------------------------------------------------------------
# Visibility


def _marked_turns() -> list[SpokenClue]:
    return [SpokenClue(r, k, f"CLUE-{k}-{r}", f"THINK-{k}-{r}") for r in range(1, R + 1) for k in range(1, N + 1)]


def test_prompt_builders_show_all_earlier_clues_and_only_own_reasoning() -> None:
    turns = _marked_turns()
    common = {"n_players": N, "clue_rounds": R, "difference": "two objects changed", "spy_view": "modified"}
    for i, turn in enumerate(turns):
        earlier = turns[:i]
        text = clue_text(seat=turn.seat, round_=turn.round, is_spy=turn.seat == 2, spoken=earlier, **common)
        assert f"You are Player {turn.seat}" in text
        for e in earlier:
            assert e.clue in text
            assert (e.thinking in text) == (e.seat == turn.seat), (turn, e)
        assert not re.search(r"(CLUE|THINK)-\d-\d", text.split("Clues so far:")[0])  # only in the history block
    judge = judge_text(spoken=turns, **common)
    assert all(t.clue in judge for t in turns) and "THINK" not in judge
    for seat in (1, 3, 4):
        vote = voter_text(seat=seat, spoken=turns, **common)
        assert all(t.clue in vote for t in turns)
        assert set(re.findall(r"THINK-(\d)", vote)) == {str(seat)}
    assert "first to speak" in history_block([], 1)
    silent = history_block([SpokenClue(1, 1, None, "THINK-1-1")], 2)
    assert NO_CLUE in silent and "THINK" not in silent


def _check_visibility(game) -> None:
    """Every prompt of `game` shows each earlier clue line and no other player's reasoning."""
    for i, t in enumerate(game.clues):
        for e in game.clues[:i]:
            line = f"- Player {e.seat}: {e.clue if e.clue is not None else NO_CLUE}"
            if e.seat != t.seat:
                assert line in t.prompt.text
                if len(e.thinking) >= 12:  # random text this long cannot turn up by chance
                    assert e.thinking not in t.prompt.text
            else:
                assert f"Your private reasoning then: {e.thinking or '(none)'}" in t.prompt.text
    for d in game.decisions:
        for e in game.clues:
            assert f"- Player {e.seat}: {e.clue if e.clue is not None else NO_CLUE}" in d.prompt.text or (
                e.seat == d.seat
            )
            if e.seat != d.seat and len(e.thinking) >= 12:
                assert e.thinking not in d.prompt.text


def test_real_game_prompts_hide_others_reasoning_and_show_every_clue(policy, tmp_path) -> None:
    model, processor = policy
    engine = make_engine(load_config(RunConfig).rollout, model, processor, seed=0)
    producer = SpyProducer(config(tmp_path), processor)
    games, _ = producer.play(engine, 0)
    assert len(games) == 2 and not any(g.dropped for g in games)
    for game in games:
        assert [(t.round, t.seat) for t in game.clues] == [(r, k) for r in range(1, R + 1) for k in range(1, N + 1)]
        assert sum(len(t.thinking) >= 12 for t in game.clues) >= N  # the check below is not vacuous
        _check_visibility(game)
        assert all(t.role == "judge" and "You are the judge" in t.prompt.text for t in game.decisions)


@pytest.mark.parametrize(("mode", "view"), [("judge", "modified"), ("per_civilian", "blank")])
def test_scripted_game_prompts_hide_others_reasoning(policy, tmp_path, mode, view) -> None:
    cfg = config(tmp_path, f"game.decision_mode={mode}", f"game.pairs.spy_view={view}")
    games, _ = SpyProducer(cfg, policy[1]).play(ScriptedEngine(policy[1].tokenizer), 0)
    for game in games:
        _check_visibility(game)
        for t in game.clues + game.decisions:
            others = {k for k in range(1, N + 1) if k != t.seat}
            assert not any(f"THINK-{k}-" in t.prompt.text for k in others)
        spy_turn = next(t for t in game.clues if t.seat == game.spy)
        civilian_turn = next(t for t in game.clues if t.seat != game.spy)
        assert "You are the SPY" in spy_turn.prompt.text and "You are a CIVILIAN" in civilian_turn.prompt.text
        assert ("blank image" in spy_turn.prompt.text) == (view == "blank")

        def shown(turn) -> np.ndarray:  # the picture inside the encoded prompt
            (image,) = turn.prompt.media["image"]
            return np.asarray(image)

        assert np.array_equal(shown(spy_turn), np.asarray(game.pair.spy_image(view)))
        assert (len(np.unique(shown(spy_turn).reshape(-1, 3), axis=0)) == 1) == (view == "blank")
        for t in [civilian_turn, *game.decisions]:  # civilians and voters see the original
            assert np.array_equal(shown(t), np.asarray(game.pair.original))
        if mode == "per_civilian":
            assert sorted(t.seat for t in game.decisions) == [k for k in range(1, N + 1) if k != game.spy]


# --------------------------------------------------------------------------------------------------
# Lock-step play


@pytest.mark.parametrize("mode", ["judge", "per_civilian"])
def test_each_turn_of_all_games_is_one_engine_call(policy, tmp_path, mode) -> None:
    model, processor = policy
    engine = make_engine(load_config(RunConfig).rollout, model, processor, seed=0)
    calls = counting(engine)
    cfg = config(tmp_path, f"game.decision_mode={mode}", "game.games_per_step=3")
    rollouts, metrics = SpyProducer(cfg, processor).produce(engine, 0)
    decision = (3, cfg.game.decision_samples) if mode == "judge" else (3 * (N - 1), 1)
    assert calls == [(3, 1)] * (N * R) + [decision]
    # the first step trains the decision stage: only its rollouts come back
    assert len(rollouts) == decision[0] * decision[1]
    assert {r.meta["stage"] for r in rollouts} == {"decision"}
    for key in ("tokens_generated", "time/generate", "game/catch_rate", "game/na_rate", "game/invalid_vote_rate",
                "game/stage", "schedule/dwell", "game/baseline_spy", "reward/spy/clue_civilian"):  # fmt: skip
        assert key in metrics, key
    assert metrics["game/stage"] == 0.0 and metrics["game/invalid_vote_rate"] == 1.0  # random text never votes


# --------------------------------------------------------------------------------------------------
# Rewards, advantages and stages


@pytest.mark.parametrize(("update", "alpha"), [("per_step", 0.95), ("per_game", 0.9)])
def test_rewards_zero_sum_advantages_per_player_and_active_stage_only(policy, tmp_path, update, alpha) -> None:
    cfg = config(tmp_path, "game.games_per_step=4", "game.decision_samples=6", "game.schedule.mode=alternate",
                 f"game.rae_update={update}", f"game.rae_alpha={alpha}")  # fmt: skip
    producer = SpyProducer(cfg, policy[1])
    engine = ScriptedEngine(policy[1].tokenizer)
    reference = RoleBaselines(alpha=alpha)
    for step, stage in enumerate(["decision", "clue", "decision"]):
        games, _ = producer.play(engine, step)  # what produce plays (same seeds), with rewards but no advantages
        rollouts, metrics = producer.produce(engine, step)
        assert metrics["game/stage"] == (1.0 if stage == "clue" else 0.0)
        assert {r.meta["stage"] for r in rollouts} == {stage}
        expected = role_advantages([g.clue_rewards for g in games], [g.spy for g in games], reference, update)
        assert producer.baselines.b_spy == pytest.approx(reference.b_spy)
        assert producer.baselines.b_civ == pytest.approx(reference.b_civ)
        by_game: dict[str, list] = {}
        for r in rollouts:
            by_game.setdefault(r.meta["game"], []).append(r)
        assert len(by_game) == 4
        for game, adv in zip(games, expected):
            assert abs(game.clue_rewards.sum()) < 1e-12
            mine = by_game[game.id]
            if stage == "clue":
                assert len(mine) == N * R and sorted({r.meta["seat"] for r in mine}) == list(range(1, N + 1))
                for r in mine:  # every clue turn of a player carries that player's advantage and reward
                    assert r.advantage == pytest.approx(adv[r.meta["seat"] - 1])
                    assert r.reward == pytest.approx(game.clue_rewards[r.meta["seat"] - 1])
                    assert r.role == ("spy" if r.meta["seat"] == game.spy else "civilian")
            else:
                assert len(mine) == 6 and all(r.role == "judge" for r in mine)
                assert abs(sum(r.advantage for r in mine)) < 1e-6  # group-normalised within the game
    assert any(np.abs(g.clue_rewards).max() > 0 for g in games)  # the votes gave real rewards
    assert producer.baselines.updates == (3 if update == "per_step" else 12)


def _rank_worker(rank: int, world: int, folder: str) -> None:
    """One data-parallel process: three scripted steps under a gloo group; writes its state and clue rewards."""
    import torch.distributed as dist

    from mmrl.models import load_processor

    # A failing peer must not leave the other waiting for gloo's default 30 minutes.
    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )
    cfg = config(Path(folder), "game.games_per_step=3")
    processor = load_processor(cfg.model)
    producer = SpyProducer(cfg, processor, rank=rank)
    engine = ScriptedEngine(processor.tokenizer)
    steps = []
    for step in range(3):
        games, _ = producer.play(engine, step)
        producer.produce(engine, step)
        steps.append([(g.clue_rewards.tolist(), g.spy) for g in games])
    state = producer.state_dict()
    state.pop("stats")
    Path(folder, f"rank{rank}.json").write_text(json.dumps({"state": state, "steps": steps}))
    dist.barrier()
    # Both results are on disk. Leave without tearing the gloo group down: under load, its background
    # threads can abort the process (std::terminate, SIGABRT) when the peer closes its connection first.
    os._exit(0)


@pytest.mark.slow
def test_two_processes_share_global_baselines_and_stage(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_rank_worker, args=(2, str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["state"] == ranks[1]["state"]  # same baselines, same schedule on every process
    assert ranks[0]["steps"] != ranks[1]["steps"]  # ... although the processes played different games
    reference = RoleBaselines(alpha=0.95)
    for step in range(3):  # the baselines follow the global batch: both processes' games in one update
        games = ranks[0]["steps"][step] + ranks[1]["steps"][step]
        role_advantages([np.array(r) for r, _ in games], [spy for _, spy in games], reference)
    assert ranks[0]["state"]["baselines"]["b_spy"] == pytest.approx(reference.b_spy)
    assert ranks[0]["state"]["baselines"]["b_civ"] == pytest.approx(reference.b_civ)
    assert reference.b_spy != 0


def _dropping_worker(rank: int, world: int, folder: str) -> None:
    """Process 1's prompt budget drops all its games; both processes must raise, neither may hang."""
    import torch.distributed as dist

    from mmrl.models import load_processor

    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )
    cfg = config(Path(folder), *(["rollout.max_prompt_tokens=64"] if rank == 1 else []))
    processor = load_processor(cfg.model)
    try:
        SpyProducer(cfg, processor, rank=rank).produce(ScriptedEngine(processor.tokenizer), 0)
        outcome = "no error"
    except MMRLError as e:
        outcome = str(e)
    Path(folder, f"rank{rank}.txt").write_text(outcome)
    dist.barrier()
    os._exit(0)  # as in _rank_worker


@pytest.mark.slow
def test_a_process_without_games_makes_every_process_raise(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_dropping_worker, args=(2, str(tmp_path)), nprocs=2)
    outcomes = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert all("every game of step 0 was dropped on 1 process(es)" in o for o in outcomes), outcomes
    assert "not on this process" in outcomes[0] and "max_prompt_tokens" in outcomes[1]


def test_bad_output_is_counted_never_raised(policy, tmp_path) -> None:
    engine = ScriptedEngine(policy[1].tokenizer, clue_text="\\boxed{{ {{unclosed <answer> THINK-{seat}")
    rollouts, metrics = SpyProducer(config(tmp_path), policy[1]).produce(engine, 0)
    assert metrics["game/no_clue_rate"] == 1.0
    assert 0 < metrics["game/invalid_vote_rate"] < 1
    assert rollouts


def test_prompts_over_the_token_budget_drop_games_and_are_counted(policy, tmp_path) -> None:
    producer = SpyProducer(config(tmp_path, "rollout.max_prompt_tokens=64"), policy[1])
    engine = ScriptedEngine(policy[1].tokenizer)
    games, _ = producer.play(engine, 0)
    assert all("max_prompt_tokens" in g.dropped for g in games) and producer.stats["dropped_games"] == 2
    assert engine.calls == []
    with pytest.raises(MMRLError, match="every game of step 0 was dropped"):
        producer.produce(engine, 0)


def test_spy_seat_uniform_and_unusable_pairs_skipped(policy, tmp_path) -> None:
    for name, dot in (("good", (3, 3)), ("same", None)):
        for side in ("original", "modified"):
            im = Image.new("RGB", (64, 48), (200, 30, 30))
            if dot and side == "modified":
                im.putpixel(dot, (0, 255, 0))
            im.save(tmp_path / f"{name}_{side}.png")
    cfg = config(tmp_path, "game.pairs.kind=photo", f"game.pairs.photo_folder={tmp_path}")
    producer = SpyProducer(cfg, policy[1])
    games = [producer.new_game(step, i) for step in range(100) for i in range(2)]
    assert {g.pair.id for g in games} == {"good"}
    assert producer.stats["skipped/photo_pair_identical"] > 0
    seats = np.bincount([g.spy for g in games], minlength=N + 1)[1:]
    assert seats.sum() == 200 and seats.min() >= 30  # uniform: 50 expected per seat


# --------------------------------------------------------------------------------------------------
# Determinism and resume


def test_same_seed_same_games_with_the_real_model(policy, tmp_path) -> None:
    model, processor = policy

    def records(step: int, seed: int = 0) -> list[dict]:
        engine = make_engine(load_config(RunConfig).rollout, model, processor, seed=0)
        producer = SpyProducer(config(tmp_path, f"data.seed={seed}"), processor)
        return [g.record() for g in producer.play(engine, step)[0]]

    first = records(0)
    assert json.dumps(first) == json.dumps(records(0))
    assert [g["pair"]["id"] for g in records(1)] != [g["pair"]["id"] for g in first]
    other = records(0, seed=1)
    assert [(g["spy"], g["pair"]["id"], g["clues"][0]["completion"]) for g in other] != [
        (g["spy"], g["pair"]["id"], g["clues"][0]["completion"]) for g in first
    ]


class OracleEngine(ScriptedEngine):
    """Votes for the spy of each held-out game (known from `new_game`), in the order the games are played."""

    def __init__(self, tokenizer, spies: list[int]):
        super().__init__(tokenizer)
        self.spies = spies

    def generate(self, prompts: list[EncodedPrompt], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        out = super().generate(prompts, n, sampling)
        if re.search(r"You are Player (\d+)\. This is clue round", prompts[0].text):
            return out
        return [[self._completion(f"\\boxed{{{spy}}}")] * n for spy in self.spies[: len(prompts)]]


def test_heldout_eval_plays_fixed_games_greedy_and_sampled_next_to_both_baselines(policy, tmp_path) -> None:
    model, processor = policy
    cfg = config(tmp_path, "data.eval_samples=6", "data.eval_k=2")
    producer = SpyProducer(cfg, processor)
    spies = [producer.new_game(HELDOUT_STEP, i).spy for i in range(6)]
    training = {producer.new_game(step, i).pair.original.tobytes() for step in range(3) for i in range(2)}
    assert not training & {producer.new_game(HELDOUT_STEP, i).pair.original.tobytes() for i in range(6)}

    engine = make_engine(cfg.rollout, model, processor, seed=0)
    calls = counting(engine)
    ev = producer.evaluate(engine)
    # Greedy: R·N clue calls and one judge call with one vote per game; sampled: the same with eval_k votes.
    assert calls == [(6, 1)] * (R * N) + [(6, 1)] + [(6, 1)] * (R * N) + [(6, 2)]
    assert ev == producer.evaluate(engine)  # the same held-out games and seeds every time
    assert ev["eval/random_reward"] == pytest.approx(1 / N)
    assert ev["eval/constant_reward"] == pytest.approx(Counter(spies).most_common(1)[0][1] / 6)
    assert ev["eval/constant_spread"] == pytest.approx(1 / 6)
    for name in ("reward", "accuracy", "spread", "top_share"):
        assert 0.0 <= ev[f"eval/{name}"] <= 1.0 and 0.0 <= ev[f"eval/{name}_sampled"] <= 1.0
    assert producer.schedule.state_dict() == SpyProducer(cfg, processor).schedule.state_dict()  # eval trains nothing

    oracle = producer.evaluate(OracleEngine(processor.tokenizer, spies))
    assert oracle["eval/reward"] == oracle["eval/reward_sampled"] == 1.0
    assert oracle["eval/spread"] == pytest.approx(len(set(spies)) / 6)
    assert oracle["eval/spread_sampled"] == pytest.approx(len(set(spies)) / 12)
    assert SpyProducer(config(tmp_path, "data.eval_samples=0"), processor).evaluate(engine) == {}


def test_state_dict_resume_continues_the_same_run(policy, tmp_path) -> None:
    always = ["game.schedule.min_dwell=1", "game.schedule.acc_to_clue=0.0", "game.schedule.na_to_clue=1.0"]
    cfg = config(tmp_path, "game.schedule.mode=adaptive", *always)  # thresholds always hold: switch every step
    engine = ScriptedEngine(policy[1].tokenizer)
    full = SpyProducer(cfg, policy[1])
    expected = [full.produce(engine, s) for s in range(4)]
    first = SpyProducer(cfg, policy[1])
    for s in range(2):
        first.produce(engine, s)
    resumed = SpyProducer(cfg, policy[1])
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))  # checkpoints store it as JSON
    for s in (2, 3):
        rollouts, metrics = resumed.produce(engine, s)
        want_rollouts, want_metrics = expected[s]
        assert [(r.sample_id, r.reward, r.advantage) for r in rollouts] == [
            (r.sample_id, r.reward, r.advantage) for r in want_rollouts
        ]
        assert {k: v for k, v in metrics.items() if not k.startswith("time/")} == {
            k: v for k, v in want_metrics.items() if not k.startswith("time/")
        }
    assert resumed.state_dict() == full.state_dict()
    assert full.baselines.updates == 4 and full.schedule.switches >= 2
    with pytest.raises(MMRLError, match="not a spy game"):
        resumed.load_state_dict({"counters": [0]})


# --------------------------------------------------------------------------------------------------
# Config, producer choice, transcripts


def test_config_defaults_follow_the_sheet_and_bad_values_are_named(tmp_path) -> None:
    g = SpyConfig()
    assert (g.name, g.n_players, g.clue_rounds, g.decision_mode, g.decision_samples) == ("spy", 4, 2, "judge", 8)
    assert (g.beta, g.lam, g.rae_alpha, g.rae_update, g.decision_reward) == (0.1, 0.1, 0.95, "per_step", "paper")
    assert (g.clue_min_new_tokens, g.decision_min_new_tokens, g.pairs.spy_view) == (20, 100, "modified")
    validate_config(config(tmp_path))
    bad_values = {
        "game.n_players=2": "game.n_players",
        "game.decision_min_new_tokens=9": "game.decision_min_new_tokens",
        "game.rae_alpha=1.5": "game.rae_alpha",
        "game.games_per_step=0": "game.games_per_step",
    }
    for bad, key in bad_values.items():
        with pytest.raises(ConfigError, match=key):
            validate_config(config(tmp_path, bad))
    with pytest.raises(ConfigError, match="must be one of"):
        config(tmp_path, "game.decision_mode=vote")


def test_7b_recipe_has_the_sheet_hyperparameters() -> None:
    cfg = load_config(RunConfig, ROOT / "configs" / "spy_qwen25vl7b.yaml")
    g, a, t = cfg.game, cfg.algorithm, cfg.train
    assert cfg.model.path == "Qwen/Qwen2.5-VL-7B-Instruct" and cfg.model.dtype == "bfloat16"
    assert (g.name, g.n_players, g.clue_rounds, g.decision_samples, g.games_per_step * 8) == ("spy", 4, 2, 8, 128)
    assert (g.beta, g.lam, g.rae_alpha, g.schedule.mode, g.schedule.min_dwell) == (0.1, 0.1, 0.95, "adaptive", 5)
    assert (t.steps, t.lr, t.warmup_steps, t.schedule, t.grad_clip, t.mixed_precision) == (
        100, 1e-5, 10, "cosine", 1.0, "bf16")  # fmt: skip
    assert (a.kl_coef, a.kl_estimator, a.clip_low, a.clip_high, a.loss) == (0.04, "k3", 0.2, 0.2, "ppo_clip")
    assert (cfg.rollout.temperature, g.clue_min_new_tokens, g.decision_min_new_tokens) == (0.8, 20, 100)
    validate_config(cfg)


def test_make_producer_picks_the_game_or_the_task_mixture(policy, tmp_path) -> None:
    assert isinstance(make_producer(config(tmp_path), policy[1]), SpyProducer)
    assert isinstance(make_producer(load_config(RunConfig), policy[1]), TaskProducer)
    assert make_producer(config(tmp_path, "data.eval_samples=0"), policy[1]).evaluate(None) == {}  # no held-out games


def test_transcripts_jsonl_markdown_and_pictures(policy, tmp_path) -> None:
    producer = SpyProducer(config(tmp_path, "game.decision_mode=per_civilian"), policy[1])
    games, _ = producer.play(ScriptedEngine(policy[1].tokenizer), 0)
    writer = TranscriptWriter(tmp_path / "t")
    writer.write([(g.record(), g.pictures()) for g in games])
    records = read_transcripts(tmp_path / "t")
    assert [r["game"] for r in records] == [g.id for g in games] == ["1-0-0", "1-0-1"]
    md = (tmp_path / "t" / "transcripts.md").read_text()
    for r, game in zip(records, games):
        for path in r["images"].values():
            assert f"]({path})" in md and Image.open(tmp_path / "t" / path).size == game.pair.original.size
        assert r["spy"] == game.spy and r["roles"][game.spy - 1] == "spy"
        assert [c["clue"] for c in r["clues"]] == [f"CLUE-{k}-{rnd}" for rnd in (1, 2) for k in range(1, N + 1)]
        assert all(f'Player {k} ({r["roles"][k - 1]}): "CLUE-{k}-1"' in md for k in range(1, N + 1))
        assert r["outcome"] in ("caught", "escaped", "no votes") and f"Game {r['game']}" in md
    # a writer resuming after step 0 drops what a replaced run wrote later
    TranscriptWriter(tmp_path / "t", keep_through=0)
    assert read_transcripts(tmp_path / "t") == [] and "0 games" in (tmp_path / "t" / "transcripts.md").read_text()
    assert len(list((tmp_path / "t" / IMAGES).glob("*.png"))) == 4


def test_game_rollouts_train_through_the_unchanged_update(tmp_path) -> None:
    from mmrl.grpo.trainer import setup_policy, update_policy

    cfg = config(tmp_path, "game.schedule.mode=clue", "train.micro_batch_size=8")
    policy = setup_policy(cfg, 1)
    producer = SpyProducer(cfg, policy.processor)
    rollouts, _ = producer.produce(ScriptedEngine(policy.processor.tokenizer), 0)
    assert len(rollouts) == 2 * N * R and any(r.advantage != 0 for r in rollouts)
    before = [p.detach().clone() for p in policy.unwrapped.parameters()]
    metrics = update_policy(policy, rollouts, cfg, 0)
    assert metrics["grad_norm"] > 0
    assert any(not (a == b).all() for a, b in zip(before, policy.unwrapped.parameters()))


# --------------------------------------------------------------------------------------------------
# Supervised cold start: scripted games with reference turns

_SCENE_CLUE = re.compile(r"There is an? (?:(small|medium|large) )?(\w+) (\w+)\.")


def _true_of(clue: str, graph: dict) -> bool:
    """`clue` ("There is a [size] colour shape.") names an object of the scene graph."""
    match = _SCENE_CLUE.fullmatch(clue)
    assert match, clue
    size, color, shape = match.groups()
    return any(o["color"]["name"] == color and o["shape"] == shape and size in (None, o["size"]["name"])
               for o in graph["objects"])  # fmt: skip


def _photo_folder(folder: Path) -> Path:
    """One (original, modified) photo pair of 64x48 pictures that differ in one pixel."""
    folder.mkdir()
    for side in ("original", "modified"):
        im = Image.new("RGB", (64, 48), (200, 30, 30))
        if side == "modified":
            im.putpixel((3, 3), (0, 255, 0))
        im.save(folder / f"p_{side}.png")
    return folder


def test_sft_examples_are_deterministic_parse_and_are_not_training_games(policy, tmp_path) -> None:
    cfg = config(tmp_path)
    producer = SpyProducer(cfg, policy[1])
    examples = producer.sft_examples(0, 20)  # games of 2·4 clue turns + 3 judge votes: 11 turns each
    again = SpyProducer(cfg, policy[1]).sft_examples(0, 20)
    assert len(examples) == 20
    assert [(p.input_ids.tolist(), t) for p, t in examples] == [(p.input_ids.tolist(), t) for p, t in again]
    assert all(
        torch.equal(a.vision["pixel_values"], b.vision["pixel_values"]) for (a, _), (b, _) in zip(examples, again)
    )
    assert [t for _, t in producer.sft_examples(1, 20)] != [t for _, t in examples]
    assert [t for _, t in SpyProducer(config(tmp_path, "data.seed=1"), policy[1]).sft_examples(0, 20)] != [
        t for _, t in examples
    ]
    kinds = Counter()
    for prompt, target in examples:
        if "This is clue round" in prompt.text:
            clue, thinking = parse_clue(target)
            assert clue and thinking, target
            kinds["clue"] += 1
        else:
            assert "You are the judge" in prompt.text
            assert parse_vote(target, N).kind != "invalid", target
            kinds["vote"] += 1
    assert kinds["clue"] >= 8 and kinds["vote"] >= 3
    sft_game, _ = scripted_game(producer, 0, 0)
    trained = producer.new_game(0, 0)
    assert not np.array_equal(np.asarray(sft_game.pair.original), np.asarray(trained.pair.original))


@pytest.mark.parametrize(("mode", "view"), [("judge", "modified"), ("per_civilian", "blank")])
def test_scripted_games_cover_every_turn_with_clues_true_of_the_speakers_picture(policy, tmp_path, mode, view) -> None:
    cfg = config(tmp_path, f"game.decision_mode={mode}", f"game.pairs.spy_view={view}")
    producer = SpyProducer(cfg, policy[1])
    spy_clues_false_of_the_original = 0
    for index in range(6):
        game, turns = scripted_game(producer, 0, index)
        clues = sorted((t for t in turns if t.stage == "clue"), key=lambda t: (t.round, t.seat))
        assert [(t.round, t.seat) for t in clues] == [(r, k) for r in range(1, R + 1) for k in range(1, N + 1)]
        decisions = [t for t in turns if t.stage == "decision"]
        if mode == "judge":
            assert len(decisions) == cfg.game.decision_samples and {t.seat for t in decisions} == {None}
            assert all(t.messages is decisions[0].messages for t in decisions)  # one prompt, G votes
        else:
            assert sorted(t.seat for t in decisions) == [k for k in range(1, N + 1) if k != game.spy]
        for t in decisions:
            vote = parse_vote(t.target, N)
            assert vote.kind in ("player", "abstain") and (vote.player is None or vote.player != t.seat)
        for t in clues:
            clue, thinking = parse_clue(t.target)
            spy = t.seat == game.spy
            assert thinking == THINKING["blank" if spy and view == "blank" else game.role(t.seat)]
            if spy and view == "blank":
                assert clue in GENERIC_CLUES
            else:  # true of the speaker's own picture: the spy sees the modified scene
                assert _true_of(clue, game.pair.meta["scene_modified" if spy else "scene_original"]), (t, game.spy)
                spy_clues_false_of_the_original += spy and not _true_of(clue, game.pair.meta["scene_original"])
            content = t.messages[0]["content"]
            text = content[1]["text"]
            assert f"You are Player {t.seat}. This is clue round {t.round}" in text
            assert ("You are the SPY" in text) == spy
            assert np.array_equal(np.asarray(content[0]["image"]), np.asarray(game.image(t.seat)))
            for e in clues:  # the scripted history: earlier reference clues, the speaker's own reasoning only
                if (e.round, e.seat) < (t.round, t.seat):
                    assert f"- Player {e.seat}: {parse_clue(e.target)[0]}" in text or e.seat == t.seat
                    if e.seat == t.seat:
                        assert f"Your private reasoning then: {parse_clue(e.target)[1]}" in text
    if view == "modified":  # not vacuous: some spy clue names a replaced object, absent from the original
        assert spy_clues_false_of_the_original > 0


@pytest.mark.parametrize("mode", ["judge", "per_civilian"])
def test_sft_votes_are_at_chance_never_biased_toward_the_spy(policy, tmp_path, mode) -> None:
    folder = _photo_folder(tmp_path / "photos")
    cfg = config(tmp_path, "game.pairs.kind=photo", f"game.pairs.photo_folder={folder}", f"game.decision_mode={mode}",
                 "game.decision_samples=8")  # fmt: skip
    producer = SpyProducer(cfg, policy[1])
    votes = []
    for step in range(30):
        for index in range(10):
            game, turns = scripted_game(producer, step, index)
            assert all(parse_clue(t.target)[0] in GENERIC_CLUES for t in turns if t.stage == "clue")  # no metadata
            votes += [(parse_vote(t.target, N), game.spy) for t in turns if t.stage == "decision"]
    seat_votes = [(v.player, spy) for v, spy in votes if v.kind == "player"]
    chance = 1 / N if mode == "judge" else 1 / (N - 1)  # a civilian voter never names itself
    spy_share = np.mean([k == spy for k, spy in seat_votes])
    sigma = np.sqrt(chance * (1 - chance) / len(seat_votes))
    assert abs(spy_share - chance) < 4 * sigma, (spy_share, chance, len(seat_votes))
    assert abs(np.mean([v.kind == "abstain" for v, _ in votes]) - NA_SHARE) < 0.04


def test_chart_clues_come_from_the_speakers_own_spec(policy, tmp_path) -> None:
    pie = {"type": "pie", "title": "Fruit", "categories": ["Apples", "Figs"], "series": [{"name": "2021",
           "values": [3, 5]}], "colors": ["red", "blue"], "show_values": False}  # fmt: skip
    assert chart_sentences(pie) == [
        "It is a pie chart.",
        "The title is Fruit.",
        "One category is Apples.",
        "One category is Figs.",
        "The Apples slice is red.",
        "The Figs slice is blue.",
    ]
    lines = {**pie, "type": "line", "series": [{"name": "Oslo", "values": [1, 2]}, {"name": "Lima", "values": [2, 1]}]}
    assert {"One series is Lima.", "The Oslo line is red.", "The Lima line is blue."} <= set(chart_sentences(lines))
    cfg = config(tmp_path, "game.pairs.kind=chart", "game.pairs.chart_swaps=[colors]")
    producer = SpyProducer(cfg, policy[1])
    for index in range(2):
        game, turns = scripted_game(producer, 0, index)
        for t in (t for t in turns if t.stage == "clue"):
            spec = game.pair.meta["spec_modified" if t.seat == game.spy else "spec_original"]
            assert parse_clue(t.target)[0] in chart_sentences(spec)


# --------------------------------------------------------------------------------------------------
# End to end


def mmrl_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmrl.cli", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.slow
def test_tiny_spy_cold_start_run_learns_the_format_and_play_writes_readable_transcripts(tmp_path) -> None:
    """The tiny recipe shrunk (a shorter cold start, 4 GRPO steps): after the cold start clues and votes parse, so
    the clue stage gets non-zero advantages from valid votes; then `mmrl play` with the trained model."""
    start = time.perf_counter()
    run, sft_dir = tmp_path / "run", tmp_path / "sft"
    out = mmrl_cli("train", "--config", str(ROOT / "configs" / "spy_tiny.yaml"), f"train.out_dir={run}",
                   f"sft.out_dir={sft_dir}", "sft.steps=150", "train.steps=4", "train.save_every=2",
                   "log.samples_every=2", "log.progress=false")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    trained = time.perf_counter() - start
    assert "cold start: supervised fine-tuning" in out.stdout and (sft_dir / "final" / "config.json").exists()
    sft_losses = [r["loss/sft"] for r in read_metrics(sft_dir)]
    assert len(sft_losses) == 150 and sft_losses[-1] < 0.2 * sft_losses[0]
    records = read_metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert [r["game/stage"] for r in records] == [0.0, 1.0, 0.0, 1.0]  # alternate: decision first
    for key in ("game/catch_rate", "game/na_rate", "game/invalid_vote_rate", "schedule/dwell", "loss/policy",
                "game/baseline_civilian", "tokens_per_s"):  # fmt: skip
        assert key in records[-1], key
    assert all(r["adv/abs_mean"] > 0 for r in records if r["game/stage"] == 1.0)  # clue advantages from real votes
    assert np.mean([r["game/invalid_vote_rate"] for r in records]) < 0.5
    assert np.mean([r["game/no_clue_rate"] for r in records]) < 0.5
    transcripts = read_transcripts(run / "transcripts")
    assert [r["step"] for r in transcripts] == [2, 2, 4, 4]  # log.samples_every: 2, game.transcript_games: 2
    md = (run / "transcripts" / "transcripts.md").read_text()
    assert md.count("## Game ") == 4 and all(
        (run / "transcripts" / p).exists() for p in transcripts[0]["images"].values()
    )
    assert (run / "final" / "model.safetensors").exists()
    state = json.loads(next((run / "checkpoints").glob("step-*/producer_state.json")).read_text())
    assert {"baselines", "schedule"} <= set(state)

    out = mmrl_cli("play", "--config", str(ROOT / "configs" / "spy_tiny.yaml"), "--games", "3", "--out",
                   str(tmp_path / "play"), f"model.path={run / 'final'}",
                   "game.decision_mode=per_civilian")  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "played 3 games" in out.stdout and str(tmp_path / "play" / "transcripts.md") in out.stdout
    games = read_transcripts(tmp_path / "play")
    assert [g["game"] for g in games] == ["1-0-0", "1-0-1", "2-0-0"]
    assert all(len(g["votes"]) == N - 1 and len(g["clues"]) == N * R for g in games)
    assert any(c["clue"] is not None for g in games for c in g["clues"])
    print(f"tiny spy run: cold start + train {trained:.1f}s, total {time.perf_counter() - start:.1f}s")
