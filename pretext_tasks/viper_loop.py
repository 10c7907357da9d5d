"""ViPER's closed loop (Zhang et al. 2025, arXiv 2510.24285; ../specs/viper.md §3; docs/viper.md): the policy
writes the captions of Stage 1 itself, so that model and data co-evolve.

`caption_refine` with `captioner: policy` builds its pool of Samples with the current policy weights:

    policy (caption role)  ->  C_g                      one sampled caption per image (`CAPTION_PROMPT`)
    generator              ->  Î rendered from C_g       procedural: C_g parsed into a caption graph
                                                         (`parse_caption`, `align`), drawn with open3d;
                                                         diffusers: `diffusion_render_captions`
    corrections R          ->  procedural: the scene-graph diff (`caption_graph.compare`), exact
                               diffusers: the policy as critic, two samples, a correction kept when the
                               second sample repeats it (`critic_corrections`, agreement at τ through the
                               statement reward's matcher, `statement_matcher`)
    keep (I, C_g, R) when R is non-empty; empty R is dropped and counted

The parser reads the vocabulary of the procedural captioner (sizes, colours, shapes, "there are N objects",
"the X is to the left/right of the Y"); whatever it cannot read is not rendered (the generator only draws what
it understood) and counted (`unparsed_sentences`). Parsed objects are matched to the scene's true objects by a
maximum-agreement assignment (`align`); a described object without a match is invented, a true object without
one is missed, an attribute the caption leaves out becomes a `detail` correction ("The red cube is small.").

When the pool is (re)built is the producer's business (`mmrl.dataserver.closed_loop`): every `refresh_every`
steps from the start of the source's `steps` window (the stage boundary). The pool's entries are plain JSON
(scene seed or photo name, the policy's caption, its graph, the corrections): images are drawn again from
their seed, so the pool goes into the producer's checkpoint state and a resumed run serves the same pool.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from mmrl.contracts import SamplingParams
from mmrl.dataserver.closed_loop import PolicyRoles
from mmrl.errors import MMRLError, SkipItem
from mmrl.scenes import COLORS, SHAPES, SIZES, Scene
from pretext_tasks.caption_graph import CaptionGraph, caption_scene, compare
from pretext_tasks.viper_scenes import check_image, draw_scene, number_word

if TYPE_CHECKING:
    from pretext_tasks.caption_refine import CaptionRefineParams

CAPTION_PROMPT = (
    "Describe this picture in detail. First say how many objects there are, then name every object by its size, "
    "colour and shape, and say which objects stand to the left or to the right of which."
)
"""The caption role for procedural scenes (../specs/viper.md §4 "Caption", our words): the scene's vocabulary."""
PHOTO_CAPTION_PROMPT = (
    "Describe this photo in detail: the objects in it, their colours, materials and how many there are, any text "
    "you can read, and where things are relative to each other."
)
"""The caption role for photos (../specs/viper.md §4 "Caption", our words)."""

_NUMBERS = {number_word(n): n for n in range(13)}
_PLURALS = {"cube": ("cubes",), "sphere": ("spheres",), "cylinder": ("cylinders",), "cone": ("cones",),
            "torus": ("tori", "toruses")}  # fmt: skip
_NOUNS = {form: shape for shape in SHAPES for form in (shape, *_PLURALS.get(shape, ()))}
_ADJECTIVE = "|".join(sorted([*SIZES, *COLORS], key=len, reverse=True))
_PHRASE = re.compile(
    rf"(?:\b(?P<det>an?|the|\d+|{'|'.join(_NUMBERS)})\s+)?"
    rf"(?P<adjs>(?:\b(?:{_ADJECTIVE})\s+){{0,3}})"
    rf"\b(?P<noun>{'|'.join(sorted(_NOUNS, key=len, reverse=True))})\b",
    re.I,
)
_COUNT = re.compile(rf"\bthere\s+(?:is|are)\s+(?P<n>\d+|{'|'.join(_NUMBERS)})\s+objects?\b", re.I)
_RELATION = re.compile(r"^(?P<a>.*?)\b(?:is|are)\s+(?:to\s+the\s+|on\s+the\s+)?(?P<side>left|right)\s+of\b(?P<b>.*)$",
                       re.I | re.S)  # fmt: skip
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


