"""The operator's ClusterRole (manifests/rbac.yaml) is minimal and sufficient, and the suite would notice if it
were not: a role missing one verb makes a reconcile fail with 403, and a broken CRD is refused by the API server.
Sufficiency itself is the session-wide check at the end: no 403 anywhere in the operator's log."""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections import defaultdict

import pytest
import yaml

from e2e_kit import API, MANIFESTS, ROOT, Kubectl, token_kubeconfig

pytestmark = pytest.mark.e2e

# What the operator's ServiceAccount may do: resource[.group] -> verbs. Adding a permission to the ClusterRole
# without adding it here fails this suite, so every grant is reviewed. (Cluster-wide; the operator serves all
# namespaces.) The three self-reviews are what every authenticated user may do (system:basic-user).
EXPECTED_RULES = {
    "customresourcedefinitions.apiextensions.k8s.io": "get list watch",
    "namespaces": "list watch",
    "events": "create patch",
    "events.events.k8s.io": "create patch",
    "modelfleets.agentfleet.io": "get list patch update watch",
    "vectorindexes.agentfleet.io": "get list patch update watch",
    "agentapps.agentfleet.io": "get list patch update watch",
    "budgets.agentfleet.io": "get list patch update watch",
    "modelfleets.agentfleet.io/status": "get patch update",
    "vectorindexes.agentfleet.io/status": "get patch update",
    "agentapps.agentfleet.io/status": "get patch update",
    "budgets.agentfleet.io/status": "get patch update",
    "modelfleets.agentfleet.io/scale": "get patch update",
    "modelfleets.agentfleet.io/finalizers": "update",
    "vectorindexes.agentfleet.io/finalizers": "update",
    "agentapps.agentfleet.io/finalizers": "update",
    "statefulsets.apps": "create delete get list patch watch",
    "deployments.apps": "create delete get list patch watch",
    "services": "create delete get list patch watch",
    "configmaps": "create delete get list patch watch",
    "serviceaccounts": "create delete get list patch watch",
    "persistentvolumeclaims": "create delete get list patch watch",
    "jobs.batch": "create delete get list patch watch",
    "cronjobs.batch": "create delete list patch",
    "pods": "get list watch",
    "poddisruptionbudgets.policy": "create delete get list patch watch",
    "roles.rbac.authorization.k8s.io": "create delete get list patch watch",
    "rolebindings.rbac.authorization.k8s.io": "create delete get list patch watch",
    "endpointslices.discovery.k8s.io": "get list watch",
    "milvuses.milvus.io": "create delete get list patch watch",
    "networkpolicies.networking.k8s.io": "create delete get list patch watch",
    # optional engines' kinds, rendered only when their CRDs are served (multi-node fleets, Prometheus Operator)
    "leaderworkersets.leaderworkerset.x-k8s.io": "create delete get list patch watch",
    "podmonitors.monitoring.coreos.com": "create delete get list patch watch",
    # spec.inferencePool: the Gateway API Inference Extension's pool over a fleet's engines
    "inferencepools.inference.networking.k8s.io": "create delete get list patch watch",
    # the largest GPU count a node offers: a replica that fits no node is a condition, not a Pending pod
    "nodes": "list",
    # every authenticated user
    "selfsubjectreviews.authentication.k8s.io": "create",
    "selfsubjectaccessreviews.authorization.k8s.io": "create",
    "selfsubjectrulesreviews.authorization.k8s.io": "create",
}

# (verb, resource) the operator must NOT be able to do, anywhere.
DENIED = [
    ("get", "secrets"), ("list", "secrets"), ("watch", "secrets"),
    ("delete", "namespaces"), ("create", "namespaces"),
    ("create", "pods"), ("delete", "pods"), ("create", "pods/exec"), ("patch", "nodes"),
    ("create", "clusterroles"), ("bind", "clusterroles"), ("escalate", "roles"), ("create", "clusterrolebindings"),
    ("update", "customresourcedefinitions.apiextensions.k8s.io"),
    ("delete", "modelfleets.agentfleet.io"), ("create", "agentapps.agentfleet.io"),
    ("create", "leases.coordination.k8s.io"), ("patch", "clusterkopfpeerings.kopf.dev"),
    ("impersonate", "serviceaccounts"), ("create", "serviceaccounts/token"),
]


@pytest.fixture(scope="module")
def as_operator(operator) -> Kubectl:
    """kubectl with the operator's own token (not impersonation: the same credential the operator uses)."""
    return Kubectl(operator.cluster, kubeconfig=operator.kubeconfig)


