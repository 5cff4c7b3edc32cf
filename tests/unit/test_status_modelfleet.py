"""status.modelfleet on a real GPU cluster (issue 13): engines that crash-loop, cannot pull their image or cannot
be scheduled turn the fleet Degraded with the pod's reason after engine.progressDeadlineSeconds (before: Progressing
forever); a replica that fits no node and a missing LeaderWorkerSet say so; MetricsAvailable tells whether the
autoscaler sees metrics and how they are discovered. Time is a parameter: `now` and the pods' timestamps."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from agentfleet import status
from agentfleet.pods import pod_problem, worst_problem
from agentfleet.render.cluster import Capabilities

T0 = dt.datetime(2026, 12, 6, 10, 0, tzinfo=dt.timezone.utc)


def stamp(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def ago(s: float) -> str:
    return stamp(T0 - dt.timedelta(seconds=s))


NOW = stamp(T0)


def pod(name: str = "llm-engine-0", *, age_s: float = 60, ready: bool = False, waiting: str | None = None,
        message: str = "", last_exit: tuple[str, int] | None = None, unschedulable: str | None = None,
        phase: str = "Pending", deleting: bool = False, restarts: int = 0) -> dict[str, Any]:
    conds = [{"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": ago(age_s)}]
    if unschedulable is not None:
        conds.append({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": unschedulable})
    cs: list[dict[str, Any]] = []
    if waiting is not None:
        c: dict[str, Any] = {"name": "vllm", "restartCount": restarts,
                             "state": {"waiting": {"reason": waiting, "message": message}}}
        if last_exit:
            c["lastState"] = {"terminated": {"reason": last_exit[0], "exitCode": last_exit[1]}}
        cs.append(c)
    meta: dict[str, Any] = {"name": name, "creationTimestamp": ago(age_s)}
    if deleting:
        meta["deletionTimestamp"] = NOW
    return {"metadata": meta, "status": {"phase": phase, "conditions": conds, "containerStatuses": cs}}


def workload(replicas: int, ready: int) -> dict[str, Any]:
    return {"status": {"replicas": replicas, "readyReplicas": ready}}


def _by_type(conds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in conds}


NO_GPU_FIT = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available"


@pytest.mark.parametrize(
    "pods, ready, reason, degraded, in_message",
    [
        pytest.param([pod(waiting="CrashLoopBackOff", message="back-off 5m0s", last_exit=("OOMKilled", 137),
                          restarts=6, age_s=700)], "False", "CrashLoopBackOff", "CrashLoopBackOff",
                     "OOMKilled (code 137), 6 restarts", id="crash-loop-past-deadline"),
        pytest.param([pod(waiting="CrashLoopBackOff", age_s=100)], "False", "ReplicasNotReady", None,
                     "CrashLoopBackOff", id="crash-loop-before-deadline-still-progressing"),
        pytest.param([pod(waiting="ImagePullBackOff", message="pull access denied", age_s=601)], "False",
                     "ImagePullBackOff", "ImagePullBackOff", "pull access denied", id="image-pull"),
        pytest.param([pod(waiting="ErrImagePull", age_s=900)], "False", "ErrImagePull", "ErrImagePull",
                     "llm-engine-0", id="err-image-pull"),
        pytest.param([pod(unschedulable=NO_GPU_FIT, age_s=3600)], "False", "Unschedulable", "Unschedulable",
                     "Insufficient nvidia.com/gpu", id="unschedulable"),
        pytest.param([pod(waiting="CreateContainerConfigError", message='secret "hf" not found', age_s=601)],
                     "False", "CreateContainerConfigError", "CreateContainerConfigError", 'secret "hf" not found',
                     id="missing-secret"),
        pytest.param([pod(age_s=1500)], "False", "ReplicasNotReady", None, "loading the model",
                     id="loading-a-long-time-is-not-a-failure"),
        pytest.param([pod(waiting="ContainerCreating", age_s=1500)], "False", "ReplicasNotReady", None,
                     "loading the model", id="container-creating-is-not-a-failure"),
        pytest.param([pod(waiting="CrashLoopBackOff", age_s=5000, deleting=True)], "False", "ReplicasNotReady",
                     None, "loading the model", id="terminating-pod-ignored"),
        pytest.param([pod(unschedulable=NO_GPU_FIT, age_s=700),
                      pod("llm-engine-1", waiting="ImagePullBackOff", age_s=30)], "False", "Unschedulable",
                     "Unschedulable", "llm-engine-0", id="only-pods-past-deadline-count"),
    ],
)
def test_engine_failures_become_degraded_after_the_deadline(kit, pods, ready, reason, degraded, in_message):
    fleet = kit.fleet("llm", {"engine": {"progressDeadlineSeconds": 600}, "replicas": 1}, generation=2)
    out = status.modelfleet(fleet, statefulset=workload(1, 0), router=workload(1, 1), now=NOW, pods=pods)
    conds = _by_type(out["conditions"])

    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == (ready, reason)
    assert in_message in conds["Ready"]["message"]
    if degraded:
        assert (conds["Degraded"]["status"], conds["Degraded"]["reason"]) == ("True", degraded)
        assert in_message in conds["Degraded"]["message"]
        assert conds["Progressing"]["status"] == "False"
    else:
        assert (conds["Degraded"]["status"], conds["Progressing"]["status"]) == ("False", "True")


def test_one_crash_looping_replica_degrades_a_serving_fleet(kit):
    fleet = kit.fleet("llm", {"replicas": 2})
    pods = [pod(ready=True, age_s=5000), pod("llm-engine-1", waiting="CrashLoopBackOff", age_s=900)]
    out = status.modelfleet(fleet, statefulset=workload(2, 1), router=workload(1, 1), now=NOW, pods=pods)
    conds = _by_type(out["conditions"])

    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("True", "Scaling")
    assert (conds["Degraded"]["status"], conds["Degraded"]["reason"]) == ("True", "CrashLoopBackOff")
    assert "llm-engine-1" in conds["Degraded"]["message"]


@pytest.mark.parametrize(
    "engine, caps, sts, reason, degraded, workload_kind, in_message",
    [
        pytest.param({"parallelism": {"tensor": 16}}, Capabilities(gpu_allocatable={"nvidia.com/gpu": 8}), None,
                     "ReplicaDoesNotFit", True, "StatefulSet", "engine.gpu.perNode: 8", id="tp16-on-8-gpu-nodes"),
        pytest.param({"parallelism": {"tensor": 6, "pipeline": 2}}, Capabilities(gpu_allocatable={
            "nvidia.com/gpu": 8}), None, "ReplicaDoesNotFit", True, "StatefulSet", "multiple of 8",
            id="12-gpus-not-a-multiple"),
        pytest.param({"parallelism": {"tensor": 16}, "gpu": {"perNode": 8}},
                     Capabilities(gpu_allocatable={"nvidia.com/gpu": 8}), None, "LeaderWorkerSetMissing", True,
                     "LeaderWorkerSet", "leaderworkerset.x-k8s.io", id="lws-missing"),
        pytest.param({"parallelism": {"tensor": 16}, "gpu": {"perNode": 8}},
                     Capabilities(leader_worker_set=True, gpu_allocatable={"nvidia.com/gpu": 8}), None, "Creating",
                     False, "LeaderWorkerSet", "LeaderWorkerSet", id="lws-being-created"),
        pytest.param({"parallelism": {"tensor": 16}, "gpu": {"perNode": 8}},
                     Capabilities(leader_worker_set=True, gpu_allocatable={"nvidia.com/gpu": 8}), workload(1, 1),
                     "Ready", False, "LeaderWorkerSet", "1 of 1", id="lws-ready"),
        pytest.param({"parallelism": {"tensor": 4}}, Capabilities(gpu_allocatable={}), None, "Creating", False,
                     "StatefulSet", "StatefulSet", id="no-gpu-node-yet-scale-from-zero"),
        pytest.param({"parallelism": {"tensor": 16}}, None, None, "Creating", False, "StatefulSet", "StatefulSet",
                     id="nodes-unknown"),
    ],
)
def test_replica_layout_against_the_cluster(kit, engine, caps, sts, reason, degraded, workload_kind, in_message):
    fleet = kit.fleet("llm", {"engine": engine})
    out = status.modelfleet(fleet, statefulset=sts, router=workload(1, 1), now=NOW, capabilities=caps)
    conds = _by_type(out["conditions"])

    assert conds["Ready"]["reason"] == reason
    assert in_message in conds["Ready"]["message"]
    assert (conds["Degraded"]["status"] == "True") is degraded
    assert out["workload"] == workload_kind
    assert out["gpusPerReplica"] == fleet.spec.engine.gpus
    assert out["podsPerReplica"] == fleet.spec.engine.pods_per_replica


@pytest.mark.parametrize(
    "autoscaler, autoscaling, caps, expected, in_message",
    [
        pytest.param(None, {}, None, None, "", id="not-evaluated-yet"),
        pytest.param({"lastReason": "MetricsMissing"}, {}, Capabilities(pod_monitor=True),
                     ("False", "MetricsMissing"), "podMonitorSelector", id="missing-with-podmonitor"),
        pytest.param({"lastReason": "MetricsMissing"}, {}, Capabilities(), ("False", "MetricsMissing"),
                     "PodMonitor CRD is not installed", id="missing-annotations-only"),
        pytest.param({"lastReason": "Steady"}, {"prometheusUrl": "http://prom:9090"}, Capabilities(),
                     ("True", "MetricsFlowing"), "http://prom:9090", id="flowing"),
        pytest.param({"lastReason": "MetricsMissing"}, {"enabled": False}, Capabilities(), None, "",
                     id="autoscaling-off"),
    ],
)
def test_metrics_available_condition(kit, autoscaler, autoscaling, caps, expected, in_message):
    st: dict[str, Any] = {"autoscaler": autoscaler} if autoscaler else {}
    fleet = kit.fleet("llm", {"autoscaling": autoscaling}, status=st)
    out = status.modelfleet(fleet, statefulset=workload(1, 1), router=workload(1, 1), now=NOW, capabilities=caps,
                            prometheus_url=autoscaling.get("prometheusUrl", "http://prometheus-operated:9090"))
    cond = _by_type(out["conditions"]).get(status.METRICS_AVAILABLE)

    assert out["metricsDiscovery"] == ("PodMonitor" if caps and caps.pod_monitor else "Annotations")
    assert (None if cond is None else (cond["status"], cond["reason"])) == expected
    if cond is not None:
        assert in_message in cond["message"]


def test_unschedulable_without_any_gpu_node_names_the_device_plugin(kit):
    fleet = kit.fleet("llm")
    out = status.modelfleet(fleet, statefulset=workload(1, 0), router=workload(1, 1), now=NOW,
                            pods=[pod(unschedulable=NO_GPU_FIT, age_s=900)],
                            capabilities=Capabilities(gpu_allocatable={}))
    degraded = _by_type(out["conditions"])["Degraded"]

    assert (degraded["status"], degraded["reason"]) == ("True", "Unschedulable")
    assert "no node advertises nvidia.com/gpu: is the GPU operator / device plugin installed" in degraded["message"]


def test_status_lists_the_adapters(kit):
    fleet = kit.fleet("llm", {"adapters": [{"name": "sql", "uri": "hf://acme/sql-lora"}]})
    assert status.modelfleet(fleet, statefulset=None, router=None, now=NOW)["adapters"] == ["sql"]


@pytest.mark.parametrize(
    "p, expected",
    [
        pytest.param(pod(ready=True), None, id="ready"),
        pytest.param(pod(), None, id="starting"),
        pytest.param(pod(waiting="CrashLoopBackOff", age_s=10), ("CrashLoopBackOff", 10.0), id="crash-loop"),
        pytest.param(pod(phase="Failed", age_s=20), ("PodFailed", 20.0), id="failed-phase"),
        pytest.param(pod(unschedulable="x", age_s=5), ("Unschedulable", 5.0), id="unschedulable"),
    ],
)
def test_pod_problem(p, expected):
    got = pod_problem(p, now=T0)
    assert (None if got is None else (got.reason, got.since_s)) == expected


def test_worst_problem_prefers_the_telling_reason():
    pods = [pod("a", unschedulable="x", age_s=900), pod("b", waiting="ImagePullBackOff", age_s=800)]
    assert worst_problem(pods, now=T0).pod == "b"
    assert worst_problem(pods, now=T0, min_since_s=850).pod == "a"
    assert worst_problem(pods, now=T0, min_since_s=1000) is None


@pytest.mark.parametrize(("last_reason", "state", "reason"), [
    ("MetricsMissing", "False", "MetricsMissing"),
    ("Hold", "True", "MetricsFlowing"),
], ids=["missing", "flowing"])
def test_the_autoscaler_writes_metrics_available_with_its_memo(kit, last_reason, state, reason):
    """One evaluation, one status write: the condition an evaluation implies is computed with it (the e2e restart
    test saw the condition arrive a reconcile later, a write after convergence)."""
    fleet = kit.fleet("llm", {"replicas": 1}, generation=2)
    conds = status.metrics_conditions(fleet, last_reason=last_reason, prometheus_url="http://prom:9090",
                                      now="2026-01-01T00:00:00Z")
    got = next(c for c in conds if c["type"] == "MetricsAvailable")
    assert (got["status"], got["reason"], got["observedGeneration"]) == (state, reason, 2)
    assert "http://prom:9090" in got["message"]
