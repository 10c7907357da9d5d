"""Chat messages -> EncodedPrompt: load media, apply the chat template, run the processor once.

The prompt is measured before the processor touches a pixel (R2 in docs/requirements.md): each image's and video's token
count comes from the processor's own resize rule (Qwen `smart_resize` with the processor's patch x
merge factor and pixel budgets), the text is tokenised with every placeholder already expanded, and
a prompt over `max_prompt_tokens` is rejected with a message saying what to change. Prompts are
never truncated: cutting inside a visual span is what produces "image features and image tokens do
not match" in other frameworks. A prompt that is over only because of its videos is first fitted
(`model.video_fit_budget`, `fit_videos`): smaller frames, then fewer frames of a video decoded here.

Videos given as files are decoded here with decord (`mmrl.video.read_video` at `model.video_fps`,
at most `model.video_max_frames` frames): transformers 5 can only decode files with torchcodec. The
frames then reach the processor with `do_sample_frames=False` (set by `mmrl.models.load_processor`)
and a `video_metadata` entry whose `fps` / `frames_indices` / `total_num_frames` describe the frames
we decoded, so that Qwen3-VL renders our timestamps (`<1.5 seconds>` = frames_indices / fps) and
Qwen2.5-VL's `second_per_grid_ts` (temporal_patch_size / sampled_fps, where sampled_fps =
len(frames_indices) / total_num_frames * fps) matches the real sampling rate.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from mmrl import media
from mmrl.contracts import EncodedPrompt
from mmrl.errors import MMRLError
from mmrl.video import read_video, video_info

if TYPE_CHECKING:
    from transformers import ProcessorMixin

    from mmrl.config import ModelConfig

log = logging.getLogger(__name__)

VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")
"""Processor outputs that describe a prompt's images and videos (batched by concatenation on dim 0)."""


def encode_prompt(
    processor: ProcessorMixin,
    messages: list[dict[str, Any]],
    model_cfg: ModelConfig,
    *,
    max_prompt_tokens: int,
    keep_media: bool = True,
) -> EncodedPrompt:
    """Encode one chat prompt (ending with the assistant's generation header) for generation and training.

    Media items may be PIL images, image paths, video files (decoded at `model_cfg.video_fps`, at
    most `model_cfg.video_max_frames` frames) or videos given as lists of frames (paths, PIL images
    or HxWx3 uint8 arrays, with an optional `fps`, default `model_cfg.video_fps`, and optional
    per-frame `timestamps` in seconds). Raises MediaError naming an unreadable file, and MMRLError
    when text + visual tokens exceed `max_prompt_tokens` (after fitting its videos, `fit_videos`, when
    `model_cfg.video_fit_budget`; `EncodedPrompt.fitted` then says what changed). `keep_media` stores the
    loaded images and frames (as shown to the model) in `EncodedPrompt.media` (the vLLM engine needs them;
    the HF engine does not).
    """
    images, videos, from_files = _load_media(messages, model_cfg)
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if not isinstance(text, str):
        raise MMRLError("the chat template must render one prompt string (got a batch)")
    predicted, visual, sizes = _measure(processor, text, images, videos)
    fitted = ""
    if predicted > max_prompt_tokens and videos and model_cfg.video_fit_budget:
        before = "; ".join(sizes)
        shrunk, fitted = fit_videos(processor, text, images, videos, from_files, model_cfg, max_prompt_tokens)
        if fitted:
            videos = shrunk
            predicted, visual, sizes = _measure(processor, text, images, videos)
            fitted = f"{before} -> {'; '.join(sizes)} ({fitted})"
            _log_fit(fitted, max_prompt_tokens)
    detail = "; ".join(sizes) or "no media"
    if predicted > max_prompt_tokens:
        tried = " (fitting its videos, model.video_fit_budget, could not make it fit)" if videos else ""
        raise MMRLError(
            f"prompt needs {predicted} tokens ({predicted - visual} text + {visual} visual; {detail}){tried} "
            f"but rollout.max_prompt_tokens={max_prompt_tokens}; lower model.max_pixels "
            f"(now {model_cfg.max_pixels}) for images or model.video_max_pixels / model.video_max_frames "
            f"(now {model_cfg.video_max_pixels} / {model_cfg.video_max_frames}) for videos, "
            "or raise rollout.max_prompt_tokens; prompts are never truncated"
        )

    kwargs: dict[str, Any] = {}
    if images:
        kwargs["images"] = images
    if videos:
        kwargs["videos"] = [frames for frames, _ in videos]
        kwargs["video_metadata"] = [_copy_meta(meta) for _, meta in videos]  # the processor mutates its copy
    try:
        out = processor(text=[text], return_tensors="pt", **kwargs)
    except ValueError as e:  # sizes/aspect ratios the processor refuses
        raise MMRLError(f"the processor rejected this prompt's media ({detail}): {e}") from None

    input_ids = out["input_ids"][0]  # (T,)
    vision = {key: out[key] for key in VISION_KEYS if key in out}
    if "second_per_grid_ts" in vision:
        vision["second_per_grid_ts"] = torch.as_tensor(vision["second_per_grid_ts"], dtype=torch.float32)
    if "mm_token_type_ids" in out:
        vision["mm_token_type_ids"] = out["mm_token_type_ids"][0]  # (T,) 0 text, 1 image, 2 video
    placeholders = int(torch.isin(input_ids, torch.tensor(_placeholder_ids(processor))).sum())
    if placeholders != visual or len(input_ids) != predicted:  # the budget check above relied on `predicted`
        import transformers

        raise MMRLError(
            f"the prompt was measured at {predicted} tokens ({visual} visual) before processing, but "
            f"{type(processor).__name__} of transformers {transformers.__version__} produced {len(input_ids)} "
            f"({placeholders} visual) for {detail}; this transformers release expands placeholders in a way "
            "mmrl does not know: install the locked versions (scripts/setup.sh) and report it"
        )
    kept = {}
    if keep_media and images:
        kept["image"] = images
    if keep_media and videos:
        kept["video"] = videos
    return EncodedPrompt(input_ids=input_ids, vision=vision, text=text, num_visual_tokens=visual, media=kept,
                         fitted=fitted)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Media


