"""The real-pod tier: the operator, the routers, the runtime and the engines run as real pods on a real node.

A second control plane (the same binaries as the rest of e2e) is started with its API server reachable from pods,
and a real node joins it (e2e/node: containerd and runc, a CNI bridge, kubelet and kube-proxy from the same
Kubernetes module, CoreDNS as pods). The images are built here without Docker: the project's own
images/Dockerfile through buildah on a locally bootstrapped Debian base (e2e/image/build.sh), and the engine
stand-in. Then, as a platform team would:

1. ``kubectl apply --server-side -k manifests/``: the operator's Deployment runs the real image, with in-cluster
   config through the ``kubernetes`` Service (kube-proxy) under its own ServiceAccount;
2. the app's namespace is labelled ``pod-security.kubernetes.io/enforce=restricted``, so every pod the operator
   renders is admitted by the real Pod Security admission or never runs;
3. two ModelFleets, a Budget and an AgentApp are applied; the operator renders the engine StatefulSets, the router
   Deployments and the runtime Deployment, the scheduler places them (GPUs are extended resources the node
   advertises, as a device plugin would), and the kubelet runs them with their probes, volumes, projected tokens and
   preStop hooks;
4. one chat completion goes to the runtime's Service (a ClusterIP, through kube-proxy): runtime -> router (Service
   DNS through CoreDNS) -> engine pods (found by the router from EndpointSlices the real controller writes);
5. the runtime publishes its Budget's status with its own token and Role.

The one stand-in is the engine (vLLM needs a GPU): llm-d-inference-sim, a third-party OpenAI-compatible simulator,
behind a ``vllm`` command that takes the rendered ``vllm serve`` args (e2e/node/images.py). NetworkPolicies are
enforced by kube-router's network policy controller (e2e/node/netpol.py), so the chat path above runs under the
fleets' policies and a pod they do not name is refused. Not exercised: PersistentVolume provisioning
(the runtime's ledger claim is bound to a statically created hostPath volume, as a cluster without a provisioner
would do it).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from e2e.cluster import launcher
from e2e.node import images, netpol, node
from e2e_kit import EXAMPLE, MANIFESTS, Kubectl, post_json, wait_for

pytestmark = pytest.mark.e2e

CLUSTER = "agentfleet-pods"
NS = "demo"
ROOT = Path(__file__).resolve().parents[2]
IMAGE_SCRIPT = ROOT / "e2e" / "image" / "build.sh"
ENGINE_IMAGE = "localhost/vllm-sim:v0.10.2"
PROBE_IMAGE = "localhost/busybox:local"
KEY = "demo-key-alice"


def _agentfleet_image() -> Path:
    p = subprocess.run(["bash", str(IMAGE_SCRIPT)], capture_output=True, text=True, timeout=3000)
    if p.returncode == 3:
        pytest.skip(f"the agentfleet image cannot be built here: {p.stderr.strip().splitlines()[-1:]}")
    assert p.returncode == 0, p.stderr[-3000:]
    paths = [line.split("=", 1)[1] for line in p.stdout.splitlines() if line.startswith("ghcr.io/agentfleet/")]
    assert paths, p.stdout
    return Path(paths[-1])


@pytest.fixture(scope="module")
def real_node():
    why = node.ensure_packages()
    if why:
        pytest.skip(f"no real node here: {why}")
    if not launcher.can_build():
        pytest.skip("Kubernetes binaries not built and Go not installed")
    from agentfleet.bench import simulator

    archives = [images.engine_sim(simulator.binary()), _agentfleet_image(), images.busybox(PROBE_IMAGE)]
    cluster = launcher.up(CLUSTER, fake_node=False, pod_address=node.host_address(), reuse=False)
    try:
        n = node.Node.start(kubeconfig=cluster.kubeconfig, kubectl=launcher.kubectl_path(), archives=archives,
                            extended={"nvidia.com/gpu": "4"})
    except BaseException:
        launcher.down(CLUSTER)
        raise
    try:
        netpol.start(n)  # NetworkPolicies are enforced from here on, for every test of this tier
    except BaseException:
        n.stop()
        launcher.down(CLUSTER)
        raise
    try:
        yield cluster, n
    finally:
        if os.environ.get("AGENTFLEET_E2E_KEEP") == "1":  # leave it running for a look (README: Tests)
            print(f"\n[real pods] kept: KUBECONFIG={cluster.kubeconfig}; node work dir {n.work}")
        else:
            n.stop()
            launcher.down(CLUSTER)


def _app_docs() -> list[dict]:
    """The example, as a user on one small node would cut it: no VectorIndex (its Milvus is a third-party image
    that is not here), so no retrieve tool; engines sized for a 2-CPU node, on the engine stand-in."""
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    keep = []
    for d in docs:
        if d["kind"] in ("VectorIndex",) or (d["kind"] == "ConfigMap"):
            continue
        d["metadata"]["namespace"] = NS
        spec = d.get("spec", {})
        if d["kind"] == "ModelFleet":
            spec["engine"]["image"] = ENGINE_IMAGE
            spec["engine"]["resources"] = {"cpu": "50m", "memory": "128Mi"}
            spec["engine"].pop("shmSize", None)
            spec["router"]["replicas"] = 1
            spec["router"]["resources"] = {"cpu": "50m", "memory": "256Mi"}
        if d["kind"] == "AgentApp":
            spec.pop("index")
            spec.pop("evaluation", None)
            spec["tools"]["builtin"] = ["calculator", "delegate"]
            for sub in spec["subAgents"]:
                sub["tools"] = ["calculator"]
            spec["resources"] = {"cpu": "50m", "memory": "256Mi"}
        keep.append(d)
    return keep


def _state_volume(n: node.Node) -> dict:
    path = n.work / "volumes" / "assistant-state"
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{NS}-assistant-state"},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Delete", "storageClassName": "",
                     "claimRef": {"namespace": NS, "name": "assistant-state"},
                     "hostPath": {"path": str(path), "type": "Directory"}}}


def _post(url: str, body: dict, timeout: float) -> tuple[int, dict]:
    return post_json(url, body, key=KEY, timeout=timeout)


def url_of(k: Kubectl, service: str) -> str:
    """The Service's ClusterIP: this machine reaches it through kube-proxy's rules, as a pod would."""
    svc = k.json("get", "service", service)
    return f"http://{svc['spec']['clusterIP']}:{svc['spec']['ports'][0]['port']}/v1/chat/completions"


def _engine_requests(pod_ip: str) -> float:
    text = urllib.request.urlopen(f"http://{pod_ip}:8000/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success"))  # the simulator drops _total (facts.md)


def _pods_ready(k: Kubectl) -> list[dict] | None:
    pods = k.items("pods")
    if pods and all(p["status"].get("phase") == "Running" and all(
            c.get("ready") for c in p["status"].get("containerStatuses", [])) for p in pods):
        return pods
    return None


def _why(k: Kubectl, n: node.Node) -> str:
    out = [k("get", "pods,events", "-o", "wide", check=False).stdout[-4000:]]
    for f in sorted((n.work / "logs" / "pods").glob("*/*/*.log"))[-12:]:
        out.append(f"--- {f.parent.parent.name}/{f.parent.name}\n" + f.read_text(errors="replace")[-1500:])
    return "\n".join(out)


@pytest.fixture(scope="module")
def app(real_node):
    """manifests/ and the app applied as a user would, every pod Running and Ready on the real node."""
    cluster, n = real_node
    admin = Kubectl(cluster)
    admin("apply", "--server-side", "-k", str(MANIFESTS))
    op = admin.in_ns("agentfleet-system")
    try:
        wait_for("the operator's Deployment available", lambda: (op.get("deployment", "agentfleet-operator") or {})
                 .get("status", {}).get("availableReplicas"), timeout=180, interval=2)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{_why(op, n)}") from None
    admin.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": NS, "labels": {"pod-security.kubernetes.io/enforce": "restricted",
                               "pod-security.kubernetes.io/enforce-version": "latest"}}})
    k = admin.in_ns(NS)
    admin.apply(_state_volume(n))
    k.apply(*_app_docs())
    try:
        pods = wait_for("every pod of the app Running and Ready", lambda: len(_pods_ready(k) or []) >= 5 and
                        _pods_ready(k), timeout=300, interval=3)
        wait_for("AgentApp assistant Ready", lambda: (k.condition("agentapp", "assistant") or {})
                 .get("status") == "True", timeout=120, interval=2)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{_why(k, n)}\n{_why(op, n)}") from None
    return k, n, pods


def test_operator_and_app_run_as_real_pods(app) -> None:
    k, n, pods = app
    by_name = {p["metadata"]["name"]: p for p in pods}
    assert {"small-engine-0", "large-engine-0"} <= set(by_name), sorted(by_name)
    roles = sorted(p["metadata"]["labels"].get("app.kubernetes.io/component", "?") for p in pods)
    assert roles.count("router") == 2 and roles.count("runtime") == 1, roles
    # Every pod ran on the real node, admitted by the restricted Pod Security level (a rejected pod never exists:
    # its ReplicaSet or StatefulSet reports FailedCreate, checked here, and the wait above would have timed out).
    assert {p["spec"]["nodeName"] for p in pods} == {node.NODE_NAME}
    failed = [e["message"] for e in k.items("events") if e.get("reason") == "FailedCreate"]
    assert not failed, failed

    engines = {name: p["status"]["podIP"] for name, p in by_name.items() if "-engine-" in name}
    before = sum(_engine_requests(ip) for ip in engines.values())
    url = url_of(k, "assistant")
    status, body = _post(url, {"model": "assistant", "stream": False,
                               "messages": [{"role": "user", "content": "What is 17 * 23?"}]}, timeout=120)
    assert status == 200, (status, body, _why(k, n))
    assert body["choices"][0]["message"]["content"], body
    assert sum(_engine_requests(ip) for ip in engines.values()) > before, "no request reached an engine pod"
    # Each router, inside its pod, found its fleet's engine pod through the EndpointSlices the real controller
    # wrote, and the chat went through the routers.
    routed = 0.0
    for name, p in by_name.items():
        if p["metadata"]["labels"].get("app.kubernetes.io/component") != "router":
            continue
        text = urllib.request.urlopen(f"http://{p['status']['podIP']}:8000/metrics", timeout=5).read().decode()
        healthy = [line for line in text.splitlines()
                   if line.startswith("agentfleet_router_replica_healthy{") and line.endswith(" 1")]
        assert len(healthy) == 1, (name, text[:2000])
        routed += sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                      if line.startswith("agentfleet_router_requests_total{"))
    assert routed >= 1
    # The operator, in its pod, shows what the runtime calls and whether it is up.
    ups = wait_for("AgentApp assistant UpstreamsReady", lambda: (k.condition("agentapp", "assistant", "UpstreamsReady")
                   or {}).get("status") == "True" and k.get("agentapp", "assistant")["status"]["upstreams"],
                   timeout=60, interval=2)
    assert sorted((u["kind"], u["name"], u["ready"]) for u in ups) == [("ModelFleet", "large", "True"),
                                                                      ("ModelFleet", "small", "True")], ups
    # The runtime's projected token and Role at work, from inside its pod: it patches its Budget's status.
    wait_for("the runtime to publish demo-budget's status",
             lambda: (k.get("budget", "demo-budget") or {}).get("status", {}).get("windowStart"), timeout=60)


def _probe(k: Kubectl, name: str, labels: dict[str, str], targets: dict[str, str],
           patience_s: int = 0) -> dict[str, str]:
    """Run a pod (restricted-compliant, labelled ``labels``) that tries each target URL; for each, "open" when a TCP
    connection was made (any HTTP answer, errors included), else "closed" with what wget said. With ``patience_s``
    a closed target is tried again, once a second, until it opens or that long has passed: a policy controller
    programs a new pod's address a moment after the pod starts (kube-router on the pod's update event), so "may
    reach" is "reaches within a few seconds", as in Kubernetes' own network policy e2e tests."""
    lines = [f'end=$(( $(date +%s) + {patience_s} )); while :; do '
             f'out=$(timeout 6 wget -q -O /dev/null {url} 2>&1); rc=$?; '
             f'case "$out" in *HTTP/*) rc=0;; esac; '
             f'if [ $rc = 0 ]; then echo "{key} open"; break; fi; '
             f'if [ $(date +%s) -ge $end ]; then echo "{key} closed rc=$rc $out"; break; fi; sleep 1; done'
             for key, url in targets.items()]
    k.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "spec": {
        "restartPolicy": "Never",
        "securityContext": {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "probe", "image": PROBE_IMAGE, "imagePullPolicy": "Never",
                        "command": ["/bin/sh", "-c", "\n".join(lines)],
                        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]}})
    try:
        wait_for(f"probe pod {name} to finish", lambda: (k.get("pod", name) or {}).get("status", {}).get("phase")
                 in ("Succeeded", "Failed"), timeout=150, interval=1)
        out = k("logs", name).stdout
    finally:
        k("delete", "pod", name, "--wait=false", check=False)
    got = {line.split(" ", 1)[0]: line.split(" ", 1)[1] for line in out.splitlines() if " " in line}
    assert set(got) == set(targets), out
    return got


