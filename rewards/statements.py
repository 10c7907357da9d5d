"""ViPER's statement reward: a reply's sentences matched to reference statements by sentence embeddings.

Source: Zhang et al. 2025, *ViPER: Empowering the Self-Evolution of Visual Perception Abilities in
Vision-Language Models* (arXiv 2510.24285), the reward of both stages (caption corrections, image-edit
operations): R = 0.05 · R_format + 0.95 · R_correct, where R_correct counts the answer's sentences
whose embedding similarity to the ground-truth set exceeds τ, weighted by sentence length. The paper
does not publish the normalisation; the form below is ours (`/work/shared/specs/viper.md` §5,
`docs/viper.md, "Reward"`).

Definitions. The answer (`<answer>` block) is split into statements S = {s_i} (`split_statements`), the
references into G = {g_j}; L(x) = number of characters; e(x) = unit sentence embedding
(`rewards.embedding`, all-MiniLM-L6-v2) of the text with slot synonyms replaced by their canonical word
(`canonical_text`), cos_ij = e(s_i) · e(g_j).

    slot credit   c_ij = (|K(s_i) ∩ K(g_j)| / |K(s_i) ∪ K(g_j)|)^k,  k = slot_exponent (2); 1 when
                  both slot sets are empty; `slot_check=False`: c_ij = 1. K(x) = the typed slot
                  words of x (`slots`): numbers (digits, "one".."twenty"), colours, sizes, shapes
                  and spatial words, synonyms mapped to one canonical word ("little" → small,
                  "ball" → sphere, "nearer" → closer), and operation words (added, removed, moved,
                  painted, ...), which count only when both sides have one, and then c_ij = 0 when
                  they name different operations (`slot_agreement`).
    candidates    pairs with cos_ij > τ and c_ij > 0
    one_to_one    greedy over candidates by descending (c_ij, cos_ij): take a pair when neither s_i nor
                  g_j is taken yet; each statement and each reference is used at most once
    max           (the published reading) every s_i takes its best candidate g_j, every g_j its best s_i,
                  reuse allowed
    P = Σ_{matched (i, j)} L(s_i) · c_ij / Σ_i L(s_i)          length-weighted precision
    Q = Σ_{matched (i, j)} L(g_j) · c_ij / Σ_j L(g_j)          length-weighted recall
    F1 = 2PQ / (P + Q)   (0 when P + Q = 0)
    R_correct = F1 | P | Q   (`mode`)
    format = 1[`<think>…</think><answer>…</answer>` shape, think non-empty when `require_think`]
    score = w_format · format + (1 − w_format) · R_correct,   w_format = 0.05

Why the slot credit: sentence embeddings place "The cube is red." and "The cube is blue." close
together (MiniLM cos 0.76, above τ), yet the colour is the whole content of the statement. The squared Jaccard
makes one disagreeing slot cost most of the credit: that pair earns (1/3)² ≈ 0.11 (K = {cube, red} vs
{cube, blue}), a statement naming the right object but a wrong new colour ("The small red cube became
green." for "... became blue.") earns (3/5)² = 0.36, one that leaves out the size (3/4)² ≈ 0.56, and
the right statement 1. Shapes are slots, or "became a cone" would pay fully for "became a sphere".
Why one-to-one and length weights: repeating a correct sentence, or listing every plausible edit
around the right one, adds unmatched length to P's denominator, so hedging lowers F1; a short vague
sentence has no slots in common with a specific reference and scores 0.

Nothing here raises on model output: a non-string or tag-less reply scores 0 with every part present.
Configuration errors (an unknown mode, τ out of range, empty references) raise `ConfigError` / `ValueError`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from mmrl.contracts import Reward
from mmrl.errors import ConfigError
from rewards.extract import THINK_CLOSE, THINK_OPEN, extract_answer, format_ok

Embed = Callable[[Sequence[str]], np.ndarray]
"""A sentence embedder: texts -> [n, d] float array of unit vectors (`rewards.embedding.Embedder`)."""

StatementMode = Literal["f1", "precision", "recall"]
STATEMENT_MODES: tuple[str, ...] = get_args(StatementMode)
Matching = Literal["one_to_one", "max"]
MATCHINGS: tuple[str, ...] = get_args(Matching)
PARTS = ("format", "precision", "recall", "f1", "hits", "accuracy")
"""Named parts of every statement reward: `hits` is the number of matched (statement, reference) pairs,
`accuracy` the mode's R_correct."""

