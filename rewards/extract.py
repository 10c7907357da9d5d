"""Answer extraction and the format gate, separate from scoring so every reward shares one parser.

Three answer modes (the `answer_mode` of a task, also named in its prompt):

- `answer_tag` (default): the answer is inside `<answer>…</answer>`; reasoning may precede it inside
  `<think>…</think>`.
- `boxed`: the answer is inside `\\boxed{…}` (braces may nest), as in math-style prompts and the
  released Visual Jigsaw reward.
- `raw`: the whole completion, stripped, is the answer.

Everything here runs on untrusted model output, so it never raises on it and never backtracks: the
only regular expressions are alternations of literal tags, scanned once, so a 10k-character
completion (or `'<answer>' * 5000`) costs one linear pass. Tags are matched case-sensitively,
exactly as the prompts spell them.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

from mmrl.errors import ConfigError

AnswerMode = Literal["answer_tag", "boxed", "raw"]
ANSWER_MODES: tuple[str, ...] = get_args(AnswerMode)

ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
BOXED_OPEN = "\\boxed{"

_ANSWER_TAGS = re.compile("</?answer>")
_BOXED_TOKENS = re.compile(r"\\boxed\{|[{}]")


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
    # One pass with a stack of open braces; each entry remembers whether it opened a \boxed.
    stack: list[tuple[bool, int]] = []
    best: tuple[int, int] | None = None
    for token in _BOXED_TOKENS.finditer(text):
        piece = token.group()
        if piece == "}":
            if not stack:
                continue
            is_boxed, start = stack.pop()
            if is_boxed and (best is None or start > best[0]):
                best = (start, token.start())
        else:
            stack.append((piece == BOXED_OPEN, token.end()))
    return None if best is None else text[best[0] : best[1]].strip()


__all__ = ["ANSWER_MODES", "AnswerMode", "check_mode", "extract_answer", "format_ok"]


def wrap_answer(payload: str, mode: AnswerMode = "answer_tag") -> str:
    """The inverse of `extract_answer`: `payload` as `<answer>…</answer>`, `\\boxed{…}` or bare (raw)."""
    check_mode(mode)
    if mode == "answer_tag":
        return f"<answer>{payload}</answer>"
    if mode == "boxed":
        return f"\\boxed{{{payload}}}"
    return payload
