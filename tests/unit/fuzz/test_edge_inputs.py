"""The edge rule as a table: each row a request that once reached a 5xx (the issue's probes and what the fuzzer
found) or a bound the edge must keep, sent byte for byte to the real runtime and router; every expected column is
asserted. Then the slow clients (raw sockets: headers or a body a byte at a time, a stream nobody reads), the
router's admin token and body bounds, and the published OpenAPI documents."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest
from aiohttp import web

from agentfleet.bench.simulator import free_port
from agentfleet.router.proxy import OPENAPI_FILE as ROUTER_FILE
from agentfleet.runtime.openapi import RUNTIME_FILE, _dump, router_openapi, runtime_openapi
from fuzz_kit import ADMIN_TOKEN, ALICE, edges, http, request_bytes

RT = {"Authorization": f"Bearer {ALICE}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CHAT = b'{"messages":[{"role":"user","content":"hi"}]}'
DEEP = b'{"messages":' + b"[" * 5000 + b"]" * 5000 + b"}"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory):
    with edges(tmp_path_factory.mktemp("edge"), body_timeout_s=1.0, write_timeout_s=1.0,
               keepalive_timeout_s=1.0) as e:
        yield e


# server, method, path, headers, body -> status, error code (None: a 2xx without an error body)
ROWS = [
    ("runtime", "POST", "/v1/chat/completions", RT, DEEP, 400, "invalid_request"),
    ("runtime", "POST", "/v1/chat/completions", {**RT, "Content-Type": "application/json; charset=foo"}, CHAT,
     415, "unsupported_media_type"),
    ("runtime", "POST", "/v1/chat/completions", {**RT, "Content-Type": "application/json; charset=base64"}, CHAT,
     415, "unsupported_media_type"),
    ("runtime", "POST", "/v1/chat/completions", {**RT, "Content-Type": "application/json; charset=utf-16"},
     CHAT.decode().encode("utf-16"), 415, "unsupported_media_type"),
    ("runtime", "POST", "/v1/chat/completions", {**RT, "Content-Type": "application/json; charset=UTF-8"}, CHAT,
     200, None),
    ("runtime", "POST", "/v1/chat/completions", {**RT, "Content-Encoding": "gzip"}, b"not gzip", 415,
     "unsupported_media_type"),
    ("runtime", "POST", "/v1/chat/completions", {**RT, "Content-Encoding": "br"}, CHAT, 415, "unsupported_media_type"),
    ("runtime", "POST", "/v1/runs", RT, b'{"input":' + b"9" * 5000 + b"}", 400, "invalid_request"),
    ("runtime", "POST", "/v1/runs", RT, b'{"input":NaN}', 400, "invalid_request"),
    ("runtime", "POST", "/v1/runs", RT, b'{"input":"\xff"}', 400, "invalid_request"),
    ("runtime", "POST", "/v1/runs", RT, b"x" * (1 << 20 | 1), 413, "request_too_large"),
    ("runtime", "POST", "/v1/runs", {**RT, "Transfer-Encoding": "chunked"},
     b"100001\r\n" + b"x" * 0x100001 + b"\r\n0\r\n\r\n", 413, "request_too_large"),
    ("runtime", "PUT", "/v1/chat/completions", RT, CHAT, 405, "method_not_allowed"),
    ("runtime", "GET", "/no/such/route", {}, None, 404, "not_found"),
    ("router", "POST", "/v1/chat/completions", {}, DEEP, 400, "invalid_request"),
    ("router", "POST", "/v1/chat/completions", {"Content-Type": "application/json; charset=zlib"}, CHAT, 415,
     "unsupported_media_type"),
    ("router", "POST", "/v1/chat/completions", {}, b'{"messages":[{"role":[]}]}', 200, None),  # passed on
    ("router", "POST", "/v1/chat/completions", {},
     b'{"messages":[{"role":"user","content":[{"type":"text","text":5}]}]}', 200, None),
    ("router", "POST", "/v1/chat/completions", {}, b"x" * ((8 << 20) + 1), 413, "request_too_large"),
    ("router", "POST", "/v1/chat/completions", {"Content-Encoding": "gzip"}, b"not gzip", 415,
     "unsupported_media_type"),
    ("router", "POST", "/v1/chat/completions", {}, b"[1]", 400, "invalid_json"),
    ("router", "GET", "/v1/chat/completions", {}, None, 405, "method_not_allowed"),
    ("router", "POST", "/admin/drain?replica=engine-0", {}, None, 401, "invalid_api_key"),
    ("router", "POST", "/admin/drain?replica=engine-0", {"Authorization": "Bearer admin-token-wrong"}, None, 401,
     "invalid_api_key"),
    ("router", "POST", "/admin/drain?replica=engine-0&off=1", ADMIN, None, 200, None),
    ("router", "POST", "/admin/drain?replica=%3Cscript%3E", ADMIN, None, 404, "unknown_replica"),
]
IDS = ["deep-json", "unknown-charset", "non-text-codec", "utf-16", "utf-8-uppercase", "bad-gzip", "brotli",
       "5000-digit-int", "nan", "not-utf-8", "over-1mib", "over-1mib-chunked", "wrong-method", "no-route",
       "router-deep-json", "router-charset", "router-role-list", "router-text-part-int", "router-over-8mib",
       "router-gzip", "router-not-object", "router-wrong-method", "admin-no-token", "admin-wrong-token",
       "admin-token", "admin-unknown-replica"]


@pytest.mark.parametrize("server, method, path, headers, body, status, code", ROWS, ids=IDS)
def test_edge_answers_4xx_with_an_openai_error(edge: Any, server: str, method: str, path: str,
                                                headers: dict[str, str], body: bytes | None, status: int,
                                                code: str | None) -> None:
    port = edge.runtime_port if server == "runtime" else edge.router_port
    chunked = "Transfer-Encoding" in headers
    reply = http(port, request_bytes(method, path, headers=headers, body=body, content_length=not chunked))
    assert reply.status == status, reply.body[:300]
    if code is not None:
        err = reply.json()["error"]
        assert err["code"] == code and set(err) == {"message", "type", "param", "code"}
        assert "engine-0" not in err["message"] and "Traceback" not in err["message"]
    assert reply.headers.get("x-content-type-options") == "nosniff"
    assert edge.unhandled.records == []


@pytest.mark.parametrize("server", ["runtime", "router"])
@pytest.mark.parametrize("data, status", [
    (b"FROB /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"GET /v1/models HTTP/9.9\r\nHost: x\r\n\r\n", 400),
    (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nExpect: gimme\r\nContent-Length: 2\r\n\r\n{}", 417),
], ids=["unknown-method", "broken-chunking", "bad-version", "odd-expect"])
def test_framing_the_http_parser_refuses_is_an_openai_error_too(edge: Any, server: str, data: bytes,
                                                                 status: int) -> None:
    """aiohttp answers these before any handler runs; http_edge gives them the same body as everything else."""
    reply = http(edge.runtime_port if server == "runtime" else edge.router_port, data)
    assert reply.status == status, reply.body[:300]
    err = reply.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["code"] in ("bad_http_request", "expectation_failed") and "Traceback" not in err["message"]


# --- slow clients (raw sockets; bounded waits only) -----------------------------------------------------------

def _closed_within(sock: socket.socket, limit_s: float) -> tuple[bool, bytes]:
    """Read until the server closes the connection; (closed, what it sent) within `limit_s`."""
    sock.settimeout(limit_s)
    got = b""
    try:
        while True:
            part = sock.recv(65536)
            if not part:
                return True, got
            got += part
    except (socket.timeout, TimeoutError):
        return False, got
    except ConnectionResetError:
        return True, got


@pytest.mark.parametrize("server", ["runtime", "router"])
def test_a_body_sent_a_byte_at_a_time_is_cut_off_with_408(edge: Any, server: str) -> None:
    port = edge.runtime_port if server == "runtime" else edge.router_port
    head = request_bytes("POST", "/v1/chat/completions", headers={**RT, "Content-Length": "1000"})
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(head)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # a byte every 50 ms: never done within the 1 s bound
            try:
                s.sendall(b" ")
            except OSError:
                break
            s.settimeout(0.05)
            try:
                if s.recv(1, socket.MSG_PEEK):
                    break
            except (socket.timeout, TimeoutError):
                continue
        closed, got = _closed_within(s, 10)  # the 408, then the socket closes after the lingering time (2 s)
    assert closed and got.startswith(b"HTTP/1.1 408"), got[:200]
    assert b'"code": "request_timeout"' in got


@pytest.mark.parametrize("server", ["runtime", "router"])
def test_headers_sent_a_byte_at_a_time_are_cut_off(edge: Any, server: str) -> None:
    port = edge.runtime_port if server == "runtime" else edge.router_port
    with socket.create_connection(("127.0.0.1", port)) as s:
        started = time.monotonic()
        for b in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 200:  # one byte every 20 ms, no end of headers
            try:
                s.sendall(bytes([b]))
            except OSError:
                break
            time.sleep(0.02)
            if time.monotonic() - started > 8:
                break
        closed, _ = _closed_within(s, 10)
    assert closed  # by the keep-alive timeout (1 s here), which aiohttp starts when the connection opens


def test_a_stream_nobody_reads_is_cut_off_and_its_handler_ends() -> None:
    """The runtime's stream writer against a client that reads nothing: the write gives up after the write
    timeout, the connection is aborted and the handler ends (in the runtime that cancels the run and releases its
    reservation, as a disconnect does)."""
    from agentfleet.runtime import server as srv

    ended: asyncio.Queue[str] = asyncio.Queue()

    async def go() -> tuple[bool, str]:
        async def endless(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            try:
                while True:
                    await srv._write(request, resp, b"data: " + b"x" * 65536 + b"\n\n")
            except ConnectionResetError:
                await ended.put("reset")
                raise

        app = web.Application()
        app[srv.LIMITS_KEY] = srv.EdgeLimits(write_timeout_s=0.5)
        app.router.add_get("/stream", endless)
        runner = web.AppRunner(app, **srv.runner_options())
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
        await asyncio.get_running_loop().sock_sendall(s, b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            how = await asyncio.wait_for(ended.get(), 20)  # never read: the handler must end by itself
        finally:
            s.close()
            await runner.cleanup()
        return True, how

    assert asyncio.run(go()) == (True, "reset")


# --- the router's bounds ------------------------------------------------------------------------------------

def test_router_cuts_off_a_client_that_never_reads_and_frees_the_replica() -> None:
    from agentfleet.router.proxy import RUNNER_OPTIONS, ProxySettings, build_app as build_router
    from agentfleet.router.state import FleetState

    async def go() -> str:
        freed: asyncio.Queue[str] = asyncio.Queue()

        async def completions(request: web.Request) -> web.StreamResponse:
            await request.read()
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            try:
                while True:  # an endless answer
                    await resp.write(b"data: " + b"x" * 65536 + b"\n\n")
            except (ConnectionResetError, asyncio.CancelledError):
                await freed.put("engine request ended")
                raise

        async def health(_: web.Request) -> web.Response:
            return web.Response(text="ok")

        engine = web.Application()
        engine.router.add_post("/v1/chat/completions", completions)
        engine.router.add_get("/health", health)
        runners = [web.AppRunner(engine, handler_cancellation=True, access_log=None)]
        fleet = FleetState(policy="least-load")
        engine_port, router_port = free_port(), free_port()
        fleet.set_endpoints({"e0": f"http://127.0.0.1:{engine_port}"})
        fleet.set_health("e0", True)
        router = build_router(fleet, ProxySettings(write_timeout_s=0.5, health_interval_s=0.2,
                                                   metrics_interval_s=0.2))
        runners.append(web.AppRunner(router, access_log=None, **RUNNER_OPTIONS))
        for r, port in zip(runners, (engine_port, router_port)):
            await r.setup()
            await web.TCPSite(r, "127.0.0.1", port).start()
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(s, ("127.0.0.1", router_port))
        await loop.sock_sendall(s, request_bytes("POST", "/v1/chat/completions", body=CHAT))
        try:
            return await asyncio.wait_for(freed.get(), 20)  # the client never reads
        finally:
            s.close()
            for r in reversed(runners):
                await r.cleanup()

    assert asyncio.run(go()) == "engine request ended"


def test_router_bounds_bodies_buffered_at_once(tmp_path) -> None:
    """A body that would take the bytes being buffered past the bound waits, then gets 503 with Retry-After,
    while the first (a slow client) holds its share."""
    with edges(tmp_path, body_timeout_s=5.0,
               router_settings={"max_buffered_bytes": 1500, "buffer_wait_s": 0.3}) as e:
        with socket.create_connection(("127.0.0.1", e.router_port)) as slow:
            slow.sendall(request_bytes("POST", "/v1/chat/completions", headers={"Content-Length": "1000"}))
            time.sleep(0.2)  # the slow body is being read (not a timing assertion: the next reply is checked)
            reply = http(e.router_port, request_bytes("POST", "/v1/chat/completions", body=b"{" + b" " * 998 + b"}"))
        assert reply.status == 503 and reply.headers.get("retry-after") == "1"
        assert reply.json()["error"]["code"] == "overloaded"
        ok = http(e.router_port, request_bytes("POST", "/v1/chat/completions", body=CHAT))
        assert ok.status == 200


def test_router_503_names_no_replica_and_no_exception(tmp_path) -> None:
    with edges(tmp_path) as e:
        drained = http(e.router_port, request_bytes("POST", "/admin/drain?replica=engine-0", headers=ADMIN))
        reply = http(e.router_port, request_bytes("POST", "/v1/chat/completions", body=CHAT))
    assert drained.status == 200  # the only replica draining: none may take new work
    assert reply.status == 503 and reply.headers.get("retry-after") == "1"
    assert reply.json() == {"error": {"message": "no replica could take the request; retry later",
                                      "type": "router_error", "param": None, "code": "no_replica_available"}}


def test_router_admin_is_off_without_a_token(tmp_path) -> None:
    with edges(tmp_path, router_settings={"admin_token_sha256": None}) as e:
        reply = http(e.router_port, request_bytes("POST", "/admin/drain?replica=engine-0", headers=ADMIN))
    assert reply.status == 403 and reply.json()["error"]["code"] == "admin_disabled"


def test_metrics_can_move_off_the_serving_port(tmp_path) -> None:
    """Per-tenant usage and Budget gauges are for Prometheus: with a metrics port, the serving port has no
    /metrics (AGENTFLEET_METRICS_PORT in `agentfleet serve`)."""
    port = free_port()
    with edges(tmp_path, metrics_port=port) as e:
        chat = http(e.runtime_port, request_bytes("POST", "/v1/chat/completions", headers=RT, body=CHAT))
        on_serving = http(e.runtime_port, request_bytes("GET", "/metrics"))
        on_metrics = http(port, request_bytes("GET", "/metrics"))
    assert chat.status == 200
    assert on_serving.status == 404 and on_serving.json()["error"]["code"] == "not_found"
    assert on_metrics.status == 200 and b'agentfleet_runtime_tokens_total{kind="prompt"' in on_metrics.body


# --- the published descriptions -----------------------------------------------------------------------------

def test_openapi_files_are_generated_from_the_wire_models() -> None:
    """Stale files: run `python -m agentfleet.runtime.openapi`."""
    assert RUNTIME_FILE.read_text() == _dump(runtime_openapi())
    assert ROUTER_FILE.read_text() == _dump(router_openapi())


def test_both_servers_serve_their_openapi(edge: Any) -> None:
    rt = http(edge.runtime_port, request_bytes("GET", "/openapi.json"))
    ro = http(edge.router_port, request_bytes("GET", "/openapi.json"))
    assert (rt.status, ro.status) == (200, 200)
    assert rt.json() == json.loads(json.dumps(runtime_openapi())) and ro.json() == router_openapi()
    assert {"/v1/chat/completions", "/v1/runs", "/v1/runs/{run_id}/events"} <= set(rt.json()["paths"])
    assert ro.json()["paths"]["/admin/drain"]["post"]["responses"]["401"]
