"""Budgets in a cluster, against a real API server: the runtime's Role allows exactly get/patch of its own
Budget's status (checked as the runtime's ServiceAccount, with its own token), the spend published by
runtime/budget_status.py from a real SQLite ledger shows in `kubectl get budget` and sets Exhausted (Degraded for
Argo CD), a Budget edit keeps the spend, a price row matching no fleet is a condition, the ledger's claim and
Recreate strategy, and the schema's ledger rules."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from pathlib import Path

import pytest
import yaml

from agentfleet.api import RuntimeConfig, parse
from agentfleet.render.agentapp import budget_access
from agentfleet.ledger import Account, Amount, usd_to_micro
from agentfleet.runtime import budget_status as bs
from agentfleet.runtime.serving import Runtime

pytestmark = pytest.mark.api

API = "agentfleet.io/v1alpha1"


def fleet(name: str, **spec) -> dict:
    return {"apiVersion": API, "kind": "ModelFleet", "metadata": {"name": name},
            "spec": {"model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, **spec}}


def app(name: str, budget: str = "shared", **spec) -> dict:
    return {"apiVersion": API, "kind": "AgentApp", "metadata": {"name": name},
            "spec": {"fleets": {"large": "big"}, "tools": {"builtin": ["calculator"]}, "budgetRef": {"name": budget},
                     "auth": {"apiKeysSecretRef": {"name": "keys", "key": "keys.yaml"}}, **spec}}


def budget(name: str = "shared", *, cost_usd: float = 5, prices: list | None = None) -> dict:
    return {"apiVersion": API, "kind": "Budget", "metadata": {"name": name},
            "spec": {"limits": {"costUsd": cost_usd, "tokens": 1_000_000}, "prices": prices if prices is not None else [
                {"model": "big", "inputPerMTokensUsd": 1.0, "outputPerMTokensUsd": 2.0}]}}


KEYS = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys"},
        "stringData": {"keys.yaml": "k1: {user: u, tenant: t, groups: [g]}\n"}}


def apply(kubectl, *docs: dict, check: bool = True):
    return kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs), check=check)


def owned_by(obj: dict, kind: str, name: str) -> bool:
    return any(r["kind"] == kind and r["name"] == name and r.get("controller")
               for r in obj["metadata"].get("ownerReferences", []))


def _cluster_api(kubectl) -> tuple[str, str]:
    """The API server's URL and the file of the CA that signed its certificate, from the test kubeconfig."""
    cfg = yaml.safe_load(Path(kubectl.cluster.kubeconfig).read_text())
    cluster = cfg["clusters"][0]["cluster"]
    return cluster["server"], cluster["certificate-authority"]


def _token_kubeconfig(kubectl, tmp_path: Path, token: str) -> Path:
    """A kubeconfig that authenticates with `token` only (the test kubeconfig's client certificate would win)."""
    server, ca = _cluster_api(kubectl)
    path = tmp_path / "sa-kubeconfig.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa", "namespace": kubectl.ns}}]}))
    return path


def _app_up(kubectl, name: str = "assistant") -> None:
    kubectl.bind_state_volume(name)
    apply(kubectl, KEYS, fleet("big"), budget("shared"), budget("other"), app(name))
    kubectl("wait", "--for=condition=Ready", f"app/{name}", "--timeout=90s", timeout=100)
    kubectl.wait_for("the runtime's Role", lambda: kubectl.get("rolebinding", f"{name}-budget-status"))


# --- least privilege ---------------------------------------------------------------------------------------------

CAN_I = [
    # (verb, resource, subresource, allowed)
    ("get", "budgets.agentfleet.io/shared", "status", True),
    ("patch", "budgets.agentfleet.io/shared", "status", True),
    ("update", "budgets.agentfleet.io/shared", "status", False),
    ("patch", "budgets.agentfleet.io/other", "status", False),
    ("get", "budgets.agentfleet.io/other", "status", False),
    ("get", "budgets.agentfleet.io/shared", None, False),
    ("patch", "budgets.agentfleet.io/shared", None, False),
    ("list", "budgets.agentfleet.io", None, False),
    ("get", "secrets/keys", None, False),
    ("list", "secrets", None, False),
    ("get", "agentapps.agentfleet.io/assistant", None, False),
    ("patch", "agentapps.agentfleet.io/assistant", "status", False),
    ("create", "pods", None, False),
]


