"""decide(): tables of scenarios (burst, steady, missing data, flapping, bounds, restart memory). Time is a
parameter. P's replicas hold 8 requests at a 0.75 target: 6 slots of demand each."""

from __future__ import annotations

import pytest

from agentfleet.scaling import Memory, ScalingPolicy, Window, decide, demand_slots

P = ScalingPolicy(min_replicas=1, max_replicas=8, target_queue_per_replica=4, ttft_p95_slo_s=2.0,
                  goodput_target=0.95, scale_up_stabilization_s=0, scale_down_stabilization_s=300,
                  scale_down_step_s=15, max_scale_up_factor=2.0, capacity_per_replica=8, target_utilization=0.75,
                  replica_startup_s=30, max_predicted_growth=0.5)
T = 10_000.0
IDLE = Window(waiting=0, running=1, good_fraction=1.0, ttft_p95_s=0.5)
STEADY = Window(waiting=1, running=10, good_fraction=0.99, ttft_p95_s=1.0)


def _timers(m: Memory) -> tuple:
    return m.pressure_since, m.calm_since, m.last_scale_at


@pytest.mark.parametrize(("window", "current", "ready", "memory", "to", "reason", "timers"), [
    # --- burst: up at once, bounded ---------------------------------------------------------------------
    pytest.param(Window(waiting=40, running=16, good_fraction=0.9), 2, 2, Memory(), 4, "QueueAboveTarget",
                 (None, None, T), id="burst-doubles-not-more"),
    pytest.param(Window(waiting=9, running=8, good_fraction=1.0), 1, 1, Memory(), 2, "QueueAboveTarget",
                 (None, None, T), id="queue-just-over-target"),
    pytest.param(Window(waiting=400, running=64), 7, 7, Memory(), 8, "QueueAboveTarget", (None, None, T),
                 id="clamped-to-max"),
    pytest.param(Window(waiting=400, running=64), 8, 8, Memory(), 8, "AtMaxReplicas", (T, None, None),
                 id="at-max-holds"),
    pytest.param(Window(waiting=0, running=5, good_fraction=0.5, ttft_p95_s=5.0), 2, 2, Memory(), 4,
                 "SLOMiss", (None, None, T), id="slo-miss-scales-by-severity-capped"),
    pytest.param(Window(waiting=0, running=5, ttft_p95_s=2.5), 2, 2, Memory(), 3, "SLOMiss", (None, None, T),
                 id="ttft-over-slo-without-histogram-counts"),
    pytest.param(Window(waiting=0, running=5, good_fraction=0.5, ttft_p95_s=5.0), 4, 2, Memory(), 4,
                 "WaitingForReplicas", (None, None, None), id="slo-miss-waits-for-starting-replicas"),
    pytest.param(Window(waiting=0, running=14, good_fraction=1.0), 2, 2, Memory(), 3,
                 "UtilizationAboveTarget", (None, None, T), id="headroom-before-the-queue"),
    pytest.param(Window(waiting=2, running=8, kv_cache_usage=0.95, good_fraction=1.0), 2, 2, Memory(), 3,
                 "KVCacheFull", (None, None, T), id="kv-cache-full-with-queue"),
    # Little's law: 14 admitted/s holding a slot 16/14 s = 16 slots -> 3 replicas; running + waiting (22)
    # would say 4. A backlog that is not growing is draining: it needs no replica of its own.
    pytest.param(Window(waiting=6, running=16, request_rate=14.0, good_fraction=1.0), 2, 2,
                 Memory(last_sample=(T - 15, 6.0, 16.0, 16.0)), 3, "UtilizationAboveTarget", (None, None, T),
                 id="sized-by-arrivals-not-backlog"),
    # The same window with the queue grown by 6 in 15 s: arrivals 14.4/s -> 16.5 slots, and rising from 13
    # -> +50 % headroom for the start-up -> 24.7 slots -> 5, capped at x2.
    pytest.param(Window(waiting=6, running=16, request_rate=14.0, good_fraction=1.0), 2, 2,
                 Memory(last_sample=(T - 15, 0.0, 13.0, 13.0)), 4, "UtilizationAboveTarget", (None, None, T),
                 id="growing-queue-and-rising-demand-look-ahead"),
    # 10 slots now, 5 a window ago: rising 1/3 slot/s for a 30 s start-up (+10, capped at +5) -> 15 -> 3;
    # without the look-ahead 10 slots fit in 2.
    pytest.param(Window(waiting=0, running=10, request_rate=10.0, good_fraction=1.0), 2, 2,
                 Memory(last_sample=(T - 15, 0.0, 5.0, 5.0)), 3, "UtilizationAboveTarget", (None, None, T),
                 id="rising-demand-gets-startup-headroom"),
    pytest.param(Window(waiting=0, running=10, request_rate=10.0, good_fraction=1.0), 2, 2,
                 Memory(last_sample=(T - 15, 0.0, 10.0, 10.0)), 2, "WithinTarget", (None, None, None),
                 id="flat-demand-no-headroom"),
    # 5 slots a window ago but 10 the window before that: a rebound, not a ramp -> no look-ahead.
    pytest.param(Window(waiting=0, running=10, request_rate=10.0, good_fraction=1.0), 2, 2,
                 Memory(last_sample=(T - 15, 0.0, 5.0, 10.0)), 2, "WithinTarget", (None, None, None),
                 id="rebound-after-a-dip-is-no-trend"),
    # Two replicas still loading: the demand (16 slots -> 3) is already covered by 4, the queue and the misses
    # are from before they are ready -> no second scale-up for the same burst.
    pytest.param(Window(waiting=10, running=16, request_rate=14.0, good_fraction=0.5, ttft_p95_s=4.0), 4, 2,
                 Memory(last_sample=(T - 15, 10.0, 16.0, 16.0)), 4, "WaitingForReplicas", (None, None, None),
                 id="no-second-scale-up-while-starting"),
    # --- steady -----------------------------------------------------------------------------------------
    pytest.param(STEADY, 2, 2, Memory(calm_since=T - 100), 2, "WithinTarget", (None, None, None),
                 id="steady-holds-and-ends-calm-run"),
    pytest.param(Window(waiting=0, running=13, good_fraction=1.0), 3, 3, Memory(calm_since=T - 1000), 3,
                 "WithinTarget", (None, None, None), id="load-would-not-fit-in-fewer"),
    # --- down: after the window, below its highest recommendation never, one step at a time ---------------
    pytest.param(IDLE, 3, 3, Memory(), 3, "ScaleDownPending", (None, T, None), id="calm-starts-the-window"),
    pytest.param(IDLE, 3, 3, Memory(calm_since=T - 299), 3, "ScaleDownPending", (None, T - 299, None),
                 id="scale-down-waits-for-window"),
    pytest.param(IDLE, 3, 3, Memory(calm_since=T - 300), 2, "ScaleDownAfterStabilization", (None, T - 300, T),
                 id="one-step-down-after-window"),
    pytest.param(IDLE, 3, 3, Memory(calm_since=T - 300, peaks=((T - 200, 3),)), 3, "ScaleDownPending",
                 (None, T - 300, None), id="lull-shorter-than-window-keeps-the-burst-capacity"),
    pytest.param(IDLE, 3, 3, Memory(calm_since=T - 300, peaks=((T - 400, 6), (T - 200, 2))), 2,
                 "ScaleDownAfterStabilization", (None, T - 300, T), id="peaks-older-than-window-expire"),
    pytest.param(IDLE, 2, 2, Memory(calm_since=T - 400, last_scale_at=T - 10), 2, "ScaleDownPending",
                 (None, T - 400, T - 10), id="next-step-waits-step-interval"),
    pytest.param(IDLE, 1, 1, Memory(calm_since=T - 1000), 1, "WithinTarget", (None, None, None),
                 id="never-below-min"),
    pytest.param(Window(waiting=0, running=0, good_fraction=None), 1, 1, Memory(calm_since=T - 1000), 1,
                 "WithinTarget", (None, None, None), id="never-to-zero-on-its-own"),
    # --- missing data -----------------------------------------------------------------------------------
    pytest.param(None, 3, 3, Memory(calm_since=T - 1000, peaks=((T - 10, 1),), last_scale_at=T - 500), 3,
                 "MetricsMissing", (None, None, T - 500), id="missing-window-holds-and-forgets-the-window"),
    pytest.param(Window(waiting=None, running=None), 3, 3, Memory(calm_since=T - 1000), 3, "MetricsMissing",
                 (None, None, None), id="empty-window-is-not-idle"),
    pytest.param(Window(waiting=5, running=None), 1, 1, Memory(), 1, "MetricsMissing", (None, None, None),
                 id="half-a-window-is-missing"),
    # --- bounds -----------------------------------------------------------------------------------------
    pytest.param(None, 0, 0, Memory(), 1, "BelowMinReplicas", (None, None, T), id="below-min"),
    pytest.param(IDLE, 9, 9, Memory(), 8, "AboveMaxReplicas", (None, None, T), id="above-max"),
])
def test_decide(window, current, ready, memory, to, reason, timers):
    decision, after = decide(window, current, ready, P, memory, T)
    assert (decision.from_replicas, decision.to_replicas, decision.reason) == (current, to, reason)
    assert _timers(after) == timers
    assert decision.message


