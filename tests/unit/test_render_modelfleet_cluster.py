"""render.modelfleet on a real GPU cluster (issue 13): vLLM drains on scale-down, tensor x pipeline parallelism
with a LeaderWorkerSet when a replica spans nodes, a PodMonitor when the Prometheus Operator is there, a bounded
weight cache, pods that pass a `restricted` namespace, NetworkPolicies, the pod options platform teams set, and
LoRA adapters. Each row failed on the code before it."""

from __future__ import annotations

from typing import Any

import pytest

from agentfleet import render
from agentfleet.api import parse
from agentfleet.errors import SpecError
from agentfleet.names import ENGINE_PORT, ROUTER_PORT, engine_name, router_name
from agentfleet.render.cluster import Capabilities
from agentfleet.render.modelfleet import (
    LWS_RAY_SCRIPT, LWS_WORKER_INDEX_LABEL, engine_args, grace_period_seconds, supports_shutdown_timeout,
)

ALL = Capabilities(pod_monitor=True, leader_worker_set=True, gpu_allocatable={"nvidia.com/gpu": 8})
BARE = Capabilities(gpu_allocatable={"nvidia.com/gpu": 8})


def _children(kit, spec=None, caps: Capabilities | None = None, **meta):
    fleet = kit.fleet(spec=spec, **meta)
    return fleet, render.modelfleet(fleet, kit.defaults, caps)


def _kinds(children) -> list[str]:
    return [c["kind"] for c in children]


def _pod_templates(children) -> list[tuple[str, dict[str, Any]]]:
    """(where, pod template) of every pod the children would create."""
    out = []
    for c in children:
        spec = c.get("spec") or {}
        if "template" in spec:
            out.append((f"{c['kind']}/{c['metadata']['name']}", spec["template"]))
        lwt = spec.get("leaderWorkerTemplate")
        if lwt:
            out += [(f"{c['kind']}/{c['metadata']['name']}/leader", lwt["leaderTemplate"]),
                    (f"{c['kind']}/{c['metadata']['name']}/worker", lwt["workerTemplate"])]
    return out


def restricted_violations(template: dict[str, Any]) -> list[str]:
    """What Pod Security's `restricted` profile (v1.35) rejects in a pod template, for the fields we set."""
    spec = template["spec"]
    pod_sc = spec.get("securityContext") or {}
    out = []
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            out.append(flag)
    for v in spec.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= {"emptyDir", "persistentVolumeClaim", "configMap", "secret", "projected", "downwardAPI",
                         "ephemeral", "csi"}:
            out.append(f"volume {v['name']}: {kinds}")
    for c in [*(spec.get("initContainers") or []), *spec["containers"]]:
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{c['name']}: allowPrivilegeEscalation")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            out.append(f"{c['name']}: capabilities.drop ALL")
        if set((sc.get("capabilities") or {}).get("add") or []) - {"NET_BIND_SERVICE"}:
            out.append(f"{c['name']}: capabilities.add")
        if not (sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True):
            out.append(f"{c['name']}: runAsNonRoot")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            out.append(f"{c['name']}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{c['name']}: seccompProfile")
        if sc.get("privileged"):
            out.append(f"{c['name']}: privileged")
        if any(p.get("hostPort") for p in c.get("ports") or []):
            out.append(f"{c['name']}: hostPort")
    return out


# --- (2) drain: preStop, --shutdown-timeout, grace period ------------------------------------------------------

