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


def test_router_lists_what_its_replicas_serve_lora_adapters_included():
    openai = pytest.importorskip("openai")

    async def models(_: web.Request) -> web.Response:
        return web.json_response(ENGINE_MODELS)

    async def go():
        engine = web.Application()
        engine.router.add_get("/v1/models", models)
        engine_runner = web.AppRunner(engine, access_log=None, shutdown_timeout=1)
        await engine_runner.setup()
        port = free_port()
        await web.TCPSite(engine_runner, "127.0.0.1", port).start()
        runners = [engine_runner]
        fleet = FleetState(policy="session")
        fleet.set_endpoints({"a": f"http://127.0.0.1:{port}"})
        router = web.AppRunner(build_app(fleet, ProxySettings(health_interval_s=1e12, metrics_interval_s=3600)),
                               access_log=None, shutdown_timeout=1)
        await router.setup()
        rport = free_port()
        await web.TCPSite(router, "127.0.0.1", rport).start()
        runners.append(router)
        try:
            async with aiohttp.ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{rport}/v1/models") as resp:
                    raw = resp.status, await resp.json()
            client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{rport}/v1", api_key="unused", max_retries=0)
            listed = [(m.id, getattr(m, "parent", None)) async for m in client.models.list()]
            await client.close()
            return raw, listed
        finally:
            for r in reversed(runners):
                await r.cleanup()

    (status, body), listed = asyncio.run(go())
    assert status == 200 and body == ENGINE_MODELS
    assert listed == [("llama", None), ("sql-lora", "llama")]
