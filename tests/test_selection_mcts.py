"""MCTS difficulty selection on a scripted engine: K of a hand-traced search, batching across trees,
the durable, resumable difficulty log (SIGKILL), the outputs of `select_pool`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrl.contracts import Completion, EncodedPrompt
from mmrl.rollout.encode import continue_assistant
from mmrl.sample import read_dataset
from mmrl.selection import (
    DIFFICULTY_FILE,
    KeepRule,
    MCTSParams,
    PassRateParams,
    SearchStats,
    TaskVerifier,
    difficulty_value,
    search,
    select_pool,
    spearman,
    sweep,
)
from mmrl.selection.mcts import cut_step

sys.path.insert(0, str(Path(__file__).parent))
from selection_scripted import EOT, CharCodec, ScriptedEngine, lottery, pool  # noqa: E402

RED, BLUE, GREEN, PINK = (f"<answer>{c}</answer>{EOT}" for c in ("red", "blue", "green", "pink"))

# The hand-traced tree (sample s000, answer red; k = 3, max_steps = 3, PUCT c·√N(s)/(1+N(c)), ties to the first
# child; the tree's generator is default_rng([0, crc32("s000")]), whose integers(3) draws are 0, 2, 2, 1, 0, ...):
#
# iter 1  root is an unexpanded leaf: expand "" -> A, B, C. Draw 0 -> roll out from A: its step BLUE ends the turn,
#         wrong. Back up: N(A)=1, N(root)=1.
# iter 2  root: A 1/2, B 1/1, C 1/1 -> B. Expand "B\n" -> Bx, By, Bz. Draw 2 -> Bz; its next step "w\n<tail>" is
#         cut at the newline to "w\n"; the path B,z,w has 3 steps = max_steps: judged without an answer, wrong.
#         N(Bz)=1, N(B)=1, N(root)=2.
# iter 3  root: A √2/2, B √2/2, C √2/1 -> C. Expand "C\n" -> C0 = RED, C1 = GREEN (both end the turn), C2 = "v\n".
#         Draw 2 -> C2; its step PINK, wrong. N(C2)=1, N(C)=1, N(root)=3.
# iter 4  root: A, B, C all √3/2 -> A (first), still unexpanded (iteration 1 only rolled out from it). Expand
#         "A\n": its script's next three entries p, q, r. Draw 1 -> Aq; its step GREEN, wrong. N(Aq)=1, N(A)=2, N=4.
# iter 5  root: A 2/3, B 2/2, C 2/2 -> B. B: Bx 1/1, By 1/1, Bz 1/2 -> Bx. Expand "B\nx\n" -> three PINK
#         (depth 3, final). Draw 0 -> the first, wrong. N(Bx.0)=1, N(Bx)=1, N(B)=2, N(root)=5.
# iter 6  root: A √5/3, B √5/3, C √5/2 -> C. C: C0 1/1, C1 1/1, C2 1/2 -> C0, a final child never rolled out:
#         judged as it is, "C\n<answer>red</answer>" -> solved. K = 6 (kept by the paper's K > 5 rule).
TRACED = {
    "s000": {
        "": ["A\n", "B\n", "C\n"],
        "A\n": [BLUE, "p\n", "q\n", "r\n"],
        "B\n": ["x\n", "y\n", "z\n"],
        "B\nz\n": ["w\nignored tail"],
        "C\n": [RED, GREEN, "v\n"],
        "C\nv\n": [PINK],
        "A\nq\n": [GREEN],
        "B\nx\n": [PINK],
    }
}
TRACED_CONSUMED = ["A\n", "B\n", "C\n", BLUE, "x\n", "y\n", "z\n", "w\nignored tail", RED, GREEN, "v\n", PINK,
                   "p\n", "q\n", "r\n", GREEN, PINK, PINK, PINK]  # fmt: skip


def run(samples, engine, **params):
    stats = SearchStats()
    results = list(search(samples, engine, CharCodec(), TaskVerifier(), MCTSParams(**params), stats))
    return results, stats


def test_generator_draws_of_the_traced_tree() -> None:
    rng = np.random.default_rng([0, zlib.crc32(b"s000")])
    assert [int(rng.integers(3)) for _ in range(5)] == [0, 2, 2, 1, 0]


def test_k_matches_the_hand_traced_search() -> None:
    engine = ScriptedEngine(TRACED)
    (result,), stats = run(pool(1), engine, max_steps=3, max_iterations=10, seed=0)
    assert (result.K, result.iterations, result.solved) == (6, 6, True)
    assert result.steps == ["C\n", "<answer>red</answer>"]
    assert engine.consumed == TRACED_CONSUMED
    assert result.tokens == sum(len(t) for t in TRACED_CONSUMED)
    # one engine call per want (one tree): expand, step, expand, step, expand, step, expand, step, expand
    assert engine.calls == [3, 1, 3, 1, 3, 1, 3, 1, 3] and stats.engine_calls == 9


def test_the_traced_sample_is_unsolved_when_iterations_run_out_first() -> None:
    (result,), _ = run(pool(1), ScriptedEngine(TRACED), max_steps=3, max_iterations=5, seed=0)
    assert (result.K, result.iterations, result.solved, result.steps) == (None, 5, False, [])
    assert result.record()["K"] is None


def test_a_node_whose_final_children_were_all_judged_wrong_is_widened() -> None:
    # A policy that answers in one step. iter 1: expand root -> BLUE, BLUE, GREEN; draw 0 -> the first, wrong.
    # iters 2, 3: the two final children never rolled out are judged as they are (no engine call), wrong.
    # iter 4: no live child left -> the root gets 3 more: BLUE, RED, BLUE; draw 2 -> the last, wrong.
    # iter 5: live BLUE (first of the tie), wrong; iter 6: RED -> K = 6, with two engine calls.
    engine = ScriptedEngine({"s000": {"": [BLUE, BLUE, GREEN, BLUE, RED, BLUE]}})
    (result,), stats = run(pool(1), engine, max_iterations=10, seed=0)
    assert (result.K, result.steps, engine.calls) == (6, ["<answer>red</answer>"], [3, 3])


def test_batched_search_matches_one_at_a_time_with_fewer_engine_calls() -> None:
    samples = pool(24)
    one, one_stats = run(samples, ScriptedEngine(fallback=lottery), max_steps=3, max_iterations=12, max_trees=1)
    many, many_stats = run(samples, ScriptedEngine(fallback=lottery), max_steps=3, max_iterations=12, max_trees=8)
    by_id = {r.sample_id: r.record() for r in one}
    assert {r.sample_id: r.record() for r in many} == by_id
    ks = [r.K for r in one]
    assert None in ks and len({k for k in ks if k is not None}) >= 3  # solved at several depths, and unsolved
    assert many_stats.sequences == one_stats.sequences
    assert many_stats.engine_calls * 3 < one_stats.engine_calls


def test_finished_trees_free_their_slots_at_once() -> None:
    # s000 is solved at once (K=1); s001..s003 never: 2 slots, so s002 starts in the wave after s000 ends
    script = {"s000": {"": [RED]}}
    engine = ScriptedEngine(script, fallback=lambda *_: BLUE)
    results, _ = run(pool(4), engine, max_iterations=2, max_trees=2)
    assert [r.sample_id for r in results][0] == "s000" and results[0].K == 1
    assert engine.calls[:2] == [6, 6]  # wave 2: s001's 2nd expansion + s002's 1st; never more than 2 trees


def test_cut_step_keeps_tokens_up_to_the_delimiter() -> None:
    decode = CharCodec().decode
    text = "ab\ncd\n"
    step, spent = cut_step(Completion([ord(c) for c in text], [0.0] * 6, text, "length"), decode, "\n")
    assert (step.text, step.token_ids, step.ends_turn, spent) == ("ab\n", [97, 98, 10], False, 6)
    ids = [ord("x"), 0]
    step, _ = cut_step(Completion(ids, [0.0, 0.0], "x", "stop"), decode, "\n")
    assert (step.text, step.ends_turn) == ("x", True)


def test_continue_assistant_appends_reply_tokens_after_the_header() -> None:
    base = EncodedPrompt(torch.tensor([5, 6, 7]), vision={"mm_token_type_ids": torch.tensor([0, 1, 0])}, text="p")
    out = continue_assistant(base, [8, 9], "st")
    assert out.input_ids.tolist() == [5, 6, 7, 8, 9] and out.text == "pst"
    assert out.vision["mm_token_type_ids"].tolist() == [0, 1, 0, 0, 0]
    assert base.input_ids.tolist() == [5, 6, 7] and continue_assistant(base, []) is base


def test_select_pool_writes_the_three_outputs(tmp_path: Path) -> None:
    samples = pool(30)
    report = select_pool(samples, tmp_path, ScriptedEngine(fallback=lottery), CharCodec(), TaskVerifier(),
                         mcts=MCTSParams(max_steps=3, max_iterations=12, max_trees=6), progress=False)  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / DIFFICULTY_FILE).read_text().splitlines()]
    assert sorted(r["id"] for r in records) == [s.id for s in samples]
    assert {r["solved"] for r in records} == {True, False}
    for r in records:
        assert set(r) >= {"K", "iterations", "solved", "steps", "tokens"}
        assert (r["K"] is None) == (not r["solved"]) and (r["K"] is None or 1 <= r["K"] == r["iterations"] <= 12)
    kept = {s.id for s in read_dataset(tmp_path / "selected")}
    assert kept == {r["id"] for r in records if r["K"] is None or r["K"] > 5} and report.kept == len(kept)
    rows = dict(sweep(records, "mcts"))
    assert rows["K > 5 or unsolved"] == len(kept) and rows["all scored"] == 30
    assert rows["K > 1 or unsolved"] >= rows["K > 5 or unsolved"] >= rows["unsolved only"]
    assert "| K > 5 or unsolved |" in (tmp_path / "sweep.md").read_text()
    # another rule re-applied to the same scores: nothing is searched again
    engine = ScriptedEngine(fallback=lottery)
    again = select_pool(samples, tmp_path, engine, CharCodec(), TaskVerifier(), keep=KeepRule(min_k=1, unsolved=False),
                        mcts=MCTSParams(max_steps=3, max_iterations=12, max_trees=6), progress=False)  # fmt: skip
    assert engine.calls == [] and again.resumed == 30
    assert again.kept == sum(r["K"] is not None and r["K"] > 1 for r in records)


def test_a_resumed_run_must_use_the_same_settings(tmp_path: Path) -> None:
    from mmrl.errors import MMRLError

    select_pool(pool(2), tmp_path, ScriptedEngine(fallback=lottery), CharCodec(), TaskVerifier(),
                mcts=MCTSParams(max_iterations=3), progress=False)  # fmt: skip
    with pytest.raises(MMRLError, match="other settings"):
        select_pool(pool(2), tmp_path, ScriptedEngine(fallback=lottery), CharCodec(), TaskVerifier(),
                    mcts=MCTSParams(max_iterations=4), progress=False)  # fmt: skip


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_redoes_nothing_and_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    count = 24
    child = [sys.executable, str(Path(__file__).parent / "selection_scripted.py"), str(tmp_path / "killed"), str(count)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(child, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = tmp_path / "killed" / DIFFICULTY_FILE
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 6):
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = [json.loads(line) for line in log.read_text().splitlines()]
    assert 6 <= len(before) < count, "the kill came too late to test a resume"

    scored_again: list[str] = []
    engine = ScriptedEngine(fallback=lottery)
    params = MCTSParams(max_iterations=12, max_steps=3, max_trees=3)
    select_pool(pool(count), tmp_path / "killed", engine, CharCodec(), TaskVerifier(), mcts=params, progress=False,
                on_record=lambda r: scored_again.append(r["id"]))  # fmt: skip
    assert not set(scored_again) & {r["id"] for r in before}
    resumed = {r["id"]: r for r in map(json.loads, log.read_text().splitlines())}
    assert len(resumed) == count == len(log.read_text().splitlines())

    select_pool(pool(count), tmp_path / "whole", ScriptedEngine(fallback=lottery), CharCodec(), TaskVerifier(),
                mcts=params, progress=False)  # fmt: skip
    whole = {r["id"]: r for r in map(json.loads, (tmp_path / "whole" / DIFFICULTY_FILE).read_text().splitlines())}
    assert resumed == whole
    kept = [s.id for s in read_dataset(tmp_path / "killed" / "selected")]
    assert kept == [s.id for s in read_dataset(tmp_path / "whole" / "selected")]


def test_a_torn_last_line_is_dropped_and_rescored(tmp_path: Path) -> None:
    select_pool(pool(3), tmp_path, ScriptedEngine(fallback=lottery), CharCodec(), TaskVerifier(),
                mcts=MCTSParams(max_iterations=5), progress=False)  # fmt: skip
    log = tmp_path / DIFFICULTY_FILE
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])  # a kill in the middle of the third write
    again: list[str] = []
    params = MCTSParams(max_iterations=5)
    select_pool(pool(3), tmp_path, ScriptedEngine(fallback=lottery), CharCodec(), TaskVerifier(), mcts=params,
                progress=False, on_record=lambda r: again.append(r["id"]))  # fmt: skip
    assert again == [json.loads(lines[2])["id"]] and log.read_text().splitlines() == lines


def test_spearman_and_difficulty_values() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)  # ties take their mean rank
    assert difficulty_value({"method": "mcts", "K": None, "iterations": 50}) == 51
    assert difficulty_value({"method": "passrate", "pass_rate": 0.25}) == 0.75


def test_pass_rate_counts_accepted_replies_and_keeps_the_rarely_solved(tmp_path: Path) -> None:
    script = {"s000": {"": [RED, BLUE, BLUE, BLUE]}, "s001": {"": [BLUE]}, "s002": {"": [RED, RED, BLUE, RED]}}
    engine = ScriptedEngine(script)
    report = select_pool(pool(3), tmp_path, engine, CharCodec(), TaskVerifier(), method="passrate",
                         passrate=PassRateParams(n=4, batch_prompts=2), progress=False)  # fmt: skip
    records = {r["id"]: r for r in map(json.loads, (tmp_path / DIFFICULTY_FILE).read_text().splitlines())}
    assert {i: r["pass_rate"] for i, r in records.items()} == {"s000": 0.25, "s001": 0.0, "s002": 0.75}
    assert records["s001"]["difficulty"] == 1.0 and engine.calls == [8, 4]
    assert [s.id for s in read_dataset(tmp_path / "selected")] == ["s001"] and report.kept == 1
    assert dict(sweep(list(records.values()), "passrate"))["pass rate < 0.3"] == 2


def test_task_verifier_thresholds_and_the_step_instruction() -> None:
    from mmrl.config import ModelConfig
    from mmrl.selection import STEP_INSTRUCTION, ProcessorCodec

    (sample,) = pool(1)
    strict, lenient = TaskVerifier(), TaskVerifier({"dominant_color": 0.9})
    prose = "it is <answer>red</answer> I think"  # right answer, not the exact format: score 0.9
    assert strict.solves(sample, "<answer>red</answer>") and strict.solves(sample, prose)  # accuracy part is 1
    assert lenient.solves(sample, prose) and not lenient.solves(sample, "<answer>blue</answer>")
    assert strict.is_final(sample, "x\n<answer>red</answer>") and not strict.is_final(sample, "<answer>red")
    codec = ProcessorCodec(None, ModelConfig(), instruction=STEP_INSTRUCTION)
    messages = codec.messages(sample)
    assert messages[-1]["content"][-1]["text"] == " " + STEP_INSTRUCTION
    assert sample.messages[-1]["content"] == "Which colour?"  # the sample itself is untouched


class Recording:
    """A real engine, passed through, with every sequence it generated kept by (prompt tokens, prompt seed)."""

    def __init__(self, engine) -> None:
        self.engine, self.seen = engine, {}

    def generate(self, prompts, n, sampling):
        out = self.engine.generate(prompts, n, sampling)
        for prompt, seed, group in zip(prompts, sampling.prompt_seeds, out):
            self.seen[(tuple(prompt.input_ids.tolist()), seed)] = [c.token_ids for c in group]
        return out


def test_on_the_real_tiny_model_batched_trees_draw_what_each_tree_draws_alone(tmp_path: Path) -> None:
    """Per-tree prompt seeds (SamplingParams.prompt_seeds): with the HF engine, a wave of 4 trees asks for and gets
    exactly the sequences the one-tree-at-a-time search does, so K, iterations and tokens agree sample by sample."""
    from mmrl.cli import main
    from mmrl.config import ModelConfig
    from mmrl.models import load_policy
    from mmrl.rollout import HFEngine
    from mmrl.selection import STEP_INSTRUCTION, ProcessorCodec, load_pool

    assert main(["generate", "--task", "dominant_color", "--n", "6", "--out", str(tmp_path / "pool"), "--quiet",
                 "--param", "image_size=56"]) == 0  # fmt: skip
    samples = load_pool(tmp_path / "pool", None)
    cfg = ModelConfig(path="tiny:qwen2.5-vl")
    model, processor = load_policy(cfg)
    codec = ProcessorCodec(processor, cfg, max_prompt_tokens=1024, instruction=STEP_INSTRUCTION)
    params = dict(max_iterations=3, max_steps=2, step_tokens=4)
    runs = {}
    for trees in (1, 4):
        engine = Recording(HFEngine(model, processor, batch_size=64))
        stats = SearchStats()
        results = list(search(samples, engine, codec, TaskVerifier(), MCTSParams(max_trees=trees, **params), stats))
        runs[trees] = ({r.sample_id: r.record() for r in results}, engine.seen, stats)
    (one, one_seen, one_stats), (many, many_seen, many_stats) = runs[1], runs[4]
    assert many == one and len(one) == 6
    assert many_seen == one_seen and len(one_seen) == one_stats.sequences  # every request seeded apart
    assert many_stats.engine_calls < one_stats.engine_calls


def test_on_the_real_tiny_model_a_pass_rate_depends_on_the_sample_alone(tmp_path: Path) -> None:
    """Per-sample prompt seeds: each sample's n replies are the same whatever batch it shares (batch_prompts 2 or
    5) and when a run resumes part-way (the rest of the pool then forms other batches)."""
    from mmrl.cli import main
    from mmrl.config import ModelConfig
    from mmrl.models import load_policy
    from mmrl.rollout import HFEngine
    from mmrl.selection import ProcessorCodec, load_pool
    from mmrl.selection.passrate import sample_seed

    assert main(["generate", "--task", "dominant_color", "--n", "7", "--out", str(tmp_path / "pool"), "--quiet",
                 "--param", "image_size=56"]) == 0  # fmt: skip
    samples = load_pool(tmp_path / "pool", None)
    cfg = ModelConfig(path="tiny:qwen2.5-vl")
    model, processor = load_policy(cfg)
    codec = ProcessorCodec(processor, cfg, max_prompt_tokens=1024)
    replies: dict[str, dict] = {}  # run -> {sample's seed: its n replies' token ids}

    def scored(out: str, pool, batch: int) -> dict[str, dict]:
        engine = Recording(HFEngine(model, processor, batch_size=64))
        params = PassRateParams(n=3, max_new_tokens=6, batch_prompts=batch, seed=5)
        select_pool(pool, tmp_path / out, engine, codec, TaskVerifier(), method="passrate", passrate=params,
                    progress=False)  # fmt: skip
        replies.setdefault(out, {}).update({seed: ids for (_, seed), ids in engine.seen.items()})
        return {r["id"]: r for r in map(json.loads, (tmp_path / out / DIFFICULTY_FILE).read_text().splitlines())}

    whole = scored("whole", samples, 2)
    assert scored("batch5", samples, 5) == whole and len(whole) == 7
    scored("resumed", samples[:3], 2)
    assert scored("resumed", samples, 2) == whole  # batches {3,4}, {5,6} instead of {2,3}, {4,5}, {6}
    assert replies["batch5"] == replies["resumed"] == replies["whole"]
    assert set(replies["whole"]) == {sample_seed(5, s.id) for s in samples}
    assert len({str(ids) for ids in replies["whole"].values()}) == 7  # every sample drew its own replies
