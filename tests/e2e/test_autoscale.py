"""Autoscaling end to end, through the discovery path a kube-prometheus-stack cluster has: a ModelFleet on the real
control plane, the PodMonitor the operator renders for it, the Prometheus Operator (built from its Go module, the
release whose CRDs the API tier checks) turning that PodMonitor into Prometheus's scrape configuration, and a real
Prometheus (built from its Go module with Kubernetes discovery: Debian's package leaves it out) discovering the
engine pods through the API server and scraping them. The operator's autoscaler reads that Prometheus: load rises
-> spec.replicas (through /scale) and the StatefulSet grow and status.lastScale says why; load stops -> after the
stabilisation window it scales back down one step at a time.

The pods are kwok's (nothing runs in them), scheduled on a fake node whose podCIDR is on the loopback range, so
each engine pod gets an address like 127.1.0.N; the "pod network" is a TCP forwarder from that address's port 8000
to an llm-d-inference-sim process (the engine's third-party stand-in). Two things differ from a Prometheus pod,
each because Prometheus runs outside the cluster: the `$(SHARD)`/`$(POD_NAME)` placeholders are expanded as the
operator's config-reloader sidecar expands them, and Kubernetes discovery gets the admin kubeconfig in place of an
in-cluster ServiceAccount."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import os
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from e2e_kit import wait_for

from agentfleet.bench import simulator
from agentfleet.names import ENGINE_PORT

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
FLEET = "scaler"
NODE = "kwok-loopback-net"
NODE_LABEL = {"agentfleet.io/e2e-net": "loopback"}
POD_CIDR = "127.1.0.0/24"
PROMETHEUS = "e2e"
MONITOR_LABELS = {"release": "e2e-kps"}  # a kube-prometheus-stack style selector on the Prometheus


def _build(script: str, what: str) -> str:
    try:
        out = subprocess.run(["bash", str(REPO / "e2e" / script)], capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"cannot build {what}: {err}")
    if out.returncode != 0:
        pytest.skip(f"cannot build {what} (exit {out.returncode}): {out.stderr[-800:]}")
    return out.stdout.strip().splitlines()[-1]


def _stop(proc: subprocess.Popen, log) -> None:
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    if proc.poll() is None:
        proc.kill()
    log.close()


@pytest.fixture(scope="session")
def monitoring_crds(kubectl_admin) -> Path:
    """The Prometheus Operator's CRDs from its module (the build downloads it), installed before the agentfleet
    operator starts (session scope, requested first) so that its first reconcile already sees PodMonitor."""
    binary = Path(_build("prometheus-operator/build.sh", "the Prometheus Operator"))
    version = binary.parent.name
    crds = (binary.parents[2] / "go" / "mod" / "github.com" / "prometheus-operator"
            / f"prometheus-operator@{version}" / "example" / "prometheus-operator-crd")
    files = sorted(crds.glob("monitoring.coreos.com_*.yaml"))
    assert files, f"no CRDs under {crds}"
    for f in files:
        kubectl_admin("apply", "--server-side", "--force-conflicts", "-f", str(f))
    for f in files:
        kubectl_admin("wait", "--for=condition=Established", f"crd/{f.stem.split('_', 1)[1]}.monitoring.coreos.com",
                      "--timeout=60s")
    return binary


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    return _build("prometheus/build.sh", "Prometheus")


@pytest.fixture(scope="module")
def prometheus_operator(monitoring_crds, kubectl_admin, k8s_cluster, tmp_path_factory):
    """The Prometheus Operator as a process, with the cluster's admin client certificate (what its in-cluster
    ServiceAccount would be), watching every namespace."""
    kubeconfig = yaml.safe_load(Path(k8s_cluster.kubeconfig).read_text())
    cluster = kubeconfig["clusters"][0]["cluster"]
    user = kubeconfig["users"][0]["user"]
    # It reads API discovery once at start and, finding none of its kinds, exits ("no controller can be started"):
    # discovery lists a new CRD's resources a moment after the CRD reports Established.
    def discovered() -> bool:
        out = kubectl_admin("get", "--raw", "/apis/monitoring.coreos.com/v1", check=False)
        names = {r["name"] for r in json.loads(out.stdout or "{}").get("resources", [])} if out.returncode == 0 \
            else set()
        return {"prometheuses", "podmonitors"} <= names
    wait_for("the Prometheus Operator's kinds in API discovery", discovered, timeout=60)
    log_path = tmp_path_factory.mktemp("prometheus-operator") / "operator.log"
    log = open(log_path, "wb")
    argv = [str(monitoring_crds), f"--apiserver={cluster['server']}", f"--ca-file={cluster['certificate-authority']}",
            f"--cert-file={user['client-certificate']}", f"--key-file={user['client-key']}",
            f"--web.listen-address=127.0.0.1:{simulator.free_port()}", "--kubelet-endpoints=false", "--log-level=info"]
    # KUBECONFIG wins over --apiserver in the Prometheus Operator (k8sutil.NewClusterConfig), and a whole-suite run
    # has the API tier's cluster there (tests/api/conftest.py sets it): name this cluster's.
    env = {**os.environ, "KUBECONFIG": str(k8s_cluster.kubeconfig)}
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    time.sleep(3)
    if proc.poll() is not None:
        log.close()
        pytest.fail(f"the Prometheus Operator exited (discovery here: {discovered()}): {log_path.read_text()[-2000:]}")
    try:
        yield log_path
    finally:
        _stop(proc, log)


@pytest.fixture(scope="module")
def loopback_node(kubectl_admin):
    """A fake GPU node whose pods get loopback addresses (kwok takes pod IPs from the node's podCIDR)."""
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "8"}
    kubectl_admin("apply", "-f", "-", input=json.dumps({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE, "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                     "labels": {"type": "kwok", "kubernetes.io/hostname": NODE, **NODE_LABEL}},
        "spec": {"podCIDR": POD_CIDR, "podCIDRs": [POD_CIDR]},
        "status": {"allocatable": resources, "capacity": resources}}))
    yield NODE
    kubectl_admin("delete", "node", NODE, "--wait=false", check=False)


