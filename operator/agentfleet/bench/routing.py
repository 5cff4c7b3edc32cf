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
OPTIONS = ("shared", "hints", "fair", "deep", "warm", "warm-typical", "band")
WARM_LEAD_S = 0.5  # +warm: how long before a tool ends its task's history is sent again (max_tokens 1)
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
        # Our options after the policy: +shared (--placement shared), +hints (the driver sends what the runtime
        # sends: run id, home replica, run end), +fair (--fair-queue max_num_seqs / router replicas), +deep (the
        # same queue, most-served runs first: --fair-queue-order most-served), +warm (the
        # driver re-sends a task's history just before a tool ends: --tool-s), +band (the --low-share tasks, as a
        # runtime does for a Budget degraded by priority, send x-agentfleet-priority: low; it turns the fair queue
        # on), e.g. agentfleet:prefix-aware+shared.
        base, *options = policy.split("+")
        if family == _OURS and options:
            policy_ok = base in POLICIES and all(o in OPTIONS for o in options) and len(set(options)) == len(options)
        else:
            policy_ok = allowed is not None and policy in allowed
        if not policy_ok:
            raise SystemExit(f"agentfleet bench routing: --routers: unknown router {raw!r} (use agentfleet:"
                             f"{'|'.join(POLICIES)}[+shared][+hints][+fair|+deep][+band][+warm|+warm-typical] or vllm-router:{'|'.join(PEER_POLICIES)})")
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


TOOL_DISTS = ("exp", "steady")


def is_low_band(task: int, share: float) -> bool:
    """Whether `task` is one of the `share` of tasks whose Budget is near its limit (seeded by the task, so the same
    tasks for every router; only a +band router is told)."""
    import random

    return share > 0 and random.Random(f"band:{task}").random() < share


def tool_seconds(task: int, step: int, mean_s: float, dist: str = "exp") -> float:
    """How long the tool before `step` of `task` runs, seeded by (task, step) so every router meets the same tools:
    exponential with mean `mean_s`, capped at 4x (exp), or within 10 % of `mean_s` (steady: a tool whose duration
    a runtime can predict)."""
    import random

    rng = random.Random(f"tool:{task}:{step}")
    if dist == "steady":
        return mean_s * rng.uniform(0.9, 1.1)
    return min(rng.expovariate(1.0 / mean_s), 4.0 * mean_s)


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


