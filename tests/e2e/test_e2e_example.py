"""examples/agentapp.yaml on the deployed operator: every child exists with its owner, kwok makes the pods Ready,
every resource reaches Ready, kubectl's views answer, /scale reaches the StatefulSet, deletion collects."""

from __future__ import annotations

import json

import pytest

from e2e_kit import (
    apply_example, child_key, example_crs, expected_children, owned_by, wait_example_ready, wait_for,
)

pytestmark = pytest.mark.e2e


def test_example_app_reconciles_to_ready(ns, operator):
    apply_example(ns)
    # `kubectl wait --for=condition=Ready` works on every kind (status.conditions with observedGeneration).
    wait_example_ready(ns)
    for kind, name in example_crs():
        obj = ns.get(kind, name)
        assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"], (kind, name)

    expected = expected_children()
    found = {}
    for kind in ("StatefulSet", "Deployment", "Service", "ConfigMap", "ServiceAccount", "Job",
                 "PodDisruptionBudget", "Role", "RoleBinding", "PersistentVolumeClaim", "NetworkPolicy"):
        for item in ns.items(kind.lower()):
            # Children of our resources (a StatefulSet's own claims, owned by it, are the StatefulSet's business).
            owners = [r for r in item["metadata"].get("ownerReferences") or []
                      if r.get("controller") and r.get("apiVersion", "").startswith("agentfleet.io/")]
            if owners:
                found[child_key(kind, item["metadata"]["name"])] = item
    assert set(found) == set(expected), {"missing": set(expected) - set(found), "extra": set(found) - set(expected)}
    for key, (owner_kind, owner_name) in expected.items():
        assert owned_by(found[key], owner_kind, owner_name), key
    assert {k for k, _ in expected} >= {"StatefulSet", "Service", "Deployment", "Job", "ConfigMap"}

    # kwok ran every pod: engines and embedded Milvus Ready (its claim bound), routers and the app available.
    for key, obj in found.items():
        if key[0] == "StatefulSet":
            assert obj["status"].get("readyReplicas") == obj["spec"]["replicas"], key
        if key[0] == "Deployment":
            assert obj["status"].get("availableReplicas") == obj["spec"]["replicas"], key
    assert ns.get("pvc", "data-docs-milvus-0")["status"]["phase"] == "Bound"
    engines = [p for p in ns.items("pods") if p["metadata"]["name"].endswith("-engine-0")]
    assert sorted(p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] for p in engines) == ["1", "2"]

    # `kubectl get fleet` answers in one line per fleet: ready, desired, model, tensor parallelism, status.
    table = [line.split() for line in ns("get", "fleet").stdout.splitlines()]
    assert table[0][:5] == ["NAME", "READY", "DESIRED", "MODEL", "TP"]
    rows = {r[0]: r for r in table[1:]}
    assert rows["large"][1:5] == ["1", "1", "qwen2.5-32b-instruct", "2"]
    assert rows["small"][1:5] == ["1", "1", "gemma-3-270m", "1"]
    assert rows["large"][-2] == rows["small"][-2] == "Ready"
    # The category lists all four kinds.
    listing = ns("get", "agentfleet").stdout
    for kind in ("modelfleet.agentfleet.io/large", "modelfleet.agentfleet.io/small", "vectorindex.agentfleet.io/docs",
                 "agentapp.agentfleet.io/assistant", "budget.agentfleet.io/demo-budget"):
        assert kind in listing, listing


def test_kubectl_scale_reaches_the_statefulset_and_status(ns, operator):
    apply_example(ns)
    wait_example_ready(ns)
    ns("scale", "fleet/large", "--replicas=3")
    wait_for("StatefulSet large-engine at 3 replicas", lambda: ns.get("statefulset", "large-engine")["spec"]
             ["replicas"] == 3)
    status = wait_for("status 3/3 ready", lambda: (
        s if (s := ns.get("fleet", "large")["status"]).get("readyReplicas") == 3 and s.get("replicas") == 3
        else None), timeout=60)
    assert ns.get("statefulset", "large-engine")["status"]["readyReplicas"] == 3
    ns("wait", "--for=condition=Ready", "fleet/large", "--timeout=60s", timeout=70)
    row = next(r.split() for r in ns("get", "fleet").stdout.splitlines() if r.startswith("large "))
    assert row[1:3] == ["3", "3"], row
    scale = json.loads(ns.in_ns(None)(
        "get", "--raw", f"/apis/agentfleet.io/v1alpha1/namespaces/{ns.ns}/modelfleets/large/scale").stdout)
    assert scale["spec"]["replicas"] == scale["status"]["replicas"] == 3
    assert status["replicas"] == 3
    # Only the StatefulSet's replicas follow; the other fleet is untouched.
    assert ns.get("statefulset", "small-engine")["spec"]["replicas"] == 1


def test_deleting_the_app_garbage_collects_its_children(ns, operator):
    apply_example(ns)
    wait_example_ready(ns)
    app_children = [k for k, owner in expected_children().items() if owner == ("AgentApp", "assistant")]
    assert app_children
    for kind, name in app_children:
        assert ns.get(kind, name) is not None
    ns("delete", "app", "assistant", "--wait=true", timeout=60)
    # The garbage collector rediscovers new kinds every 30 s (facts.md): allow it well over a minute.
    wait_for("AgentApp children collected", lambda: all(ns.get(kind, name) is None for kind, name in app_children),
             timeout=120, interval=2)
    # Nothing else is collected: the fleets, the index and their children stay.
    for kind, name in example_crs():
        if kind != "AgentApp":
            assert ns.get(kind, name) is not None, (kind, name)
    assert ns.get("statefulset", "large-engine") is not None
    assert ns.get("statefulset", "docs-milvus") is not None