@pytest.fixture(scope="module")
def sim_fleet():
    try:
        simulator.binary()
    except (FileNotFoundError, subprocess.CalledProcessError) as err:
        pytest.skip(f"llm-d-inference-sim unavailable: {err}")
    # One slot per replica and slow decoding: a handful of concurrent requests makes a queue.
    settings = simulator.SimSettings(max_num_seqs=1, inter_token_ms=50, prefill_ms_per_token=1)
    with simulator.running_fleet(3, settings) as sims:
        yield sims


class PodNetwork:
    """Each engine pod's address (127.1.0.N:8000) forwarded to the simulator standing in for that replica (pod
    ordinal i -> simulator i), for as long as the pod exists: what a CNI and the container would provide."""

    def __init__(self, ns, sims: list[str]):
        self.ns, self.sims = ns, [int(urllib.parse.urlsplit(u).port or 0) for u in sims]
        self.loop = asyncio.new_event_loop()
        self.servers: dict[str, asyncio.AbstractServer] = {}
        self.stop = threading.Event()
        self.errors: list[str] = []

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    def _handler(self, port: int):
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                ur, uw = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                w.close()
                return
            await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))
        return handle

    def _sync(self) -> None:
        pods = self.ns.items("pods")
        live = {}
        for pod in pods:
            name, ip = pod["metadata"]["name"], (pod.get("status") or {}).get("podIP")
            if not name.startswith(f"{FLEET}-engine-") or not ip or not ip.startswith("127."):
                continue
            ordinal = int(name.rsplit("-", 1)[1])
            if ordinal < len(self.sims):
                live[ip] = self.sims[ordinal]
        for ip in [ip for ip in self.servers if ip not in live]:
            self.servers.pop(ip).close()
        for ip, port in live.items():
            if ip not in self.servers:
                fut = asyncio.run_coroutine_threadsafe(
                    asyncio.start_server(self._handler(port), ip, ENGINE_PORT), self.loop)
                try:
                    self.servers[ip] = fut.result(10)
                except OSError as err:
                    self.errors.append(f"{ip}:{ENGINE_PORT}: {err}")

    def _watch(self) -> None:
        while not self.stop.wait(0.5):
            with contextlib.suppress(subprocess.CalledProcessError, json.JSONDecodeError):
                self._sync()

    def __enter__(self) -> PodNetwork:
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.watcher = threading.Thread(target=self._watch, daemon=True)
        self.watcher.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.watcher.join(10)
        for server in self.servers.values():
            self.loop.call_soon_threadsafe(server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


def generated_scrape_config(ns) -> dict | None:
    """What the Prometheus Operator wrote for the Prometheus `PROMETHEUS` (its Secret), as the config-reloader
    sidecar would hand it to Prometheus; None until it holds our fleet's PodMonitor."""
    secret = ns.get("Secret", f"prometheus-{PROMETHEUS}")
    raw = ((secret or {}).get("data") or {}).get("prometheus.yaml.gz")
    if not raw:
        return None
    text = gzip.decompress(base64.b64decode(raw)).decode()
    text = text.replace("$(SHARD)", "0").replace("$(POD_NAME)", f"prometheus-{PROMETHEUS}-0")
    config = yaml.safe_load(text)
    jobs = [j["job_name"] for j in config.get("scrape_configs") or []]
    return config if f"podMonitor/{ns.ns}/{FLEET}-engine/0" in jobs else None


@contextlib.contextmanager
def running_prometheus(binary: str, workdir: Path, config: dict, kubeconfig: str):
    for job in config.get("scrape_configs") or []:
        for sd in job.get("kubernetes_sd_configs") or []:
            sd["kubeconfig_file"] = kubeconfig  # outside the cluster: the admin kubeconfig, not a pod's token
    cfg = workdir / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config))
    port = simulator.free_port()
    log = open(workdir / "prometheus.log", "wb")
    proc = subprocess.Popen([binary, f"--config.file={cfg}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url + "/-/ready", timeout=1) as r:
                    return r.status == 200
            return False
        wait_for("prometheus ready", up, timeout=60)
        yield url
    finally:
        _stop(proc, log)


def targets(prom_url: str) -> list[dict]:
    with urllib.request.urlopen(prom_url + "/api/v1/targets?state=active", timeout=5) as r:
        return json.load(r)["data"]["activeTargets"]


class Load:
    """Concurrent requests to replica 0 until stopped (threads: the test itself stays synchronous)."""

    def __init__(self, url: str, concurrency: int):
        self.url, self.stop, self.sent = url, threading.Event(), 0
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(concurrency)]

    def _loop(self) -> None:
        body = json.dumps({"model": "sim-model", "prompt": "hello there", "max_tokens": 40,
                           "ignore_eos": True}).encode()
        while not self.stop.is_set():
            req = urllib.request.Request(self.url + "/v1/completions", data=body,
                                         headers={"content-type": "application/json"})
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(req, timeout=60) as r:
                    r.read()
            self.sent += 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(70)


def fleet_doc(prometheus_url: str) -> dict:
    return {"apiVersion": "agentfleet.io/v1alpha1", "kind": "ModelFleet", "metadata": {"name": FLEET},
            "spec": {"model": {"uri": "hf://example/sim-model", "servedModelName": "sim-model"},
                     "replicas": 1,
                     "engine": {"maxNumSeqs": 1, "gpu": {"count": 1}, "resources": {"cpu": "1", "memory": "1Gi"},
                                "pod": {"nodeSelector": NODE_LABEL}},
                     "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "targetQueuePerReplica": 2,
                                     "intervalSeconds": 5, "scaleDownStabilizationSeconds": 20,
                                     "scaleDownStepSeconds": 5, "prometheusUrl": prometheus_url,
                                     "podMonitorLabels": MONITOR_LABELS}}}


