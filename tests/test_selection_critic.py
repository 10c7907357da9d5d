"""The optional LLM judge of `mmrl select` (ThinkLite-VL's critic): its verdict rule, its prompt, and a real tiny
critic model judging a pass-rate run through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmrl.cli import main
from mmrl.config import ModelConfig, RolloutConfig
from mmrl.contracts import SamplingParams
from mmrl.models import load_policy
from mmrl.rollout import make_engine
from mmrl.rollout.encode import encode_prompt
from mmrl.sample import Sample
from mmrl.selection import CriticVerifier, critic_verdict

GREEDY = SamplingParams(max_new_tokens=8, temperature=0.0, seed=0)


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("True. The student's answer is red, as is the reference.", True),
        ("true", True),
        ("The final answer is TRUE!", True),
        ("False, it is not true that the colour is red.", False),  # the first verdict word decides
        ("False", False),
        ("It matches. True.", None),  # a verdict only in the second sentence does not count
        ("I think\nTrue", None),  # a newline ends the first sentence
        ("", None),
        ("untrue or falsehood", None),  # whole words only
    ],
)
def test_the_critic_verdict_is_the_first_true_or_false_word_of_the_first_sentence(reply, verdict) -> None:
    assert critic_verdict(reply) == verdict


def test_a_tiny_critic_judges_each_reply_once_from_a_prompt_holding_question_reference_and_reply() -> None:
    cfg = ModelConfig(path="tiny:qwen2.5-vl")
    model, processor = load_policy(cfg)
    engine = make_engine(RolloutConfig(batch_size=1), model, processor, seed=0)
    encoded: list[str] = []

    def encode(messages: list[dict]):
        encoded.append(messages[0]["content"])
        return encode_prompt(processor, messages, cfg, max_prompt_tokens=1024, keep_media=False)

    critic = CriticVerifier(engine, encode, max_new_tokens=8)
    sample = Sample("s0", "vqa", [{"role": "user", "content": [{"type": "image", "image": "x.png"},
                                                              {"type": "text", "text": "What colour is the cup?"}]}],
                    "red")  # fmt: skip
    first = critic.solves(sample, "The cup looks red.\n<answer>red</answer>")
    assert critic.calls == 1 and isinstance(first, bool)
    assert (
        "What colour is the cup?" in encoded[0]
        and "red</answer>" in encoded[0]
        and "Reference answer: red" in encoded[0]
    )
    assert critic.solves(sample, "The cup looks red.\n<answer>red</answer>") == first and critic.calls == 1  # cached
    critic.solves(sample, "<answer>blue</answer>")
    assert critic.calls == 2
    # Each verdict is what the greedy critic says, read by critic_verdict (an untrained critic babbles: unsolved).
    replies = [engine.generate([encode([{"role": "user", "content": text}])], 1, GREEDY)[0][0].text
               for text in encoded[:2]]  # fmt: skip
    assert first == bool(critic_verdict(replies[0]))
    assert critic.unreadable == sum(critic_verdict(r) is None for r in replies)


class CountingEngine:
    """A real engine, passed through, counting its generate calls and keeping what it generated."""

    def __init__(self, engine) -> None:
        self.engine, self.calls, self.completions = engine, 0, []

    def generate(self, prompts, n, sampling):
        self.calls += 1
        out = self.engine.generate(prompts, n, sampling)
        self.completions += [c for group in out for c in group]
        return out


def test_a_batch_of_replies_is_judged_in_one_critic_call_with_the_verdicts_of_one_at_a_time() -> None:
    cfg = ModelConfig(path="tiny:qwen2.5-vl")
    model, processor = load_policy(cfg)

    def encode(messages: list[dict]):
        return encode_prompt(processor, messages, cfg, max_prompt_tokens=1024, keep_media=False)

    samples = [Sample(f"s{i}", "vqa", [{"role": "user", "content": f"What colour is cup {i}?"}], c)
               for i, c in enumerate(["red", "blue", "green"])]  # fmt: skip
    replies = [(s, f"<answer>{c}</answer>") for s in samples for c in ("red", "blue green", "a long yellow answer")]
    replies.append(replies[0])  # a repeat is judged once
    verdicts, generations, completions = {}, {}, {}
    for batch in (1, 16):
        engine = CountingEngine(make_engine(RolloutConfig(batch_size=batch), model, processor, seed=0))
        critic = CriticVerifier(engine, encode, max_new_tokens=8)
        if batch == 1:
            verdicts[batch] = [critic.solves(s, t) for s, t in replies]
            assert engine.calls == 9
        else:
            verdicts[batch] = critic.solves_all(replies)
            assert engine.calls == 1
        generations[batch] = (critic.calls, critic.unreadable)
        completions[batch] = engine.completions
    # The same critic replies, batched or not (an untrained critic says the same words to every prompt, so the
    # log-probabilities, which differ between prompts, are compared too).
    assert [c.token_ids for c in completions[16]] == [c.token_ids for c in completions[1]]
    assert np.allclose([c.logprobs for c in completions[16]], [c.logprobs for c in completions[1]], atol=1e-4)
    assert len({round(c.logprobs[0], 4) for c in completions[1]}) > 1
    assert verdicts[16] == verdicts[1] and len(verdicts[1]) == 10
    assert generations[16] == generations[1] and generations[1][0] == 9


@pytest.mark.slow
def test_select_with_a_critic_records_its_calls_and_refuses_to_resume_with_another_judge(tmp_path: Path,
                                                                                         capsys) -> None:  # fmt: skip
    pool, out = tmp_path / "pool", tmp_path / "select"
    assert main(["generate", "--task", "dominant_color", "--n", "3", "--out", str(pool), "--quiet",
                 "--param", "image_size=56"]) == 0  # fmt: skip
    base = ["select", "--data", str(pool), "--model", "tiny:qwen2.5-vl", "--quiet", "--method", "passrate", "--n", "2",
            "--max-new-tokens", "4", "--out", str(out)]  # fmt: skip
    assert main([*base, "--judge", "critic"]) == 2
    assert "--judge critic needs --critic-model" in capsys.readouterr().err
    assert main([*base, "--judge", "critic", "--critic-model", "tiny:qwen2.5-vl", "--critic-max-new-tokens", "6"]) == 0
    settings = json.loads((out / "select.json").read_text())
    assert settings["judge"] == "critic:tiny:qwen2.5-vl"
    assert 1 <= settings["verifier"]["calls"] <= 6  # 3 samples x 2 replies, repeated replies judged once
    assert 0 <= settings["verifier"]["unreadable"] <= settings["verifier"]["calls"]
    capsys.readouterr()
    assert main([*base, "--limit", "2"]) == 2  # the task judge on a folder the critic scored
    assert "scored with other settings (judge: critic:tiny:qwen2.5-vl vs task)" in capsys.readouterr().err
