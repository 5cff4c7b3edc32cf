"""`agentfleet bench autoscale`: one bursty trace against a discrete-event model of a vLLM fleet, calibrated against
llm-d-inference-sim (its measured prefill time per token and inter-token latency; `--no-calibrate` uses the flags),
replayed under three scalers evaluated every interval on the same window metrics: agentfleet's `scaling.decide`,
a request-count scaler like KubeAI's and an HPA on a CPU-like utilisation. Reports the share of requests within the
TTFT SLO (goodput fraction) and the replica-seconds each spent (from the scale decision, so start-up time is paid
for, until the drained replica is gone), averaged over --seeds Poisson draws of the trace (20 by default), with
their spread and a per-seed paired count: where a spike lands against a scale-down decides a lot, so 5 draws were
luck.

The baselines follow their sources' defaults (both were made faithful; earlier versions were not):
- request_count is KubeAI's ModelAutoscaler: the in-flight count sampled each interval into a moving average over
  `timeWindow` (10 min by default; the earlier version used only the last interval, a scaler KubeAI does not
  ship), desired = ceil(average / targetRequests), up at once and unbounded, down after
  ceil(scaleDownDelaySeconds / interval) consecutive lower decisions. `--request-count-window-s 15` gives the
  old, twitchier variant for comparison.
- cpu_proxy is the HPA replica calculator: ready pods' mean utilisation over the target, tolerance 0.1, pods
  still starting counted as 0 % when scaling up, max(x2, +4) per period, 300 s down-stabilisation over the raw
  recommendations. The earlier version multiplied the ready pods' utilisation by the count including starting
  pods, so every tick while replicas booted compounded another x1.4 - an over-eager scaler that no HPA is."""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["add_bench_parsers", "run", "simulate", "Model", "TRACE"]

# (seconds, requests per second): quiet, a ramp, a burst, a lull, a spike, quiet again.
TRACE = ((120, 1.0), (120, 6.0), (240, 14.0), (180, 3.0), (90, 24.0), (150, 2.0), (300, 0.5))


@dataclass(frozen=True)
class Model:
    prefill_ms_per_token: float = 2.0
    inter_token_ms: float = 5.0
    max_num_seqs: int = 8
    prompt_tokens: int = 1000
    prefix_hit: float = 0.7  # share of the prompt found in the prefix cache (router affinity)
    output_tokens: tuple[int, int] = (50, 150)
    startup_s: float = 30.0
    interval_s: float = 15.0
    ttft_slo_s: float = 2.0
    min_replicas: int = 1
    max_replicas: int = 8


@dataclass
class _Replica:
    ordinal: int
    created: float
    ready_at: float
    busy: int = 0
    draining: bool = False
    gone_at: float | None = None


@dataclass
class _Window:
    start: float
    queue_area: float = 0.0
    busy_area: float = 0.0
    ttfts: list[float] = field(default_factory=list)
    arrivals: int = 0


Scaler = Callable[[dict, int, int, float], int]  # (window metrics, current, ready, now) -> desired


def arrivals(trace=TRACE, seed: int = 1) -> list[float]:
    import random

    rng = random.Random(seed)
    out, t0 = [], 0.0
    for duration, rate in trace:
        t = t0
        while True:
            t += rng.expovariate(rate)
            if t >= t0 + duration:
                break
            out.append(t)
        t0 += duration
    return out


