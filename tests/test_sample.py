import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from mmrl.errors import DatasetError
from mmrl.sample import Sample, read_dataset, write_dataset


def make_samples(rng: np.random.Generator) -> list[Sample]:
    samples = []
    for i in range(3):
        image = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
        frames = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(4)]
        messages = [
            {"role": "system", "content": "Answer inside <answer></answer>."},
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": image},
                    {"type": "video", "video": frames, "fps": 2.0},
                    {"type": "text", "text": f"question {i}"},
                ],
            },
        ]
        samples.append(Sample(f"s{i}", "diagnostic", messages, answer=[i, 1], meta={"seed": i}))
    return samples


def digest(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_round_trip_keeps_pixels_and_fields(tmp_path):
    samples = make_samples(np.random.default_rng(0))
    write_dataset(samples, tmp_path / "ds")
    loaded = read_dataset(tmp_path / "ds")
    assert [s.id for s in loaded] == ["s0", "s1", "s2"]
    for original, back in zip(samples, loaded):
        assert back.task == original.task and back.answer == original.answer and back.meta == original.meta
        image_item, video_item = back.media()
        assert image_item["image"].startswith(str(tmp_path / "ds"))
        src_image = original.messages[1]["content"][0]["image"]
        assert np.array_equal(np.asarray(Image.open(image_item["image"])), np.asarray(src_image))
        src_frames = original.messages[1]["content"][1]["video"]
        assert len(video_item["video"]) == len(src_frames)
        for path, frame in zip(video_item["video"], src_frames):
            assert np.array_equal(np.asarray(Image.open(path)), frame)  # lossless
        assert video_item["fps"] == 2.0
    # Media paths in the JSONL are relative: the folder can move.
    record = json.loads((tmp_path / "ds" / "samples.jsonl").read_text().splitlines()[0])
    assert record["messages"][1]["content"][0]["image"] == "media/s0_0.png"


def test_same_samples_same_bytes_and_rewrite_of_loaded(tmp_path):
    write_dataset(make_samples(np.random.default_rng(5)), tmp_path / "a")
    write_dataset(make_samples(np.random.default_rng(5)), tmp_path / "b")
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    write_dataset(read_dataset(tmp_path / "a"), tmp_path / "c")  # absolute paths copied in
    loaded = read_dataset(tmp_path / "c")
    assert loaded[0].media()[0]["image"].startswith(str(tmp_path / "c"))


def test_refuses_to_overwrite_and_duplicate_ids(tmp_path):
    samples = make_samples(np.random.default_rng(0))
    write_dataset(samples, tmp_path / "ds")
    with pytest.raises(DatasetError, match="already exists"):
        write_dataset(samples, tmp_path / "ds")
    with pytest.raises(DatasetError, match="duplicate sample id 's0'"):
        write_dataset([samples[0], samples[0]], tmp_path / "dup")


@pytest.mark.parametrize(
    "line, expected",
    [
        ("{not json", "not valid JSON"),
        ('["a list"]', "expected a JSON object"),
        ('{"task": "t", "messages": [], "answer": 1}', "missing required field 'id'"),
        (
            '{"id": "x", "task": "t", "messages": [{"role": "user", "content": "hi"}]}',
            "missing required field 'answer'",
        ),
        ('{"id": 3, "task": "t", "messages": [], "answer": 1}', "field 'id' must be a str"),
        ('{"id": "x", "task": "t", "messages": [{"role": "robot", "content": "hi"}], "answer": 1}', "role"),
        (
            '{"id": "x", "task": "t", "answer": 1, "messages": [{"role": "user", '
            '"content": [{"type": "image", "image": "media/missing.png"}]}]}',
            "does not exist",
        ),
        (
            '{"id": "x", "task": "t", "messages": [{"role": "user", "content": "hi"}], "answer": 1, "extra": 2}',
            "unknown",
        ),
    ],
)
def test_bad_record_names_file_and_line(tmp_path, line, expected):
    good = '{"id": "ok", "task": "t", "messages": [{"role": "user", "content": "hi"}], "answer": 1}'
    path = tmp_path / "samples.jsonl"
    path.write_text(good + "\n\n" + line + "\n")
    with pytest.raises(DatasetError) as e:
        read_dataset(tmp_path)
    assert f"{path}:3:" in str(e.value)
    assert expected in str(e.value)


def test_duplicate_id_on_read_and_missing_dataset(tmp_path):
    good = '{"id": "ok", "task": "t", "messages": [{"role": "user", "content": "hi"}], "answer": 1}'
    (tmp_path / "samples.jsonl").write_text(good + "\n" + good + "\n")
    with pytest.raises(DatasetError, match=r"samples.jsonl:2: duplicate sample id 'ok' \(first on line 1\)"):
        read_dataset(tmp_path)
    with pytest.raises(DatasetError, match="no dataset at"):
        read_dataset(tmp_path / "nowhere")
