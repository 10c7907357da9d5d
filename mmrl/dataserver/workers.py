"""Synthesis workers behind bounded queues: the in-process backend, and the engine of `mmrl serve-data`.

    submit ──► request queue (bounded) ──► N worker threads: synthesizer(request, rng) ──► ready queue (bounded)
                                                                                      ──► poll

A full request queue refuses new requests (`submit` returns False) instead of blocking the trainer; a full
ready queue pauses the workers, so the server never makes samples nobody takes (../specs/syn_grpo.md §3.3).
Worker w calls its own synthesizer, `make_synthesizer(w)` (one per GPU when there are GPUs), with
`rng = default_rng([seed, crc32(request_id)])`: the same request gives the same sample on any worker.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Callable

import numpy as np

from mmrl.dataserver.protocol import Rejected, SynthesisRequest, SynthesisResult, Synthesizer

log = logging.getLogger(__name__)


LATENCY_WINDOW = 256
"""The mean synthesis latency is over this many most recent results."""


def drain(q: queue.Queue, max_items: int) -> list:
    """Up to `max_items` items of `q`, oldest first, without waiting."""
    out: list = []
    while len(out) < max_items:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            break
    return out


def outcome_metrics(counts: dict[str, int], latencies: list[float]) -> dict[str, float]:
    """`dataserver/<count>` for every count, the mean latency of `latencies`, and the reject rate:
    rejected / (accepted + rejected), rejects being the `rejected/<reason>` counts."""
    m = {f"dataserver/{k}": float(v) for k, v in counts.items()}
    if latencies:
        m["dataserver/latency_s"] = float(np.mean(latencies))
    done = counts.get("accepted", 0) + sum(v for k, v in counts.items() if k.startswith("rejected/"))
    if done:
        m["dataserver/reject_rate"] = 1.0 - counts.get("accepted", 0) / done
    return m


class WorkerPool:
    """A `DataBackend` that synthesizes in this process, on `workers` threads."""

    def __init__(
        self,
        make_synthesizer: Callable[[int], Synthesizer],
        *,
        workers: int = 1,
        request_queue: int = 256,
        ready_queue: int = 512,
        seed: int = 0,
    ) -> None:
        if workers < 1 or request_queue < 1 or ready_queue < 1:
            raise ValueError(f"workers, request_queue and ready_queue must be >= 1, got {workers}, "
                             f"{request_queue}, {ready_queue}")  # fmt: skip
        self.seed = seed
        self.requests: queue.Queue[tuple[SynthesisRequest, float]] = queue.Queue(request_queue)
        self.ready: queue.Queue[SynthesisResult] = queue.Queue(ready_queue)
        self.counts: Counter[str] = Counter()
        self.latencies: deque[float] = deque(maxlen=LATENCY_WINDOW)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, args=(make_synthesizer(w),), name=f"synth-{w}", daemon=True)
            for w in range(workers)
        ]
        for t in self._threads:
            t.start()

    # -- DataBackend --------------------------------------------------------------------------------

    def submit(self, request: SynthesisRequest) -> bool:
        try:
            self.requests.put_nowait((request, time.perf_counter()))
        except queue.Full:
            self._count("request_queue_full")
            return False
        self._count("submitted")
        return True

    def poll(self, max_results: int) -> list[SynthesisResult]:
        return drain(self.ready, max_results)

    def metrics(self) -> dict[str, float]:
        with self._lock:
            counts, lat = dict(self.counts), list(self.latencies)
        m = outcome_metrics(counts, lat)
        m["dataserver/request_queue"] = float(self.requests.qsize())
        m["dataserver/ready_queue"] = float(self.ready.qsize())
        return m

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5.0)

    # -- workers ------------------------------------------------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def _work(self, synthesizer: Synthesizer) -> None:
        while not self._stop.is_set():
            try:
                request, arrived = self.requests.get(timeout=0.1)
            except queue.Empty:
                continue
            result = self._synthesize(synthesizer, request, arrived)
            while not self._stop.is_set():  # a full ready queue pauses this worker, never the trainer
                try:
                    self.ready.put(result, timeout=0.1)
                    break
                except queue.Full:
                    continue

    def _synthesize(self, synthesizer: Synthesizer, request: SynthesisRequest, arrived: float) -> SynthesisResult:
        rng = np.random.default_rng([self.seed, zlib.crc32(request.request_id.encode("utf-8"))])
        result = SynthesisResult(request.request_id, request.policy_version)
        try:
            result.sample = synthesizer(request, rng)
            self._count("accepted")
        except Rejected as e:
            result.reject_reason = e.reason
            self._count(f"rejected/{e.reason}")
        except Exception as e:  # a synthesizer bug rejects its request; the pool goes on
            result.reject_reason = "synthesizer_error"
            self._count("rejected/synthesizer_error")
            log.warning("synthesizer %s raised on request %s: %s: %s", getattr(synthesizer, "name", "?"),
                        request.request_id, type(e).__name__, e)  # fmt: skip
        result.latency_s = time.perf_counter() - arrived
        with self._lock:
            self.latencies.append(result.latency_s)
        return result


__all__ = ["LATENCY_WINDOW", "WorkerPool", "drain", "outcome_metrics"]
