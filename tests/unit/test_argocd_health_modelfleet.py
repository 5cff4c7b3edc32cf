"""manifests/argocd/health.lua, run by a real Lua interpreter (test_argocd_health's fixture), on
ModelFleet statuses that status.modelfleet() computes: a crash-looping, image-pull-failing or unschedulable engine
past its deadline, a replica that fits no node and a missing LeaderWorkerSet are Degraded in Argo CD (before:
Progressing forever); one still starting is Progressing; a serving fleet is Healthy."""

from __future__ import annotations

import pytest

from agentfleet import status
from agentfleet.render.cluster import Capabilities
from test_argocd_health import health
from test_argocd_health import lua  # noqa: F401 - the fixture: one interpreter for both files
from test_status_modelfleet import NOW, NO_GPU_FIT, pod, workload



@pytest.mark.parametrize(
    "engine, pods, sts, caps, state, in_message",
    [
        pytest.param({}, [pod(waiting="CrashLoopBackOff", age_s=900)], workload(1, 0), None, "Degraded",
                     "CrashLoopBackOff", id="crash-loop"),
        pytest.param({}, [pod(waiting="ImagePullBackOff", age_s=900)], workload(1, 0), None, "Degraded",
                     "ImagePullBackOff", id="image-pull"),
        pytest.param({}, [pod(unschedulable=NO_GPU_FIT, age_s=900)], workload(1, 0), None, "Degraded",
                     "Insufficient nvidia.com/gpu", id="unschedulable"),
        pytest.param({}, [pod(waiting="CrashLoopBackOff", age_s=60)], workload(1, 0), None, "Progressing",
                     "Degraded after", id="before-deadline"),
        pytest.param({"parallelism": {"tensor": 16}}, [], None, Capabilities(gpu_allocatable={"nvidia.com/gpu": 8}),
                     "Degraded", "largest node offers 8", id="does-not-fit"),
        pytest.param({"parallelism": {"tensor": 16}, "gpu": {"perNode": 8}}, [], None, Capabilities(), "Degraded",
                     "LeaderWorkerSet", id="lws-missing"),
        pytest.param({}, [pod(ready=True)], workload(1, 1), None, "Healthy", "1 of 1", id="serving"),
    ],
)
def test_argocd_health_of_a_modelfleet(kit, lua, engine, pods, sts, caps, state, in_message):
    fleet = kit.fleet("llm", {"engine": engine}, generation=3)
    st = status.modelfleet(fleet, statefulset=sts, router=workload(1, 1), now=NOW, pods=pods, capabilities=caps)
    obj = {"apiVersion": "agentfleet.io/v1alpha1", "kind": "ModelFleet",
           "metadata": {"name": "llm", "generation": 3}, "status": st}

    got, message = health(lua, obj)
    assert got == state
    assert in_message in message
