"""Checkpoints: exact round trips (weights, AdamW moments, lr, RNG streams), pruning, half-written
folders, SIGKILL in the middle of a save, peft adapter-only checkpoints on the tiny Qwen2-VL, crafted
checkpoints that must stay data, and corrupt checkpoints that `resume` must notice."""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mmrl.errors import MMRLError
from mmrl.grpo.checkpoint import (
    CHECKPOINTS,
    checkpoint_dir,
    checkpoint_problem,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]


class TinyNet(torch.nn.Module):
    """Embedding -> dropout -> MLP -> head tied to the embedding: tied weights and RNG-dependent steps."""

    def __init__(self, vocab: int = 16, dim: int = 8) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, dim), torch.nn.Tanh(), torch.nn.Dropout(0.3))
        self.head = torch.nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.mlp(self.embed(tokens)))


def make_run(seed: int) -> tuple[TinyNet, torch.optim.AdamW, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(seed)
    model = TinyNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    return model, optimizer, scheduler


def train_step(model: TinyNet, optimizer: torch.optim.Optimizer, scheduler, rng: np.random.Generator) -> None:
    """Data from the producer's Generator, dropout from torch's global RNG: both must be restored."""
    tokens = torch.from_numpy(rng.integers(0, 16, size=(4, 5)))
    loss = torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1), tokens.roll(1, 1).flatten())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def draws(producer_rng: np.random.Generator) -> list:
    """The next numbers of every stream a step may use."""
    return [random.random(), np.random.rand(), torch.rand(3).tolist(), producer_rng.random(3).tolist()]


# --------------------------------------------------------------------------------------------------
# Round trips


def test_round_trip_restores_weights_moments_lr_and_rng_streams(tmp_path: Path) -> None:
    model, optimizer, scheduler = make_run(0)
    rng = np.random.default_rng(7)
    for _ in range(3):
        train_step(model, optimizer, scheduler, rng)
    producer_state = {"epoch": 1, "order": [3, 1, 2], "rng": rng}
    path = save_checkpoint(
        tmp_path,
        3,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        producer_state=producer_state,
        extra={"a": 1},
    )
    weights, moments, lr = snapshot(model), optimizer.state_dict()["state"], scheduler.get_last_lr()
    expected_draws = draws(rng)

    fresh, fresh_optimizer, fresh_scheduler = make_run(1)
    resumed = load_checkpoint(path, model=fresh, optimizer=fresh_optimizer, scheduler=fresh_scheduler)

    assert resumed["step"] == 3 and resumed["extra"] == {"a": 1}
    assert resumed["producer_state"]["order"] == [3, 1, 2] and resumed["producer_state"]["epoch"] == 1
    for key, value in weights.items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert fresh.head.weight is fresh.embed.weight  # still tied: loaded in place
    for index, state in fresh_optimizer.state_dict()["state"].items():
        assert torch.equal(state["exp_avg"], moments[index]["exp_avg"])
        assert torch.equal(state["exp_avg_sq"], moments[index]["exp_avg_sq"])
        assert state["step"] == moments[index]["step"]
    assert fresh_scheduler.get_last_lr() == lr
    assert draws(resumed["producer_state"]["rng"]) == expected_draws
    assert (path / "producer_state.json").is_file()  # JSON-able state stays human-readable