def test_missing_window_forgets_peaks_and_trend():
    _, after = decide(None, 3, 3, P, Memory(peaks=((T - 10, 5),), last_sample=(T - 15, 1.0, 2.0, 2.0)), T)
    assert after.peaks == () and after.last_sample is None


@pytest.mark.parametrize(("window", "last", "slots"), [
    pytest.param(Window(waiting=3, running=5), None, 8.0, id="no-rate-running-plus-waiting"),
    pytest.param(Window(waiting=3, running=5, request_rate=0.0), None, 8.0, id="zero-rate-running-plus-waiting"),
    pytest.param(Window(waiting=50, running=16, request_rate=8.0), (T - 10, 50.0, 0.0), 16.0,
                 id="steady-backlog-adds-nothing"),
    pytest.param(Window(waiting=50, running=16, request_rate=8.0), (T - 10, 30.0, 0.0), 20.0,
                 id="growing-backlog-is-arrivals"),
    pytest.param(Window(waiting=0, running=16, request_rate=8.0), (T - 10, 30.0, 0.0), 16.0,
                 id="draining-backlog-never-below-running"),
])
def test_demand_slots(window, last, slots):
    assert demand_slots(window, last, T) == pytest.approx(slots)


@pytest.mark.parametrize(("stabilization", "elapsed", "to"), [
    pytest.param(30, 10, 1, id="pending-within-up-window"),
    pytest.param(30, 30, 2, id="scales-after-up-window"),
])
def test_scale_up_stabilization(stabilization, elapsed, to):
    p = ScalingPolicy(**{**P.__dict__, "scale_up_stabilization_s": stabilization})
    burst = Window(waiting=20, running=8)
    decision, _ = decide(burst, 1, 1, p, Memory(pressure_since=T - elapsed), T)
    assert decision.to_replicas == to


