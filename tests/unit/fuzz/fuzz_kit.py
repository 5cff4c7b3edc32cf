"""Shared parts for the edge tests and the fuzzer: the real runtime (its model a scripted OpenAI-compatible server
that answers at once) and the real router (in front of one scripted engine, with an admin token), both served on
127.0.0.1 by aiohttp runners with the production runner options, on an event loop in a background thread so that
synchronous code (hypothesis) can drive them; and a raw-socket HTTP client that sends any bytes and reads back
status, headers and body, so malformed framing reaches the server as it was written."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))

from agentfleet.bench.simulator import free_port  # noqa: E402
from agentfleet.router.proxy import RUNNER_OPTIONS, ProxySettings, admin_token_digest  # noqa: E402
from agentfleet.router.proxy import build_app as build_router  # noqa: E402
from agentfleet.router.state import FleetState  # noqa: E402
from agentfleet.runtime.identity import Identity  # noqa: E402
from agentfleet.runtime.llm import ModelClient  # noqa: E402
from agentfleet.runtime.metrics import RuntimeMetrics  # noqa: E402
from agentfleet.runtime.server import build_app, runner_options  # noqa: E402
from agentfleet.runtime.serving import Runtime  # noqa: E402
from runtime_kit import ALICE, final, make_config  # noqa: E402

ADMIN_TOKEN = "admin-token-0123456789abcdef"
__all__ = ["ALICE", "ADMIN_TOKEN", "Edge", "Reply", "edges", "http", "request_bytes"]


@dataclass
class Reply:
    status: int | None  # None: the server closed without answering
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


def _dechunk(body: bytes) -> bytes:
    out, rest = b"", body
    while rest:
        line, _, rest = rest.partition(b"\r\n")
        try:
            n = int(line.split(b";")[0], 16)
        except ValueError:
            return out + rest
        if n == 0:
            break
        out, rest = out + rest[:n], rest[n + 2:]
    return out


def _parse(data: bytes) -> Reply:
    if not data.startswith(b"HTTP/"):
        return Reply(None, body=data)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = _dechunk(body)
    return Reply(status, headers, body)


def http(port: int, data: bytes, *, timeout_s: float = 10.0, half_close: bool = False) -> Reply:
    """Send `data` as is on a new connection and read until the server closes it (requests carry
    `Connection: close`). `half_close` ends the client's side after sending: a client that goes away."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        with contextlib.suppress(OSError):
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        chunks = []
        with contextlib.suppress(OSError):  # a reset after the answer is still the answer
            while True:
                got = s.recv(65536)
                if not got:
                    break
                chunks.append(got)
    return _parse(b"".join(chunks))


def request_bytes(method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes | None = None,
                  content_length: bool = True) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body is not None and content_length and not any(k.lower() in ("content-length", "transfer-encoding")
                                                        for k in (headers or {})):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape") + (body or b"")


class _Unhandled(logging.Handler):
    """Records every 'unhandled error' a server logs: a request that reached a code path nobody handled."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("unhandled error"):
            self.records.append(f"{record.getMessage()}: {record.exc_info[1]!r}" if record.exc_info else
                                record.getMessage())


@dataclass
class Edge:
    runtime_port: int
    router_port: int
    runtime: Runtime
    unhandled: _Unhandled
    loop: asyncio.AbstractEventLoop


async def _engine(port: int) -> web.AppRunner:
    """A scripted model server: every chat completion answers at once with a final answer."""

    async def completions(request: web.Request) -> web.StreamResponse:
        try:  # like vLLM: a body it cannot use is a 400 (the router passes an engine's answer through as is)
            body = json.loads(await request.read())
            assert isinstance(body, dict) and isinstance(body.get("model", ""), str)
        except (ValueError, AssertionError):
            return web.json_response({"error": {"message": "bad request", "type": "BadRequestError", "param": None,
                                                "code": "400"}}, status=400)
        usage = {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
        message = {"role": "assistant", "content": final("ok")}
        if body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            chunk = {"model": body.get("model", "m"), "choices": [{"index": 0, "delta": message}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await resp.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode())
            return resp
        return web.json_response({"id": "x", "object": "chat.completion", "model": body.get("model", "m"),
                                  "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                                  "usage": usage})

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "sim-model"}]})

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=16 << 20)
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
        app.router.add_post(path, completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


@contextlib.contextmanager
def edges(tmp: Path, *, body_timeout_s: float = 2.0, write_timeout_s: float = 2.0, keepalive_timeout_s: float = 5.0,
          app: dict[str, Any] | None = None, router_settings: dict[str, Any] | None = None,
          metrics_port: int | None = None) -> Iterator[Edge]:
    """Both servers, started on a loop in a background thread, stopped on exit."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    thread = threading.Thread(target=loop.run_forever, name="edges", daemon=True)
    thread.start()
    engine_port, runtime_port, router_port = free_port(), free_port(), free_port()
    unhandled = _Unhandled()
    for name in ("agentfleet.runtime", "agentfleet.router"):
        logging.getLogger(name).addHandler(unhandled)
    runners: list[web.AppRunner] = []

    async def start() -> Runtime:
        runners.append(await _engine(engine_port))
        cfg = make_config(tmp, large_url=f"http://127.0.0.1:{engine_port}/v1", app=app)
        client = ModelClient(cfg.models)
        rt = Runtime(cfg, model=client, identity=Identity(cfg.api_keys_file),
                     ledger=Runtime.open_ledger(cfg, state_dir=tmp), retrieval=None, metrics=RuntimeMetrics())
        runtime_app = build_app(rt, client, body_timeout_s=body_timeout_s, write_timeout_s=write_timeout_s,
                                metrics_listen=("127.0.0.1", metrics_port) if metrics_port else None)
        r = web.AppRunner(runtime_app, shutdown_timeout=1, **runner_options(keepalive_timeout_s=keepalive_timeout_s))
        await r.setup()
        await web.TCPSite(r, "127.0.0.1", runtime_port).start()
        runners.append(r)
        fleet = FleetState(policy="prefix-aware")
        fleet.set_endpoints({"engine-0": f"http://127.0.0.1:{engine_port}"})
        settings = ProxySettings(**{"health_interval_s": 0.2, "metrics_interval_s": 0.2,
                                    "body_timeout_s": body_timeout_s,
                                    "admin_token_sha256": admin_token_digest(ADMIN_TOKEN), **(router_settings or {})})
        rr = web.AppRunner(build_router(fleet, settings), access_log=None, shutdown_timeout=1,
                           **{**RUNNER_OPTIONS, "keepalive_timeout": keepalive_timeout_s})
        await rr.setup()
        await web.TCPSite(rr, "127.0.0.1", router_port).start()
        runners.append(rr)
        for _ in range(100):  # the router's first health probe marks the engine ready
            if fleet.is_ready():
                break
            await asyncio.sleep(0.05)
        started.set()
        return rt

    try:
        rt = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
        yield Edge(runtime_port, router_port, rt, unhandled, loop)
    finally:
        async def stop() -> None:
            for r in reversed(runners):
                await r.cleanup()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        for name in ("agentfleet.runtime", "agentfleet.router"):
            logging.getLogger(name).removeHandler(unhandled)
