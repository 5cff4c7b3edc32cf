"""Every child the ModelFleet renderer can produce, against the real schemas (issue 13): the Prometheus Operator's
PodMonitor, LeaderWorkerSet and Gateway API Inference Extension InferencePool (issue 15) CRDs taken from the
projects' released Go modules are installed on the test API server; each child is server-side dry-run applied in a
namespace labelled pod-security.kubernetes.io/enforce=restricted, and each pod template is dry-run created as a
Pod there (Pod Security admission enforces on Pods, not on the StatefulSets that make them). A wrong field in a
rendered LeaderWorkerSet, PodMonitor, InferencePool, NetworkPolicy or pod fails here. Then the operator's
reconcile, with its capability detection, renders a LeaderWorkerSet, a PodMonitor and an InferencePool on its own
and says so in status."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentfleet import render
from agentfleet.api import parse
from agentfleet.control import cluster as cluster_caps
from agentfleet.control import reconcile as rec
from agentfleet.render import Defaults
from agentfleet.render.cluster import Capabilities

pytestmark = pytest.mark.api

# (Go module, version, path inside it): the released CRD sources; cached under ~/.cache/agentfleet/crds.
THIRD_PARTY_CRDS = {
    "podmonitors.monitoring.coreos.com": ("github.com/prometheus-operator/prometheus-operator", "v0.85.0",
                                          "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml"),
    "leaderworkersets.leaderworkerset.x-k8s.io": ("sigs.k8s.io/lws", "v0.7.0",
                                                  "config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml"),
    # v1.5.0 made endpointPickerRef optional; v1.6.2 is the release the Go module proxy serves.
    "inferencepools.inference.networking.k8s.io": ("sigs.k8s.io/gateway-api-inference-extension", "v1.6.2",
                                                   "config/crd/bases/inference.networking.k8s.io_inferencepools.yaml"),
}
CACHE = Path(os.environ.get("AGENTFLEET_CACHE", Path.home() / ".cache" / "agentfleet")).expanduser() / "crds"
ALL = Capabilities(pod_monitor=True, leader_worker_set=True, inference_pool=True,
                   gpu_allocatable={"nvidia.com/gpu": 8})
API = "agentfleet.io/v1alpha1"


def crd_source(module: str, version: str, path: str) -> Path:
    """The CRD file from the module's release, through the Go module proxy (`go mod download`), cached."""
    cached = CACHE / module.replace("/", "_") / version / Path(path).name
    if cached.exists():
        return cached
    go = shutil.which("go")
    if go is None:
        pytest.skip(f"Go is not installed and {cached} is not cached")
    out = subprocess.run([go, "mod", "download", "-json", f"{module}@{version}"], capture_output=True, text=True,
                         timeout=600, cwd=CACHE.parent if CACHE.parent.exists() else None)
    info = json.loads(out.stdout or "{}")
    if out.returncode != 0 or "Dir" not in info:
        pytest.skip(f"go mod download {module}@{version} failed: {info.get('Error') or out.stderr[-300:]}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(info["Dir"]) / path, cached)
    return cached


@pytest.fixture(scope="module")
def third_party_crds(cluster):
    for module, version, path in THIRD_PARTY_CRDS.values():
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd_source(module, version, path)),
                        timeout=120)
    for name in THIRD_PARTY_CRDS:
        deadline = time.monotonic() + 60
        while True:  # `kubectl wait` right after the apply fails while the CRD has no status yet
            out = cluster.kubectl("get", f"crd/{name}", "-o",
                                  'jsonpath={.status.conditions[?(@.type=="Established")].status}', check=False)
            if out.stdout.strip() == "True":
                break
            assert time.monotonic() < deadline, f"CRD {name} not Established: {out.stdout} {out.stderr}"
            time.sleep(0.5)
    cluster.apply({"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                   "metadata": {"name": "agentfleet-test-inference"}, "value": 1000})
    cluster_caps._cache.clear()  # a detection from before the CRDs were installed must not linger
    yield


@pytest.fixture
def restricted(cluster):
    ns = f"r-{uuid.uuid4().hex[:8]}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {
        "pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}}})
    yield ns
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def fleet_doc(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API, "kind": "ModelFleet", "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, **spec}}


def pod_templates(child: dict[str, Any]) -> list[dict[str, Any]]:
    spec = child.get("spec") or {}
    if "template" in spec:
        return [spec["template"]]
    lwt = spec.get("leaderWorkerTemplate")
    return [lwt["leaderTemplate"], lwt["workerTemplate"]] if lwt else []


def dry_run(cluster, manifest: dict[str, Any], *, create: bool = False) -> subprocess.CompletedProcess[str]:
    verb = (["create", "--dry-run=server"] if create else
            ["apply", "--server-side", "--dry-run=server", "--field-manager=agentfleet"])
    return cluster.kubectl(*verb, "-o", "json", "-f", "-", input=json.dumps(manifest), check=False)


LAYOUTS = [
    pytest.param({}, id="defaults"),
    pytest.param({"engine": {"parallelism": {"tensor": 8, "pipeline": 2}, "gpu": {"perNode": 8}},
                  "inferencePool": {"enabled": True}}, id="leaderworkerset"),
    pytest.param({"model": {"uri": "pvc://weights/qwen"}, "engine": {
        "cache": {"mode": "PerReplica", "size": "100Gi"}, "drain": {"shutdownTimeoutSeconds": 300},
        "pod": {"tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
                "priorityClassName": "agentfleet-test-inference", "imagePullSecrets": [{"name": "regcred"}],
                "serviceAccountName": "weights-reader", "labels": {"team": "ml"},
                "env": [{"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"}],
                "volumes": [{"name": "extra", "configMap": {"name": "extra"}}],
                "volumeMounts": [{"name": "extra", "mountPath": "/etc/extra"}]}},
        "router": {"resources": {"cpu": "500m", "memory": "1Gi"}, "pod": {"nodeSelector": {"pool": "cpu"}}},
        "adapters": [{"name": "sql", "uri": "pvc://adapters/sql"}],
        "networkPolicy": {"allowFrom": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "ingress"}}}]},
        "autoscaling": {"podMonitorLabels": {"release": "kube-prometheus-stack"}},
        "inferencePool": {"enabled": True, "endpointPickerRef": {"name": "qwen-epp", "port": 9002,
                                                                 "failureMode": "FailOpen"}}}, id="everything-set"),
    pytest.param({"engine": {"cache": {"mode": "Shared", "claimName": "weights"}}}, id="shared-cache"),
]


