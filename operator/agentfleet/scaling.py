"""The autoscaling decision, pure: (metrics window, current and ready replicas, policy, remembered state, now) ->
Decision(from, to, reason) and the state to remember. Up fast: when queue per replica, utilisation or the SLO-miss
rate crosses its target, in one bounded step (at most x max_scale_up_factor, at least +1), once the pressure has
lasted the scale-up stabilisation window. Down slowly: only after the fleet has been calm (empty queue, SLO met, the
load fits in one replica fewer at half utilisation) for the whole scale-down stabilisation window, then one replica
per scale_down_step_s while it stays calm. Never outside [min, max], never to zero on its own. A window with
missing metrics changes nothing (and breaks a calm run), so a broken scrape never scales a fleet down. Time is a
parameter (epoch seconds): no clock here."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

__all__ = ["Window", "ScalingPolicy", "Memory", "Decision", "Reason", "decide"]

Reason = Literal[
    "BelowMinReplicas", "AboveMaxReplicas", "MetricsMissing", "QueueAboveTarget", "SLOMiss", "WaitingForReplicas",
    "UtilizationAboveTarget", "KVCacheFull",
    "ScaleUpPending", "AtMaxReplicas", "ScaleDownPending", "ScaleDownAfterStabilization", "WithinTarget",
]


@dataclass(frozen=True)
class Window:
    """The fleet's metrics over the last interval; None where Prometheus had no data."""

    waiting: float | None = None  # requests queued, summed over replicas
    running: float | None = None  # requests running, summed over replicas
    kv_cache_usage: float | None = None  # mean over replicas, 0..1
    ttft_p95_s: float | None = None
    good_fraction: float | None = None  # share of requests finished in the window within the SLO; None: none did
    request_rate: float | None = None  # requests finished per second

    @property
    def is_complete(self) -> bool:
        return self.waiting is not None and self.running is not None

    @property
    def goodput_rps(self) -> float | None:
        if self.request_rate is None:
            return None
        return self.request_rate * (self.good_fraction if self.good_fraction is not None else 1.0)


@dataclass(frozen=True)
class ScalingPolicy:
    min_replicas: int = 1
    max_replicas: int = 4
    target_queue_per_replica: float = 4.0
    ttft_p95_slo_s: float = 2.0
    goodput_target: float = 0.95
    scale_up_stabilization_s: float = 0.0
    scale_down_stabilization_s: float = 300.0
    max_scale_up_factor: float = 2.0
    capacity_per_replica: int = 256  # vLLM's --max-num-seqs (its default is 256): requests one replica runs at once
    target_utilization: float = 0.75  # scale up when running + waiting exceeds this share of the fleet's capacity
    scale_down_utilization: float = 0.5  # scale down only if the rest would run below this share of capacity
    scale_down_step_s: float = 60.0  # once calm for the window: at most one replica fewer per this many seconds
    kv_cache_high: float = 0.9  # KV cache this full with a queue: requests wait for memory, not slots

    @classmethod
    def from_spec(cls, spec, *, max_num_seqs: int | None = None) -> ScalingPolicy:
        """From an api.AutoscalingSpec (duck-typed, so this module imports no models)."""
        return cls(min_replicas=spec.min_replicas, max_replicas=spec.max_replicas,
                   target_queue_per_replica=spec.target_queue_per_replica,
                   ttft_p95_slo_s=spec.ttft_p95_slo_seconds, goodput_target=spec.goodput_target,
                   scale_up_stabilization_s=spec.scale_up_stabilization_seconds,
                   scale_down_stabilization_s=spec.scale_down_stabilization_seconds,
                   scale_down_step_s=spec.scale_down_step_seconds,
                   max_scale_up_factor=spec.max_scale_up_factor,
                   capacity_per_replica=max_num_seqs or cls.capacity_per_replica)


@dataclass(frozen=True)
class Memory:
    """What must survive an operator restart (kept in status.autoscaler)."""

    pressure_since: float | None = None  # start of the current run of windows asking for more replicas
    calm_since: float | None = None  # start of the current run of windows that could do with one fewer
    last_scale_at: float | None = None


@dataclass(frozen=True)
class Decision:
    from_replicas: int
    to_replicas: int
    reason: Reason
    message: str

    @property
    def is_change(self) -> bool:
        return self.from_replicas != self.to_replicas


def _hold(current: int, reason: Reason, message: str) -> Decision:
    return Decision(current, current, reason, message)


