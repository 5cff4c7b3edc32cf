"""`agentfleet bench runtime`: what the AgentApp runtime adds over calling the model server directly. One
llm-d-inference-sim replica (echo mode, so a one-step task answers from one model call) and the real runtime
(`agentfleet serve` in its own process, as it runs in a pod); for each concurrency the same load generator first
sends the runtime's own model request straight to the simulator (the baseline), then a chat completion to the
runtime, alternating rounds so machine noise hits both. Overhead = runtime percentile - direct percentile.
`--budget` puts a Budget on the app, so every request also takes and settles ledger reservations (SQLite)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["add_bench_parsers", "run"]

KEY = "bench-key-000001"
TARGET_P99_OVERHEAD_MS_AT_16 = 10.0


def add_bench_parsers(bench_sub: argparse._SubParsersAction) -> None:
    p = bench_sub.add_parser("runtime", help="the runtime's added latency over the model server (p50/p99 at "
                                             "concurrency 1, 16, 64) and sustained requests/s")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--concurrency", default="1,16,64")
    p.add_argument("--seconds", type=float, default=4.0, help="measured seconds per target, concurrency and round")
    p.add_argument("--rounds", type=int, default=2, help="alternating direct/runtime rounds per concurrency")
    p.add_argument("--budget", action="store_true", help="charge every request to a Budget (SQLite ledger)")
    p.set_defaults(func=_cmd)


def _config(tmp: Path, sim_url: str, *, budget: bool) -> Path:
    import yaml

    from ..api import parse
    from ..render.agentapp import runtime_config

    def res(kind: str, name: str, spec: dict[str, Any]) -> Any:
        return parse({"apiVersion": "agentfleet.io/v1alpha1", "kind": kind,
                      "metadata": {"name": name, "namespace": "bench"}, "spec": spec})

    app = res("AgentApp", "bench", {"fleets": {"large": "sim"}, "tools": {"builtin": ["calculator"]},
                                    "auth": {"apiKeysSecretRef": {"name": "k", "key": "keys.yaml"}},
                                    "limits": {"maxTokens": 4000}})
    fleet = res("ModelFleet", "sim", {"model": {"uri": "hf://bench/sim", "servedModelName": "sim-model"}})
    bud = res("Budget", "bench", {"window": "day", "limits": {"tokens": 10**12}}) if budget else None
    (tmp / "keys.yaml").write_text(yaml.safe_dump({KEY: {"user": "bench", "tenant": "bench", "groups": []}}))
    cfg = runtime_config(app, fleets={"sim": fleet}, index=None, budget=bud, fleet_urls={"sim": sim_url},
                         keys_file=str(tmp / "keys.yaml"))
    path = tmp / "runtime.yaml"
    path.write_text(yaml.safe_dump(cfg.wire()))
    return path


def _wait_ready(url: str, proc: subprocess.Popen[bytes], deadline_s: float = 30) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"the runtime exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/readyz?upstreams=1", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError("the runtime did not become ready")


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


async def _load(session: Any, url: str, body: dict[str, Any], headers: dict[str, str], concurrency: int,
                seconds: float) -> tuple[list[float], int, float]:
    lat: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            async with session.post(url, json=body, headers=headers) as r:
                await r.read()
                if r.status != 200:
                    errors += 1
                    continue
            lat.append(time.perf_counter() - t0)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lat, errors, time.perf_counter() - t0


async def _measure(sim: str, rt: str, levels: list[int], seconds: float, rounds: int) -> dict[str, Any]:
    import aiohttp

    from ..runtime.actions import action_schema, response_format
    from ..runtime.agent import AgentSpec, system_message
    from ..runtime.tools import CALCULATOR

    question = json.dumps({"action": "final_answer", "answer": "ok"})
    # The request the runtime itself sends for this task (same prompt, schema and token cap), straight to the sim.
    direct = {"model": "sim-model", "max_tokens": 384, "temperature": 0, "user": "bench",
              "response_format": response_format(action_schema([CALCULATOR])),
              "messages": [system_message(AgentSpec("bench", "You are a helpful assistant. Answer from the "
                                                    "retrieved documents and cite them.", ("calculator",)),
                                          [CALCULATOR]), {"role": "user", "content": question}]}
    chat = {"model": "bench", "messages": [{"role": "user", "content": question}]}
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as s:
        await _load(s, rt + "/v1/chat/completions", chat, {"Authorization": f"Bearer {KEY}"}, 4, 0.5)  # warm up
        await _load(s, sim + "/v1/chat/completions", direct, {}, 4, 0.5)
        for c in levels:
            d_lat: list[float] = []
            r_lat: list[float] = []
            d_err = r_err = 0
            d_time = r_time = 0.0
            for _ in range(rounds):
                lat, err, el = await _load(s, sim + "/v1/chat/completions", direct, {"x-session-id": "bench"}, c,
                                           seconds)
                d_lat += lat
                d_err += err
                d_time += el
                lat, err, el = await _load(s, rt + "/v1/chat/completions", chat,
                                           {"Authorization": f"Bearer {KEY}"}, c, seconds)
                r_lat += lat
                r_err += err
                r_time += el
            ms = 1000.0
            out[str(c)] = {
                "overhead_p50_ms": round((_pct(r_lat, 0.5) - _pct(d_lat, 0.5)) * ms, 2),
                "overhead_p99_ms": round((_pct(r_lat, 0.99) - _pct(d_lat, 0.99)) * ms, 2),
                "rps": round(len(r_lat) / r_time, 1),
                "direct_rps": round(len(d_lat) / d_time, 1),
                "runtime_p50_ms": round(_pct(r_lat, 0.5) * ms, 2), "runtime_p99_ms": round(_pct(r_lat, 0.99) * ms, 2),
                "direct_p50_ms": round(_pct(d_lat, 0.5) * ms, 2), "direct_p99_ms": round(_pct(d_lat, 0.99) * ms, 2),
                "requests": len(r_lat), "direct_requests": len(d_lat), "errors": r_err, "direct_errors": d_err,
            }
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from .simulator import SimSettings, free_port, running_fleet

    levels = [int(x) for x in args.concurrency.split(",") if x]
    # Near-zero simulated latency so the runtime's own cost is not lost in the model's; enough sequences that
    # 64 concurrent requests never queue in the simulator.
    settings = SimSettings(prefill_ms_per_token=0.01, inter_token_ms=0.01, max_num_seqs=256,
                           extra=("--mode", "echo"))
    with tempfile.TemporaryDirectory(prefix="agentfleet-bench-runtime-") as tmp, running_fleet(1, settings) as fleet:
        sim = fleet.urls[0]
        cfg = _config(Path(tmp), sim + "/v1", budget=args.budget)
        port = free_port()
        rt_url = f"http://127.0.0.1:{port}"
        log = open(Path(tmp) / "runtime.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen([sys.executable, "-m", "agentfleet.cli", "serve", "--config", str(cfg), "--host",
                                 "127.0.0.1", "--port", str(port), "--state-dir", tmp], stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            _wait_ready(rt_url, proc)
            result = asyncio.run(_measure(sim, rt_url, levels, args.seconds, args.rounds))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    p99_16 = result.get("16", {}).get("overhead_p99_ms")
    return {"benchmark": "runtime", "budget": bool(args.budget), "concurrency": result,
            "target": {"overhead_p99_ms_at_16": TARGET_P99_OVERHEAD_MS_AT_16},
            "meets_target": None if p99_16 is None else p99_16 <= TARGET_P99_OVERHEAD_MS_AT_16,
            "cpus": os.cpu_count(), "seconds_per_round": args.seconds, "rounds": args.rounds}


def _cmd(args: argparse.Namespace) -> int:
    out = run(args)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"runtime overhead over the model server ({'with' if out['budget'] else 'without'} a Budget):")
    for c, r in out["concurrency"].items():
        print(f"  c={c:>3}: p50 +{r['overhead_p50_ms']:.2f} ms, p99 +{r['overhead_p99_ms']:.2f} ms, "
              f"{r['rps']:.0f} req/s (direct {r['direct_rps']:.0f} req/s), errors {r['errors']}")
    print(f"target p99 overhead <= {TARGET_P99_OVERHEAD_MS_AT_16} ms at c=16: "
          f"{'met' if out['meets_target'] else 'NOT met'}")
    return 0
