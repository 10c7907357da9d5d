"""ViPER's statement reward (`rewards.statements`) with the real MiniLM embedder (`rewards.embedding`):
the embedder against sentence-transformers, splitting, slots, one-to-one matching, hedging and other
adversarial replies, malformed output, and the ranking acceptance test on procedural edits."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmrl.errors import ConfigError
from rewards.embedding import EMBEDDING_DIM, Embedder, default_embedder, minilm_path
from rewards.statements import (
    COLOR_WORDS,
    PARTS,
    SCENE_COLORS,
    StatementRewardParams,
    match_statements,
    slot_agreement,
    slots,
    split_statements,
    statement_reward,
    statement_rewards,
)

ROOT = Path(__file__).resolve().parents[1]
THINK = "<think>I compare the two images object by object.</think>"


def reply(*statements: str, sep: str = " ") -> str:
    return f"{THINK}<answer>{sep.join(statements)}</answer>"


@pytest.fixture(scope="module")
def embed() -> Embedder:
    return default_embedder()


# --------------------------------------------------------------------------------------------------
# Embedder


def test_embedder_equals_sentence_transformers(embed):
    st = pytest.importorskip("sentence_transformers")
    texts = ["The small red cube became blue.", "A large cyan torus was added.", "ok", "word " * 400]
    ours = Embedder()(texts)  # a fresh, cold instance: nothing from the shared cache
    theirs = st.SentenceTransformer(str(minilm_path()), device="cpu").encode(texts)
    assert ours.shape == (4, EMBEDDING_DIM) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_embedder_cache_and_batching(embed):
    e = Embedder(batch_size=2, cache_size=3)
    texts = ["a red cube", "a blue ball", "a red cube", "the cone", "a green ring"]
    first = e(texts)
    assert e.misses == 4 and e.hits == 0  # the repeat inside one call is embedded once
    np.testing.assert_array_equal(first[0], first[2])
    np.testing.assert_allclose(first, embed(texts), atol=1e-5)  # batch size does not change the result
    again = e(["a green ring"])
    assert e.hits == 1 and np.array_equal(again[0], first[4])
    e(["a red cube"])  # evicted by the LRU bound of 3 entries
    assert e.misses == 5
    assert e([]).shape == (0, EMBEDDING_DIM)
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        e(["fine", None])


# --------------------------------------------------------------------------------------------------
# Splitting and slots


def test_split_statements():
    text = (
        "1. The small red cube became blue.\n"
        "2) The cone moved 1.5 m to the left!  Was the sphere removed? Yes\n"
        "- • A medium cyan torus was added...\n"
        "\n   \n"
        "(3) The ball is 0.75 m tall\n"
        "* 4. \n"
        "e.g. the box"
    )
    assert split_statements(text) == [
        "The small red cube became blue",
        "The cone moved 1.5 m to the left",
        "Was the sphere removed",
        "Yes",
        "A medium cyan torus was added",
        "The ball is 0.75 m tall",
        "e.g",
        "the box",
    ]
    assert split_statements("Two statements.Joined without a space.") == ["Two statements.Joined without a space"]
    assert split_statements("") == [] and split_statements("  ...  \n!!") == [] and split_statements(None) == []
    assert split_statements('He said "stop." Then he left.') == ['He said "stop', "Then he left"]


def test_slots_words_synonyms_and_numbers():
    assert slots("The little red box moved to the left.") == {
        "size:small", "color:red", "shape:cube", "where:left", "op:move",
    }  # fmt: skip
    assert slots("A big grey ball is nearer, under the table") == {
        "size:large", "color:gray", "shape:sphere", "where:closer", "where:below",
    }  # fmt: skip
    assert slots("three cones and 3.0 rings, 1.50 m") == {"number:3", "shape:cone", "shape:torus", "number:1.5"}
    assert slots("Reduce the greenery; Bluetooth is redundant") == frozenset()  # whole words only
    assert slot_agreement(slots("The cube is red"), slots("The cube is blue")) == pytest.approx(1 / 3)
    assert slot_agreement(frozenset(), frozenset()) == 1.0
    assert slot_agreement(frozenset(), slots("red")) == 0.0
    assert slots("The ring no longer appears; a new box was inserted") == {
        "shape:torus", "op:remove", "op:add", "shape:cube",
    }  # fmt: skip
    removed = slots("The small red cube was removed")
    assert slot_agreement(removed, slots("A small red cube was added")) == 0.0  # a contradiction
    assert slot_agreement(removed, slots("The small red cube was deleted")) == 1.0
    moved = slots("The small red cube was moved to the left")
    assert slot_agreement(moved, slots("The small red cube shifted left and was painted blue")) == pytest.approx(5 / 7)
    assert slot_agreement(removed, slots("There is no small red cube anymore")) == 1.0  # one side has no op


def test_scene_colours_are_slot_words():
    from mmrl.scenes import COLORS

    assert tuple(COLORS) == SCENE_COLORS  # rewards may not import mmrl.scenes (layers); keep the copy in step
    assert all(COLOR_WORDS[c] == c for c in COLORS)


# --------------------------------------------------------------------------------------------------
# Matching


def test_one_to_one_matching_uses_each_side_once(embed):
    refs = ["The small red cube became blue", "The large cyan torus was removed"]
    statements = [
        "The small red cube became blue",
        "The small red cube became blue",  # a repeat: the reference is already taken
        "The large cyan torus was removed",
    ]
    params = StatementRewardParams()
    matches = match_statements(statements, embed(statements), refs, embed(refs), params)
    assert sorted((m.statement, m.reference) for m in matches) == [(0, 0), (2, 1)]
    loose = StatementRewardParams(matching="max")
    pairs = match_statements(statements, embed(statements), refs, embed(refs), loose)
    assert sorted((m.statement, m.reference) for m in pairs) == [(0, 0), (1, 0), (2, 1)]


def test_full_slot_agreement_is_matched_before_higher_cosine(embed):
    ref = ["The small red cube became blue"]
    # The wrong colour is closer in wording (higher cosine) than the right paraphrase.
    statements = ["The small red cube became green", "The little red box is painted blue now"]
    params = StatementRewardParams(tau=0.5)
    sv, rv = embed(statements), embed(ref)
    assert float(sv[0] @ rv[0]) > float(sv[1] @ rv[0])
    (m,) = match_statements(statements, sv, ref, rv, params)
    assert m.statement == 1 and m.credit == 1.0


def test_wrong_value_gets_partial_credit_and_a_wrong_only_value_none(embed):
    ref = ["The small red cube became blue."]
    right = statement_reward(reply("The small red cube became blue."), ref, embed)
    wrong_colour = statement_reward(reply("The small red cube became green."), ref, embed)
    assert right.parts["f1"] == 1.0 and right.score == pytest.approx(1.0)
    assert wrong_colour.parts["f1"] == pytest.approx((3 / 5) ** 2)
    plain = statement_reward(reply("The cube is blue."), ["The cube is red."], embed)
    assert plain.parts["f1"] == pytest.approx((1 / 3) ** 2)  # cosine alone would call it a match
    published = statement_reward(
        reply("The cube is blue."), ["The cube is red."], embed, StatementRewardParams(slot_check=False)
    )
    assert published.parts["f1"] == 1.0


# --------------------------------------------------------------------------------------------------
# Adversarial replies

REFS = ["The small red cube became blue.", "The large cyan torus was removed.", "A medium white cone was added."]
TRUE = list(REFS)


def test_hedging_with_every_plausible_edit_does_not_pay(embed):
    alone = statement_reward(reply(TRUE[0]), REFS[:1], embed)
    wrong = [f"The small red cube became {c}." for c in ("green", "yellow", "purple", "orange", "white")]
    wrong += [f"The small red cube became a {s}." for s in ("sphere", "cone", "torus", "cylinder")]
    wrong += ["The small red cube was removed."]
    hedge = statement_reward(reply(TRUE[0], *wrong, sep="\n"), REFS[:1], embed)
    assert hedge.parts["recall"] == 1.0  # it did name the edit...
    assert hedge.score < 0.5 * alone.score  # ...but everything else it listed is unmatched length
    recall_mode = StatementRewardParams(mode="recall")
    assert statement_reward(reply(TRUE[0], *wrong), REFS[:1], embed, recall_mode).score == pytest.approx(1.0)


def test_repeating_a_correct_sentence_earns_nothing(embed):
    once = statement_reward(reply(TRUE[0]), REFS, embed)
    thrice = statement_reward(reply(TRUE[0], TRUE[0], TRUE[0]), REFS, embed)
    assert once.parts["hits"] == thrice.parts["hits"] == 1.0
    assert thrice.score < once.score
    loose = StatementRewardParams(matching="max", mode="precision")  # the published reading pays repeats
    assert statement_reward(reply(TRUE[0], TRUE[0], TRUE[0]), REFS, embed, loose).parts["precision"] == 1.0


def test_vague_safe_sentences_earn_little(embed):
    full = statement_reward(reply(*TRUE), REFS, embed)
    assert full.score == pytest.approx(1.0)
    for vague in ("Something changed.", "An object changed its colour.", "Some objects were edited.", "The image."):
        r = statement_reward(reply(vague), REFS, embed)
        assert r.score <= 0.1, (vague, r)
    precision_mode = StatementRewardParams(mode="precision")
    assert statement_reward(reply(TRUE[0]), REFS, embed, precision_mode).score == pytest.approx(1.0)
    f1 = statement_reward(reply(TRUE[0]), REFS, embed)  # one safe true sentence out of three edits
    assert f1.score < 0.6


def test_many_statements_are_capped_and_still_count(embed):
    params = StatementRewardParams(max_statements=4)
    filler = [f"The scene has object number {i}." for i in range(40)]
    r = statement_reward(reply(*TRUE, *filler), REFS, embed, params)
    assert r.parts["recall"] == 1.0 and r.parts["precision"] < 0.1


# --------------------------------------------------------------------------------------------------
# Format, malformed output, batches, params


@pytest.mark.parametrize(
    "completion",
    [
        None,
        42,
        "",
        "The small red cube became blue.",  # no answer block
        "<answer>The small red cube became blue.",  # unterminated
        "<think>x</think><answer></answer>",
        "<think>x</think><answer> ... !! ?? </answer>",
        "<answer>" * 20000,
        "<think>" + "a" * 100_000 + "</think>",
        "<answer>\x00\ud800\U0001f600</answer>",
    ],
)
def test_malformed_replies_score_zero_without_raising(embed, completion):
    r = statement_reward(completion, REFS, embed)
    assert set(r.parts) == set(PARTS)
    assert r.parts["f1"] == 0.0 and r.parts["hits"] == 0.0
    assert r.score <= 0.05  # at most the format weight (a well-formed reply that states nothing)


TEXT = st.text(st.characters(codec="utf-8") | st.sampled_from(list(".!?\n-*1 <>/answerthink")), max_size=120)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(junk=TEXT)
def test_any_text_scores_in_range_without_raising(embed, junk):
    for completion in (junk, f"{THINK}<answer>{junk}</answer>"):
        r = statement_reward(completion, REFS, embed)
        assert set(r.parts) == set(PARTS) and 0.0 <= r.score <= 1.0 + 1e-9
        assert all(s and s == s.strip() for s in split_statements(junk))


def test_format_part(embed):
    good = statement_reward(reply(TRUE[0]), REFS[:1], embed)
    no_think = statement_reward(f"<answer>{TRUE[0]}</answer>", REFS[:1], embed)
    empty_think = statement_reward(f"<think> </think><answer>{TRUE[0]}</answer>", REFS[:1], embed)
    trailing = statement_reward(reply(TRUE[0]) + " bye", REFS[:1], embed)
    assert good.parts["format"] == 1.0 and good.score == pytest.approx(1.0)
    for r in (no_think, empty_think, trailing):
        assert r.parts["format"] == 0.0 and r.parts["f1"] == 1.0 and r.score == pytest.approx(0.95)
    lenient = StatementRewardParams(require_think=False)
    assert statement_reward(f"<answer>{TRUE[0]}</answer>", REFS[:1], embed, lenient).parts["format"] == 1.0


def test_batch_equals_one_by_one(embed):
    completions = [reply(*TRUE), reply(TRUE[1]), None, "junk", reply("The small red cube became green.")]
    refs = [REFS, REFS, REFS, REFS[:1], REFS[:1]]
    batch = statement_rewards(completions, refs, embed)
    single = [statement_reward(c, r, embed) for c, r in zip(completions, refs)]
    for a, b in zip(batch, single):
        assert a.score == pytest.approx(b.score, abs=1e-6) and a.parts == pytest.approx(b.parts, abs=1e-6)
    with pytest.raises(ValueError, match="2 completions but 1"):
        statement_rewards(["a", "b"], [REFS], embed)


def test_bad_references_and_params_raise():
    with pytest.raises(ValueError, match="no statement"):
        statement_reward(reply("x"), ["", "  ..."], default_embedder())
    with pytest.raises(ValueError, match="list of strings"):
        statement_reward(reply("x"), "The cube became blue.", default_embedder())
    with pytest.raises(ValueError, match=r"references\[1\]: references hold no statement"):
        statement_rewards([reply("x"), reply("y")], [REFS, []])
    assert statement_reward(reply(TRUE[0]), REFS[:1]).score == pytest.approx(1.0)  # embed=None: the default
    for bad in ({"tau": 1.0}, {"mode": "f2"}, {"matching": "hungarian"}, {"w_format": 2}, {"max_statements": 0}):
        with pytest.raises(ConfigError):
            StatementRewardParams(**bad)


# --------------------------------------------------------------------------------------------------
# Acceptance: correct > wrong attribute > unrelated on procedural edits

_spec = importlib.util.spec_from_file_location("calibrate_tau", ROOT / "scripts" / "calibrate_tau.py")
calibrate_tau = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("calibrate_tau", calibrate_tau)  # dataclasses look their module up there
_spec.loader.exec_module(calibrate_tau)

TEST_PARAPHRASES = {
    "recolor": ("Now the {obj} is coloured {new}.", "The {obj} was painted {new}.", "The {obj} switched to {new}."),
    "reshape": (
        "The {obj} became a {new} instead.",
        "The {obj} was reshaped into a {new}.",
        "The {obj} now has the form of a {new}.",
    ),
    "resize": ("The {obj} was resized to {new}.", "The {obj} now has a {new} size.", "The {obj} is {new} now."),
    "move": ("The {obj} moved {where}.", "The {obj} was displaced {where}.", "The {obj} now sits {where}."),
    "remove": ("The {obj} was deleted.", "The {obj} no longer appears.", "The {obj} vanished."),
    "add": ("A {obj} was inserted.", "A {obj} has been added to the scene.", "There is a new {obj} in the picture."),
}
"""Wordings of our own, different from the calibration script's, so the test does not reuse τ's data."""


def say(f, template, obj_words):
    return template.format(obj=obj_words, new=f.new, where=f.where)


@pytest.mark.slow
def test_ranking_correct_over_wrong_attribute_over_unrelated(embed):
    from mmrl.scene_edits import EDIT_KINDS, random_edit
    from mmrl.scenes import random_scene

    edits = []
    for i in range(100):
        rng = np.random.default_rng([20_000 + i, 13])
        _, edit = random_edit(random_scene(rng, n_objects=(3, 6)), rng, kinds=EDIT_KINDS)
        edits.append(edit)
    rng = np.random.default_rng(5)
    completions, refs, cases = [], [], []
    for i, edit in enumerate(edits):
        f = calibrate_tau.edit_fields(edit)
        templates = TEST_PARAPHRASES[f.kind]
        template = templates[int(rng.integers(len(templates)))]
        bad = calibrate_tau.wrong_value(f, rng)
        words = calibrate_tau.object_words(f, rng)
        bad_words = words.replace(f" {f.color} ", f" {bad.color} ")
        g = calibrate_tau.edit_fields(edits[(i + 1) % len(edits)])
        g_templates = TEST_PARAPHRASES[g.kind]
        texts = (
            say(f, template, words),
            say(bad, template, bad_words),
            say(g, g_templates[int(rng.integers(len(g_templates)))], calibrate_tau.object_words(g, rng)),
        )
        assert texts[0] != edit.description and texts[0] != texts[1]
        cases.append((edit.description, *texts))
        completions += [reply(t) for t in texts]
        refs += [[edit.description]] * 3
    scores = np.array([r.score for r in statement_rewards(completions, refs, embed)]).reshape(-1, 3)
    ok = (scores[:, 0] > scores[:, 1]) & (scores[:, 1] > scores[:, 2])
    failing = [(s, c) for s, c, good in zip(scores.round(3).tolist(), cases, ok) if not good]
    for s, c in failing:
        print(f"FAIL scores {s}: reference {c[0]!r}; correct {c[1]!r}; wrong {c[2]!r}; unrelated {c[3]!r}")
    print(f"ranking held in {int(ok.sum())} of {len(ok)} edits")
    assert ok.mean() >= 0.95, failing