DEFAULT_TAU = 0.65
"""τ for all-MiniLM-L6-v2 with the slot check, calibrated by `scripts/calibrate_tau.py` on procedural edits
(0.648; held-out balanced accuracy 0.94, `docs/viper.md, "Reward"`). The paper's 0.85 is for BGE-M3; with
`slot_check: false` the same calibration gives 0.80."""


# --------------------------------------------------------------------------------------------------
# Splitting


_BULLET = re.compile(r"^(?:[-*+•‣◦·–—]+\s*|\(?\d{1,3}[.):](?=\s|$)\s*|\(?[a-zA-Z][.)](?=\s)\s*)")
"""A list marker at the start of a line: "-", "*", "•", "1.", "2)", "(3)", "a)", "B." (before a space)."""
_SENTENCE_END = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)")
"""A run of terminators (closing quotes and brackets included) before a space or the end: "1.5 m" stays
whole, "e.g. the box" splits after "e.g"."""
_LETTER = re.compile(r"[^\W\d_]")


def split_statements(text: str) -> list[str]:
    """The statements of an answer: lines, list markers removed, each line cut after `.`, `!` or `?` runs.

    A terminator (with any closing quotes or brackets after it) splits only when a space or the end of the
    line follows, so decimals ("1.5 m") and "v2.0" stay whole. Each statement is stripped of whitespace and of its
    final terminators; statements without a letter ("2", "...") are dropped. Non-string input gives [].
    """
    if not isinstance(text, str):
        return []
    out: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        while True:  # "- 1. The cube ..." carries two markers
            marker = _BULLET.match(line)
            if marker is None or not marker.group():
                break
            line = line[marker.end() :].lstrip()
        start = 0
        for end in _SENTENCE_END.finditer(line):
            out.append(line[start : end.start()])
            start = end.end()
        out.append(line[start:])
    statements = []
    for s in out:
        s = s.strip().rstrip(".!?").strip()
        if _LETTER.search(s):
            statements.append(s)
    return statements


# --------------------------------------------------------------------------------------------------
# Slots

