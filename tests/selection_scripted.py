"""A scripted generation engine for the selection tests (a test double: a real model's sampling cannot be made
to follow a hand-traced search), and a one-character-per-token codec for it.

The prompt of sample S with reply prefix P is the text `S|P`, one token per character (code point = token id;
id 0 is the end-of-turn token and decodes to nothing). `ScriptedEngine` answers a prompt with the next
continuation listed for (S, P), cycling, so a sample's answers depend only on its own requests, never on
its batch-mates: a batched search and a one-at-a-time search see the same continuations.
"""

from __future__ import annotations

import sys
import time
import zlib
from collections import defaultdict
from pathlib import Path

import torch

from mmrl.contracts import Completion, EncodedPrompt, SamplingParams
from mmrl.sample import Sample

EOT = "\x00"


class CharCodec:
    def encode(self, sample: Sample) -> EncodedPrompt:
        text = f"{sample.id}|"
        return EncodedPrompt(input_ids=torch.tensor([ord(c) for c in text]), text=text)

    def decode(self, token_ids: list[int]) -> str:
        return "".join(chr(t) for t in token_ids if t != 0)


class ScriptedEngine:
    """`Engine` whose continuations are written in advance: `script[sample_id][prefix]` lists them (cycled);
    a prefix without a script gets `fallback(sample_id, prefix, k)` (k: how many times it was asked)."""

    def __init__(self, script=None, fallback=None, delay: float = 0.0):
        self.script = script or {}
        self.fallback = fallback
        self.delay = delay
        self.cursor: dict[tuple[str, str], int] = defaultdict(int)
        self.calls: list[int] = []  # prompts x n per call
        self.consumed: list[str] = []

    def generate(self, prompts: list[EncodedPrompt], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        self.calls.append(len(prompts) * n)
        if self.delay:
            time.sleep(self.delay)
        out = []
        for prompt in prompts:
            sample_id, prefix = "".join(chr(int(t)) for t in prompt.input_ids).split("|", 1)
            group = []
            for _ in range(n):
                k = self.cursor[(sample_id, prefix)]
                self.cursor[(sample_id, prefix)] += 1
                options = self.script.get(sample_id, {}).get(prefix)
                text = options[k % len(options)] if options else self.fallback(sample_id, prefix, k)
                self.consumed.append(text)
                ids = [ord(c) for c in text]
                group.append(Completion(ids, [0.0] * len(ids), text.replace(EOT, ""),
                                        "stop" if text.endswith(EOT) else "length"))  # fmt: skip
            out.append(group)
        return out

    def sync_weights(self, model) -> None:
        pass


def lottery(sample_id: str, prefix: str, k: int) -> str:
    """A pool-wide script: each continuation is a one-step final answer, right (`red`) for about 1 in 9
    (sample, prefix, k) keys by a CRC-32 hash: K then differs between samples, and some stay unsolved."""
    key = zlib.crc32(f"{sample_id}|{prefix}|{k}".encode())
    if key % 9 == 0:
        return f"<answer>red</answer>{EOT}"
    if key % 4 == 0:
        return "hmm\n"
    return f"<answer>blue</answer>{EOT}"


def pool(count: int) -> list[Sample]:
    """`count` dominant_color-labelled text samples whose answer is `red` (the task's reward judges them)."""
    return [
        Sample(
            id=f"s{i:03d}",
            task="dominant_color",
            messages=[{"role": "user", "content": "Which colour?"}],
            answer="red",
            meta={},
        )  # fmt: skip
        for i in range(count)
    ]


if __name__ == "__main__":  # the child of the SIGKILL test: python selection_scripted.py OUT COUNT
    from mmrl.selection import KeepRule, MCTSParams, TaskVerifier, select_pool

    out, count = Path(sys.argv[1]), int(sys.argv[2])
    samples = pool(count)
    params = MCTSParams(max_iterations=12, max_steps=3, max_trees=3)
    engine = ScriptedEngine(fallback=lottery, delay=0.05)
    select_pool(samples, out, engine, CharCodec(), TaskVerifier(), mcts=params, keep=KeepRule(), progress=False)