def test_adamw_steps_after_resume_equal_an_uninterrupted_run(tmp_path: Path) -> None:
    model, optimizer, scheduler = make_run(0)
    rng = np.random.default_rng(0)
    for step in range(1, 6):
        train_step(model, optimizer, scheduler, rng)
        if step == 3:
            save_checkpoint(
                tmp_path, step, model=model, optimizer=optimizer, scheduler=scheduler, producer_state={"rng": rng}
            )
    uninterrupted = snapshot(model)

    fresh, fresh_optimizer, fresh_scheduler = make_run(123)
    resumed = load_checkpoint(
        latest_checkpoint(tmp_path), model=fresh, optimizer=fresh_optimizer, scheduler=fresh_scheduler
    )
    for _ in range(resumed["step"] + 1, 6):
        train_step(fresh, fresh_optimizer, fresh_scheduler, resumed["producer_state"]["rng"])
    for key, value in uninterrupted.items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_producer_state_that_is_not_plain_json_round_trips_exactly_as_tagged_json(tmp_path: Path) -> None:
    model, optimizer, _ = make_run(0)
    state = {
        "buffer": torch.arange(6.0).reshape(2, 3),
        "pair": (1, 2),
        3: "int key",
        "legacy": np.random.RandomState(5),
        "gens": [np.random.Generator(np.random.MT19937(2))],
        (1, "a"): [(2, (3,)), []],
        "floats": [math.nan, math.inf, -math.inf, -0.0, 0.1],
        "numpy": [np.float32(0.1), np.int64(2**62), np.bool_(True), np.arange(6, dtype=np.float16).reshape(2, 3)],
        "strided": np.arange(10, dtype=np.int8)[::3],
        "bf16": torch.tensor([1.5, -2.25], dtype=torch.bfloat16),
        "big": 2**70,
        "tag-like": {"__tuple__": [1]},
    }
    path = save_checkpoint(tmp_path, 1, model=model, optimizer=optimizer, scheduler=None, producer_state=state)
    assert not list(path.glob("*state*.pt")) and isinstance(
        json.loads((path / "producer_state.json").read_text()), dict
    )
    loaded = load_checkpoint(path, model=model, optimizer=optimizer, scheduler=None)["producer_state"]
    assert torch.equal(loaded["buffer"], state["buffer"]) and loaded["pair"] == (1, 2) and loaded[3] == "int key"
    assert loaded["legacy"].rand() == state["legacy"].rand()
    assert loaded["gens"][0].random() == state["gens"][0].random()
    assert loaded[(1, "a")] == [(2, (3,)), []] and type(loaded[(1, "a")][0][1]) is tuple
    nan, inf, minus_inf, minus_zero, tenth = loaded["floats"]
    assert math.isnan(nan) and inf == math.inf and minus_inf == -math.inf and tenth == 0.1
    assert math.copysign(1.0, minus_zero) == -1.0
    for got, want in zip(loaded["numpy"], state["numpy"]):
        assert type(got) is type(want) and got.dtype == want.dtype and np.array_equal(got, want)
    assert loaded["strided"].tolist() == [0, 3, 6, 9] and loaded["strided"].dtype == np.int8
    assert loaded["bf16"].dtype == torch.bfloat16 and torch.equal(loaded["bf16"], state["bf16"])
    assert loaded["big"] == 2**70 and loaded["tag-like"] == {"__tuple__": [1]}


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (collections.Counter(a=1), r"producer_state\['stats'\]: a collections.Counter"),
        (np.array([object()]), r"producer_state\['stats'\]: a numpy.ndarray"),
        ({"ok": [1, {2, 3}]}, r"producer_state\['stats'\]\['ok'\]\[1\]: a builtins.set"),
    ],
)
def test_producer_state_without_an_exact_json_form_is_refused_naming_its_key(
    tmp_path: Path, value: object, where: str
) -> None:
    model, optimizer, _ = make_run(0)
    with pytest.raises(MMRLError, match=where):
        save_checkpoint(tmp_path, 1, model=model, optimizer=optimizer, scheduler=None, producer_state={"stats": value})
    assert list_checkpoints(tmp_path) == [] and not [p for p in (tmp_path / CHECKPOINTS).iterdir()]


def test_loading_into_a_different_model_names_the_keys(tmp_path: Path) -> None:
    model, optimizer, _ = make_run(0)
    path = save_checkpoint(tmp_path, 1, model=model, optimizer=optimizer, scheduler=None, producer_state={})
    other = torch.nn.Sequential(torch.nn.Linear(8, 8))
    with pytest.raises(MMRLError, match="unexpected keys.*embed.weight"):
        load_checkpoint(path, model=other, optimizer=None, scheduler=None)


# --------------------------------------------------------------------------------------------------
# Pruning, half-written folders, resume resolution


def save_plain(run_dir: Path, step: int, keep: int = 2) -> Path:
    model, optimizer, _ = make_run(step)
    return save_checkpoint(
        run_dir, step, model=model, optimizer=optimizer, scheduler=None, producer_state={"s": step}, keep=keep
    )