# --------------------------------------------------------------------------------------------------
# Reading a caption


@dataclass
class ParsedCaption:
    """What the parser understood of a caption, before it is matched to a scene."""

    objects: list[dict[str, Any]] = field(default_factory=list)
    """`{"size": str | None, "color": str | None, "shape": str}` in order of first mention."""
    count: int | None = None
    """The number of objects the caption states (its first "there are N objects"), None when it states none."""
    relations: list[tuple[int, int, str]] = field(default_factory=list)
    """(object index a, object index b, "left" | "right"): "the a is to the left/right of the b"."""
    unparsed: list[str] = field(default_factory=list)
    """Sentences the parser found nothing in (not rendered, not corrected)."""


def _phrase_object(match: re.Match) -> dict[str, Any]:
    size = color = None
    for word in match.group("adjs").lower().split():
        if word in SIZES:
            size = word
        else:
            color = word
    return {"size": size, "color": color, "shape": _NOUNS[match.group("noun").lower()]}


def _multiplicity(match: re.Match) -> int:
    """How many objects a phrase introduces: "two red cubes" -> 2, "a cube" -> 1."""
    det = (match.group("det") or "").lower()
    n = int(det) if det.isdigit() else _NUMBERS.get(det, 1)
    return max(1, min(n, 12)) if match.group("noun").lower() != _NOUNS[match.group("noun").lower()] else 1


def _find(objects: list[dict[str, Any]], o: dict[str, Any]) -> int | None:
    """The first described object `o` can refer to: same shape, every attribute `o` states the same."""
    for i, d in enumerate(objects):
        if d["shape"] == o["shape"] and all(o[k] is None or o[k] == d[k] for k in ("size", "color")):
            return i
    return None


def parse_caption(text: str) -> ParsedCaption:
    """Read a caption with the procedural captioner's vocabulary (`mmrl.scenes` sizes, colours, shapes).

    Per sentence: "the X is to the left/right of the Y" is a relation (X and Y resolved to described objects,
    added when new); "there is/are N objects" states the count; every other object phrase is an object, new
    unless it starts with "the" and names one already described; "two red cubes" is two objects. A sentence
    without any of these is kept in `unparsed`."""
    out = ParsedCaption()
    for sentence in (s.strip() for s in _SENTENCE_END.split(text)):
        if not sentence:
            continue
        relation = _RELATION.match(sentence)
        ends = []
        if relation:
            ends = [next(_PHRASE.finditer(relation.group(k)), None) for k in ("a", "b")]
        if relation and all(ends):
            ids = []
            for m in ends:
                o = _phrase_object(m)
                found = _find(out.objects, o)
                if found is None:
                    out.objects.append(o)
                    found = len(out.objects) - 1
                ids.append(found)
            if ids[0] != ids[1]:
                out.relations.append((ids[0], ids[1], relation.group("side").lower()))
            continue
        understood = False
        count = _COUNT.search(sentence)
        if count:
            n = count.group("n").lower()
            if out.count is None:
                out.count = int(n) if n.isdigit() else _NUMBERS[n]
            sentence = sentence[count.end() :]
            understood = True
        for m in _PHRASE.finditer(sentence):
            understood = True
            o = _phrase_object(m)
            if (m.group("det") or "").lower() == "the" and _find(out.objects, o) is not None:
                continue
            out.objects += [dict(o) for _ in range(_multiplicity(m))]
        if not understood:
            out.unparsed.append(sentence)
    return out


