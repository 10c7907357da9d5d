"""ViPER's diffusers generator backend (../specs/viper.md §3, "mmrl generator design"): rendering captions with a
text-to-image pipeline (Stage 1, caption self-refining), editing photos with an instruction-based editing
pipeline (Stage 2, visual-operation predicting), and the critic that turns an (image, rendering, caption)
triple into corrections.

`caption_refine` and `edit_prediction` call these for `backend: diffusers`; their `procedural` backend uses
open3d scenes instead. The pipelines come from `mmrl.diffusion`: `"tiny"` (a random-init build made locally
once, for tests and CPU runs: its images are noise) or a local folder / cached hub id of a real pipeline.

Stage 2 edits. A photo has no scene graph, so the edit instructions name generic entities: a region of the
image ("the object on the left"), or phrases the caller passes per image (`entities`, e.g. the hard entities
of a refined caption, as in the paper). Each image gets k ~ U{n_edits} distinct operations from
{recolour, replace, remove, add, change count, move}, each on a distinct entity, worded by our own templates
(`OPERATIONS`). The instructions are joined into one prompt (one editing pass per image; all images of one
working size in one batched call per `batch_size` chunk), and the list of instructions is the ground truth.
Verification of the result:

    bad_image         non-finite pixels or one flat colour (`mmrl.diffusion.image_defect`)
    edit_too_small    changed area a < min_changed_area, a = |{p : max_c |edited - source| > threshold}| / (W H)
    edit_too_large    changed area a > max_changed_area (a global repaint is not a local edit)
    image_too_small   a source side below 8 px

The paper's editor is OmniGen2 and its renderer Qwen-Image; any diffusers pipeline that takes `prompt`
(and `image` for editing) loads here, with model-specific call arguments in `t2i_kwargs` / `edit_kwargs`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from mmrl.diffusion import changed_fraction, image_defect, load_pipeline, run_pipeline, seed_from, to_pil
from mmrl.errors import ConfigError, SkipItem

# -- parameters --------------------------------------------------------------------------------------------


@dataclass
class DiffusionParams:
    """The diffusers backend of caption_refine / edit_prediction: models, call settings, edit verification."""

    t2i_model: str = "tiny"
    """Text-to-image pipeline that renders captions: `tiny` (a random-init pipeline built locally once and cached
    under `mmrl.config.default_cache_dir()`), a local folder or a hub id already in the local cache."""
    edit_model: str = "tiny"
    """Instruction-based editing pipeline (InstructPix2Pix-style: `prompt` + `image`), same rules as `t2i_model`."""
    steps: int = 2
    """Denoising steps per call (real models want 20-50)."""
    size: int = 64
    """Working side in pixels for the `tiny` pipelines: renders are size x size, edit sources are resized so that
    their longer side is `size`. Real models use their own default render size (set `height`/`width` in
    `t2i_kwargs` to change it) and edit at the source's size (at most `max_edit_side`) rounded to multiples of 8."""
    max_edit_side: int = 1024
    """Longest side a real editing model works at: larger sources are scaled down to it (and the edit back up)."""
    batch_size: int = 8
    """Most images per pipeline call."""
    min_changed_area: float = 0.005
    """Smallest fraction of pixels an edit must change (below: `edit_too_small`, the editor ignored the
    instruction)."""
    max_changed_area: float = 0.5
    """Largest fraction of pixels an edit may change (above: `edit_too_large`, a global repaint). The tiny
    editor repaints almost everything (about 0.9): tiny runs set 1.0."""
    change_threshold: int = 32
    """A pixel counts as changed when its largest channel difference exceeds this (0-255); lossy VAE
    round trips stay below it."""
    t2i_kwargs: dict[str, Any] = field(default_factory=lambda: {"guidance_scale": 7.5})
    """Extra keyword arguments of every text-to-image call (model-specific, e.g. `true_cfg_scale` for Qwen-Image)."""
    edit_kwargs: dict[str, Any] = field(default_factory=lambda: {"guidance_scale": 7.5, "image_guidance_scale": 1.5})
    """Extra keyword arguments of every editing call (these two are InstructPix2Pix's text and image guidance)."""
    device: str = ""
    """Where the pipelines run: `cuda`, `cuda:1`, `cpu`; empty = a GPU when one is visible."""
    dtype: str = "auto"
    """Pipeline weights: `auto` (float16 on a GPU, float32 on CPU), `float16`, `bfloat16` or `float32`."""
    allow_download: bool = False
    """Let diffusers download a hub id that is not in the local cache (off: nothing is ever downloaded)."""
    critic_max_new_tokens: int = 128
    """Most tokens of one critic reply (`critic_corrections`)."""
    critic_temperature: float = 1.0
    """Sampling temperature of the two critic samples (> 0, so that the two samples can disagree)."""
    critic_max_prompt_tokens: int = 4096
    """Most prompt tokens (text + both images) of a critic prompt."""

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError(f"diffusion steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")
        if self.size < 8 or self.size % 8:
            raise ConfigError(f"diffusion size must be a multiple of 8 and >= 8, got {self.size}")
        if self.max_edit_side < 8:
            raise ConfigError(f"diffusion max_edit_side must be >= 8, got {self.max_edit_side}")
        if not 0 <= self.min_changed_area < self.max_changed_area <= 1:
            raise ConfigError(f"diffusion changed area bounds need 0 <= min < max <= 1, got min_changed_area="
                              f"{self.min_changed_area}, max_changed_area={self.max_changed_area}")  # fmt: skip
        if not 0 <= self.change_threshold < 255:
            raise ConfigError(f"diffusion change_threshold must be in [0, 255), got {self.change_threshold}")
        if self.critic_temperature <= 0 or self.critic_max_new_tokens < 1:
            raise ConfigError("diffusion critic_temperature must be > 0 and critic_max_new_tokens >= 1, got "
                              f"{self.critic_temperature} and {self.critic_max_new_tokens}")  # fmt: skip


