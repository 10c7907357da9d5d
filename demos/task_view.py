"""The Tasks tab's logic, without any UI: build a task from a form, draw one sample, lay it out for people, score
a typed answer next to the baselines.

A sample is drawn exactly as `mmrl generate` draws sample 0 of a dataset with the same task, parameters, source
and seed (`mmrl.generate.iter_samples`), so what the app shows is what a generated dataset holds.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from mmrl import baselines, registry
from mmrl.config import CorpusConfig
from mmrl.config_tools import field_docs
from mmrl.errors import MMRLError
from mmrl.generate import iter_samples, source_items
from mmrl.preview import as_image, sample_evidence
from mmrl.sample import Sample, content_items
from mmrl.task import Task, score_completion
from rewards.extract import answer_payload

BASELINE_SET = 8
"""Samples (the shown one first) the random and best-constant baselines are computed on."""
RANDOM_DRAWS = 8
"""Random answers averaged per sample for the random baseline."""


# --------------------------------------------------------------------------------------------------
# The parameters form


@dataclass(frozen=True)
class FormField:
    """One input of a task's parameters form."""

    name: str
    kind: str
    """`bool` (checkbox), `choice` (dropdown of `choices`), `number`, `integer` or `text` (a YAML value)."""
    default: Any
    """The value the input starts with (texts: the default written as YAML flow, `[2, 2]`)."""
    doc: str
    """The field's docstring: the input's help text."""
    choices: tuple[Any, ...] = ()


def params_form(task_name: str) -> list[FormField]:
    """The inputs of task `task_name`'s `Params` dataclass, in field order, each with its docstring."""
    cls = registry.task_class(task_name).Params
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls, include_extras=True)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        hint = _strip_annotated(hints.get(f.name, Any))
        doc = docs.get(f.name, "")
        if hint is bool:
            out.append(FormField(f.name, "bool", bool(default), doc))
        elif typing.get_origin(hint) is typing.Literal:
            out.append(FormField(f.name, "choice", default, doc, tuple(typing.get_args(hint))))
        elif hint is int:
            out.append(FormField(f.name, "integer", default, doc))
        elif hint is float:
            out.append(FormField(f.name, "number", default, doc))
        else:
            out.append(FormField(f.name, "text", _as_yaml(default), doc))
    return out


def _strip_annotated(hint: Any) -> Any:
    if typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):  # Optional[X]: the form edits X
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else Any
    return hint


def _as_yaml(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def form_values(task_name: str, values: dict[str, Any]) -> dict[str, Any]:
    """Parameter values from the form's raw inputs: texts parsed as YAML, numbers as given; only fields that
    differ from the defaults are kept, so the task's own checks see exactly what the user changed."""
    fields = {f.name: f for f in params_form(task_name)}
    out: dict[str, Any] = {}
    for name, raw in values.items():
        spec = fields.get(name)
        if spec is None:
            continue
        value = raw
        if spec.kind == "text":
            try:
                value = yaml.safe_load(raw) if str(raw).strip() else ""
            except yaml.YAMLError as e:
                raise MMRLError(f"parameter {name}: {raw!r} is not a YAML value ({e})") from None
            default = yaml.safe_load(spec.default) if spec.default.strip() else ""
            if value == default:
                continue
        elif spec.kind == "integer" and value is not None and float(value).is_integer():
            value = int(value)
        if spec.kind != "text" and value == spec.default:
            continue
        out[name] = value
    return out


# --------------------------------------------------------------------------------------------------
# Drawing


@dataclass
class Drawn:
    """One drawn sample with the task that made it and the source items it came from (for the baselines)."""

    task: Task
    sample: Sample
    items: Sequence[Any]
    seed: int
    baseline_set: list[Sample] = field(default_factory=list)
    """Filled on first scoring: the first `BASELINE_SET` samples of the same draw (the shown one first)."""


def upload_folder(paths: Sequence[str | Path], into: Path) -> Path:
    """Copy uploaded files into a fresh folder under `into` (a task's `sources(folder)` then reads them)."""
    into.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="upload-", dir=into))
    for i, p in enumerate(paths):
        p = Path(p)
        shutil.copyfile(p, folder / f"{i:03d}_{p.name}")
    return folder


def draw(
    task_name: str,
    params: dict[str, Any],
    seed: int,
    source: str | Path = "default",
    corpus_cfg: CorpusConfig | None = None,
) -> Drawn:
    """Sample 0 of task `task_name` with `params` from `source` (`default` or a folder) and `seed`."""
    task = registry.get_task(task_name, **params)
    items = source_items(task, source, corpus_cfg)
    sample, _ = next(iter_samples(task, items, 1, int(seed)))
    return Drawn(task, sample, items, int(seed))


# --------------------------------------------------------------------------------------------------
# Showing


@dataclass
class SampleView:
    """A sample laid out for the page: prompt text, pictures and videos in prompt order, the truth, evidence."""

    prompt: str
    """Markdown: every message's text, media shown as `[image 1]` / `[video 1]` where they sit."""
    images: list[tuple[Image.Image, str]]
    """(picture, caption) of every image item."""
    videos: list[tuple[Path, str]]
    """(MP4 file, caption) of every video item, encoded at its own frame rate."""
    answer: str
    reference: str
    """The ideal completion (`reference_completion`)."""
    evidence: list[tuple[Image.Image, str]]
    """(picture, title) of every evidence panel."""
    evidence_error: str | None = None