async def _drive(router_urls: list[str], system: str, tasks, *, concurrency: int, model: str, max_tokens: int,
                 sim_urls: list[str], deadline_s: float, churn=None, hints: bool = False, tool_s: float = 0.0,
                 tool_dist: str = "exp", warm: str | None = None, low_share: float = 0.0, band: bool = False,
                 warm_lead_s: float = WARM_LEAD_S):
    """Calls rotate over `router_urls` (router replicas behind a Service). With `hints` the driver does what the
    AgentApp runtime does with our router: names the run, sends back the replica that served the previous call,
    and releases the session when the task ends. With `tool_s` a tool runs between two calls of a task: its time is
    drawn per (task, step) from an exponential distribution of that mean, capped at 4x, the same for every
    router. With `warm`, `warm_lead_s` (WARM_LEAD_S) before a tool of over a second ends, the task's history so far (without the
    tool's output, which nobody has yet) goes to the router as a 1-token request, so an engine that evicted it
    during the tool prefills it again off the task's critical path: `warm="exact"` knows each tool's duration;
    `warm="typical"` does what the runtime's tools.warm does (its ToolTimes): only a tool whose past durations
    are steady has a typical one, and the warm goes `warm_lead_s` before that, if the tool is still running then
    (the runtime's tools.warm.leadSeconds).
    With `band` the `low_share` of tasks (is_low_band) send x-agentfleet-priority: low, as the runtime does for a
    task its Budget degraded by priority."""
    import asyncio
    import time

    import aiohttp

    from ..router.state import parse_prometheus_text
    from ..runtime.agent import ToolTimes
    from .. import metrics_names as mn

    import contextlib
    import itertools

    rotation = itertools.cycle(router_urls)
    ttfts: list[float] = []
    done: list[tuple[int, float]] = []  # (steps, seconds) per finished task
    done_low: list[bool] = []  # per finished task: one of the low_share (whether or not the router was told)
    running: dict[int, float] = {}  # started, not finished: task -> when it started (cut off at the deadline)
    tokens = errors = 0
    waiting: list[float] = []
    # (seconds since start, prefix-cache hits, queries) summed over the replicas, cumulative across restarts
    cache_series: list[tuple[float, float, float]] = []
    last: dict[str, tuple[float, float]] = {}
    acc = [0.0, 0.0]
    warms = [0, 0]  # sent, failed
    # warm="typical": the runtime's own record of tool durations (one runtime replica runs all the tasks)
    tool_times = ToolTimes() if warm == "typical" else None

    async def warm_call(http: aiohttp.ClientSession, messages: list, headers: dict[str, str]) -> None:
        body = {"model": model, "messages": messages, "max_tokens": 1, "temperature": 0}
        warms[0] += 1
        try:
            async with http.post(next(rotation) + "/v1/chat/completions", json=body, headers=dict(headers)) as r:
                await r.read()
                warms[1] += r.status != 200
        except (aiohttp.ClientError, asyncio.TimeoutError):
            warms[1] += 1

    async def one_task(i: int, first: str, steps: list[str], http: aiohttp.ClientSession) -> None:
        nonlocal tokens, errors
        messages = [{"role": "system", "content": system}, {"role": "user", "content": first}]
        headers = {"X-Session-ID": f"task-{i}", **({"x-agentfleet-run": f"task-{i}"} if hints else {})}
        low = is_low_band(i, low_share)
        if band and low:
            headers["x-agentfleet-priority"] = "low"
        t0 = running[i] = time.perf_counter()
        pending_warms: list = []
        for j, tool_output in enumerate(steps):
            if j and tool_s > 0:
                d = tool_seconds(i, j, tool_s, tool_dist)
                typical = tool_times.typical("tool") if tool_times is not None else None
                at = (max(0.0, d - warm_lead_s) if warm == "exact" and d > 1.0 else
                      max(0.0, typical - warm_lead_s)
                      if typical is not None and typical >= 1.0 and d > typical - warm_lead_s else None)
                if tool_times is not None:
                    tool_times.record("tool", d)
                if at is not None:
                    await asyncio.sleep(at)
                    pending_warms.append(asyncio.create_task(warm_call(http, messages[:-1], headers)))
                    await asyncio.sleep(d - at)
                else:
                    await asyncio.sleep(d)
            router_url = next(rotation)
            body = {"model": model, "messages": messages, "max_tokens": max_tokens, "stream": True,
                    "temperature": 0}
            sent = time.perf_counter()
            first_at = None
            text = []
            try:
                async with http.post(router_url + "/v1/chat/completions", json=body, headers=headers) as r:
                    if r.status != 200:
                        errors += 1
                        await r.read()
                        continue
                    if hints and r.headers.get("x-agentfleet-replica"):
                        headers["x-agentfleet-home"] = r.headers["x-agentfleet-replica"]
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
            except (aiohttp.ClientError, asyncio.TimeoutError):  # a broken answer is a failed request, not a stop
                errors += 1
                continue
            if first_at is not None:
                ttfts.append(first_at - sent)
            messages = messages + [{"role": "assistant", "content": "".join(text)},
                                   {"role": "user", "content": tool_output}]
        done.append((len(steps), time.perf_counter() - t0))
        done_low.append(low)
        running.pop(i, None)
        await asyncio.gather(*pending_warms, return_exceptions=True)
        if hints:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.post(next(rotation) + "/v1/sessions/end", json={"sessions": [f"task-{i}"]}) as r:
                    await r.read()

    async def sample(http: aiohttp.ClientSession) -> None:
        """Requests waiting for a max_num_seqs slot, summed over the replicas, twice a second."""
        while True:
            total = 0.0
            for u in sim_urls:
                try:
                    async with http.get(u + "/metrics") as r:
                        m = parse_prometheus_text(await r.text())
                except aiohttp.ClientError:
                    continue
                total += mn.first_present(m, mn.WAITING) or 0.0
                now = (mn.first_present(m, mn.PREFIX_CACHE_HITS) or 0.0, mn.first_present(m, mn.PREFIX_CACHE_QUERIES)
                       or 0.0)
                was = last.get(u, (0.0, 0.0))
                restarted = now[1] < was[1]  # a restarted replica counts from 0 again
                acc[0] += now[0] - (0.0 if restarted else was[0])
                acc[1] += now[1] - (0.0 if restarted else was[1])
                last[u] = now
            waiting.append(total)
            cache_series.append((time.perf_counter() - t0, acc[0], acc[1]))
            await asyncio.sleep(0.5)

    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http:
        t0 = time.perf_counter()
        sampler = asyncio.create_task(sample(http))
        churner = asyncio.create_task(churn(http, t0)) if churn is not None else None
        queue = iter(enumerate(tasks))

        async def worker() -> None:  # a closed loop: the next task starts when this one ends
            for i, (first, steps) in queue:
                await one_task(i, first, steps, http)

        jobs = [asyncio.create_task(worker()) for _ in range(concurrency)]
        _, pending = await asyncio.wait(jobs, timeout=deadline_s)
        for j in pending:
            j.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        end = time.perf_counter()
        wall = end - t0
        # A task cut off at the deadline took at least this long (a lower bound, counted in the task percentiles).
        cut_off = [end - started for started in running.values()]
        events = None
        if churner is not None:
            if not churner.done():
                churner.cancel()
            res = (await asyncio.gather(churner, return_exceptions=True))[0]
            events = dict(churn.events)
            if isinstance(res, BaseException) and not isinstance(res, asyncio.CancelledError):
                events["error"] = f"the churn script failed: {type(res).__name__}: {res}"
            elif isinstance(res, asyncio.CancelledError):
                events["unfinished"] = "the run ended before the churn script did (raise --tasks-per-worker)"
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    failed = sum(1 for j in jobs if not j.cancelled() and j.exception() is not None)
    return {"ttfts": ttfts, "done": done, "done_low": done_low, "tokens": tokens, "errors": errors + failed, "wall": wall,
            "warm_requests": warms[0], "warm_failed": warms[1],
            "timed_out_tasks": len(tasks) - len(done) - failed, "cut_off_s": cut_off, "waiting": waiting,
            "cache_series": cache_series,
            "churn": events}