def align(parsed: ParsedCaption, scene: Scene) -> CaptionGraph:
    """The caption graph of `parsed` against `scene`: each described object is matched to at most one true object
    (`ref`) by a maximum-agreement assignment (score 3·agree − 2·disagree over the attributes the caption
    states; a pair counts only with more agreeing than disagreeing attributes and at most one disagreeing);
    unmatched described objects are invented (`ref` None). Relations between two matched objects are kept (in
    refs); a relation with an invented end cannot be checked and is dropped."""
    from scipy.optimize import linear_sum_assignment

    truth = list(scene.objects)
    objects = [{"ref": None, **o} for o in parsed.objects]
    if objects and truth:
        score = np.full((len(objects), len(truth)), -1e6)
        for i, o in enumerate(objects):
            for j, t in enumerate(truth):
                said = [(o[k], getattr(t, k)) for k in ("size", "color", "shape") if o[k] is not None]
                agree = sum(a == b for a, b in said)
                disagree = len(said) - agree
                if agree > disagree and disagree <= 1:
                    score[i, j] = 3 * agree - 2 * disagree
        rows, cols = linear_sum_assignment(score, maximize=True)
        for i, j in zip(rows, cols):
            if score[i, j] > 0:
                objects[int(i)]["ref"] = truth[int(j)].id
    relations = [{"a": objects[a]["ref"], "b": objects[b]["ref"], "side": side} for a, b, side in parsed.relations
                 if objects[a]["ref"] is not None and objects[b]["ref"] is not None]  # fmt: skip
    return CaptionGraph(objects, parsed.count, relations)


def drawable(graph: CaptionGraph, params: CaptionRefineParams) -> CaptionGraph:
    """`graph` with every unstated size or colour set to what a generator draws when told nothing (the middle
    size, the first colour of the vocabulary), for `caption_scene`."""
    sizes = list(params.sizes)
    default = {"size": "medium" if "medium" in sizes else sizes[0], "color": params.colors[0]}
    filled = CaptionGraph.from_dict(graph.to_dict())
    for o in filled.objects:
        for k, v in default.items():
            o[k] = o[k] if o[k] is not None else v
    return filled


def caption_reply(text: str) -> str:
    """The caption in a policy's reply: think blocks dropped, answer tags removed, lines joined."""
    text = re.sub(r"<think>.*?</think>", " ", text, flags=re.S)
    text = re.sub(r"</?(?:answer|think)>", "\n", text)
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


# --------------------------------------------------------------------------------------------------
# Building the pool


def _caption_prompts(images: Sequence[Image.Image], prompt: str, roles: PolicyRoles) -> list[Any]:
    from mmrl.rollout.encode import encode_prompt

    return [
        encode_prompt(
            roles.processor,
            [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": prompt}]}],
            roles.model_config,
            max_prompt_tokens=roles.max_prompt_tokens,
        )  # fmt: skip
        for image in images
    ]


def policy_captions(images: Sequence[Image.Image], prompt: str, params: CaptionRefineParams, roles: PolicyRoles,
                    seed: int) -> list[str]:  # fmt: skip
    """One caption per image, sampled from the policy in one engine call with sampling seed `seed`."""
    if not images:
        return []
    sampling = SamplingParams(max_new_tokens=params.caption_max_new_tokens, temperature=params.caption_temperature,
                              seed=seed)  # fmt: skip
    replies = roles.engine.generate(_caption_prompts(images, prompt, roles), 1, sampling)
    return [caption_reply(group[0].text) for group in replies]


def loop_image(params: CaptionRefineParams, where: dict[str, Any]) -> tuple[Image.Image, Scene | None]:
    """The image of a pool entry: the procedural scene of `where["scene_seed"]` or the scikit-image photo
    `where["photo"]` (scaled to at most `params.width` on its longer side)."""
    if "photo" in where:
        return photo(str(where["photo"]), max(params.width, params.height)), None
    from mmrl.scene_render import render  # open3d: only when scenes are drawn

    scene = draw_scene(params, int(where["scene_seed"]))
    return check_image(render(scene).rgb, "scene image", params.min_image_std), scene


def photo(name: str, longest: int) -> Image.Image:
    """A photo that ships with scikit-image (`mmrl.corpus.SKIMAGE_PHOTOS`), RGB, longer side at most `longest`."""
    import skimage

    from mmrl.corpus import SKIMAGE_PHOTOS
    from mmrl.media import load_image

    if name not in SKIMAGE_PHOTOS:
        raise MMRLError(f"photo {name!r} is not one of scikit-image's photos: {', '.join(SKIMAGE_PHOTOS)}")
    image = load_image(Path(skimage.__file__).parent / "data" / name).convert("RGB")
    scale = longest / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS)  # fmt: skip
    return image