def test_network_policies_are_enforced_on_the_real_node(app) -> None:
    """The fleets' NetworkPolicies hold on a real dataplane (kube-router's policy controller): a pod of the app's namespace
    that is none of the named peers reaches the runtime's Service, which has no policy, but neither an engine pod nor
    a router; the same probe labelled as a runtime pod reaches both, so the refusal is the policy's doing. The chat
    of the first test went runtime -> router -> engine under the same policies."""
    k, n, _ = app
    policies = sorted(p["metadata"]["name"] for p in k.items("networkpolicies"))
    assert {"small-engine", "small-router", "large-engine", "large-router"} <= set(policies), policies
    engine_ip = wait_for("small-engine-0's pod IP", lambda: (k.get("pod", "small-engine-0") or {})
                         .get("status", {}).get("podIP"), timeout=60)
    runtime = k.json("get", "service", "assistant")["spec"]["ports"][0]["port"]
    targets = {"engine": f"http://{engine_ip}:8000/health", "router": "http://small-router:8000/readyz",
               "runtime": f"http://assistant:{runtime}/healthz"}
    stranger = _probe(k, "probe-stranger", {"app.kubernetes.io/name": "curious"}, targets)
    assert stranger["runtime"] == "open", stranger
    assert stranger["engine"].startswith("closed") and stranger["router"].startswith("closed"), stranger
    peer = _probe(k, "probe-runtime-peer", {"app.kubernetes.io/name": "agentfleet-runtime"}, targets, patience_s=30)
    assert peer == {"engine": "open", "router": "open", "runtime": "open"}, peer


