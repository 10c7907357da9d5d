"""Tiny random-init Qwen-VL checkpoints built locally: `build_tiny` makes a complete checkpoint folder
of one Qwen-VL family (a byte-level BPE tokenizer trained on our own text, our own chat template with
Qwen's token layout, random weights, the family's processor) in seconds and without network, so every
code path (training, sampling, evaluation) runs on CPU against the real transformers classes.
`mmrl.models` loads the result like any checkpoint and builds `tiny:<family>` on first use.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mmrl.errors import MMRLError
from mmrl.models import distributed_rank, set_video_budget

FAMILIES = ("qwen2-vl", "qwen2.5-vl", "qwen3-vl")

# Qwen's control tokens, in Qwen's id order (they follow the BPE vocabulary, as in the real models).
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip
THINK_TOKENS = ["<think>", "</think>"]  # plain added tokens (qwen3-vl): they survive skip_special_tokens

# Our own template with Qwen's token layout. `default_system` is an optional template variable.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message.role != 'system' and default_system is defined and default_system -%}"
    "{{ '<|im_start|>system\\n' + default_system + '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{{ '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string -%}{{ message.content }}"
    "{%- else -%}{%- for item in message.content -%}"
    "{%- if item.type == 'text' -%}{{ item.text }}"
    "{%- elif item.type == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item.type == 'video' -%}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


@dataclass
class TinySpec:
    """Sizes of a tiny model; the defaults build in seconds and sample fast on CPU."""

    vocab_size: int = 2048
    """Target size of the trained BPE vocabulary (the corpus may yield a little fewer)."""
    hidden_size: int = 64
    """Text model width; also the vision merger's output width."""
    intermediate_size: int = 128
    """Text MLP width."""
    num_layers: int = 2
    """Text decoder layers."""
    num_heads: int = 4
    """Text attention heads; head_dim = hidden_size / num_heads (M-RoPE splits head_dim/2 into t, h, w)."""
    num_kv_heads: int = 2
    """Text key/value heads (grouped-query attention)."""
    vision_hidden_size: int = 32
    """Vision tower width."""
    vision_intermediate_size: int = 64
    """Vision MLP width (qwen2-vl: rounded down to a multiple of vision_hidden_size)."""
    vision_depth: int = 2
    """Vision tower blocks."""
    vision_heads: int = 2
    """Vision attention heads."""


def parse_spec(pairs: list[str]) -> TinySpec:
    """A `TinySpec` from `key=value` strings (`["hidden_size=128", "num_layers=4"]`), the rest at their defaults.

    >>> parse_spec(["hidden_size=128"]).hidden_size
    128
    """
    fields = {f.name for f in dataclasses.fields(TinySpec)}
    values: dict[str, int] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in fields:
            raise MMRLError(f"tiny spec '{pair}': expected key=value with key one of {', '.join(sorted(fields))}")
        try:
            values[key] = int(value)
        except ValueError:
            raise MMRLError(f"tiny spec '{pair}': {key} must be a positive integer") from None
        if values[key] < 1:
            raise MMRLError(f"tiny spec '{pair}': {key} must be a positive integer")
    spec = TinySpec(**values)
    if spec.hidden_size % spec.num_heads or spec.num_heads % spec.num_kv_heads:
        raise MMRLError(f"tiny spec: hidden_size ({spec.hidden_size}) must divide by num_heads ({spec.num_heads}), "
                        f"and num_heads by num_kv_heads ({spec.num_kv_heads})")  # fmt: skip
    if spec.vision_hidden_size % spec.vision_heads:
        raise MMRLError(f"tiny spec: vision_hidden_size ({spec.vision_hidden_size}) must divide by vision_heads "
                        f"({spec.vision_heads})")  # fmt: skip
    return spec


TINY_MARKER = "mmrl_tiny.json"
"""File in every tiny build (family, seed, sizes): tells a folder that a rebuild may replace."""