def granted(as_sa: Kubectl, namespace: str) -> tuple[dict[str, str], list[dict]]:
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
              "spec": {"namespace": namespace}}
    out = json.loads(as_sa("create", "-f", "-", "-o", "json", input=json.dumps(review)).stdout)["status"]
    assert not out.get("incomplete"), out.get("evaluationError")
    verbs = defaultdict(set)
    for rule in out["resourceRules"]:
        assert "*" not in rule["verbs"] and "*" not in rule.get("resources", []), rule
        assert "*" not in rule.get("apiGroups", []), rule
        assert not rule.get("resourceNames"), rule
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                sub = res.split("/", 1)
                key = sub[0] + (f".{group}" if group else "") + (f"/{sub[1]}" if len(sub) > 1 else "")
                verbs[key].update(rule["verbs"])
    return {k: " ".join(sorted(v)) for k, v in verbs.items()}, out.get("nonResourceRules") or []


def test_the_operator_may_do_exactly_what_the_table_says(as_operator, ns):
    rules, non_resource = granted(as_operator, ns.ns)
    expected = {k: " ".join(sorted(v.split())) for k, v in EXPECTED_RULES.items()}
    assert rules == expected, {"unexpected": {k: v for k, v in rules.items() if expected.get(k) != v},
                               "missing": {k: v for k, v in expected.items() if rules.get(k) != v}}
    # Non-resource URLs: discovery, health and OIDC documents, read-only (system:discovery and friends).
    assert {v for r in non_resource for v in r["verbs"]} == {"get"}


@pytest.mark.parametrize(("verb", "resource"), DENIED, ids=[f"{v}-{r.split('.')[0]}" for v, r in DENIED])
def test_the_operator_may_not(as_operator, ns, verb, resource):
    # `can-i create pods/exec` would ask about a pod named exec: subresources go in --subresource.
    res, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, res] + ([f"--subresource={sub}"] if sub else [])
    for scope in (["-n", ns.ns], ["--all-namespaces"]):
        out = as_operator(*args, *scope, check=False)
        assert out.stdout.strip() == "no", (verb, resource, scope, out.stdout, out.stderr)


def test_the_operator_may(as_operator, ns):
    for verb, resource, sub in [("patch", "statefulsets.apps", ""), ("patch", "modelfleets.agentfleet.io", "scale"),
                                ("patch", "agentapps.agentfleet.io", "status"), ("delete", "jobs.batch", ""),
                                ("create", "events", "")]:
        args = ["auth", "can-i", verb, resource, "-n", ns.ns] + ([f"--subresource={sub}"] if sub else [])
        assert as_operator(*args, check=False).stdout.strip() == "yes", (verb, resource, sub)


# --- negative proofs: the suite catches a missing RBAC verb and a broken CRD ----------------------------------

def operator_cluster_role() -> dict:
    docs = list(yaml.safe_load_all((MANIFESTS / "rbac.yaml").read_text()))
    return next(d for d in docs if d and d["kind"] == "ClusterRole")


def without(role: dict, group: str, resource: str, verb: str, name: str) -> dict:
    """A copy of `role` named `name` with `verb` taken away from `resource` only."""
    out = copy.deepcopy(role)
    out["metadata"] = {"name": name, "labels": {"agentfleet-e2e": "crippled-role"}}
    rules = []
    for rule in out["rules"]:
        if group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"]:
            rest = [r for r in rule["resources"] if r != resource]
            if rest:
                rules.append({**rule, "resources": rest})
            rules.append({**rule, "resources": [resource], "verbs": [v for v in rule["verbs"] if v != verb]})
        else:
            rules.append(rule)
    assert rules != role["rules"], (group, resource, verb)
    out["rules"] = rules
    return out


def api_client(kubeconfig):
    from kubernetes import client, config

    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)  # never in-cluster
    return client.ApiClient(configuration=cfg)


def reconcile_as(kubeconfig, body: dict):
    import datetime as dt

    from agentfleet.control.kube import Kube
    from agentfleet.control.reconcile import reconcile
    from agentfleet.render import Defaults

    return reconcile(Kube(api_client(kubeconfig)), body, defaults=Defaults(),
                     now=dt.datetime.now(dt.timezone.utc))


MISSING_VERB = [
    # (api group, resource, verb) taken away: what the reconcile does with it
    ("apps", "statefulsets", "patch"),       # server-side apply of the engine StatefulSet
    ("", "services", "list"),                # pruning lists every child kind it may own
    ("apps", "deployments", "get"),          # status observes the router Deployment
]


