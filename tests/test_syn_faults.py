"""Syn-GRPO faults at the training level (issue 13 §3): `SynGRPOProducer` with the tiny Qwen2.5-VL and its HF
engine drives a real `mmrl serve-data` process through `HttpBackend` (`dataserver.backend=http`), on
`referring_grounding` scenes re-rendered by the real `procedural` synthesizer. A server SIGKILLed mid-training
and restarted on the same port, a server slower than training, and a short `mmrl train` against a live server.

The client-level versions of these faults (and bad tokens, oversized bodies, garbage JSON, a raising
synthesizer) are in test_dataserver_server.py, whose server-process helpers these tests reuse."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_dataserver_server import ROOT, TOKEN, start_server, stop, wait_for

from mmrl.config import RunConfig, load_config
from mmrl.contracts import Rollout
from mmrl.dataserver.description import DESCRIPTION_TASK
from mmrl.dataserver.producer import SynGRPOProducer, make_backend
from mmrl.dataserver.protocol import LOST, DataBackend, SynthesisRequest, SynthesisResult
from mmrl.rollout import make_engine

pytestmark = pytest.mark.slow

SMALL = [  # 112 x 84 scenes, 4 prompts x 2 rollouts, short replies: about a second per step on 2 CPU cores
    "data.sources.0.task=referring_grounding", "data.sources.0.params.width=112",
    "data.sources.0.params.height=84", "data.prompts_per_step=4", "data.eval_samples=0", "rollout.n=2",
    "rollout.max_new_tokens=4", "dataserver.enabled=true", "dataserver.backend=http", "dataserver.syn_fraction=0.5",
    "dataserver.descriptions_per_step=2", "dataserver.desc_max_new_tokens=6", "dataserver.desc_think=false",
    "dataserver.desc_answer_mode=raw",
]  # fmt: skip


def config(url: str, *overrides: str) -> RunConfig:
    """Far-off staleness bounds: in these tests a reward may only be lost to a fault, never to age."""
    return load_config(RunConfig, None, [*SMALL, f"dataserver.urls=[{url}]", f"dataserver.token={TOKEN}",
                                         "dataserver.max_staleness=1000", "dataserver.max_sample_age=1000",
                                         *overrides])  # fmt: skip


@dataclass
class Recorded:
    """The real backend, passed through, with what the producer sent and got back written down by request id."""

    backend: DataBackend
    submitted: dict[str, int] = field(default_factory=dict)
    """Request id -> policy version, for every request the backend took."""
    results: dict[str, str | None] = field(default_factory=dict)
    """Request id -> reject reason (None: accepted), for every result the producer polled."""

    def submit(self, request: SynthesisRequest) -> bool:
        taken = self.backend.submit(request)
        if taken:
            self.submitted[request.request_id] = request.policy_version
        return taken

    def poll(self, max_results: int) -> list[SynthesisResult]:
        out = self.backend.poll(max_results)
        self.results |= {r.request_id: r.reject_reason for r in out}
        return out

    def metrics(self) -> dict[str, float]:
        return self.backend.metrics()

    def close(self) -> None:
        self.backend.close()


@dataclass
class Training:
    """Runs producer steps and checks what every step must satisfy whatever the server is doing."""

    producer: SynGRPOProducer
    engine: object
    steps: list[tuple[list[Rollout], dict[str, float]]] = field(default_factory=list)

    def step(self) -> dict[str, float]:
        rollouts, m = self.producer.produce(self.engine, len(self.steps))
        cfg = self.producer.cfg
        groups = {r.group_id for r in rollouts if r.task != DESCRIPTION_TASK}
        synthesized = {r.group_id for r in rollouts if r.meta.get("synthesized")}
        assert len(groups) == cfg.data.prompts_per_step, m  # a full batch, the pool fills what the server cannot
        assert len(synthesized) <= math.floor(cfg.dataserver.syn_fraction * cfg.data.prompts_per_step)
        assert m["syn/share"] <= cfg.dataserver.syn_fraction
        assert m["dataserver/step_waited"] == 0.0, m["dataserver/backend_s"]
        self.steps.append((rollouts, m))
        return m

    def matured(self) -> set[str]:
        """Request ids of the description rollouts handed to the trainer so far (their reward matured)."""
        return {r.meta["request_id"] for rollouts, _ in self.steps for r in rollouts if r.task == DESCRIPTION_TASK}

    def max_backend_s(self) -> float:
        return max(m["dataserver/backend_s"] for _, m in self.steps)


def credit_adds_up(m: dict[str, float]) -> None:
    """Every description the credit buffer took is matured, dropped for a reason, or still pending."""
    dropped = sum(v for k, v in m.items() if k.startswith("desc/dropped/"))
    assert m["desc/added"] == m.get("desc/matured_total", 0.0) + dropped + m["desc/pending"], m


def test_a_server_killed_mid_training_loses_no_completed_reward_and_is_rejoined(policy) -> None:
    delayed = ("synthesizer=dataserver_plugins:DelayedSynthesizer", "params={inner: procedural, delay_s: 1.0}")
    server = start_server(*delayed)
    restarted = None
    cfg = config(server.url)
    backend = Recorded(make_backend(cfg))
    training = Training(SynGRPOProducer(cfg, policy[1], backend=backend), make_engine(cfg.rollout, *policy))
    try:
        # Train until synthesized samples are in the batches and, waiting here (never in the producer), a step's
        # two requests are queued on the server: 1 s each on one worker, so the second in line dies with it.
        def ready_to_kill() -> bool:
            synthesized = any(m["syn/share"] > 0 for _, m in training.steps)
            return synthesized and wait_for(lambda: backend.metrics()["dataserver/in_flight"] >= 2, 1.0)

        deadline = time.monotonic() + 120  # a time bound, not a step bound: on a loaded machine steps outpace synthesis
        while not ready_to_kill():
            assert time.monotonic() < deadline, f"no synthesized sample reached a batch in {len(training.steps)} steps"
            training.step()
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=10)
        kill_step, failures_at_kill = len(training.steps), backend.metrics()["dataserver/http_failures"]

        while True:  # training goes on: the original pool fills the batches, the client counts failures
            m = training.step()
            if len(training.steps) - kill_step >= 2 and m["syn/share"] == m["syn/waiting"] == 0:
                break  # every sample received before the kill is in a batch, and now the batch is all original
            assert len(training.steps) - kill_step < 8, m
        assert m["dataserver/servers_up"] == 0 and m["dataserver/http_failures"] > failures_at_kill
        assert m["dataserver/inbox"] == 0  # everything received before the kill has been polled
        received = {rid for rid, reason in backend.results.items() if reason != LOST}  # all before the kill
        assert received, "no result had come back before the kill"

        restarted = start_server("synthesizer=procedural", port=server.port)
        restart_step = len(training.steps)
        assert wait_for(lambda: backend.metrics()["dataserver/servers_up"] == 1, 15)
        lost_on_server = backend.metrics()["dataserver/lost_requests"]
        assert lost_on_server >= 1  # the queue of the dead server; counted when its successor answers
        before_restart = {rid for rid, version in backend.submitted.items() if version < restart_step}

        def settled() -> bool:  # every request sent before the restart has matured or is known to be lost
            lost = {rid for rid, reason in backend.results.items() if reason == LOST}
            synthesized_again = any(m["syn/share"] > 0 for _, m in training.steps[restart_step:])
            return synthesized_again and before_restart <= training.matured() | lost

        deadline = time.monotonic() + 120
        while not settled():
            assert time.monotonic() < deadline, before_restart - training.matured()
            m = training.step()

        lost = {rid for rid, reason in backend.results.items() if reason == LOST}
        assert received <= training.matured()  # no delayed reward lost for a request that had completed
        assert not received & lost and len(lost) == lost_on_server == m["desc/dropped/lost"] == m["syn/lost_requests"]
        credit_adds_up(m)
        assert "desc/dropped/stale" not in m and "syn/dropped_samples/unusable" not in m
        # still pending: only requests of the newest steps, sent to the new server and not back yet
        pending = set(backend.submitted) - training.matured() - lost
        assert len(pending) == m["desc/pending"] and all(backend.submitted[r] >= restart_step for r in pending)
        matured_at_kill = training.steps[kill_step - 1][1].get("desc/matured_total", 0.0)
        print(f"\nkill mid-training: {len(training.steps)} steps (kill before step {kill_step}, restart before "
              f"{restart_step}); max backend_s {training.max_backend_s() * 1e3:.2f} ms; http_failures "
              f"{m['dataserver/http_failures']:.0f}; lost requests {len(lost)}; received before the kill "
              f"{len(received)}, all matured; desc matured {matured_at_kill:.0f} at the kill -> "
              f"{m['desc/matured_total']:.0f} at the end, pending {m['desc/pending']:.0f}")  # fmt: skip
    finally:
        training.producer.close()
        stop(server)
        if restarted is not None:
            stop(restarted)


def test_a_server_slower_than_training_never_makes_a_step_wait(policy) -> None:
    server = start_server("synthesizer=dataserver_plugins:SlowSynthesizer", "params={delay_s: 3.0}",
                          "request_queue=2")  # fmt: skip
    cfg = config(server.url)
    training = Training(SynGRPOProducer(cfg, policy[1]), make_engine(cfg.rollout, *policy))
    try:
        start = time.perf_counter()
        for _ in range(5):
            m = training.step()
        per_step = (time.perf_counter() - start) / len(training.steps)
        assert per_step < 3.0  # the synthesizer really is slower than a training step
        assert m["dataserver/waited_share"] == 0.0 and m["syn/steps"] == 5
        described = m["syn/submitted"] + m.get("syn/submit_refused", 0.0) + m.get("syn/empty_descriptions", 0.0)
        assert described == 2 * 5  # each step's two descriptions: sent, refused by a full outbox, or empty
        assert m["syn/submitted"] > m.get("dataserver/accepted", 0.0)  # the backlog the server could not clear
        assert m["dataserver/server_queue_full"] > 0  # its full queue refused some: they wait in the client
        credit_adds_up(m)
        shares = [step["syn/share"] for _, step in training.steps]
        waits = [round(step["dataserver/backend_s"] * 1e3, 2) for _, step in training.steps]
        print(f"\nslow server: {per_step:.2f} s per step, synthesis 3 s per request; waited_share "
              f"{m['dataserver/waited_share']}; backend_s per step {waits} ms; syn/share per step {shares}; "
              f"submit refused {m.get('syn/submit_refused', 0):.0f}")  # fmt: skip
    finally:
        training.producer.close()
        stop(server)


def test_mmrl_train_against_a_live_server_logs_the_data_server_metrics(tmp_path: Path) -> None:
    server = start_server("synthesizer=procedural")
    run = tmp_path / "run"
    env = {**os.environ, "MMRL_DATA_TOKEN": TOKEN}  # the token from the environment, not the config
    command = [sys.executable, "-m", "mmrl.cli", "train", *SMALL, f"dataserver.urls=[{server.url}]",
               "train.steps=4", f"train.out_dir={run}", "train.save_every=100", "log.tensorboard=false",
               "log.plot=false", "log.progress=false"]  # fmt: skip
    try:
        out = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=240)
        assert out.returncode == 0, out.stderr[-3000:]
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        steps = [r for r in rows if "dataserver/backend_s" in r]
        assert len(steps) == 4 and all(r["dataserver/step_waited"] == 0.0 for r in steps)
        last = steps[-1]
        for key in ("dataserver/servers_up", "dataserver/submitted", "dataserver/accepted", "syn/share",
                    "syn/submitted", "desc/matured_total"):  # fmt: skip
            assert key in last, sorted(last)
        assert last["dataserver/servers_up"] == 1 and last["dataserver/http_failures"] == 0
        assert last["dataserver/accepted"] > 0 and last["syn/submitted"] > 0
        assert (run / "final").is_dir()
    finally:
        stop(server)
