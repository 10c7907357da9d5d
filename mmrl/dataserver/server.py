"""`mmrl serve-data`: the data server as its own process, a FastAPI app around a `WorkerPool`, run by uvicorn.

    GET  /health              no auth: {"status", "version", "workers", "instance", "started"}
    POST /v1/requests         {"requests": [wire request, ...]} -> {"queued": [id, ...], "refused": [{id, reason}]}
    GET  /v1/results?max=N    {"results": [wire result, ...], "request_queue": n, "ready_queue": n}
    GET  /v1/metrics          the pool's `dataserver/...` metrics

Every endpoint but `/health` needs `Authorization: Bearer <token>` (compared in constant time); a missing or
wrong token gets 401. A body over `max_body_bytes` gets 413, from its `Content-Length` or, without one, as
soon as the bytes read pass the limit. Bodies that are not JSON get 400, records that do not fit the wire
format 422, each with the reason; nothing of a rejected batch is queued. A full request queue is no error:
the answer lists the refused ids. `instance` is new each time a server starts, so a client can tell a
restarted server (whose queued requests are lost) from one that was only unreachable.
"""

from __future__ import annotations

import hmac
import json
import signal
import socket
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from mmrl import __version__
from mmrl.dataserver.protocol import DataBackend
from mmrl.dataserver.server_config import ServerConfig, is_loopback
from mmrl.dataserver.synthesizers import build_synthesizer
from mmrl.dataserver.wire import WireError, WireLimits, decode_request, encode_result
from mmrl.dataserver.workers import WorkerPool
from mmrl.errors import ConfigError, MMRLError

# --------------------------------------------------------------------------------------------------
# The app


def make_app(
    pool: DataBackend,
    token: str,
    max_body_bytes: int,
    *,
    limits: WireLimits | None = None,
    max_batch: int = 256,
    workers: int | None = None,
) -> FastAPI:
    """The HTTP face of `pool` (module docstring). `token` empty: no auth (loopback use only; `serve` checks)."""
    limits = limits or WireLimits()
    health = {"status": "ok", "version": __version__, "workers": workers,
              "instance": uuid.uuid4().hex, "started": time.time()}  # fmt: skip
    app = FastAPI(title="mmrl data server", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    expected = f"Bearer {token}".encode()

    @app.middleware("http")
    async def require_token(request: Request, call_next):
        if token and not (request.method == "GET" and request.url.path == "/health"):
            given = request.headers.get("authorization", "").encode("utf-8", "replace")
            if not hmac.compare_digest(given, expected):
                return _error(401, "missing or wrong bearer token", {"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.get("/health")
    async def get_health() -> dict:
        return health

    @app.post("/v1/requests")
    async def post_requests(request: Request):
        body = await _read_capped(request, max_body_bytes)
        if isinstance(body, JSONResponse):
            return body
        try:
            requests = await run_in_threadpool(_parse_batch, body, limits, max_batch)
        except _BadBody as e:
            return _error(e.status, str(e))
        queued, refused = [], []
        for r in requests:
            if pool.submit(r):
                queued.append(r.request_id)
            else:
                refused.append({"request_id": r.request_id, "reason": "request_queue_full"})
        return {"queued": queued, "refused": refused}

    @app.get("/v1/results")
    async def get_results(max: int = 64):
        if not 1 <= max <= 1024:
            return _error(422, f"query parameter 'max' must be in [1, 1024], got {max}")
        results = pool.poll(max)
        records = await run_in_threadpool(lambda: [encode_result(r) for r in results])
        depths = pool.metrics()
        return {"results": records, "request_queue": depths.get("dataserver/request_queue", 0.0),
                "ready_queue": depths.get("dataserver/ready_queue", 0.0)}  # fmt: skip

    @app.get("/v1/metrics")
    async def get_metrics() -> dict:
        return pool.metrics()

    return app


class _BadBody(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _error(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


async def _read_capped(request: Request, limit: int) -> bytes | JSONResponse:
    """The body, or a 413 as soon as it is known to pass `limit` bytes (declared length, else bytes read)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            return _error(400, f"Content-Length is not a number: {declared!r}")
        if int(declared) > limit:
            return _error(413, f"body of {declared} bytes is over the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return _error(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _parse_batch(body: bytes, limits: WireLimits, max_batch: int) -> list:
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise _BadBody(400, f"body is not valid JSON: {e}") from None
    if not isinstance(data, dict) or set(data) != {"requests"} or not isinstance(data["requests"], list):
        raise _BadBody(422, 'body must be {"requests": [request, ...]}')
    if len(data["requests"]) > max_batch:
        raise _BadBody(422, f"{len(data['requests'])} requests in one batch, more than the limit of {max_batch}")
    try:
        requests = [decode_request(r, limits, f"requests[{i}]") for i, r in enumerate(data["requests"])]
    except WireError as e:
        raise _BadBody(422, str(e)) from None
    ids = [r.request_id for r in requests]
    if len(set(ids)) != len(ids):
        raise _BadBody(422, "duplicate request_id in one batch")
    return requests


# --------------------------------------------------------------------------------------------------
# The process


def serve(config: ServerConfig) -> None:
    """Run the server until SIGINT/SIGTERM, then stop the workers. Refuses (ConfigError, before binding) a
    non-loopback host without a token."""
    import uvicorn  # the server process only; the client side never needs it

    if not config.token and not is_loopback(config.host):
        raise ConfigError(f"refusing to serve on non-loopback host '{config.host}' without a token: "
                          "pass --token or set MMRL_DATA_TOKEN")  # fmt: skip
    sock = _bind(config.host, config.port)
    pool = WorkerPool(
        lambda w: build_synthesizer(config.synthesizer, config.params, w),
        workers=config.workers,
        request_queue=config.request_queue,
        ready_queue=config.ready_queue,
        seed=config.seed,
    )
    try:
        app = make_app(pool, config.token, config.max_body_bytes, limits=config.limits(),
                       max_batch=config.max_batch, workers=config.workers)  # fmt: skip
        host, port = sock.getsockname()[:2]
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        print(f"mmrl serve-data: listening on {url} ({config.workers} worker(s), synthesizer "
              f"'{config.synthesizer}', auth {'on' if config.token else 'off'})", flush=True)  # fmt: skip
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False))
        # uvicorn catches SIGINT/SIGTERM itself (stops accepting, finishes open requests), then restores the
        # handlers it found and raises the signal again: ours turns it into a normal return, so the workers
        # are stopped below instead of the process dying with them mid-request
        previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            server.run(sockets=[sock])
        except _Stop:
            pass
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        pool.close()
        sock.close()
    print("mmrl serve-data: stopped", flush=True)


class _Stop(Exception):
    """SIGINT or SIGTERM, once uvicorn has shut down."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), so the printed URL is the real one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restarted server gets its port back at once
    try:
        sock.bind((host.strip("[]"), port))
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise MMRLError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


__all__ = ["make_app", "serve"]