def view(drawn: Drawn, video_dir: Path) -> SampleView:
    """Lay out `drawn.sample` for the page; videos are written as H.264 MP4 files into `video_dir`."""
    sample = drawn.sample
    lines, images, videos = [], [], []
    for message in sample.messages:
        lines.append(f"**{message['role']}**")
        items = content_items(message)
        for k, item in enumerate(items):
            if item["type"] == "text":
                lines.append(_escape(item["text"]))
                continue
            prev = items[k - 1] if k > 0 else None
            caption = prev["text"].strip() if prev and prev["type"] == "text" and len(prev["text"]) <= 40 else ""
            if item["type"] == "image":
                images.append((as_image(item["image"]), caption or f"image {len(images) + 1}"))
                lines.append(f"`[image {len(images)}]`")
            else:
                path = video_dir / f"{sample.id}-{len(videos) + 1}.mp4"
                _write_mp4(item, path)
                videos.append((path, caption or f"video {len(videos) + 1}"))
                lines.append(f"`[video {len(videos)}]`")
    panels, error = sample_evidence(sample)
    return SampleView(
        prompt="\n\n".join(lines),
        images=images,
        videos=videos,
        answer=str(answer_payload(sample.answer)),
        reference=drawn.task.reference_completion(sample),
        evidence=[(p.image, p.title) for p in panels],
        evidence_error=error,
    )


def _escape(text: str) -> str:
    """Prompt text shown literally in Markdown: tags such as `<answer>` are text, not HTML."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _write_mp4(item: dict[str, Any], path: Path) -> None:
    """A video item (frames, or a file) as an H.264 MP4 at its frame rate (`mmrl.video.write_video`: the same
    frames give the same bytes); odd sizes lose their last row or column (4:2:0 needs even sides)."""
    from mmrl.video import read_video, video_info, write_video

    value = item["video"]
    if isinstance(value, (str, Path)):
        frames = [np.asarray(f) for f in read_video(value).frames]
        fps = float(item.get("fps") or video_info(value).fps)
    else:
        frames = [np.asarray(as_image(f)) for f in value]
        fps = float(item.get("fps") or 2.0)
    h, w = frames[0].shape[:2]
    frames = [f[: h - h % 2, : w - w % 2] for f in frames]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, frames, fps)


# --------------------------------------------------------------------------------------------------
# Scoring


@dataclass
class ScoreRow:
    """One row of the reward table."""

    who: str
    completion: str
    reward: float
    parts: dict[str, float]


def score(drawn: Drawn, completion: str) -> tuple[list[ScoreRow], str | None]:
    """The typed completion's reward and parts, then the reference, the random baseline (mean of
    `RANDOM_DRAWS` random answers on this sample) and the best constant answer of a `BASELINE_SET`-sample
    draw, each scored on the shown sample. Returns the rows and the reward's error text, if it raised."""
    task, sample = drawn.task, drawn.sample
    reward, error = score_completion(task, completion, sample)
    rows = [ScoreRow("your answer", completion, float(reward.score), _parts(reward.parts))]
    ref = task.reference_completion(sample)
    ref_reward, _ = score_completion(task, ref, sample)
    rows.append(ScoreRow("reference (ground truth)", ref, float(ref_reward.score), _parts(ref_reward.parts)))
    if not drawn.baseline_set:
        drawn.baseline_set = [s for s, _ in iter_samples(task, drawn.items, BASELINE_SET, drawn.seed)]
    group = drawn.baseline_set
    tasks = baselines.TaskCache()
    tasks[sample.task] = task
    group_task = [dataclasses.replace(s, meta={k: v for k, v in s.meta.items() if k != "params"}) for s in group]
    rng = np.random.default_rng([drawn.seed, 7])
    random_scores = [
        baselines.score(group_task[:1], baselines.random_completions(group_task, rng, tasks)[:1], tasks)[0]
        for _ in range(RANDOM_DRAWS)
    ]
    mean_parts: dict[str, float] = {}
    for s in random_scores:
        for k, v in s.parts.items():
            mean_parts[k] = mean_parts.get(k, 0.0) + v / RANDOM_DRAWS
    rows.append(
        ScoreRow(
            f"random answers (mean of {RANDOM_DRAWS})",
            random_scores[0].completion,
            float(np.mean([s.reward for s in random_scores])),
            mean_parts,
        )
    )
    constant = baselines.constant_completions(group_task, tasks)[0]
    const_reward, _ = score_completion(task, constant, sample)
    rows.append(
        ScoreRow(
            f"best constant (of {len(group)} samples)",
            constant,
            float(const_reward.score),
            _parts(const_reward.parts),
        )
    )
    return rows, error


def _parts(parts: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in parts.items()}


def score_table(rows: Sequence[ScoreRow]) -> tuple[list[str], list[list[Any]]]:
    """(headers, rows) of the reward table: who, reward, each part (in first-seen order), the completion."""
    names: list[str] = []
    for r in rows:
        names += [k for k in r.parts if k not in names]
    headers = ["who", "reward", *names, "completion"]
    table = [[r.who, round(r.reward, 4), *[_cell(r.parts.get(k)) for k in names], r.completion] for r in rows]
    return headers, table


def _cell(value: float | None) -> Any:
    return "" if value is None else round(value, 4)


__all__ = [
    "BASELINE_SET",
    "RANDOM_DRAWS",
    "Drawn",
    "FormField",
    "SampleView",
    "ScoreRow",
    "draw",
    "form_values",
    "params_form",
    "score",
    "score_table",
    "upload_folder",
    "view",
]