@pytest.mark.parametrize(
    "drain, image, pre_stop, flag, grace",
    [
        pytest.param({}, None, "15", "120", 150, id="defaults-pinned-image"),
        pytest.param({"preStopSeconds": 30, "shutdownTimeoutSeconds": 600}, None, "30", "600", 645, id="long"),
        pytest.param({"shutdownTimeoutSeconds": 0}, None, "15", None, 30, id="timeout-0-aborts-no-flag"),
        pytest.param({"preStopSeconds": 0}, None, None, "120", 135, id="no-pre-stop"),
        pytest.param({}, "vllm/vllm-openai:v0.11.0", "15", None, 150, id="old-image-no-flag"),
        pytest.param({}, "vllm/vllm-openai:v0.18.0", "15", "120", 150, id="first-image-with-flag"),
        pytest.param({}, "registry.corp/vllm@sha256:abc", "15", "120", 150, id="digest-taken-as-recent"),
    ],
)
def test_engine_drains_in_flight_requests(kit, drain, image, pre_stop, flag, grace):
    engine: dict[str, Any] = {"drain": drain}
    if image:
        engine["image"] = image
    fleet, children = _children(kit, {"engine": engine})
    sts = kit.one(children, "StatefulSet")
    c = kit.container(sts)
    pod = sts["spec"]["template"]["spec"]

    assert kit.flag(c["args"], "--shutdown-timeout") == flag
    assert (c.get("lifecycle") or {}).get("preStop", {}).get("exec", {}).get("command", [None, None])[1] == pre_stop
    assert pod["terminationGracePeriodSeconds"] == grace == grace_period_seconds(fleet)
    assert grace >= int(pre_stop or 0) + int(flag or 0)


def test_router_outlives_the_engines_drain(kit):
    fleet, children = _children(kit, {"engine": {"drain": {"shutdownTimeoutSeconds": 300}}})
    dep = kit.one(children, "Deployment", router_name(fleet.name))
    c = kit.container(dep)

    assert c["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 300 + int(
        c["lifecycle"]["preStop"]["exec"]["command"][1])


@pytest.mark.parametrize(
    "image, supported",
    [("vllm/vllm-openai:v0.32.0", True), ("vllm/vllm-openai:v0.17.1", False), ("vllm/vllm-openai:0.9.2", False),
     ("vllm/vllm-openai:v1.0.0", True), ("vllm/vllm-openai:latest", True), ("localhost:5000/vllm", True)],
    ids=["pinned", "0.17", "no-v", "1.0", "latest", "registry-port-no-tag"],
)
def test_shutdown_timeout_support_by_image_tag(image, supported):
    assert supports_shutdown_timeout(image) is supported


def test_default_image_supports_shutdown_timeout():
    assert supports_shutdown_timeout(render.Defaults().vllm_image)


# --- (4) parallelism: GPUs = TP x PP, LeaderWorkerSet across nodes --------------------------------------------

@pytest.mark.parametrize(
    "engine, caps, kind, gpus_per_pod, group, pp_flag, tp_flag",
    [
        pytest.param({"parallelism": {"tensor": 4, "pipeline": 2}}, ALL, "StatefulSet", "8", None, "2", "4",
                     id="tp4-pp2-one-node"),
        pytest.param({"tensorParallelSize": 2, "parallelism": {"pipeline": 2}}, ALL, "StatefulSet", "4", None,
                     "2", "2", id="deprecated-tp-with-pp"),
        pytest.param({"parallelism": {"tensor": 8, "pipeline": 2}, "gpu": {"perNode": 8}}, ALL, "LeaderWorkerSet",
                     "8", 2, "2", "8", id="tp8-pp2-two-nodes"),
        pytest.param({"parallelism": {"tensor": 16}, "gpu": {"perNode": 8}}, ALL, "LeaderWorkerSet", "8", 2,
                     None, "16", id="tp16-two-nodes"),
        pytest.param({"parallelism": {"tensor": 8}, "gpu": {"perNode": 8}}, ALL, "StatefulSet", "8", None, None,
                     "8", id="fits-per-node"),
        pytest.param({"parallelism": {"tensor": 8, "pipeline": 2}, "gpu": {"perNode": 8}}, None,
                     "LeaderWorkerSet", "8", 2, "2", "8", id="offline-render"),
        pytest.param({"parallelism": {"tensor": 8, "pipeline": 2}, "gpu": {"perNode": 8}}, BARE, None, None,
                     2, "2", "8", id="lws-crd-missing-no-workload"),
    ],
)
def test_parallelism_layout(kit, engine, caps, kind, gpus_per_pod, group, pp_flag, tp_flag):
    fleet, children = _children(kit, {"engine": engine}, caps)
    args = engine_args(fleet, kit.defaults)
    workloads = [c for c in children if c["kind"] in ("StatefulSet", "LeaderWorkerSet")]

    assert kit.flag(args, "--pipeline-parallel-size") == pp_flag
    assert kit.flag(args, "--tensor-parallel-size") == tp_flag
    assert ("--distributed-executor-backend" in args) is (group is not None)
    if kind is None:
        assert workloads == []
        return
    (w,) = workloads
    assert w["kind"] == kind
    templates = [t for _, t in _pod_templates([w])]
    for t in templates:
        res = t["spec"]["containers"][0]["resources"]
        assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == gpus_per_pod
    if group is not None:
        lwt = w["spec"]["leaderWorkerTemplate"]
        assert lwt["size"] == group
        assert w["spec"]["replicas"] == fleet.spec.replicas
        assert lwt["restartPolicy"] == "RecreateGroupOnPodRestart"