SCENE_COLORS = ("red", "green", "blue", "yellow", "purple", "cyan", "orange", "white")
"""The colours of `mmrl.scenes.COLORS` (repeated here: rewards sit beside mmrl.scenes in the layer
contract and may not import it; a test checks the two agree)."""
COLOR_WORDS: dict[str, str] = {
    **{c: c for c in SCENE_COLORS},
    **{c: c for c in ("black", "gray", "brown", "pink", "magenta", "teal", "gold", "silver", "beige", "navy")},
    **{c: c for c in ("maroon", "turquoise", "lime", "olive", "indigo", "violet", "crimson", "tan")},
    "grey": "gray",
    "golden": "gold",
}
SIZE_WORDS: dict[str, str] = {
    "small": "small", "little": "small", "tiny": "small",
    "medium": "medium", "mid": "medium", "midsize": "medium",
    "large": "large", "big": "large", "huge": "large",
}  # fmt: skip
SHAPE_WORDS: dict[str, str] = {
    "cube": "cube", "cubes": "cube", "box": "cube", "boxes": "cube", "block": "cube", "blocks": "cube",
    "sphere": "sphere", "spheres": "sphere", "ball": "sphere", "balls": "sphere",
    "cylinder": "cylinder", "cylinders": "cylinder",
    "cone": "cone", "cones": "cone",
    "torus": "torus", "tori": "torus", "toruses": "torus", "ring": "torus", "rings": "torus",
    "donut": "torus", "donuts": "torus", "doughnut": "torus", "doughnuts": "torus",
    "pyramid": "pyramid", "pyramids": "pyramid",
}  # fmt: skip
SPATIAL_WORDS: dict[str, str] = {
    "left": "left", "right": "right", "above": "above", "below": "below", "under": "below",
    "beneath": "below", "underneath": "below", "front": "front", "behind": "behind",
    "closer": "closer", "nearer": "closer", "farther": "farther", "further": "farther",
    "top": "top", "bottom": "bottom",
}  # fmt: skip
NUMBER_WORDS: dict[str, str] = {
    w: str(i)
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
}
_OPERATIONS = {
    "add": "add adds added adding insert inserted inserting appear appears appeared new extra additional",
    "remove": "remove removes removed removing delete deleted erased gone disappear disappears disappeared "
    "vanish vanished vanishes missing",
    "move": "move moves moved moving shift shifted displaced relocated pushed slid repositioned",
    "recolor": "paint painted repainted recolor recolored recolour recoloured colored coloured color colour",
    "resize": "resize resized scaled grew shrank enlarged size",
    "reshape": "reshape reshaped shape form",
}
OPERATION_WORDS: dict[str, str] = {w: op for op, words in _OPERATIONS.items() for w in words.split()}
"""Words that name the kind of an edit (the Stage-2 operations: add, remove, move, recolour, resize,
reshape). Sentences about one object share its colour, size and shape words whatever happened to it, and
MiniLM places "A small red cube was added." near "The small red cube was removed." (cos 0.81); two
statements that both name an operation and name different ones contradict each other (`slot_agreement`)."""
NEGATIONS = frozenset("no not never longer isn wasn doesn didn aren weren".split())
"""A negation among the two tokens before an add/remove word flips it ("no longer appears" → remove)."""
_FLIP = {"add": "remove", "remove": "add"}
_SLOT_VOCAB: dict[str, str] = {
    **{w: f"color:{c}" for w, c in COLOR_WORDS.items()},
    **{w: f"size:{c}" for w, c in SIZE_WORDS.items()},
    **{w: f"shape:{c}" for w, c in SHAPE_WORDS.items()},
    **{w: f"where:{c}" for w, c in SPATIAL_WORDS.items()},
    **{w: f"number:{c}" for w, c in NUMBER_WORDS.items()},
}
_TOKEN = re.compile(r"[a-z]+|\d+(?:\.\d+)?")


def slots(text: str) -> frozenset[str]:
    """The typed slot words of `text`: `color:red`, `size:small`, `shape:cube`, `where:left`, `number:3`,
    `op:add`, `op:remove`, `op:move`, ... (`OPERATION_WORDS`; add/remove flipped after a negation:
    "no longer appears" → remove).

    Case-insensitive whole words (so "reduce" holds no "red"); synonyms map to one word (grey → gray,
    big → large, ball → sphere, ring → torus, nearer → closer, under → below); numbers from digits
    ("3", "1.50" → 1.5) or words zero..twenty. Non-string input gives the empty set.
    """
    if not isinstance(text, str):
        return frozenset()
    found = set()
    tokens = _TOKEN.findall(text.lower())
    for k, token in enumerate(tokens):
        if token[0].isdigit():
            value = float(token)
            found.add(f"number:{int(value) if value.is_integer() else value:g}")
        elif token in _SLOT_VOCAB:
            found.add(_SLOT_VOCAB[token])
        elif token in OPERATION_WORDS:
            op = OPERATION_WORDS[token]
            if op in _FLIP and NEGATIONS.intersection(tokens[max(0, k - 2) : k]):
                op = _FLIP[op]
            found.add(f"op:{op}")
    return frozenset(found)


def slot_agreement(a: frozenset[str], b: frozenset[str]) -> float:
    """Jaccard |a ∩ b| / |a ∪ b| of two slot sets; 1 when both are empty.

    Operation slots (`op:add`, `op:move`, ...) take part only when both sides name an operation: then
    different operations are a contradiction and the agreement is 0 ("added" vs "removed", "painted"
    vs "moved"), shared ones count in the Jaccard. A side without one ("The cube became blue.", "there
    is no cube anymore") loses nothing for it.
    """
    ops_a = frozenset(x for x in a if x.startswith("op:"))
    ops_b = frozenset(x for x in b if x.startswith("op:"))
    if ops_a and ops_b and not ops_a & ops_b:
        return 0.0
    if not ops_a or not ops_b:
        a, b = a - ops_a, b - ops_b
    union = a | b
    return len(a & b) / len(union) if union else 1.0