def _load_media(
    messages: list[dict[str, Any]], cfg: ModelConfig
) -> tuple[list[Image.Image], list[tuple[np.ndarray, dict[str, Any]]], list[bool]]:
    """Images (RGB PIL), videos ((T, H, W, 3) uint8 frames, processor video metadata) in prompt order, and
    for each video whether it was decoded here from a file (its frames are then ours to choose)."""
    images: list[Image.Image] = []
    videos: list[tuple[np.ndarray, dict[str, Any]]] = []
    from_files: list[bool] = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for item in content:
            kind = item.get("type") if isinstance(item, dict) else None
            if kind not in ("image", "video"):
                continue
            if kind not in item:
                raise MMRLError(f"{kind} item has no '{kind}' field: {sorted(item)}")
            value = item[kind]
            if kind == "image":
                images.append(_image(value))
            elif isinstance(value, (str, Path)):
                videos.append(_video_file(value, cfg))
                from_files.append(True)
            else:
                videos.append(_video_frames(value, item.get("fps"), item.get("timestamps"), cfg))
                from_files.append(False)
    return images, videos, from_files


def _image(value: Any) -> Image.Image:
    if isinstance(value, Image.Image):
        return value if value.mode == "RGB" else value.convert("RGB")
    if isinstance(value, (str, Path)):
        return media.load_image(value)
    if isinstance(value, np.ndarray) and value.ndim == 3 and value.shape[2] == 3 and value.dtype == np.uint8:
        return Image.fromarray(value)
    raise MMRLError(f"image must be a PIL image, a path or an HxWx3 uint8 array, got {type(value).__name__}")