def decide(window: Window | None, current: int, ready: int, policy: ScalingPolicy, memory: Memory, now: float
           ) -> tuple[Decision, Memory]:
    p = policy
    if current < p.min_replicas:
        return (Decision(current, p.min_replicas, "BelowMinReplicas", f"{current} < minReplicas {p.min_replicas}"),
                Memory(last_scale_at=now))
    if current > p.max_replicas:
        return (Decision(current, p.max_replicas, "AboveMaxReplicas", f"{current} > maxReplicas {p.max_replicas}"),
                Memory(last_scale_at=now))
    if window is None or not window.is_complete:
        # Neither up nor down, and the gap breaks any calm run: a dead scrape must not look like an idle fleet.
        return (_hold(current, "MetricsMissing", "no queue/running metrics for this window"),
                replace(memory, pressure_since=None, calm_since=None))
    waiting, running = window.waiting or 0.0, window.running or 0.0
    serving = max(ready, 1)
    queue_per_replica = waiting / serving
    if window.good_fraction is not None:
        slo_miss = window.good_fraction < p.goodput_target
    else:
        slo_miss = window.ttft_p95_s is not None and window.ttft_p95_s > p.ttft_p95_slo_s

    # --- up: proportional to the pressure, bounded per step -----------------------------------------------
    # Demand-based wants count replicas still starting as capacity (no double scale-up while they load);
    # the SLO term waits for them, since a miss measured before they are ready says nothing about them.
    wants: dict[Reason, int] = {}
    if queue_per_replica > p.target_queue_per_replica:
        wants["QueueAboveTarget"] = math.ceil(current * queue_per_replica / p.target_queue_per_replica)
    needed = math.ceil((running + waiting) / (p.target_utilization * p.capacity_per_replica))
    if needed > current:
        wants["UtilizationAboveTarget"] = needed
    if window.kv_cache_usage is not None and window.kv_cache_usage >= p.kv_cache_high and waiting > 0:
        wants["KVCacheFull"] = current + 1
    if slo_miss and ready >= current:
        severity = (window.ttft_p95_s / p.ttft_p95_slo_s) if window.ttft_p95_s else 1.0
        wants["SLOMiss"] = max(current + 1, math.ceil(current * severity))
    want = max(wants.values(), default=current)
    if want > current:
        why: Reason = max(wants, key=lambda r: wants[r])
        detail = (f"queue/replica {queue_per_replica:.2f} (target {p.target_queue_per_replica:g}), "
                  f"running {running:.1f} of {current}x{p.capacity_per_replica}, "
                  f"good {'n/a' if window.good_fraction is None else f'{window.good_fraction:.2f}'} "
                  f"(target {p.goodput_target:g}), ttft p95 "
                  f"{'n/a' if window.ttft_p95_s is None else f'{window.ttft_p95_s:.2f}s'} "
                  f"(SLO {p.ttft_p95_slo_s:g}s)")
        since = memory.pressure_since if memory.pressure_since is not None else now
        pressured = replace(memory, pressure_since=since, calm_since=None)
        if now - since < p.scale_up_stabilization_s:
            return (_hold(current, "ScaleUpPending", f"pressure for {now - since:.0f}s of "
                          f"{p.scale_up_stabilization_s:g}s; {detail}"), pressured)
        step_cap = max(current + 1, math.floor(current * p.max_scale_up_factor))
        to = min(p.max_replicas, want, step_cap)
        if to <= current:
            return _hold(current, "AtMaxReplicas", f"at maxReplicas {p.max_replicas}; {detail}"), pressured
        return Decision(current, to, why, detail), Memory(last_scale_at=now)
    if slo_miss and ready < current:
        return (_hold(current, "WaitingForReplicas", f"{ready}/{current} ready, SLO missed meanwhile"),
                replace(memory, pressure_since=None, calm_since=None))

    # --- down: after a whole calm window, one replica per evaluation while it stays calm ------------------
    # Never to zero on our own: with no replica there are no vLLM metrics to scale back up from (scale-from-zero
    # needs the router's queue as a signal; not implemented).
    floor = max(p.min_replicas, 1)
    fits_in_fewer = current > 1 and running / (current - 1) <= p.scale_down_utilization * p.capacity_per_replica
    calm = current > floor and not slo_miss and queue_per_replica < 0.5 and fits_in_fewer
    if not calm:
        return (_hold(current, "WithinTarget", f"queue/replica {queue_per_replica:.2f}, running {running:g}"),
                replace(memory, pressure_since=None, calm_since=None))
    since = memory.calm_since if memory.calm_since is not None else now
    if now - since < p.scale_down_stabilization_s:
        return (_hold(current, "ScaleDownPending", f"calm for {now - since:.0f}s of "
                      f"{p.scale_down_stabilization_s:g}s (running {running:g})"),
                replace(memory, pressure_since=None, calm_since=since))
    if memory.last_scale_at is not None and now - memory.last_scale_at < p.scale_down_step_s:
        return (_hold(current, "ScaleDownPending", f"calm; next step {p.scale_down_step_s:g}s after the last"),
                replace(memory, pressure_since=None, calm_since=since))
    return (Decision(current, current - 1, "ScaleDownAfterStabilization",
                     f"calm for {now - since:.0f}s (running {running:g}, queue {waiting:g})"),
            Memory(calm_since=since, last_scale_at=now))
