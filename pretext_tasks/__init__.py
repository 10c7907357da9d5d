"""Pretext tasks: turn unlabeled images, videos, 3D scenes and GUI screens into verifiable Samples.

Importing the package registers every built-in task; look them up by name:

    from pretext_tasks import get_task
    task = get_task("dominant_color", image_size=56)
"""

from pretext_tasks.base import PretextTask, answer_instruction, options_text
from pretext_tasks.registry import get_task, load_tasks, register, task_class, task_names

load_tasks()

__all__ = [
    "PretextTask",
    "answer_instruction",
    "get_task",
    "load_tasks",
    "options_text",
    "register",
    "task_class",
    "task_names",
]
