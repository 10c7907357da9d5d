"""Preview sheets show each task's evidence for its answer (`Task.evidence`, drawn by `mmrl.preview`).

Every test makes a real sample, checks its evidence panels by measuring pixels against truth taken from
the source media (the photo, the decoded source video, the drawn image) rather than from the panel code,
then checks that the sheet is taller than without evidence, holds every panel exactly as titled and
drawn (`panel_tile`), and is the same PNG bytes for the same sample, in memory and read back from disk.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
import skimage
from PIL import Image
from skimage.measure import label, regionprops

from mmrl import media, registry, scenes
from mmrl.corpus import camera_motion_frames
from mmrl.errors import MMRLError
from mmrl.preview import panel_tile, preview_sheet, sample_evidence
from mmrl.registry import get_task
from mmrl.sample import Sample, read_dataset, write_dataset
from mmrl.task import Panel, Task
from mmrl.video import read_frames, write_video
from pretext_tasks import evidence
from pretext_tasks.diagnostic import COLOURS
from pretext_tasks.image_jigsaw import prepare_image
from rewards.extract import labels_text

DATA = Path(skimage.__file__).parent / "data"
CHELSEA = DATA / "chelsea.png"
FPS = 8.0


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Two camera pans over real photos (every frame differs from its neighbours), 160x120: under every
    task's pixel budget, so the shown frames are the decoded source frames."""
    root = tmp_path_factory.mktemp("preview_videos")
    for name, photo, n, seed in (("cat", "chelsea.png", 120, 0), ("coffee", "coffee.png", 100, 1)):
        image = media.load_image(DATA / photo)
        frames = list(camera_motion_frames(image, "pan_right", n, (160, 120), np.random.default_rng(seed)))
        write_video(root / f"{name}.mp4", frames, FPS)
    return root


def video_sample(name: str, folder: Path, seed: int = 1, **params) -> Sample:
    task = get_task(name, **params)
    return task.make(task.sources(folder)[0], np.random.default_rng(seed))


def source_frames(folder: Path, sample: Sample, indices) -> np.ndarray:
    return read_frames(folder / sample.meta["source"], indices).frames


def shown_video(sample: Sample) -> np.ndarray:
    (item,) = sample.media()
    return np.stack([np.asarray(f) for f in item["video"]])


def find(hay: np.ndarray, needle: np.ndarray) -> list[tuple[int, int]]:
    """Every (y, x) where `needle` (H, W, 3) lies in `hay` pixel for pixel: candidates are the places of
    the needle's colour that is rarest in the hay, each then compared in full."""
    pack = lambda a: (a[..., 0].astype(np.int64) << 16) | (a[..., 1].astype(np.int64) << 8) | a[..., 2]  # noqa: E731
    hay_c, needle_c = pack(hay), pack(needle)
    values, counts = np.unique(hay_c, return_counts=True)
    where = np.clip(np.searchsorted(values, needle_c.ravel()), 0, len(values) - 1)
    if not (values[where] == needle_c.ravel()).all():
        return []
    k = int(np.argmin(counts[where]))
    py, px = divmod(k, needle.shape[1])
    h, w = needle.shape[:2]
    hits = []
    for y, x in zip(*np.nonzero(hay_c == needle_c.ravel()[k])):
        top, left = int(y) - py, int(x) - px
        if top >= 0 and left >= 0 and top + h <= hay.shape[0] and left + w <= hay.shape[1]:
            if np.array_equal(hay[top : top + h, left : left + w], needle):
                hits.append((top, left))
    return hits


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def check_sheet(sample: Sample, tmp_path: Path, titles: int) -> list[Panel]:
    """The sheet holds every evidence panel as titled and drawn, is taller than the sheet without
    evidence, and is byte-identical for the same sample and for it read back from a dataset."""
    panels, error = sample_evidence(sample)
    assert error is None and len(panels) == titles
    assert all(p.title.strip() and p.image.mode == "RGB" for p in panels)
    sheet = preview_sheet(sample)
    assert sheet.width == 1100 and sheet.height > preview_sheet(sample, evidence=False).height + 60
    pixels = np.asarray(sheet)
    for panel in panels:
        assert find(pixels, np.asarray(panel_tile(panel))), f"panel '{panel.title}' is not on the sheet"
    loaded = read_dataset(write_dataset([sample], tmp_path / "ds"))[0]
    assert png(preview_sheet(sample)) == png(sheet) == png(preview_sheet(loaded))
    return panels


def ring_colours(picture: np.ndarray, boxes) -> list[set[tuple[int, ...]]]:
    """The colours of the `RING`-px ring around each thumbnail box of a timeline."""
    r = evidence.RING
    out = []
    for x0, y0, x1, y1 in boxes:
        cell = picture[y0 - r : y1 + r, x0 - r : x1 + r].copy()
        inner = np.zeros(cell.shape[:2], dtype=bool)
        inner[r:-r, r:-r] = True
        out.append({tuple(int(v) for v in c) for c in cell[~inner]})
    return out


