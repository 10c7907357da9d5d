"""`import pretext_tasks` from another trainer: the README example runs as written, without the trainer."""

import subprocess
import sys
from pathlib import Path

import skimage

PHOTO = Path(skimage.__file__).parent / "data" / "astronaut.png"


def test_readme_example_runs_without_the_trainer():
    code = f"""
import sys
import numpy as np
from pretext_tasks import AnomalyGrounding, DepthJigsaw, ImageJigsaw, ObjectCounting, TemporalJigsaw, VideoJigsaw
task = ImageJigsaw(ImageJigsaw.Params(rows=3, cols=3))
sample = task.make({str(PHOTO)!r}, np.random.default_rng(0))
labels = ", ".join(map(str, sample.answer))
assert task.reward(f"<think>ok</think><answer>{{labels}}</answer>", sample).score == 1.0
assert task.reward("<answer>1, 2, 3</answer>", sample).score < 1.0
assert len(sample.media()) == 9
assert not any(m.startswith("mmrl.grpo") or m == "torch" for m in sys.modules), "trainer pulled in"
print("ok", VideoJigsaw.name, DepthJigsaw.name, AnomalyGrounding.name, ObjectCounting.name, TemporalJigsaw.name)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "ok video_jigsaw depth_jigsaw anomaly_grounding object_counting temporal_jigsaw"
