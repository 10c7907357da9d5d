"""Answer extraction and the format gate, separate from scoring so every reward shares one parser.

Three answer modes (the `answer_mode` of a task, also named in its prompt):

- `answer_tag` (default): the answer is inside `<answer>…</answer>`; reasoning may precede it inside
  `<think>…</think>`.
- `boxed`: the answer is inside `\\boxed{…}` (braces may nest), as in math-style prompts and the
  released Visual Jigsaw reward.
- `raw`: the whole completion, stripped, is the answer.

Everything here runs on untrusted model output, so it never raises on it and never backtracks: the
only regular expression is an alternation of literal tags, scanned once, and `\\boxed{…}` braces are
matched by vectorised numpy passes, so a 100k-character completion (`'<answer>' * 20000`,
`'{' * 100000`) costs a few milliseconds. Tags are matched case-sensitively, exactly as the prompts
spell them. `parse_int` is the one string-to-integer step every parser in `rewards/` and `games/`
uses, so none of them can trip over `int()`'s digit limit.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np

from mmrl.errors import ConfigError

AnswerMode = Literal["answer_tag", "boxed", "raw"]
ANSWER_MODES: tuple[str, ...] = get_args(AnswerMode)

ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
BOXED_OPEN = "\\boxed{"

_ANSWER_TAGS = re.compile("</?answer>")
_ASCII_INT = re.compile(r"[+-]?[0-9]+")  # ASCII only: int() would also take "٣", "1_0" or " 3 "
_BOXED_BYTES = np.frombuffer(BOXED_OPEN.encode("ascii"), dtype=np.uint8)

MAX_INT_DIGITS = 4300
"""The most significant digits `parse_int` converts: Python's default `sys.int_max_str_digits`, past
which `int()` raises instead of converting (and no label, seat or count is ever that long)."""


def check_mode(mode: str) -> None:
    """Raise `ConfigError` naming the valid modes if `mode` is not one (a config error, not model output)."""
    if mode not in ANSWER_MODES:
        raise ConfigError(f"unknown answer mode {mode!r}; valid modes: {', '.join(ANSWER_MODES)}")


def extract_answer(text: str, mode: AnswerMode = "answer_tag") -> str | None:
    """The answer in `text` under `mode`, stripped of surrounding whitespace; None when there is none.

    - `answer_tag`: the content of the last *complete* pair, i.e. the last `<answer>` immediately
      followed (in tag order) by `</answer>`. Nested or stray tags are tolerated:
      `<answer>a<answer>b</answer>` gives `b`, `<answer>x</answer><answer>y` gives `x`, and
      `<answer>red` (unterminated) gives None. An empty block gives `""`.
    - `boxed`: the content of the last `\\boxed{` (by position) whose braces balance, braces inside
      kept: `\\boxed{a{b}c}` gives `a{b}c`; an unbalanced one is skipped.
    - `raw`: the whole text, stripped; None when that is empty.

    Non-string input gives None. An unknown `mode` raises `ConfigError`.
    """
    check_mode(mode)
    if not isinstance(text, str):
        return None
    if mode == "answer_tag":
        return _last_answer_block(text)
    if mode == "boxed":
        return _last_boxed(text)
    stripped = text.strip()
    return stripped or None


def format_ok(text: str, mode: AnswerMode = "answer_tag") -> bool:
    """Whether `text` has exactly the shape the prompt asked for (the `format` part of a reward).

    Common rule: surrounding whitespace is ignored, and an optional reasoning block
    `<think>…</think>` may open the reply; `<think>`/`</think>` appear nowhere else.

    - `answer_tag`: after the optional think block (and whitespace) comes exactly one
      `<answer>…</answer>` block with non-blank content, and nothing after it: the whole reply
      matches `\\s*(<think>T</think>\\s*)?<answer>A</answer>\\s*`, with `<answer>`/`</answer>` each
      occurring once in the reply.
    - `boxed`: after the optional think block, the text contains a complete `\\boxed{…}` with
      non-blank content (prose around it is allowed: "the answer is \\boxed{3}.").
    - `raw`: non-blank text.

    Non-string input gives False. An unknown `mode` raises `ConfigError`.
    """
    check_mode(mode)
    if not isinstance(text, str):
        return False
    rest = _after_think(text.strip())
    if rest is None:
        return False
    if mode == "raw":
        return bool(rest)
    if mode == "boxed":
        return bool(_last_boxed(rest))
    if text.count(ANSWER_OPEN) != 1 or text.count(ANSWER_CLOSE) != 1:
        return False
    if not (rest.startswith(ANSWER_OPEN) and rest.endswith(ANSWER_CLOSE)):
        return False
    return bool(rest[len(ANSWER_OPEN) : -len(ANSWER_CLOSE)].strip())


def _after_think(text: str) -> str | None:
    """`text` minus a leading `<think>…</think>` block, left-stripped; None if think tags are misused."""
    if text.startswith(THINK_OPEN):
        end = text.find(THINK_CLOSE)
        if end < 0:
            return None
        text = text[end + len(THINK_CLOSE) :].lstrip()
    if THINK_OPEN in text or THINK_CLOSE in text:
        return None
    return text


def _last_answer_block(text: str) -> str | None:
    found = None
    open_end = -1  # end of the most recent tag if it was an opening tag, else -1
    for tag in _ANSWER_TAGS.finditer(text):
        if tag.group() == ANSWER_OPEN:
            open_end = tag.end()
        else:
            if open_end >= 0:
                found = (open_end, tag.start())
            open_end = -1
    return None if found is None else text[found[0] : found[1]].strip()


def _last_boxed(text: str) -> str | None:
    span = boxed_span(text, "last")
    return None if span is None else text[span[0] : span[1]].strip()


def boxed_span(text: str, which: Literal["first", "last"] = "last") -> tuple[int, int] | None:
    """(content start, content end) of the first or last `\\boxed{` (by position) whose braces balance.

    Braces pair as a stack would pair them, a `}` with nothing open being ignored: the content of
    `\\boxed{a{b}c}` is `a{b}c`, and a box that never closes is skipped. None when no box closes.

    Why numpy: a Python loop over every brace costs ~0.3 µs each, so `'{' * 100000` took 25-45 ms per
    parse (twice per reward). Here the depth after each brace is a clamped prefix sum, and within one
    depth level openers and closers strictly alternate, so a stable sort by level pairs every brace
    in C; 100k braces cost a few ms. Non-string input gives None; never raises.
    """
    if not isinstance(text, str) or BOXED_OPEN not in text:
        return None
    # One byte per character (non-ASCII -> "?"), so byte offsets are string offsets.
    codes = np.frombuffer(text.encode("ascii", "replace"), dtype=np.uint8)
    is_open, is_close = codes == ord("{"), codes == ord("}")
    braces = np.flatnonzero(is_open | is_close)
    opens = is_open[braces]
    total = np.cumsum(np.where(opens, 1, -1))
    depth = total - np.minimum(np.minimum.accumulate(total), 0)  # after each brace; stray "}" clamp at 0
    before = np.concatenate(([0], depth[:-1]))
    events = np.flatnonzero(opens | (before > 0))  # openers and the closers that close something
    level = np.where(opens, depth, before)[events]  # an opener and its closer share one level
    order = np.argsort(level, kind="stable")
    events, level = events[order], level[order]
    is_opener = opens[events]
    paired = is_opener[:-1] & ~is_opener[1:] & (level[:-1] == level[1:])
    open_at, close_at = braces[events[:-1][paired]], braces[events[1:][paired]]
    # A "{" opens a box when the six characters before it are "\boxed" (what a token scan would see).
    n = len(codes) - len(_BOXED_BYTES) + 1
    box_start = np.ones(n, dtype=bool)
    for i, byte in enumerate(_BOXED_BYTES):
        box_start &= codes[i : i + n] == byte
    box_brace = np.zeros(len(codes), dtype=bool)
    box_brace[len(_BOXED_BYTES) - 1 :] = box_start
    boxed = box_brace[open_at]
    if not boxed.any():
        return None
    open_at, close_at = open_at[boxed], close_at[boxed]
    pick = int(np.argmax(open_at) if which == "last" else np.argmin(open_at))
    return int(open_at[pick]) + 1, int(close_at[pick])


def parse_int(token: str) -> int | None:
    """The integer an ASCII token `[+-]?[0-9]+` spells (`"3"`, `"-2"`, `"007"`), else None.

    Every parser in `rewards/` and `games/` converts through here rather than `int()`, because
    `int()` accepts more than the prompts ask for (`"٣"`, `"1_0"`, `" 3"`) and raises `ValueError`
    on more than `sys.int_max_str_digits` (4300) digits, which crashed `parse_vote` on a boxed
    5000-digit number. A number with more than `MAX_INT_DIGITS` significant digits gives None (it
    is no label, seat or count). Non-string input gives None; never raises.
    """
    if not isinstance(token, str) or not _ASCII_INT.fullmatch(token):
        return None
    sign = "-" if token[0] == "-" else ""
    digits = token.lstrip("+-").lstrip("0") or "0"
    if len(digits) > MAX_INT_DIGITS:
        return None
    try:
        return int(sign + digits)
    except ValueError:  # a process that lowered sys.int_max_str_digits below MAX_INT_DIGITS
        return None


def wrap_answer(payload: str, mode: AnswerMode = "answer_tag") -> str:
    """The inverse of `extract_answer`: `payload` as `<answer>…</answer>`, `\\boxed{…}` or bare (raw)."""
    check_mode(mode)
    if mode == "answer_tag":
        return f"<answer>{payload}</answer>"
    if mode == "boxed":
        return f"\\boxed{{{payload}}}"
    return payload


def labels_text(labels: Sequence[int]) -> str:
    """The answer payload of an ordering task: bare comma-separated integers, `2, 4, 1, 3`."""
    return ", ".join(str(int(x)) for x in labels)


def answer_payload(answer: Any) -> str:
    """The text a model should give for a Sample's `answer` (what `wrap_answer` wraps): a list of ints as
    `2, 4, 1, 3` (the ordering tasks' payload), a string as itself, anything else as JSON."""
    if isinstance(answer, str):
        return answer
    if isinstance(answer, (list, tuple)) and answer and all(isinstance(x, (int, np.integer)) for x in answer):
        return labels_text(answer)
    return json.dumps(answer, ensure_ascii=False)


__all__ = [
    "ANSWER_MODES",
    "MAX_INT_DIGITS",
    "AnswerMode",
    "answer_payload",
    "boxed_span",
    "check_mode",
    "extract_answer",
    "format_ok",
    "labels_text",
    "parse_int",
    "wrap_answer",
]