def _churn_script(*, router_urls: list[str], token: str, sims, restart_i: int, down_i: int, restart_at: float,
                  down_at: float):
    """What a rollout and a scale-down do to a fleet, scripted against our router's admin API (the static-list
    stand-in for an EndpointSlice's `terminating`): at `restart_at` replica `restart_i` is drained, waited for
    until nothing is in flight on it, restarted on the same address (empty cache, counters at 0) and put back;
    at `down_at` replica `down_i` is drained, waited for and stopped for good."""

    events: dict = {}

    async def run(http, t0: float) -> dict:
        """Fills `events` as it goes, so what happened is reported even when the run ends first."""
        import asyncio
        import time

        auth = {"Authorization": f"Bearer {token}"}

        async def in_flight(name: str) -> float:
            total = 0.0
            for router_url in router_urls:
                async with http.get(router_url + "/metrics") as r:
                    text = await r.text()
                prefix = f'agentfleet_router_in_flight{{replica="{name}"}} '
                total += next((float(x[len(prefix):]) for x in text.splitlines() if x.startswith(prefix)), 0.0)
            return total

        async def drain(name: str, *, off: bool = False) -> None:
            for router_url in router_urls:  # every router replica sees the EndpointSlice change
                async with http.post(f"{router_url}/admin/drain?replica={name}{'&off=1' if off else ''}",
                                     headers=auth) as r:
                    if r.status != 200:
                        raise RuntimeError(f"drain {name}: HTTP {r.status}: {await r.text()}")

        async def drain_and_wait(name: str) -> float:
            await drain(name)
            t = time.perf_counter()
            while await in_flight(name) > 0 and time.perf_counter() - t < 60:
                await asyncio.sleep(0.1)
            return round(time.perf_counter() - t, 2)

        def now() -> float:
            return round(time.perf_counter() - t0, 2)

        await asyncio.sleep(max(0.0, t0 + restart_at - time.perf_counter()))
        name = f"sim-{restart_i}"
        events["restart"] = ev = {"replica": name, "at_s": now()}
        ev["drain_wait_s"] = await drain_and_wait(name)
        await asyncio.to_thread(sims.restart, restart_i)
        await drain(name, off=True)
        ev["back_at_s"] = now()
        await asyncio.sleep(max(0.0, t0 + down_at - time.perf_counter()))
        name = f"sim-{down_i}"
        events["scale_down"] = ev = {"replica": name, "at_s": now()}
        ev["drain_wait_s"] = await drain_and_wait(name)
        await asyncio.to_thread(sims.stop, down_i)
        ev["gone_at_s"] = now()
        return events

    run.events = events  # type: ignore[attr-defined]
    return run