def statement_matcher(reward: dict[str, Any]) -> Callable[[str, str], bool]:
    """`same(a, b)`: whether the statement reward counts sentence a as a match of sentence b (cosine above τ and,
    with the slot check, agreeing numbers, colours and sides): `rewards.statements.match_statements` with
    `StatementRewardParams(**reward)` and the process's embedder. The critic's two-sample agreement uses it."""
    from rewards.embedding import default_embedder
    from rewards.statements import StatementRewardParams, match_statements

    params, embed = StatementRewardParams(**reward), default_embedder()

    def same(a: str, b: str) -> bool:
        vectors = embed([a, b])
        return bool(match_statements([a], vectors[:1], [b], vectors[1:], params))

    return same


def build_pool(params: CaptionRefineParams, roles: PolicyRoles, seed_key: Sequence[int]) -> tuple[list[dict], Counter]:
    """The closed loop's Stage-1 pool: `params.pool_size` images captioned by the policy, each with its
    corrections; an image whose corrections are empty is dropped (`no_corrections`), an unusable image or
    rendering is skipped by its reason. Every draw follows `np.random.default_rng(seed_key)`; the engine's
    replies follow the sampling seeds drawn from it, so the same weights and key give the same pool.

    Returns (entries, counts): entries are JSON-able dicts (`where`: scene seed or photo name; `caption`; for
    scenes `caption_graph`, `unparsed`; `corrections`: `{"kind", "text", ...}` dicts; `render_seed`), counts
    has `built`, `kept`, `no_corrections`, `unparsed_sentences`, `captioned` and the skip reasons."""
    rng = np.random.default_rng(list(seed_key))
    counts: Counter = Counter()
    photos = params.loop_images == "photos"
    if photos:
        from mmrl.corpus import SKIMAGE_PHOTOS

        wheres = [{"photo": SKIMAGE_PHOTOS[int(i)]} for i in rng.integers(len(SKIMAGE_PHOTOS), size=params.pool_size)]
    else:
        wheres = [{"scene_seed": int(s)} for s in rng.integers(2**63, size=params.pool_size)]
    render_seeds = [int(s) for s in rng.integers(2**62, size=params.pool_size)]
    caption_seed, critic_seed = (int(s) for s in rng.integers(2**31, size=2))
    counts["built"] = len(wheres)
    items = []
    for where, render_seed in zip(wheres, render_seeds):
        try:
            image, scene = loop_image(params, where)
        except SkipItem as e:
            counts[e.reason] += 1
            continue
        items.append((where, render_seed, image, scene))
    prompt = PHOTO_CAPTION_PROMPT if photos else CAPTION_PROMPT
    captions = policy_captions([image for _, _, image, _ in items], prompt, params, roles, caption_seed)
    counts["captioned"] = len(captions)
    if params.backend == "diffusers":
        entries = _critic_entries(items, captions, params, roles, critic_seed, counts)
    else:
        entries = []
        for (where, render_seed, _, scene), caption in zip(items, captions):
            parsed = parse_caption(caption)
            graph = align(parsed, scene)
            counts["unparsed_sentences"] += len(parsed.unparsed)
            corrections = compare(scene, graph)
            if not corrections:
                counts["no_corrections"] += 1
                continue
            entries.append({"where": where, "caption": caption, "caption_graph": graph.to_dict(),
                            "unparsed": parsed.unparsed, "corrections": corrections,
                            "render_seed": render_seed})  # fmt: skip
    counts["kept"] = len(entries)
    return entries, counts


