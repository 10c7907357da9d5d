"""MCTS difficulty: how many search iterations the policy needs before one of its rollouts solves a sample.

ThinkLite-VL (Wang et al. 2025, *SoTA with Less: MCTS-Guided Sample Selection for Data-Efficient Visual
Reasoning Self-Improvement*, arXiv 2504.07934) scores every candidate by K, the 1-based index of the first
MCTS iteration whose rollout reaches a correct final answer, and trains on the samples with K > 5 plus
those still unsolved after 50 iterations. The search (docs/thinklite.md):

- a state is a prefix of reasoning steps (the root is the empty reply); a step is the text the policy
  writes up to and including the first `step_delimiter` (a newline by default), or up to its end of turn;
- selection walks from the root to a leaf by visit counts alone, `argmax_c c·√N(s) / (1 + N(c))`
  (`puct`, the paper's formula without prior or value) or `c·√(ln N(s) / N(c))`, ∞ when unvisited
  (`uct`, the released code's rule; its values are always 0); ties go to the first child;
- expansion samples k = 3 next steps at T = 0.5, top-p 0.9, and the rollout starts from one of the new
  children drawn uniformly with the tree's own `numpy.random.Generator`;
- simulation appends one step per engine call until the reply holds a final answer (the sample's own
  answer format: `<answer>…</answer>` or `\\boxed{}`; see `Verifier.is_final`), the policy ends its
  turn, or the path reaches `max_steps` steps; simulated steps are not added to the tree;
- a wrong final answer adds one visit to every node from the rollout's start back to the root;
- a node whose children are all final and judged wrong is expanded again: k more children (progressive
  widening, our addition: without it a policy that answers in one step would exhaust the tree after its
  first expansion and burn its remaining iterations without sampling anything new); a final child that
  was never rolled out stays selectable and is judged when selection reaches it;
- the search stops at the first correct rollout or after `max_iterations`.

Batched across trees: up to `max_trees` samples are searched at once, in lock-step. Every wave collects
what each live tree needs next (k expansion prompts or one simulation prompt) into ONE engine call, the
way the spy game plays many games' turns in one call; a tree that finishes hands its slot to the next
sample of the pool at once. Steps continue the assistant's reply through `continue_assistant`: the
previous steps' token ids are appended after the chat template's generation header, never re-templated.

The engine has no stop strings, so a step is generated with `step_tokens` new tokens at most and cut
after the first token whose text completes the delimiter; the tokens after the cut are discarded (and
still counted in `tokens`, as they were generated).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from mmrl.contracts import Completion, EncodedPrompt, Engine, SamplingParams
from mmrl.rollout.encode import continue_assistant
from mmrl.sample import Sample


@dataclass
class MCTSParams:
    """The search's settings (ThinkLite-VL's values by default)."""

    max_iterations: int = 50
    """Iterations (select, expand, simulate, judge, back up) before a sample counts as unsolved."""
    expansions: int = 3
    """k: children sampled when a leaf is expanded."""
    max_steps: int = 10
    """Most steps in a reply (tree path + simulated steps); a rollout that reaches it is judged as it is."""
    step_tokens: int = 64
    """Most new tokens per step (one engine call); the step is cut at the delimiter after generation."""
    step_delimiter: str = "\n"
    """Text that ends a step (the paper's code uses `<end>`; a newline needs no special prompt)."""
    temperature: float = 0.5
    """Sampling temperature of every step."""
    top_p: float = 0.9
    """Nucleus threshold of every step."""
    selection: Literal["puct", "uct"] = "puct"
    """Child selection: `puct` = c·√N(s)/(1+N(c)) (paper), `uct` = c·√(ln N(s)/N(c)), ∞ unvisited (code)."""
    exploration: float = 1.0
    """c in the selection rule (with visit counts alone it only scales; kept for the record)."""
    max_trees: int = 16
    """Samples searched at once; every wave of their requests is one engine call (1: one at a time)."""
    seed: int = 0
    """Seed of the trees' child draws and of every engine call's sampling."""

    def __post_init__(self) -> None:
        checks = [
            ("max_iterations", self.max_iterations >= 1),
            ("expansions", self.expansions >= 1),
            ("max_steps", self.max_steps >= 1),
            ("step_tokens", self.step_tokens >= 1),
            ("step_delimiter", bool(self.step_delimiter)),
            ("temperature", self.temperature >= 0),
            ("top_p", 0 < self.top_p <= 1),
            ("selection", self.selection in ("puct", "uct")),
            ("max_trees", self.max_trees >= 1),
        ]
        bad = [name for name, ok in checks if not ok]
        if bad:
            from mmrl.errors import ConfigError

            raise ConfigError(f"MCTS settings out of range: {', '.join(f'{b}={getattr(self, b)!r}' for b in bad)}")


class Verifier(Protocol):
    """Judges replies: whether a reply already holds a final answer, and whether that answer solves the sample."""

    def is_final(self, sample: Sample, text: str) -> bool: ...

    def solves(self, sample: Sample, text: str) -> bool: ...

    def solves_all(self, replies: Sequence[tuple[Sample, str]]) -> list[bool]:
        """`solves` of each (sample, reply) pair; a model judge answers them in one batch."""
        ...


class Codec(Protocol):
    """Turns a Sample into the engine's prompt and token ids back into text (a processor, or a test's own)."""

    def encode(self, sample: Sample) -> EncodedPrompt: ...

    def decode(self, token_ids: list[int]) -> str: ...


@dataclass
class Step:
    """One reasoning step: the tokens kept after the cut, and their text."""

    token_ids: list[int]
    text: str
    ends_turn: bool
    """The policy ended its reply inside this step (its stop token is the step's last token)."""


@dataclass(eq=False)
class Node:
    """A state: the reply so far is the steps on the path from the root to this node."""

    step: Step | None
    """The step that leads here (None at the root)."""
    parent: Node | None
    depth: int
    """Steps on the path from the root."""
    terminal: bool = False
    """The path already ends the reply (final answer, end of turn, or `max_steps`)."""
    visits: int = 0
    judged: bool = False
    """A final node whose reply was judged (wrong: a right one ends the search); selection skips it."""
    children: list[Node] = field(default_factory=list)

    def path(self) -> list[Step]:
        steps, node = [], self
        while node is not None and node.step is not None:
            steps.append(node.step)
            node = node.parent
        return steps[::-1]


@dataclass
class SearchResult:
    """One sample's outcome (a line of `difficulty.jsonl`)."""

    sample_id: str
    task: str
    K: int | None
    """1-based iteration of the first correct rollout; None when unsolved (or skipped)."""
    iterations: int
    """Iterations run (= K when solved, `max_iterations` when not)."""
    solved: bool
    steps: list[str]
    """The solving reply's steps (empty when unsolved)."""
    tokens: int
    """Tokens the policy generated for this sample (cut-off tails of steps included)."""
    skipped: str | None = None
    """Why the sample could not be searched (unreadable media, prompt over budget), else None."""

    def record(self) -> dict[str, Any]:
        out = {"id": self.sample_id, "task": self.task, "method": "mcts", "K": self.K, "iterations": self.iterations,
               "solved": self.solved, "steps": self.steps, "tokens": self.tokens}  # fmt: skip
        if self.skipped:
            out["skipped"] = self.skipped
        return out


def cut_step(completion: Completion, decode: Callable[[list[int]], str], delimiter: str) -> tuple[Step, int]:
    """(the step, tokens generated): the completion up to and including the first token that completes
    `delimiter`, or all of it when the delimiter never appears."""
    ids = list(completion.token_ids)
    ends_turn = completion.finish_reason == "stop"
    if delimiter in completion.text:
        for m in range(1, len(ids) + 1):
            text = decode(ids[:m])
            if delimiter in text:
                return Step(ids[:m], text, ends_turn and m == len(ids)), len(ids)
    return Step(ids, decode(ids), ends_turn), len(ids)


@dataclass
class _Want:
    """What a tree needs from the next engine call: `count` continuations of the reply `prefix`."""

    kind: Literal["expand", "step"]
    node: Node
    prefix: list[Step]
    count: int


class Tree:
    """One sample's search, driven as a state machine: `want` says what it needs, `receive` feeds it."""

    def __init__(self, sample: Sample, prompt: EncodedPrompt, params: MCTSParams, verifier: Verifier,
                 decode: Callable[[list[int]], str], rng: np.random.Generator) -> None:  # fmt: skip
        self.sample, self.prompt, self.params = sample, prompt, params
        self.verifier, self.decode, self.rng = verifier, decode, rng
        self.root = Node(step=None, parent=None, depth=0)
        self.iteration = 1
        self.tokens = 0
        self.requests = 0  # engine requests made so far: names the seed stream of the next one
        self.want: _Want | None = None
        self.result: SearchResult | None = None
        self._start: Node | None = None  # the rollout's first node (a new child)
        self._simulated: list[Step] = []
        self._advance()

    @property
    def done(self) -> bool:
        return self.result is not None

    def request(self) -> EncodedPrompt:
        """The prompt of the current want: the sample's prompt with the prefix's tokens as the reply's start."""
        assert self.want is not None
        ids = [t for step in self.want.prefix for t in step.token_ids]
        return continue_assistant(self.prompt, ids, "".join(step.text for step in self.want.prefix))

    def request_seeds(self) -> list[int]:
        """One sampling seed per sequence of the current want, from (search seed, sample id, request number):
        the tree's draws are the same whether it shares its engine calls with other trees or runs alone."""
        assert self.want is not None
        stream = np.random.default_rng([self.params.seed, 2, zlib.crc32(self.sample.id.encode("utf-8")), self.requests])
        self.requests += 1
        return [int(x) for x in stream.integers(0, 2**62, self.want.count)]

    def receive(self, completions: list[Completion]) -> None:
        """Feed the engine's answer to the current want, then run until the next want or the end."""
        want, self.want = self.want, None
        assert want is not None and len(completions) == want.count
        steps = []
        for completion in completions:
            step, spent = cut_step(completion, self.decode, self.params.step_delimiter)
            self.tokens += spent
            steps.append(step)
        if want.kind == "expand":
            new = [self._child(want.node, step) for step in steps]
            want.node.children.extend(new)
            self._start = new[int(self.rng.integers(len(new)))]
            self._simulated = []
            self._continue_rollout()
        else:
            self._simulated.append(steps[0])
            self._continue_rollout()
        self._advance()

    # ----------------------------------------------------------------------------------------------

    def _child(self, parent: Node, step: Step) -> Node:
        child = Node(step=step, parent=parent, depth=parent.depth + 1)
        child.terminal = self._ends(child.path(), step)
        return child

    def _ends(self, path: list[Step], last: Step) -> bool:
        return (
            last.ends_turn
            or len(path) >= self.params.max_steps
            or self.verifier.is_final(self.sample, "".join(s.text for s in path))
        )

    def _continue_rollout(self) -> None:
        """Judge the rollout if its reply has ended, else ask for its next step."""
        start = self._start
        assert start is not None
        path = start.path() + self._simulated
        if start.terminal or (self._simulated and self._ends(path, self._simulated[-1])):
            self._judge(start, path)
        else:
            self.want = _Want("step", start, path, 1)

    def _judge(self, start: Node, path: list[Step]) -> None:
        start.judged = start.judged or start.terminal
        if self.verifier.solves(self.sample, "".join(s.text for s in path)):
            self._finish(solved=True, steps=[s.text for s in path])
            return
        node: Node | None = start
        while node is not None:  # a wrong answer backs up visit counts only (values stay 0)
            node.visits += 1
            node = node.parent
        self._start = None
        self.iteration += 1
        if self.iteration > self.params.max_iterations:
            self._finish(solved=False, steps=[])

    def _finish(self, *, solved: bool, steps: list[str]) -> None:
        iterations = self.iteration if solved else self.params.max_iterations
        self.result = SearchResult(self.sample.id, self.sample.task, self.iteration if solved else None,
                                   iterations, solved, steps, self.tokens)  # fmt: skip

    def _advance(self) -> None:
        """Select leaves until one needs the engine (a want) or the search ends."""
        while not self.done and self.want is None and self._start is None:
            leaf = self._select()
            if leaf.terminal:  # a final child never rolled out: judge its reply as it is
                self._start = leaf
                self._judge(leaf, leaf.path())
                continue
            self.want = _Want("expand", leaf, leaf.path(), self.params.expansions)

    def _select(self) -> Node:
        """Walk down by the selection rule among live children (not final-and-judged); a node without live
        children is the leaf (an unexpanded one, or one to widen)."""
        node = self.root
        while True:
            live = [c for c in node.children if not c.judged]
            if not live:
                return node
            node = live[int(np.argmax([self._score(node, c) for c in live]))]

    def _score(self, parent: Node, child: Node) -> float:
        c = self.params.exploration
        if self.params.selection == "uct":
            if child.visits == 0:
                return math.inf
            return c * math.sqrt(math.log(max(parent.visits, 1)) / child.visits)
        return c * math.sqrt(parent.visits) / (1 + child.visits)


@dataclass
class SearchStats:
    """What a batched search (or pass-rate scoring) cost: engine calls, the sequences they generated, and the
    samples skipped because their prompt could not be encoded, by reason."""

    engine_calls: int = 0
    sequences: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def count_skip(self, error: Exception) -> str:
        """Count one unencodable prompt under its reason (`encode_skip_reason`); returns the reason."""
        reason = encode_skip_reason(error)
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        return reason


def search(
    samples: Iterable[Sample],
    engine: Engine,
    codec: Codec,
    verifier: Verifier,
    params: MCTSParams,
    stats: SearchStats | None = None,
) -> Iterator[SearchResult]:
    """Search every sample, `params.max_trees` at a time in lock-step; yields each result when its tree ends.

    Results come in the order trees finish, not pool order. A sample whose prompt cannot be encoded is
    yielded at once with `skipped` set (and counted in `stats.skipped` by the error's first words).
    A tree's child draws use `numpy.random.default_rng([seed, crc32(sample id)])`, so a sample's search does not
    depend on its place in the pool (a resumed run, a reordered pool) nor on its batch-mates.
    """
    from mmrl.errors import MMRLError

    stats = stats if stats is not None else SearchStats()
    pending = iter(samples)
    live: list[Tree] = []
    exhausted = False
    while True:
        while not exhausted and len(live) < params.max_trees:
            sample = next(pending, None)
            if sample is None:
                exhausted = True
                break
            try:
                prompt = codec.encode(sample)
            except MMRLError as e:
                reason = stats.count_skip(e)
                yield SearchResult(sample.id, sample.task, None, 0, False, [], 0, skipped=f"{reason}: {e}")
                continue
            rng = np.random.default_rng([params.seed, zlib.crc32(sample.id.encode("utf-8"))])
            tree = Tree(sample, prompt, params, verifier, codec.decode, rng)
            if tree.result is not None:
                yield tree.result
            else:
                live.append(tree)
        if not live:
            return
        prompts, counts, seeds = [], [], []
        for tree in live:
            assert tree.want is not None
            prompt = tree.request()
            prompts.extend([prompt] * tree.want.count)  # one object: the HF engine prefills it once
            counts.append(tree.want.count)
            seeds.extend(tree.request_seeds())
        sampling = SamplingParams(max_new_tokens=params.step_tokens, temperature=params.temperature,
                                  top_p=params.top_p, prompt_seeds=seeds)  # fmt: skip
        outputs = engine.generate(prompts, 1, sampling)
        stats.engine_calls += 1
        stats.sequences += len(prompts)
        start, still = 0, []
        for tree, count in zip(live, counts):
            tree.receive([group[0] for group in outputs[start : start + count]])
            start += count
            if tree.result is not None:
                yield tree.result
            else:
                still.append(tree)
        live = still


def encode_skip_reason(error: Exception) -> str:
    """The skip counter a prompt that cannot be encoded goes to: over the token budget, unreadable media, or
    otherwise rejected (shared by the MCTS search and the pass-rate selector)."""
    text = str(error)
    if text.startswith("prompt needs"):
        return "prompt_over_budget"
    if "MediaError" in type(error).__name__:
        return "unreadable_media"
    return "prompt_rejected"


__all__ = ["Codec", "MCTSParams", "Node", "SearchResult", "SearchStats", "Step", "Tree", "Verifier", "cut_step",
           "encode_skip_reason", "search"]  # fmt: skip
