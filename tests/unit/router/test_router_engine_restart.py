"""An engine restart seen by a real router process: a replica restarted on the same address (what a vLLM
container restart looks like: same pod IP, empty KV cache, counters from 0) has its session claims dropped at the
router's next scrape, so new sessions are placed on it as on the empty replica it is, not kept off it until the old
claims idle out."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request

from agentfleet.bench.simulator import SimSettings, free_port, running_fleet
from agentfleet.router.state import parse_prometheus_text


def _metric(url: str, name: str, replica: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    prefix = f'{name}{{replica="{replica}"}} '
    return next(float(x[len(prefix):]) for x in text.splitlines() if x.startswith(prefix))


def _chat(url: str, session: str) -> str:
    body = json.dumps({"model": "sim-model", "messages": [{"role": "user", "content": f"hello {session}"}],
                       "max_tokens": 2}).encode()
    req = urllib.request.Request(url + "/v1/chat/completions", data=body, headers={
        "Content-Type": "application/json", "X-Session-ID": session})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.headers["x-agentfleet-replica"]


def _until(check, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_restarted_engine_loses_its_claims_at_once():
    with running_fleet(2, SimSettings()) as sims:
        port = free_port()
        endpoints = ",".join(f"sim-{i}={u}" for i, u in enumerate(sims.urls))
        router = subprocess.Popen([sys.executable, "-m", "agentfleet.cli", "router", "--endpoints", endpoints,
                                   "--host", "127.0.0.1", "--port", str(port)], stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        try:
            _until(lambda: _ready(url))
            homes = [_chat(url, f"s{i}") for i in range(20)]
            on0 = homes.count("sim-0")
            assert 0 < on0 < 20
            assert _metric(url, "agentfleet_router_live_keys", "sim-0") == on0
            assert _served(sims.urls[0]) > 0
            time.sleep(1.5)  # the router scrapes every second: it has seen sim-0's request counter above 0
            sims.restart(0)
            _until(lambda: _metric(url, "agentfleet_router_replica_restarts_total", "sim-0") == 1)
            assert _metric(url, "agentfleet_router_live_keys", "sim-0") == 0
            assert _metric(url, "agentfleet_router_replica_restarts_total", "sim-1") == 0
            assert _metric(url, "agentfleet_router_live_keys", "sim-1") == 20 - on0
        finally:
            router.terminate()
            router.wait(timeout=10)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz?upstreams=1", timeout=1):
            return True
    except OSError:
        return False


def _served(sim_url: str) -> float:
    with urllib.request.urlopen(sim_url + "/metrics", timeout=5) as r:
        return parse_prometheus_text(r.read().decode()).get("vllm:request_success_total", 0.0)