def build_tiny(
    family: str, out_dir: str | Path, *, seed: int = 0, spec: TinySpec | None = None, overwrite: bool = False
) -> Path:
    """Build a random-init checkpoint of `family` into `out_dir` and return its path.

    Entirely local and takes about a second: a BPE tokenizer trained on `_corpus(seed)`, our chat
    template, a `spec`-sized model and the family's processor. Same seed, byte-identical files.
    `out_dir` must be missing, empty or an earlier tiny build (it is then replaced); any other
    folder is refused unless `overwrite`, because the build replaces the whole folder.
    """
    from transformers import GenerationConfig

    if family not in FAMILIES:
        raise MMRLError(f"unknown model family '{family}'; valid families: {', '.join(FAMILIES)}")
    spec = spec or TinySpec()
    out = Path(out_dir).expanduser()
    _check_replaceable(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(family, spec.vocab_size, seed)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    config = _model_config(family, spec, len(tokenizer), ids)
    model_cls, processor = _family_classes(family, tokenizer)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state untouched
        torch.manual_seed(seed)
        model = model_cls(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    )
    # Build next to the target, then rename: a killed build never leaves a folder that looks complete.
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        marker = {"family": family, "seed": seed, "spec": dataclasses.asdict(spec)}
        (tmp / TINY_MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        if not (tmp / "config.json").exists():  # transformers skips the write on a rank other than 0
            raise MMRLError(f"building {out} on distributed rank {distributed_rank()}: only rank 0 can save models")
        if out.exists():  # replace an older build: move it aside first so `out` is never half-written
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / "x")
            shutil.rmtree(old)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check_replaceable(out: Path, overwrite: bool) -> None:
    """Refuse to replace a file, or a folder holding anything but an earlier tiny build, unless `overwrite`."""
    if out.is_file() or (out.exists() and not out.is_dir()):
        raise MMRLError(f"{out} exists and is not a folder; choose a folder for the tiny model")
    if overwrite or not out.is_dir() or (out / TINY_MARKER).is_file():
        return
    entries = sorted(p.name for p in out.iterdir())
    if entries:
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise MMRLError(
            f"{out} is not empty ({len(entries)} entries: {shown}) and holds no earlier tiny build; building "
            "there would delete them: choose an empty or new folder, or pass --overwrite to replace it"
        )


# --------------------------------------------------------------------------------------------------
# Tiny build internals


def _family_classes(family: str, tokenizer):
    """(model class, processor) of a family, with small default pixel budgets."""
    import transformers as tf

    qwen3 = family == "qwen3-vl"
    patch = 16 if qwen3 else 14
    norm = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3} if qwen3 else {}
    factor = patch * 2
    image_processor = tf.Qwen2VLImageProcessor(
        size={"shortest_edge": 4 * factor**2, "longest_edge": 256 * factor**2}, patch_size=patch, **norm
    )
    video_cls = tf.Qwen3VLVideoProcessor if qwen3 else tf.Qwen2VLVideoProcessor
    video_processor = video_cls(patch_size=patch, **norm)
    set_video_budget(video_processor, 4 * factor**2, 64 * factor**2, fps=2.0, max_frames=16)
    model_cls, processor_cls = {
        "qwen2-vl": (tf.Qwen2VLForConditionalGeneration, tf.Qwen2VLProcessor),
        "qwen2.5-vl": (tf.Qwen2_5_VLForConditionalGeneration, tf.Qwen2_5_VLProcessor),
        "qwen3-vl": (tf.Qwen3VLForConditionalGeneration, tf.Qwen3VLProcessor),
    }[family]
    processor = processor_cls(image_processor, tokenizer, video_processor, chat_template=CHAT_TEMPLATE)
    return model_cls, processor