_CANONICAL: dict[str, str] = {
    w: c for table in (COLOR_WORDS, SIZE_WORDS, SHAPE_WORDS, SPATIAL_WORDS) for w, c in table.items() if w != c
}
_WORD = re.compile(r"[A-Za-z]+")


def canonical_text(text: str) -> str:
    """`text` with every slot synonym replaced by its canonical word ("the little grey ball" → "the small
    gray sphere"), what the embedder sees when `canonical_words` is on. MiniLM places "torus" and "donut"
    far apart (cos 0.57 for otherwise equal sentences), so without this a paraphrase fails τ on its
    vocabulary, not its meaning; the slot credit already treats the synonyms as equal."""
    return _WORD.sub(lambda m: _CANONICAL.get(m.group().lower(), m.group()), text)


# --------------------------------------------------------------------------------------------------
# Matching and scoring


@dataclass
class StatementRewardParams:
    """Knobs of the statement reward (module docstring for the formulas)."""

    tau: float = DEFAULT_TAU
    """Cosine threshold τ: a (statement, reference) pair can match only when cos > τ (MiniLM-calibrated;
    the paper's 0.85 is for BGE-M3)."""
    mode: StatementMode = "f1"
    """R_correct: `f1` (ours, default), `precision` (share of the answer that is right; one safe sentence
    games it) or `recall` (share of the references found; listing every candidate games it)."""
    matching: Matching = "one_to_one"
    """`one_to_one`: greedy, each statement and each reference used once (repeats earn nothing); `max`:
    the published reading, every statement against its best reference and vice versa."""
    slot_check: bool = True
    """Weight each pair by the agreement of its slot words (numbers, colours, sizes, shapes, spatial
    words): c = Jaccard^slot_exponent; False gives the published behaviour (a pair above τ counts fully)."""
    slot_exponent: float = 2.0
    """k in c = Jaccard^k: 1 is the plain Jaccard, larger values make one wrong slot cost more."""
    w_format: float = 0.05
    """Weight of the format part; R_correct gets 1 − w_format (the paper: 0.05 / 0.95)."""
    require_think: bool = True
    """The format part requires a non-empty `<think>…</think>` block before the answer."""
    canonical_words: bool = True
    """Embed statements with slot synonyms mapped to one word (`canonical_text`: little → small, ball →
    sphere, ring → torus); the lengths L(s) stay those of the text as written."""
    max_statements: int = 32
    """Statements of one answer that are embedded and can match; the rest still count in P's
    denominator (bounds the cost of a reply that lists hundreds of sentences)."""

    def __post_init__(self) -> None:
        if not -1.0 <= self.tau < 1.0:
            raise ConfigError(f"tau must be in [-1, 1), got {self.tau}")
        if self.mode not in STATEMENT_MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; valid: {', '.join(STATEMENT_MODES)}")
        if self.matching not in MATCHINGS:
            raise ConfigError(f"unknown matching {self.matching!r}; valid: {', '.join(MATCHINGS)}")
        if not 0.0 <= self.w_format <= 1.0:
            raise ConfigError(f"w_format must be in [0, 1], got {self.w_format}")
        if self.slot_exponent <= 0:
            raise ConfigError(f"slot_exponent must be > 0, got {self.slot_exponent}")
        if self.max_statements < 1:
            raise ConfigError(f"max_statements must be >= 1, got {self.max_statements}")


@dataclass(frozen=True)
class Match:
    """One counted (statement, reference) pair."""

    statement: int
    """Index into the answer's statements."""
    reference: int
    """Index into the references."""
    cosine: float
    credit: float
    """Slot credit c_ij (1 without the slot check)."""


