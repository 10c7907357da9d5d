"""`mmrl serve-data` as a real process, reached by `HttpBackend` and by raw httpx: auth, limits, malformed input,
synthesizer faults, scale-out over two servers, a SIGKILLed and restarted server, a server slower than training."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from mmrl.config import load_config
from mmrl.dataserver.client import HttpBackend
from mmrl.dataserver.protocol import LOST, SynthesisRequest, SynthesisResult
from mmrl.dataserver.server_config import ServerConfig
from mmrl.dataserver.wire import encode_request
from mmrl.errors import ConfigError
from mmrl.sample import Sample

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-token-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class ServerProcess:
    proc: subprocess.Popen
    url: str
    port: int
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "".join(self.lines)


def start_server(*args: str, port: int = 0, token: str = TOKEN, timeout_s: float = 30.0) -> ServerProcess:
    """`mmrl serve-data` in a subprocess (tests/ on its path for `dataserver_plugins`), once /health answers."""
    env = {k: v for k, v in os.environ.items() if k != "MMRL_DATA_TOKEN"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "mmrl.cli", "serve-data", "--port", str(port), *args]
    if token:
        command += ["--token", token]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    announced: queue.Queue[str] = queue.Queue()

    def read() -> None:  # drain the pipe all along, so a chatty server never blocks on it
        for line in proc.stdout:
            lines.append(line)
            if "listening on " in line:
                announced.put(line.split("listening on ")[1].split()[0])

    threading.Thread(target=read, daemon=True).start()
    try:
        url = announced.get(timeout=timeout_s)
    except queue.Empty:
        proc.kill()
        raise AssertionError("server did not start: " + "".join(lines)) from None
    deadline = time.monotonic() + timeout_s
    while httpx.get(f"{url}/health").status_code != 200:
        assert time.monotonic() < deadline, "server never answered /health"
        time.sleep(0.05)
    return ServerProcess(proc, url, int(url.rsplit(":", 1)[1]), lines)


def stop(server: ServerProcess) -> None:
    if server.proc.poll() is None:
        server.proc.kill()
    server.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    """An identity server with 2 workers and a 300 kB body limit."""
    s = start_server("--workers", "2", "max_body_bytes=300000")
    try:
        yield s
    finally:
        stop(s)


def picture(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (24, 32, 3), dtype=np.uint8))


def request(i: int, description: str = "a quiet harbour at dawn") -> SynthesisRequest:
    content = [{"type": "image", "image": picture(i)}, {"type": "text", "text": "the boat"}]
    answer, meta = {"box": [2, 3, 10, 12], "label": "boat"}, {"image_size": [32, 24]}
    seed = Sample(f"seed-{i}", "referring_grounding", [{"role": "user", "content": content}], answer, meta)
    return SynthesisRequest(f"req-{i}", seed, description, policy_version=i % 5)


def collect(backend: HttpBackend, n: int, timeout_s: float = 20.0) -> list[SynthesisResult]:
    results: list[SynthesisResult] = []
    deadline = time.monotonic() + timeout_s
    while len(results) < n and time.monotonic() < deadline:
        results += backend.poll(n - len(results))
        time.sleep(0.01)
    return results


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def server_metrics(s: ServerProcess) -> dict[str, float]:
    return httpx.get(f"{s.url}/v1/metrics", headers=AUTH).json()


# --------------------------------------------------------------------------------------------------
# Without a server


def test_the_example_config_loads_and_an_unknown_key_is_named(tmp_path: Path) -> None:
    cfg = load_config(ServerConfig, ROOT / "configs" / "dataserver_identity.yaml")
    assert (cfg.host, cfg.synthesizer, cfg.workers) == ("127.0.0.1", "identity", 2)
    bad = tmp_path / "bad.yaml"
    bad.write_text("worker: 2\n")
    with pytest.raises(ConfigError, match="'worker'.*workers"):
        load_config(ServerConfig, bad)


def test_a_non_loopback_host_without_a_token_is_refused_before_binding() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MMRL_DATA_TOKEN"}
    out = subprocess.run([sys.executable, "-m", "mmrl.cli", "serve-data", "--host", "0.0.0.0", "--port", "0"],
                         capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "listening" not in out.stdout
    assert "non-loopback host '0.0.0.0' without a token" in out.stderr


def test_serve_data_describes_itself() -> None:
    out = subprocess.run([sys.executable, "-m", "mmrl.cli", "serve-data", "--help"], capture_output=True, text=True)
    text = " ".join(out.stdout.split())
    assert out.returncode == 0 and "usage: mmrl serve-data" in text
    for needle in ("GET /health (no auth)", "MMRL_DATA_TOKEN", "max_body_bytes (int, >= 1024", "--workers"):
        assert needle in text


# --------------------------------------------------------------------------------------------------
# One identity server


def test_health_answers_without_a_token(server: ServerProcess) -> None:
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["workers"] == 2 and len(health["instance"]) == 32


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}])
@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/requests"), ("GET", "/v1/results"),
                                              ("GET", "/v1/metrics"), ("GET", "/v1/unknown")])  # fmt: skip
def test_every_other_endpoint_needs_the_token(server: ServerProcess, method: str, path: str, headers: dict) -> None:
    response = httpx.request(method, f"{server.url}{path}", headers=headers, content=b'{"requests": []}')
    assert response.status_code == 401 and "bearer token" in response.json()["error"]
    assert response.headers["www-authenticate"] == "Bearer"


def test_an_oversized_body_gets_413_declared_or_streamed(server: ServerProcess) -> None:
    body = b'{"requests": [' + b" " * 400_000 + b"]}"
    declared = httpx.post(f"{server.url}/v1/requests", headers=AUTH, content=body)
    assert declared.status_code == 413 and "over the limit of 300000" in declared.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap applies while reading
        for i in range(0, len(body), 50_000):
            yield body[i : i + 50_000]

    streamed = httpx.post(f"{server.url}/v1/requests", headers=AUTH, content=chunks())
    assert streamed.status_code == 413 and "over the limit of 300000" in streamed.json()["error"]
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_malformed_bodies_get_a_reason_and_nothing_is_queued(server: ServerProcess) -> None:
    before = server_metrics(server).get("dataserver/submitted", 0.0)
    good, bad = encode_request(request(1)), encode_request(request(2))
    bad["policy_version"] = "two"
    cases = [
        (b"\x00garbage{", 400, "not valid JSON"),
        (b'{"requests": [{"request_id": NaN}]}', 400, "NaN is not a JSON number"),
        (b"[]", 422, 'body must be {"requests"'),
        (httpx.Request("POST", "/", json={"requests": [good, bad]}).read(), 422, "requests[1].policy_version"),
        (httpx.Request("POST", "/", json={"requests": [good, good]}).read(), 422, "duplicate request_id"),
    ]
    for body, status, reason in cases:
        response = httpx.post(f"{server.url}/v1/requests", headers=AUTH, content=body)
        assert response.status_code == status and reason in response.json()["error"], (body[:40], response.text)
    assert httpx.get(f"{server.url}/v1/results?max=0", headers=AUTH).status_code == 422
    assert server_metrics(server).get("dataserver/submitted", 0.0) == before
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_identity_synthesis_round_trips_through_the_http_backend(server: ServerProcess) -> None:
    backend = HttpBackend([server.url], TOKEN)
    try:
        sent = [request(i, "" if i % 4 == 0 else "a quiet harbour at dawn") for i in range(100, 112)]
        assert all(backend.submit(r) for r in sent)
        results = {r.request_id: r for r in collect(backend, len(sent))}
        assert sorted(results) == sorted(r.request_id for r in sent)
        for r in sent:
            got = results[r.request_id]
            assert got.policy_version == r.policy_version
            if not r.description:
                assert got.reject_reason == "empty_description"
                continue
            assert got.sample.id == f"{r.seed.id}~{r.request_id}" and got.sample.answer == r.seed.answer
            image = got.sample.messages[0]["content"][0]["image"]
            assert image.tobytes() == r.seed.messages[0]["content"][0]["image"].tobytes()
        m = backend.metrics()
        assert m["dataserver/accepted"] == 9 and m["dataserver/rejected/empty_description"] == 3
        assert m["dataserver/reject_rate"] == 0.25 and m["dataserver/servers_up"] == 1
        assert m["dataserver/in_flight"] == 0 and m["dataserver/http_failures"] == 0
    finally:
        backend.close()


def test_a_client_with_a_wrong_token_counts_the_refusals_and_never_waits(server: ServerProcess) -> None:
    backend = HttpBackend([server.url], "not-the-token")
    try:
        assert backend.submit(request(200)) and backend.submit(request(201))
        assert wait_for(lambda: backend.metrics().get("dataserver/http_rejected", 0) >= 2)
        assert backend.poll(10) == [] and backend.metrics()["dataserver/servers_up"] == 1  # /health needs no token
    finally:
        backend.close()


# --------------------------------------------------------------------------------------------------
# Faults


@pytest.mark.slow
def test_a_raising_synthesizer_is_a_counted_reject_and_sigterm_stops_cleanly() -> None:
    s = start_server("synthesizer=dataserver_plugins:RaisingSynthesizer")
    backend = HttpBackend([s.url], TOKEN)
    try:
        sent = [request(i, "boom" if i % 2 else "a field") for i in range(6)]
        assert all(backend.submit(r) for r in sent)
        results = collect(backend, len(sent))
        reasons = {r.request_id: r.reject_reason for r in results}
        assert reasons == {r.request_id: "synthesizer_error" if "boom" in r.description else None for r in sent}
        assert backend.metrics()["dataserver/rejected/synthesizer_error"] == 3
        assert server_metrics(s)["dataserver/rejected/synthesizer_error"] == 3
        assert httpx.get(f"{s.url}/health").status_code == 200
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(timeout=15) == 0
        assert wait_for(lambda: "mmrl serve-data: stopped" in s.output(), 5), s.output()
    finally:
        backend.close()
        stop(s)


@pytest.mark.slow
def test_two_servers_in_the_url_list_both_receive_work() -> None:
    servers = [start_server(), start_server()]
    backend = HttpBackend([s.url for s in servers], TOKEN, batch_size=4)
    try:
        sent = [request(i) for i in range(24)]
        assert all(backend.submit(r) for r in sent)
        assert sorted(r.request_id for r in collect(backend, 24)) == sorted(r.request_id for r in sent)
        per_server = [server_metrics(s).get("dataserver/submitted", 0.0) for s in servers]
        assert all(n > 0 for n in per_server) and sum(per_server) == 24, per_server
        assert backend.metrics()["dataserver/servers_up"] == 2
    finally:
        backend.close()
        for s in servers:
            stop(s)


class TimedCalls:
    """Calls `submit`/`poll` on a backend and keeps the slowest duration (what a training step would wait)."""

    def __init__(self, backend: HttpBackend) -> None:
        self.backend = backend
        self.slowest_s = 0.0
        self.calls = 0

    def submit(self, r: SynthesisRequest) -> bool:
        return self._timed(self.backend.submit, r)

    def poll(self, n: int) -> list[SynthesisResult]:
        return self._timed(self.backend.poll, n)

    def metrics(self) -> dict[str, float]:
        return self._timed(lambda _: self.backend.metrics(), None)

    def _timed(self, call, arg):
        start = time.perf_counter()
        out = call(arg)
        self.slowest_s = max(self.slowest_s, time.perf_counter() - start)
        self.calls += 1
        return out


@pytest.mark.slow
def test_a_killed_server_loses_only_its_queue_and_the_client_reconnects_after_a_restart() -> None:
    s = start_server("synthesizer=dataserver_plugins:SlowSynthesizer", "params={delay_s: 0.2}")
    backend = HttpBackend([s.url], TOKEN, timeout_s=1.0)
    calls = TimedCalls(backend)
    restarted = None
    try:
        early = [request(i) for i in range(4)]
        assert all(calls.submit(r) for r in early)  # received by the client but not yet polled at the kill
        assert wait_for(lambda: backend.metrics().get("dataserver/accepted", 0) == 4)
        queued = [request(i) for i in range(4, 14)]  # 2 s of work: most are still queued at the kill
        assert all(calls.submit(r) for r in queued)
        assert wait_for(lambda: backend.metrics()["dataserver/in_flight"] >= 8)
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait(timeout=10)

        during = [request(i) for i in range(14, 20)]  # submitted while no server is up: they wait in the outbox
        assert all(calls.submit(r) for r in during)
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # training goes on: metrics every step, nothing to poll yet
            calls.metrics()
            time.sleep(0.02)
        m = backend.metrics()
        assert m["dataserver/http_failures"] >= 1 and m["dataserver/servers_up"] == 0
        got = calls.poll(100)
        assert {r.request_id for r in got} >= {r.request_id for r in early}
        assert all(r.request_id in {q.request_id for q in early + queued} for r in got)

        restarted = start_server("synthesizer=dataserver_plugins:SlowSynthesizer", "params={delay_s: 0.01}",
                                 port=s.port)  # fmt: skip
        assert wait_for(lambda: backend.metrics()["dataserver/servers_up"] == 1)
        lost = backend.metrics()["dataserver/lost_requests"]
        assert lost >= 1
        after = [request(i) for i in range(20, 25)]
        assert all(calls.submit(r) for r in after)
        wanted, later, lost_results = {r.request_id for r in after + during}, set(), []

        def all_back() -> bool:
            for r in calls.poll(100):
                later.add(r.request_id)
                if r.reject_reason == LOST:
                    lost_results.append(r)
            return wanted <= later

        assert wait_for(all_back, 15), wanted - later
        versions = {q.request_id: q.policy_version for q in queued}  # each lost request comes back, named as lost
        assert len(lost_results) == lost and all(versions[r.request_id] == r.policy_version for r in lost_results)
        assert got and len(got) + lost + backend.metrics()["dataserver/in_flight"] >= len(early + queued)
        print(f"\nkill test: slowest of {calls.calls} submit/poll calls {calls.slowest_s * 1000:.2f} ms; "
              f"lost {lost:.0f}, failures {m['dataserver/http_failures']:.0f}")  # fmt: skip
        assert calls.slowest_s < 0.5
    finally:
        backend.close()
        stop(s)
        if restarted is not None:
            stop(restarted)


@pytest.mark.slow
def test_a_server_slower_than_training_never_makes_a_call_wait() -> None:
    s = start_server("synthesizer=dataserver_plugins:SlowSynthesizer", "params={delay_s: 0.5}", "request_queue=2")
    backend = HttpBackend([s.url], TOKEN, outbox=8, batch_size=4)
    calls = TimedCalls(backend)
    try:
        accepted, results = 0, []
        deadline = time.monotonic() + 3.0
        i = 0
        while time.monotonic() < deadline:  # a "training step" every 20 ms: 4 requests, one poll
            for _ in range(4):
                accepted += calls.submit(request(i))
                i += 1
            results += calls.poll(8)
            time.sleep(0.02)
        m = backend.metrics()
        print(f"\nslow server: slowest of {calls.calls} calls {calls.slowest_s * 1000:.2f} ms; {i} submitted, "
              f"{accepted} taken, {len(results)} results in 3 s")  # fmt: skip
        assert calls.slowest_s < 0.5
        assert 1 <= len(results) <= 8 and m["dataserver/outbox_full"] == i - accepted > 0
        assert m["dataserver/server_queue_full"] > 0  # the server's refusals are retried, never dropped
        start = time.perf_counter()
        backend.close()
        print(f"close() took {(time.perf_counter() - start) * 1000:.1f} ms")
        assert time.perf_counter() - start < backend.timeout_s + 1.0
    finally:
        backend.close()
        stop(s)


def test_serve_data_runs_what_a_training_config_asks_for():
    """One file for both sides: a training config's `dataserver:` section sets the server's synthesizer,
    workers and seed; overrides still name server fields."""
    from mmrl.dataserver.server_config import load_server_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_server_config(str(root / "configs" / "syn_grpo_rec_qwen25vl3b.yaml"), ["port=8601"])
    assert (cfg.synthesizer, cfg.port, cfg.host) == ("outpaint", 8601, "127.0.0.1")
    assert cfg.params["model"] == "stable-diffusion-v1-5/stable-diffusion-inpainting"
    plain = load_server_config(str(root / "configs" / "dataserver_identity.yaml"), [])
    assert (plain.synthesizer, plain.workers) == ("identity", 2)
    with pytest.raises(ConfigError, match="unknown config key 'dataserver'"):
        load_server_config(str(root / "configs" / "dataserver_identity.yaml"), ["dataserver=1"])
