"""Fixtures for the e2e tier: agentfleet deployed as it is shipped, on a real control plane.

One session cluster (kube-apiserver, controller-manager, scheduler, etcd built from Go modules by e2e/cluster, and
kwok with fake GPU nodes); `kubectl apply --server-side -k manifests/` with the built kubectl; the operator as a
local subprocess under a token of its own ServiceAccount (kwok fakes the Deployment's pod as Running, nothing
runs in it), so the ClusterRole of manifests/rbac.yaml authorises every call it makes. Each test owns a
namespace; on failure the CRs, the objects and events of the test's namespaces and the operator log are dumped
into the report (and under the session's basetemp). The suite refuses any kubeconfig but its cluster's own.

Env: AGENTFLEET_E2E_CLUSTER (cluster name, default agentfleet-e2e-pytest),
     AGENTFLEET_E2E_KEEP=1 (leave the cluster running afterwards; a cluster that was already
     running before the session is always reused and left running).
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import pytest

from e2e_kit import (  # noqa: E402  (tests/e2e is on sys.path)
    CR_KINDS, MANIFESTS, Kubectl, OperatorProcess, check_own_kubeconfig, dump, launcher,
)

# Room for several copies of the example at once (a namespace being deleted still holds its pods for a moment)
# and for scaling the 2-GPU fleet to 3 replicas: kwok-node-0 (8 GPUs, 32 CPUs) plus these.
EXTRA_NODES = {"kwok-node-1": dict(cpu="96", memory="768Gi", gpus=8),
               "kwok-node-2": dict(cpu="96", memory="768Gi", gpus=8)}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: needs a real Kubernetes control plane (e2e/cluster; slow first build)"
    )
    config.addinivalue_line("markers", "e2e_last: runs after every other test of the session")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    """Tests that assert over the whole session (e.g. no 403 in the operator log) run last."""
    last = [i for i in items if i.get_closest_marker("e2e_last")]
    if last:
        items[:] = [i for i in items if not i.get_closest_marker("e2e_last")] + last


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when not in ("setup", "call") or not rep.failed or rep.skipped:
        return
    cluster = item.funcargs.get("k8s_cluster") if hasattr(item, "funcargs") else None
    if cluster is None:
        return
    namespaces = list(getattr(item, "e2e_namespaces", []))
    operator = item.funcargs.get("operator") or _SESSION.get("operator")
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid)[-120:]
    base = Path(item.config._tmp_path_factory.getbasetemp()) / "e2e-dumps" / safe  # type: ignore[attr-defined]
    try:
        text = dump(Kubectl(cluster), namespaces, operator, base)
    except Exception as err:  # noqa: BLE001 - a dump never hides the failure
        text = f"(dump failed: {err})"
    rep.sections.append(("e2e dump: CRs, objects, events, operator log", text))


_SESSION: dict = {}


@pytest.fixture(scope="session")
def k8s_cluster() -> launcher.Cluster:
    if not launcher.can_build():
        pytest.skip("Kubernetes binaries not built and Go not installed")
    name = os.environ.get("AGENTFLEET_E2E_CLUSTER", "agentfleet-e2e-pytest")
    with launcher.running_cluster(name) as cluster:
        check_own_kubeconfig(cluster.kubeconfig, cluster.name)
        for node, size in EXTRA_NODES.items():
            cluster.add_fake_node(node, **size)
        yield cluster


@pytest.fixture(scope="session")
def kubectl_admin(k8s_cluster) -> Kubectl:
    return Kubectl(k8s_cluster)


@pytest.fixture(scope="session")
def installed(k8s_cluster, kubectl_admin) -> Kubectl:
    """manifests/ installed the documented way; CRDs established early (the garbage collector needs ~30 s to
    discover a new kind)."""
    kubectl_admin("apply", "--server-side", "-k", str(MANIFESTS))
    for _, kind in CR_KINDS:
        plural = {"ModelFleet": "modelfleets", "VectorIndex": "vectorindexes", "AgentApp": "agentapps",
                  "Budget": "budgets"}[kind]
        kubectl_admin("wait", "--for=condition=Established", f"crd/{plural}.agentfleet.io", "--timeout=60s")
    return kubectl_admin


@pytest.fixture(scope="session")
def operator(installed, k8s_cluster, tmp_path_factory) -> OperatorProcess:
    op = OperatorProcess(k8s_cluster, tmp_path_factory.mktemp("operator"))
    _SESSION["operator"] = op
    op.start()
    yield op
    op.stop()
    print(f"\n[e2e] operator log: {op.log_path}")


@pytest.fixture
def new_namespace(k8s_cluster, kubectl_admin, request):
    """Factory: a fresh namespace owned by the calling test (deleted afterwards, dumped on failure)."""
    created: list[str] = []
    request.node.e2e_namespaces = created

    def make(prefix: str = "t") -> Kubectl:
        ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
        kubectl_admin("create", "namespace", ns)
        created.append(ns)
        return kubectl_admin.in_ns(ns)

    yield make
    for ns in created:
        kubectl_admin("delete", "namespace", ns, "--wait=false", check=False)
        kubectl_admin("delete", "pv", f"e2e-{ns}", "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture
def ns(new_namespace, request) -> Kubectl:
    """kubectl in a namespace of this test's own."""
    short = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_"))[:30].strip("-")
    return new_namespace(short or "t")