# -- edit instructions -------------------------------------------------------------------------------------

REGIONS: dict[str, tuple[str, str, str]] = {
    "centre": ("the object in the centre", "in the centre", "to the centre"),
    "left": ("the object on the left", "on the left side", "to the left side"),
    "right": ("the object on the right", "on the right side", "to the right side"),
    "top": ("the object at the top", "at the top", "to the top"),
    "bottom": ("the object at the bottom", "at the bottom", "to the bottom"),
}
"""Image regions as (entity phrase, place phrase, destination phrase): the generic entities of a photo."""
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "white", "black", "brown")
"""Colours a recolour names (distinct basic colour words, which the reward's slot check compares)."""
OBJECTS = ("a ball", "a vase", "a lamp", "a book", "a bird", "a cup", "a chair", "a clock", "a hat", "a plant",
           "a bicycle", "a teddy bear")  # fmt: skip
"""Things a replace or an add brings into the image."""
OPERATIONS = ("recolour", "replace", "remove", "add", "count", "move")
"""The operation kinds (../specs/viper.md §3: change colour, replace object, remove, add, change count, move;
`change text` needs visible text, which a photo may lack)."""


def _instruction(op: str, entity: str, rng: np.random.Generator, taken: set[str]) -> str:
    """One instruction of kind `op` on `entity`; places for `add` / `move` avoid the regions in `taken`."""
    free = [r for r in REGIONS if r not in taken] or list(REGIONS)
    if op == "recolour":  # never to a colour the phrase already names ("the small white cylinder" to white)
        colours = [c for c in COLOURS if c not in entity.lower().split()]
        return f"Change the colour of {entity} to {colours[int(rng.integers(len(colours)))]}."
    if op == "replace":
        return f"Replace {entity} with {OBJECTS[int(rng.integers(len(OBJECTS)))]}."
    if op == "remove":
        return f"Remove {entity}."
    if op == "add":
        place = free[int(rng.integers(len(free)))]
        taken.add(place)
        return f"Add {OBJECTS[int(rng.integers(len(OBJECTS)))]} {REGIONS[place][1]}."
    if op == "count":
        return f"Add one more copy of {entity} next to it."
    if op == "move":
        dest = free[int(rng.integers(len(free)))]
        taken.add(dest)
        return f"Move {entity} {REGIONS[dest][2]}."
    raise ValueError(f"unknown edit operation '{op}'; valid: {', '.join(OPERATIONS)}")