def simulate(model: Model, scaler: Scaler, *, seed: int = 1, trace=TRACE) -> dict:
    """Event-driven: arrivals, slot completions, replicas becoming ready, scaler ticks."""
    import heapq
    import random

    rng = random.Random(seed + 1)
    times = arrivals(trace, seed)
    end = sum(d for d, _ in trace)
    prefill = model.prompt_tokens * (1 - model.prefix_hit) * model.prefill_ms_per_token / 1000
    events: list[tuple[float, int, str, object]] = []
    seq = 0

    def push(t: float, kind: str, data: object = None) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, data))

    replicas = [_Replica(i, 0.0, 0.0) for i in range(model.min_replicas)]
    queue: list[float] = []  # arrival times, FIFO
    ttfts: list[float] = []
    win = _Window(0.0)
    last_t = 0.0
    for t in times:
        push(t, "arrive", t)
    for k in range(1, int(end // model.interval_s) + 1):
        push(k * model.interval_s, "tick")

    def live() -> list[_Replica]:
        return [r for r in replicas if r.gone_at is None]

    def serving(now: float) -> list[_Replica]:
        return [r for r in live() if not r.draining and r.ready_at <= now]

    def start(r: _Replica, arrived: float, now: float) -> None:
        r.busy += 1
        out_tokens = rng.randint(*model.output_tokens)
        ttft = now - arrived + prefill
        ttfts.append(ttft)
        win.ttfts.append(ttft)
        push(now + prefill + out_tokens * model.inter_token_ms / 1000, "done", r)

    def fill(now: float) -> None:
        for r in sorted(serving(now), key=lambda r: r.busy):
            while queue and r.busy < model.max_num_seqs:
                start(r, queue.pop(0), now)

    while events:
        t, _, kind, data = heapq.heappop(events)
        if t > end and kind != "done":
            continue
        win.queue_area += len(queue) * (t - last_t)
        win.busy_area += sum(r.busy for r in live()) * (t - last_t)
        last_t = t
        if kind == "arrive":
            win.arrivals += 1
            free = [r for r in serving(t) if r.busy < model.max_num_seqs]
            if free and not queue:
                start(min(free, key=lambda r: r.busy), data, t)
            else:
                queue.append(data)
        elif kind == "done":
            r = data
            r.busy -= 1
            if r.draining and r.busy == 0:
                r.gone_at = t
            fill(t)
        elif kind == "ready":
            fill(t)
        elif kind == "tick":
            span = max(t - win.start, 1e-9)
            done = win.ttfts
            metrics = {
                "waiting": win.queue_area / span, "running": win.busy_area / span,
                "ttft_p95_s": sorted(done)[int(0.95 * (len(done) - 1))] if done else None,
                "good_fraction": (sum(x <= model.ttft_slo_s for x in done) / len(done)) if done else None,
                "request_rate": len(done) / span,
                # A scrape's instant view (KubeAI samples the proxy's in-flight count at each tick).
                "in_flight_now": len(queue) + sum(r.busy for r in live()),
                "arrival_rate": win.arrivals / span,
            }
            current = len([r for r in live() if not r.draining])
            ready = len(serving(t))
            desired = max(model.min_replicas, min(model.max_replicas, scaler(metrics, current, ready, t)))
            if desired > current:
                for _ in range(desired - current):
                    ordinal = max((r.ordinal for r in live()), default=-1) + 1
                    replicas.append(_Replica(ordinal, t, t + model.startup_s))
                    push(t + model.startup_s, "ready")
            elif desired < current:
                # A StatefulSet removes the highest ordinal first; the router drains it (no new work).
                for r in sorted((r for r in live() if not r.draining), key=lambda r: -r.ordinal)[:current - desired]:
                    r.draining = True
                    if r.busy == 0:
                        r.gone_at = t
            win = _Window(t)
    stop = max(end, last_t)
    for q in queue:  # never served: count as misses
        ttfts.append(math.inf)
    replica_s = sum((r.gone_at if r.gone_at is not None else stop) - r.created for r in replicas)
    good = sum(x <= model.ttft_slo_s for x in ttfts)
    return {"goodput_fraction": round(good / len(ttfts), 4), "replica_seconds": round(replica_s, 1),
            "requests": len(ttfts), "peak_replicas": max(r.ordinal for r in replicas) + 1}


def agentfleet_scaler(model: Model, *, scale_down_stabilization_s: float, target_queue_per_replica: float,
                      goodput_target: float) -> Scaler:
    from .. import scaling

    policy = scaling.ScalingPolicy(
        min_replicas=model.min_replicas, max_replicas=model.max_replicas,
        target_queue_per_replica=target_queue_per_replica, ttft_p95_slo_s=model.ttft_slo_s,
        goodput_target=goodput_target, scale_down_stabilization_s=scale_down_stabilization_s,
        capacity_per_replica=model.max_num_seqs, replica_startup_s=model.startup_s)
    memory = scaling.Memory()

    def scale(m: dict, current: int, ready: int, now: float) -> int:
        nonlocal memory
        window = scaling.Window(waiting=m["waiting"], running=m["running"], ttft_p95_s=m["ttft_p95_s"],
                                good_fraction=m["good_fraction"], request_rate=m["request_rate"])
        decision, memory = scaling.decide(window, current, ready, policy, memory, now)
        return decision.to_replicas
    return scale


def request_count_scaler(model: Model, *, target_requests: float, scale_down_delay_s: float,
                         window_s: float = 600.0) -> Scaler:
    """KubeAI's ModelAutoscaler, as its source has it: every interval it samples the in-flight requests (its
    proxy's active count: running + queued) into a simple moving average over `timeWindow` (default 10 min,
    i.e. window_s / interval samples, here already full of the first sample: it has been running); desired = ceil(average / targetRequests),
    clamped to [min, max]; a scale-up is applied at once and unbounded; a scale-down only after
    ceil(scaleDownDelaySeconds / interval) consecutive lower decisions (applied on the next one)."""
    size = max(1, math.ceil(window_s / model.interval_s))
    samples: list[float] = []
    required = math.ceil(scale_down_delay_s / model.interval_s)
    consecutive = [0]

    def scale(m: dict, current: int, ready: int, now: float) -> int:
        if not samples:  # it has been watching the quiet start for a while, not booting into it
            samples.extend([m["in_flight_now"]] * size)
        samples.pop(0)
        samples.append(m["in_flight_now"])
        desired = max(model.min_replicas, min(model.max_replicas,
                                              math.ceil(sum(samples) / len(samples) / target_requests)))
        if desired < current:
            if consecutive[0] < required:
                consecutive[0] += 1
                return current
            return desired
        consecutive[0] = 0
        return desired
    return scale


def cpu_proxy_scaler(model: Model, *, target_utilization: float, stabilization_s: float,
                     tolerance: float = 0.1) -> Scaler:
    """An HPA (autoscaling/v2, default behaviour) on a CPU-like utilisation: each ready pod's utilisation is
    running/max_num_seqs, so it saturates at 100 % and a queued request costs nothing (it cannot see the queue).
    As the replica calculator does it: the ratio is the ready pods' mean utilisation over the target; within
    the tolerance (0.1) nothing changes; with no pod starting, desired = ceil(ratio * ready); with pods still
    starting and ratio > 1 they count as 0 % (desired = ceil(total utilisation / target), so a saturated pod is
    not counted twice while its help boots). Then the default behaviours: scale-up at most max(x2, +4) per 15 s
    period, no up-stabilisation; scale-down to the highest raw recommendation of the last `stabilization_s`
    (300 s by default), 100 % per period."""
    history: list[tuple[float, int]] = []

    def scale(m: dict, current: int, ready: int, now: float) -> int:
        ready = max(ready, 1)
        util_total = min(float(ready), m["running"] / model.max_num_seqs)  # pod-seconds of "CPU" in use
        ratio = util_total / ready / target_utilization
        starting = max(0, current - ready)
        if starting and ratio > 1.0:
            new_ratio = util_total / (ready + starting) / target_utilization
            if abs(1.0 - new_ratio) <= tolerance or new_ratio < 1.0:
                raw = current
            else:
                raw = math.ceil(util_total / target_utilization)
        elif abs(1.0 - ratio) <= tolerance:
            raw = current
        else:
            raw = math.ceil(ratio * ready)
        history.append((now, raw))
        history[:] = [(t, d) for t, d in history if now - t < stabilization_s]
        # stabilizeRecommendationWithBehaviors: up window 0 s (the raw value), down = max over the window.
        desired = raw if raw > current else min(current, max(d for _, d in history))
        desired = min(desired, max(2 * current, current + 4))  # the two default scale-up policies
        return max(model.min_replicas, min(model.max_replicas, desired))
    return scale


def calibrate(model: Model) -> tuple[Model, dict]:
    """Measure the simulator: TTFT of a cold prompt (prefill per token) and the streamed decode rate."""
    import time
    import urllib.request
    from dataclasses import replace

    from . import simulator

    sim = simulator.SimSettings(prefill_ms_per_token=model.prefill_ms_per_token,
                                inter_token_ms=model.inter_token_ms, max_num_seqs=model.max_num_seqs)
    with simulator.running_fleet(1, sim) as fleet:
        url = fleet.urls[0] + "/v1/completions"
        prompt = " ".join(f"c{i}" for i in range(model.prompt_tokens))
        out_tokens = 60
        body = json.dumps({"model": sim.model, "prompt": prompt, "max_tokens": out_tokens, "stream": True,
                           "ignore_eos": True}).encode()
        req = urllib.request.Request(url, data=body, headers={"content-type": "application/json"})
        t0 = time.perf_counter()
        first = None
        n = 0
        with urllib.request.urlopen(req, timeout=60) as r:
            for line in r:
                if line.startswith(b"data: {") and b'"text":""' not in line:
                    n += 1
                    if first is None:
                        first = time.perf_counter()
        t1 = time.perf_counter()
    prefill_ms = 1000 * (first - t0) / model.prompt_tokens
    itl_ms = 1000 * (t1 - first) / max(1, n - 1)
    return replace(model, prefill_ms_per_token=prefill_ms, inter_token_ms=itl_ms), {
        "measured_prefill_ms_per_token": round(prefill_ms, 3), "measured_inter_token_ms": round(itl_ms, 3),
        "tokens_streamed": n}


def run(args: argparse.Namespace) -> dict:
    model = Model(startup_s=args.startup_s, interval_s=args.interval_s, ttft_slo_s=args.ttft_slo_s,
                  max_replicas=args.max_replicas)
    calibration: dict = {"calibrated": False}
    if args.calibrate:
        try:
            model, calibration = calibrate(model)
            calibration["calibrated"] = True
        except (OSError, RuntimeError, TimeoutError) as err:
            calibration["error"] = str(err)
    def scalers_for() -> dict[str, Scaler]:  # fresh scaler state per seed
        return {
        "agentfleet": agentfleet_scaler(model, scale_down_stabilization_s=args.scale_down_stabilization_s,
                                        target_queue_per_replica=args.target_queue_per_replica,
                                        goodput_target=0.95),
        "request_count": request_count_scaler(model, target_requests=args.target_requests,
                                              scale_down_delay_s=args.scale_down_delay_s,
                                              window_s=args.request_count_window_s),
        "cpu_proxy": cpu_proxy_scaler(model, target_utilization=0.7, stabilization_s=300),
        }
    trace = TRACE if args.trace_scale == 1 else tuple((d * args.trace_scale, r) for d, r in TRACE)
    # One trace shape, several Poisson draws: where a spike lands against a scale-down decides a lot.
    runs: dict[str, list[dict]] = {}
    for seed in range(args.seed, args.seed + args.seeds):
        for name, scaler in scalers_for().items():
            runs.setdefault(name, []).append(simulate(model, scaler, seed=seed, trace=trace))
    def spread(xs: list[float], nd: int) -> dict:
        return {"min": round(min(xs), nd), "max": round(max(xs), nd), "stdev": round(statistics.pstdev(xs), nd)}

    results = {name: {"goodput_fraction": round(statistics.fmean(r["goodput_fraction"] for r in rs), 4),
                      "replica_seconds": round(statistics.fmean(r["replica_seconds"] for r in rs), 1),
                      "goodput_spread": spread([r["goodput_fraction"] for r in rs], 4),
                      "replica_seconds_spread": spread([r["replica_seconds"] for r in rs], 1),
                      "peak_replicas_max": max(r["peak_replicas"] for r in rs),
                      "per_seed": [(r["goodput_fraction"], r["replica_seconds"]) for r in rs]}
               for name, rs in runs.items()}
    af = results["agentfleet"]
    best = max(results[k]["goodput_fraction"] for k in ("request_count", "cpu_proxy"))
    # Paired by seed (same arrivals): how often agentfleet alone meets each half of the target.
    paired = {name: {"goodput_at_least": sum(a[0] >= b[0] for a, b in zip(af["per_seed"], results[name]["per_seed"])),
                     "replica_seconds_at_most": sum(a[1] <= b[1] for a, b in zip(af["per_seed"],
                                                                                  results[name]["per_seed"])),
                     "seeds": len(af["per_seed"])}
              for name in ("request_count", "cpu_proxy")}
    return {
        "scalers": results,
        "paired_seeds": paired,
        "ratios": {"goodput_agentfleet_minus_best_baseline": round(af["goodput_fraction"] - best, 4),
                   "replica_seconds_agentfleet_over_request_count":
                       round(af["replica_seconds"] / results["request_count"]["replica_seconds"], 3)},
        "targets": {"goodput_at_least_best_baseline": af["goodput_fraction"] >= best,
                    "replica_seconds_at_most_request_count":
                        af["replica_seconds"] <= results["request_count"]["replica_seconds"]},
        "model": {k: v for k, v in model.__dict__.items()}, "calibration": calibration,
        "trace": [list(x) for x in trace],
    }


def _cmd(args: argparse.Namespace) -> int:
    out = run(args)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    return 0


def add_bench_parsers(bench_sub) -> None:
    p = bench_sub.add_parser("autoscale", help="scalers on a bursty trace (discrete-event fleet calibrated "
                             "against the simulator)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=True,
                   help="measure prefill/decode timing on one llm-d-inference-sim first")
    p.add_argument("--seed", type=int, default=1, help="first seed")
    p.add_argument("--seeds", type=int, default=20, help="Poisson draws of the trace, averaged (spread reported)")
    p.add_argument("--trace-scale", type=float, default=1.0, help="stretch (or shrink) every trace phase")
    p.add_argument("--startup-s", type=float, default=30.0, help="seconds from scale-up to a ready replica")
    p.add_argument("--interval-s", type=float, default=15.0)
    p.add_argument("--ttft-slo-s", type=float, default=2.0)
    p.add_argument("--max-replicas", type=int, default=8)
    p.add_argument("--target-queue-per-replica", type=float, default=4.0)
    p.add_argument("--scale-down-stabilization-s", type=float, default=300.0)
    p.add_argument("--target-requests", type=float, default=3.0, help="request_count: in-flight per replica "
                   "(KubeAI's default targetRequests 100 is 39%% of vLLM's max_num_seqs 256; 3 of 8 here)")
    p.add_argument("--scale-down-delay-s", type=float, default=30.0, help="request_count: KubeAI's default")
    p.add_argument("--request-count-window-s", type=float, default=600.0,
                   help="request_count: KubeAI's modelAutoscaling.timeWindow (default 10m)")
    p.set_defaults(func=_cmd)
