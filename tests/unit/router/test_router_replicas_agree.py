"""Two router replicas in front of one fleet (four llm-d-inference-sim engines), as a ModelFleet with
`router.replicas: 2` runs them: real `agentfleet router` processes, real HTTP. One router carries a heavy skew (a
session's long streams, which only it has in flight), the other none. With `--placement shared` (what the
renderer gives more than one router replica), or with the AgentApp runtime's hints on each call (its run and the
replica of its last call), they place >= 99 % of 1,000 new sessions on the same engine, and a task whose steps
alternate between the routers keeps its prefix-cache hit rate: no loss against one router."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request

import aiohttp
import pytest

from agentfleet import metrics_names as mn
from agentfleet.bench.simulator import SimSettings, free_port, running_fleet
from agentfleet.router.state import parse_prometheus_text

SYSTEM = " ".join(f"policy{i}" for i in range(200))  # a shared system prompt, as an agent's


def _router(endpoints: str, placement: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "agentfleet.cli", "router", "--endpoints", endpoints, "--host",
                             "127.0.0.1", "--port", str(port), "--placement", placement],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz?upstreams=1", timeout=1):
                return proc, url
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.1)
    proc.kill()
    raise TimeoutError("router did not start")


def _hits(sim_urls: list[str]) -> tuple[float, float]:
    hits = queries = 0.0
    for u in sim_urls:
        with urllib.request.urlopen(u + "/metrics", timeout=5) as r:
            m = parse_prometheus_text(r.read().decode())
        hits += mn.first_present(m, mn.PREFIX_CACHE_HITS) or 0.0
        queries += mn.first_present(m, mn.PREFIX_CACHE_QUERIES) or 0.0
    return hits, queries


def _busy(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        m = parse_prometheus_text(r.read().decode())
    return (mn.first_present(m, mn.RUNNING) or 0.0) + (mn.first_present(m, mn.WAITING) or 0.0)


async def _call(http: aiohttp.ClientSession, url: str, session: str, messages: list[dict], max_tokens: int = 1,
                *, hints: bool = False, home: str | None = None) -> tuple[str, str]:
    """`hints`: send what the AgentApp runtime sends, the run header and `home`, the replica of the session's
    last call."""
    body = {"model": "sim-model", "messages": messages, "max_tokens": max_tokens, "temperature": 0,
            "ignore_eos": True}  # the simulator's answer is exactly max_tokens long
    headers = {"X-Session-ID": session}
    if hints:
        headers["x-agentfleet-run"] = session
        if home:
            headers["x-agentfleet-home"] = home
    async with http.post(url + "/v1/chat/completions", json=body, headers=headers) as r:
        data = await r.json()
        assert r.status == 200, data
        return r.headers["x-agentfleet-replica"], data["choices"][0]["message"]["content"]


async def _scenario(a: str, b: str, sim_urls: list[str], hints: bool) -> dict:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
        # The skew: one session's long answers, in flight through router A only (B has never seen that session).
        hog = [asyncio.create_task(_call(http, a, "hog", [{"role": "user", "content": f"long {i}"}], 4000))
               for i in range(12)]
        await asyncio.sleep(3.0)  # both routers scrape the engines (every second)
        loads = [_busy(u) for u in sim_urls]
        assert max(loads) == 12 and sum(loads) == 12, loads  # all on one engine
        hog_replica = f"sim-{loads.index(max(loads))}"

        # 1,000 new sessions, as a Service spreads them over router replicas: each one's first call goes to one
        # router (half to each, so each router's own tables differ) and its next call to the other.
        agree = on_hog = 0
        gate = asyncio.Semaphore(4)

        async def probe(i: int) -> None:
            nonlocal agree, on_hog
            first, then = (a, b) if i % 2 == 0 else (b, a)
            msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"probe {i}"}]
            async with gate:
                r1, text = await _call(http, first, f"p{i}", msgs, hints=hints)
                more = [{"role": "assistant", "content": text}, {"role": "user", "content": "next"}]
                r2, _ = await _call(http, then, f"p{i}", msgs + more, hints=hints, home=r1)
            agree += r1 == r2
            on_hog += r1 == hog_replica

        await asyncio.gather(*(probe(i) for i in range(1000)))

        # Tasks of four growing steps: alternating between the routers, then through one router.
        async def task(name: str, routers: list[str]) -> None:
            msgs = [{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"task {name} " + " ".join(f"w{j}" for j in range(150))}]
            home = None
            for step in range(4):
                home, text = await _call(http, routers[step % len(routers)], name, msgs, 8, hints=hints,
                                         home=home)
                msgs = msgs + [{"role": "assistant", "content": text},
                               {"role": "user", "content": " ".join(f"t{name}x{step}y{j}" for j in range(100))}]

        rates = {}
        for label, routers in (("alternating", [a, b]), ("one_router", [a])):
            h0, q0 = _hits(sim_urls)
            gate2 = asyncio.Semaphore(8)

            async def bounded(i: int, label=label, routers=routers) -> None:
                async with gate2:
                    await task(f"{label}-{i}", routers)

            await asyncio.gather(*(bounded(i) for i in range(60)))
            h1, q1 = _hits(sim_urls)
            rates[label] = (h1 - h0) / (q1 - q0)
        for t in hog:
            t.cancel()
        await asyncio.gather(*hog, return_exceptions=True)
    return {"agree": agree, "on_hog": on_hog, "rates": rates}


@pytest.mark.parametrize(("placement", "hints"), [
    pytest.param("shared", False, id="plain-clients-shared-placement"),
    pytest.param("local", True, id="runtime-hints-local-placement"),
])
def test_two_routers_agree_under_skewed_load(placement, hints):
    """Plain clients (a session id only): the shared placement. The AgentApp runtime's calls (run id and the
    replica of the last call): any placement, since each call says where the session lives."""
    # Room for the hog in one batch: the engine is busy but not overloaded, so the only skew is router A's own
    # in-flight count, which local placement bounds by and shared placement ignores.
    settings = SimSettings(max_num_seqs=16, inter_token_ms=40, prefill_ms_per_token=0.05)
    with running_fleet(4, settings) as sims:
        endpoints = ",".join(f"sim-{i}={u}" for i, u in enumerate(sims.urls))
        (pa, a), (pb, b) = _router(endpoints, placement), _router(endpoints, placement)
        try:
            out = asyncio.run(_scenario(a, b, sims.urls, hints))
        finally:
            for p in (pa, pb):
                p.kill()
                p.wait(timeout=10)
    assert out["agree"] >= 990, out
    assert out["on_hog"] > 1000 / 4 / 2, out  # the loaded engine still takes its share of the ring (both agree)
    assert out["rates"]["alternating"] >= out["rates"]["one_router"] - 0.01, out