def edit_instructions(rng: np.random.Generator, n_edits: tuple[int, int] = (1, 3),
                      entities: Sequence[str] = ()) -> list[str]:  # fmt: skip
    """k ~ U{n_edits[0], ..., n_edits[1]} instructions of distinct operation kinds on distinct entities.

    Entities: the given phrases first (shuffled), then image regions (`REGIONS`); an `add` names a free region
    instead of an entity. `move` and `add` places avoid the regions already named."""
    lo, hi = n_edits
    if not 1 <= lo <= hi <= len(OPERATIONS):
        raise ConfigError(f"n_edits must satisfy 1 <= min <= max <= {len(OPERATIONS)}, got {n_edits}")
    k = int(rng.integers(lo, hi + 1))
    ops = [OPERATIONS[i] for i in rng.permutation(len(OPERATIONS))[:k]]
    given = [entities[i] for i in rng.permutation(len(entities))] if entities else []
    regions = [list(REGIONS)[i] for i in rng.permutation(len(REGIONS))]
    taken: set[str] = set()
    out = []
    for op in ops:
        if op == "add":
            out.append(_instruction(op, "", rng, taken))
            continue
        if given:
            entity = given.pop()
        else:
            free = [r for r in regions if r not in taken] or regions
            region = free[0]
            taken.add(region)
            entity = REGIONS[region][0]
        out.append(_instruction(op, entity, rng, taken))
    return out


# -- Stage 2: edits ----------------------------------------------------------------------------------------


def working_size(size: tuple[int, int], side: int | None) -> tuple[int, int]:
    """(W, H) a pipeline works at: scaled so the longer side is `side` (None: unscaled), each side rounded to a
    multiple of 8 (the VAE's latents are 1/8 or 1/2 the pixels), at least 8."""
    w, h = size
    scale = 1.0 if side is None else side / max(w, h)
    return max(8, round(w * scale / 8) * 8), max(8, round(h * scale / 8) * 8)


def _chunks(indices: list[int], keys: list[Any], batch_size: int) -> list[list[int]]:
    """`indices` grouped by key (a batched call needs one image size), each group cut into `batch_size` chunks."""
    groups: dict[Any, list[int]] = {}
    for i in indices:
        groups.setdefault(keys[i], []).append(i)
    return [g[s : s + batch_size] for g in groups.values() for s in range(0, len(g), batch_size)]


def _check_pairs(what: str, items: Sequence[Any], rngs: Sequence[np.random.Generator]) -> None:
    if len(items) != len(rngs):
        raise ValueError(f"{len(items)} {what} but {len(rngs)} rngs: give one numpy Generator per item")


def diffusion_edit_pairs(
    images: list[Image.Image],
    rngs: list[np.random.Generator],
    params: DiffusionParams,
    n_edits: tuple[int, int] = (1, 3),
    entities: Sequence[Sequence[str]] | None = None,
) -> list[tuple[Image.Image, list[str]] | SkipItem]:
    """For each source image: (edited image, its instructions = the ground-truth operations) or a `SkipItem`
    (reasons in the module docstring). The edited image has the source's size.

    Each image's draws (instructions, then the noise seed) come from its own rng, so item i depends on rngs[i]
    only. `entities[i]`: optional entity phrases for image i (e.g. from its refined caption)."""
    _check_pairs("images", images, rngs)
    if entities is not None and len(entities) != len(images):
        raise ValueError(f"{len(images)} images but {len(entities)} entity lists")
    results: list[Any] = [None] * len(images)
    prompts: list[str] = [""] * len(images)
    ops: list[list[str]] = [[] for _ in images]
    seeds = [0] * len(images)
    sources: list[Image.Image | None] = [None] * len(images)
    for i, (image, rng) in enumerate(zip(images, rngs)):
        ops[i] = edit_instructions(rng, n_edits, entities[i] if entities is not None else ())
        prompts[i], seeds[i] = " ".join(ops[i]), seed_from(rng)
        if min(image.size) < 8:
            results[i] = SkipItem("image_too_small", f"image {i} is {image.size[0]}x{image.size[1]}, below 8 px")
            continue
        rgb = image.convert("RGB")
        side = params.size if params.edit_model == "tiny" else min(params.max_edit_side, max(rgb.size))
        size = working_size(rgb.size, side)
        sources[i] = rgb if size == rgb.size else rgb.resize(size, Image.Resampling.BICUBIC)
    todo = [i for i in range(len(images)) if results[i] is None]
    keys = [s.size if s is not None else None for s in sources]
    pipe = load_pipeline(params.edit_model, "instruct_pix2pix", device=params.device, dtype=params.dtype,
                         allow_download=params.allow_download) if todo else None  # fmt: skip
    for chunk in _chunks(todo, keys, params.batch_size):
        pixels = run_pipeline(pipe, [prompts[i] for i in chunk], [seeds[i] for i in chunk],
                              images=[sources[i] for i in chunk], steps=params.steps, **params.edit_kwargs)  # fmt: skip
        for i, out in zip(chunk, pixels):
            edited = verify_edit(sources[i], out, params, what=f"edit of image {i}")
            if isinstance(edited, SkipItem):
                results[i] = edited
                continue
            if edited.size != images[i].size:
                edited = edited.resize(images[i].size, Image.Resampling.BICUBIC)
            results[i] = (edited, list(ops[i]))
    return results


