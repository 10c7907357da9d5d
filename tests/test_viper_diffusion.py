"""ViPER's diffusers backend on real tiny random-init pipelines (no mocks): built and loaded once, batched calls
equal one-by-one calls, determinism, bad outputs (corrupted outputs and a real NaN-producing pipeline) skipped
and counted by reason, edit verification, and the critic's agreement filter on the tiny policy."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from mmrl.diffusion import (
    build_tiny_pipeline,
    changed_fraction,
    image_defect,
    load_pipeline,
    loaded_pipelines,
    run_pipeline,
    tiny_pipeline_dir,
    to_pil,
)
from mmrl.errors import ConfigError, SkipItem
from pretext_tasks.viper_diffusion import (
    OPERATIONS,
    DiffusionParams,
    agreed_corrections,
    critic_corrections,
    diffusion_edit_pairs,
    diffusion_render_captions,
    edit_instructions,
    parse_corrections,
    same_normalised,
    skip_counts,
    verify_edit,
    working_size,
)

SIZE = 32  # the smallest comfortable working size of the tiny pipelines (VAE /2, UNet /2): fast on a CPU


def rngs(*seeds: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in seeds]


def photo(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A smooth random picture (blocks of colour upscaled), so that resizing keeps it recognisable."""
    small = np.random.default_rng(seed).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)


def image_bytes(results) -> list:
    return [r.reason if isinstance(r, SkipItem) else np.asarray(r[0] if isinstance(r, tuple) else r).tobytes()
            for r in results]  # fmt: skip


# -- building and loading ----------------------------------------------------------------------------------


def test_tiny_pipelines_are_built_once_and_loaded_once_per_process(isolated_cache):
    folder = tiny_pipeline_dir("text2image")
    assert folder.parent == isolated_cache / "diffusion" and (folder / "model_index.json").is_file()
    mtime = (folder / "model_index.json").stat().st_mtime_ns
    assert tiny_pipeline_dir("text2image") == folder and (folder / "model_index.json").stat().st_mtime_ns == mtime
    pipe = load_pipeline("tiny", "text2image", device="cpu")
    held = loaded_pipelines()
    assert load_pipeline("tiny", "text2image", device="cpu") is pipe
    assert load_pipeline(str(folder), "text2image", device="cpu") is pipe  # keyed by the resolved path
    assert loaded_pipelines() == held and type(pipe).__name__ == "StableDiffusionPipeline"
    with pytest.raises(ConfigError, match="cannot load the diffusers text2image pipeline 'no/such-model'"):
        load_pipeline("no/such-model", "text2image", device="cpu")
    with pytest.raises(ConfigError, match="unknown diffusers pipeline kind"):
        tiny_pipeline_dir("video")