def test_leaderworkerset_leader_serves_and_workers_join(kit):
    fleet, children = _children(kit, {"engine": {"parallelism": {"tensor": 8, "pipeline": 2},
                                                 "gpu": {"perNode": 8}}}, ALL)
    lws = kit.one(children, "LeaderWorkerSet", engine_name(fleet.name))
    leader = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]
    worker = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]
    svc = kit.one(children, "Service", engine_name(fleet.name))

    assert LWS_RAY_SCRIPT in leader["command"][2] and "LWS_GROUP_SIZE" in leader["command"][2]
    assert leader["args"] == engine_args(fleet, kit.defaults)
    assert "startupProbe" in leader and "readinessProbe" in leader and "preStop" in leader["lifecycle"]
    assert LWS_RAY_SCRIPT in worker["command"][2] and "LWS_LEADER_ADDRESS" in worker["command"][2]
    assert "args" not in worker and "readinessProbe" not in worker and "ports" not in worker
    # Only the leaders serve HTTP: the router's endpoints and the PodMonitor select them alone.
    assert svc["spec"]["selector"][LWS_WORKER_INDEX_LABEL] == "0"
    assert kit.one(children, "PodMonitor")["spec"]["selector"]["matchLabels"][LWS_WORKER_INDEX_LABEL] == "0"


@pytest.mark.parametrize(
    "engine, path, message",
    [
        pytest.param({"extraArgs": ["--pipeline-parallel-size", "2"]}, "spec.engine.extraArgs", "parallelism",
                     id="pp-in-extra-args"),
        pytest.param({"extraArgs": ["--pipeline-parallel-size=2"]}, "spec.engine.extraArgs", "parallelism",
                     id="pp-equals-in-extra-args"),
        pytest.param({"extraArgs": ["-pp", "2"]}, "spec.engine.extraArgs", "parallelism", id="pp-short"),
        pytest.param({"extraArgs": ["--tensor-parallel-size", "2"]}, "spec.engine.extraArgs", "parallelism",
                     id="tp-in-extra-args"),
        pytest.param({"tensorParallelSize": 2, "parallelism": {"tensor": 4}}, "spec.engine.parallelism.tensor",
                     "not both", id="tp-two-values"),
        pytest.param({"parallelism": {"tensor": 4, "pipeline": 2}, "gpu": {"count": 4}}, "spec.engine.gpu.count",
                     "at least", id="count-below-tp-x-pp"),
        pytest.param({"parallelism": {"tensor": 6, "pipeline": 2}, "gpu": {"perNode": 8}},
                     "spec.engine.gpu.perNode", "multiple of", id="not-a-multiple-of-per-node"),
        pytest.param({"cache": {"mode": "Shared"}}, "spec.engine.cache.claimName", "claimName",
                     id="shared-cache-needs-claim"),
    ],
)
def test_layouts_the_renderer_cannot_honour_are_rejected(kit, engine, path, message):
    doc = {"apiVersion": "agentfleet.io/v1alpha1", "kind": "ModelFleet", "metadata": {"name": "llm"},
           "spec": {"model": {"uri": "hf://acme/chat-7b"}, "engine": engine}}
    with pytest.raises(SpecError) as err:
        parse(doc)
    assert any(p.path == path and message in p.message for p in err.value.problems), err.value.problems