def _video_file(path: str | Path, cfg: ModelConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode at cfg.video_fps; metadata in source-frame units so timestamps are the decoded ones."""
    clip = read_video(path, fps=cfg.video_fps, max_frames=cfg.video_max_frames)
    total = video_info(path).num_frames
    frames, indices = clip.frames, [int(i) for i in clip.indices]
    frames, indices = _at_least_two(frames, indices)
    meta = {"fps": float(clip.source_fps), "frames_indices": indices, "total_num_frames": int(total)}
    return frames, meta


def _video_frames(
    value: Any, fps: float | None, timestamps: Any, cfg: ModelConfig
) -> tuple[np.ndarray, dict[str, Any]]:
    """Frames given as a list: shown at `timestamps` if given, else at i / fps."""
    if isinstance(value, np.ndarray) and value.ndim == 4:
        frames = list(value)
    elif isinstance(value, (list, tuple)) and len(value) > 0:
        frames = [np.asarray(_image(f)) for f in value]
    else:
        raise MMRLError(f"video must be a file path or a non-empty list of frames, got {type(value).__name__}")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise MMRLError(f"video frames must all have one size, got {sorted(shapes)}")
    array = np.stack(frames).astype(np.uint8, copy=False)  # (T, H, W, 3)
    if timestamps is not None:
        if len(timestamps) != len(array):
            raise MMRLError(f"video has {len(array)} frames but {len(timestamps)} timestamps")
        span = float(timestamps[-1]) - float(timestamps[0])
        if not fps and len(timestamps) > 1 and span > 0:
            fps = (len(timestamps) - 1) / span  # the mean sampling rate (Qwen2.5-VL's second_per_grid_ts)
        fps = float(fps or cfg.video_fps)
        indices: list[float] = [float(t) * fps for t in timestamps]  # indices / fps = timestamps
    else:
        fps = float(fps or cfg.video_fps)
        indices = list(range(len(array)))
    array, indices = _at_least_two(array, indices)
    return array, {"fps": fps, "frames_indices": indices, "total_num_frames": len(indices)}


def _at_least_two(frames: np.ndarray, indices: list) -> tuple[np.ndarray, list]:
    """Repeat a single frame: Qwen3-VL refuses t < temporal_patch_size, Qwen2-VL pads the same way."""
    if len(frames) == 1:
        return np.concatenate([frames, frames]), [indices[0], indices[0]]
    return frames, indices


# --------------------------------------------------------------------------------------------------
# Prompt budget planner

_FIT_SHRINK = 0.95  # each smaller per-frame pixel budget tried is this share of the previous one


def fit_videos(
    processor: ProcessorMixin,
    text: str,
    images: list[Image.Image],
    videos: list[tuple[np.ndarray, dict[str, Any]]],
    from_files: list[bool],
    cfg: ModelConfig,
    max_prompt_tokens: int,
) -> tuple[list[tuple[np.ndarray, dict[str, Any]]], str]:
    """Shrink a prompt's videos until text + visual tokens fit `max_prompt_tokens`; ([], "") when nothing fits.

    Returns the videos to show (frames resized, some frames dropped, metadata to match) and a short note of
    the choice. Images and text are never changed. The rule, deterministic and measured with the
    processor's own token count (`_measure`) at every candidate:

    1. Fewer pixels per frame, for every video alike: per-frame budgets P_k = P_0 * 0.95^k (P_0 the
       largest frame after the processor's resize), down to `model.video_min_pixels`; each frame is resized
       (bicubic) to `smart_resize(h, w, factor, video_min_pixels, min(P_k, video_max_pixels))`, a size
       the processor then keeps. The largest P_k that fits wins.
    2. Only if the smallest frames do not fit: fewer frames, and only of videos decoded here from a file
       (`_video_file`), whose frames are sampled by `model.video_fps` / `video_max_frames`, not chosen by the
       task: at most F frames each (evenly spaced, the centres of F equal bins, F a multiple of the temporal
       patch size), the largest F that fits at the smallest frames; then the largest P_k that fits with F.
       The kept frames keep their source indices, so the timestamps (Qwen3-VL's `<t seconds>`, Qwen2.5-VL's
       `second_per_grid_ts`) stay those of the file and an answer in seconds stays valid.

    Videos given as frame lists are the task's own choice (an answer may count, order or index them), so
    their frames are never dropped: only their pixels shrink, which changes no temporal answer. (Boxes in
    pixel coordinates are checked for images only, `check_box_frame`; no built-in video task states any.)
    """
    vp = processor.video_processor
    if not all(hasattr(vp, key) for key in ("patch_size", "merge_size")):  # not a Qwen-style processor: no rule
        return [], ""
    factor = int(vp.patch_size) * int(vp.merge_size)
    step = int(getattr(vp, "temporal_patch_size", 2) or 1)
    low, high = cfg.video_min_pixels, cfg.video_max_pixels

    def size(frames: np.ndarray, cap: float) -> tuple[int, int]:
        h, w = frames.shape[1:3]
        return media.smart_resize(h, w, factor, min_pixels=low, max_pixels=max(low, min(int(cap), high)))

    def keep(frames: np.ndarray, droppable: bool, most: int | None) -> np.ndarray:
        """Positions of the frames kept: all, or the centres of `most` equal bins."""
        t = len(frames)
        if not droppable or most is None or t <= most:
            return np.arange(t)
        return np.floor((np.arange(most) + 0.5) * t / most).astype(np.int64)

    def candidate(cap: float, most: int | None) -> list[tuple[np.ndarray, dict[str, Any]]]:
        """Shape-only stand-ins (broadcast views, no pixel memory) of the videos at this choice, for `_measure`."""
        out = []
        for (frames, meta), droppable in zip(videos, from_files):
            h, w = size(frames, cap)
            kept = keep(frames, droppable, most)
            out.append((np.broadcast_to(np.zeros((1, 1, 1, 3), np.uint8), (len(kept), h, w, 3)), meta))
        return out

    def fits(cap: float, most: int | None) -> bool:
        return _measure(processor, text, images, candidate(cap, most))[0] <= max_prompt_tokens

    start = max(h * w for h, w in (size(frames, high) for frames, _ in videos))
    caps = [float(start)]
    while caps[-1] * _FIT_SHRINK > low:
        caps.append(caps[-1] * _FIT_SHRINK)
    caps.append(float(low))
    cap = _first(caps, lambda c: fits(c, None))
    most: int | None = None
    if cap is None:
        longest = max((len(f) for (f, _), d in zip(videos, from_files) if d), default=0)
        counts = [f for f in range(longest - 1, step - 1, -1) if f % step == 0]  # fewer, whole temporal patches
        most = _first(counts, lambda f: fits(low, f))
        if most is None:
            return [], ""
        cap = _first(caps, lambda c: fits(c, most))
    out = []
    for (frames, meta), droppable in zip(videos, from_files):
        h, w = size(frames, cap)
        kept = keep(frames, droppable, most)
        shown = frames[kept]
        if (h, w) != shown.shape[1:3]:
            shown = np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.Resampling.BICUBIC)) for f in shown])
        indices = [meta["frames_indices"][i] for i in kept.tolist()]
        out.append((shown, {**meta, "frames_indices": indices}))
    note = f"frames of at most {int(cap)} px" + (f", at most {most} frames per video file" if most else "")
    return out, note


def _first(candidates: list, fits: Any) -> Any:
    """The first candidate that fits, by bisection: the candidates go from largest to smallest, so the token count
    never grows along the list (smart_resize is monotone in its pixel budget) and `fits` turns True once."""
    lo, hi = 0, len(candidates)
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(candidates[mid]):
            hi = mid
        else:
            lo = mid + 1
    return candidates[lo] if lo < len(candidates) else None


_fit_logged = False


def _log_fit(note: str, max_prompt_tokens: int) -> None:
    """Say once per process that prompts are being fitted; later fits are only counted (`prompts_fitted`)."""
    global _fit_logged
    level = logging.DEBUG if _fit_logged else logging.WARNING
    _fit_logged = True
    log.log(level, "a video prompt over rollout.max_prompt_tokens=%d was fitted: %s (model.video_fit_budget; "
            "further fits are only counted in the metric prompts_fitted)", max_prompt_tokens, note)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Token budget (R2)


def _measure(
    processor: ProcessorMixin,
    text: str,
    images: list[Image.Image],
    videos: list[tuple[np.ndarray, dict[str, Any]]],
) -> tuple[int, int, list[str]]:
    """(total tokens, visual tokens, per-item descriptions), before any pixel is processed.

    Each item's grid comes from the processors' `get_number_of_image_patches` /
    `get_num_of_video_patches` (Qwen smart_resize with the processor's factor and `size` budgets,
    the same function `resize` uses). The placeholders are then expanded by the processor's own
    code: `replace_image_token` / `replace_video_token` on those grids, and
    `get_text_with_replacements` on the rendered prompt (which, from transformers 5.25, also
    collapses the template's outer vision start/end around a Qwen3-VL video). The expanded text is
    tokenised as the processor will tokenise it, so the total is exact whatever the release.
    """
    image_tok, video_tok = _placeholders(processor)
    if text.count(image_tok) != len(images) or text.count(video_tok) != len(videos):
        raise MMRLError(
            f"the chat template rendered {text.count(image_tok)} image and {text.count(video_tok)} video "
            f"placeholders for {len(images)} images and {len(videos)} videos"
        )
    image_grids, video_grids, sizes = [], [], []
    ip = processor.image_processor
    for i, im in enumerate(images):
        try:
            patches = int(ip.get_number_of_image_patches(im.height, im.width, {}))
        except ValueError as e:
            raise MMRLError(f"image {i + 1} ({im.width}x{im.height}) cannot be resized: {e}") from None
        image_grids.append([1, 1, patches])  # replace_image_token reads the product only
        sizes.append(f"image {i + 1}: {im.width}x{im.height} px -> {patches // ip.merge_size**2} tokens")
    for i, (frames, _) in enumerate(videos):
        t, h, w = frames.shape[:3]
        vp = processor.video_processor
        try:
            patches = int(vp.get_num_of_video_patches(t, h, w, {}))
        except ValueError as e:
            raise MMRLError(f"video {i + 1} ({t} frames of {w}x{h}) cannot be resized: {e}") from None
        grid_t = -(-t // vp.temporal_patch_size)
        video_grids.append([grid_t, 1, patches // grid_t])  # replace_video_token reads t and h*w only
        sizes.append(f"video {i + 1}: {t} frames of {w}x{h} px -> {patches // vp.merge_size**2} tokens")

    inputs: dict[str, Any] = {}
    if images:
        inputs["image_grid_thw"] = torch.tensor(image_grids)
    if videos:
        from transformers.video_utils import VideoMetadata

        inputs["video_grid_thw"] = torch.tensor(video_grids)
        inputs["video_metadata"] = [VideoMetadata(**_copy_meta(meta)) for _, meta in videos]
    image_texts = [processor.replace_image_token(inputs, i) for i in range(len(images))]
    video_texts = [processor.replace_video_token(inputs, i) for i in range(len(videos))]
    expanded, _ = processor.get_text_with_replacements([text], image_texts, video_texts)
    ids = processor.tokenizer(expanded[0])["input_ids"]
    pads = set(_placeholder_ids(processor))
    visual = sum(1 for i in ids if i in pads)
    return len(ids), visual, sizes


def _copy_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Qwen3-VL's timestamp helper extends `frames_indices` in place: hand it a copy."""
    return {**meta, "frames_indices": list(meta["frames_indices"])}


def _placeholders(processor: ProcessorMixin) -> tuple[str, str]:
    return processor.image_token, processor.video_token


def _placeholder_ids(processor: ProcessorMixin) -> list[int]:
    return [int(processor.image_token_id), int(processor.video_token_id)]


def continue_assistant(prompt: EncodedPrompt, prefix_ids: list[int], prefix_text: str = "") -> EncodedPrompt:
    """`prompt` (ending with the assistant's generation header) with the start of the assistant's reply
    appended as token ids, so that generation continues that reply (a prefill, e.g. MCTS steps).

    The reply's tokens go after the header exactly as the model produced them; nothing is re-templated or
    sliced off the chat template's text. The visual tensors are shared with `prompt` (the new tokens are
    text: `mm_token_type_ids` grows by zeros). An empty prefix returns `prompt` itself.
    """
    if not prefix_ids:
        return prompt
    extra = torch.as_tensor(prefix_ids, dtype=prompt.input_ids.dtype)
    vision = dict(prompt.vision)
    if "mm_token_type_ids" in vision:
        types = vision["mm_token_type_ids"]
        vision["mm_token_type_ids"] = torch.cat([types, torch.zeros(len(prefix_ids), dtype=types.dtype)])
    return EncodedPrompt(
        input_ids=torch.cat([prompt.input_ids, extra]),
        vision=vision,
        text=prompt.text + prefix_text,
        num_visual_tokens=prompt.num_visual_tokens,
        media=prompt.media,
        fitted=prompt.fitted,
    )