def prometheus_doc(namespace: str) -> dict:
    """A Prometheus as kube-prometheus-stack declares one: PodMonitors chosen by a release label."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "Prometheus", "metadata": {"name": PROMETHEUS},
            "spec": {"version": "v3.5.0", "replicas": 1, "scrapeInterval": "1s",
                     "podMonitorSelector": {"matchLabels": MONITOR_LABELS},
                     "podMonitorNamespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}}


def test_fleet_scales_up_under_load_and_down_after_window(monitoring_crds, operator, ns, prometheus_operator,
                                                          prometheus_binary, loopback_node, sim_fleet, k8s_cluster,
                                                          tmp_path):
    ns.apply(prometheus_doc(ns.ns))
    # The Prometheus URL is known only once it runs; the fleet is created first so that its PodMonitor exists,
    # then pointed at the Prometheus that scrapes through it.
    ns.apply(fleet_doc("http://127.0.0.1:9"))
    monitor = wait_for("the fleet's PodMonitor", lambda: ns.get("PodMonitor", f"{FLEET}-engine"), timeout=150)
    assert monitor["metadata"]["labels"]["release"] == MONITOR_LABELS["release"]
    config = wait_for("the Prometheus Operator's scrape configuration for it", lambda: generated_scrape_config(ns),
                      timeout=60)
    wait_for("one ready replica", lambda: ((ns.get("StatefulSet", f"{FLEET}-engine") or {})
                                           .get("status", {}).get("readyReplicas") == 1), timeout=120)
    with PodNetwork(ns, sim_fleet.urls) as net, \
            running_prometheus(prometheus_binary, tmp_path, config, str(k8s_cluster.kubeconfig)) as prom_url:
        found = wait_for("engine pod 0 discovered through the API server and scraped", lambda: [
            t for t in targets(prom_url) if t["labels"].get("pod") == f"{FLEET}-engine-0" and t["health"] == "up"],
            timeout=60)
        labels = found[0]["labels"]
        assert labels["namespace"] == ns.ns and labels["job"] == f"{ns.ns}/{FLEET}-engine"
        assert labels["instance"].startswith("127.1.0.") and labels["instance"].endswith(f":{ENGINE_PORT}")
        ns.apply(fleet_doc(prom_url))
        wait_for("MetricsAvailable from the discovered series", lambda: (
            (ns.condition("ModelFleet", FLEET, "MetricsAvailable") or {}).get("status") == "True"), timeout=90)
        assert (ns.get("ModelFleet", FLEET) or {})["status"].get("metricsDiscovery") == "PodMonitor"

        with Load(sim_fleet.urls[0], concurrency=8):
            up = wait_for("a scale-up recorded in status", lambda: (
                (ns.get("ModelFleet", FLEET) or {}).get("status", {}).get("lastScale") or {}
            ).get("toReplicas", 0) >= 2 and ns.get("ModelFleet", FLEET), timeout=150)
            last = up["status"]["lastScale"]
            assert last["fromReplicas"] == 1 and up["spec"]["replicas"] == last["toReplicas"]
            assert last["reason"].split(":")[0] in ("QueueAboveTarget", "UtilizationAboveTarget", "SLOMiss")
            assert up["status"]["queueDepth"] is not None
            wait_for("the StatefulSet to follow spec.replicas", lambda: (
                ns.get("StatefulSet", f"{FLEET}-engine") or {}).get("spec", {}).get("replicas", 0) >= 2, timeout=60)
            managed = ns.json("get", "modelfleet", FLEET, "--show-managed-fields")["metadata"]["managedFields"]
            assert any(m["manager"] == "agentfleet-autoscaler" and m.get("subresource") == "scale" for m in managed)
            wait_for("the new replica discovered and scraped too", lambda: [
                t for t in targets(prom_url) if t["labels"].get("pod") == f"{FLEET}-engine-1" and t["health"] == "up"],
                timeout=60)

        down = wait_for("scale-down to minReplicas after the window", lambda: (
            (f := ns.get("ModelFleet", FLEET) or {}).get("spec", {}).get("replicas") == 1 and f), timeout=240)
        last = down["status"]["lastScale"]
        assert last["reason"].startswith("ScaleDownAfterStabilization") and last["toReplicas"] == 1
        assert down["status"]["autoscaler"]["lastReason"] in (
            "ScaleDownAfterStabilization", "WithinTarget", "ScaleDownPending")
        assert net.errors == []