# --- (3) metrics discovery -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "caps, labels, has_monitor",
    [
        pytest.param(ALL, {}, True, id="prometheus-operator"),
        pytest.param(ALL, {"release": "kube-prometheus-stack"}, True, id="helm-release-label"),
        pytest.param(BARE, {}, False, id="no-prometheus-operator"),
        pytest.param(None, {}, False, id="offline"),
    ],
)
def test_pod_monitor_when_the_prometheus_operator_is_installed(kit, caps, labels, has_monitor):
    fleet, children = _children(kit, {"autoscaling": {"podMonitorLabels": labels, "intervalSeconds": 30}}, caps)
    sts = kit.one(children, "StatefulSet")
    monitors = [c for c in children if c["kind"] == "PodMonitor"]

    # The annotations stay either way (an annotation-driven Prometheus keeps working).
    assert sts["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert len(monitors) == int(has_monitor)
    if has_monitor:
        (pm,) = monitors
        assert pm["apiVersion"] == "monitoring.coreos.com/v1"
        assert pm["metadata"]["name"] == engine_name(fleet.name)
        assert labels.items() <= pm["metadata"]["labels"].items()
        assert pm["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
        assert pm["spec"]["podMetricsEndpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]
        # The port it names is the engine container's.
        assert {"name": "http", "containerPort": ENGINE_PORT, "protocol": "TCP"} in kit.container(sts)["ports"]


# --- (8) weight cache ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "cache, volume, claim_template",
    [
        pytest.param({}, {"name": "cache", "emptyDir": {"sizeLimit": "200Gi"}}, None, id="default-bounded"),
        pytest.param({"size": "50Gi"}, {"name": "cache", "emptyDir": {"sizeLimit": "50Gi"}}, None, id="sized"),
        pytest.param({"mode": "PerReplica", "size": "300Gi", "storageClassName": "fast"}, None,
                     {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "300Gi"}},
                      "storageClassName": "fast"}, id="per-replica-claims"),
        pytest.param({"mode": "Shared", "claimName": "weights"},
                     {"name": "cache", "persistentVolumeClaim": {"claimName": "weights"}}, None, id="shared-claim"),
    ],
)
def test_weight_cache(kit, cache, volume, claim_template):
    _, children = _children(kit, {"engine": {"cache": cache}})
    sts = kit.one(children, "StatefulSet")
    templates = sts["spec"].get("volumeClaimTemplates")

    assert kit.volume(sts, "cache") == volume
    assert kit.mount(kit.container(sts), "cache") == {"name": "cache", "mountPath": "/cache"}
    assert (templates[0]["spec"] if templates else None) == claim_template
    if templates:
        assert templates[0]["metadata"]["name"] == "cache"


def test_multi_node_pods_keep_a_bounded_cache(kit):
    _, children = _children(kit, {"engine": {"parallelism": {"tensor": 16}, "gpu": {"perNode": 8},
                                             "cache": {"mode": "PerReplica", "size": "80Gi"}}}, ALL)
    for where, t in _pod_templates([kit.one(children, "LeaderWorkerSet")]):
        cache = next(v for v in t["spec"]["volumes"] if v["name"] == "cache")
        assert cache == {"name": "cache", "emptyDir": {"sizeLimit": "80Gi"}}, where


# --- (9) restricted pods and NetworkPolicies ------------------------------------------------------------------

