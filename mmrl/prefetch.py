"""Work done ahead of use in worker processes, handed back in the order the caller asks for it.

    caller: request(key) ... request(key')  ──► ticket queue ──► worker processes: job(key) ──► result queue
    caller: take(key)  ◄── results kept by key ◄───────────────────────────────────────────────┘

`KeyedPrefetcher(job, workers=w)` starts `w` worker processes (the `spawn` start method: no state forked
from a process that holds model weights and threads); each unpickles its own copy of `job` once and
then computes `job(key)` for every key the caller `request`s, in request order. `take(key)` returns
that result, waiting for it when it is not there yet (and requesting it when nobody did).

Results are kept by key, not queued: the caller alone decides the order in which it uses them, so when
`job(key)` is a pure function of `key`, prefetching cannot change what the caller sees, only when it is
ready. Requesting a key nobody takes wastes work and nothing else. `TaskProducer` (mmrl/producers.py) uses
it with key = (source index, draw number): draws of the mixture's sources made while the trainer trains.

Results travel as plain pickles (tensors by value): both ends are our own processes, and a pickle of
bytes needs no file descriptors or shared-memory segments that outlive a killed worker.

Failures surface in the caller, at the `take` of the key they belong to: an exception raised by
`job(key)` is re-raised as `PrefetchError` with the worker's message and traceback, and a worker that
died is reported with its exit code. Workers never outlive their caller: `close()` (also run when the
prefetcher is garbage-collected and at interpreter exit) stops them, and a worker whose parent process
is gone (killed, so nobody called `close`) notices within `POLL_S` seconds and exits.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import queue
import signal
import sys
import time
import traceback
import weakref
from collections.abc import Callable, Hashable
from typing import Any

from mmrl.errors import MMRLError

log = logging.getLogger(__name__)

POLL_S = 0.5
"""How often a waiting side checks that the other is still alive, in seconds."""
STOP_WAIT_S = 10.0
"""How long `close` lets workers finish their current job before terminating them, in seconds."""


class PrefetchError(MMRLError):
    """A prefetch worker failed: its job raised (the message names the key and carries the worker's
    traceback) or the worker process died."""


class KeyedPrefetcher:
    """Compute `job(key)` ahead of use in `workers` processes; `take(key)` hands the results back in any order.

    `job` must be picklable (it is sent to each worker once) and should be a pure function of the key, so that
    the caller sees the same results with and without prefetching. `threads` caps each worker's torch/OpenMP
    threads: a worker runs beside the trainer and should not take its cores. `describe(key)` words a key in
    error messages (default: `repr`).
    """

    def __init__(
        self,
        job: Callable[[Any], Any],
        *,
        workers: int = 1,
        threads: int = 1,
        name: str = "prefetch",
        describe: Callable[[Any], str] = repr,
    ) -> None:
        if workers < 1:
            raise MMRLError(f"a prefetcher needs at least one worker, got workers={workers}")
        self.name = name
        self._describe = describe
        job_bytes = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)  # fails here, in the caller, if unpicklable
        context = multiprocessing.get_context("spawn")
        self._tickets = context.Queue()
        self._results = context.Queue()
        self._tickets.cancel_join_thread()  # tickets nobody will read must not block our exit
        # The job goes through a queue, not the Process arguments: `start()` writes those synchronously, and a
        # child that dies before reading them all (e.g. re-running an unguarded main script) would block us.
        setups = [context.Queue() for _ in range(workers)]  # kept until shutdown: the child opens their locks
        self._procs = [
            context.Process(
                target=_worker_main,
                args=(setup, self._tickets, self._results, threads),
                name=f"{name}-{w}",
                daemon=True,  # multiprocessing terminates daemonic children at interpreter exit
            )
            for w, setup in enumerate(setups)
        ]
        for proc, setup in zip(self._procs, setups):
            proc.start()
            setup.put(job_bytes)
            setup.cancel_join_thread()  # a worker that died before reading it must not block our exit
        self._requested: set[Hashable] = set()
        self._ready: dict[Hashable, tuple] = {}
        self._closed = False
        # Not a method of self: the finalizer must not keep the prefetcher alive.
        self._finalizer = weakref.finalize(self, _shutdown, self._procs, [self._tickets, *setups], self._results, name)

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers (for tests and diagnostics)."""
        return [int(p.pid) for p in self._procs if p.pid is not None]

    @property
    def outstanding(self) -> int:
        """Keys requested and not taken yet (computed or still in the works)."""
        return len(self._requested)

    def requested(self, key: Hashable) -> bool:
        """Whether `key` was requested and not taken yet."""
        return key in self._requested

    def request(self, key: Hashable) -> None:
        """Have a worker compute `job(key)`; a key already requested and not taken yet is not computed twice."""
        if self._closed:
            raise PrefetchError(f"{self.name}: request({self._describe(key)}) after close()")
        if key not in self._requested:
            self._requested.add(key)
            self._tickets.put(key)

    def take(self, key: Hashable) -> Any:
        """The result of `job(key)`, waiting for it (requested now if it was not); raises `PrefetchError` when
        the job raised or a worker died."""
        self.request(key)
        while key not in self._ready:
            try:
                result = self._results.get(timeout=POLL_S)
            except queue.Empty:
                result = None
            if result is None:
                self._check_workers(key)
                continue
            self._ready[result[1]] = result
        self._requested.discard(key)
        status, _, *rest = self._ready.pop(key)
        if status == "error":
            message, trace = rest
            raise PrefetchError(f"{self.name} worker failed on {self._describe(key)}: {message}\n"
                                f"--- traceback in the worker ---\n{trace}")  # fmt: skip
        return pickle.loads(rest[0])

    def close(self) -> None:
        """Stop the workers (each finishes the job it is on, at most `STOP_WAIT_S`) and drop unused results."""
        self._closed = True
        self._requested.clear()
        self._ready.clear()
        self._finalizer()

    def _check_workers(self, key: Hashable) -> None:
        dead = [p for p in self._procs if not p.is_alive()]
        if dead:
            names = ", ".join(f"{p.name} (pid {p.pid}, exit code {p.exitcode})" for p in dead)
            raise PrefetchError(
                f"{self.name}: worker {names} died while {self._describe(key)} was awaited (its error, if any, is "
                "on stderr above). Workers are spawned: they import the main module, so a script that starts "
                "training must do so under `if __name__ == '__main__':`; a worker killed for lack of memory "
                "leaves no message (check `dmesg`)"
            )


