"""Pretext tasks: turn unlabeled images, videos and 3D scenes (and annotated images) into verifiable Samples.

Each task is declared as an entry point (`mmrl.tasks` in pyproject.toml), so the engine finds it by name:

    from mmrl.registry import get_task
    task = get_task("dominant_color", image_size=56)

or use a task class directly, from any trainer:

    import numpy as np
    from pretext_tasks import ImageJigsaw
    task = ImageJigsaw(ImageJigsaw.Params(rows=3, cols=3))
    sample = task.make("photo.jpg", np.random.default_rng(0))   # a Sample: messages + answer
    task.reward("<answer>1, 2, 3, 4, 5, 6, 7, 8, 9</answer>", sample).score
"""

from pretext_tasks.anomaly_grounding import AnomalyGrounding
from pretext_tasks.base import OrderingTask, answer_instruction, options_text
from pretext_tasks.caption_refine import CaptionRefine
from pretext_tasks.depth_jigsaw import DepthJigsaw
from pretext_tasks.diagnostic import DominantColorTask
from pretext_tasks.edit_prediction import EditPrediction
from pretext_tasks.gui_inverse_dynamics import GuiInverseDynamics
from pretext_tasks.image_jigsaw import ImageJigsaw
from pretext_tasks.object_counting import ObjectCounting
from pretext_tasks.object_detection import ObjectDetection
from pretext_tasks.referring_grounding import ReferringGrounding
from pretext_tasks.temporal_jigsaw import TemporalJigsaw
from pretext_tasks.video_jigsaw import VideoJigsaw

__all__ = [
    "AnomalyGrounding",
    "CaptionRefine",
    "DepthJigsaw",
    "DominantColorTask",
    "EditPrediction",
    "GuiInverseDynamics",
    "ImageJigsaw",
    "ObjectCounting",
    "ObjectDetection",
    "OrderingTask",
    "ReferringGrounding",
    "TemporalJigsaw",
    "VideoJigsaw",
    "answer_instruction",
    "options_text",
]