def match_statements(
    statements: Sequence[str],
    statement_vectors: np.ndarray,
    references: Sequence[str],
    reference_vectors: np.ndarray,
    params: StatementRewardParams,
) -> list[Match]:
    """The counted pairs under `params.matching` (module docstring). Vectors are unit rows, one per text."""
    if not len(statements) or not len(references):
        return []
    cos = np.asarray(statement_vectors, dtype=np.float64) @ np.asarray(reference_vectors, dtype=np.float64).T
    if params.slot_check:
        ks, kg = [slots(s) for s in statements], [slots(g) for g in references]
        credit = np.array([[slot_agreement(a, b) for b in kg] for a in ks], dtype=np.float64) ** params.slot_exponent
    else:
        credit = np.ones_like(cos)
    ok = (cos > params.tau) & (credit > 0)
    rows, cols = np.nonzero(ok)
    order = np.lexsort((-cos[rows, cols], -credit[rows, cols]))  # credit first, then cosine, descending
    if params.matching == "max":
        # Each side against its best candidate on the other side: the first pair in `order` that has it.
        out: dict[tuple[int, int], Match] = {}
        best_of_s: dict[int, int] = {}
        best_of_g: dict[int, int] = {}
        for k in order:
            best_of_s.setdefault(int(rows[k]), int(k))
            best_of_g.setdefault(int(cols[k]), int(k))
        for k in {*best_of_s.values(), *best_of_g.values()}:
            i, j = int(rows[k]), int(cols[k])
            out[(i, j)] = Match(i, j, float(cos[i, j]), float(credit[i, j]))
        return sorted(out.values(), key=lambda m: (m.statement, m.reference))
    used_s, used_g, matches = set(), set(), []
    for k in order:
        i, j = int(rows[k]), int(cols[k])
        if i in used_s or j in used_g:
            continue
        used_s.add(i)
        used_g.add(j)
        matches.append(Match(i, j, float(cos[i, j]), float(credit[i, j])))
    return matches


def precision_recall(
    statements: Sequence[str], references: Sequence[str], matches: Sequence[Match], *, extra_length: int = 0
) -> tuple[float, float]:
    """Length-weighted (P, Q) of `matches`. Under `max` matching a statement (or reference) may appear in two
    pairs; it counts once, with its best credit. `extra_length` adds unmatched statement characters to
    P's denominator (statements past `max_statements`)."""
    best_s: dict[int, float] = {}
    best_g: dict[int, float] = {}
    for m in matches:
        best_s[m.statement] = max(best_s.get(m.statement, 0.0), m.credit)
        best_g[m.reference] = max(best_g.get(m.reference, 0.0), m.credit)
    total_s = sum(len(s) for s in statements) + extra_length
    total_g = sum(len(g) for g in references)
    p = sum(len(statements[i]) * c for i, c in best_s.items()) / total_s if total_s else 0.0
    q = sum(len(references[j]) * c for j, c in best_g.items()) / total_g if total_g else 0.0
    return p, q


def clean_references(references: Sequence[str]) -> list[str]:
    """Reference statements in the form the answer's statements take (each through `split_statements`,
    so a reference with two sentences becomes two). Raises ValueError when none is left, naming the input."""
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise ValueError(f"references must be a list of strings, got {type(references).__name__}")
    out = [s for g in references for s in split_statements(g)]
    if not out:
        raise ValueError(f"references hold no statement: {list(references)[:5]!r}")
    return out


def _default_embed() -> Embed:
    from rewards.embedding import default_embedder  # loads transformers only when a reward needs it

    return default_embedder()


def format_score(completion: str, require_think: bool = True) -> float:
    """1 when `completion` is `<think>T</think><answer>A</answer>` (T non-blank when `require_think`; A
    non-blank), whitespace around the blocks allowed, else 0 (`rewards.extract.format_ok`)."""
    if not format_ok(completion, "answer_tag"):
        return 0.0
    if not require_think:
        return 1.0
    stripped = completion.lstrip()
    if not stripped.startswith(THINK_OPEN) or THINK_CLOSE not in stripped:
        return 0.0
    return 1.0 if stripped[len(THINK_OPEN) : stripped.index(THINK_CLOSE)].strip() else 0.0


def _score(
    fmt: float,
    statements: list[str],
    statement_vectors: np.ndarray,
    extra_length: int,
    references: list[str],
    reference_vectors: np.ndarray,
    params: StatementRewardParams,
) -> Reward:
    matches = match_statements(statements, statement_vectors, references, reference_vectors, params)
    p, q = precision_recall(statements, references, matches, extra_length=extra_length)
    f1 = 2 * p * q / (p + q) if p + q > 0 else 0.0
    correct = {"f1": f1, "precision": p, "recall": q}[params.mode]
    score = params.w_format * fmt + (1.0 - params.w_format) * correct
    parts = {"format": fmt, "precision": p, "recall": q, "f1": f1, "hits": float(len(matches)), "accuracy": correct}
    return Reward(float(score), parts)


