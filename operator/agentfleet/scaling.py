"""The autoscaling decision, pure: (metrics window, current and ready replicas, policy, remembered state, now) ->
Decision(from, to, reason) and the state to remember. Time is a parameter (epoch seconds): no clock here.

Size by capacity, not by ratios of symptoms. The window's demand, in request slots, comes from Little's law: the
measured time a request holds a slot (running / admission rate) times the arrival rate (admissions plus the growth
of the queue since the last window); a backlog that is merely draining adds nothing, one that grows does. Desired =
ceil(demand / (slots per replica x target utilisation)), plus predictive headroom: while demand is rising, what it
will have grown to by the time a replica started now is ready (the slope over the last window times the start-up
time, at most +50 % of the demand), so the fleet does not arrive one start-up late to every ramp.

Up fast: in one bounded step (at most x max_scale_up_factor, at least +1) once the pressure has lasted the
scale-up stabilisation window. Replicas still starting count as capacity (no second scale-up for the same demand
while they load), and the queue and SLO signals wait for them. Also up when the queue per ready replica, the
SLO-miss rate or a full KV cache says so although demand looks covered (e.g. batching slows every request).

Down slowly: every evaluation's recommendation is remembered for the scale-down stabilisation window (HPA's
semantics: the fleet never shrinks below the highest recommendation of the window, predictions included, so a
lull shorter than the window keeps the capacity the last burst needed), and only after the recommendation has
been below the current count for the whole window, one replica per scale_down_step_s. Never outside [min, max],
never to zero on its own. A window with missing metrics changes nothing and forgets the window (a broken scrape
never scales a fleet down; after it, or after a restart with no memory, a full window is observed again)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

__all__ = ["Window", "ScalingPolicy", "Memory", "Decision", "Reason", "decide", "demand_slots"]

Reason = Literal[
    "BelowMinReplicas", "AboveMaxReplicas", "MetricsMissing", "QueueAboveTarget", "SLOMiss", "WaitingForReplicas",
    "UtilizationAboveTarget", "KVCacheFull",
    "ScaleUpPending", "AtMaxReplicas", "ScaleDownPending", "ScaleDownAfterStabilization", "WithinTarget",
]


@dataclass(frozen=True)
class Window:
    """The fleet's metrics over the last interval; None where Prometheus had no data."""

    waiting: float | None = None  # requests queued, summed over replicas (mean over the window)
    running: float | None = None  # requests running, summed over replicas (mean over the window)
    kv_cache_usage: float | None = None  # mean over replicas, 0..1
    ttft_p95_s: float | None = None
    good_fraction: float | None = None  # share of requests finished in the window within the SLO; None: none did
    request_rate: float | None = None  # requests admitted (first token) per second

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
    target_utilization: float = 0.75  # size the fleet so demand fills this share of its slots
    scale_down_step_s: float = 15.0  # once the window allows: at most one replica fewer per this many seconds
    kv_cache_high: float = 0.9  # KV cache this full with a queue: requests wait for memory, not slots
    replica_startup_s: float = 60.0  # scale-up to ready; the horizon of the predictive headroom (0: none)
    max_predicted_growth: float = 0.5  # the headroom adds at most this share of the measured demand

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
                   target_utilization=spec.target_utilization,
                   replica_startup_s=spec.replica_startup_seconds,
                   capacity_per_replica=max_num_seqs or cls.capacity_per_replica)


@dataclass(frozen=True)
class Memory:
    """What must survive an operator restart (kept in status.autoscaler)."""

    pressure_since: float | None = None  # start of the current run of windows asking for more replicas
    calm_since: float | None = None  # start of the current run of recommendations below the current count
    last_scale_at: float | None = None
    # The scale-down window's recommendations as a sliding-maximum envelope: (time, replicas), oldest first, each
    # lower than the one before; the first is the window's highest. At most one entry per replica count.
    peaks: tuple[tuple[float, int], ...] = ()
    # (time, waiting, demand, the demand of the window before) of the last complete window: the queue's growth
    # and the demand's trend are measured against it.
    last_sample: tuple[float, float, float, float] | None = None


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


def demand_slots(window: Window, last: tuple[float, ...] | None, now: float) -> float:
    """Request slots the window's arrivals need (Little's law): arrival rate x the time a request holds a slot.
    Arrivals = admissions + the queue's growth since the last window (a draining backlog adds nothing). Without a
    rate (no histogram, or nothing admitted) it falls back to running + waiting."""
    running, waiting = window.running or 0.0, window.waiting or 0.0
    rate = window.request_rate
    if not rate or rate <= 0 or running <= 0:
        return running + waiting
    hold_s = running / rate
    growth = 0.0
    if last is not None and now > last[0]:
        growth = max(0.0, (waiting - last[1]) / (now - last[0]))
    return max(running, (rate + growth) * hold_s)