@pytest.mark.parametrize("spec", LAYOUTS)
def test_every_child_passes_the_real_schemas_in_a_restricted_namespace(cluster, third_party_crds, restricted, spec):
    doc = fleet_doc("llm", restricted, spec)
    # The CR itself: the generated schema and its CEL rules accept it.
    accepted = dry_run(cluster, doc)
    assert accepted.returncode == 0, accepted.stderr
    fleet = parse(doc)
    children = render.modelfleet(fleet, Defaults(), ALL)
    kinds = {c["kind"] for c in children}
    assert {"PodMonitor", "NetworkPolicy", "Service", "Deployment"} <= kinds
    assert kinds & {"StatefulSet", "LeaderWorkerSet"}
    assert ("InferencePool" in kinds) is fleet.spec.inference_pool.enabled

    # ServiceAccounts the pods name must exist for a Pod to be admitted.
    for sa in {render_sa for c in children for t in pod_templates(c)
               if (render_sa := t["spec"].get("serviceAccountName"))}:
        cluster.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa,
                                                                                   "namespace": restricted}})
    failures = {}
    for child in children:
        out = dry_run(cluster, child)
        if out.returncode != 0:
            failures[f"{child['kind']}/{child['metadata']['name']}"] = out.stderr.strip()
        # A StatefulSet adds a claim volume per volumeClaimTemplate to each pod it makes: so does the probe.
        claims = [{"name": v["metadata"]["name"], "persistentVolumeClaim": {
            "claimName": f"{v['metadata']['name']}-{child['metadata']['name']}-0"}}
            for v in (child.get("spec") or {}).get("volumeClaimTemplates") or []]
        for i, t in enumerate(pod_templates(child)):
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": f"{child['metadata']['name']}-probe-{i}", "namespace": restricted,
                                "labels": t["metadata"].get("labels", {})},
                   "spec": {**t["spec"], "volumes": [*t["spec"].get("volumes", []), *claims]}}
            out = dry_run(cluster, pod, create=True)
            if out.returncode != 0:
                failures[f"{child['kind']}/{child['metadata']['name']} pod {i}"] = out.stderr.strip()
    assert failures == {}


