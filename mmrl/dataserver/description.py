"""The description task of Syn-GRPO and its delayed diversity reward (../specs/syn_grpo.md §3.4; ours).

The policy sees a seed sample's image with its labelled objects drawn on it (and listed in the text) and
writes a new description of the scene around them, one paragraph inside `<answer>` (reasoning first in
`<think>` when asked). The data server synthesizes a sample from it; the G rollouts of the task on that
sample give its accuracies a_1..a_G in [0, 1], and

    r_div  = 4 * Var_g(a_g)                        (population variance; binary a with pass rate p: 4 p (1 - p),
                                                     1 at p = 1/2, 0 when all are right or all wrong)
    r_desc = w_valid * valid + (1 - w_valid) * r_div

valid = the description parsed, was non-empty and its synthesis passed verification; a rejected synthesis
gives r_div = 0 (so r_desc = 0). The factor 4 maps the largest variance of values in [0, 1] (1/4) to 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import ImageDraw

from mmrl.dataserver.verify import seed_image
from mmrl.sample import Sample
from rewards.boxes import answer_boxes
from rewards.extract import extract_answer

DESCRIPTION_TASK = "syn_description"
"""The `task` of description rollouts in metrics and logs (not a registry task: its reward is delayed)."""
BOX_COLOR = (255, 0, 255)


def description_messages(seed: Sample, *, think: bool = True, mode: str = "answer_tag") -> list[dict[str, Any]]:
    """The chat messages asking for a new scene description around `seed`'s labelled objects.

    The image is the seed's with each label box drawn in magenta; the text lists the labels with their
    boxes (pixels of this image, x1 y1 x2 y2) and says they must stay as they are. A seed without boxes
    (a task with no labels) is asked to keep its main content. `mode` "raw" asks for the paragraph alone.
    """
    image = seed_image(seed)
    boxes = answer_boxes(seed.answer)
    if boxes:
        image = image.copy()
        draw = ImageDraw.Draw(image)
        for _, (x1, y1, x2, y2) in boxes:
            draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=BOX_COLOR, width=max(1, min(image.size) // 100))
        listed = "; ".join(f"{label} at [{x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}]" for label, (x1, y1, x2, y2)
                           in boxes)  # fmt: skip
        keep = f"The outlined objects must stay exactly as they are: {listed}."
    else:
        keep = "The main content of the picture must stay as it is."
    if mode == "raw":
        ask = "Reply with only the new scene description, one paragraph."
    else:
        steps = "First think it through inside <think> </think>, then write" if think else "Write"
        ask = f"{steps} the new scene description as one paragraph inside <answer> </answer>."
    text = (f"{keep} Imagine a new scene around them: a different background, ground, light and other objects, "
            f"none of them of the same kind as the outlined ones. {ask}")  # fmt: skip
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]


def parse_description(completion: str, mode: str = "answer_tag") -> str:
    """The description: inside the completion's last `<answer>` block (`answer_tag`), or the whole completion
    (`raw`), stripped; "" when there is none."""
    return (extract_answer(completion, mode) or "").strip() if isinstance(completion, str) else ""


def diversity_reward(accuracies: Sequence[float]) -> float:
    """r_div = 4 * population variance of the accuracies (each clipped to [0, 1]); 0 for fewer than two."""
    a = np.clip(np.asarray(accuracies, dtype=np.float64), 0.0, 1.0)
    if a.size < 2 or not np.isfinite(a).all():
        return 0.0
    return float(4.0 * a.var())


def description_reward(valid: bool, r_div: float, w_valid: float) -> float:
    """r_desc = w_valid * valid + (1 - w_valid) * r_div; an invalid description (rejected, empty) scores 0."""
    return float(w_valid + (1.0 - w_valid) * r_div) if valid else 0.0


def accuracy_of(parts: dict[str, float], score: float) -> float:
    """A rollout's accuracy for r_div: its `accuracy` part when the task has one, else its score, in [0, 1]."""
    return float(np.clip(parts.get("accuracy", score), 0.0, 1.0))


__all__ = [
    "DESCRIPTION_TASK",
    "accuracy_of",
    "description_messages",
    "description_reward",
    "diversity_reward",
    "parse_description",
]
