"""spec.inferencePool (issue 15, Gateway API Inference Extension): a ModelFleet renders an InferencePool
(inference.networking.k8s.io/v1) over exactly the engine pods that serve HTTP, on their serving port, when asked
for and the cluster serves the CRD; when the CRD is not served, condition InferencePoolAvailable says so. The
selector and port are read back from the rendered engine pods, so a drift between the pool and the engines
fails here."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from agentfleet import render, status
from agentfleet.api import parse
from agentfleet.errors import SpecError
from agentfleet.names import engine_name
from agentfleet.render.cluster import Capabilities
from agentfleet.render.modelfleet import LWS_WORKER_INDEX_LABEL

ALL = Capabilities(pod_monitor=True, leader_worker_set=True, inference_pool=True,
                   gpu_allocatable={"nvidia.com/gpu": 8})
NO_POOL = Capabilities(pod_monitor=True, leader_worker_set=True, gpu_allocatable={"nvidia.com/gpu": 8})
NOW = dt.datetime(2026, 12, 6, 10, 0, tzinfo=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
MULTI_NODE = {"parallelism": {"tensor": 8, "pipeline": 2}, "gpu": {"perNode": 8}}
PICKER = {"name": "qwen-epp", "port": 9002, "failureMode": "FailOpen"}


def _engine_pods(children: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """({labels, ports} of the engine pods that serve HTTP, with their http container ports; of the other engine
    pods), labelled as the pods will be: LeaderWorkerSet adds its worker-index label ("0" on a group's leader)."""
    pods = []
    for c in children:
        spec = c.get("spec") or {}
        if c["kind"] == "StatefulSet":
            pods.append((spec["template"], {}))
        lwt = spec.get("leaderWorkerTemplate")
        if lwt:
            pods += [(lwt["leaderTemplate"], {LWS_WORKER_INDEX_LABEL: "0"}),
                     (lwt["workerTemplate"], {LWS_WORKER_INDEX_LABEL: "1"})]
    serving, others = [], []
    for template, added in pods:
        labels = {**template["metadata"]["labels"], **added}
        ports = [p["containerPort"] for p in template["spec"]["containers"][0].get("ports", []) if p["name"] == "http"]
        (serving if ports else others).append({"labels": labels, "ports": ports})
    return serving, others


@pytest.mark.parametrize(
    "spec, caps, has_pool",
    [
        pytest.param({}, ALL, False, id="not-asked-for"),
        pytest.param({"inferencePool": {"enabled": True}}, ALL, True, id="asked-and-served"),
        pytest.param({"inferencePool": {"enabled": True}}, NO_POOL, False, id="crd-not-served"),
        pytest.param({"inferencePool": {"enabled": True}}, None, True, id="offline-renders-what-is-asked"),
        pytest.param({"inferencePool": {"enabled": False, "endpointPickerRef": PICKER}}, ALL, False,
                     id="picker-but-disabled"),
    ],
)
def test_pool_rendered_when_asked_for_and_served(kit, spec, caps, has_pool):
    fleet = kit.fleet("llm", spec)
    children = render.modelfleet(fleet, kit.defaults, caps)

    pools = [c for c in children if c["kind"] == "InferencePool"]
    assert len(pools) == int(has_pool)


@pytest.mark.parametrize(
    "engine, picker, leaders_only",
    [
        pytest.param({}, None, False, id="statefulset-no-picker"),
        pytest.param({}, PICKER, False, id="statefulset-with-picker"),
        pytest.param(MULTI_NODE, None, True, id="leaderworkerset-leaders-only"),
    ],
)
def test_pool_selects_exactly_the_serving_engine_pods_on_their_port(kit, engine, picker, leaders_only):
    pool_spec: dict[str, Any] = {"enabled": True, **({"endpointPickerRef": picker} if picker else {})}
    fleet = kit.fleet("llm", {"engine": engine, "inferencePool": pool_spec})
    children = render.modelfleet(fleet, kit.defaults, ALL)
    pool = kit.one(children, "InferencePool", engine_name(fleet.name))
    service = kit.one(children, "Service", engine_name(fleet.name))
    serving, others = _engine_pods(children)
    selector = pool["spec"]["selector"]["matchLabels"]

    assert (pool["apiVersion"], pool["kind"]) == ("inference.networking.k8s.io/v1", "InferencePool")
    assert set(pool["spec"]) == {"selector", "targetPorts"} | ({"endpointPickerRef"} if picker else set())
    assert set(pool["spec"]["selector"]) == {"matchLabels"}
    # The pods the gateway may pick are the ones the engine Service (and so the router) sends to.
    assert selector == service["spec"]["selector"]
    assert serving and all(selector.items() <= p["labels"].items() for p in serving)
    assert not any(selector.items() <= p["labels"].items() for p in others)
    assert len(others) == int(leaders_only)
    assert (LWS_WORKER_INDEX_LABEL in selector) is leaders_only
    # One target port: the engines' serving port, as the pods declare it.
    ports = {n for p in serving for n in p["ports"]}
    assert len(ports) == 1
    assert pool["spec"]["targetPorts"] == [{"number": ports.pop()}]
    assert pool["spec"].get("endpointPickerRef") == (
        {"name": picker["name"], "port": {"number": picker["port"]}, "failureMode": picker["failureMode"]}
        if picker else None)


def test_picker_failure_mode_defaults_to_fail_close_like_the_crd(kit):
    fleet = kit.fleet("llm", {"inferencePool": {"enabled": True, "endpointPickerRef": {"name": "epp", "port": 9002}}})
    pool = kit.one(render.modelfleet(fleet, kit.defaults, ALL), "InferencePool")

    assert pool["spec"]["endpointPickerRef"] == {"name": "epp", "port": {"number": 9002}, "failureMode": "FailClose"}


@pytest.mark.parametrize("uid", [pytest.param("6f1c2a9e-0d3b-4c1e-9a7f-2b8d5e4c3a10", id="with-uid"),
                                 pytest.param(None, id="offline-no-uid")])
def test_pool_is_an_owned_child_of_a_known_kind(kit, uid):
    fleet = kit.fleet("llm", {"inferencePool": {"enabled": True}}, uid=uid, labels=kit.owner_labels)
    children = render.modelfleet(fleet, kit.defaults, ALL)
    pool = kit.one(children, "InferencePool")

    assert kit.child_problems([pool], fleet) == []
    assert (pool["apiVersion"], pool["kind"]) in render.CHILD_KINDS["ModelFleet"]
    assert kit.aliased(children) == []


@pytest.mark.parametrize(
    "spec, path, message",
    [
        pytest.param({"baseUrl": "http://gpu-box:8000/v1", "inferencePool": {"enabled": True}},
                     "spec.inferencePool.enabled", "baseUrl", id="external-fleet-has-no-pods"),
        pytest.param({"inferencePool": {"enabled": True, "endpointPickerRef": {"name": "Epp", "port": 9002}}},
                     "spec.inferencePool.endpointPickerRef.name", "", id="picker-not-a-service-name"),
        pytest.param({"inferencePool": {"enabled": True, "endpointPickerRef": {"name": "epp", "port": 0}}},
                     "spec.inferencePool.endpointPickerRef.port", "", id="picker-port-zero"),
        pytest.param({"inferencePool": {"enabled": True, "endpointPickerRef": {"name": "epp"}}},
                     "spec.inferencePool.endpointPickerRef.port", "", id="picker-without-port"),
        pytest.param({"inferencePool": {"enabled": True, "endpointPickerRef": {"name": "epp", "port": 9002,
                                                                               "failureMode": "Retry"}}},
                     "spec.inferencePool.endpointPickerRef.failureMode", "", id="unknown-failure-mode"),
    ],
)
def test_pool_specs_the_crd_would_refuse_are_rejected(spec, path, message):
    doc = {"apiVersion": "agentfleet.io/v1alpha1", "kind": "ModelFleet", "metadata": {"name": "llm"},
           "spec": {"model": {"uri": "hf://acme/chat-7b"}, **spec}}
    with pytest.raises(SpecError) as err:
        parse(doc)
    assert any(p.path == path and message in p.message for p in err.value.problems), err.value.problems


def _workload(replicas: int, ready: int) -> dict[str, Any]:
    return {"status": {"replicas": replicas, "readyReplicas": ready}}


@pytest.mark.parametrize(
    "pool, caps, expected, in_message",
    [
        pytest.param({}, ALL, None, "", id="not-asked-for"),
        pytest.param({"enabled": True}, ALL, ("True", "Rendered"), "InferencePool llm-engine", id="rendered"),
        pytest.param({"enabled": True}, NO_POOL, ("False", "CRDNotServed"),
                     "does not serve InferencePool (inference.networking.k8s.io/v1)", id="crd-not-served"),
        pytest.param({"enabled": True}, None, None, "", id="cluster-not-read"),
    ],
)
def test_inference_pool_available_condition(kit, pool, caps, expected, in_message):
    fleet = kit.fleet("llm", {"inferencePool": pool})
    out = status.modelfleet(fleet, statefulset=_workload(1, 1), router=_workload(1, 1), now=NOW, capabilities=caps)
    conds = {c["type"]: c for c in out["conditions"]}
    cond = conds.get(status.INFERENCE_POOL_AVAILABLE)

    assert (None if cond is None else (cond["status"], cond["reason"])) == expected
    if cond is not None:
        assert in_message in cond["message"]
    # A missing pool CRD does not stop the fleet: its router still serves it.
    assert (conds["Ready"]["status"], conds["Degraded"]["status"]) == ("True", "False")


def test_condition_goes_away_when_the_pool_is_no_longer_asked_for(kit):
    before = kit.fleet("llm", {"inferencePool": {"enabled": True}})
    first = status.modelfleet(before, statefulset=_workload(1, 1), router=_workload(1, 1), now=NOW,
                              capabilities=NO_POOL)
    after = kit.fleet("llm", {}, status={"conditions": first["conditions"]})
    second = status.modelfleet(after, statefulset=_workload(1, 1), router=_workload(1, 1), now=NOW,
                               capabilities=NO_POOL)

    assert status.INFERENCE_POOL_AVAILABLE in {c["type"] for c in first["conditions"]}
    assert status.INFERENCE_POOL_AVAILABLE not in {c["type"] for c in second["conditions"]}
