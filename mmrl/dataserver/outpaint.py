"""`outpaint`: foreground-preserving outpainting with a diffusers inpainting pipeline (../specs/syn_grpo.md §3.2).

The canvas keeps the seed's size W x H, so the prompt text, `image_size` and `model_size` stay valid:

    s ~ U[scale_min, 1], the seed image shrunk to (round(s W), round(s H)) and pasted at (dx, dy) ~ U on the canvas
    labels: box' = s * box + (dx, dy)                        (each coordinate; `rewards.boxes.transform_answer_boxes`)
    keep = union of the moved label boxes grown by `margin` px (no labels: the whole pasted image)
    mask = everything but keep -> the pipeline paints it, conditioned on the description
    the kept pixels are pasted back exactly, so "kept region unchanged" holds by construction

Checks: the generated pixels are finite and not blank (`bad_image`), the moved boxes lie on the canvas
(`labels_moved`), kept pixels unchanged (`foreground_changed`). "No new instance of a referred category"
cannot be exact for a generated background: give `detector` (a callable, or `package.module:function`,
called as `detector(image, categories) -> [(label, [x1, y1, x2, y2]), ...]`) and a detection of a referred
category that overlaps no label box (IoU < 0.5) rejects the sample (`new_instance`); without one the check
is skipped and the sample says so (`meta["synthesized"]["unchecked_new_instance"]`, counted by the producer
as `syn/unchecked_new_instance`). That is a known limitation of this synthesizer.

The pipeline (`StableDiffusionInpaintPipeline`) is loaded once per worker from `model`, a local folder or a
hub id that is in the local cache; nothing is downloaded unless `allow_download` (as `model.allow_download`).
`build_tiny_inpaint(out_dir)` saves a tiny random-init pipeline for tests (64 x 64 in about a second on CPU).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmrl.dataserver.protocol import Rejected, SynthesisRequest
from mmrl.dataserver.verify import (
    check_description,
    check_image,
    check_kept_region,
    referred_categories,
    seed_image,
    with_image,
)
from mmrl.diffusion import build_tiny_pipeline
from mmrl.errors import ConfigError
from mmrl.sample import Sample
from rewards.boxes import answer_boxes, transform_answer_boxes

Detector = Callable[[Image.Image, list[str]], list[tuple[str, list[float]]]]


class OutpaintSynthesizer:
    """Shrinks the seed onto its own canvas and outpaints around the kept foreground (module docstring)."""

    name = "outpaint"

    def __init__(self, worker: int = 0, model: str = "", allow_download: bool = False, steps: int = 20,
                 guidance_scale: float = 7.5, scale_min: float = 0.6, margin: int = 8, kept_mad: float = 2.0,
                 detector: Detector | str | None = None, device: str = "", dtype: str = "auto",
                 negative_prompt: str = "") -> None:  # fmt: skip
        if not model:
            raise ConfigError("the outpaint synthesizer needs `model`: a local folder or a cached hub id of a "
                              "diffusers inpainting pipeline")  # fmt: skip
        if not 0 < scale_min <= 1:
            raise ConfigError(f"outpaint scale_min must be in (0, 1], got {scale_min}")
        import torch
        from diffusers import StableDiffusionInpaintPipeline

        if not device:
            device = f"cuda:{worker % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
        torch_dtype = torch.float16 if dtype == "float16" or (dtype == "auto" and device != "cpu") else torch.float32
        try:
            pipe = StableDiffusionInpaintPipeline.from_pretrained(model, dtype=torch_dtype,
                                                                  local_files_only=not allow_download)  # fmt: skip
        except (OSError, ValueError) as e:
            hint = "" if allow_download else " (allow_download is off: only local folders and cached ids load)"
            raise ConfigError(f"cannot load the inpainting pipeline '{model}'{hint}: {e}") from e
        pipe.set_progress_bar_config(disable=True)
        self.pipe, self.device, self.worker = pipe.to(device), device, worker
        self.steps, self.guidance_scale, self.negative_prompt = steps, guidance_scale, negative_prompt
        self.scale_min, self.margin, self.kept_mad = scale_min, margin, kept_mad
        self.detector = _load_detector(detector)

    def __call__(self, request: SynthesisRequest, rng: np.random.Generator) -> Sample:
        import torch

        description = check_description(request.description)
        seed = request.seed
        image = seed_image(seed)
        W, H = image.size
        s = float(rng.uniform(self.scale_min, 1.0))
        sw, sh = max(1, round(s * W)), max(1, round(s * H))
        dx, dy = int(rng.integers(0, W - sw + 1)), int(rng.integers(0, H - sh + 1))
        canvas = np.zeros((H, W, 3), np.uint8)
        canvas[:] = np.asarray(image).reshape(-1, 3).mean(axis=0).astype(np.uint8)  # a neutral start for the fill
        canvas[dy : dy + sh, dx : dx + sw] = np.asarray(image.resize((sw, sh), Image.Resampling.BICUBIC))
        answer = transform_answer_boxes(seed.answer, s, (dx, dy)) if answer_boxes(seed.answer) else seed.answer
        boxes = [b for _, b in answer_boxes(answer)]
        keep = _keep_mask((W, H), boxes or [[dx, dy, dx + sw, dy + sh]], self.margin if boxes else 0)
        if any(b[0] < -1 or b[1] < -1 or b[2] > W + 1 or b[3] > H + 1 for b in boxes):
            raise Rejected("labels_moved", f"a moved box leaves the {W}x{H} canvas: {boxes}")
        # diffusers works on multiples of 8: paint at the nearest such size, then come back to W x H
        pw, ph = max(8, round(W / 8) * 8), max(8, round(H / 8) * 8)
        generator = torch.Generator("cpu").manual_seed(int(rng.integers(2**62)))
        painted = self.pipe(prompt=description, negative_prompt=self.negative_prompt or None,
                            image=Image.fromarray(canvas).resize((pw, ph)),
                            mask_image=Image.fromarray(np.where(keep, 0, 255).astype(np.uint8)).resize((pw, ph)),
                            height=ph, width=pw, num_inference_steps=self.steps, guidance_scale=self.guidance_scale,
                            generator=generator, output_type="np").images[0]  # fmt: skip
        if not np.isfinite(painted).all():
            raise Rejected("bad_image", "the pipeline returned non-finite pixels")
        out = np.asarray(Image.fromarray(np.rint(np.clip(painted, 0, 1) * 255).astype(np.uint8)).resize((W, H)))
        if (~keep).any() and np.abs(out[~keep].astype(np.float64) - out[~keep].mean(axis=0)).max() <= 1.0:
            raise Rejected("bad_image", "the painted region is blank")
        out = out.copy()
        out[keep] = canvas[keep]  # the kept foreground, exactly
        out = check_image(out, (W, H))
        mad = check_kept_region(canvas, out, keep, mad=self.kept_mad)
        unchecked = self._check_new_instances(out, boxes, answer, seed.meta)
        facts = {"synthesizer": self.name, "request_id": request.request_id, "description": description,
                 "scale": s, "offset": [dx, dy], "kept_mad": mad, "unchecked_new_instance": unchecked}  # fmt: skip
        return with_image(seed, Image.fromarray(out), new_id=f"{seed.id}~{request.request_id}", answer=answer,
                          meta={**seed.meta, "synthesized": facts})  # fmt: skip

    def _check_new_instances(self, image: np.ndarray, boxes: list[list[float]], answer: Any, meta: dict) -> bool:
        """`new_instance` if the detector finds a referred category away from every label box; returns whether
        the check was skipped (no detector, or no referred category)."""
        referred = sorted(referred_categories(meta))
        if self.detector is None or not referred:
            return bool(referred)
        for label, box in self.detector(Image.fromarray(image), referred):
            if label in referred and all(_iou(box, b) < 0.5 for b in boxes):
                raise Rejected("new_instance", f"a {label} detected at {box}, outside the labels")
        return False


def _keep_mask(size: tuple[int, int], boxes: list[list[float]], margin: int) -> np.ndarray:
    W, H = size
    keep = np.zeros((H, W), bool)
    for x1, y1, x2, y2 in boxes:
        keep[max(0, int(np.floor(y1)) - margin) : min(H, int(np.ceil(y2)) + margin),
             max(0, int(np.floor(x1)) - margin) : min(W, int(np.ceil(x2)) + margin)] = True  # fmt: skip
    return keep


def _iou(a: list[float], b: list[float]) -> float:
    iw, ih = max(0.0, min(a[2], b[2]) - max(a[0], b[0])), max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - iw * ih
    return iw * ih / union if union > 0 else 0.0


def _load_detector(detector: Detector | str | None) -> Detector | None:
    if detector is None or callable(detector):
        return detector
    module, _, attr = str(detector).partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"outpaint detector '{detector}' cannot be loaded (want package.module:function): {e}") from e


def build_tiny_inpaint(out_dir: str | Path, seed: int = 0) -> Path:
    """Save a tiny random-init Stable-Diffusion inpainting pipeline (9-channel UNet, 2-level VAE, 2-layer CLIP
    text encoder with a character-level tokenizer; `mmrl.diffusion.build_tiny_pipeline`) to `out_dir`; load it
    by path like a real one."""
    return build_tiny_pipeline("inpaint", out_dir, seed=seed)


__all__ = ["OutpaintSynthesizer", "build_tiny_inpaint"]