REJECTED = [
    pytest.param({"engine": {"extraArgs": ["--pipeline-parallel-size", "2"]}}, "spec.engine.extraArgs",
                 id="pp-in-extra-args"),
    pytest.param({"engine": {"extraArgs": ["--tensor-parallel-size=4"]}}, "spec.engine.extraArgs",
                 id="tp-in-extra-args"),
    pytest.param({"engine": {"parallelism": {"tensor": 6, "pipeline": 2}, "gpu": {"perNode": 8}}},
                 "spec.engine.gpu.perNode", id="not-a-multiple-of-per-node"),
    pytest.param({"engine": {"parallelism": {"tensor": 4}, "gpu": {"count": 2}}}, "spec.engine.gpu.count",
                 id="count-below-tp"),
]


@pytest.mark.parametrize("spec, field", REJECTED)
def test_the_api_server_rejects_layouts_the_renderer_cannot_honour(cluster, kubectl, spec, field):
    out = dry_run(cluster, fleet_doc("llm", kubectl.ns, spec))
    assert out.returncode != 0
    assert field in out.stderr, out.stderr


def test_reconcile_detects_the_cluster_and_renders_for_it(cluster, third_party_crds, kube, kubectl):
    doc = fleet_doc("big", kubectl.ns, {"engine": {"parallelism": {"tensor": 16}, "gpu": {"perNode": 8}}})
    kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    body = kubectl.get("modelfleet", "big")
    rec.reconcile(kube, body, defaults=Defaults(), now=dt.datetime.now(dt.timezone.utc))

    lws = kubectl.get("leaderworkerset", "big-engine")
    pm = kubectl.get("podmonitor", "big-engine")
    st = kubectl.get("modelfleet", "big")["status"]
    assert lws is not None and lws["spec"]["leaderWorkerTemplate"]["size"] == 2
    assert pm is not None and pm["spec"]["podMetricsEndpoints"][0]["port"] == "http"
    assert kubectl.get("statefulset", "big-engine") is None
    assert (st["workload"], st["metricsDiscovery"], st["gpusPerReplica"], st["podsPerReplica"]) == (
        "LeaderWorkerSet", "PodMonitor", 16, 2)