def steps_of(run_dir: Path) -> list[int]:
    return [int(p.name.split("-")[1]) for p in list_checkpoints(run_dir)]


def test_keep_n_prunes_oldest_and_never_the_new_one(tmp_path: Path) -> None:
    for step in range(1, 6):
        save_plain(tmp_path, step, keep=2)
    assert steps_of(tmp_path) == [4, 5]
    save_plain(tmp_path, 6, keep=1)
    assert steps_of(tmp_path) == [6]
    for step in (7, 8):
        save_plain(tmp_path, step, keep=0)  # 0 keeps everything
    assert steps_of(tmp_path) == [6, 7, 8]
    # Resumed from step 6 and saving 7 again: 8 belongs to the abandoned timeline and must not win `auto`.
    save_plain(tmp_path, 7, keep=3)
    assert steps_of(tmp_path) == [6, 7]
    assert json.loads((checkpoint_dir(tmp_path, 7) / "meta.json").read_text())["step"] == 7
    assert not [p for p in (tmp_path / CHECKPOINTS).iterdir() if p.name.startswith(".")]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_half_written_checkpoints_are_ignored_and_leftovers_cleaned(tmp_path: Path) -> None:
    good = save_plain(tmp_path, 2)
    root = tmp_path / CHECKPOINTS
    host = socket.gethostname()
    dead_tmp = root / f".tmp-step-0000009-{dead_pid()}-{host}"
    shutil.copytree(good, dead_tmp)  # even complete-looking, a temp folder never counts
    live_tmp = root / f".tmp-step-0000009-{os.getpid()}-{host}"
    shutil.copytree(good, live_tmp)
    unmarked = root / "step-0000004"
    shutil.copytree(good, unmarked)
    (unmarked / "COMPLETE").unlink()
    truncated = root / "step-0000005"
    shutil.copytree(good, truncated)
    with open(truncated / "optimizer.pt", "r+b") as f:
        f.truncate(10)
    no_meta = root / "step-0000006"
    shutil.copytree(good, no_meta)
    (no_meta / "meta.json").unlink()

    assert latest_checkpoint(tmp_path) == good
    assert not dead_tmp.exists()  # its writer is gone: removed
    assert live_tmp.exists()  # a live writer's folder is never touched
    assert unmarked.exists() and truncated.exists()  # not ours to delete, only to ignore
    shutil.rmtree(live_tmp)

    # Killed while replacing step 3 by a new save of step 3, between the two renames: the old one returns.
    set_aside = root / f".old-step-0000003-{dead_pid()}-{host}"
    save_plain(tmp_path, 3, keep=0).rename(set_aside)
    shutil.copytree(good, root / f".tmp-step-0000003-{dead_pid()}-{host}")
    assert latest_checkpoint(tmp_path) == checkpoint_dir(tmp_path, 3)
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == []


def test_resolve_resume(tmp_path: Path) -> None:
    assert resolve_resume("", tmp_path) is None
    assert resolve_resume("auto", tmp_path) is None  # nothing saved yet
    good = save_plain(tmp_path, 3)
    assert resolve_resume("auto", tmp_path) == good
    assert resolve_resume(str(good), tmp_path / "elsewhere") == good
    broken = tmp_path / CHECKPOINTS / "step-0000007"
    shutil.copytree(good, broken)
    (broken / "COMPLETE").unlink()
    with pytest.raises(MMRLError, match=r"no COMPLETE marker.*latest complete checkpoint there is .*step-0000003"):
        resolve_resume(str(broken), tmp_path)
    with pytest.raises(MMRLError, match="does not exist"):
        resolve_resume(str(tmp_path / "nope"), tmp_path)
    with pytest.raises(MMRLError, match="looks like a run folder"):
        resolve_resume(str(tmp_path), tmp_path)
    with pytest.raises(MMRLError, match="cannot resume"):
        model, optimizer, _ = make_run(0)
        load_checkpoint(broken, model=model, optimizer=optimizer, scheduler=None)


# --------------------------------------------------------------------------------------------------
# SIGKILL in the middle of writing