def _rate(series: list[tuple[float, float, float]], a: float, b: float) -> float | None:
    """Prefix-cache hit rate between the samples at or before times a and b (cumulative counters)."""
    before = [x for x in series if x[0] <= a]
    upto = [x for x in series if x[0] <= b]
    if not upto:
        return None
    h0, q0 = (before[-1][1], before[-1][2]) if before else (0.0, 0.0)
    h1, q1 = upto[-1][1], upto[-1][2]
    return round((h1 - h0) / (q1 - q0), 4) if q1 > q0 else None


def churn_report(series: list[tuple[float, float, float]], events: dict, *, window_s: float = 5.0,
                 within: float = 0.9) -> dict:
    """For each event: the hit rate in the 10 s before it, and how long after the fleet was whole again (the
    replica back, or the drained one gone) the hit rate over the last `window_s` was back within 10 % of it."""
    out: dict = {}
    end = series[-1][0] if series else 0.0
    for kind, ev in events.items():
        if not isinstance(ev, dict) or "at_s" not in ev:
            out[kind] = ev
            continue
        at, back = ev["at_s"], ev.get("back_at_s", ev.get("gone_at_s"))
        before = _rate(series, at - 10.0, at)
        rec = None
        if before and back is not None:
            for t, _, _ in series:
                if t >= back + window_s:
                    r = _rate(series, t - window_s, t)
                    if r is not None and r >= within * before:
                        rec = round(t - back, 1)
                        break
        out[kind] = {**ev, "hit_rate_before": before,
                     "hit_rate_60s_after": _rate(series, back, min(end, back + 60.0)) if back is not None else None,
                     "hit_rate_recovered_after_s": rec,
                     "observed_s_after": round(end - back, 1) if back is not None else None}
    return out


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


VLLM_CPU_MODEL = "gemma-3-270m"


class _Engines:
    """Real vLLM-on-CPU engines in the shape of simulator.SimFleet (urls, procs) for run_target."""

    def __init__(self, engines):
        self.urls = [e.base_url for e in engines]
        self.procs = [e.popen for e in engines]