def test_an_engine_pod_deleted_mid_stream_finishes_the_stream(app) -> None:
    """Scale-down and rollout on a real kubelet: the rendered preStop keeps a deleted engine pod serving while the
    router and the Service let go of it, so a stream in flight ends whole, and the pod takes at least the preStop
    to go."""
    k, n, _ = app
    # A spec change rolls the engine StatefulSet (the operator renders, the controller replaces the pod): the
    # stand-in's own knob, which passes through extraArgs, makes a token every 50 ms so a stream lasts seconds.
    before = k.json("get", "pod", "small-engine-0")["metadata"]["uid"]
    k("patch", "modelfleet", "small", "--type=merge", "-p",
      json.dumps({"spec": {"engine": {"extraArgs": ["--inter-token-latency", "50ms"]}}}))

    def rolled() -> dict | None:
        p = k.get("pod", "small-engine-0") or {}
        ready = any(c.get("ready") for c in p.get("status", {}).get("containerStatuses", []))
        args = (p.get("spec", {}).get("containers") or [{}])[0].get("args", [])
        return p if p.get("metadata", {}).get("uid") != before and ready and "50ms" in args else None

    try:
        old = wait_for("small-engine-0 rolled with the new args and Ready", rolled, timeout=120, interval=1)
    except AssertionError as e:
        raise AssertionError(f"{e}\n{_why(k, n)}") from None
    # the router sees the new pod through its EndpointSlice
    wait_for("the small router to take the new engine pod", lambda: _post(
        url_of(k, "small-router"), {"model": "gemma-3-270m", "max_tokens": 1,
                                    "messages": [{"role": "user", "content": "hi"}]}, timeout=10)[0] == 200,
        timeout=60, interval=1)
    url = url_of(k, "small-router")
    tokens = 120  # 50 ms apart (the fleet's --inter-token-latency): a 6 s stream, inside the 15 s preStop
    got: dict = {"chunks": 0, "finish": None, "error": None}
    first = threading.Event()

    def stream() -> None:
        req = urllib.request.Request(url, method="POST", headers={"Content-Type": "application/json"},
                                     data=json.dumps({"model": "gemma-3-270m", "stream": True, "max_tokens": tokens,
                                                      "ignore_eos": True,
                                                      "messages": [{"role": "user", "content": "count"}]}).encode())
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                for raw in r:
                    line = raw.decode().strip()
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    choice = json.loads(line[6:])["choices"][0]
                    if choice.get("delta", {}).get("content"):
                        got["chunks"] += 1
                        first.set()
                    got["finish"] = choice.get("finish_reason") or got["finish"]
        except Exception as err:  # noqa: BLE001 - reported by the assertion below
            got["error"] = repr(err)
        finally:
            first.set()

    t = threading.Thread(target=stream)
    t.start()
    assert first.wait(30), "the stream never started"
    t0 = time.monotonic()
    k("delete", "pod", "small-engine-0", "--wait=false")
    t.join(60)
    assert got["error"] is None and got["finish"] == "length" and got["chunks"] == tokens, got
    gone = wait_for("the deleted engine pod to go", lambda: (k.get("pod", "small-engine-0") or {})
                    .get("metadata", {}).get("uid") != old["metadata"]["uid"] and time.monotonic(),
                    timeout=90, interval=0.5)
    pre_stop = old["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert gone - t0 >= float(pre_stop[1]) - 1, (gone - t0, pre_stop)
    assert old["spec"]["terminationGracePeriodSeconds"] >= float(pre_stop[1])