# --------------------------------------------------------------------------------------------------
# Image tasks


def test_dominant_color_bar_measures_the_colours_of_the_image(tmp_path: Path) -> None:
    task = get_task("dominant_color")
    sample = task.make(3, np.random.default_rng(0))
    (panel,) = task.evidence(sample)
    assert sample.answer in panel.title
    # The truth: each pixel of the image belongs to its nearest palette colour (noise never crosses over).
    image = np.asarray(sample.media()[0]["image"], dtype=float)
    palette = list(task.params.palette)
    table = np.array([COLOURS[c] for c in palette], dtype=float)
    nearest = np.argmin(((image[:, :, None, :] - table[None, None]) ** 2).sum(-1), axis=-1)
    bar = np.asarray(panel.image)[1 + 14, 1 : 1 + 600]  # the bar's middle row
    for k, name in enumerate(palette):
        share = float((nearest == k).mean())
        width = int((bar == COLOURS[name]).all(axis=1).sum())
        assert abs(width - 600 * share) <= 1.5, (name, width, share)
    assert (bar[:10] == COLOURS[sample.answer]).all()  # the largest share first
    check_sheet(sample, tmp_path, 1)


@pytest.mark.parametrize("composed", [False, True])
def test_image_jigsaw_reassembled_panel_is_the_source_picture(tmp_path: Path, composed: bool) -> None:
    task = get_task("image_jigsaw", composed=composed)
    sample = task.make(CHELSEA, np.random.default_rng(4))
    shown, reassembled = task.evidence(sample)
    source = prepare_image(media.load_image(CHELSEA), task.params.max_side)
    assert np.array_equal(np.asarray(reassembled.image), np.asarray(source))  # the answer puts every tile back
    assert labels_text(sample.answer) in reassembled.title
    # The shown panel holds tile j (as the model saw it) in slot j: row-major, labels increasing.
    grid = np.asarray(shown.image)
    tiles = [np.asarray(source.crop(tuple(sample.meta["tile_boxes"][i]))) for i in sample.meta["order"]]
    places = [find(grid, tile) for tile in tiles]
    assert all(len(p) == 1 for p in places)
    assert sorted(places, key=lambda p: (p[0][0] // 50, p[0][1])) == places
    wrong = dataclasses.replace(sample, answer=list(range(1, task.params.k + 1)))  # the identity: never right
    assert not np.array_equal(np.asarray(task.evidence(wrong)[1].image), np.asarray(source))
    check_sheet(sample, tmp_path, 2)


def test_depth_jigsaw_tags_each_point_with_its_rank_and_depth(tmp_path: Path) -> None:
    task = get_task("depth_jigsaw")
    sample = task.make(scenes.random_scene(np.random.default_rng(5)), np.random.default_rng(0))
    marked, listing = task.evidence(sample)
    picture = np.asarray(marked.image)
    native_w, native_h = sample.meta["native_size"]
    sx, sy = picture.shape[1] / native_w, picture.shape[0] / native_h
    depths = [d for _, _, d in sample.meta["points"]]
    assert depths == sorted(depths)
    for rank, (row, col, depth) in enumerate(sample.meta["points"], start=1):
        tag = np.asarray(evidence.tag(f"{rank}: {depth:.2f} m"))
        (y, x), *more = find(picture, tag)
        assert not more
        assert abs(y + tag.shape[0] / 2 - row * sy) <= tag.shape[0]  # beside the point, level with it
        side = x - col * sx if x > col * sx else col * sx - (x + tag.shape[1])
        assert 0 < side <= (task.params.marker_radius + task.params.marker_outline_width) * sx + 4
    assert listing.title.endswith(labels_text(sample.answer))
    check_sheet(sample, tmp_path, 2)


# --------------------------------------------------------------------------------------------------
# Video tasks


@pytest.mark.parametrize("name", ["video_jigsaw", "temporal_jigsaw"])
def test_clip_panels_show_the_clips_as_labelled_and_in_time_order(tmp_path: Path, videos: Path, name: str) -> None:
    sample = video_sample(name, videos)
    shown, ordered = get_task(name).evidence(sample)
    k = len(sample.answer)
    if name == "video_jigsaw":
        firsts = [indices[0] for indices in sample.meta["frame_indices"]]  # clip r's first frame, in time order
    else:
        length = sample.meta["frames_per_clip"]
        firsts = [sample.meta["frame_indices"][r * length] for r in range(k)]
    frames = source_frames(videos, sample, firsts)
    height = evidence.CLIP_ROW_HEIGHT
    thumbs = [np.asarray(evidence.fit(Image.fromarray(f), 4 * height, height)) for f in frames]
    # Reordered by the answer: the clips' first source frames top to bottom in time order.
    rows = [find(np.asarray(ordered.image), t) for t in thumbs]
    assert all(len(r) == 1 for r in rows)
    assert [r[0][0] for r in rows] == sorted(r[0][0] for r in rows)
    # As shown: the clip shown under label j is in row j; its true time index is order[j - 1].
    rows = [find(np.asarray(shown.image), thumbs[i]) for i in sample.meta["order"]]
    assert all(len(r) == 1 for r in rows) and [r[0][0] for r in rows] == sorted(r[0][0] for r in rows)
    assert labels_text(sample.answer) in ordered.title
    check_sheet(sample, tmp_path, 2)


def test_grounding_timeline_marks_exactly_the_perturbed_frames(tmp_path: Path, videos: Path) -> None:
    task = get_task("anomaly_grounding")
    sample = video_sample("anomaly_grounding", videos, seed=3)
    line, segment = task.evidence(sample)
    shown = shown_video(sample)
    source = source_frames(videos, sample, sample.meta["frame_indices"])
    changed = {i for i in range(len(shown)) if not np.array_equal(shown[i], source[i])}  # truth: from the pixels
    start, count = sample.meta["start_frame_index"], sample.meta["perturbed_frames_count"]
    assert changed == set(range(start, start + count))
    picture = np.asarray(line.image)
    h, w = shown.shape[1:3]
    boxes = evidence.timeline_boxes(len(shown), (w, h))
    rings = ring_colours(picture, boxes)
    assert {i for i, ring in enumerate(rings) if ring == {evidence.MARK}} == changed
    assert all(ring == {(255, 255, 255)} for i, ring in enumerate(rings) if i not in changed)
    for i, (x0, y0, x1, y1) in enumerate(boxes):  # each thumbnail is its frame, in time order
        thumb = Image.fromarray(shown[i]).resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS)
        assert np.array_equal(picture[y0:y1, x0:x1], np.asarray(thumb))
    assert f"{start}-{start + count - 1}" in line.title and sample.meta["perturbation"] in segment.title
    check_sheet(sample, tmp_path, 2)


def test_counting_marks_exactly_the_frames_with_shapes_and_boxes_every_shape(tmp_path: Path, videos: Path) -> None:
    task = get_task("object_counting")
    sample = video_sample("object_counting", videos, seed=2)
    line, closeups = task.evidence(sample)
    shown = shown_video(sample)
    source = source_frames(videos, sample, sample.meta["frame_indices"])
    shapes = sample.meta["shapes"]
    by_frame = {d["frame"]: d for d in sample.meta["drawn"]}
    # Truth from the pixels: the frames that differ from the source, and the shapes' bounding boxes there.
    changed = {}
    for i in range(len(shown)):
        drawn = np.any(shown[i] != source[i], axis=-1)
        if drawn.any():
            changed[i] = sorted(tuple(r.bbox) for r in regionprops(label(drawn, connectivity=2)) if r.area > 4)
    assert set(changed) == set(by_frame)
    for i, boxes in changed.items():
        stored = sorted((top, left, bottom, right) for left, top, right, bottom in by_frame[i]["boxes"])
        assert stored == boxes and len(boxes) == by_frame[i]["instances"]
    h, w = shown.shape[1:3]
    rings = ring_colours(np.asarray(line.image), evidence.timeline_boxes(len(shown), (w, h)))
    for i, ring in enumerate(rings):
        colour = evidence.KIND_COLOURS[shapes.index(by_frame[i]["shape"])] if i in by_frame else (255, 255, 255)
        assert ring == {colour}, i
    assert sample.answer in closeups.title
    check_sheet(sample, tmp_path, 2)


# --------------------------------------------------------------------------------------------------
# The hook


class _Broken(Task):
    name = "test_broken_evidence"

    @dataclasses.dataclass
    class Params:
        pass

    def __init__(self, params=None) -> None:
        self.params = params

    def evidence(self, sample: Sample) -> list[Panel]:
        raise RuntimeError("no frames here")


def test_evidence_is_a_hook_with_a_default_and_a_failing_one_is_written_on_the_sheet() -> None:
    assert Task.evidence(Task(), Sample("s", "x", [], "a")) == []
    assert "evidence" in registry._REQUIRED["task"]
    with pytest.raises(MMRLError, match="lacks evidence"):
        registry.register("test_no_evidence")(type("NoEvidence", (), {"Params": _Broken.Params, **{
            k: getattr(Task, k) for k in ("sources", "make", "reward", "reference_completion", "random_answer",
                                          "constant_answer")}}))  # fmt: skip
    registry.register("test_broken_evidence")(_Broken)
    sample = Sample("s", "test_broken_evidence", [{"role": "user", "content": "hi"}], "a", {"params": {"nope": 1}})
    assert sample_evidence(sample) == ([], "RuntimeError: no frames here")  # bad params: built with defaults
    plain = preview_sheet(dataclasses.replace(sample, task="not_installed"))
    assert preview_sheet(sample).height > plain.height  # the error line
    assert sample_evidence(dataclasses.replace(sample, task="not_installed")) == ([], None)
