"""manifests/ installs the documented way, and the suite only ever talks to its own cluster."""

from __future__ import annotations

import pytest
import yaml

from e2e_kit import (
    MANIFESTS, OPERATOR_NS, OPERATOR_SA, ForeignKubeconfig, Kubectl, check_own_kubeconfig, wait_for,
)

pytestmark = pytest.mark.e2e


def test_manifests_install_with_server_side_apply(installed):
    # Re-applying the install succeeds and changes nothing (Argo CD and upgrades do exactly this).
    out = installed("apply", "--server-side", "-k", str(MANIFESTS)).stdout
    assert out.strip() and all(line.endswith("serverside-applied") for line in out.strip().splitlines()), out
    crb = installed.get("clusterrole", "agentfleet-operator")["metadata"]["resourceVersion"]
    installed("apply", "--server-side", "-k", str(MANIFESTS))
    assert installed.get("clusterrole", "agentfleet-operator")["metadata"]["resourceVersion"] == crb
    crds = installed.json("get", "crd", "-l", "app.kubernetes.io/part-of=agentfleet")["items"]
    assert sorted(c["metadata"]["name"] for c in crds) == [
        "agentapps.agentfleet.io", "budgets.agentfleet.io", "modelfleets.agentfleet.io",
        "vectorindexes.agentfleet.io"]
    ns = installed.in_ns(OPERATOR_NS)
    sa = ns.get("serviceaccount", OPERATOR_SA)
    assert sa is not None
    binding = installed.get("clusterrolebinding", "agentfleet-operator")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS}]
    # kwok fakes the operator's pod as Running (no image is pulled): the Deployment itself is well-formed,
    # admitted under the namespace's restricted Pod Security level, and scheduled.
    wait_for("operator Deployment available", lambda: (ns.get("deployment", "agentfleet-operator") or {})
             .get("status", {}).get("availableReplicas") == 1, timeout=60)


def test_the_operator_runs_under_its_service_account_token_only(operator):
    cfg = yaml.safe_load(operator.kubeconfig.read_text())
    (user,) = cfg["users"]
    assert set(user["user"]) == {"token"}, "the operator's kubeconfig must carry no client certificate"
    env = operator.env()
    assert env["KUBECONFIG"] == str(operator.kubeconfig)
    assert not any(k.startswith("KUBERNETES_") for k in env), "load_incluster_config must not apply"
    who = Kubectl(operator.cluster, kubeconfig=operator.kubeconfig)("auth", "whoami", "-o", "json").stdout
    assert f"system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}" in who
    assert operator.running


def test_refuses_a_kubeconfig_that_is_not_its_own(k8s_cluster, tmp_path, monkeypatch):
    # A copy of the right file elsewhere, a user's KUBECONFIG and a remote server are all refused.
    copy = tmp_path / "kubeconfig"
    copy.write_text(k8s_cluster.kubeconfig.read_text())
    with pytest.raises(ForeignKubeconfig):
        check_own_kubeconfig(copy, k8s_cluster.name)
    with pytest.raises(ForeignKubeconfig):
        check_own_kubeconfig(k8s_cluster.kubeconfig, "some-other-cluster")
    monkeypatch.setenv("KUBECONFIG", str(copy))
    k = Kubectl(k8s_cluster)  # the environment is ignored: kubectl always gets --kubeconfig <own>
    assert k.kubeconfig == k8s_cluster.kubeconfig
    with pytest.raises(ForeignKubeconfig):
        Kubectl(type(k8s_cluster)(name=k8s_cluster.name, kubeconfig=copy, bin_dir=k8s_cluster.bin_dir,
                                  workdir=k8s_cluster.workdir))