def test_reconcile_renders_an_owned_inference_pool_over_the_serving_engines(cluster, third_party_crds, kube, kubectl):
    doc = fleet_doc("gw", kubectl.ns, {"inferencePool": {"enabled": True}})
    kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    cluster_caps._cache.clear()
    rec.reconcile(kube, kubectl.get("modelfleet", "gw"), defaults=Defaults(), now=dt.datetime.now(dt.timezone.utc))

    pool = kubectl.get("inferencepool", "gw-engine")
    svc = kubectl.get("service", "gw-engine")
    sts = kubectl.get("statefulset", "gw-engine")
    fleet = kubectl.get("modelfleet", "gw")
    assert pool is not None and svc is not None and sts is not None
    container = sts["spec"]["template"]["spec"]["containers"][0]
    http = [p["containerPort"] for p in container["ports"] if p["name"] == "http"]
    assert pool["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    assert pool["spec"]["selector"]["matchLabels"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert pool["spec"]["targetPorts"] == [{"number": n} for n in http]
    assert [(r["kind"], r["name"], r["uid"], r.get("controller")) for r in pool["metadata"]["ownerReferences"]] == [
        ("ModelFleet", "gw", fleet["metadata"]["uid"], True)]
    cond = kubectl.condition("modelfleet", "gw", "InferencePoolAvailable")
    assert (cond["status"], cond["reason"]) == ("True", "Rendered"), cond

    # Switched off: the pool is pruned and the condition goes with it.
    kubectl("patch", "modelfleet", "gw", "--type=merge", "-p",
            json.dumps({"spec": {"inferencePool": {"enabled": False}}}))
    rec.reconcile(kube, kubectl.get("modelfleet", "gw"), defaults=Defaults(), now=dt.datetime.now(dt.timezone.utc))
    assert kubectl.get("inferencepool", "gw-engine") is None
    assert kubectl.condition("modelfleet", "gw", "InferencePoolAvailable") is None


def test_the_inference_pool_schema_really_enforces(cluster, third_party_crds, kubectl):
    """Negative control: the released CRD refuses a pool without targetPorts, so the dry-runs above prove something."""
    bad = {"apiVersion": "inference.networking.k8s.io/v1", "kind": "InferencePool",
           "metadata": {"name": "bad", "namespace": kubectl.ns},
           "spec": {"selector": {"matchLabels": {"app": "vllm"}}}}
    out = dry_run(cluster, bad)
    assert out.returncode != 0 and "targetPorts" in out.stderr, out.stderr


def test_a_replica_that_fits_no_node_says_so(cluster, third_party_crds, kube, kubectl):
    # The fake node offers 8 nvidia.com/gpu; one pod of 16 fits nowhere.
    doc = fleet_doc("huge", kubectl.ns, {"engine": {"parallelism": {"tensor": 16}}})
    kubectl("apply", "-f", "-", input=yaml.safe_dump(doc))
    cluster_caps._cache.clear()
    rec.reconcile(kube, kubectl.get("modelfleet", "huge"), defaults=Defaults(),
                  now=dt.datetime.now(dt.timezone.utc))

    ready = kubectl.condition("modelfleet", "huge")
    degraded = kubectl.condition("modelfleet", "huge", "Degraded")
    assert (ready["status"], ready["reason"]) == ("False", "ReplicaDoesNotFit")
    assert degraded["status"] == "True" and "engine.gpu.perNode: 8" in degraded["message"]


def test_the_restricted_namespace_really_enforces(cluster, restricted):
    """Negative control: the pod the engine template was before issue 13 (no securityContext) is refused."""
    bare = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare", "namespace": restricted},
            "spec": {"containers": [{"name": "vllm", "image": "vllm/vllm-openai:v0.11.0"}]}}
    out = dry_run(cluster, bare, create=True)
    assert out.returncode != 0 and "violates PodSecurity" in out.stderr, out.stderr


@pytest.mark.parametrize(
    "before, after, accepted",
    [
        pytest.param({}, {"mode": "PerReplica"}, False, id="emptydir-to-per-replica"),
        pytest.param({"mode": "PerReplica"}, {"mode": "EmptyDir"}, False, id="per-replica-to-emptydir"),
        pytest.param({"mode": "PerReplica", "size": "100Gi"}, {"mode": "PerReplica", "size": "200Gi"}, False,
                     id="per-replica-resize"),
        pytest.param({}, {"size": "50Gi"}, True, id="emptydir-resize"),
        pytest.param({}, {"mode": "Shared", "claimName": "w"}, True, id="emptydir-to-shared"),
    ],
)
def test_claim_templates_never_change_under_a_statefulset(kubectl, before, after, accepted):
    kubectl("apply", "-f", "-", input=yaml.safe_dump(fleet_doc("c", kubectl.ns, {"engine": {"cache": before}})))
    out = kubectl("apply", "-f", "-", input=yaml.safe_dump(fleet_doc("c", kubectl.ns, {"engine": {"cache": after}})),
                  check=False)
    assert (out.returncode == 0) is accepted, out.stderr
    if not accepted:
        assert "spec.engine.cache" in out.stderr
