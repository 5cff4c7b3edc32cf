"""`agentfleet bench httpclient`: the router's hot-path HTTP client, chosen by measurement (conventions: aiohttp
or httpx, not by habit). Both clients fetch from one simulator replica on 127.0.0.1 (GET /v1/models and a streamed
completion read chunk by chunk) at the same concurrency, in alternating rounds so machine noise hits both."""

from __future__ import annotations

import argparse
import json

__all__ = ["add_bench_parsers", "run"]


async def _aiohttp_round(url: str, n: int, concurrency: int, stream_body: dict) -> float:
    import asyncio
    import time

    import aiohttp

    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        async def one(i: int) -> None:
            async with sem:
                if i % 2:
                    async with s.get(url + "/v1/models") as r:
                        await r.read()
                else:
                    async with s.post(url + "/v1/completions", json=stream_body) as r:
                        async for _ in r.content.iter_any():
                            pass
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - t0)


async def _httpx_round(url: str, n: int, concurrency: int, stream_body: dict) -> float:
    import asyncio
    import time

    import httpx

    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as c:
        async def one(i: int) -> None:
            async with sem:
                if i % 2:
                    (await c.get(url + "/v1/models")).read()
                else:
                    async with c.stream("POST", url + "/v1/completions", json=stream_body) as r:
                        async for _ in r.aiter_raw():
                            pass
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return n / (time.perf_counter() - t0)


def run(args: argparse.Namespace) -> dict:
    import asyncio
    import statistics

    from . import simulator

    body = {"model": "sim-model", "prompt": "hello world", "max_tokens": 8, "stream": True}
    settings = simulator.SimSettings(prefill_ms_per_token=0, inter_token_ms=0)
    rates: dict[str, list[float]] = {"aiohttp": [], "httpx": []}
    with simulator.running_fleet(1, settings) as sims:
        url = sims.urls[0]
        for _ in range(args.rounds):
            rates["aiohttp"].append(asyncio.run(_aiohttp_round(url, args.requests, args.concurrency, body)))
            rates["httpx"].append(asyncio.run(_httpx_round(url, args.requests, args.concurrency, body)))
    med = {k: statistics.median(v) for k, v in rates.items()}
    return {"clients": {k: {"requests_per_s_median": round(v, 1), "rounds": [round(x, 1) for x in rates[k]]}
                        for k, v in med.items()},
            "ratio_aiohttp_over_httpx": round(med["aiohttp"] / med["httpx"], 2),
            "config": {"requests": args.requests, "concurrency": args.concurrency, "rounds": args.rounds}}


def _cmd(args: argparse.Namespace) -> int:
    out = run(args)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


def add_bench_parsers(bench_sub) -> None:
    p = bench_sub.add_parser("httpclient", help="aiohttp vs httpx as the router's upstream client")
    p.add_argument("--json", action="store_true")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.set_defaults(func=_cmd)