def test_a_build_refuses_to_replace_a_folder_that_is_not_a_tiny_build(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="neither empty nor an earlier tiny diffusers build"):
        build_tiny_pipeline("text2image", tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_concurrent_first_builds_leave_one_complete_folder(tmp_path):
    found: list = []
    threads = [threading.Thread(target=lambda: found.append(tiny_pipeline_dir("inpaint", tmp_path))) for _ in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(found) == 2 and found[0] == found[1] and (found[0] / "model_index.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [found[0].name]  # no temp folder left behind
    build_tiny_pipeline("inpaint", found[0], seed=1)  # an earlier tiny build may be replaced
    pipe = load_pipeline(str(found[0]), "inpaint", device="cpu")
    assert type(pipe).__name__ == "StableDiffusionInpaintPipeline" and pipe.unet.config.in_channels == 9


# -- batched, seeded calls ---------------------------------------------------------------------------------


def test_a_batched_call_equals_one_by_one_calls_and_repeats_exactly():
    pipe = load_pipeline("tiny", "text2image", device="cpu")
    prompts, seeds = ["a red cube", "two cats on a sofa", "a street at night"], [11, 12, 13]
    batch = run_pipeline(pipe, prompts, seeds, steps=2, size=(SIZE, SIZE))
    assert batch.shape == (3, SIZE, SIZE, 3)
    singles = np.concatenate([run_pipeline(pipe, [p], [s], steps=2, size=(SIZE, SIZE)) for p, s in zip(prompts, seeds)])
    # Equal up to float rounding: batched convolutions and matmuls sum in another order (measured ~2e-6).
    np.testing.assert_allclose(batch, singles, atol=1e-4)
    assert run_pipeline(pipe, prompts, seeds, steps=2, size=(SIZE, SIZE)).tobytes() == batch.tobytes()
    assert np.abs(batch[0] - batch[1]).max() > 0.05  # items differ
    with pytest.raises(ValueError, match="do not pair up"):
        run_pipeline(pipe, prompts, seeds[:2])


def test_render_captions_batches_skips_blank_captions_and_is_deterministic():
    params = DiffusionParams(size=SIZE, batch_size=2)
    captions = ["a red ball on grass", "   ", "a blue car", "a green door"]
    out = diffusion_render_captions(captions, rngs(1, 2, 3, 4), params)
    assert len(out) == 4 and skip_counts(out) == {"empty_caption": 1}
    assert all(isinstance(out[i], Image.Image) and out[i].size == (SIZE, SIZE) for i in (0, 2, 3))
    assert image_bytes(diffusion_render_captions(captions, rngs(1, 2, 3, 4), params)) == image_bytes(out)
    # item i depends on rngs[i] only: reordering the batch (other batch-mates) leaves it unchanged up to rounding
    alone = diffusion_render_captions(captions[2:3], rngs(3), params)[0]
    assert np.abs(np.asarray(alone, np.int16) - np.asarray(out[2], np.int16)).max() <= 1
    other = diffusion_render_captions(captions[:1], rngs(99), params)[0]
    assert np.asarray(other).tobytes() != np.asarray(out[0]).tobytes()


# -- edits -------------------------------------------------------------------------------------------------


def test_edit_instructions_draw_distinct_operations_on_distinct_entities():
    for seed in range(30):
        ops = edit_instructions(np.random.default_rng(seed), (1, 3))
        assert 1 <= len(ops) <= 3 and len(set(ops)) == len(ops) and all(o.endswith(".") for o in ops)
        assert edit_instructions(np.random.default_rng(seed), (1, 3)) == ops
    three = [edit_instructions(np.random.default_rng(s), (3, 3)) for s in range(40)]
    assert all(len(x) == 3 for x in three)
    kinds = {o.split()[0] for x in three for o in x}
    assert kinds == {"Change", "Replace", "Remove", "Add", "Move"}  # count edits start with "Add" too
    named = edit_instructions(np.random.default_rng(3), (len(OPERATIONS), len(OPERATIONS)), ["the red car", "the dog"])
    assert sum("the red car" in o for o in named) == 1 and sum("the dog" in o for o in named) == 1
    with pytest.raises(ConfigError, match="n_edits"):
        edit_instructions(np.random.default_rng(0), (0, 2))


def test_edit_pairs_verify_and_count_skips_by_reason():
    images = [photo(0), photo(1, (64, 32)), Image.new("RGB", (5, 5)), photo(3)]
    loose = DiffusionParams(size=SIZE, batch_size=2, max_changed_area=1.0)
    out = diffusion_edit_pairs(images, rngs(0, 1, 2, 3), loose)
    assert skip_counts(out) == {"image_too_small": 1}
    for i in (0, 1, 3):
        edited, ops = out[i]
        assert edited.size == images[i].size and 1 <= len(ops) <= 3
        assert ops == edit_instructions(np.random.default_rng(i))  # the instructions come first from the rng
    assert image_bytes(diffusion_edit_pairs(images, rngs(0, 1, 2, 3), loose)) == image_bytes(out)
    # The tiny editor repaints most of the image (about 0.9 of the pixels change): with real bounds it is too
    # large, with a floor above that it is too small.
    strict = diffusion_edit_pairs(images, rngs(0, 1, 2, 3), DiffusionParams(size=SIZE, batch_size=2))
    assert skip_counts(strict) == {"image_too_small": 1, "edit_too_large": 3}
    floor = DiffusionParams(size=SIZE, min_changed_area=0.999, max_changed_area=1.0)
    assert skip_counts(diffusion_edit_pairs(images[:1], rngs(0), floor)) == {"edit_too_small": 1}


def test_verification_rejects_an_unchanged_image_and_corrupted_outputs():
    pipe = load_pipeline("tiny", "text2image", device="cpu")
    pixels = run_pipeline(pipe, ["a yellow kite"], [5], steps=2, size=(SIZE, SIZE))[0]
    source = to_pil(pixels)
    params = DiffusionParams()
    assert image_defect(pixels) is None
    unchanged = verify_edit(source, pixels, params)
    assert isinstance(unchanged, SkipItem) and unchanged.reason == "edit_too_small"
    local = np.asarray(source).copy()
    local[4:12, 4:12] = 255 - local[4:12, 4:12]  # a local edit: 64 of 1024 pixels
    local[4:12, 4:12, 0] = np.where(local[4:12, 4:12, 0] > 127, 0, 255)  # every pixel far from its old value
    assert changed_fraction(source, local) == pytest.approx(64 / 1024)
    assert isinstance(verify_edit(source, local, params), Image.Image)
    nan = pixels.copy()
    nan[3, 3, 1] = np.nan
    flat = np.full_like(pixels, 0.4)
    for bad, why in ((nan, "non-finite"), (flat, "blank")):
        assert why in image_defect(bad)
        skipped = verify_edit(source, bad, params)
        assert isinstance(skipped, SkipItem) and skipped.reason == "bad_image" and why in str(skipped)


def test_a_real_nan_producing_pipeline_is_skipped_and_counted(tmp_path):
    """A copy of the tiny pipelines with one NaN weight: every output is NaN, every item is skipped as bad_image."""
    t2i = shutil.copytree(tiny_pipeline_dir("text2image"), tmp_path / "t2i")
    edit = shutil.copytree(tiny_pipeline_dir("instruct_pix2pix"), tmp_path / "edit")
    with torch.no_grad():
        load_pipeline(str(t2i), "text2image", device="cpu").unet.conv_out.bias[0] = float("nan")
        load_pipeline(str(edit), "instruct_pix2pix", device="cpu").vae.decoder.conv_out.bias[0] = float("nan")
    params = DiffusionParams(t2i_model=str(t2i), edit_model=str(edit), t2i_kwargs={"height": SIZE, "width": SIZE},
                             max_changed_area=1.0)  # fmt: skip
    renders = diffusion_render_captions(["a cat", "a dog"], rngs(0, 1), params)
    assert skip_counts(renders) == {"bad_image": 2} and "non-finite" in str(renders[0])
    edits = diffusion_edit_pairs([photo(0, (SIZE, SIZE)), photo(1, (SIZE, SIZE))], rngs(0, 1), params)
    assert skip_counts(edits) == {"bad_image": 2}


def test_params_refuse_bad_settings_and_working_sizes_round_to_multiples_of_8():
    assert working_size((4000, 3000), 1024) == (1024, 768) and working_size((37, 21), None) == (40, 24)
    assert working_size((64, 32), SIZE) == (32, 16) and working_size((3, 900), 64) == (8, 64)
    with pytest.raises(ConfigError, match="multiple of 8"):
        DiffusionParams(size=30)
    with pytest.raises(ConfigError, match="min_changed_area=0.6"):
        DiffusionParams(min_changed_area=0.6, max_changed_area=0.5)
    with pytest.raises(ValueError, match="2 images but 1 rngs"):
        diffusion_edit_pairs([photo(0), photo(1)], rngs(0), DiffusionParams())


# -- the critic --------------------------------------------------------------------------------------------


def test_agreement_filter_and_parsing():
    reply = "<think>look</think><answer>\n1. The cup is red, not blue.\n- There are three dogs.\n\n* A sign says OPEN."
    assert parse_corrections(reply) == ["The cup is red, not blue.", "There are three dogs.", "A sign says OPEN."]
    first = ["The cup is red.", "There are three dogs.", "the cup is RED!", "A tree is missing."]
    second = ["There are three dogs", "The cup is red."]
    assert agreed_corrections(first, second, same_normalised) == ["The cup is red.", "There are three dogs."]
    # one sentence of the second sample vouches for one correction only
    assert agreed_corrections(["a b", "a c"], ["a x"], lambda s, t: s[0] == t[0]) == ["a b"]
    assert agreed_corrections(first, [], same_normalised) == []


def test_critic_corrections_on_the_tiny_policy():
    from mmrl.config import ModelConfig
    from mmrl.models import load_policy
    from mmrl.rollout.hf import HFEngine

    model, processor = load_policy(ModelConfig(path="tiny:qwen2.5-vl"), device="cpu")
    engine = HFEngine(model, processor, batch_size=4)
    params = DiffusionParams(critic_max_new_tokens=12)
    images, renders = [photo(0, (56, 56)), photo(1, (56, 56))], [photo(5, (56, 56)), SkipItem("bad_image", "x")]
    captions = ["A red cup on a table.", "Two dogs."]
    never = critic_corrections(images, renders, captions, rngs(0, 1), params, engine, same=lambda a, b: False)
    assert [r.reason for r in never] == ["no_corrections", "bad_image"]
    always = critic_corrections(images, renders, captions, rngs(0, 1), params, engine, same=lambda a, b: True)
    # everything agrees with everything: the first correction is kept, the rest are its repeats
    assert isinstance(always[0], list) and len(always[0]) == 1 and always[0][0].strip()
    again = critic_corrections(images, renders, captions, rngs(0, 1), params, engine, same=lambda a, b: True)
    assert again[0] == always[0]
