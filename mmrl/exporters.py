"""Dataset exports for other trainers (`mmrl generate --format hf|verl`), with their columns in data/README.md.

- `hf`: a Hugging Face `datasets.Dataset` (`save_to_disk`) with the columns TRL's GRPOTrainer reads
  for vision-language models (`prompt` with `{"type": "image"}` placeholders, `images`), plus
  `answer`, `task`, `id`, `meta` (JSON); image tasks only, since the trainer has no video column;
- `verl`: `train.parquet` in the shape verl's `RLHFDataset` (and EasyR1, via `problem`/`answer`) reads.

Only `mmrl generate` writes these; the training path never imports this module.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmrl import media
from mmrl.errors import MMRLError
from mmrl.sample import Sample, content_items
from rewards.extract import answer_payload

VERL_FILE = "train.parquet"
HF_FILES = ("dataset_info.json", "state.json")  # plus data-*.arrow shards


def png_bytes(image: Image.Image | str | Path | np.ndarray) -> bytes:
    """Lossless PNG bytes of an image (PIL, path or HxWx3 uint8 array), encoded like `write_dataset` does."""
    if isinstance(image, (str, Path)):
        image = media.load_image(image)
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # as mmrl.sample: fast, lossless, deterministic
    return buffer.getvalue()


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _video_frames(sample: Sample, item: dict[str, Any], fmt: str) -> list[Any]:
    frames = item["video"]
    if isinstance(frames, (str, Path)):
        raise MMRLError(
            f"sample {sample.id}: --format {fmt} exports videos given as frame lists, not video files "
            f"({frames}); use --format jsonl"
        )
    return list(frames)


def hf_row(sample: Sample) -> dict[str, Any]:
    """One row of the hf export (see `data/README.md`): TRL's conversational `prompt` with
    `{"type": "image"}` placeholders, the images in prompt order, and the Sample's fields."""
    prompt, images = [], []
    for message in sample.messages:
        content = []
        for item in content_items(message):
            if item["type"] == "video":
                raise MMRLError(
                    f"sample {sample.id} has a video: --format hf is for image tasks (TRL's GRPOTrainer reads "
                    "`image`/`images` columns only); use --format jsonl or verl"
                )
            if item["type"] == "image":
                images.append({"bytes": png_bytes(item["image"]), "path": None})
                content.append({"type": "image", "text": None})
            else:
                content.append({"type": "text", "text": item["text"]})
        prompt.append({"role": message["role"], "content": content})
    return {
        "prompt": prompt,
        "images": images,
        "answer": sample.answer,
        "task": sample.task,
        "id": sample.id,
        "meta": _json(sample.meta),
    }


def write_hf(samples: Iterator[Sample], out: Path) -> None:
    """Save the samples as a `datasets.Dataset` in `out` (`datasets.load_from_disk(out)` reads it).

    Rows hold PNG bytes, so memory grows with the dataset's encoded size (fine up to ~100k tiles).
    """
    try:
        import datasets
    except ImportError:
        raise MMRLError("--format hf needs the `datasets` package (pip install datasets)") from None
    rows = [hf_row(s) for s in samples]
    datasets.disable_progress_bars()
    features = datasets.Dataset.from_list(rows[:1]).features  # infer answer's type from the data
    features["images"] = datasets.List(datasets.Image())
    dataset = datasets.Dataset.from_list(rows, features=features)
    dataset.save_to_disk(str(out))


def verl_row(sample: Sample, index: int) -> dict[str, Any]:
    """One row of the verl export (see `data/README.md`): chat messages whose content is a string
    with `<image>`/`<video>` where the media were, images as PNG bytes, videos as PNG frame lists."""
    prompt, images, videos = [], [], []
    for message in sample.messages:
        parts = []
        for item in content_items(message):
            if item["type"] == "image":
                images.append({"bytes": png_bytes(item["image"])})
                parts.append("<image>")
            elif item["type"] == "video":
                frames = _video_frames(sample, item, "verl")
                uris = ["data:image/png;base64," + base64.b64encode(png_bytes(f)).decode("ascii") for f in frames]
                videos.append({"video": uris})
                parts.append("<video>")
            else:
                parts.append(item["text"])
        prompt.append({"role": message["role"], "content": "".join(parts)})
    ground_truth = answer_payload(sample.answer)
    user = "".join(m["content"] for m in prompt if m["role"] == "user")
    row = {
        "data_source": f"mmrl/{sample.task}",
        "prompt": prompt,
        "ability": "visual_perception",
        "reward_model": {"style": "rule", "ground_truth": ground_truth},
        "extra_info": {
            "index": index,
            "id": sample.id,
            "task": sample.task,
            "answer": _json(sample.answer),
            "meta": _json(sample.meta),
        },
        "problem": user,
        "answer": ground_truth,
    }
    if images:
        row["images"] = images
    if videos:
        row["videos"] = videos
    return row


def write_verl(samples: Iterator[Sample], path: Path) -> None:
    """Write the samples as one parquet file (`pyarrow.parquet.read_table(path)` reads it).

    The `images` / `videos` columns exist when some sample has images / videos (a row without any
    holds an empty list there).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [verl_row(s, i) for i, s in enumerate(samples)]
    for key in ("images", "videos"):
        if any(key in r for r in rows):
            for r in rows:
                r.setdefault(key, [])
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, path, compression="zstd")


__all__ = ["HF_FILES", "VERL_FILE", "hf_row", "png_bytes", "verl_row", "write_hf", "write_verl"]