def _run(windows, current, memory=Memory(), start=T, step=15.0, policy=P):
    """Feed windows one interval apart, the fleet always ready at once; the replica counts it goes through."""
    counts = []
    for i, w in enumerate(windows):
        decision, memory = decide(w, current, current, policy, memory, start + step * i)
        current = decision.to_replicas
        counts.append(current)
    return counts, memory


def test_flapping_load_never_scales_down():
    """Calm and busy windows alternating: the busy ones stay the window's highest, so no scale-down ever."""
    busy = Window(waiting=0, running=30, good_fraction=1.0)
    counts, _ = _run([IDLE if i % 2 else busy for i in range(80)], 4)
    assert counts == sorted(counts) and counts[-1] == 5  # one scale-up to 30/6 = 5, then held


def test_demand_hovering_on_a_boundary_does_not_flap():
    """12 slots is 2 replicas, 13 is 3: a fleet at 3 whose demand wobbles across the line is never resized."""
    wobble = [Window(waiting=0, running=13 if i % 3 == 0 else 12, good_fraction=1.0) for i in range(60)]
    counts, _ = _run(wobble, 3)
    assert set(counts) == {3}


def test_burst_then_lull_then_spike_keeps_capacity_through_a_short_lull():
    """A lull shorter than the window keeps the burst's replicas; after a long quiet they go, one per step."""
    burst = [Window(waiting=0, running=17, request_rate=15.0, good_fraction=1.0)] * 8
    lull = [Window(waiting=0, running=3, request_rate=2.6, good_fraction=1.0)] * 12  # 180 s
    counts, memory = _run(burst + lull, 2)
    assert max(counts) == 3 and counts[-1] == 3
    quiet, _ = _run([IDLE] * 30, counts[-1], memory, start=T + 15 * 20)
    assert quiet[-1] == 1 and all(b - a in (0, -1) for a, b in zip(quiet, quiet[1:]))