def test_the_runtime_may_only_get_and_patch_its_budgets_status(kubectl, operator, tmp_path):
    _app_up(kubectl)
    role = kubectl.get("role", "assistant-budget-status")
    assert owned_by(role, "AgentApp", "assistant")
    assert owned_by(kubectl.get("rolebinding", "assistant-budget-status"), "AgentApp", "assistant")
    pod = kubectl.get("deployment", "assistant")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "assistant" and pod["automountServiceAccountToken"] is False
    token = kubectl("create", "token", "assistant", "--duration=10m").stdout.strip()
    as_sa = _token_kubeconfig(kubectl, tmp_path, token)

    def kubectl_as_sa(*args: str, input: str | None = None):
        return kubectl.cluster.kubectl("--kubeconfig", str(as_sa), *args, input=input, check=False)

    who = json.loads(kubectl_as_sa("auth", "whoami", "-o", "json").stdout)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{kubectl.ns}:assistant"
    # The whole grant in this namespace (SelfSubjectRulesReview), minus what every authenticated user has.
    review = kubectl_as_sa("create", "--validate=false", "-o", "json", "-f", "-", input=json.dumps({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
        "spec": {"namespace": kubectl.ns}}))
    assert review.returncode == 0, review.stderr
    rules = json.loads(review.stdout)["status"]["resourceRules"]
    ours = [r for r in rules if "authorization.k8s.io" not in r.get("apiGroups", [])
            and "authentication.k8s.io" not in r.get("apiGroups", [])]
    assert ours == [{"verbs": ["get", "patch"], "apiGroups": ["agentfleet.io"], "resources": ["budgets/status"],
                     "resourceNames": ["shared"]}], rules
    # Each verb as the API server decides it (SelfSubjectAccessReview).
    for verb, resource, sub, allowed in CAN_I:
        out = kubectl_as_sa("auth", "can-i", verb, resource, *([f"--subresource={sub}"] if sub else []),
                            "-n", kubectl.ns)
        assert out.stdout.strip() == ("yes" if allowed else "no"), (verb, resource, sub, out.stdout, out.stderr)


# --- the spend reaches `kubectl get budget` ------------------------------------------------------------------------

def _runtime_for(kubectl, app_name: str, state_dir: Path) -> Runtime:
    """The runtime the operator configured: its rendered runtime.yaml, a SQLite ledger in `state_dir`."""
    cfg_text = kubectl.get("configmap", f"{app_name}-config")["data"]["runtime.yaml"]
    cfg = RuntimeConfig.model_validate(yaml.safe_load(cfg_text))

    async def no_model(*_, **__):
        raise AssertionError("no model calls here")

    return Runtime(cfg, model=no_model, identity=None, ledger=Runtime.open_ledger(cfg, state_dir=state_dir))


def _spend(rt: Runtime, usd: float, tokens: int) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    account = Account.for_budget(rt.config.namespace, rt.config.budget.name, rt.config.budget.spec)
    hold = rt.ledger.reserve(account, Amount(tokens, usd_to_micro(usd)), task_id=f"t-{usd}", now=now,
                             degraded=True)
    rt.ledger.settle(hold, Amount(tokens, usd_to_micro(usd)), now=now)


class Publisher:
    """publish_budget_status in its own event loop thread, as build_app's lifecycle runs it."""

    def __init__(self, rt: Runtime, api: bs.KubeAPI, every_s: float):
        self.loop = asyncio.new_event_loop()
        self.task = None
        self.thread = threading.Thread(target=self._run, args=(rt, api, every_s), daemon=True)

    def _run(self, rt, api, every_s):
        asyncio.set_event_loop(self.loop)
        self.task = self.loop.create_task(bs.publish_budget_status(rt, every_s=every_s, api=api))
        try:
            self.loop.run_until_complete(self.task)
        except asyncio.CancelledError:
            pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(lambda: self.task and self.task.cancel())
        self.thread.join(10)
        assert not self.thread.is_alive()