def verify_edit(source: Image.Image, pixels: np.ndarray | Image.Image, params: DiffusionParams,
                what: str = "edit") -> Image.Image | SkipItem:  # fmt: skip
    """The edited image if the editor's output `pixels` (floats in [0, 1], or an image) is a usable local edit of
    `source`, else a `SkipItem`: `bad_image`, `edit_too_small` or `edit_too_large` (module docstring). The
    output is compared at `source`'s size (resized first if the pipeline rounded it differently)."""
    arr = np.asarray(pixels)
    defect = image_defect(arr)
    if defect:
        return SkipItem("bad_image", f"{what}: {defect}")
    edited = to_pil(arr.astype(np.float32) / 255 if arr.dtype == np.uint8 else arr)
    if edited.size != source.size:  # a pipeline may round the size its own way
        edited = edited.resize(source.size, Image.Resampling.BICUBIC)
    area = changed_fraction(source.convert("RGB"), edited, params.change_threshold)
    if area < params.min_changed_area:
        return SkipItem("edit_too_small", f"{what} changed {area:.4f} of the pixels, below "
                                          f"min_changed_area={params.min_changed_area}")  # fmt: skip
    if area > params.max_changed_area:
        return SkipItem("edit_too_large", f"{what} changed {area:.4f} of the pixels, above "
                                          f"max_changed_area={params.max_changed_area}")  # fmt: skip
    return edited


# -- Stage 1: renderings of captions ------------------------------------------------------------------------


def diffusion_render_captions(
    captions: list[str], rngs: list[np.random.Generator], params: DiffusionParams
) -> list[Image.Image | SkipItem]:
    """Render each caption with the text-to-image pipeline (one noise seed drawn from its rng), in batched calls
    of `batch_size`: an RGB image, or a `SkipItem` (`empty_caption`, `bad_image`)."""
    _check_pairs("captions", captions, rngs)
    results: list[Any] = [None] * len(captions)
    seeds = [seed_from(rng) for rng in rngs]
    for i, caption in enumerate(captions):
        if not str(caption).strip():
            results[i] = SkipItem("empty_caption", f"caption {i} is blank: nothing to render")
    todo = [i for i in range(len(captions)) if results[i] is None]
    size = (params.size, params.size) if params.t2i_model == "tiny" else None
    pipe = load_pipeline(params.t2i_model, "text2image", device=params.device, dtype=params.dtype,
                         allow_download=params.allow_download) if todo else None  # fmt: skip
    for chunk in _chunks(todo, [0] * len(captions), params.batch_size):
        pixels = run_pipeline(pipe, [str(captions[i]) for i in chunk], [seeds[i] for i in chunk],
                              steps=params.steps, size=size, **params.t2i_kwargs)  # fmt: skip
        for i, out in zip(chunk, pixels):
            defect = image_defect(out)
            results[i] = SkipItem("bad_image", f"rendering of caption {i}: {defect}") if defect else to_pil(out)
    return results


def skip_counts(results: Sequence[Any]) -> dict[str, int]:
    """How many results are `SkipItem`s, by reason (for the generation loop's counters)."""
    return dict(Counter(r.reason for r in results if isinstance(r, SkipItem)))


# -- Stage 1: the critic -----------------------------------------------------------------------------------

CRITIC_PROMPT = (
    "The first image is a real photo. The second image was generated from the description below and nothing "
    "else.\nDescription: {caption}\n"
    "List every concrete way in which the description is wrong about the first image or leaves out something "
    "visible in it: objects, colours, materials, counts, visible text and where things are. Ignore the drawing "
    "style of the second image. Write one correction per line, each a complete sentence."
)
"""The critique prompt (../specs/viper.md §4, our words)."""


def parse_corrections(reply: str) -> list[str]:
    """The correction sentences of a critic reply: one per line, list markers (`-`, `*`, `1.`, `2)`) and
    `<answer>` / `<think>` tags removed, the `<think>` span dropped, empty lines skipped."""
    text = re.sub(r"<think>.*?</think>", " ", reply, flags=re.S)
    text = re.sub(r"</?answer>", "\n", text)
    lines = (re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip() for line in text.splitlines())
    return [line for line in lines if line]


