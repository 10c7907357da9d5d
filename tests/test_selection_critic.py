"""The optional LLM judge of `mmrl select` (ThinkLite-VL's critic): its verdict rule, its prompt, and a real tiny
critic model judging a pass-rate run through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

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