def test_published_spend_shows_in_kubectl_get_budget_and_exhausts_it(kubectl, operator, tmp_path):
    _app_up(kubectl)
    server, ca = _cluster_api(kubectl)
    token = kubectl("create", "token", "assistant", "--duration=10m").stdout.strip()
    rt = _runtime_for(kubectl, "assistant", tmp_path)
    _spend(rt, 1.25, 4000)

    def status():
        return (kubectl.get("budget", "shared") or {}).get("status") or {}

    def conds():
        return {c["type"]: c for c in status().get("conditions") or []}

    with Publisher(rt, bs.KubeAPI(server, token=token, ca_file=ca), every_s=1.0):
        seen = kubectl.wait_for("spend in status", lambda: (s := status()).get("spentUsd") == 1.25 and s,
                                timeout=30)
        assert seen["spentTokens"] == 4000 and seen["windowStart"] and seen["windowEnd"]
        # The operator derives what it owns from the runtime's numbers, promptly (an event, not the drift timer).
        kubectl.wait_for("remaining derived", lambda: status().get("remainingUsd") == 3.75, timeout=20)
        table = kubectl("get", "budget", "shared").stdout.splitlines()
        assert table[0].split()[:6] == ["NAME", "WINDOW", "SPENT-USD", "REMAINING-USD", "SPENT-TOKENS", "STATUS"]
        assert table[1].split()[:6] == ["shared", "day", "1.25", "3.75", "4000", "Ready"], table

        _spend(rt, 3.75, 1000)  # the limit is reached
        kubectl.wait_for("Exhausted", lambda: (c := conds().get("Exhausted")) and c["status"] == "True", timeout=30)
        assert (conds()["Degraded"]["status"], conds()["Degraded"]["reason"]) == ("True", "BudgetExhausted")
        assert (conds()["Ready"]["status"], conds()["Ready"]["reason"]) == ("True", "Exhausted")
        assert status()["remainingUsd"] == 0

        # A Budget edit raises the limit: the spend stays (one writer: the operator never zeroes it).
        kubectl("patch", "budget", "shared", "--type=merge", "-p", json.dumps({"spec": {"limits": {"costUsd": 6}}}))
        kubectl.wait_for("limit raised", lambda: (c := conds().get("Exhausted")) and c["status"] == "False",
                         timeout=30)
        assert (status()["spentUsd"], status()["remainingUsd"]) == (5.0, 1.0)
        assert conds()["Degraded"]["status"] == "False"
    # Nothing else was touched: the other Budget has no spend.
    assert (kubectl.get("budget", "other").get("status") or {}).get("spentUsd", 0) == 0
    rt.close()
    rt.ledger.close()


def test_a_token_without_the_role_publishes_nothing_and_does_not_raise(kubectl, operator, tmp_path):
    _app_up(kubectl)
    kubectl("create", "serviceaccount", "stranger")
    server, ca = _cluster_api(kubectl)
    token = kubectl("create", "token", "stranger", "--duration=10m").stdout.strip()
    rt = _runtime_for(kubectl, "assistant", tmp_path)
    _spend(rt, 0.5, 10)

    async def once():
        import aiohttp

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
                ssl=bs.KubeAPI(server, ca_file=ca).ssl_context())) as s:
            return await bs.BudgetStatusPublisher(rt, bs.KubeAPI(server, token=token, ca_file=ca), s).publish()

    problem = asyncio.run(once())
    assert problem is not None and problem.startswith("HTTP 403"), problem
    assert ((kubectl.get("budget", "shared") or {}).get("status") or {}).get("spentUsd", 0) == 0
    rt.close()
    rt.ledger.close()


# --- what the operator renders and reports -------------------------------------------------------------------------

def test_sqlite_ledger_gets_an_owned_claim_and_recreate(kubectl, operator):
    _app_up(kubectl)
    pvc = kubectl.get("pvc", "assistant-state")
    assert owned_by(pvc, "AgentApp", "assistant")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "1Gi"
    kubectl.wait_for("claim bound", lambda: (kubectl.get("pvc", "assistant-state").get("status") or {})
                     .get("phase") == "Bound")
    dep = kubectl.get("deployment", "assistant")
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    volume = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "state")
    assert volume == {"name": "state", "persistentVolumeClaim": {"claimName": "assistant-state"}}


def test_a_deployment_rendered_before_recreate_switches_to_it(kubectl, kube):
    """Apply cannot drop the rollingUpdate that defaulting filled in when a Deployment was first applied without a
    strategy (as before the ledger's claim): control/kube.py clears it once."""
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "old", "namespace": kubectl.ns},
           "spec": {"replicas": 0, "selector": {"matchLabels": {"a": "b"}},
                    "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [
                        {"name": "c", "image": "registry.test/x:1"}]}}}}
    kube.apply(dep)
    assert kubectl.get("deployment", "old")["spec"]["strategy"]["type"] == "RollingUpdate"
    kube.apply({**dep, "spec": {**dep["spec"], "strategy": {"type": "Recreate"}}})
    assert kubectl.get("deployment", "old")["spec"]["strategy"] == {"type": "Recreate"}
    rolling = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}
    kube.apply({**dep, "spec": {**dep["spec"], "strategy": rolling}})
    kube.apply({**dep, "spec": {**dep["spec"], "strategy": {"type": "Recreate"}}})
    assert kubectl.get("deployment", "old")["spec"]["strategy"] == {"type": "Recreate"}


def test_a_price_row_matching_no_fleet_is_a_budget_condition(kubectl, operator):
    kubectl.bind_state_volume("assistant")
    apply(kubectl, KEYS, fleet("big"), app("assistant"),
          budget("shared", prices=[{"model": "bgi", "inputPerMTokensUsd": 1, "outputPerMTokensUsd": 2}]))
    cond = kubectl.wait_for("PriceMatchesNoFleet", lambda: (
        c if (c := kubectl.condition("budget", "shared")) and c["reason"] == "PriceMatchesNoFleet" else None))
    assert cond["status"] == "False"
    assert "spec.prices[0].model" in cond["message"] and "'bgi'" in cond["message"] and "big" in cond["message"]
    assert kubectl.condition("budget", "shared", "Degraded")["reason"] == "PriceMatchesNoFleet"
    apply(kubectl, budget("shared"))  # fixed
    kubectl.wait_for("Ready again", lambda: (c := kubectl.condition("budget", "shared")) and c["reason"] == "Ready")
    assert kubectl.condition("budget", "shared", "Priced")["reason"] == "AllFleetsPriced"