@pytest.mark.parametrize(
    "spec, caps",
    [
        pytest.param({}, ALL, id="defaults"),
        pytest.param({"engine": {"parallelism": {"tensor": 8, "pipeline": 2}, "gpu": {"perNode": 8}}}, ALL,
                     id="leaderworkerset"),
        pytest.param({"model": {"uri": "pvc://weights/m"}, "engine": {"cache": {"mode": "PerReplica"}},
                      "adapters": [{"name": "sql", "uri": "pvc://adapters/sql"}]}, ALL, id="claims"),
    ],
)
def test_every_pod_passes_the_restricted_pod_security_profile(kit, spec, caps):
    _, children = _children(kit, spec, caps)
    templates = _pod_templates(children)

    assert len(templates) >= 2
    assert {where: restricted_violations(t) for where, t in templates} == {where: [] for where, _ in templates}


def test_engine_writes_only_to_volumes(kit):
    _, children = _children(kit)
    sts = kit.one(children, "StatefulSet")
    c = kit.container(sts)
    mounted = {m["mountPath"] for m in c["volumeMounts"]}
    paths = {e["name"]: e["value"] for e in c["env"] if "value" in e}

    assert sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"] != 0
    for var in ("HF_HOME", "HOME", "XDG_CACHE_HOME", "VLLM_CACHE_ROOT", "TRITON_CACHE_DIR"):
        assert any(paths[var].startswith(m + "/") for m in mounted), var
    assert kit.volume(sts, "tmp")["emptyDir"]["sizeLimit"]


def test_network_policies_admit_only_the_fleets_callers(kit):
    fleet, children = _children(kit, {"networkPolicy": {"allowFrom": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}}]}})
    engine = kit.one(children, "NetworkPolicy", engine_name(fleet.name))
    router = kit.one(children, "NetworkPolicy", router_name(fleet.name))
    engine_pods = kit.one(children, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    router_pods = kit.one(children, "Deployment")["spec"]["template"]["metadata"]["labels"]

    def admitted(policy, labels) -> bool:
        for rule in policy["spec"]["ingress"]:
            for peer in rule["from"]:
                sel = peer.get("podSelector") or {}
                if "namespaceSelector" in peer:
                    continue  # other namespaces: checked below
                if sel.get("matchLabels", {}).items() <= labels.items() and all(
                        labels.get(e["key"]) in e["values"] for e in sel.get("matchExpressions", [])):
                    return True
        return False

    runtime = {"app.kubernetes.io/name": "agentfleet-runtime", "app.kubernetes.io/instance": "assistant"}
    stranger = {"app.kubernetes.io/name": "debug-shell"}
    assert engine["spec"]["podSelector"]["matchLabels"].items() <= engine_pods.items()
    assert router["spec"]["podSelector"]["matchLabels"].items() <= router_pods.items()
    assert admitted(engine, router_pods) and admitted(engine, runtime) and admitted(engine, engine_pods)
    assert not admitted(engine, stranger)
    assert admitted(router, runtime) and not admitted(router, stranger) and not admitted(router, engine_pods)
    assert engine["spec"]["policyTypes"] == router["spec"]["policyTypes"] == ["Ingress"]
    assert router["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": ROUTER_PORT}]
    for policy in (engine, router):
        peers = [p for r in policy["spec"]["ingress"] for p in r["from"]]
        assert {"namespaceSelector": {}, "podSelector": {"matchLabels": {
            "app.kubernetes.io/name": "prometheus"}}} in peers
        assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress"}}} in peers


def test_network_policies_can_be_turned_off(kit):
    _, children = _children(kit, {"networkPolicy": {"enabled": False}})
    assert "NetworkPolicy" not in _kinds(children)


# --- (10) pod options ------------------------------------------------------------------------------------------

