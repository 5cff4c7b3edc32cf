"""decide(): tables of scenarios (burst, steady, missing data, flapping, bounds). Time is a parameter."""

from __future__ import annotations

import pytest

from agentfleet.scaling import Memory, ScalingPolicy, Window, decide

P = ScalingPolicy(min_replicas=1, max_replicas=8, target_queue_per_replica=4, ttft_p95_slo_s=2.0,
                  goodput_target=0.95, scale_up_stabilization_s=0, scale_down_stabilization_s=300,
                  scale_down_step_s=60, max_scale_up_factor=2.0, capacity_per_replica=8)
T = 10_000.0
IDLE = Window(waiting=0, running=1, good_fraction=1.0, ttft_p95_s=0.5)
STEADY = Window(waiting=1, running=10, good_fraction=0.99, ttft_p95_s=1.0)


@pytest.mark.parametrize(("window", "current", "ready", "memory", "now", "to", "reason", "memory_after"), [
    pytest.param(Window(waiting=40, running=16, good_fraction=0.9), 2, 2, Memory(), T, 4, "QueueAboveTarget",
                 Memory(last_scale_at=T), id="burst-doubles-not-more"),
    pytest.param(Window(waiting=9, running=8, good_fraction=1.0), 1, 1, Memory(), T, 2, "QueueAboveTarget",
                 Memory(last_scale_at=T), id="queue-just-over-target"),
    pytest.param(Window(waiting=400, running=64), 7, 7, Memory(), T, 8, "QueueAboveTarget",
                 Memory(last_scale_at=T), id="clamped-to-max"),
    pytest.param(Window(waiting=400, running=64), 8, 8, Memory(), T, 8, "AtMaxReplicas",
                 Memory(pressure_since=T), id="at-max-holds"),
    pytest.param(Window(waiting=0, running=5, good_fraction=0.5, ttft_p95_s=5.0), 2, 2, Memory(), T, 4,
                 "SLOMiss", Memory(last_scale_at=T), id="slo-miss-scales-by-severity-capped"),
    pytest.param(Window(waiting=0, running=5, ttft_p95_s=2.5), 2, 2, Memory(), T, 3, "SLOMiss",
                 Memory(last_scale_at=T), id="ttft-over-slo-without-histogram-counts"),
    pytest.param(Window(waiting=0, running=5, good_fraction=0.5, ttft_p95_s=5.0), 4, 2, Memory(), T, 4,
                 "WaitingForReplicas", Memory(), id="slo-miss-waits-for-starting-replicas"),
    pytest.param(Window(waiting=0, running=14, good_fraction=1.0), 2, 2, Memory(), T, 3,
                 "UtilizationAboveTarget", Memory(last_scale_at=T), id="headroom-before-the-queue"),
    pytest.param(Window(waiting=2, running=8, kv_cache_usage=0.95, good_fraction=1.0), 2, 2, Memory(), T, 3,
                 "KVCacheFull", Memory(last_scale_at=T), id="kv-cache-full-with-queue"),
    pytest.param(STEADY, 2, 2, Memory(calm_since=T - 100), T, 2, "WithinTarget", Memory(), id="steady-holds"),
    pytest.param(IDLE, 3, 3, Memory(), T, 3, "ScaleDownPending", Memory(calm_since=T),
                 id="calm-starts-the-window"),
    pytest.param(IDLE, 3, 3, Memory(calm_since=T - 299), T, 3, "ScaleDownPending", Memory(calm_since=T - 299),
                 id="scale-down-waits-for-window"),
    pytest.param(IDLE, 3, 3, Memory(calm_since=T - 300), T, 2, "ScaleDownAfterStabilization",
                 Memory(calm_since=T - 300, last_scale_at=T), id="one-step-down-after-window"),
    pytest.param(IDLE, 2, 2, Memory(calm_since=T - 400, last_scale_at=T - 30), T, 2, "ScaleDownPending",
                 Memory(calm_since=T - 400, last_scale_at=T - 30), id="next-step-waits-step-interval"),
    pytest.param(IDLE, 1, 1, Memory(calm_since=T - 1000), T, 1, "WithinTarget", Memory(), id="never-below-min"),
    pytest.param(IDLE, 1, 1, Memory(calm_since=T - 1000), T, 1, "WithinTarget", Memory(),
                 id="never-to-zero-on-its-own"),
    pytest.param(Window(waiting=0, running=10, good_fraction=1.0), 3, 3, Memory(calm_since=T - 1000), T, 3,
                 "WithinTarget", Memory(), id="load-would-not-fit-in-fewer"),
    pytest.param(None, 3, 3, Memory(calm_since=T - 1000), T, 3, "MetricsMissing", Memory(),
                 id="missing-window-holds-and-breaks-calm"),
    pytest.param(Window(waiting=None, running=None), 3, 3, Memory(calm_since=T - 1000), T, 3, "MetricsMissing",
                 Memory(), id="empty-window-is-not-idle"),
    pytest.param(None, 0, 0, Memory(), T, 1, "BelowMinReplicas", Memory(last_scale_at=T), id="below-min"),
    pytest.param(IDLE, 9, 9, Memory(), T, 8, "AboveMaxReplicas", Memory(last_scale_at=T), id="above-max"),
])
def test_decide(window, current, ready, memory, now, to, reason, memory_after):
    decision, after = decide(window, current, ready, P, memory, now)
    assert (decision.from_replicas, decision.to_replicas, decision.reason) == (current, to, reason)
    assert after == memory_after
    assert decision.message


@pytest.mark.parametrize(("stabilization", "elapsed", "to"), [
    pytest.param(30, 10, 1, id="pending-within-up-window"),
    pytest.param(30, 30, 2, id="scales-after-up-window"),
])
def test_scale_up_stabilization(stabilization, elapsed, to):
    p = ScalingPolicy(**{**P.__dict__, "scale_up_stabilization_s": stabilization})
    burst = Window(waiting=20, running=8)
    decision, _ = decide(burst, 1, 1, p, Memory(pressure_since=T - elapsed), T)
    assert decision.to_replicas == to


def test_flapping_load_never_scales_down():
    """Calm and busy windows alternating: each busy one breaks the calm run, so no scale-down ever happens."""
    memory, current = Memory(), 4
    for i in range(40):
        busy = Window(waiting=0, running=30, good_fraction=1.0)
        decision, memory = decide(IDLE if i % 2 else busy, current, current, P, memory, T + 60 * i)
        assert decision.to_replicas >= current
        current = decision.to_replicas


def test_restart_keeps_the_window():
    """The memory round-trips through status: a restarted operator resumes the calm run, not restarts it, and a
    fresh memory (nothing in status) never scales down at once."""
    _, memory = decide(IDLE, 3, 3, P, Memory(), T)
    decision, _ = decide(IDLE, 3, 3, P, Memory(calm_since=memory.calm_since), T + 300)
    assert decision.to_replicas == 2
    decision, _ = decide(IDLE, 3, 3, P, Memory(), T + 300)
    assert decision.to_replicas == 3


def test_from_spec_reads_the_crd_model():
    from agentfleet.api.modelfleet import AutoscalingSpec

    spec = AutoscalingSpec(min_replicas=2, max_replicas=5, scale_down_step_seconds=10)
    p = ScalingPolicy.from_spec(spec, max_num_seqs=64)
    assert (p.min_replicas, p.max_replicas, p.scale_down_step_s, p.capacity_per_replica) == (2, 5, 10, 64)
    assert ScalingPolicy.from_spec(spec).capacity_per_replica == 256
