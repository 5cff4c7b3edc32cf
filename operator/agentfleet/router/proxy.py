"""The router's HTTP edge (aiohttp, chosen by `agentfleet bench httpclient`): an OpenAI-compatible reverse proxy
that asks FleetState for a replica, streams the answer through chunk by chunk, bounds every attempt with a connect
and a read timeout, and retries a request that failed before its first byte once on another replica. Background
tasks probe each replica's /health (a failing one is taken out, its sessions re-hash) and scrape its /metrics for
the least-loaded fallback. Nothing here blocks the event loop: discovery runs in its own thread (discovery.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from .keys import request_key
from .state import FleetState, parse_load

__all__ = ["ProxySettings", "build_app", "serve"]

log = logging.getLogger("agentfleet.router")

PROXIED = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
# Hop-by-hop headers (RFC 9110 7.6.1) and those aiohttp recomputes.
_DROP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                   "transfer-encoding", "upgrade", "host", "content-length"})
_RETRY_STATUSES = frozenset({502, 503, 504})


@dataclass(frozen=True)
class ProxySettings:
    prefix_tokens: int = 256
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 300.0  # time to the first byte and between chunks; a long generation is not a hang
    health_interval_s: float = 2.0
    health_timeout_s: float = 1.0
    metrics_interval_s: float = 1.0
    max_attempts: int = 2  # the first try and one retry elsewhere


def _error(status: int, message: str, code: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "router_error", "param": None,
                                        "code": code}}, status=status)


async def _proxy(request: web.Request) -> web.StreamResponse:
    fleet: FleetState = request.app["fleet"]
    settings: ProxySettings = request.app["settings"]
    session: aiohttp.ClientSession = request.app["client"]
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        return _error(400, "request body is not JSON", "invalid_json")
    if body is not None and not isinstance(body, dict):
        return _error(400, "request body must be a JSON object", "invalid_json")
    key = request_key(request.path, request.headers, body, prefix_tokens=settings.prefix_tokens)
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=settings.connect_timeout_s,
                                    sock_read=settings.read_timeout_s)
    tried: set[str] = set()
    last_error = "no replica is ready"
    for _attempt in range(settings.max_attempts):
        choice = fleet.pick(key, exclude=frozenset(tried))
        if choice is None:
            break
        name = choice.replica
        tried.add(name)
        url = fleet.started(name) + request.path_qs
        try:
            try:
                upstream = await session.request(request.method, url, data=raw, headers=headers, timeout=timeout)
            except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as err:
                # Before the first byte: safe to send elsewhere (nothing reached the client yet).
                refused = isinstance(err, aiohttp.ClientConnectorError)
                fleet.failed_before_first_byte(name, is_connection_error=refused)
                last_error = f"replica {name}: {type(err).__name__}: {err}"
                log.warning("attempt failed before first byte", extra={"replica": name, "error": str(err)})
                continue
            try:
                if upstream.status in _RETRY_STATUSES and _attempt + 1 < settings.max_attempts:
                    fleet.failed_before_first_byte(name, is_connection_error=False)
                    last_error = f"replica {name} answered {upstream.status}"
                    continue
                response = web.StreamResponse(status=upstream.status, headers={
                    k: v for k, v in upstream.headers.items() if k.lower() not in _DROP})
                response.headers["x-agentfleet-replica"] = name
                response.headers["x-agentfleet-route"] = choice.reason
                await response.prepare(request)
                # Token by token: each chunk vLLM flushes (an SSE event) is written on as it arrives.
                chunks = upstream.content.iter_any()
                while True:
                    try:
                        chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        break
                    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, ConnectionResetError) as err:
                        # The replica broke off after the first byte: out of the ring until its health check
                        # passes, and the client sees a truncated answer (it may retry; its session re-hashes).
                        fleet.failed_mid_stream(name)
                        log.warning("replica failed mid-stream", extra={"replica": name, "error": repr(err)})
                        _abort(request)
                        return response
                    await response.write(chunk)
                await response.write_eof()
                return response
            finally:
                upstream.release()
        finally:
            fleet.finished(name)
    return _error(503, f"no replica could take the request: {last_error}", "no_replica_available")


def _abort(request: web.Request) -> None:
    """Close the client's connection without ending the chunked body, so the client reads a truncated answer
    (as it would from the engine itself) rather than a complete one."""
    if request.transport is not None:
        request.transport.abort()


async def _models(request: web.Request) -> web.StreamResponse:
    return await _proxy(request)


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _readyz(request: web.Request) -> web.Response:
    fleet: FleetState = request.app["fleet"]
    return web.Response(text="ok") if fleet.is_ready() else web.Response(status=503, text="no ready replica")


async def _metrics(request: web.Request) -> web.Response:
    fleet: FleetState = request.app["fleet"]
    return web.Response(text=fleet.render_metrics(), content_type="text/plain", charset="utf-8")


async def _drain(request: web.Request) -> web.Response:
    """POST /admin/drain?replica=NAME[&off=1]: the static-list equivalent of an EndpointSlice's terminating."""
    fleet: FleetState = request.app["fleet"]
    name = request.query.get("replica", "")
    if name not in fleet.endpoints:
        return _error(404, f"unknown replica {name!r}", "unknown_replica")
    fleet.set_draining(name, request.query.get("off") != "1")
    return web.json_response({"replica": name, "draining": fleet.endpoints[name].is_draining})