def same_normalised(a: str, b: str) -> bool:
    """The default agreement test: equal after lower-casing and dropping punctuation and extra spaces. The
    reward's sentence matcher (embedding similarity with slot checks) plugs in through `same`."""

    def norm(s: str) -> str:
        return " ".join(re.sub(r"[^\w\s]", " ", s.lower()).split())

    return norm(a) == norm(b)


def agreed_corrections(first: Sequence[str], second: Sequence[str], same: Callable[[str, str], bool]) -> list[str]:
    """The corrections of `first` that `second` reproduces: each s in `first` (in order, repeats of an earlier
    kept one dropped) is kept when some unused t in `second` has same(s, t); each t vouches for one s only."""
    used = [False] * len(second)
    kept: list[str] = []
    for s in first:
        if any(same(s, k) for k in kept):
            continue
        for j, t in enumerate(second):
            if not used[j] and same(s, t):
                used[j] = True
                kept.append(s)
                break
    return kept


def critic_corrections(
    images: list[Image.Image],
    renders: list[Image.Image | SkipItem],
    captions: list[str],
    rngs: list[np.random.Generator],
    params: DiffusionParams,
    engine: Any,
    *,
    same: Callable[[str, str], bool] = same_normalised,
    processor: Any = None,
    model_config: Any = None,
) -> list[list[str] | SkipItem]:
    """The ground-truth corrections R of each (photo, rendering, caption): the critic (the policy, run by
    `engine`) samples two critiques (`CRITIC_PROMPT`); a correction is kept only when the second sample
    reproduces it (`agreed_corrections` with `same`), which filters generator artefacts that one sample
    imagines (../specs/viper.md §3). Empty R -> `SkipItem("no_corrections")`; a rendering that is a SkipItem
    is passed through.

    All prompts go to the engine in one call; its sampling seed is derived from one draw of every rng, so the
    result is deterministic given the rngs. `processor` defaults to `engine.processor`, `model_config` (pixel
    budgets) to `mmrl.config.ModelConfig()`."""
    from mmrl.config import ModelConfig
    from mmrl.contracts import SamplingParams
    from mmrl.rollout.encode import encode_prompt

    _check_pairs("images", images, rngs)
    if not len(renders) == len(captions) == len(images):
        raise ValueError(f"{len(images)} images, {len(renders)} renders and {len(captions)} captions do not pair up")
    processor = processor if processor is not None else engine.processor
    model_config = model_config if model_config is not None else ModelConfig()
    seeds = [seed_from(rng) for rng in rngs]
    results: list[Any] = [r if isinstance(r, SkipItem) else None for r in renders]
    todo = [i for i in range(len(images)) if results[i] is None]
    if not todo:
        return results
    prompts = []
    for i in todo:
        content = [{"type": "image", "image": images[i].convert("RGB")},
                   {"type": "image", "image": renders[i].convert("RGB")},
                   {"type": "text", "text": CRITIC_PROMPT.format(caption=captions[i])}]  # fmt: skip
        prompts.append(encode_prompt(processor, [{"role": "user", "content": content}], model_config,
                                     max_prompt_tokens=params.critic_max_prompt_tokens, keep_media=True))  # fmt: skip
    seed = int(np.random.SeedSequence(seeds).generate_state(1, np.uint64)[0] % 2**62)
    sampling = SamplingParams(max_new_tokens=params.critic_max_new_tokens, temperature=params.critic_temperature,
                              seed=seed)  # fmt: skip
    replies = engine.generate(prompts, 2, sampling)
    for i, (a, b) in zip(todo, replies):
        kept = agreed_corrections(parse_corrections(a.text), parse_corrections(b.text), same)
        results[i] = kept or SkipItem("no_corrections", f"item {i}: the two critic samples agree on no correction")
    return results


__all__ = [
    "COLOURS",
    "CRITIC_PROMPT",
    "OBJECTS",
    "OPERATIONS",
    "REGIONS",
    "DiffusionParams",
    "agreed_corrections",
    "critic_corrections",
    "diffusion_edit_pairs",
    "diffusion_render_captions",
    "edit_instructions",
    "parse_corrections",
    "same_normalised",
    "skip_counts",
    "verify_edit",
    "working_size",
]