@pytest.mark.parametrize(("group", "resource", "verb"), MISSING_VERB, ids=[f"{r}-{v}" for _, r, v in MISSING_VERB])
def test_a_missing_rbac_verb_makes_reconcile_fail_with_403(ns, operator, kubectl_admin, tmp_path, group, resource,
                                                           verb):
    from kubernetes.client.exceptions import ApiException

    ns.apply({"apiVersion": API, "kind": "ModelFleet", "metadata": {"name": "probe"},
              "spec": {"model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}}})
    ns("wait", "--for=condition=Ready", "fleet/probe", "--timeout=60s", timeout=70)
    body = ns.get("fleet", "probe")
    # Control: the real ClusterRole (the operator's own token) reconciles the very same object.
    reconcile_as(operator.kubeconfig, body)

    role_name = f"e2e-crippled-{uuid.uuid4().hex[:6]}"
    kubectl_admin.apply(without(operator_cluster_role(), group, resource, verb, role_name))
    try:
        ns("create", "serviceaccount", "crippled")
        ns("create", "rolebinding", "crippled", f"--clusterrole={role_name}", f"--serviceaccount={ns.ns}:crippled")
        token = ns("create", "token", "crippled", "--duration=10m").stdout.strip()
        kubeconfig = token_kubeconfig(operator.cluster.kubeconfig, token, tmp_path / "crippled.kubeconfig",
                                      "crippled")
        with pytest.raises(ApiException) as err:
            reconcile_as(kubeconfig, body)
        assert err.value.status == 403
        message = json.loads(err.value.body)["message"]
        assert f'cannot {verb} resource "{resource}"' in message, message
    finally:
        kubectl_admin("delete", "clusterrole", role_name, "--ignore-not-found", check=False)


def broken_crd_copy(breakage: str) -> dict:
    """crds/agentfleet.io_budgets.yaml under another group and kind (so that it cannot disturb the real CRDs,
    their short names or the `agentfleet` category), optionally broken."""
    crd = yaml.safe_load((ROOT / "crds" / "agentfleet.io_budgets.yaml").read_text())
    group = "e2e-broken.agentfleet.io"
    crd["metadata"] = {"name": f"e2ebrokenbudgets.{group}"}
    crd["spec"]["group"] = group
    crd["spec"]["names"] = {"kind": "E2EBrokenBudget", "listKind": "E2EBrokenBudgetList",
                            "plural": "e2ebrokenbudgets", "singular": "e2ebrokenbudget"}
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    if breakage == "property-without-type":
        del schema["properties"]["window"]["type"]
    elif breakage == "cel-rule-on-unknown-field":
        schema["properties"]["limits"]["x-kubernetes-validations"] = [{"rule": "self.dollars >= 0"}]
    elif breakage == "unknown-type":
        schema["properties"]["limits"]["properties"]["costUsd"]["type"] = "money"
    return crd


BROKEN_CRDS = [
    ("property-without-type", "properties[window].type: Required value: must not be empty for specified"),
    ("cel-rule-on-unknown-field", "compilation failed"),
    ("unknown-type", "Unsupported value: \"money\""),
]


@pytest.mark.parametrize(("breakage", "message"), BROKEN_CRDS, ids=[b for b, _ in BROKEN_CRDS])
def test_a_broken_crd_is_refused_by_the_api_server(kubectl_admin, breakage, message):
    crd = broken_crd_copy(breakage)
    out = kubectl_admin("apply", "--server-side", "-f", "-", input=json.dumps(crd), check=False)
    assert out.returncode != 0, out.stdout
    assert message in out.stderr, out.stderr
    assert kubectl_admin.get("crd", crd["metadata"]["name"]) is None


def test_the_unbroken_crd_copy_is_accepted(kubectl_admin):
    """Control for the test above: the copy itself is fine, only the breakage is refused."""
    crd = broken_crd_copy("none")
    try:
        kubectl_admin("apply", "--server-side", "-f", "-", input=json.dumps(crd))
        kubectl_admin("wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}", "--timeout=30s")
    finally:
        kubectl_admin("delete", "crd", crd["metadata"]["name"], "--ignore-not-found", check=False)


# --- sufficiency: the whole session's operator log, checked last -----------------------------------------------

@pytest.mark.e2e_last
def test_no_request_of_the_operator_was_forbidden_all_session(operator):
    text = operator.log_text()
    handled = [r for r in operator.records() if "succeeded" in r.get("message", "")]
    assert handled, "the operator handled nothing: the check below would be vacuous"
    forbidden = [line for line in text.splitlines() if re.search(r"(?i)forbidden|\(403\)|\b403 ", line)]
    assert forbidden == [], "\n".join(forbidden[:20])
    assert operator.running, "the operator exited"