async def _probe_loop(app: web.Application) -> None:
    fleet: FleetState = app["fleet"]
    settings: ProxySettings = app["settings"]
    session: aiohttp.ClientSession = app["client"]
    timeout = aiohttp.ClientTimeout(total=settings.health_timeout_s)
    last_health = 0.0
    loop = asyncio.get_running_loop()

    async def health(name: str, url: str) -> None:
        try:
            async with session.get(url + "/health", timeout=timeout) as r:
                ok = r.status == 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            ok = False
        ep = fleet.endpoints.get(name)
        if ep is not None and ep.is_healthy != ok:
            log.info("replica health changed", extra={"replica": name, "healthy": ok})
        fleet.set_health(name, ok)

    async def load(name: str, url: str) -> None:
        # The pool does not decompress (the proxy passes bodies through as they are), and llm-d-inference-sim
        # gzips /metrics when asked to: ask for plain text. A page that still cannot be read is skipped, never
        # allowed to end this loop (it also runs the health checks).
        try:
            async with session.get(url + "/metrics", timeout=timeout,
                                   headers={"Accept-Encoding": "identity"}) as r:
                text = await r.text() if r.status == 200 else ""
        except (aiohttp.ClientError, asyncio.TimeoutError, UnicodeDecodeError):
            return
        if text:
            fleet.set_load(name, *parse_load(text))

    while True:
        eps = [(e.name, e.url) for e in fleet.endpoints.values()]
        jobs: list[Awaitable[None]] = []
        if fleet.policy in ("least-load", "prefix-aware", "session"):
            jobs += [load(n, u) for n, u in eps]
        if loop.time() - last_health >= settings.health_interval_s:
            last_health = loop.time()
            jobs += [health(n, u) for n, u in eps]
        await asyncio.gather(*jobs)
        await asyncio.sleep(settings.metrics_interval_s)


def build_app(fleet: FleetState, settings: ProxySettings,
              on_startup: Callable[[web.Application], Awaitable[None]] | None = None) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app["fleet"] = fleet
    app["settings"] = settings
    for path in PROXIED:
        app.router.add_post(path, _proxy)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_post("/admin/drain", _drain)

    async def lifecycle(app: web.Application):
        # No total timeout on the pool: each request sets its own connect/read timeouts.
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=30, enable_cleanup_closed=True)
        app["client"] = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                              timeout=aiohttp.ClientTimeout(total=None))
        if on_startup is not None:
            await on_startup(app)
        probe = asyncio.create_task(_probe_loop(app))
        yield
        probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await probe
        await app["client"].close()

    app.cleanup_ctx.append(lifecycle)
    return app


def serve(fleet: FleetState, settings: ProxySettings, *, host: str, port: int,
          on_startup: Callable[[web.Application], Awaitable[None]] | None = None) -> None:
    web.run_app(build_app(fleet, settings, on_startup), host=host, port=port, access_log=None,
                print=lambda *_: None)