def test_restart_keeps_the_window():
    """The memory round-trips through status: a restarted operator resumes the calm run, not restarts it, and a
    fresh memory (nothing in status) never scales down at once."""
    _, memory = decide(IDLE, 3, 3, P, Memory(), T)
    decision, _ = decide(IDLE, 3, 3, P, Memory(calm_since=memory.calm_since, peaks=memory.peaks), T + 300)
    assert decision.to_replicas == 2
    decision, _ = decide(IDLE, 3, 3, P, Memory(), T + 300)
    assert decision.to_replicas == 3


def test_restart_keeps_the_peaks():
    """A burst's recommendation in status survives a restart: the lull after it does not shrink the fleet."""
    busy = Window(waiting=0, running=17, request_rate=15.0, good_fraction=1.0)
    _, memory = decide(busy, 3, 3, P, Memory(calm_since=T - 1000), T)
    assert memory.peaks[0][1] == 3
    decision, _ = decide(IDLE, 3, 3, P, Memory(calm_since=T - 1000, peaks=memory.peaks), T + 200)
    assert decision.to_replicas == 3


def test_memory_round_trips_through_status():
    from agentfleet.control.autoscaler import _memory

    body = {"status": {"autoscaler": {
        "belowTargetSince": "2026-01-01T00:00:00Z", "lastScaleTime": "2026-01-01T00:01:00Z",
        "peaks": [{"t": 1767225600.0, "replicas": 4}, {"t": 1767225660.0, "replicas": 2}],
        "lastSample": {"t": 1767225660.0, "waiting": 1.5, "demand": 9.25, "demandBefore": 7.0}}}}
    m = _memory(body)
    assert m.calm_since == 1767225600.0 and m.last_scale_at == 1767225660.0
    assert m.peaks == ((1767225600.0, 4), (1767225660.0, 2))
    assert m.last_sample == (1767225660.0, 1.5, 9.25, 7.0)
    assert _memory({"status": {"autoscaler": {"lastSample": {"t": 1.0}}}}).last_sample is None
    assert _memory({}) == Memory()


def test_from_spec_reads_the_crd_model():
    from agentfleet.api.modelfleet import AutoscalingSpec

    spec = AutoscalingSpec(min_replicas=2, max_replicas=5, scale_down_step_seconds=10, target_utilization=0.6,
                           replica_startup_seconds=120)
    p = ScalingPolicy.from_spec(spec, max_num_seqs=64)
    assert (p.min_replicas, p.max_replicas, p.scale_down_step_s, p.capacity_per_replica) == (2, 5, 10, 64)
    assert (p.target_utilization, p.replica_startup_s) == (0.6, 120)
    assert ScalingPolicy.from_spec(spec).capacity_per_replica == 256