# A "zygote" imports torch once and forks one writer per round, so each kill point costs a fork,
# not an interpreter start. Every writer resumes from `resume=auto` (as a restarted run would) and
# saves steps in a loop; every file of checkpoint k encodes k, so a checkpoint mixing files of two
# saves is caught.
WRITER = textwrap.dedent(
    """
    import os, sys, traceback
    import numpy as np
    import torch
    from mmrl.grpo.checkpoint import load_checkpoint, resolve_resume, save_checkpoint

    # The first optimizer step does slow lazy imports: pay them once here, not in every fork.
    warm = torch.nn.Parameter(torch.zeros(1))
    warm.grad = torch.ones(1)
    torch.optim.AdamW([warm]).step()

    def make():
        model = torch.nn.Linear(1024, 4096)  # ~50 MB per checkpoint with the AdamW moments
        optimizer = torch.optim.AdamW(model.parameters())
        for p in model.parameters():  # moments exist after one step (no autograd: its first use is slow)
            p.grad = torch.ones_like(p)
        optimizer.step()
        return model, optimizer

    def write_forever(run_dir):
        model, optimizer = make()
        path = resolve_resume("auto", run_dir)
        step = load_checkpoint(path, model=model, optimizer=optimizer, scheduler=None)["step"] + 1 if path else 1
        print("ready", flush=True)
        while True:
            with torch.no_grad():
                model.weight.fill_(step)
                model.bias.fill_(step)
                for state in optimizer.state.values():
                    state["exp_avg"].fill_(step)
            producer_state = {"step": step, "rng": np.random.default_rng(step)}
            save_checkpoint(run_dir, step, model=model, optimizer=optimizer, scheduler=None,
                            producer_state=producer_state, keep=2)
            print(f"saved {step}", flush=True)
            step += 1

    for line in sys.stdin:  # one run folder per line: fork a writer into it
        pid = os.fork()
        if pid == 0:
            try:
                write_forever(line.strip())
            except BaseException:
                traceback.print_exc()
            os._exit(3)
        print(f"forked {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"reaped {pid} {status}", flush=True)
    """
)


class Zygote:
    """Drives the writer script: `fork()` starts a writer, `kill()` SIGKILLs it and returns its saved steps."""

    def __init__(self, tmp_path: Path) -> None:
        script = tmp_path / "writer.py"
        script.write_text(WRITER)
        # Single-threaded and without CUDA (whose initialisation starts threads): forking stays safe.
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def _line(self) -> list[str]:
        line = self.proc.stdout.readline().split()
        assert line, "the writer zygote died"
        return line

    def fork(self, run_dir: Path) -> int:
        """Start a writer; return its pid once it is about to save (zygote and writer lines interleave)."""
        self.proc.stdin.write(f"{run_dir}\n")
        self.proc.stdin.flush()
        pid, ready = 0, False
        while not (pid and ready):
            line = self._line()
            assert line[0] in ("forked", "ready"), f"the writer failed before saving: {line}"
            pid = int(line[1]) if line[0] == "forked" else pid
            ready = ready or line[0] == "ready"
        return pid

    def next_saved(self) -> int:
        """Block until the running writer reports its next finished save; return that step."""
        line = self._line()
        assert line[0] == "saved", line
        return int(line[1])

    def kill(self, pid: int) -> list[int]:
        os.kill(pid, signal.SIGKILL)
        saved = []
        while (line := self._line())[0] != "reaped":
            if line[0] == "saved":
                saved.append(int(line[1]))
        assert int(line[2]) == signal.SIGKILL, f"the writer died on its own (status {line[2]})"
        return saved

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def check_loadable(path: Path) -> int:
    """Load the checkpoint into fresh objects and check that every file belongs to the same step."""
    model = torch.nn.Linear(1024, 4096)
    optimizer = torch.optim.AdamW(model.parameters())
    resumed = load_checkpoint(path, model=model, optimizer=optimizer, scheduler=None)
    step = resumed["step"]
    assert path.name == f"step-{step:07d}"
    assert bool((model.weight == step).all()) and bool((model.bias == step).all())
    assert all(bool((s["exp_avg"] == step).all()) for s in optimizer.state.values())
    assert resumed["producer_state"]["step"] == step
    assert resumed["producer_state"]["rng"].random() == np.random.default_rng(step).random()
    return step


