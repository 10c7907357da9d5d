"""Pretext tasks: turn unlabeled images, videos, 3D scenes and GUI screens into verifiable Samples.

Importing the package registers every built-in task; look them up by name:

    from pretext_tasks import get_task
    task = get_task("dominant_color", image_size=56)

or use a task class directly, from any trainer:

    import numpy as np
    from pretext_tasks import ImageJigsaw
    task = ImageJigsaw(ImageJigsaw.Params(rows=3, cols=3))
    sample = task.make("photo.jpg", np.random.default_rng(0))   # a Sample: messages + answer
    task.reward("<answer>1, 2, 3, 4, 5, 6, 7, 8, 9</answer>", sample).score
"""

from pretext_tasks.base import PretextTask, answer_instruction, options_text
from pretext_tasks.registry import get_task, load_tasks, register, task_class, task_names

load_tasks()

from pretext_tasks.anomaly_grounding import AnomalyGrounding  # noqa: E402  (after the registry is loaded)
from pretext_tasks.depth_jigsaw import DepthJigsaw  # noqa: E402
from pretext_tasks.image_jigsaw import ImageJigsaw  # noqa: E402
from pretext_tasks.object_counting import ObjectCounting  # noqa: E402
from pretext_tasks.temporal_jigsaw import TemporalJigsaw  # noqa: E402
from pretext_tasks.video_jigsaw import VideoJigsaw  # noqa: E402

__all__ = [
    "AnomalyGrounding",
    "DepthJigsaw",
    "ImageJigsaw",
    "ObjectCounting",
    "PretextTask",
    "TemporalJigsaw",
    "VideoJigsaw",
    "answer_instruction",
    "get_task",
    "load_tasks",
    "options_text",
    "register",
    "task_class",
    "task_names",
]