def _critic_entries(items: list[tuple], captions: list[str], params: CaptionRefineParams, roles: PolicyRoles,
                    critic_seed: int, counts: Counter) -> list[dict]:  # fmt: skip
    """Diffusers backend: render each caption, let the policy criticise (image, rendering, caption) twice and keep
    the corrections both samples state."""
    from pretext_tasks.viper_diffusion import DiffusionParams, critic_corrections, diffusion_render_captions

    dp = DiffusionParams(**params.diffusion)
    renders = diffusion_render_captions(captions, [np.random.default_rng(s) for _, s, _, _ in items], dp)
    critic_rngs = [np.random.default_rng([critic_seed, k]) for k in range(len(items))]
    results = critic_corrections([image for _, _, image, _ in items], renders, captions, critic_rngs, dp,
                                 roles.engine, same=statement_matcher(params.reward), processor=roles.processor,
                                 model_config=roles.model_config)  # fmt: skip
    entries = []
    for (where, render_seed, _, _), caption, result in zip(items, captions, results):
        if isinstance(result, SkipItem):
            counts["no_corrections" if result.reason == "no_corrections" else result.reason] += 1
            continue
        corrections = [{"kind": "critic", "text": text} for text in result]
        entries.append({"where": where, "caption": caption, "corrections": corrections, "render_seed": render_seed})
    return entries


def pool_rendering(params: CaptionRefineParams, entry: dict[str, Any]) -> tuple[Image.Image, dict[str, Any]]:
    """The generator's picture of an entry's caption (drawn again, deterministically) and the meta it adds:
    procedural: the open3d row of its caption graph (`caption_scene`); diffusers: the text-to-image rendering
    with the entry's `render_seed`."""
    if params.backend == "diffusers":
        from pretext_tasks.viper_diffusion import DiffusionParams, diffusion_render_captions

        (rendering,) = diffusion_render_captions([entry["caption"]], [np.random.default_rng(entry["render_seed"])],
                                                 DiffusionParams(**params.diffusion))  # fmt: skip
        if isinstance(rendering, SkipItem):
            raise rendering
        return check_image(rendering, "caption rendering", params.min_image_std), {}
    from mmrl.scene_render import render

    drawn = caption_scene(drawable(CaptionGraph.from_dict(entry["caption_graph"]), params), params.width,
                          params.height)  # fmt: skip
    if not drawn.objects:
        raise SkipItem("blank_render", "the policy's caption names no object the generator can draw")
    return check_image(render(drawn).rgb, "caption rendering", params.min_image_std), {
        "caption_scene": drawn.to_graph()
    }


def pool_sample_parts(
    params: CaptionRefineParams, entry: dict[str, Any]
) -> tuple[Image.Image, Image.Image | None, dict[str, Any]]:
    """What a Sample of pool entry `entry` shows and records: its image (drawn again from its scene seed, or its
    photo), the rendering of its caption when `show_rendering`, and its meta (`captioner: policy`, the caption,
    the corrections, where the image comes from; for scenes the scene graph, the caption graph and the caption's
    drawn scene, which the preview renders)."""
    image, scene = loop_image(params, entry["where"])
    rendering, meta = pool_rendering(params, entry) if params.show_rendering else (None, {})
    corrections = entry["corrections"]
    meta |= {"image_size": list(image.size), "caption": entry["caption"], "corrections": corrections,
             "split": "+".join(sorted({c["kind"] for c in corrections})), "captioner": "policy",
             "where": dict(entry["where"])}  # fmt: skip
    if scene is not None:
        meta["scene"], meta["seed"] = scene.to_graph(), int(entry["where"]["scene_seed"])
    if "caption_graph" in entry:
        meta["caption_graph"] = entry["caption_graph"]
        if "caption_scene" not in meta:
            graph = drawable(CaptionGraph.from_dict(entry["caption_graph"]), params)
            meta["caption_scene"] = caption_scene(graph, params.width, params.height).to_graph()
    return image, rendering, meta


__all__ = [
    "CAPTION_PROMPT",
    "PHOTO_CAPTION_PROMPT",
    "ParsedCaption",
    "align",
    "build_pool",
    "caption_reply",
    "drawable",
    "loop_image",
    "parse_caption",
    "photo",
    "policy_captions",
    "pool_rendering",
    "pool_sample_parts",
    "statement_matcher",
]