@pytest.mark.slow
def test_sigkill_mid_save_leaves_a_complete_checkpoint_or_none(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    zygote = Zygote(tmp_path)
    try:
        # Calibrate: how long one save takes here, so that kill delays spread over whole saves.
        pid = zygote.fork(run_dir)
        start = time.monotonic()
        saved = [zygote.next_saved() for _ in range(3)]
        save_seconds = (time.monotonic() - start) / 3
        highest_saved = max(saved + zygote.kill(pid))
        kill_rng = random.Random(1234)
        where = {"mid-write": 0, "mid-prune": 0, "between saves": 0}
        kills = 30
        for _ in range(kills):
            pid = zygote.fork(run_dir)
            time.sleep(kill_rng.uniform(0.0, 3.0 * save_seconds))
            highest_saved = max([highest_saved, *zygote.kill(pid)])
            names = os.listdir(run_dir / CHECKPOINTS)
            if any(n.startswith(".tmp-") for n in names):
                where["mid-write"] += 1
            elif any(n.startswith(".del-") for n in names):
                where["mid-prune"] += 1
            else:
                where["between saves"] += 1

            latest = latest_checkpoint(run_dir)
            assert latest is not None  # the calibration round already finished saves
            assert check_loadable(latest) >= highest_saved  # a save that reported success is never lost
            assert not [n for n in os.listdir(run_dir / CHECKPOINTS) if n.startswith(".")]  # leftovers cleaned
        print(f"\nSIGKILL points: {kills} {where}; one save ~{save_seconds * 1000:.0f} ms")
        assert where["mid-write"] >= 1
    finally:
        zygote.close()


@pytest.mark.slow
def test_sigkill_during_the_very_first_save_leaves_nothing(tmp_path: Path) -> None:
    """Killed before any save completed: `auto` must find nothing rather than a broken checkpoint."""
    zygote = Zygote(tmp_path)
    try:
        for attempt in range(5):  # retried only if a loaded machine let the first save finish first
            run_dir = tmp_path / f"run-{attempt}"
            pid = zygote.fork(run_dir)
            deadline = time.monotonic() + 30
            while not any((run_dir / CHECKPOINTS).glob(".tmp-*")):  # the writer is inside its first save
                assert time.monotonic() < deadline
                time.sleep(0.0005)
            if not zygote.kill(pid):
                break
    finally:
        zygote.close()
    assert (run_dir / CHECKPOINTS).is_dir()
    assert latest_checkpoint(run_dir) is None
    assert resolve_resume("auto", run_dir) is None


# --------------------------------------------------------------------------------------------------
# Real tiny Qwen2-VL: full save_pretrained and peft adapter-only


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmrl.tiny import build_tiny

    return build_tiny("qwen2-vl", tmp_path_factory.mktemp("models") / "tiny-qwen2-vl", seed=0)


def load_tiny(path: Path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)


def adam_step(model: torch.nn.Module) -> torch.optim.AdamW:
    """One AdamW step on a toy loss over the trainable weights, so that moments exist and weights move."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    sum((p.float() ** 2).sum() + p.sum() for p in params).backward()
    optimizer.step()
    optimizer.zero_grad()
    return optimizer


def test_full_hf_model_round_trip_and_export(tmp_path: Path, tiny_qwen: Path) -> None:
    model = load_tiny(tiny_qwen)
    optimizer = adam_step(model)
    path = save_checkpoint(tmp_path, 1, model=model, optimizer=optimizer, scheduler=None, producer_state={})
    assert (path / "model" / "model.safetensors").is_file() and (path / "model" / "config.json").is_file()

    fresh = load_tiny(tiny_qwen)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    load_checkpoint(path, model=fresh, optimizer=fresh_optimizer, scheduler=None)
    expected = model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in fresh.state_dict().items())
    exported = load_tiny(path / "model")  # the checkpoint's model folder is a regular HF checkpoint
    assert all(torch.equal(v, expected[k]) for k, v in exported.state_dict().items())


def test_peft_checkpoint_holds_only_the_adapter_and_restores_it(tmp_path: Path, tiny_qwen: Path) -> None:
    from peft import LoraConfig, get_peft_model

    def peft_model():
        model = get_peft_model(
            load_tiny(tiny_qwen), LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj)")
        )
        for p in model.base_model.model.model.visual.merger.parameters():  # projector trained outside LoRA
            p.requires_grad_(True)
        return model

    model = peft_model()
    optimizer = adam_step(model)
    path = save_checkpoint(tmp_path, 1, model=model, optimizer=optimizer, scheduler=None, producer_state={})
    assert not (path / "model").exists()
    adapter = load_file(path / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    trainable = load_file(path / "trainable.safetensors")
    assert trainable and all(".merger." in k for k in trainable)

    fresh = peft_model()
    fresh_optimizer = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=1e-2)
    load_checkpoint(path, model=fresh, optimizer=fresh_optimizer, scheduler=None)
    expected = model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in fresh.state_dict().items())
    moments = optimizer.state_dict()["state"]
    assert all(
        torch.equal(s["exp_avg"], moments[i]["exp_avg"]) for i, s in fresh_optimizer.state_dict()["state"].items()
    )

    with pytest.raises(MMRLError, match="not a peft model"):
        load_checkpoint(path, model=load_tiny(tiny_qwen), optimizer=None, scheduler=None)


# --------------------------------------------------------------------------------------------------
# Untrusted checkpoints stay data


class WritesMarker:
    """Unpickling this object runs code (here: creates `marker`), as a crafted checkpoint file would."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def forge_meta(folder: Path, **changes: object) -> None:
    """Rewrite meta.json with `changes`, its sizes and checksums recomputed (for `extra_files`, names relative
    to `folder` that may point outside it) and the marker's digest to match: only the loader's rules can stop it."""
    meta = json.loads((folder / "meta.json").read_text())
    extra_files = changes.pop("extra_files", [])
    meta.update(changes)
    names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    names = [n for n in names if n not in ("meta.json", "COMPLETE")] + list(extra_files)
    meta["files"] = {n: (folder / n).stat().st_size for n in names}
    meta["sha256"] = {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}
    (folder / "meta.json").write_text(json.dumps(meta))
    (folder / "COMPLETE").write_text(hashlib.sha256((folder / "meta.json").read_bytes()).hexdigest())


@pytest.mark.parametrize(
    "how",
    ["producer .pt", "extra .pt", "../ name", "absolute name", "symlink out", "pickle as .json", "optimizer.pt"],
)
def test_crafted_pickle_in_a_checkpoint_never_runs(tmp_path: Path, how: str) -> None:
    run_dir = tmp_path / "run"
    folder = save_plain(run_dir, 3)
    marker = tmp_path / "pwned"
    outside = tmp_path / "evil.pt"
    torch.save(WritesMarker(marker), outside)
    payload = outside.read_bytes()
    if how == "producer .pt":
        (folder / "producer_state.pt").write_bytes(payload)
        forge_meta(folder, producer_state="producer_state.pt")
        expected = r"producer_state file 'producer_state.pt' is not JSON"
    elif how == "extra .pt":
        (folder / "extra.pt").write_bytes(payload)
        forge_meta(folder, extra="extra.pt")
        expected = r"extra file 'extra.pt' is not JSON"
    elif how == "../ name":
        shutil.copy(outside, run_dir / CHECKPOINTS / "evil.pt")
        forge_meta(folder, producer_state="../evil.pt", extra_files=["../evil.pt"])
        expected = r"names file '../evil.pt', which is outside the checkpoint folder"
    elif how == "absolute name":
        forge_meta(folder, producer_state=str(outside), extra_files=[str(outside)])
        expected = r"evil.pt', which is outside the checkpoint folder"
    elif how == "symlink out":
        (folder / "producer_state.pt").symlink_to(outside)
        forge_meta(folder, producer_state="producer_state.pt")
        expected = r"names file 'producer_state.pt', which is outside the checkpoint folder"
    elif how == "pickle as .json":
        (folder / "producer_state.json").write_bytes(payload)
        forge_meta(folder)
        expected = r"producer_state.json is not readable tagged JSON"
    else:
        (folder / "optimizer.pt").write_bytes(payload)
        forge_meta(folder)
        expected = r"optimizer.pt is not plain tensor data .*unpickling anything else can run code"

    model, optimizer, _ = make_run(0)
    with pytest.raises(MMRLError, match=expected):
        load_checkpoint(folder, model=model, optimizer=optimizer, scheduler=None)
    with pytest.raises(MMRLError, match=expected):  # as `train.resume=<folder>` does it
        load_checkpoint(resolve_resume(str(folder), run_dir), model=model, optimizer=optimizer, scheduler=None)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# Integrity: checksums, corrupt newest checkpoint


def flip_last_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[-1] ^= 0x01
    file.write_bytes(bytes(data))


def test_auto_resume_skips_a_corrupt_checkpoint_of_the_same_size_and_says_so(tmp_path: Path, capsys) -> None:
    for step in (1, 2, 3):
        save_plain(tmp_path, step, keep=0)
    newest = checkpoint_dir(tmp_path, 3)
    meta = json.loads((newest / "meta.json").read_text())
    assert (
        meta["format"] == 2 and set(meta["sha256"]) == set(meta["files"]) and "model/model.safetensors" in meta["files"]
    )
    assert meta["sha256"]["optimizer.pt"] == hashlib.sha256((newest / "optimizer.pt").read_bytes()).hexdigest()

    flip_last_byte(newest / "model" / "model.safetensors")  # a weight's last byte: still a loadable file
    assert latest_checkpoint(tmp_path) == newest  # the quick check (sizes) cannot see it ...
    capsys.readouterr()
    assert resolve_resume("auto", tmp_path) == checkpoint_dir(tmp_path, 2)  # ... the checksums do
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "step-0000003" in lines[0] and "model/model.safetensors checksum mismatch" in lines[0]
    with pytest.raises(MMRLError, match=r"step-0000003 is not a usable checkpoint: model/model.safetensors checksum"):
        resolve_resume(str(newest), tmp_path)

    # A flipped byte in meta.json itself (step 3 -> 7, same size) is caught by the marker's digest.
    meta_file = checkpoint_dir(tmp_path, 2) / "meta.json"
    meta_file.write_text(meta_file.read_text().replace('"step": 2', '"step": 7'))
    assert checkpoint_problem(meta_file.parent) == "meta.json checksum mismatch"

    # Format 1 (no checksums, empty marker) still loads, by size only.
    legacy = json.loads((newest / "meta.json").read_text())
    legacy["format"] = 1
    del legacy["sha256"]
    (newest / "meta.json").write_text(json.dumps(legacy))
    (newest / "COMPLETE").write_text("")
    assert resolve_resume("auto", tmp_path) == newest
    model, optimizer, _ = make_run(0)
    assert load_checkpoint(newest, model=model, optimizer=optimizer, scheduler=None)["step"] == 3


def test_auto_resume_reports_truncated_checkpoints_and_refuses_when_none_is_intact(tmp_path: Path, capsys) -> None:
    for step in (1, 2, 3):
        save_plain(tmp_path, step, keep=0)
    with open(checkpoint_dir(tmp_path, 3) / "optimizer.pt", "r+b") as f:
        f.truncate(10)
    flip_last_byte(checkpoint_dir(tmp_path, 2) / "rng.pt")
    capsys.readouterr()
    assert resolve_resume("auto", tmp_path) == checkpoint_dir(tmp_path, 1)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert "step-0000003" in lines[0] and "optimizer.pt has 10 bytes, expected" in lines[0]
    assert "step-0000002" in lines[1] and "rng.pt checksum mismatch" in lines[1]

    flip_last_byte(checkpoint_dir(tmp_path, 1) / "producer_state.json")
    with pytest.raises(MMRLError, match=r"no checkpoint in .* is intact .*step-0000003.*step-0000002.*step-0000001"):
        resolve_resume("auto", tmp_path)
    assert len(list((tmp_path / CHECKPOINTS).glob("step-*"))) == 3  # nothing deleted: the evidence stays
