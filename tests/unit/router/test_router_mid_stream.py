"""The router's proxy edge when a replica breaks off mid-answer: the replica is taken out (so a client's retry of
the same session re-hashes to a live one), the client reads a truncated answer rather than a complete-looking one,
and a client that goes away mid-answer is not held against the replica. Real aiohttp servers on 127.0.0.1 stand
in for the engines; the router's health probe is switched off so only the proxy path can eject a replica."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import aiohttp
import pytest
from aiohttp import web

from agentfleet.bench.simulator import free_port
from agentfleet.router.proxy import ProxySettings, build_app
from agentfleet.router.state import FleetState

WORDS = [f"w{i} " for i in range(6)]


class Engines:
    """Two OpenAI-compatible replicas. `dies` names the request numbers (over both, from 1) that break off after
    two chunks by closing the connection without ending the chunked body; `slow` makes every chunk wait for
    `go` (a client that leaves mid-answer)."""

    def __init__(self, *, dies=(), slow=False):
        self.dies, self.slow = set(dies), slow
        self.calls: list[str] = []
        self.go = asyncio.Event()

    def app(self, name: str) -> web.Application:
        async def completions(request: web.Request) -> web.StreamResponse:
            await request.json()
            self.calls.append(name)
            n = len(self.calls)
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for i, w in enumerate(WORDS):
                if self.slow and i:
                    await self.go.wait()
                await resp.write(f"data: {json.dumps({'choices': [{'delta': {'content': w}}]})}\n\n".encode())
                if n in self.dies and i == 1:
                    assert request.transport is not None
                    request.transport.close()  # the engine dies: flushed, then the connection ends mid-body
                    return resp
            await resp.write(b'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')
            await resp.write_eof()
            return resp

        app = web.Application()
        app.router.add_post("/v1/chat/completions", completions)
        return app


@contextlib.asynccontextmanager
async def fleet_behind_router(engines: Engines):
    runners = []
    urls = {}
    for name in ("a", "b"):
        runner = web.AppRunner(engines.app(name), access_log=None, shutdown_timeout=1)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        urls[name] = f"http://127.0.0.1:{port}"
    fleet = FleetState(policy="session")
    fleet.set_endpoints(urls)
    # No health probe (the interval never elapses): only the proxy path may take a replica out here.
    app = build_app(fleet, ProxySettings(health_interval_s=1e12, metrics_interval_s=3600))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    runners.append(runner)
    try:
        yield fleet, f"http://127.0.0.1:{port}"
    finally:
        for r in reversed(runners):
            await r.cleanup()


BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
SESSION = {"x-session-id": "task-1"}


async def _read(session: aiohttp.ClientSession, url: str) -> tuple[str, str, str | None]:
    """(replica, streamed text, error class or None)."""
    async with session.post(url + "/v1/chat/completions", json=BODY, headers=SESSION) as r:
        replica = r.headers["x-agentfleet-replica"]
        text = ""
        try:
            async for raw in r.content:
                line = raw.decode().strip()
                if line.startswith("data:") and line[5:].strip() != "[DONE]":
                    for c in json.loads(line[5:])["choices"]:
                        text += c["delta"].get("content") or ""
        except aiohttp.ClientPayloadError as e:
            return replica, text, type(e).__name__
        return replica, text, None


def test_replica_that_dies_mid_stream_is_ejected_and_the_session_moves():
    async def go():
        engines = Engines(dies={1})
        async with fleet_behind_router(engines) as (fleet, url), aiohttp.ClientSession() as s:
            first = await _read(s, url)
            health = {n: e.is_healthy for n, e in fleet.endpoints.items()}
            counts = {n: e.mid_stream_failures for n, e in fleet.endpoints.items()}
            second = await _read(s, url)  # the client's retry of the same session
            async with s.get(url + "/metrics") as r:
                metrics = await r.text()
            return first, health, counts, second, metrics

    first, health, counts, second, metrics = asyncio.run(go())
    dead, (live,) = first[0], {"a", "b"} - {first[0]}
    assert first[1:] == ("w0 w1 ", "ClientPayloadError")  # truncated, not a complete-looking answer
    assert health == {dead: False, live: True}
    assert counts == {dead: 1, live: 0}
    assert second == (live, "".join(WORDS), None)
    assert f'agentfleet_router_mid_stream_failures_total{{replica="{dead}"}} 1' in metrics
    assert f'agentfleet_router_replica_healthy{{replica="{dead}"}} 0' in metrics


def test_client_leaving_mid_stream_does_not_eject_the_replica():
    async def go():
        engines = Engines(slow=True)
        async with fleet_behind_router(engines) as (fleet, url), aiohttp.ClientSession() as s:
            async with s.post(url + "/v1/chat/completions", json=BODY, headers=SESSION) as r:
                replica = r.headers["x-agentfleet-replica"]
                await r.content.readline()  # the first chunk arrived; the client leaves
            engines.go.set()
            end = time.monotonic() + 10
            while fleet.endpoints[replica].in_flight and time.monotonic() < end:  # the proxy has finished
                await asyncio.sleep(0.02)
            return fleet.endpoints[replica]

    ep = asyncio.run(go())
    assert ep.in_flight == 0 and ep.is_healthy and ep.mid_stream_failures == 0


@pytest.mark.parametrize("dies", [pytest.param({1, 2}, id="both-replicas-die")])
def test_no_replica_left_after_two_mid_stream_deaths_answers_503(dies):
    async def go():
        engines = Engines(dies=dies)
        async with fleet_behind_router(engines) as (fleet, url), aiohttp.ClientSession() as s:
            await _read(s, url)
            await _read(s, url)
            async with s.post(url + "/v1/chat/completions", json=BODY, headers=SESSION) as r:
                return r.status, (await r.json())["error"]["code"], fleet.is_ready()

    assert asyncio.run(go()) == (503, "no_replica_available", False)


def test_readyz_is_the_routers_own_and_names_replica_health():
    """With every replica gone the router stays ready (it still answers each request itself, a JSON 503 with
    Retry-After, instead of leaving its Service and giving callers connection refused); `?upstreams=1` asks for a
    healthy replica too. Before the membership is first known it is not ready."""
    async def go():
        engines = Engines(dies={1, 2})
        async with fleet_behind_router(engines) as (fleet, url), aiohttp.ClientSession() as s:
            async def readyz(q: str = "") -> tuple[int, dict]:
                async with s.get(url + "/readyz" + q) as r:
                    return r.status, await r.json()

            before = await readyz(), await readyz("?upstreams=1")
            await _read(s, url)
            await _read(s, url)
            async with s.post(url + "/v1/chat/completions", json=BODY, headers=SESSION) as r:
                refused = r.status, r.headers.get("Retry-After"), (await r.json())["error"]["code"]
            after = await readyz(), await readyz("?upstreams=1")
            fleet.synced = False  # as a router whose first EndpointSlice listing has not come back yet
            unsynced = await readyz()
        return before, refused, after, unsynced

    before, refused, after, unsynced = asyncio.run(go())
    assert before == ((200, {"ready": True, "replicas": {"total": 2, "healthy": 2}}),
                      (200, {"ready": True, "replicas": {"total": 2, "healthy": 2}}))
    assert refused[0] == 503 and refused[1] and refused[2] == "no_replica_available"
    assert after[0] == (200, {"ready": True, "replicas": {"total": 2, "healthy": 0}})
    assert after[1] == (503, {"ready": False, "replicas": {"total": 2, "healthy": 0}, "reason": "no ready replica"})
    assert unsynced[0] == 503 and unsynced[1]["reason"] == "replica membership not listed yet"


def test_probe_reads_a_gzipped_metrics_page_and_keeps_running():
    """llm-d-inference-sim gzips /metrics for a client that accepts gzip; the router's pool does not decompress.
    The probe (which also runs the health checks) must read the page and never die on it."""
    page = "vllm:num_requests_waiting 3\nvllm:num_requests_running 2\nvllm:kv_cache_usage_perc 0.5\n"

    async def metrics(request: web.Request) -> web.Response:
        resp = web.Response(text=page)
        if "gzip" in request.headers.get("Accept-Encoding", ""):
            resp.enable_compression(web.ContentCoding.gzip)
        return resp

    async def go():
        engine = web.Application()
        engine.router.add_get("/metrics", metrics)
        runner = web.AppRunner(engine, access_log=None, shutdown_timeout=1)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        fleet = FleetState(policy="session")
        fleet.set_endpoints({"a": f"http://127.0.0.1:{port}"})
        router = web.AppRunner(build_app(fleet, ProxySettings(health_interval_s=1e12, metrics_interval_s=0.01)),
                               access_log=None, shutdown_timeout=1)
        await router.setup()
        try:
            end = time.monotonic() + 10
            while fleet.endpoints["a"].waiting is None and time.monotonic() < end:
                await asyncio.sleep(0.02)
            ep = fleet.endpoints["a"]
            return ep.waiting, ep.running, ep.kv_cache_usage
        finally:
            await router.cleanup()  # re-raises what ended the probe loop, if anything did
            await runner.cleanup()

    assert asyncio.run(go()) == (3.0, 2.0, 0.5)
