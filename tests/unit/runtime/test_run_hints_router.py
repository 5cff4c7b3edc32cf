"""The runtime and the router cooperate on a run's affinity: every call of a run to a fleet's own router names the
run (`x-agentfleet-run`), so the router holds the session's claim through its tools, and the moment the run ends
the runtime sends its sessions to `POST /v1/sessions/end`, so the claim goes then, not when it idles out. A real
`agentfleet router` process between the runtime and llm-d-inference-sim; a hosted API (is_router false) gets
neither the header nor the end call. A run its Budget degraded by priority asks the router for the low band."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request

from agentfleet.bench.simulator import SimSettings, free_port, running_fleet
from agentfleet.router.state import parse_prometheus_text

from runtime_kit import final, make_config, needs_sim, scripted, serve


def _router_metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        return parse_prometheus_text(r.read().decode())


def _start_router(sim_url: str, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "agentfleet.cli", "router", "--endpoints", f"sim-0={sim_url}",
                             "--host", "127.0.0.1", "--port", str(port), *extra], stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url + "/readyz?upstreams=1", timeout=1):
                return proc, url
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
            time.sleep(0.1)


@needs_sim
def test_a_finished_run_releases_its_session_on_the_router(tmp_path):
    with running_fleet(1, SimSettings(extra=("--mode", "echo"))) as sims:
        router, url = _start_router(sims.urls[0])
        try:
            cfg = make_config(tmp_path, large_url=url + "/v1")
            cfg = cfg.model_copy(update={"models": {r: m.model_copy(update={"is_router": True})
                                                    for r, m in cfg.models.items()}})

            async def go():
                async with serve(cfg, tmp_path) as s:
                    status, body = await s.chat("what is 2+2?")
                    deadline = time.monotonic() + 10
                    while _router_metrics(url).get("agentfleet_router_released_keys_total", 0) < 1:
                        assert time.monotonic() < deadline, "the router was not told the run ended"
                        await asyncio.sleep(0.1)
                    return status, body

            status, body = asyncio.run(go())
            m = _router_metrics(url)
        finally:
            router.terminate()
            router.wait(timeout=10)
    assert status == 200, body
    assert m["agentfleet_router_released_keys_total"] == 1
    assert m.get("agentfleet_router_live_keys", 0) == 0  # nothing left claimed for a run that is over


@needs_sim
def test_a_budget_near_its_limit_sends_its_runs_calls_in_the_routers_low_band(tmp_path):
    """degradeBy low-priority end to end: the same question through a real router with a fair queue, first from a
    runtime whose Budget is far from its line (no low-band slot asked), then from one whose every task is past it
    (degradeAtPercent 1): its calls reach the router's low band."""
    with running_fleet(1, SimSettings(extra=("--mode", "echo"))) as sims:
        router, url = _start_router(sims.urls[0], "--fair-queue", "4")
        try:
            counts = []
            for name, at in (("far", 99), ("near", 1)):
                (tmp_path / name).mkdir()
                cfg = make_config(tmp_path / name, large_url=url + "/v1", budget={
                    "window": "day", "limits": {"tokens": 1_000_000 if at == 99 else 50_000},
                    "degradeAtPercent": at, "degradeBy": "low-priority"})
                cfg = cfg.model_copy(update={"models": {r: m.model_copy(update={"is_router": True})
                                                        for r, m in cfg.models.items()}})

                async def go(cfg=cfg):
                    async with serve(cfg, tmp_path / name) as s:
                        return await s.chat("what is 2+2?")

                status, body = asyncio.run(go())
                assert status == 200, body
                counts.append((body["agentfleet"]["degraded"],
                               _router_metrics(url).get("agentfleet_router_fair_queue_low_band_total")))
        finally:
            router.terminate()
            router.wait(timeout=10)
    assert counts[0] == (False, 0.0), counts
    assert counts[1][0] is True and counts[1][1] >= 1, counts


def test_a_hosted_api_gets_no_run_header_and_no_end_call(tmp_path):

    async def go():
        async with scripted(lambda b, h: final("four")) as api:
            cfg = make_config(tmp_path, large_url=api.url)  # is_router stays false: not our router
            async with serve(cfg, tmp_path) as s:
                status, _ = await s.chat("what is 2+2?")
                await asyncio.sleep(0.3)
            return status, api.requests

    status, requests = asyncio.run(go())
    assert status == 200 and requests
    assert all("x-agentfleet-run" not in h for _, h in requests)
    assert all("x-session-id" in h for _, h in requests)