def _push_peak(peaks: tuple[tuple[float, int], ...], now: float, replicas: int, keep_s: float
               ) -> tuple[tuple[float, int], ...]:
    kept = [(t, r) for t, r in peaks if now - t < keep_s and r > replicas]
    return (*kept, (now, replicas))


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
        # Neither up nor down, and the gap forgets the window: a dead scrape must not look like an idle fleet.
        return (_hold(current, "MetricsMissing", "no queue/running metrics for this window"),
                Memory(last_scale_at=memory.last_scale_at))
    waiting, running = window.waiting or 0.0, window.running or 0.0
    queue_per_replica = waiting / max(ready, 1)
    if window.good_fraction is not None:
        slo_miss = window.good_fraction < p.goodput_target
    else:
        slo_miss = window.ttft_p95_s is not None and window.ttft_p95_s > p.ttft_p95_slo_s
    starting = ready < current

    # --- the recommendation: capacity for the demand, with headroom for a rising one ----------------------
    demand = demand_slots(window, memory.last_sample, now)
    # Rising = above the higher of the last two windows: a rebound after one quiet window is no trend (load
    # flapping window to window must not look like a ramp every other window).
    slope = 0.0
    last = memory.last_sample
    if last is not None and now > last[0]:
        slope = (demand - max(last[2], last[3])) / (now - last[0])
    per_replica = p.target_utilization * p.capacity_per_replica
    headroom = min(max(0.0, slope) * p.replica_startup_s, p.max_predicted_growth * demand)
    wants: dict[Reason, int] = {"UtilizationAboveTarget": math.ceil((demand + headroom) / per_replica - 1e-9)}
    # Symptoms that say the demand estimate is short; each waits for replicas still starting (a queue or a miss
    # measured before they are ready says nothing about them).
    if not starting:
        if queue_per_replica > p.target_queue_per_replica:
            wants["QueueAboveTarget"] = math.ceil(current * queue_per_replica / p.target_queue_per_replica)
        if window.kv_cache_usage is not None and window.kv_cache_usage >= p.kv_cache_high and waiting > 0:
            wants["KVCacheFull"] = current + 1
        if slo_miss:
            severity = (window.ttft_p95_s / p.ttft_p95_slo_s) if window.ttft_p95_s else 1.0
            wants["SLOMiss"] = max(current + 1, math.ceil(current * severity))
    wanted = max(wants.values())
    recommended = max(p.min_replicas, min(p.max_replicas, wanted))
    why: Reason = max(wants, key=lambda r: (wants[r], r != "UtilizationAboveTarget"))
    peaks = _push_peak(memory.peaks, now, recommended, p.scale_down_stabilization_s)
    sample = (now, waiting, demand, last[2] if last is not None else demand)
    detail = (f"demand {demand:.1f} slots (+{headroom:.1f} rising) at {per_replica:g}/replica, "
              f"queue/replica {queue_per_replica:.2f} (target {p.target_queue_per_replica:g}), "
              f"good {'n/a' if window.good_fraction is None else f'{window.good_fraction:.2f}'} "
              f"(target {p.goodput_target:g}), ttft p95 "
              f"{'n/a' if window.ttft_p95_s is None else f'{window.ttft_p95_s:.2f}s'} "
              f"(SLO {p.ttft_p95_slo_s:g}s)")

    # --- up: at once (after the up-window), bounded per step -------------------------------------------
    if wanted > current:
        since = memory.pressure_since if memory.pressure_since is not None else now
        pressured = Memory(pressure_since=since, last_scale_at=memory.last_scale_at, peaks=peaks,
                           last_sample=sample)
        if now - since < p.scale_up_stabilization_s:
            return (_hold(current, "ScaleUpPending", f"pressure for {now - since:.0f}s of "
                          f"{p.scale_up_stabilization_s:g}s; {detail}"), pressured)
        step_cap = max(current + 1, math.floor(current * p.max_scale_up_factor))
        to = min(recommended, step_cap)
        if to <= current:
            return _hold(current, "AtMaxReplicas", f"at maxReplicas {p.max_replicas}; {detail}"), pressured
        return Decision(current, to, why, detail), Memory(last_scale_at=now, peaks=peaks, last_sample=sample)
    if slo_miss and starting:
        return (_hold(current, "WaitingForReplicas", f"{ready}/{current} ready, SLO missed meanwhile"),
                Memory(last_scale_at=memory.last_scale_at, peaks=peaks, last_sample=sample))

    # --- down: below the window's highest recommendation never; one replica per step -------------------
    # Never to zero on our own: with no replica there are no vLLM metrics to scale back up from (scale-from-zero
    # needs the router's queue as a signal; not implemented).
    keep = peaks[0][1]
    if recommended >= current or current <= max(p.min_replicas, 1):
        return (_hold(current, "WithinTarget", f"recommended {recommended}; {detail}"),
                Memory(last_scale_at=memory.last_scale_at, peaks=peaks, last_sample=sample))
    since = memory.calm_since if memory.calm_since is not None else now
    calm = Memory(calm_since=since, last_scale_at=memory.last_scale_at, peaks=peaks, last_sample=sample)
    if now - since < p.scale_down_stabilization_s or keep >= current:
        return (_hold(current, "ScaleDownPending", f"recommended {recommended} for {now - since:.0f}s of "
                      f"{p.scale_down_stabilization_s:g}s; the window's highest is {keep}"), calm)
    if memory.last_scale_at is not None and now - memory.last_scale_at < p.scale_down_step_s:
        return (_hold(current, "ScaleDownPending", f"recommended {recommended}; next step "
                      f"{p.scale_down_step_s:g}s after the last"), calm)
    return (Decision(current, current - 1, "ScaleDownAfterStabilization",
                     f"the last {p.scale_down_stabilization_s:g}s recommended at most {keep} "
                     f"(now {recommended}; running {running:g}, queue {waiting:g})"),
            replace(calm, last_scale_at=now))