def _vllm_cpu_fleet(n: int, settings, max_model_len: int):
    """`--engine vllm-cpu`: n fresh real vLLM engines on CPU (the local model server, Gemma 3 270M, float32, prefix
    caching on), each with `--kv-blocks` blocks (vLLM's --num-gpu-blocks-override: on this model 160 blocks hold
    3,810 tokens) and `--max-num-seqs`; started for each router under test, like the simulators, so every router
    meets cold caches."""
    import contextlib
    import shutil
    import tempfile
    from pathlib import Path

    from ..local import engine as eng
    from ..local.install import is_engine_installed
    from ..local.layout import Layout

    @contextlib.contextmanager
    def fleet():
        layout = Layout.default()
        if not is_engine_installed(layout):
            raise SystemExit(f"agentfleet bench routing --engine vllm-cpu: the local model server is not installed "
                             f"at {layout.venv}: run scripts/install-local-model")
        model_dir = eng.prepare_model(layout=layout)
        logs = Path(tempfile.mkdtemp(prefix="agentfleet-bench-vllm-"))
        engines = []
        ok = False
        try:
            for i in range(n):
                extra = ["--max-num-seqs", str(settings.max_num_seqs),
                         "--num-gpu-blocks-override", str(settings.kv_cache_blocks)]
                engines.append(eng.start_engine(model_dir, port=eng.free_port(), served_model_name=VLLM_CPU_MODEL,
                                                max_model_len=max_model_len, log_path=logs / f"vllm-{i}.log",
                                                layout=layout, extra_args=extra))
            for e in engines:
                e.wait_ready(900, log=lambda msg: print(msg, file=sys.stderr, flush=True))
            yield _Engines(engines)
            ok = True
        finally:
            for e in engines:
                e.stop()
            if ok:  # the logs are kept (and named) only when something failed
                shutil.rmtree(logs, ignore_errors=True)
            else:
                print(f"engine logs: {logs}", file=sys.stderr, flush=True)

    return fleet()


