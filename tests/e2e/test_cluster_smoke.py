"""Smoke test of the e2e control plane: a GPU-requesting StatefulSet pod lands on the fake kwok
node and becomes Ready. Self-contained: subprocess + the built kubectl only."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest

pytestmark = pytest.mark.e2e

FAKE_NODE = "kwok-node-0"


def kubectl(cluster, *args: str, input: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(
        [str(cluster.kubectl_path), "--kubeconfig", str(cluster.kubeconfig), *args],
        input=input, capture_output=True, text=True, timeout=60,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


def get_json(cluster, *args: str) -> dict:
    return json.loads(kubectl(cluster, *args, "-o", "json"))


def test_versions_and_authz(k8s_cluster):
    v = json.loads(kubectl(k8s_cluster, "version", "-o", "json"))
    assert v["clientVersion"]["gitVersion"] == "v1.35.4"
    assert v["serverVersion"]["gitVersion"] == "v1.35.4"
    # RBAC is on: an unprivileged ServiceAccount may not list secrets.
    out = kubectl(k8s_cluster, "auth", "can-i", "list", "secrets",
                  "--as=system:serviceaccount:default:default", check=False)
    assert out.strip() == "no"


def test_fake_gpu_node(k8s_cluster):
    node = get_json(k8s_cluster, "get", "node", FAKE_NODE)
    assert node["metadata"]["labels"]["type"] == "kwok"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    # Untainted by default, so that agentfleet's workloads schedule without tolerating kwok.
    assert not node["spec"].get("taints")


def test_fake_node_taint_is_optional():
    from e2e.cluster import launcher

    tainted = launcher.fake_node_manifest("n", taint=True)["spec"]["taints"]
    assert tainted == [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]
    assert launcher.fake_node_manifest("n")["spec"]["taints"] == []


def test_gpu_statefulset_pod_becomes_ready(k8s_cluster):
    ns = f"smoke-{uuid.uuid4().hex[:6]}"
    kubectl(k8s_cluster, "create", "namespace", ns)
    sts = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "gpu", "namespace": ns},
        "spec": {
            "serviceName": "gpu",
            "replicas": 1,
            "selector": {"matchLabels": {"app": "gpu"}},
            "template": {
                "metadata": {"labels": {"app": "gpu"}},
                "spec": {
                    "nodeSelector": {"kubernetes.io/hostname": FAKE_NODE},
                    "containers": [{
                        "name": "main",
                        "image": "registry.invalid/fake:latest",
                        "resources": {"limits": {"nvidia.com/gpu": "2"}},
                    }],
                },
            },
        },
    }
    try:
        kubectl(k8s_cluster, "apply", "-f", "-", input=json.dumps(sts))
        deadline = time.monotonic() + 90
        pod = {}
        while time.monotonic() < deadline:
            proc = subprocess.run(
                [str(k8s_cluster.kubectl_path), "--kubeconfig", str(k8s_cluster.kubeconfig),
                 "-n", ns, "get", "pod", "gpu-0", "-o", "json"],
                capture_output=True, text=True, timeout=30,
            )
            if proc.returncode == 0:
                pod = json.loads(proc.stdout)
                conds = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
                if conds.get("Ready") == "True":
                    break
            time.sleep(0.5)
        else:
            events = kubectl(k8s_cluster, "-n", ns, "get", "events", check=False)
            pytest.fail(f"pod gpu-0 not Ready in 90s: {json.dumps(pod.get('status'))}\n{events}")
        assert pod["spec"]["nodeName"] == FAKE_NODE
        assert pod["status"]["phase"] == "Running"
        assert pod["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == "2"
        deadline = time.monotonic() + 30
        while get_json(k8s_cluster, "-n", ns, "get", "statefulset", "gpu")["status"].get(
            "readyReplicas"
        ) != 1:
            assert time.monotonic() < deadline, "StatefulSet status.readyReplicas never reached 1"
            time.sleep(0.5)
    finally:
        kubectl(k8s_cluster, "delete", "namespace", ns, "--wait=false", check=False)