def test_a_low_band_without_a_fair_queue_is_a_budget_condition_until_the_fleet_queues(kubectl, operator):
    """degradeBy low-priority waits in the fleet router's fair queue: while the app's fleet has none the Budget is
    Degraded (LowBandNotQueued) and says what to set; the fleet's edit clears it, through the fleet's dependents,
    well before the 60 s drift tick."""
    kubectl.bind_state_volume("assistant")
    low = budget("shared")
    low["spec"].update(degradeAtPercent=80, degradeBy="low-priority")
    apply(kubectl, KEYS, fleet("big"), app("assistant"), low)
    cond = kubectl.wait_for("LowBandNotQueued", lambda: (
        c if (c := kubectl.condition("budget", "shared", "Degraded")) and c["reason"] == "LowBandNotQueued" else None))
    assert cond["status"] == "True" and "ModelFleet big has router.fairQueue off" in cond["message"], cond
    assert kubectl.condition("budget", "shared")["reason"] == "Ready"  # enforced all the same
    apply(kubectl, fleet("big", engine={"maxNumSeqs": 16}, router={"fairQueue": True}))
    kubectl.wait_for("the low band queued", lambda: kubectl.condition("budget", "shared", "Degraded")["reason"]
                     == "AsExpected", timeout=30)


@pytest.mark.parametrize("spec, field, message", [
    pytest.param({"replicas": 2}, "spec.replicas", "ledger.backend redis with ledger.redisUrlSecretRef",
                 id="sqlite-two-replicas"),
    pytest.param({"ledger": {"backend": "redis"}}, "spec.ledger.redisUrlSecretRef", "backend redis needs",
                 id="redis-without-url"),
])
def test_the_schema_rejects_ledgers_that_cannot_hold_state(kubectl, spec, field, message):
    out = apply(kubectl, app("bad", **spec), check=False)
    assert out.returncode != 0
    assert field in out.stderr and message in out.stderr, out.stderr


def test_redis_url_comes_from_a_secret(kubectl, operator):
    apply(kubectl, KEYS, fleet("big"), budget("shared"), app("multi", replicas=3, ledger={
        "backend": "redis", "redisUrlSecretRef": {"name": "redis", "key": "url"}}))
    dep = kubectl.wait_for("deployment", lambda: kubectl.get("deployment", "multi"))
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AGENTFLEET_REDIS_URL"]["valueFrom"] == {"secretKeyRef": {"name": "redis", "key": "url"}}
    assert dep["spec"]["replicas"] == 3 and dep["spec"]["strategy"]["type"] == "RollingUpdate"
    assert kubectl.get("pvc", "multi-state") is None
    assert "redis://" not in kubectl.get("configmap", "multi-config")["data"]["runtime.yaml"]


def test_the_operators_clusterrole_may_grant_the_runtimes_role(kubectl, tmp_path):
    """RBAC refuses to create a Role granting more than its creator holds: the operator, under manifests/rbac.yaml,
    must hold get/patch on budgets/status itself to render the runtime's Role."""
    root = Path(__file__).resolve().parents[2]
    role = next(d for d in yaml.safe_load_all((root / "manifests" / "rbac.yaml").read_text())
                if d and d["kind"] == "ClusterRole")
    name = f"agentfleet-operator-{kubectl.ns}"
    kubectl("create", "serviceaccount", "operator")
    kubectl.cluster.apply([
        {**role, "metadata": {"name": name}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": kubectl.ns}]}])
    try:
        token = kubectl("create", "token", "operator", "--duration=10m").stdout.strip()
        as_operator = _token_kubeconfig(kubectl, tmp_path, token)
        the_app = parse({**app("assistant"), "metadata": {"name": "assistant", "namespace": kubectl.ns}})
        grant = yaml.safe_dump_all(budget_access(the_app, "shared"))
        out = kubectl.cluster.kubectl("--kubeconfig", str(as_operator), "apply", "--server-side",
                                      "--field-manager=agentfleet", "-f", "-", input=grant, check=False)
        assert out.returncode == 0, out.stderr
        assert kubectl.get("role", "assistant-budget-status")["rules"][0]["resourceNames"] == ["shared"]
    finally:
        kubectl.cluster.kubectl("delete", "clusterrolebinding,clusterrole", name, check=False)
