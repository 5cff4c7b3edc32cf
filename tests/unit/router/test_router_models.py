"""`GET /v1/models` through the router: what its replicas serve, as the engine lists it (vLLM lists the served
model name and each loaded LoRA adapter with its `parent`), passed through unchanged so OpenAI clients see it."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from agentfleet.bench.simulator import free_port
from agentfleet.router.proxy import ProxySettings, build_app
from agentfleet.router.state import FleetState

# The shape of vLLM's /v1/models with one LoRA adapter loaded (--enable-lora --lora-modules sql-lora=...).
ENGINE_MODELS = {"object": "list", "data": [
    {"id": "llama", "object": "model", "created": 1700000000, "owned_by": "vllm", "root": "meta/llama",
     "parent": None, "max_model_len": 8192},
    {"id": "sql-lora", "object": "model", "created": 1700000000, "owned_by": "vllm", "root": "/adapters/sql",
     "parent": "llama", "max_model_len": 8192}]}


async def _serve(app: web.Application, runners: list[web.AppRunner]) -> str:
    """Start `app` on a free local port (kept in `runners` for cleanup); its base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    runners.append(runner)
    return f"http://127.0.0.1:{port}"


def test_router_lists_what_its_replicas_serve_lora_adapters_included():
    openai = pytest.importorskip("openai")

    async def models(_: web.Request) -> web.Response:
        return web.json_response(ENGINE_MODELS)

    async def go():
        engine = web.Application()
        engine.router.add_get("/v1/models", models)
        runners: list[web.AppRunner] = []
        fleet = FleetState(policy="session")
        fleet.set_endpoints({"a": await _serve(engine, runners)})
        base = await _serve(build_app(fleet, ProxySettings(health_interval_s=1e12, metrics_interval_s=3600)),
                            runners)
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(f"{base}/v1/models") as resp:
                    raw = resp.status, await resp.json()
            client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
            listed = [(m.id, getattr(m, "parent", None)) async for m in client.models.list()]
            await client.close()
            return raw, listed
        finally:
            for r in reversed(runners):
                await r.cleanup()

    (status, body), listed = asyncio.run(go())
    assert status == 200 and body == ENGINE_MODELS
    assert listed == [("llama", None), ("sql-lora", "llama")]


def test_an_adapters_requests_go_only_where_it_is_loaded():
    """Adapters loaded at run time differ per replica: the router reads each replica's /v1/models and sends a
    request for an adapter only to replicas that list it; the base model still spreads over all of them, and a
    name no replica lists is not filtered (the engine answers for it)."""
    def engine(name: str, models: list[str]) -> web.Application:
        async def listing(_: web.Request) -> web.Response:
            return web.json_response({"object": "list", "data": [{"id": m, "object": "model"} for m in models]})

        async def chat(_: web.Request) -> web.Response:
            return web.json_response({"choices": [{"message": {"role": "assistant", "content": name}}]})

        app = web.Application()
        app.router.add_get("/v1/models", listing)
        app.router.add_post("/v1/chat/completions", chat)
        return app

    async def go():
        runners: list[web.AppRunner] = []
        urls = {name: await _serve(engine(name, models), runners)
                for name, models in (("a", ["llama", "sql-lora"]), ("b", ["llama"]), ("c", ["llama"]))}
        fleet = FleetState(policy="session")
        fleet.set_endpoints(urls)
        base = await _serve(build_app(fleet, ProxySettings(health_interval_s=1e12, metrics_interval_s=0.05)),
                            runners)
        try:
            for _ in range(100):
                if all(e.models is not None for e in fleet.endpoints.values()):
                    break
                await asyncio.sleep(0.05)
            served: dict[str, list[str]] = {}
            async with aiohttp.ClientSession() as s:
                for model in ("sql-lora", "llama", "nobody-has-it"):
                    for i in range(12):
                        body = {"model": model, "messages": [{"role": "user", "content": f"q{i}"}]}
                        async with s.post(f"{base}/v1/chat/completions", json=body,
                                          headers={"x-session-id": f"{model}-{i}"}) as r:
                            served.setdefault(model, []).append(r.headers["x-agentfleet-replica"])
            return served
        finally:
            for r in reversed(runners):
                await r.cleanup()

    served = asyncio.run(go())
    assert set(served["sql-lora"]) == {"a"}, served
    assert len(set(served["llama"])) >= 2, served
    assert len(set(served["nobody-has-it"])) >= 2, served