def _worker_main(setup: Any, tickets: Any, results: Any, threads: int) -> None:
    """One worker: receive the job, then compute it for each ticket in turn until told to stop or orphaned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the caller stops us
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    # Exiting must not wait until our last results are read: an orphan's never are (and the pipe stays open, as
    # the other workers hold its read end too). The caller discards unread results anyway.
    results.cancel_join_thread()
    parent = multiprocessing.parent_process()
    job_bytes = _get_while_parent_lives(setup, parent)
    if job_bytes is None:
        return
    job = pickle.loads(job_bytes)
    if (torch := sys.modules.get("torch")) is not None:  # imported by the job's modules, or by the main module
        torch.set_num_threads(threads)
    while True:
        key = _get_while_parent_lives(tickets, parent)
        if key is None:
            return
        try:
            payload = pickle.dumps(job(key), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:
            results.put(("error", key, f"{type(e).__name__}: {e}", traceback.format_exc()))
            continue
        results.put(("ok", key, payload))


def _get_while_parent_lives(q: Any, parent: Any) -> Any:
    """The next item of `q`, or None once the parent process is gone (killed: nobody will take our results)."""
    while True:
        try:
            return q.get(timeout=POLL_S)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return None


def _shutdown(procs: list, queues: list, results: Any, name: str) -> None:
    """Stop `procs`: a stop ticket each (`queues[0]` is the ticket queue), then drain results (a worker cannot exit
    while its last result does not fit the pipe) until they exit, and terminate any still running after
    `STOP_WAIT_S`."""
    tickets = queues[0]
    for proc in procs:
        if proc.is_alive():
            try:
                tickets.put(None)
            except (OSError, ValueError):  # the queue is already closed
                break
    deadline = time.monotonic() + STOP_WAIT_S
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        try:
            while True:
                results.get_nowait()
        except (queue.Empty, OSError, ValueError, EOFError):
            pass
        for proc in procs:
            proc.join(timeout=0.05)
    for proc in procs:
        if proc.is_alive():
            log.warning("%s: worker %s did not stop in %.0fs; terminating it", name, proc.name, STOP_WAIT_S)
            proc.terminate()
            proc.join(timeout=STOP_WAIT_S)
        if proc.is_alive():
            proc.kill()
            proc.join()
    for q in (*queues, results):
        q.cancel_join_thread()  # never block interpreter exit on a queue nobody reads any more
        q.close()