def run_target(target: Target, *, workload, concurrency: int, args, kv_blocks: int, peer_exe=None,
               profile_to: str | None = None) -> dict:
    import asyncio
    import signal
    import subprocess

    from .. import metrics_names as mn
    from . import simulator, vllm_router

    system, tasks = workload
    churn = bool(getattr(args, "churn", False)) and target.family == _OURS
    engine = getattr(args, "engine", "sim")
    # With --engine vllm-cpu only the model name, max_num_seqs and the KV blocks apply (the rest is the simulator's).
    settings = simulator.SimSettings(model=VLLM_CPU_MODEL if engine == "vllm-cpu" else simulator.SimSettings.model,
                                     prefill_ms_per_token=args.prefill_ms, inter_token_ms=args.inter_token_ms,
                                     max_num_seqs=args.max_num_seqs, kv_cache_blocks=kv_blocks)
    n_routers = max(1, getattr(args, "router_replicas", 1))
    options = target.policy.split("+")[1:] if target.family == _OURS else []
    hints = target.family == _OURS and (bool(getattr(args, "hints", False)) or "hints" in options)
    fleet = (simulator.running_fleet(args.replicas, settings) if engine == "sim"
             else _vllm_cpu_fleet(args.replicas, settings, getattr(args, "max_model_len", 3072)))
    with fleet as sims:
        token_file = None
        if target.family == _OURS:
            endpoints = ",".join(f"sim-{i}={u}" for i, u in enumerate(sims.urls))
            policy = target.policy.split("+")[0]
            placement = "shared" if "shared" in options else None
            ready = "/readyz?upstreams=1"
            if churn:
                import secrets
                import tempfile

                token = secrets.token_hex(16)
                token_file = tempfile.NamedTemporaryFile("w", suffix=".token", delete=False)  # noqa: SIM115
                token_file.write(token)
                token_file.close()

            def command(port: int) -> list[str]:
                return [sys.executable, "-m", "agentfleet.cli", "router", "--endpoints", endpoints, "--host",
                        "127.0.0.1", "--port", str(port), "--policy", policy, "--prefix-tokens",
                        str(args.prefix_tokens), *(["--placement", placement] if placement else []),
                        *(["--fair-queue", str(max(1, args.max_num_seqs // n_routers))]
                          if {"fair", "deep", "band"} & set(options) else []),
                        *(["--fair-queue-order", "most-served"] if "deep" in options else []),
                        *(["--admin-token-file", token_file.name] if token_file else []), *args.router_arg]
        else:
            ready = "/health"

            def command(port: int) -> list[str]:
                return vllm_router.command(peer_exe, policy=target.policy, port=port,
                                           metrics_port=simulator.free_port(), worker_urls=sims.urls)
        ports = [simulator.free_port() for _ in range(n_routers)]
        routers = [subprocess.Popen(command(port), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    env={**os.environ, "PYTHONUNBUFFERED": "1"}) for port in ports]
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        spy = None
        try:
            for url, router in zip(urls, routers):
                _wait_ready(url, router, ready)
            cpu0 = sum(_cpu_s(r.pid) for r in routers)
            if profile_to and target.family == _OURS:
                spy_exe = os.path.join(os.path.dirname(sys.executable), "py-spy")
                spy = subprocess.Popen([spy_exe, "record", "-p", str(routers[0].pid), "-f", "raw", "-r", "50", "-o",
                                        profile_to, "--nonblocking"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            script = _churn_script(router_urls=urls, token=token, sims=sims, restart_i=0,
                                   down_i=args.replicas - 1, restart_at=args.churn_restart_at,
                                   down_at=args.churn_down_at) if churn else None
            d = asyncio.run(_drive(urls, system, tasks, concurrency=concurrency, model=settings.model,
                                   max_tokens=args.max_tokens, sim_urls=sims.urls, deadline_s=args.run_timeout,
                                   churn=script, hints=hints, tool_s=getattr(args, "tool_s", 0.0),
                                   tool_dist=getattr(args, "tool_dist", "exp"),
                                   warm="exact" if "warm" in options else "typical" if "warm-typical" in options
                                   else None, low_share=getattr(args, "low_share", 0.0), band="band" in options,
                                   warm_lead_s=getattr(args, "warm_lead_s", WARM_LEAD_S)))
            cpu = sum(_cpu_s(r.pid) for r in routers) - cpu0
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=30)
            router_metrics: dict[str, float] = {}
            if target.family == _OURS:
                for url in urls:
                    for k, v in _scrape(url).items():
                        router_metrics[k] = router_metrics.get(k, 0.0) + v
        finally:
            if spy is not None and spy.poll() is None:
                spy.kill()
            for router in routers:
                router.terminate()
            for router in routers:
                try:
                    router.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    router.kill()
            if token_file is not None:
                os.unlink(token_file.name)
        # A replica stopped by the churn script has nothing to scrape (and a restarted one counts from 0: its
        # hit rate comes from the sampled series, which adds across restarts).
        sim = [_scrape(u) if p.poll() is None else {} for u, p in zip(sims.urls, sims.procs)]
    hits = sum(mn.first_present(m, mn.PREFIX_CACHE_HITS) or 0.0 for m in sim)
    queries = sum(mn.first_present(m, mn.PREFIX_CACHE_QUERIES) or 0.0 for m in sim)
    if churn and d["cache_series"]:
        hits, queries = d["cache_series"][-1][1], d["cache_series"][-1][2]
    e2e = sum(m.get("vllm:e2e_request_latency_seconds_sum", 0.0) for m in sim)
    inference = sum(m.get("vllm:request_inference_time_seconds_sum", 0.0) for m in sim)
    prefill = sum(m.get("vllm:request_prefill_time_seconds_sum", 0.0) for m in sim)
    served = sum(m.get("vllm:e2e_request_latency_seconds_count", 0.0) for m in sim)
    per_replica = [int(m.get("vllm:e2e_request_latency_seconds_count", 0.0)) for m in sim]
    ttfts, done, tokens = d["ttfts"], d["done"], d["tokens"]
    # Tasks cut off at the deadline count with the time they had run (a lower bound): a router that leaves a third
    # of its tasks unfinished must not report the percentiles of the two thirds that finished.
    task_s = [s for _, s in done] + list(d.get("cut_off_s", ()))
    buckets = {}
    for lo, hi, name in BUCKETS:
        ts = [s for n, s in done if lo <= n <= hi]
        buckets[name] = {"tasks": len(ts), "task_p50_s": _r(_pct(ts, 0.5), 2), "task_p99_s": _r(_pct(ts, 0.99), 2),
                         "s_per_step_p50": _r(_pct([s / n for n, s in done if lo <= n <= hi], 0.5), 3)}
    share = getattr(args, "low_share", 0.0)
    if share > 0:  # the same tasks split the same way for every router; only +band ones were told
        for name, want in (("normal", False), ("low", True)):
            ts = [s for (_, s), low in zip(done, d["done_low"]) if low == want]
            buckets[f"band_{name}"] = {"tasks": len(ts), "task_p50_s": _r(_pct(ts, 0.5), 2),
                                       "task_p95_s": _r(_pct(ts, 0.95), 2), "task_p99_s": _r(_pct(ts, 0.99), 2)}
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
        "cut_off_tasks_in_percentiles": len(d.get("cut_off_s", ())),
        "wall_s": round(d["wall"], 2), "buckets": buckets,
        # +warm's own requests (1 token each; the engines' hit rate above counts them too).
        "warm_requests": d.get("warm_requests", 0), "warm_failed": d.get("warm_failed", 0),
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
        out["mid_stream_failures"] = router_metrics.get("agentfleet_router_mid_stream_failures_total", 0.0)
        out["low_band_slots"] = router_metrics.get("agentfleet_router_fair_queue_low_band_total", 0.0)
    if churn:
        out["churn"] = churn_report(d["cache_series"], d["churn"] or {})
        out["churn"]["restarts_seen_by_router"] = router_metrics.get("agentfleet_router_replica_restarts_total", 0.0)
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
    out["timed_out_tasks"] = max(r["timed_out_tasks"] for r in runs)  # the worst round
    out["rounds"] = {k: [r.get(k) for r in runs] for k in ("task_p95_s", "throughput_tok_s", "task_p50_s")}
    for band in ("band_normal", "band_low"):  # the buckets are the last round's; each round's band p95 here
        if all(band in r["buckets"] for r in runs):
            out["rounds"][f"{band}_task_p95_s"] = [r["buckets"][band]["task_p95_s"] for r in runs]
    return out


def _ratios(results: dict[str, dict], primary: str) -> dict | None:
    """Ours (the primary policy) against the best vllm-router policy (lowest task p95) at this point. A router whose
    run was cut off counts its unfinished tasks at the time they had run, so its task times are lower bounds: a
    ratio in our favour is then at least what it says (peer_cut_off), one against us at most (ours_cut_off)."""
    ours = results.get(primary)
    peers = {k: v for k, v in results.items() if k.startswith(_THEIRS + ":") and v.get("task_p95_s")}
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
            "throughput_ours_over_peer": ratio(ours["throughput_tok_s"], best["throughput_tok_s"]),
            "peer_cut_off_tasks": best.get("timed_out_tasks", 0), "ours_cut_off_tasks": ours.get("timed_out_tasks", 0)}


def run(args: argparse.Namespace) -> dict:
    from . import vllm_router

    def progress(msg: str) -> None:
        if not args.json or args.progress:
            print(msg, file=sys.stderr, flush=True)

    targets = parse_targets(args.routers)
    share = getattr(args, "low_share", 0.0)
    if not 0.0 <= share < 1.0:
        raise SystemExit(f"agentfleet bench routing: --low-share must be in [0, 1), not {share}")
    if share == 0.0 and any("band" in t.policy.split("+")[1:] for t in targets):
        raise SystemExit("agentfleet bench routing: +band needs --low-share (e.g. 0.25): the share of tasks that "
                         "ask for the low band")
    if getattr(args, "engine", "sim") != "sim" and getattr(args, "churn", False):
        raise SystemExit("agentfleet bench routing: --churn restarts simulators; not scripted for --engine vllm-cpu")
    if args.run_timeout is None:  # a run with tools lasts at least a worker's tasks' tool time
        args.run_timeout = max(90.0, 6.0 * args.tasks_per_worker * args.steps_max * getattr(args, "tool_s", 0.0))
    skipped: dict[str, str] = {}
    exe = None
    if getattr(args, "churn", False) and any(t.family == _THEIRS for t in targets):
        why = "--churn scripts the rollout through our router's /admin/drain; not scripted for vllm-router"
        skipped = {t.name: why for t in targets if t.family == _THEIRS}
        targets = [t for t in targets if t.family == _OURS]
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
        "rounds", "seed", "router_arg", "run_timeout", "churn", "churn_restart_at", "churn_down_at",
        "router_replicas", "hints", "tool_s", "tool_dist", "low_share", "engine", "warm_lead_s")}
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
    p.add_argument("--run-timeout", type=float, default=None, help="seconds before a router's run is cut off "
                   "(its unfinished tasks are reported as timed_out_tasks); default 90, or with --tool-s six times "
                   "a worker's longest tool time (--tasks-per-worker x --steps-max x --tool-s)")
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
    p.add_argument("--tool-s", type=float, default=0.0,
                   help="mean seconds a tool runs between two calls of a task (exponential, capped at 4x, the same "
                        "draw for every router); 0: calls back to back")
    p.add_argument("--tool-dist", choices=TOOL_DISTS, default="exp",
                   help="tool durations: exp (exponential, capped at 4x the mean) or steady (within 10%% of it)")
    p.add_argument("--low-share", type=float, default=0.0, metavar="F",
                   help="this share of the tasks (the same ones for every router) stand for a Budget near its limit: "
                        "a +band router is told (x-agentfleet-priority: low), and every router's result splits its "
                        "tasks into band_normal and band_low buckets")
    p.add_argument("--engine", choices=("sim", "vllm-cpu"), default="sim",
                   help="the engines behind the routers: llm-d-inference-sim (default), or real vLLM on CPU (the local "
                        "model server, scripts/install-local-model; one engine per replica, --kv-blocks is its "
                        "--num-gpu-blocks-override, ~35 s to start each)")
    p.add_argument("--max-model-len", type=int, default=3072, help="--engine vllm-cpu: the engines' max model length "
                   "(the KV cache must hold one such prompt: 160 blocks do for 3072)")
    p.add_argument("--warm-lead-s", type=float, default=WARM_LEAD_S,
                   help="+warm/+warm-typical: how long before a tool is expected to end the warm goes (the runtime's "
                        "tools.warm.leadSeconds; on CPU a re-prefill takes seconds)")
    p.add_argument("--prefill-ms", type=float, default=2.0)
    p.add_argument("--inter-token-ms", type=float, default=5.0)
    p.add_argument("--max-num-seqs", type=int, default=8)
    p.add_argument("--kv-blocks", type=int, default=3072)
    p.add_argument("--prefix-tokens", type=int, default=256)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--router-replicas", type=int, default=1,
                   help="router processes per router under test, the calls rotating over them (as a Service "
                   "spreads them); our placement is then best with +shared or --hints")
    p.add_argument("--hints", action="store_true",
                   help="send our routers what the AgentApp runtime sends: the run id, the replica that served the "
                   "session's previous call (x-agentfleet-home), and the run's end")
    p.add_argument("--churn", action="store_true",
                   help="a rollout and a scale-down during the run (our router only: vllm-router has no drain): "
                   "replica 0 drained, restarted and put back, the last replica drained and stopped; reports failed "
                   "requests and how fast the prefix-cache hit rate comes back")
    p.add_argument("--churn-restart-at", type=float, default=10.0, help="seconds into the run")
    p.add_argument("--churn-down-at", type=float, default=30.0,
                   help="seconds into the run (give the run a minute past it: --tasks-per-worker 8 at 32 tasks)")
    p.set_defaults(func=_cmd)
