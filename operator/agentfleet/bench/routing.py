"""`agentfleet bench routing`: N llm-d-inference-sim replicas (per-token prefill timing and prefix-cache
simulation on, so a cache hit shortens TTFT) behind `agentfleet router`, driven by an agentic workload: concurrent
tasks, each 10-30 sequential calls that share a system prompt and grow their own history. Each policy gets fresh
simulators (cold caches) and the same workload; round-robin is the baseline measured in the same run."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_bench_parsers", "run", "POLICY_FLAGS"]

# bench name -> the router's --policy
POLICY_FLAGS = {"round_robin": "round-robin", "least_loaded": "least-load", "agentfleet": "prefix-aware"}


def _words(rng, vocab: list[str], n: int) -> str:
    return " ".join(rng.choice(vocab) for _ in range(n))


def make_workload(*, tasks: int, steps_min: int, steps_max: int, system_words: int, task_words: int,
                  step_words: int, seed: int) -> tuple[str, list[tuple[str, list[str]]]]:
    """(system prompt, [(task message, [tool output per step])]): the same for every policy."""
    import random

    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(5000)]
    system = _words(rng, vocab, system_words)
    out = []
    for _ in range(tasks):
        steps = rng.randint(steps_min, steps_max)
        out.append((_words(rng, vocab, task_words), [_words(rng, vocab, step_words) for _ in range(steps)]))
    return system, out


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


async def _drive(router_url: str, system: str, tasks, *, model: str, max_tokens: int, session_header: bool):
    import asyncio
    import time

    import aiohttp

    ttfts: list[float] = []
    task_s: list[float] = []
    tokens = 0
    errors = 0

    async def one_task(i: int, first: str, steps: list[str], http: aiohttp.ClientSession) -> None:
        nonlocal tokens, errors
        messages = [{"role": "system", "content": system}, {"role": "user", "content": first}]
        headers = {"x-session-id": f"task-{i}"} if session_header else {}
        t0 = time.perf_counter()
        for tool_output in steps:
            body = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": True,
                    "temperature": 0}
            sent = time.perf_counter()
            first_at = None
            text = []
            async with http.post(router_url + "/v1/chat/completions", json=body, headers=headers) as r:
                if r.status != 200:
                    errors += 1
                    await r.read()
                    continue
                async for raw in r.content:
                    line = raw.strip()
                    if not line.startswith(b"data: ") or line == b"data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        errors += 1
                        break
                    for c in chunk.get("choices") or []:
                        piece = (c.get("delta") or {}).get("content")
                        if piece:
                            if first_at is None:
                                first_at = time.perf_counter()
                            text.append(piece)
                            tokens += 1
            if first_at is not None:
                ttfts.append(first_at - sent)
            messages = messages + [{"role": "assistant", "content": "".join(text)},
                                   {"role": "user", "content": tool_output}]
        task_s.append(time.perf_counter() - t0)

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(one_task(i, first, steps, http) for i, (first, steps) in enumerate(tasks)))
        wall = time.perf_counter() - t0
    return ttfts, task_s, tokens, errors, wall


def _scrape(url: str) -> dict[str, float]:
    import urllib.request

    from ..router.state import parse_prometheus_text

    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        return parse_prometheus_text(r.read().decode())


def run_policy(policy: str, *, replicas: int, workload, args) -> dict:
    import asyncio
    import os
    import subprocess
    import time
    import urllib.request

    from .. import metrics_names as mn
    from . import simulator

    system, tasks = workload
    settings = simulator.SimSettings(prefill_ms_per_token=args.prefill_ms, inter_token_ms=args.inter_token_ms,
                                     max_num_seqs=args.max_num_seqs, kv_cache_blocks=args.kv_blocks)
    with simulator.running_fleet(replicas, settings) as sims:
        port = simulator.free_port()
        endpoints = ",".join(f"sim-{i}={u}" for i, u in enumerate(sims.urls))
        router = subprocess.Popen(
            [sys.executable, "-m", "agentfleet.cli", "router", "--endpoints", endpoints, "--host", "127.0.0.1",
             "--port", str(port), "--policy", POLICY_FLAGS[policy], "--prefix-tokens", str(args.prefix_tokens)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if router.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"router did not start: {router.stderr.read().decode()[-2000:]}")
                time.sleep(0.1)
            ttfts, task_s, tokens, errors, wall = asyncio.run(_drive(
                url, system, tasks, model=settings.model, max_tokens=args.max_tokens,
                session_header=args.session_header))
            router_metrics = _scrape(url)
        finally:
            router.terminate()
            router.wait(timeout=10)
        hits = queries = 0.0
        for u in sims.urls:
            m = _scrape(u)
            hits += mn.first_present(m, mn.PREFIX_CACHE_HITS) or 0.0
            queries += mn.first_present(m, mn.PREFIX_CACHE_QUERIES) or 0.0
    return {
        "prefix_hit_rate": round(hits / queries, 4) if queries else None,
        "ttft_mean_ms": round(1000 * sum(ttfts) / len(ttfts), 1) if ttfts else None,
        "ttft_p95_ms": round(1000 * _pct(ttfts, 0.95), 1),
        "task_p95_s": round(_pct(task_s, 0.95), 3),
        "throughput_tok_s": round(tokens / wall, 1),
        "requests": len(ttfts), "errors": errors, "wall_s": round(wall, 2),
        "retries": router_metrics.get("agentfleet_router_retries_total", 0.0),
        "session_moves": router_metrics.get("agentfleet_router_session_moves_total", 0.0),
    }


def run(args: argparse.Namespace) -> dict:
    workload = make_workload(tasks=args.tasks, steps_min=args.steps_min, steps_max=args.steps_max,
                             system_words=args.system_words, task_words=args.task_words,
                             step_words=args.step_words, seed=args.seed)
    policies = {}
    for policy in args.policies.split(","):
        policies[policy] = run_policy(policy, replicas=args.replicas, workload=workload, args=args)
        if not args.json:
            print(f"{policy}: {json.dumps(policies[policy])}", file=sys.stderr)
    out: dict = {"policies": policies}
    rr, af = policies.get("round_robin"), policies.get("agentfleet")
    if rr and af:
        p95 = rr["task_p95_s"] / af["task_p95_s"] if af["task_p95_s"] else None
        thr = af["throughput_tok_s"] / rr["throughput_tok_s"] if rr["throughput_tok_s"] else None
        out["ratios"] = {"task_p95_round_robin_over_agentfleet": round(p95, 2) if p95 else None,
                         "throughput_agentfleet_over_round_robin": round(thr, 2) if thr else None}
        out["targets"] = {"task_p95_2x_lower": bool(p95 and p95 >= 2.0),
                          "throughput_1_5x_higher": bool(thr and thr >= 1.5),
                          "prefix_hit_rate_0_8": bool((af["prefix_hit_rate"] or 0) >= 0.8)}
    out["config"] = {k: getattr(args, k) for k in (
        "replicas", "tasks", "steps_min", "steps_max", "system_words", "task_words", "step_words", "max_tokens",
        "prefill_ms", "inter_token_ms", "max_num_seqs", "kv_blocks", "prefix_tokens", "session_header", "seed")}
    return out


def _cmd(args: argparse.Namespace) -> int:
    out = run(args)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


def add_bench_parsers(bench_sub) -> None:
    p = bench_sub.add_parser("routing", help="router policies on simulated vLLM replicas with an agentic workload")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--tasks", type=int, default=16, help="concurrent agent tasks")
    p.add_argument("--steps-min", type=int, default=10)
    p.add_argument("--steps-max", type=int, default=30)
    p.add_argument("--system-words", type=int, default=400, help="shared system prompt (the simulator's dummy "
                   "tokenizer counts about one token per word)")
    p.add_argument("--task-words", type=int, default=150)
    p.add_argument("--step-words", type=int, default=120, help="tool output appended per step")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--prefill-ms", type=float, default=2.0)
    p.add_argument("--inter-token-ms", type=float, default=5.0)
    p.add_argument("--max-num-seqs", type=int, default=8)
    p.add_argument("--kv-blocks", type=int, default=4096)
    p.add_argument("--prefix-tokens", type=int, default=256)
    p.add_argument("--session-header", action="store_true", help="send x-session-id (else prefix hashing only)")
    p.add_argument("--policies", default="round_robin,least_loaded,agentfleet")
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=_cmd)
