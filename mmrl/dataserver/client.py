"""`HttpBackend`: the producer's side of `mmrl serve-data`, a `DataBackend` that never waits on the network.

    submit ──► outbox (bounded) ──┐                        ┌──► POST /v1/requests   server 1
                                  ├── one I/O thread ──────┼──► GET  /v1/results    server 2 ...
    poll   ◄── inbox (bounded) ◄──┘  (round-robin, backoff)└──► GET  /health  (probe a server marked down)

The caller only touches the two local queues: `submit` is a `put_nowait` (False and counted when the outbox
is full), `poll` a `get_nowait`. The thread encodes requests (`mmrl.dataserver.wire`), sends one batch to
each server that is up in turn, and fetches results only while the inbox has room, so a trainer that stops
polling pauses the servers (their ready queues fill) instead of growing memory here.

Faults. A connection error, a timeout or a 5xx marks a server down (`dataserver/http_failures` counts each);
it is probed on `/health` again after a backoff that doubles from 0.1 s up to `max_backoff_s`. Results
already received stay in the inbox whatever happens to the server. A batch whose connection was refused
never arrived and goes back to the head of the queue for the next server; requests a server refused
because its queue was full are retried the same way (backpressure reaches `submit` through the outbox).
The ids queued on each server are kept until their results come back: when a server reappears with a new
`instance` id it has restarted and lost them; they are counted in `dataserver/lost_requests` and `poll` hands
each back as a result with `reject_reason` `LOST`, so the producer stops waiting for its delayed reward. A batch
the server answered with 4xx (bad token, body too large, malformed record) is dropped and counted in
`dataserver/http_rejected`; the server's reason is logged.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

from mmrl.dataserver.protocol import LOST, SynthesisRequest, SynthesisResult
from mmrl.dataserver.wire import WireLimits, decode_result, encode_request
from mmrl.dataserver.workers import LATENCY_WINDOW, drain, outcome_metrics
from mmrl.errors import MMRLError

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 0.1


@dataclass
class _Server:
    """What the I/O thread knows about one server."""

    url: str
    up: bool = False
    """Answered its last call; a new server starts down and is probed on /health first."""
    instance: str = ""
    """The `instance` id of its /health: a different one means it restarted."""
    retry_at: float = 0.0
    backoff_s: float = 0.0
    in_flight: dict[str, int] = field(default_factory=dict)
    """Request id -> policy version of the requests it queued whose results have not come back."""
    depths: dict[str, float] = field(default_factory=dict)
    """Its queue depths, from its last results answer."""


class HttpBackend:
    """A `DataBackend` over HTTP to one or more `mmrl serve-data` servers (module docstring)."""

    def __init__(
        self,
        urls: list[str],
        token: str = "",
        *,
        timeout_s: float = 2.0,
        outbox: int = 256,
        inbox: int = 512,
        poll_interval_s: float = 0.05,
        batch_size: int = 32,
        max_backoff_s: float = 5.0,
    ) -> None:
        if isinstance(urls, str) or not urls:
            raise ValueError(f"HttpBackend needs a non-empty list of server URLs, got {urls!r}")
        if outbox < 1 or inbox < 1 or batch_size < 1 or timeout_s <= 0 or poll_interval_s <= 0:
            raise ValueError("outbox, inbox and batch_size must be >= 1, timeout_s and poll_interval_s > 0")
        self.servers = [_Server(url.rstrip("/")) for url in urls]
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s
        self.batch_size = batch_size
        self.max_backoff_s = max_backoff_s
        self._outbox: queue.Queue[SynthesisRequest] = queue.Queue(outbox)
        self._inbox: queue.Queue[SynthesisResult] = queue.Queue(inbox)
        self._lost: collections.deque[SynthesisResult] = collections.deque()  # `LOST` results, not yet polled
        self._pending: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()  # encoded, I/O thread only
        self._limits = WireLimits(max_image_pixels=2**62, max_description_chars=2**62, max_images=2**30)
        self._counts: Counter[str] = Counter()
        self._latencies: collections.deque[float] = collections.deque(maxlen=LATENCY_WINDOW)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._next_server = 0
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(headers=headers, timeout=timeout_s, trust_env=False)
        self._thread = threading.Thread(target=self._run, name="dataserver-http", daemon=True)
        self._thread.start()

    # -- DataBackend --------------------------------------------------------------------------------

    def submit(self, request: SynthesisRequest) -> bool:
        try:
            self._outbox.put_nowait(request)
        except queue.Full:
            self._count("outbox_full")
            return False
        self._count("submitted")
        return True

    def poll(self, max_results: int) -> list[SynthesisResult]:
        out: list[SynthesisResult] = []
        while len(out) < max_results and self._lost:  # outside the bounded inbox: a full inbox never hides a loss
            out.append(self._lost.popleft())
        return out + drain(self._inbox, max_results - len(out))

    def metrics(self) -> dict[str, float]:
        with self._lock:
            counts, lat = dict(self._counts), list(self._latencies)
            servers = [(s.up, len(s.in_flight), dict(s.depths)) for s in self.servers]
        m = outcome_metrics(counts, lat)
        m["dataserver/outbox"] = float(self._outbox.qsize() + len(self._pending))
        m["dataserver/inbox"] = float(self._inbox.qsize())
        m["dataserver/servers_up"] = float(sum(up for up, _, _ in servers))
        m["dataserver/in_flight"] = float(sum(n for _, n, _ in servers))
        m["dataserver/http_failures"] = float(counts.get("http_failures", 0))
        m["dataserver/lost_requests"] = float(counts.get("lost_requests", 0))
        for key in ("request_queue", "ready_queue"):  # summed over the servers that are up, as last reported
            m[f"dataserver/{key}"] = float(sum(d.get(key, 0.0) for up, _, d in servers if up))
        return m

    def close(self) -> None:
        """Stop the I/O thread (within one call's timeout) and close the connections."""
        self._stop.set()
        self._thread.join(timeout=self.timeout_s + 1.0)
        self._http.close()

    # -- the I/O thread -----------------------------------------------------------------------------

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._round()
            except Exception as e:  # a bug here must not silence the backend for the rest of the run
                self._count("client_errors")
                log.exception("data server client: %s: %s", type(e).__name__, e)
            self._stop.wait(self.poll_interval_s)

    def _round(self) -> None:
        now = time.monotonic()
        for server in self.servers:
            if not server.up and now >= server.retry_at and not self._stop.is_set():
                self._probe(server)
        up = [s for s in self.servers if s.up]
        for i in range(len(up)):  # one batch per server that is up, starting where the last round stopped
            if self._stop.is_set() or not self._fill_pending():
                break
            server = up[(self._next_server + i) % len(up)]
            self._send(server)
        self._next_server += 1
        for server in self.servers:
            if server.up and not self._stop.is_set():
                self._fetch(server)

    def _fill_pending(self) -> bool:
        """Encode requests from the outbox until a batch is ready; whether there is anything to send."""
        while len(self._pending) < self.batch_size:
            try:
                request = self._outbox.get_nowait()
            except queue.Empty:
                break
            try:
                record = encode_request(request)
                json.dumps(record, allow_nan=False)  # answer and meta must be plain JSON to travel
            except (MMRLError, TypeError, ValueError) as e:
                self._count("unsendable")
                log.warning("data server client: request %s cannot be sent: %s", request.request_id, e)
                continue
            self._pending.append((request.request_id, record))
        return bool(self._pending)

    def _send(self, server: _Server) -> None:
        batch = [self._pending.popleft() for _ in range(min(self.batch_size, len(self._pending)))]
        versions = {request_id: int(record["policy_version"]) for request_id, record in batch}
        try:
            response = self._http.post(f"{server.url}/v1/requests", json={"requests": [r for _, r in batch]})
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:  # never arrived: the next server gets it
            self._pending.extendleft(reversed(batch))
            self._down(server, e)
            return
        except httpx.HTTPError as e:  # it may have arrived: its results come back, or a restart loses them
            with self._lock:
                server.in_flight.update(versions)
            self._down(server, e)
            return
        if response.status_code >= 500:
            with self._lock:
                server.in_flight.update(versions)
            self._down(server, f"HTTP {response.status_code}")
            return
        if response.status_code != 200:
            self._count("http_rejected", len(batch))
            log.warning("data server %s refused a batch of %d: HTTP %d %s", server.url, len(batch),
                        response.status_code, response.text[:300])  # fmt: skip
            return
        answer = response.json()
        refused = {r["request_id"] for r in answer.get("refused", [])}
        with self._lock:
            server.in_flight.update({k: v for k, v in versions.items() if k not in refused})
        if refused:
            self._count("server_queue_full", len(refused))
            self._pending.extendleft(reversed([item for item in batch if item[0] in refused]))

    def _fetch(self, server: _Server) -> None:
        room = self._inbox.maxsize - self._inbox.qsize()  # only this thread fills the inbox
        if room <= 0:
            return
        try:
            response = self._http.get(f"{server.url}/v1/results", params={"max": min(room, 256)})
        except httpx.HTTPError as e:
            self._down(server, e)
            return
        if response.status_code >= 500:
            self._down(server, f"HTTP {response.status_code}")
            return
        if response.status_code != 200:
            self._count("http_rejected")
            log.warning("data server %s refused a results call: HTTP %d %s", server.url, response.status_code,
                        response.text[:300])  # fmt: skip
            return
        answer = response.json()
        with self._lock:
            server.depths = {k: float(answer.get(k, 0.0)) for k in ("request_queue", "ready_queue")}
        for i, record in enumerate(answer.get("results", [])):
            try:
                result = decode_result(record, self._limits, f"results[{i}]")
            except MMRLError as e:
                self._count("bad_results")
                log.warning("data server %s sent a bad result: %s", server.url, e)
                continue
            with self._lock:
                server.in_flight.pop(result.request_id, None)
                self._counts["accepted" if result.accepted else f"rejected/{result.reject_reason}"] += 1
                self._latencies.append(result.latency_s)
            self._inbox.put_nowait(result)  # room was checked above and nobody else puts

    def _probe(self, server: _Server) -> None:
        try:
            response = self._http.get(f"{server.url}/health")
            health = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError) as e:
            self._down(server, e)
            return
        if not isinstance(health, dict) or not isinstance(health.get("instance"), str):
            self._down(server, f"/health answered HTTP {response.status_code} without an instance id")
            return
        with self._lock:
            if server.instance and health["instance"] != server.instance and server.in_flight:
                self._counts["lost_requests"] += len(server.in_flight)
                log.warning("data server %s restarted: %d queued requests lost", server.url, len(server.in_flight))
                self._lost.extend(SynthesisResult(request_id, version, reject_reason=LOST)
                                  for request_id, version in server.in_flight.items())  # fmt: skip
                server.in_flight.clear()
            server.instance = health["instance"]
            server.up, server.backoff_s = True, 0.0
        log.info("data server %s is up", server.url)

    def _down(self, server: _Server, reason: Any) -> None:
        if server.up:
            log.warning("data server %s is down: %s", server.url, reason)
        with self._lock:
            self._counts["http_failures"] += 1
            server.up = False
        server.backoff_s = min(self.max_backoff_s, max(FIRST_BACKOFF_S, 2 * server.backoff_s))
        server.retry_at = time.monotonic() + server.backoff_s


__all__ = ["HttpBackend"]
