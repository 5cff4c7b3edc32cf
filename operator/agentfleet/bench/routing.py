"""`agentfleet bench routing`: N llm-d-inference-sim replicas (per-token prefill timing and prefix-cache
simulation on, so a cache hit shortens TTFT) behind a router, driven by an agentic workload: concurrent tasks,
each 10-30 sequential calls that share a system prompt and grow their own history, every call carrying the task's
id as `X-Session-ID`. The routers are ours (`agentfleet router`, each policy) and the vLLM project's own
(`vllm-router`, installed pinned into its own venv, each policy), in one run, alternating, each on fresh
simulators (cold caches) with the same workload. Besides latency and throughput it measures where the time goes:
router CPU per proxied token, the simulators' queueing at max_num_seqs, how often the load bound moved a session
off its hashed replica, and (with --profile) a py-spy profile of our router process."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass

__all__ = ["add_bench_parsers", "run", "Target", "parse_targets", "make_workload", "DEFAULT_TARGETS", "ALL_TARGETS",
           "aggregate_folded", "kv_pressure_blocks"]

# Ours and theirs alternate, so drift on a shared machine hits both. The default is the strongest of each (about
# 90 s at 32 tasks); `--routers all` adds the policies that lose locality, each a minute or more per point.
DEFAULT_TARGETS = ("agentfleet:prefix-aware", "vllm-router:consistent_hash", "agentfleet:session")
ALL_TARGETS = ("agentfleet:prefix-aware", "vllm-router:consistent_hash", "agentfleet:session",
               "vllm-router:power_of_two", "agentfleet:least-load", "vllm-router:round_robin",
               "agentfleet:round-robin", "vllm-router:cache_aware")
_OURS, _THEIRS = "agentfleet", "vllm-router"
# Short names kept from earlier versions of this bench.
_ALIASES = {"agentfleet": "agentfleet:prefix-aware", "round_robin": "agentfleet:round-robin",
            "least_loaded": "agentfleet:least-load"}
BUCKETS = ((10, 16, "short"), (17, 23, "medium"), (24, 10_000, "long"))  # steps per task


@dataclass(frozen=True)
class Target:
    family: str  # "agentfleet" or "vllm-router"
    policy: str

    @property
    def name(self) -> str:
        return f"{self.family}:{self.policy}"


def parse_targets(spec: str) -> list[Target]:
    from ..router.policy import POLICIES
    from .vllm_router import POLICIES as PEER_POLICIES

    out = []
    if spec.strip() == "all":
        spec = ",".join(ALL_TARGETS)
    for raw in (s.strip() for s in spec.split(",")):
        if not raw:
            continue
        family, _, policy = _ALIASES.get(raw, raw).partition(":")
        allowed = POLICIES if family == _OURS else PEER_POLICIES if family == _THEIRS else None
        if allowed is None or policy not in allowed:
            raise SystemExit(f"agentfleet bench routing: --routers: unknown router {raw!r} (use agentfleet:"
                             f"{'|'.join(POLICIES)} or vllm-router:{'|'.join(PEER_POLICIES)})")
        out.append(Target(family, policy))
    return out


def _words(rng, vocab: list[str], n: int) -> str:
    return " ".join(rng.choice(vocab) for _ in range(n))


def make_workload(*, tasks: int, steps_min: int, steps_max: int, system_words: int, task_words: int,
                  step_words: int, seed: int) -> tuple[str, list[tuple[str, list[str]]]]:
    """(system prompt, [(task message, [tool output per step])]): the same for every router."""
    import random

    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(5000)]
    system = _words(rng, vocab, system_words)
    out = []
    for _ in range(tasks):
        steps = rng.randint(steps_min, steps_max)
        out.append((_words(rng, vocab, task_words), [_words(rng, vocab, step_words) for _ in range(steps)]))
    return system, out


def kv_pressure_blocks(args: argparse.Namespace, tasks: int) -> tuple[int, float]:
    """(KV blocks per replica, live history / KV capacity): the longest prompt times max_num_seqs fits (the
    simulator answers errors, not queueing, when one batch does not fit: facts.md), but the history of all the
    tasks a replica holds does not, so placement decides what gets evicted."""
    per_step = args.step_words + args.max_tokens
    longest = args.system_words + args.task_words + args.steps_max * per_step + 64
    blocks = math.ceil(1.1 * args.max_num_seqs * longest / 16)
    mean_final = args.task_words + (args.steps_min + args.steps_max) / 2 * per_step
    live = args.system_words + tasks / args.replicas * mean_final  # the system prompt is shared
    return blocks, round(live / 16 / blocks, 2)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def _r(x: float | None, nd: int) -> float | None:
    return None if x is None else round(x, nd)


def aggregate_folded(lines, top: int = 12) -> dict:
    """py-spy's raw output (folded stacks `frame;frame;... count`) -> the functions with the most samples, by
    self time (the leaf frame) and inclusive time (anywhere on the stack), as shares of all samples."""
    self_: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.split(" (")[0] + (" (" + f.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                                      if " (" in f else "") for f in stack.split(";")]
        self_[frames[-1]] = self_.get(frames[-1], 0) + n
        for f in set(frames):
            incl[f] = incl.get(f, 0) + n

    def best(d: dict[str, int]) -> list[list]:
        return [[k, round(v / total, 3)] for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:top]]

    return {"samples": total, "self": best(self_) if total else [], "inclusive": best(incl) if total else []}


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process and its waited-for children (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


async def _drive(router_url: str, system: str, tasks, *, concurrency: int, model: str, max_tokens: int,
                 sim_urls: list[str], deadline_s: float):
    import asyncio
    import time

    import aiohttp

    from ..router.state import parse_prometheus_text
    from .. import metrics_names as mn

    ttfts: list[float] = []
    done: list[tuple[int, float]] = []  # (steps, seconds) per finished task
    tokens = errors = 0
    waiting: list[float] = []

    async def one_task(i: int, first: str, steps: list[str], http: aiohttp.ClientSession) -> None:
        nonlocal tokens, errors
        messages = [{"role": "system", "content": system}, {"role": "user", "content": first}]
        headers = {"X-Session-ID": f"task-{i}"}
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
        done.append((len(steps), time.perf_counter() - t0))

    async def sample(http: aiohttp.ClientSession) -> None:
        """Requests waiting for a max_num_seqs slot, summed over the replicas, twice a second."""
        while True:
            total = 0.0
            for u in sim_urls:
                try:
                    async with http.get(u + "/metrics") as r:
                        total += mn.first_present(parse_prometheus_text(await r.text()), mn.WAITING) or 0.0
                except aiohttp.ClientError:
                    pass
            waiting.append(total)
            await asyncio.sleep(0.5)

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http:
        sampler = asyncio.create_task(sample(http))
        t0 = time.perf_counter()
        queue = iter(enumerate(tasks))

        async def worker() -> None:  # a closed loop: the next task starts when this one ends
            for i, (first, steps) in queue:
                await one_task(i, first, steps, http)

        jobs = [asyncio.create_task(worker()) for _ in range(concurrency)]
        _, pending = await asyncio.wait(jobs, timeout=deadline_s)
        for j in pending:
            j.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        wall = time.perf_counter() - t0
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    failed = sum(1 for j in jobs if not j.cancelled() and j.exception() is not None)
    return {"ttfts": ttfts, "done": done, "tokens": tokens, "errors": errors + failed, "wall": wall,
            "timed_out_tasks": len(tasks) - len(done) - failed, "waiting": waiting}


def _scrape(url: str) -> dict[str, float]:
    import urllib.request

    from ..router.state import parse_prometheus_text

    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        return parse_prometheus_text(r.read().decode())


def _wait_ready(url: str, proc, path: str, timeout_s: float = 60.0) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url + path, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"router did not start: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.1)


def run_target(target: Target, *, workload, concurrency: int, args, kv_blocks: int, peer_exe=None,
               profile_to: str | None = None) -> dict:
    import asyncio
    import signal
    import subprocess

    from .. import metrics_names as mn
    from . import simulator, vllm_router

    system, tasks = workload
    settings = simulator.SimSettings(prefill_ms_per_token=args.prefill_ms, inter_token_ms=args.inter_token_ms,
                                     max_num_seqs=args.max_num_seqs, kv_cache_blocks=kv_blocks)
    with simulator.running_fleet(args.replicas, settings) as sims:
        port = simulator.free_port()
        if target.family == _OURS:
            endpoints = ",".join(f"sim-{i}={u}" for i, u in enumerate(sims.urls))
            cmd = [sys.executable, "-m", "agentfleet.cli", "router", "--endpoints", endpoints, "--host",
                   "127.0.0.1", "--port", str(port), "--policy", target.policy, "--prefix-tokens",
                   str(args.prefix_tokens), *args.router_arg]
            ready = "/readyz"
        else:
            cmd = vllm_router.command(peer_exe, policy=target.policy, port=port, metrics_port=simulator.free_port(),
                                      worker_urls=sims.urls)
            ready = "/health"
        router = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        url = f"http://127.0.0.1:{port}"
        spy = None
        try:
            _wait_ready(url, router, ready)
            cpu0 = _cpu_s(router.pid)
            if profile_to and target.family == _OURS:
                spy_exe = os.path.join(os.path.dirname(sys.executable), "py-spy")
                spy = subprocess.Popen([spy_exe, "record", "-p", str(router.pid), "-f", "raw", "-r", "50", "-o",
                                        profile_to, "--nonblocking"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            d = asyncio.run(_drive(url, system, tasks, concurrency=concurrency, model=settings.model,
                                   max_tokens=args.max_tokens, sim_urls=sims.urls, deadline_s=args.run_timeout))
            cpu = _cpu_s(router.pid) - cpu0
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=30)
            router_metrics = _scrape(url) if target.family == _OURS else {}
        finally:
            if spy is not None and spy.poll() is None:
                spy.kill()
            router.terminate()
            try:
                router.wait(timeout=10)
            except subprocess.TimeoutExpired:
                router.kill()
        sim = [_scrape(u) for u in sims.urls]
    hits = sum(mn.first_present(m, mn.PREFIX_CACHE_HITS) or 0.0 for m in sim)
    queries = sum(mn.first_present(m, mn.PREFIX_CACHE_QUERIES) or 0.0 for m in sim)
    e2e = sum(m.get("vllm:e2e_request_latency_seconds_sum", 0.0) for m in sim)
    inference = sum(m.get("vllm:request_inference_time_seconds_sum", 0.0) for m in sim)
    prefill = sum(m.get("vllm:request_prefill_time_seconds_sum", 0.0) for m in sim)
    served = sum(m.get("vllm:e2e_request_latency_seconds_count", 0.0) for m in sim)
    per_replica = [int(m.get("vllm:e2e_request_latency_seconds_count", 0.0)) for m in sim]
    ttfts, done, tokens = d["ttfts"], d["done"], d["tokens"]
    task_s = [s for _, s in done]
    buckets = {}
    for lo, hi, name in BUCKETS:
        ts = [s for n, s in done if lo <= n <= hi]
        buckets[name] = {"tasks": len(ts), "task_p50_s": _r(_pct(ts, 0.5), 2), "task_p99_s": _r(_pct(ts, 0.99), 2),
                         "s_per_step_p50": _r(_pct([s / n for n, s in done if lo <= n <= hi], 0.5), 3)}
    out = {
        "prefix_hit_rate": round(hits / queries, 4) if queries else None,
        "ttft_p50_ms": _r(_pct(ttfts, 0.5) and 1000 * _pct(ttfts, 0.5), 1),
        "ttft_p95_ms": _r(_pct(ttfts, 0.95) and 1000 * _pct(ttfts, 0.95), 1),
        "ttft_p99_ms": _r(_pct(ttfts, 0.99) and 1000 * _pct(ttfts, 0.99), 1),
        "task_mean_s": round(sum(task_s) / len(task_s), 3) if task_s else None,
        "task_p50_s": _r(_pct(task_s, 0.5), 3), "task_p95_s": _r(_pct(task_s, 0.95), 3),
        "task_p99_s": _r(_pct(task_s, 0.99), 3),
        "throughput_tok_s": round(tokens / d["wall"], 1),
        "requests": len(ttfts), "errors": d["errors"], "timed_out_tasks": d["timed_out_tasks"],
        "wall_s": round(d["wall"], 2), "buckets": buckets,
        # Where the time goes: the router's own CPU, the engines' queue for a max_num_seqs slot, their prefill.
        "router_cpu_s": round(cpu, 2),
        "router_cpu_ms_per_token": round(1000 * cpu / tokens, 3) if tokens else None,
        "router_cpu_ms_per_request": round(1000 * cpu / len(ttfts), 2) if ttfts else None,
        "sim_queue_s_per_request": round((e2e - inference) / served, 3) if served else None,
        "sim_prefill_s_per_request": round(prefill / served, 3) if served else None,
        "sim_waiting_mean": round(sum(d["waiting"]) / len(d["waiting"]), 2) if d["waiting"] else None,
        "requests_per_replica": per_replica,
    }
    if target.family == _OURS:
        out["session_moves"] = router_metrics.get("agentfleet_router_session_moves_total", 0.0)
        out["load_bound_passes"] = router_metrics.get("agentfleet_router_load_bound_passes_total", 0.0)
        out["retries"] = router_metrics.get("agentfleet_router_retries_total", 0.0)
    if spy is not None:
        try:
            with open(profile_to) as f:
                out["profile"] = aggregate_folded(f)
            out["profile"]["file"] = profile_to
        except OSError as err:
            out["profile"] = {"error": str(err)}
    return out


_MEDIAN_KEYS = ("prefix_hit_rate", "task_mean_s", "ttft_p50_ms", "ttft_p95_ms", "ttft_p99_ms", "task_p50_s",
                "task_p95_s", "task_p99_s", "throughput_tok_s", "router_cpu_ms_per_token", "sim_queue_s_per_request",
                "sim_prefill_s_per_request", "sim_waiting_mean")


def _median_of(runs: list[dict]) -> dict:
    import statistics

    if len(runs) == 1:
        return runs[0]
    out = dict(runs[-1])
    for k in _MEDIAN_KEYS:
        vals = [r[k] for r in runs if r.get(k) is not None]
        out[k] = round(statistics.median(vals), 4) if vals else None
    out["errors"] = sum(r["errors"] for r in runs)
    out["rounds"] = {k: [r.get(k) for r in runs] for k in ("task_p95_s", "throughput_tok_s", "task_p50_s")}
    return out


def _ratios(results: dict[str, dict], primary: str) -> dict | None:
    """Ours (the primary policy) against the best vllm-router policy (lowest task p95) at this point."""
    ours = results.get(primary)
    peers = {k: v for k, v in results.items() if k.startswith(_THEIRS + ":") and v.get("task_p95_s")
             and not v.get("timed_out_tasks")}
    if not ours or not ours.get("task_p95_s") or not peers:
        return None
    best_name, best = min(peers.items(), key=lambda kv: kv[1]["task_p95_s"])

    def ratio(a, b):
        return round(a / b, 2) if a and b else None

    return {"ours": primary, "best_peer": best_name,
            "task_p95_peer_over_ours": ratio(best["task_p95_s"], ours["task_p95_s"]),
            "task_p50_peer_over_ours": ratio(best["task_p50_s"], ours["task_p50_s"]),
            "task_mean_peer_over_ours": ratio(best.get("task_mean_s"), ours.get("task_mean_s")),
            "ttft_p99_peer_over_ours": ratio(best["ttft_p99_ms"], ours["ttft_p99_ms"]),
            "ttft_p50_peer_over_ours": ratio(best["ttft_p50_ms"], ours["ttft_p50_ms"]),
            "throughput_ours_over_peer": ratio(ours["throughput_tok_s"], best["throughput_tok_s"])}


def run(args: argparse.Namespace) -> dict:
    from . import vllm_router

    def progress(msg: str) -> None:
        if not args.json or args.progress:
            print(msg, file=sys.stderr, flush=True)

    targets = parse_targets(args.routers)
    skipped: dict[str, str] = {}
    exe = None
    if any(t.family == _THEIRS for t in targets):
        exe, why = vllm_router.ensure_installed(progress)
        if exe is None:
            progress(f"skipping the vllm-router policies: {why}")
            skipped = {t.name: why for t in targets if t.family == _THEIRS}
            targets = [t for t in targets if t.family == _OURS]
    points = [int(x) for x in args.sweep.split(",")] if args.sweep else [args.tasks]
    profile_dir = args.profile or None
    if profile_dir:
        os.makedirs(profile_dir, exist_ok=True)
    primary = next((t.name for t in targets if t.family == _OURS), None)
    out: dict = {"points": [], "skipped": skipped}
    for tasks in points:
        workload = make_workload(tasks=tasks * args.tasks_per_worker, steps_min=args.steps_min,
                                 steps_max=args.steps_max, system_words=args.system_words, task_words=args.task_words,
                                 step_words=args.step_words, seed=args.seed)
        kv_blocks, pressure = kv_pressure_blocks(args, tasks) if args.kv_pressure else (args.kv_blocks, None)
        runs: dict[str, list[dict]] = {t.name: [] for t in targets}
        for rnd in range(args.rounds):
            order = targets if rnd % 2 == 0 else targets[::-1]
            for t in order:
                prof = (os.path.join(profile_dir, f"{t.policy}-{tasks}-{rnd}.txt")
                        if profile_dir and t.family == _OURS else None)
                res = run_target(t, workload=workload, concurrency=tasks, args=args, kv_blocks=kv_blocks, peer_exe=exe,
                                 profile_to=prof)
                runs[t.name].append(res)
                progress(f"tasks={tasks} round={rnd + 1} {t.name}: task p50/p95 {res['task_p50_s']}/"
                         f"{res['task_p95_s']} s, {res['throughput_tok_s']} tok/s, hit {res['prefix_hit_rate']},"
                         f" TTFT p99 {res['ttft_p99_ms']} ms, errors {res['errors']}")
        results = {k: _median_of(v) for k, v in runs.items()}
        point = {"tasks": tasks, "kv_blocks": kv_blocks, "routers": results}
        if pressure is not None:
            point["kv_live_history_over_capacity"] = pressure
        if primary:
            point["ratios"] = _ratios(results, primary)
        out["points"].append(point)
    sat = out["points"][-1].get("ratios") if out["points"] else None
    if sat:
        below = [p.get("ratios") or {} for p in out["points"][:-1]]
        out["targets"] = {
            "at": out["points"][-1]["tasks"],
            "task_p95_1_3x_lower_at_saturation": (sat["task_p95_peer_over_ours"] or 0) >= 1.3,
            "throughput_1_2x_higher_at_saturation": (sat["throughput_ours_over_peer"] or 0) >= 1.2,
            "no_worse_below_saturation": all((r.get("task_p95_peer_over_ours") or 0) >= 1.0
                                             and (r.get("throughput_ours_over_peer") or 0) >= 1.0 for r in below),
            "no_median_regression": all((r.get("task_p50_peer_over_ours") or 0) >= 1.0
                                        for r in below + [sat]),
        }
    out["config"] = {k: getattr(args, k) for k in (
        "replicas", "tasks_per_worker", "steps_min", "steps_max", "system_words", "task_words", "step_words",
        "max_tokens", "prefill_ms", "inter_token_ms", "max_num_seqs", "kv_blocks", "kv_pressure", "prefix_tokens",
        "rounds", "seed", "router_arg", "run_timeout")}
    out["config"]["vllm_router"] = vllm_router.VERSION
    out["config"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    return out


def _cmd(args: argparse.Namespace) -> int:
    out = run(args)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


def add_bench_parsers(bench_sub) -> None:
    p = bench_sub.add_parser("routing", help="router policies, ours and vllm-router's, on simulated vLLM replicas "
                             "with an agentic workload")
    p.add_argument("--json", action="store_true", help="print one JSON object (progress goes nowhere)")
    p.add_argument("--progress", action="store_true", help="with --json, still print progress to stderr")
    p.add_argument("--routers", default=",".join(DEFAULT_TARGETS),
                   help="comma list of agentfleet:<policy> and vllm-router:<policy>, or `all` (4 + 4 policies, ~9 min "
                   "at 32 tasks), run in this order (reversed every other round); the first agentfleet one is "
                   "compared with the best vllm-router one")
    p.add_argument("--rounds", type=int, default=1, help="runs per router per point (medians reported)")
    p.add_argument("--sweep", default="", help="concurrent tasks per point, e.g. 8,16,32,64 (the last one is "
                   "taken as saturation); default: --tasks only")
    p.add_argument("--kv-pressure", action="store_true", help="size the simulators' KV cache so one batch of the "
                   "longest prompts fits but the live history of a replica's tasks does not")
    p.add_argument("--profile", default="", metavar="DIR",
                   help="py-spy our router processes; raw folded stacks go to DIR, a summary into the JSON")
    p.add_argument("--run-timeout", type=float, default=90.0, help="seconds before a router's run is cut off "
                   "(its unfinished tasks are reported as timed_out_tasks)")
    p.add_argument("--router-arg", action="append", default=[],
                   help="an extra flag for `agentfleet router` (repeat), e.g. --router-arg=--load-bound-factor=2")
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--tasks", type=int, default=32, help="concurrent agent tasks (without --sweep)")
    p.add_argument("--tasks-per-worker", type=int, default=2,
                   help="each of the concurrent workers runs this many tasks back to back (a closed loop: new "
                   "sessions keep arriving); 1 starts every task at once and measures the drain")
    p.add_argument("--steps-min", type=int, default=10)
    p.add_argument("--steps-max", type=int, default=30)
    p.add_argument("--system-words", type=int, default=600, help="shared system prompt (the simulator's dummy "
                   "tokenizer counts about one token per word)")
    p.add_argument("--task-words", type=int, default=150)
    p.add_argument("--step-words", type=int, default=120, help="tool output appended per step")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--prefill-ms", type=float, default=2.0)
    p.add_argument("--inter-token-ms", type=float, default=5.0)
    p.add_argument("--max-num-seqs", type=int, default=8)
    p.add_argument("--kv-blocks", type=int, default=3072)
    p.add_argument("--prefix-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=_cmd)
