"""API tier: a real kube-apiserver + etcd + controller-manager + scheduler + kwok (built from Go modules by
e2e/cluster), the CRDs installed once, and the operator running in-process in a thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from e2e.cluster import launcher  # noqa: E402

pytestmark = pytest.mark.api


@pytest.fixture(scope="session")
def cluster():
    if not launcher.can_build():
        pytest.skip("the Kubernetes control plane is not built and Go is not installed")
    name = os.environ.get("AGENTFLEET_API_CLUSTER", "agentfleet-api")
    with launcher.running_cluster(name) as c:
        # Workloads here do not tolerate kwok's default taint; nothing but the fake node exists anyway.
        c.kubectl("taint", "nodes", "--all", "kwok.x-k8s.io/node-", check=False)
        for f in sorted((ROOT / "crds").glob("agentfleet.io_*.yaml")):
            c.kubectl("apply", "--server-side", "-f", str(f))
        for crd in ("modelfleets", "vectorindexes", "agentapps", "budgets"):
            c.kubectl("wait", "--for=condition=Established", f"crd/{crd}.agentfleet.io", "--timeout=60s")
        yield c


class Kubectl:
    """kubectl bound to one cluster and one namespace."""

    def __init__(self, cluster, namespace: str):
        self.cluster = cluster
        self.ns = namespace

    def __call__(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60):
        return self.cluster.kubectl(*args, "-n", self.ns, input=input, check=check, timeout=timeout)

    def json(self, *args: str) -> dict:
        return json.loads(self(*args, "-o", "json").stdout)

    def get(self, kind: str, name: str) -> dict | None:
        out = self("get", kind, name, "-o", "json", check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    def wait_for(self, what: str, predicate, *, timeout: float = 90, interval: float = 0.5):
        """Poll until predicate() returns a truthy value; fail with the last value seen."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = predicate()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")

    def bind_state_volume(self, app: str) -> None:
        """A hostPath PersistentVolume pre-bound to AgentApp `app`'s SQLite ledger claim (`<app>-state`): there is
        no provisioner here, and a pod whose claim stays unbound is never scheduled."""
        self.cluster.apply({"apiVersion": "v1", "kind": "PersistentVolume",
                            "metadata": {"name": f"state-{self.ns}-{app}"},
                            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                                     "persistentVolumeReclaimPolicy": "Retain",
                                     "claimRef": {"namespace": self.ns, "name": f"{app}-state"},
                                     "hostPath": {"path": f"/tmp/agentfleet-state-{self.ns}-{app}"}}})

    def condition(self, kind: str, name: str, type_: str = "Ready") -> dict | None:
        obj = self.get(kind, name) or {}
        return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


@pytest.fixture
def kubectl(cluster):
    ns = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", ns)
    yield Kubectl(cluster, ns)
    cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture(scope="session")
def kube(cluster):
    from agentfleet.control.kube import Kube, new_api_client

    return Kube(new_api_client(str(cluster.kubeconfig)))


@pytest.fixture(scope="session")
def operator(cluster, kube):
    """The real operator (kopf + agentfleet's handlers) in a thread, watching every namespace."""
    from agentfleet.control import run
    from agentfleet.render import Defaults

    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def target():
        try:
            run(standalone=True, kube=kube, defaults=Defaults(), stop_flag=stop, ready_flag=ready)
        except BaseException as err:  # noqa: BLE001 - reported by the fixture
            errors.append(err)

    thread = threading.Thread(target=target, name="agentfleet-operator", daemon=True)
    thread.start()
    if not ready.wait(60):
        raise RuntimeError(f"operator did not start: {errors}")
    yield thread
    stop.set()
    thread.join(30)


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agentfleet.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)