def _model_config(family: str, s: TinySpec, vocab_size: int, ids: dict[str, int]):
    import transformers as tf

    head_dim = s.hidden_size // s.num_heads
    half = head_dim // 2  # M-RoPE splits head_dim/2 rotary frequencies into (t, h, w) sections
    hw = (5 * half // 16) if family == "qwen3-vl" else (3 * half // 8)  # Qwen's proportions
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [half - 2 * hw, hw, hw]}
    text = dict(
        vocab_size=vocab_size, hidden_size=s.hidden_size, intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_layers, num_attention_heads=s.num_heads, num_key_value_heads=s.num_kv_heads,
        max_position_embeddings=32768, rope_parameters=rope, pad_token_id=ids["<|endoftext|>"],
    )  # fmt: skip
    vision = dict(depth=s.vision_depth, num_heads=s.vision_heads, patch_size=14, spatial_merge_size=2)
    tokens = dict(
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )  # fmt: skip
    eos = dict(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"])
    if family == "qwen2-vl":
        vision.update(embed_dim=s.vision_hidden_size, hidden_size=s.hidden_size,
                      mlp_ratio=s.vision_intermediate_size // s.vision_hidden_size)  # fmt: skip
        return tf.Qwen2VLConfig(text_config={**text, **eos}, vision_config=vision, **tokens)
    vision.update(hidden_size=s.vision_hidden_size, intermediate_size=s.vision_intermediate_size)
    vision.update(out_hidden_size=s.hidden_size)
    if family == "qwen2.5-vl":
        vision.update(fullatt_block_indexes=[s.vision_depth - 1], window_size=112, tokens_per_second=2)
        return tf.Qwen2_5_VLConfig(text_config={**text, **eos}, vision_config=vision, **tokens)
    rope.update(rope_theta=5e6, mrope_interleaved=True)
    vision.update(patch_size=16, num_position_embeddings=576, deepstack_visual_indexes=[0])
    return tf.Qwen3VLConfig(text_config={**text, "head_dim": head_dim}, vision_config=vision, **tokens)


def _build_tokenizer(family: str, vocab_size: int, seed: int):
    """Byte-level BPE trained on `_corpus`, wrapped as transformers' Qwen2Tokenizer."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # Same normalizer/pre-tokenizer as Qwen2Tokenizer so the trained merges mean the same thing there.
    bpe = Tokenizer(BPE())
    bpe.normalizer = normalizers.NFC()
    split = pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe.pre_tokenizer = pre_tokenizers.Sequence([split, byte_level])
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, show_progress=False, initial_alphabet=alphabet
    )
    bpe.train_from_iterator(_corpus(seed), trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    for token in SPECIAL_TOKENS + (THINK_TOKENS if family == "qwen3-vl" else []):
        vocab[token] = len(vocab)  # control tokens follow the BPE ids, as in Qwen's vocabularies
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(m) for m in model["merges"]],
        eos_token="<|im_end|>",  # chat models end a turn with <|im_end|>: generation stops there
        pad_token="<|endoftext|>",
        extra_special_tokens=SPECIAL_TOKENS[1:],
        model_max_length=32768,
    )
    if family == "qwen3-vl":
        tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    return tokenizer


# --------------------------------------------------------------------------------------------------
# Tokenizer corpus: deterministic text typical of visual-task prompts and answers


_COLOURS = "red green blue yellow orange purple pink brown black white gray grey cyan magenta gold silver".split()
_SHAPES = "circle square triangle rectangle star hexagon ellipse cube sphere cylinder cone pyramid ring arrow".split()
_OBJECTS = (
    "car dog cat person man woman child chair table cup box ball tree house bird book bottle lamp door window plant "
    "bicycle bus truck train boat plane horse cow sheep phone laptop keyboard mouse screen clock vase bowl plate "
    "knife fork spoon apple banana orange sandwich pizza cake couch bed sofa shelf mirror picture sign road street "
    "building wall floor ceiling sky cloud sun grass water river mountain hill rock sand snow bag hat shirt shoe"
).split()
_RELATIONS = "left of|right of|above|below|in front of|behind|next to|inside|on top of|under".split("|")
_ADJECTIVES = "small large tiny big tall short wide narrow bright dark round flat shiny striped empty full".split()
_ORDER = "first second third fourth fifth last before after earlier later closest farthest nearest lowest".split()
_VERBS = (
    "is are was has have contains shows appears moves rotates enters leaves stops starts turns falls rises holds "
    "sits stands looks points touches covers follows passes reaches crosses changes becomes remains"
).split()
_FILLER = (
    "the a an of in on at to from with and or but not no yes this that these those there here it its they their "
    "which what where when how why who many much more less most least than then so because if each every all "
    "some any both only also very same different other another one two three four five six seven eight nine ten "
    "image video frame frames scene object objects camera view picture photo question answer option options "
    "correct wrong true false count number total number position size colour color shape depth distance meters "
    "time seconds order sequence step steps reason reasoning think final result output label box point region "
    "select choose describe identify compare estimate locate explain list give please carefully briefly"
).split()
_QUESTIONS = [
    "How many {c} {s}s are in the image?",
    "What colour is the {s} {r} the {o}?",
    "Is the {z} {c} {s} {r} the {o}? Answer yes or no.",
    "Which object is {r} the {c} {o}?",
    "Count the {o}s in the video and answer with a number.",
    "Order the frames from {w} to {w2}.",
    "In which frame does the {c} {o} appear {w}?",
    "Where is the {o}? Give the bounding box as JSON.",
    "Describe the scene in one sentence.",
    "How far is the {o} from the camera, in meters?",
    "Which option is correct? (A) {c} (B) {c2} (C) {s} (D) {o}",
    "Think step by step, then put the final answer in <answer></answer> tags.",
    "Please put your final answer within \\boxed{{}}.",
]
_ANSWERS = [
    "<think>I see {n} {c} {s}s and {m} {c2} ones, so the answer is {n}.</think><answer>{n}</answer>",
    "<answer>{c}</answer>",
    "The {z} {c} {s} is {r} the {o}. The answer is \\boxed{{{n}}}.",
    '{{"label": "{o}", "bbox_2d": [{n}, {m}, {n2}, {m2}], "colour": "{c}"}}',
    "[{n}, {m}, {n2}] <answer>{w}</answer>",
    "<think>The {o} {v} {r} the {s} between frame {n} and frame {m}.</think> <answer>yes</answer>",
    "There are {n} objects: a {c} {s}, a {c2} {o} and {m} {s}s. \\boxed{{{n}}}",
    "Distance: {n}.{m} m; depth {m2}.{n2} meters. Answer: ({a})",
]


def _corpus(seed: int, lines: int = 8000) -> list[str]:
    """Prompt/answer lines from the word lists and templates, drawn with a seeded Generator."""
    rng = np.random.default_rng(seed)
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    words = _COLOURS + _SHAPES + _OBJECTS + _ADJECTIVES + _ORDER + _VERBS + _FILLER
    out = []
    for _ in range(lines):
        slots = dict(
            c=pick(_COLOURS), c2=pick(_COLOURS), s=pick(_SHAPES), o=pick(_OBJECTS), r=pick(_RELATIONS),
            z=pick(_ADJECTIVES), w=pick(_ORDER), w2=pick(_ORDER), v=pick(_VERBS), a=pick("ABCD"),
            n=int(rng.integers(0, 20 if rng.random() < 0.7 else 1000)), m=int(rng.integers(0, 100)),
            n2=int(rng.integers(0, 1000)), m2=int(rng.integers(0, 100)),
        )  # fmt: skip
        # Free text too, so frequent words and their capitalised/punctuated forms become tokens.
        free = " ".join(pick(words) for _ in range(int(rng.integers(4, 12))))
        out.append(pick(_QUESTIONS).format(**slots) + "\n" + pick(_ANSWERS).format(**slots))
        out.append(free.capitalize() + pick([".", "?", "!", ",", ":", ";"]))
    return out