POD = {
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}],
    "nodeSelector": {"pool": "h100"},
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
    "priorityClassName": "inference",
    "imagePullSecrets": [{"name": "regcred"}],
    "serviceAccountName": "weights-reader",
    "annotations": {"team": "ml"},
    "labels": {"cost-center": "42", "app.kubernetes.io/name": "hijack"},
    "env": [{"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"}],
    "envFrom": [{"configMapRef": {"name": "engine-env"}}],
    "volumes": [{"name": "certs", "configMap": {"name": "ca"}}],
    "volumeMounts": [{"name": "certs", "mountPath": "/etc/ssl/custom", "readOnly": True}],
}


@pytest.mark.parametrize("where", ["engine", "router"])
def test_pod_options_reach_the_pods(kit, where):
    spec: dict[str, Any] = {"router": {"resources": {"cpu": "1", "memory": "1Gi"}}}
    spec.setdefault(where, {})["pod"] = POD
    fleet, children = _children(kit, spec)
    workload = kit.one(children, "StatefulSet" if where == "engine" else "Deployment")
    t = workload["spec"]["template"]
    spec = t["spec"]
    c = kit.container(workload)

    assert POD["tolerations"][0] in spec["tolerations"]
    assert spec["nodeSelector"]["pool"] == "h100"
    assert spec["affinity"] == POD["affinity"]
    assert spec["priorityClassName"] == "inference"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}]
    assert t["metadata"]["annotations"]["team"] == "ml"
    assert t["metadata"]["labels"]["cost-center"] == "42"
    # Ours win: a user label cannot move a pod out of its selector.
    assert workload["spec"]["selector"]["matchLabels"].items() <= t["metadata"]["labels"].items()
    assert {"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"} in c["env"]
    assert {"configMapRef": {"name": "engine-env"}} in c["envFrom"]
    assert {"name": "certs", "configMap": {"name": "ca"}} in spec["volumes"]
    assert {"name": "certs", "mountPath": "/etc/ssl/custom", "readOnly": True} in c["volumeMounts"]
    if where == "engine":
        assert spec["serviceAccountName"] == "weights-reader"
        assert "automountServiceAccountToken" not in spec
    else:
        assert spec["serviceAccountName"] == router_name(fleet.name)  # it reads EndpointSlices under its own
        router = kit.container(kit.one(children, "Deployment"))
        assert router["resources"] == {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}


def test_user_env_overrides_ours(kit):
    _, children = _children(kit, {"engine": {"pod": {"env": [{"name": "HF_HOME", "value": "/data/hf"}]}}})
    env = kit.container(kit.one(children, "StatefulSet"))["env"]
    assert [e for e in env if e["name"] == "HF_HOME"] == [{"name": "HF_HOME", "value": "/data/hf"}]


def test_engine_without_service_account_gets_no_token(kit):
    _, children = _children(kit)
    assert kit.one(children, "StatefulSet")["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


# --- (10) LoRA adapters ----------------------------------------------------------------------------------------

def test_lora_adapters_are_served(kit):
    fleet, children = _children(kit, {"adapters": [{"name": "sql", "uri": "hf://acme/sql-lora"},
                                                   {"name": "legal", "uri": "pvc://adapters/legal/v2"}]})
    sts = kit.one(children, "StatefulSet")
    c = kit.container(sts)
    args = c["args"]
    start = args.index("--lora-modules")

    assert "--enable-lora" in args
    assert kit.flag(args, "--max-loras") == "2"
    assert args[start + 1:start + 3] == ["sql=acme/sql-lora", "legal=/mnt/adapters/adapters/legal/v2"]
    assert kit.volume(sts, "adapters-adapters") == {
        "name": "adapters-adapters", "persistentVolumeClaim": {"claimName": "adapters", "readOnly": True}}
    assert kit.mount(c, "adapters-adapters") == {"name": "adapters-adapters", "mountPath": "/mnt/adapters/adapters",
                                                 "readOnly": True}


def test_no_adapters_no_lora_flags(kit):
    fleet, _ = _children(kit)
    assert "--enable-lora" not in engine_args(fleet, kit.defaults)
