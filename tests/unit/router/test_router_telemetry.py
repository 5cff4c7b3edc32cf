"""The router with tracing off (the default): no span is made, the caller's W3C traceparent and tracestate reach the
engine exactly as sent, and the OpenTelemetry SDK is never imported. Tracing on is read back from a real Jaeger in
tests/unit/runtime/test_runtime_telemetry.py (runtime > router > engine, retries, the `agentfleet router` flags)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

OFF_SCRIPT = r"""
import asyncio, json, sys
import aiohttp
from aiohttp import web
import agentfleet.cli  # every subcommand's parser, the router's included
from agentfleet.bench.simulator import free_port
from agentfleet.router.proxy import ProxySettings, build_app
from agentfleet.router.state import FleetState

async def main():
    seen = []

    async def completions(request):
        seen.append({k.lower(): v for k, v in request.headers.items()})
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]})

    engine = web.Application()
    engine.router.add_post("/v1/chat/completions", completions)
    runners = []
    for app in (engine, None):
        if app is None:
            fleet = FleetState(policy="session")
            fleet.set_endpoints({"a": f"http://127.0.0.1:{engine_port}"})
            app = build_app(fleet, ProxySettings(health_interval_s=1e12, metrics_interval_s=3600))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        engine_port = port
    async with aiohttp.ClientSession() as s:
        async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                          json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                          headers={"Traceparent": sys.argv[1], "tracestate": "vendor=1"}) as r:
            status = r.status
    for runner in reversed(runners):
        await runner.cleanup()
    return status, seen

status, seen = asyncio.run(main())
print(json.dumps({"status": status, "sent": [{k: h.get(k) for k in ("traceparent", "tracestate")} for h in seen],
                  "otel": sorted(m for m in sys.modules if m.startswith("opentelemetry"))}))
"""


def test_router_tracing_off_passes_the_callers_trace_context_through_and_imports_no_sdk():
    """In a fresh interpreter: this one may have imported the SDK for another test."""
    out = subprocess.run([sys.executable, "-c", OFF_SCRIPT, TRACEPARENT], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["status"] == 200
    assert got["sent"] == [{"traceparent": TRACEPARENT, "tracestate": "vendor=1"}]
    assert got["otel"] == []