def _answer_statements(completion: str, params: StatementRewardParams) -> tuple[list[str], int]:
    """The answer's first `max_statements` statements and the characters of the rest."""
    answer = extract_answer(completion, "answer_tag")
    statements = split_statements(answer) if answer else []
    kept = statements[: params.max_statements]
    return kept, sum(len(s) for s in statements[params.max_statements :])


def statement_reward(
    completion: str,
    references: Sequence[str],
    embed: Embed | None = None,
    params: StatementRewardParams | None = None,
) -> Reward:
    """ViPER's reward of one reply against its reference statements (module docstring for the formula).

    `embed` maps texts to unit vectors (None: `rewards.embedding.default_embedder()`); the answer's statements
    and the references go to it in one call, and its cache keeps a sample's reference embeddings across
    the group's rollouts. A non-string or tag-less reply scores 0 with every part present; empty
    `references` raise ValueError (a data error, not model output).
    """
    params = params or StatementRewardParams()
    embed = embed or _default_embed()
    refs = clean_references(references)
    if not isinstance(completion, str):
        return Reward.zero(*PARTS)
    statements, extra = _answer_statements(completion, params)
    fmt = format_score(completion, params.require_think)
    if not statements:
        return _score(fmt, [], np.zeros((0, 1)), extra, refs, np.zeros((len(refs), 1)), params)
    texts = [*statements, *refs]
    vectors = embed([canonical_text(t) for t in texts] if params.canonical_words else texts)
    n = len(statements)
    return _score(fmt, statements, vectors[:n], extra, refs, vectors[n:], params)


def statement_rewards(
    completions: Sequence[str],
    references: Sequence[Sequence[str]],
    embed: Embed | None = None,
    params: StatementRewardParams | None = None,
) -> list[Reward]:
    """`statement_reward` of a batch, `references[k]` belonging to `completions[k]`, with one `embed` call
    for every distinct statement and reference of the batch (a GRPO step scores prompts × rollouts
    replies whose groups share references: each distinct text is embedded once)."""
    params = params or StatementRewardParams()
    if len(completions) != len(references):
        raise ValueError(f"{len(completions)} completions but {len(references)} reference lists")
    embed = embed or _default_embed()
    refs = []
    for k, r in enumerate(references):
        try:
            refs.append(clean_references(r))
        except ValueError as err:
            raise ValueError(f"references[{k}]: {err}") from None
    answers = [
        _answer_statements(c, params) if isinstance(c, str) else ([], 0) for c in completions
    ]  # fmt: skip
    texts = list(dict.fromkeys(t for (s, _), r in zip(answers, refs) for t in (*s, *r)))
    index = {t: k for k, t in enumerate(texts)}
    shown = [canonical_text(t) for t in texts] if params.canonical_words else texts
    vectors = embed(shown) if texts else np.zeros((0, 1), dtype=np.float32)
    out = []
    for completion, (statements, extra), r in zip(completions, answers, refs):
        if not isinstance(completion, str):
            out.append(Reward.zero(*PARTS))
            continue
        fmt = format_score(completion, params.require_think)
        sv = vectors[[index[s] for s in statements]] if statements else np.zeros((0, vectors.shape[1]))
        rv = vectors[[index[g] for g in r]]
        out.append(_score(fmt, statements, sv, extra, r, rv, params))
    return out


__all__ = [
    "COLOR_WORDS",
    "OPERATION_WORDS",
    "DEFAULT_TAU",
    "MATCHINGS",
    "PARTS",
    "SCENE_COLORS",
    "STATEMENT_MODES",
    "Embed",
    "Match",
    "Matching",
    "StatementMode",
    "StatementRewardParams",
    "canonical_text",
    "clean_references",
    "format_score",
    "match_statements",
    "precision_recall",
    "slot_agreement",
    "slots",
    "split_statements",
    "statement_reward",
    "statement_rewards",
]
