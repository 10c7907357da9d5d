"""`vqa`: imported (image, question, answer) records as verifiable Samples, e.g. a candidate pool for `mmrl select`.

Records come from the common open-ended VQA JSON layout: a JSON list (or JSON Lines) of objects with an image
path (`image` or `image_path`, relative to the JSON file's folder), a `question` and an `answer`; optional
`choices` (or `options`: a list of option texts) and `id`. Multiple-choice records are turned into
open-ended ones by default, as ThinkLite-VL does for its pool (arXiv 2504.07934, §3.1): the options are
left out of the prompt and the answer becomes the correct option's text, so guessing a letter cannot hide
how hard a question is. With `open_ended: false` the options are listed as lettered choices and the answer
is the letter. An answer given as a letter (`B`) or a 0-based index is mapped to its option.

Reward (`vqa_reward`): exact match after normalisation, in the sample's answer format:

    format   = 1[format_ok(reply)]
    accuracy = 1[norm(extracted answer) = norm(truth)]
    score    = w · accuracy + (1 − w) · format          (w = accuracy_weight, 0.9)

where norm lower-cases, collapses whitespace, strips surrounding punctuation and a leading article
(a, an, the), and writes numbers canonically (`2.0` → `2`, `1,000` → `1000`).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from mmrl.config import to_dict
from mmrl.contracts import Reward
from mmrl.errors import ConfigError, MMRLError
from mmrl.sample import Sample, write_dataset
from mmrl.task import Task
from pretext_tasks.base import answer_instruction
from rewards.extract import AnswerMode, check_mode, extract_answer, format_ok, wrap_answer

if TYPE_CHECKING:
    from mmrl.corpus import Corpus

NAME = "vqa"
LETTERS = string.ascii_uppercase


@dataclass
class VQAParams:
    answer_mode: AnswerMode = "boxed"
    """Reply format asked for and parsed: `boxed` (\\boxed{answer}, the paper's), `answer_tag` or `raw`."""
    open_ended: bool = True
    """Turn multiple-choice records into open-ended questions (options dropped, answer = option text)."""
    think: bool = False
    """Ask the model to reason inside <think></think> before the answer."""
    accuracy_weight: float = 0.9
    """w in score = w · accuracy + (1 − w) · format."""
    system_prompt: str | None = None
    """Optional system message."""

    def __post_init__(self) -> None:
        check_mode(self.answer_mode)
        if not 0.0 <= self.accuracy_weight <= 1.0:
            raise ConfigError(f"vqa: accuracy_weight must be in [0, 1], got {self.accuracy_weight}")


@dataclass(frozen=True)
class VQARecord:
    """One imported record, its image path absolute."""

    id: str
    image: str
    question: str
    answer: str
    """The correct answer's text (an option's text for a multiple-choice record)."""
    choices: tuple[str, ...] = ()
    """The options of a multiple-choice record, else empty."""


@dataclass
class ReadReport:
    records: list[VQARecord]
    skipped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        skipped = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "none"
        return f"{len(self.records)} records; skipped: {skipped}"


def normalize_vqa(text: str) -> str:
    """Comparison form of a short answer (see the module docstring)."""
    text = " ".join(str(text).split()).lower().strip(string.punctuation + " ")
    text = re.sub(r"^(a|an|the)\s+", "", text)
    number = text.replace(",", "")
    try:
        value = float(number)
    except ValueError:
        return text
    if not np.isfinite(value):
        return text
    return str(int(value)) if value == int(value) else repr(value)


def vqa_reward(completion: str, truth: str, *, mode: AnswerMode, accuracy_weight: float = 0.9) -> Reward:
    """Normalised exact match (module docstring); never raises on the completion."""
    if not isinstance(completion, str):
        return Reward.zero("format", "accuracy")
    fmt = 1.0 if format_ok(completion, mode) else 0.0
    extracted = extract_answer(completion, mode)
    accuracy = 1.0 if extracted is not None and normalize_vqa(extracted) == normalize_vqa(truth) else 0.0
    return Reward(accuracy_weight * accuracy + (1 - accuracy_weight) * fmt, {"format": fmt, "accuracy": accuracy})


def read_vqa(path: str | Path) -> ReadReport:
    """The usable records of a VQA JSON / JSONL file (or of `vqa.json` / `vqa.jsonl` in a folder).

    Records without an image, a question or an answer, whose image file is missing, or whose
    multiple-choice answer names no option are skipped and counted by reason.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        found = [p for p in (path / "vqa.json", path / "vqa.jsonl") if p.exists()]
        if not found:
            raise MMRLError(f"{path} holds no vqa.json or vqa.jsonl; give the JSON file itself")
        path = found[0]
    if not path.exists():
        raise MMRLError(f"VQA file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        raw = json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines() if line]
    except json.JSONDecodeError as e:
        raise MMRLError(f"{path} is not valid JSON{' Lines' if path.suffix != '.json' else ''}: {e}") from None
    if isinstance(raw, dict) and isinstance(raw.get("data"), list):
        raw = raw["data"]
    if not isinstance(raw, list):
        raise MMRLError(f"{path} must hold a list of records (or {{'data': [...]}}), got {type(raw).__name__}")
    report = ReadReport([])
    for number, record in enumerate(raw):
        parsed = _record(record, number, path.parent)
        if isinstance(parsed, str):
            report.skipped[parsed] += 1
        else:
            report.records.append(parsed)
    ids = Counter(r.id for r in report.records)
    if any(n > 1 for n in ids.values()):
        raise MMRLError(f"{path}: duplicate record ids {[i for i, n in ids.items() if n > 1][:5]}")
    return report


def _record(record: Any, number: int, root: Path) -> VQARecord | str:
    """A record, or the reason it is skipped."""
    if not isinstance(record, dict):
        return "not an object"
    image = record.get("image", record.get("image_path"))
    question, answer = record.get("question"), record.get("answer")
    if not isinstance(image, str) or not image:
        return "no image"
    if not isinstance(question, str) or not question.strip():
        return "no question"
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        return "no answer"
    image_path = (root / image).resolve()
    if not image_path.is_file():
        return "image file missing"
    choices = record.get("choices", record.get("options")) or ()
    if not isinstance(choices, (list, tuple)) or not all(isinstance(c, (str, int, float)) for c in choices):
        return "choices not a list of texts"
    choices = tuple(str(c) for c in choices)
    truth = str(answer).strip()
    if choices:
        truth = _option_text(answer, choices)
        if truth is None:
            return "answer names no option"
    return VQARecord(str(record.get("id", f"{number:06d}")), str(image_path), question.strip(), truth, choices)


def _option_text(answer: Any, choices: tuple[str, ...]) -> str | None:
    """The option an answer names: its text, its letter (`B`, `(B)`) or its 0-based index."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        return choices[answer] if 0 <= answer < len(choices) else None
    text = str(answer).strip()
    for option in choices:
        if normalize_vqa(option) == normalize_vqa(text):
            return option
    letter = text.strip("() .").upper()
    if len(letter) == 1 and letter in LETTERS[: len(choices)]:
        return choices[LETTERS.index(letter)]
    return None


@dataclass
class VQA(Task):
    """An imported visual question with a short exact answer."""

    Params: ClassVar[type[VQAParams]] = VQAParams
    name: ClassVar[str] = NAME
    params: VQAParams = field(default_factory=VQAParams)
    """Prompt and reward parameters."""

    @staticmethod
    def import_dataset(in_path: str | Path, out_dir: str | Path, **params: Any) -> ReadReport:
        """`mmrl import-vqa`: read a VQA JSON file and write its records as a native dataset (samples.jsonl +
        media/, the images copied in) made with `VQAParams(**params)`; returns what was read and skipped."""
        task = VQA(VQAParams(**params))
        report = read_vqa(in_path)
        if not report.records:
            raise MMRLError(f"no usable record in {in_path} ({report.summary()})")
        rng = np.random.default_rng(0)  # make() draws nothing; the generator is the contract's
        write_dataset((task.make(r, rng) for r in report.records), out_dir, overwrite=True)
        return report

    def sources(self, corpus: Corpus | str | Path | None = None) -> Sequence[VQARecord]:
        """The records of a VQA JSON file (or a folder holding vqa.json / vqa.jsonl); there is no default."""
        if not isinstance(corpus, (str, Path)) or str(corpus) == "default":
            raise MMRLError("vqa has no built-in source: give --source FILE.json (image, question, answer records)")
        return read_vqa(corpus).records

    def make(self, source_item: VQARecord, rng: np.random.Generator) -> Sample:
        """The record as a Sample (nothing is drawn: `rng` is unused)."""
        record, p = source_item, self.params
        question, truth = record.question, record.answer
        if record.choices and not p.open_ended:
            listed = "; ".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(record.choices))
            question = f"{question}\nOptions: {listed}"
            truth = LETTERS[record.choices.index(record.answer)]
            placeholder = "letter"
        else:
            placeholder = "answer"
        messages: list[dict[str, Any]] = []
        if p.system_prompt:
            messages.append({"role": "system", "content": p.system_prompt})
        text = f"{question} {answer_instruction(p.answer_mode, placeholder, think=p.think)}"
        messages.append({"role": "user", "content": [{"type": "image", "image": record.image},
                                                      {"type": "text", "text": text}]})  # fmt: skip
        meta = {"source_id": record.id, "answer_mode": p.answer_mode, "open_ended": not record.choices or p.open_ended,
                "choices": list(record.choices), "params": to_dict(p)}  # fmt: skip
        return Sample(id=f"{NAME}-{record.id}", task=NAME, messages=messages, answer=truth, meta=meta)

    def reward(self, completion: str, sample: Sample) -> Reward:
        """`vqa_reward` in the sample's answer mode."""
        mode = sample.meta.get("answer_mode", self.params.answer_mode)
        return vqa_reward(completion, str(sample.answer), mode=mode, accuracy_weight=self.params.accuracy_weight)

    def reference_completion(self, sample: Sample) -> str:
        return wrap_answer(str(sample.answer), self.answer_mode(sample))


__all__ = ["VQA", "ReadReport", "VQAParams", "VQARecord", "normalize_vqa", "read_vqa", "vqa_reward"]
