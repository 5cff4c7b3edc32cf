"""render.agentapp: the runtime configuration (a ConfigMap that is a RuntimeConfig), the orchestrator
Deployment that rolls when that configuration changes, its Service and ServiceAccount, and the references an
AgentApp must find before anything renders."""

from __future__ import annotations

import pytest
import yaml

from agentfleet import render
from agentfleet.api import RuntimeConfig
from agentfleet.errors import DependencyMissing, SpecError
from agentfleet.names import (
    CONFIG_HASH_ANNOTATION, REDIS_URL_ENV, RUNTIME_PORT, SERVICE_ACCOUNT_DIR, app_config_name, fleet_url, milvus_uri,
)
from agentfleet.render.agentapp import CONFIG_DIR, KEYS_DIR, STATE_DIR
from agentfleet.render.vectorindex import MILVUS_TOKEN_ENV

NS = "team-a"
UID = "6f1c2a9e-0d3b-4c1e-9a7f-2b8d5e4c3a10"
LARGE_PRICING = {"inputPerMTokensUsd": 0.6, "outputPerMTokensUsd": 1.2}
SMALL_PRICING = {"inputPerMTokensUsd": 0.02, "outputPerMTokensUsd": 0.04}


def _fleets(kit):
    return [
        kit.fleet("large", {"model": {"servedModelName": "qwen-32b"}, "pricing": LARGE_PRICING}),
        kit.fleet("small", {"model": {"servedModelName": "gemma-270m"}, "pricing": SMALL_PRICING}),
        kit.fleet("cheap"),  # no servedModelName, no pricing
    ]


def _world(kit, app_spec=None, *, index_spec=None, budget_spec=None, with_budget=False, app_name="assistant",
           uid=UID, labels=None):
    spec = {**({"budgetRef": {"name": "spend"}} if with_budget else {}), **(app_spec or {})}
    app = kit.app(app_name, spec, uid=uid, labels=labels)
    objs = [*_fleets(kit), kit.index("docs", index_spec)]
    if with_budget:
        objs.append(kit.budget("spend", budget_spec))
    return app, kit.related(*objs)


def _render(kit, app, related):
    return render.render(app, related=related, defaults=kit.defaults)


def _config(kit, children, app_name="assistant"):
    cm = kit.one(children, "ConfigMap", app_config_name(app_name))
    assert list(cm["data"]) == ["runtime.yaml"]
    return RuntimeConfig.model_validate(yaml.safe_load(cm["data"]["runtime.yaml"]))


# --- the runtime configuration ---------------------------------------------------------------------------------

def test_runtime_yaml_parses_back_into_runtime_config(kit):
    app, related = _world(kit, {"fleets": {"small": "small"}}, with_budget=True)
    children = _render(kit, app, related)
    cfg = _config(kit, children)

    expected = render.runtime_config(app, fleets={n: related[("ModelFleet", n)] for n in app.fleet_names},
                                     index=related[("VectorIndex", "docs")], budget=related[("Budget", "spend")])
    assert cfg == expected
    assert cfg.app == "assistant" and cfg.namespace == NS
    assert cfg.system_prompt == app.spec.system_prompt
    assert cfg.api_keys_file == f"{KEYS_DIR}/keys.yaml"
    assert cfg.budget is not None and cfg.budget.name == "spend"
    assert cfg.index is not None and cfg.index.collection == "docs"


@pytest.mark.parametrize(
    "fleets, large, small",
    [
        pytest.param({"large": "large", "small": "small"}, ("large", "qwen-32b"), ("small", "gemma-270m"),
                     id="both-set"),
        pytest.param({"large": "large"}, ("large", "qwen-32b"), ("large", "qwen-32b"), id="small-defaults-to-large"),
        pytest.param({"large": "cheap", "small": "cheap"}, ("cheap", "cheap"), ("cheap", "cheap"),
                     id="one-fleet-served-name-defaults"),
    ],
)
def test_model_endpoints_are_router_urls(kit, fleets, large, small):
    app, related = _world(kit, {"fleets": fleets})
    cfg = _config(kit, _render(kit, app, related))

    for role, (fleet, model) in (("large", large), ("small", small)):
        ep = cfg.models[role]
        assert (ep.role, ep.fleet, ep.model, ep.url) == (role, fleet, model, fleet_url(fleet, NS))
    assert set(cfg.models) == {"large", "small"}


@pytest.mark.parametrize(
    "with_budget, prices, large_price, small_price",
    [
        pytest.param(False, None, (0.6, 1.2), (0.02, 0.04), id="no-budget-fleet-pricing"),
        pytest.param(True, [], (0.6, 1.2), (0.02, 0.04), id="empty-table-fleet-pricing"),
        pytest.param(True, [{"model": "large", "inputPerMTokensUsd": 3, "outputPerMTokensUsd": 4}], (3.0, 4.0),
                     (0.02, 0.04), id="by-fleet-name"),
        pytest.param(True, [{"model": "gemma-270m", "inputPerMTokensUsd": 0.5, "outputPerMTokensUsd": 0.7}],
                     (0.6, 1.2), (0.5, 0.7), id="by-served-model-name"),
        pytest.param(True, [{"model": "someone-else", "inputPerMTokensUsd": 9, "outputPerMTokensUsd": 9}],
                     (0.6, 1.2), (0.02, 0.04), id="no-matching-entry"),
    ],
)
def test_prices(kit, with_budget, prices, large_price, small_price):
    budget_spec = {"prices": prices} if prices is not None else None
    app, related = _world(kit, {"fleets": {"small": "small"}}, with_budget=with_budget, budget_spec=budget_spec)
    cfg = _config(kit, _render(kit, app, related))

    assert (cfg.models["large"].input_per_m_tokens_usd, cfg.models["large"].output_per_m_tokens_usd) == large_price
    assert (cfg.models["small"].input_per_m_tokens_usd, cfg.models["small"].output_per_m_tokens_usd) == small_price


def test_fleet_without_pricing_and_budget_has_no_price(kit):
    app, related = _world(kit, {"fleets": {"large": "cheap"}})
    ep = _config(kit, _render(kit, app, related)).models["large"]

    assert (ep.input_per_m_tokens_usd, ep.output_per_m_tokens_usd) == (None, None)


# --- the Deployment --------------------------------------------------------------------------------------------

def _hash(kit, children):
    return kit.one(children, "Deployment")["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]


@pytest.mark.parametrize(
    "change, rolls",
    [
        pytest.param({}, False, id="unchanged"),
        pytest.param({"systemPrompt": "You are terse."}, True, id="system-prompt"),
        pytest.param({"limits": {"maxSteps": 3}}, True, id="loop-limits"),
        pytest.param({"fleets": {"small": "small"}}, True, id="small-fleet"),
        pytest.param({"replicas": 0}, False, id="replicas"),
        pytest.param({"resources": {"cpu": "2", "memory": "1Gi"}}, False, id="resources"),
        pytest.param({"image": "registry.test/agentfleet:custom"}, False, id="image"),
        pytest.param("owner-labels", False, id="owner-labels"),
    ],
)
def test_config_hash_rolls_pods_only_when_the_configuration_changes(kit, change, rolls):
    before, related = _world(kit)
    after, _ = _world(kit, labels=kit.owner_labels) if change == "owner-labels" else _world(kit, change)
    children_before, children_after = _render(kit, before, related), _render(kit, after, related)

    assert (_hash(kit, children_before) != _hash(kit, children_after)) is rolls
    cm_before = kit.one(children_before, "ConfigMap")["data"]["runtime.yaml"]
    cm_after = kit.one(children_after, "ConfigMap")["data"]["runtime.yaml"]
    assert (cm_before != cm_after) is rolls


def test_deployment_serves_the_rendered_config(kit):
    app, related = _world(kit, {"replicas": 1})
    children = _render(kit, app, related)
    dep = kit.one(children, "Deployment", "assistant")
    svc = kit.one(children, "Service", "assistant")
    c = kit.container(dep)

    assert c["command"] == ["agentfleet", "serve"]
    assert c["image"] == kit.defaults.agentfleet_image
    assert kit.flag(c["args"], "--config") == f"{CONFIG_DIR}/runtime.yaml"
    assert kit.flag(c["args"], "--port") == str(RUNTIME_PORT)
    assert dep["spec"]["replicas"] == 1
    assert kit.volume(dep, "config") == {"name": "config", "configMap": {"name": app_config_name("assistant")}}
    assert kit.mount(c, "config") == {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == kit.one(children, "ServiceAccount")["metadata"][
        "name"]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"] == [{"name": "http", "port": RUNTIME_PORT, "targetPort": "http", "protocol": "TCP"}]


def test_auth_secret_is_mounted(kit):
    app, related = _world(kit, {"auth": {"apiKeysSecretRef": {"name": "prod-keys", "key": "principals"}}})
    dep = kit.one(_render(kit, app, related), "Deployment")

    assert kit.volume(dep, "keys") == {"name": "keys", "secret": {
        "secretName": "prod-keys", "items": [{"key": "principals", "path": "keys.yaml"}]}}
    assert kit.mount(kit.container(dep), "keys") == {"name": "keys", "mountPath": KEYS_DIR, "readOnly": True}


@pytest.mark.parametrize("servers, mounted", [
    pytest.param([{"name": "math", "url": "http://math:8000/mcp"}], {}, id="no-secret-no-volume"),
    pytest.param([{"name": "crm_tools", "url": "http://crm/mcp", "headersSecretRef": {"name": "crm-token"}},
                  {"name": "math", "url": "http://math:8000/mcp"}],
                 {"crm_tools": "crm-token"}, id="secret-mounted-per-server"),
])
def test_mcp_headers_secret_is_mounted_for_the_runtime(kit, servers, mounted):
    from agentfleet.names import MCP_HEADERS_DIR

    app, related = _world(kit, {"tools": {"builtin": ["calculator"], "mcpServers": servers}})
    dep = kit.one(_render(kit, app, related), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"] if v["name"].startswith("mcp-headers-")}
    mounts = {m["mountPath"]: m for m in kit.container(dep)["volumeMounts"] if m["name"] in vols}
    assert {path.rsplit("/", 1)[1]: vols[m["name"]]["secret"]["secretName"] for path, m in mounts.items()} == mounted
    for path, m in mounts.items():
        assert path.startswith(MCP_HEADERS_DIR + "/") and m["readOnly"] is True
        assert vols[m["name"]]["secret"]["defaultMode"] == 0o444 and len(m["name"]) <= 63


def test_a2a_sub_agent_key_is_mounted_as_a_file_per_sub_agent(kit):
    from agentfleet.names import A2A_KEY_FILE, A2A_KEYS_DIR

    subs = [{"name": "team_b", "description": "Asks team B.",
             "a2a": {"url": "http://b.team-b:8080/a2a", "keySecretRef": {"name": "b-key", "key": "app-a"}}},
            {"name": "math", "description": "Computes.", "systemPrompt": "Compute.", "tools": ["calculator"]}]
    app, related = _world(kit, {"tools": {"builtin": ["calculator"]}, "subAgents": subs})
    dep = kit.one(_render(kit, app, related), "Deployment")
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"].startswith("a2a-key-")}
    mounts = [m for m in kit.container(dep)["volumeMounts"] if m["name"] in vols]
    assert [(m["mountPath"], m["readOnly"]) for m in mounts] == [(f"{A2A_KEYS_DIR}/team_b", True)]
    secret = vols[mounts[0]["name"]]["secret"]
    assert secret == {"secretName": "b-key", "defaultMode": 0o444, "items": [{"key": "app-a", "path": A2A_KEY_FILE}]}
    assert len(mounts[0]["name"]) <= 63


@pytest.mark.parametrize(
    "app_spec, index_spec, uri, token",
    [
        pytest.param({}, {}, milvus_uri("docs", NS), None, id="embedded"),
        pytest.param({}, {"milvus": {"tokenSecretRef": {"name": "milvus", "key": "token"}}}, milvus_uri("docs", NS),
                     {"name": "milvus", "key": "token"}, id="embedded-token"),
        pytest.param({}, {"milvus": {"mode": "external", "uri": "https://milvus.test:19530",
                                     "tokenSecretRef": {"name": "milvus", "key": "token"}}},
                     "https://milvus.test:19530", {"name": "milvus", "key": "token"}, id="external-token"),
        pytest.param({}, {"milvus": {"mode": "managed"}}, milvus_uri("docs", NS), None, id="managed"),
        pytest.param({"index": None, "tools": {"builtin": ["calculator"]}}, {}, None, None, id="no-index"),
        pytest.param({"index": None, "tools": {"builtin": ["calculator"]}},
                     {"milvus": {"tokenSecretRef": {"name": "milvus", "key": "token"}}}, None, None,
                     id="no-index-token-of-unused-index"),
    ],
)
def test_index_access(kit, app_spec, index_spec, uri, token):
    app, related = _world(kit, app_spec, index_spec=index_spec)
    children = _render(kit, app, related)
    dep = kit.one(children, "Deployment")
    c = kit.container(dep)
    cfg = _config(kit, children)

    # the runtime reaches the index over the network: no index volume any more
    assert kit.volume(dep, "index") is None and kit.mount(c, "index") is None
    assert [v["name"] for v in dep["spec"]["template"]["spec"]["volumes"]] == ["config", "keys", "state", "tmp"]
    assert (cfg.index.uri if cfg.index else None) == uri
    assert (cfg.index.token_env if cfg.index else None) == (MILVUS_TOKEN_ENV if token else None)
    assert (kit.env(c, MILVUS_TOKEN_ENV) or {}).get("valueFrom") == ({"secretKeyRef": token} if token else None)
    assert [e["name"] for e in c["env"]] == ["AGENTFLEET_STATE_DIR", "AGENTFLEET_REPLICA",
                                             "AGENTFLEET_SHUTDOWN_TIMEOUT_S", "AGENTFLEET_METRICS_PORT",
                                             *([MILVUS_TOKEN_ENV] if token else [])]
    assert (cfg.index is None) is (app.spec.index is None)


@pytest.mark.parametrize("index_ref, mode", [
    pytest.param({"name": "docs"}, "hybrid", id="default-hybrid"),
    pytest.param({"name": "docs", "mode": "dense"}, "dense", id="dense"),
    pytest.param({"name": "docs", "mode": "bm25", "topK": 8}, "bm25", id="bm25"),
])
def test_retrieval_mode_reaches_the_runtime(kit, index_ref, mode):
    app, related = _world(kit, {"index": index_ref})
    cfg = _config(kit, _render(kit, app, related))
    assert cfg.index is not None and cfg.index.mode == mode
    assert cfg.index.top_k == index_ref.get("topK", 5)


def test_an_unknown_retrieval_mode_is_rejected(kit):
    with pytest.raises(SpecError) as err:
        _world(kit, {"index": {"name": "docs", "mode": "sparse"}})
    assert "spec.index.mode" in str(err.value) and "hybrid" in str(err.value)


@pytest.mark.parametrize(
    "index_spec",
    [pytest.param({}, id="embedded"), pytest.param({"milvus": {"mode": "managed"}}, id="managed"),
     pytest.param({"milvus": {"mode": "external", "uri": "grpc://milvus:19530"}}, id="external"),
     pytest.param({"milvus": {"collection": "kb", "shards": 4}}, id="named-collection")],
)
def test_runtime_reads_the_index_the_job_writes(kit, index_spec):
    app, related = _world(kit, index_spec=index_spec)
    cfg = _config(kit, _render(kit, app, related))
    job = kit.one(render.vectorindex(related[("VectorIndex", "docs")], kit.defaults), "Job")

    assert cfg.index is not None
    assert cfg.index.uri == kit.flag(kit.container(job)["args"], "--index")
    assert cfg.index.collection == kit.flag(kit.container(job)["args"], "--collection")


@pytest.mark.parametrize(
    "embedder_role, index_embedding, fleet_urls, url",
    [
        pytest.param(None, {}, None, None, id="local-embedder-no-url"),
        pytest.param("cheap", {}, None, fleet_url("cheap", NS), id="app-embedder-role"),
        # Former bug: the index's fleetRef was looked up among the app's own fleets and came back None.
        pytest.param(None, {"fleetRef": {"name": "embed"}}, None, fleet_url("embed", NS), id="index-fleet-ref"),
        pytest.param("cheap", {"fleetRef": {"name": "embed"}}, None, fleet_url("cheap", NS),
                     id="app-role-over-index-fleet"),
        pytest.param(None, {"fleetRef": {"name": "embed"}}, {"embed": "http://127.0.0.1:8101/v1"},
                     "http://127.0.0.1:8101/v1", id="index-fleet-overridden-locally"),
        pytest.param(None, {"fleetRef": {"name": "embed"}}, {"large": "http://127.0.0.1:8100/v1"},
                     fleet_url("embed", NS), id="override-of-another-fleet"),
        pytest.param("cheap", {}, {"cheap": "http://127.0.0.1:8102/v1"}, "http://127.0.0.1:8102/v1",
                     id="app-embedder-overridden-locally"),
    ],
)
def test_embedding_url(kit, embedder_role, index_embedding, fleet_urls, url):
    app_spec = {"fleets": {"embedder": embedder_role}} if embedder_role else {}
    app, related = _world(kit, app_spec, index_spec={"embedding": index_embedding})
    index = related[("VectorIndex", "docs")]
    fleets = {n: related[("ModelFleet", n)] for n in app.fleet_names}
    cfg = render.runtime_config(app, fleets=fleets, index=index, budget=None, fleet_urls=fleet_urls)

    assert cfg.index is not None and cfg.index.embedding_url == url
    if fleet_urls is None:  # what the cluster gets is the same
        assert _config(kit, _render(kit, app, related)) == cfg
    if index_embedding and embedder_role is None and fleet_urls is None:
        # queries are embedded by the fleet the ingestion Job embedded the documents with
        job = kit.one(render.render(index, related=kit.related(kit.fleet("embed")), defaults=kit.defaults), "Job")
        assert kit.flag(kit.container(job)["args"], "--embedder") == url


# --- references ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "app_spec, drop, missing",
    [
        pytest.param({}, [("ModelFleet", "large")], ["ModelFleet/large"], id="large-fleet"),
        pytest.param({"fleets": {"small": "small", "embedder": "cheap"}},
                     [("ModelFleet", "small"), ("ModelFleet", "cheap")], ["ModelFleet/small", "ModelFleet/cheap"],
                     id="small-and-embedder"),
        pytest.param({}, [("VectorIndex", "docs")], ["VectorIndex/docs"], id="index"),
        pytest.param({"budgetRef": {"name": "spend"}}, [("Budget", "spend")], ["Budget/spend"], id="budget"),
        pytest.param({"fleets": {"small": "small"}, "budgetRef": {"name": "spend"}},
                     [("ModelFleet", "large"), ("ModelFleet", "small"), ("VectorIndex", "docs"), ("Budget", "spend")],
                     ["ModelFleet/large", "ModelFleet/small", "VectorIndex/docs", "Budget/spend"], id="everything"),
    ],
)
def test_missing_references_are_all_named(kit, app_spec, drop, missing):
    app, related = _world(kit, app_spec, with_budget=True)
    for key in drop:
        related.pop(key)

    with pytest.raises(DependencyMissing) as err:
        _render(kit, app, related)
    assert err.value.missing == missing
    assert err.value.ref == f"AgentApp {NS}/assistant"
    assert err.value.message == "waiting for " + ", ".join(missing)
    assert render.missing_references(app, related) == missing


# --- what every child carries ----------------------------------------------------------------------------------

BASE_KINDS = ["ConfigMap", "Deployment", "Service", "ServiceAccount"]
REDIS = {"ledger": {"backend": "redis", "redisUrlSecretRef": {"name": "redis", "key": "url"}}}


@pytest.mark.parametrize(
    "name, uid, has_owner, app_spec, with_budget, extra_kinds",
    [
        pytest.param("assistant", UID, True, {}, False, ["PersistentVolumeClaim"], id="with-uid"),
        pytest.param("assistant", None, False, {}, False, ["PersistentVolumeClaim"], id="offline-no-uid"),
        pytest.param("n" * 38 + "-z", "u-1", True, {}, True, ["PersistentVolumeClaim", "Role", "RoleBinding"],
                     id="longest-name-with-budget"),
        pytest.param("assistant", UID, True, REDIS, False, [], id="redis-no-claim"),
        pytest.param("assistant", UID, True, REDIS, True, ["Role", "RoleBinding"], id="redis-with-budget"),
    ],
)
def test_every_child_is_owned_labelled_and_named(kit, name, uid, has_owner, app_spec, with_budget, extra_kinds):
    app, related = _world(kit, app_spec, app_name=name, uid=uid, labels=kit.owner_labels, with_budget=with_budget)
    children = _render(kit, app, related)

    assert kit.child_problems(children, app) == []
    assert all(("ownerReferences" in c["metadata"]) is has_owner for c in children)
    assert {(c["apiVersion"], c["kind"]) for c in children} <= set(render.CHILD_KINDS["AgentApp"])
    assert sorted(c["kind"] for c in children) == sorted(BASE_KINDS + extra_kinds)


# --- state that outlives a pod: the ledger ------------------------------------------------------------------------

@pytest.mark.parametrize(
    "ledger, replicas, claim, strategy, redis_env",
    [
        pytest.param({}, 1, {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                     "Recreate", None, id="sqlite-default-claim"),
        pytest.param({"storage": {"size": "5Gi", "storageClassName": "fast-ssd"}}, 1,
                     {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}},
                      "storageClassName": "fast-ssd"}, "Recreate", None, id="sqlite-sized-class"),
        pytest.param({}, 0, {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                     "Recreate", None, id="sqlite-scaled-to-zero-keeps-its-claim"),
        pytest.param({"backend": "redis", "redisUrlSecretRef": {"name": "redis", "key": "url"}}, 3, None,
                     "RollingUpdate", {"secretKeyRef": {"name": "redis", "key": "url"}}, id="redis-secret"),
        pytest.param({"backend": "redis", "redisUrl": "redis://redis.local:6379/0"}, 2, None, "RollingUpdate",
                     None, id="redis-plain-url-local-use"),
    ],
)
def test_ledger_state_survives_pod_restarts(kit, ledger, replicas, claim, strategy, redis_env):
    """Former bug: ledger.db on an emptyDir, so every rollout zeroed the day's spend."""
    app, related = _world(kit, {"ledger": ledger, "replicas": replicas})
    children = _render(kit, app, related)
    dep = kit.one(children, "Deployment")
    c = kit.container(dep)
    claims = [x for x in children if x["kind"] == "PersistentVolumeClaim"]

    assert [x["spec"] for x in claims] == ([claim] if claim else [])
    assert [x["metadata"]["name"] for x in claims] == (["assistant-state"] if claim else [])
    assert kit.volume(dep, "state") == ({"name": "state", "persistentVolumeClaim": {"claimName": "assistant-state"}}
                                        if claim else {"name": "state", "emptyDir": {}})
    assert kit.mount(c, "state") == {"name": "state", "mountPath": STATE_DIR}
    assert kit.env(c, "AGENTFLEET_STATE_DIR") == {"name": "AGENTFLEET_STATE_DIR", "value": STATE_DIR}
    assert dep["spec"]["strategy"]["type"] == strategy
    # A fresh claim's root belongs to root: the pod's fsGroup (the image's group) lets the non-root runtime write.
    assert dep["spec"]["template"]["spec"].get("securityContext") == (
        {"fsGroup": 10001, "fsGroupChangePolicy": "OnRootMismatch"} if claim else None)
    assert ("rollingUpdate" in dep["spec"]["strategy"]) is (strategy == "RollingUpdate")
    assert (kit.env(c, REDIS_URL_ENV) or {}).get("valueFrom") == redis_env
    cfg = _config(kit, children)
    # The URL from the Secret never lands in the ConfigMap; the reference does (the runtime reads the env).
    assert cfg.ledger == app.spec.ledger
    assert ("redisUrl:" in kit.one(children, "ConfigMap")["data"]["runtime.yaml"]) is ("redisUrl" in ledger)


@pytest.mark.parametrize(
    "with_budget, budget_name",
    [pytest.param(True, "spend", id="with-budget"), pytest.param(False, None, id="no-budget")],
)
def test_runtime_may_patch_only_its_budgets_status(kit, with_budget, budget_name):
    app, related = _world(kit, with_budget=with_budget)
    children = _render(kit, app, related)
    dep = kit.one(children, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    roles = [x for x in children if x["kind"] == "Role"]
    bindings = [x for x in children if x["kind"] == "RoleBinding"]

    # No token unless there is a Budget to publish to, and never an automounted one.
    assert pod["automountServiceAccountToken"] is False
    if not with_budget:
        assert roles == [] and bindings == [] and kit.volume(dep, "kube-api-access") is None
        return
    (role,), (binding,) = roles, bindings
    assert role["rules"] == [{"apiGroups": ["agentfleet.io"], "resources": ["budgets/status"],
                              "resourceNames": [budget_name], "verbs": ["get", "patch"]}]
    assert role["metadata"]["name"] == binding["metadata"]["name"] == "assistant-budget-status"
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "assistant-budget-status"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": NS}]
    sources = kit.volume(dep, "kube-api-access")["projected"]["sources"]
    assert [next(iter(s)) for s in sources] == ["serviceAccountToken", "configMap", "downwardAPI"]
    assert sources[0]["serviceAccountToken"]["path"] == "token"
    assert sources[1]["configMap"] == {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    assert kit.mount(kit.container(dep), "kube-api-access") == {
        "name": "kube-api-access", "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True}


def test_pod_template_does_not_follow_the_owner_labels(kit):
    """Relabelling an AgentApp changes its children's metadata but does not roll its pods."""
    plain, related = _world(kit)
    labelled, _ = _world(kit, labels=kit.owner_labels)
    before = kit.one(_render(kit, plain, related), "Deployment")
    after = kit.one(_render(kit, labelled, related), "Deployment")

    assert after["spec"] == before["spec"]
    assert after["metadata"]["labels"] == {**kit.owner_labels, **before["metadata"]["labels"]}
    assert not kit.owner_labels.keys() & after["spec"]["template"]["metadata"]["labels"].keys()


def test_children_share_no_mutable_objects(kit):
    """Former bug: one `meta` dict in three children and its labels in the pod template (YAML anchors)."""
    app, related = _world(kit, {"fleets": {"small": "small"}}, with_budget=True, labels=kit.owner_labels,
                          index_spec={"milvus": {"tokenSecretRef": {"name": "milvus", "key": "token"}}})

    assert kit.aliased(_render(kit, app, related)) == []


@pytest.mark.parametrize(
    "name, accepted",
    [
        pytest.param("assistant", True, id="letters"),
        pytest.param("app-2", True, id="dash-digit"),
        pytest.param("n" * 38 + "-z", True, id="forty-longest"),
        # Former bug: a leading digit parsed, and the API server rejected the Service `1app` at apply time.
        pytest.param("1app", False, id="leading-digit"),
        pytest.param("n" * 41, False, id="forty-one"),
        pytest.param("-app", False, id="leading-dash"),
    ],
)
def test_app_names_are_rfc1035_labels_that_fit(kit, name, accepted):
    if not accepted:
        with pytest.raises(SpecError) as err:
            _world(kit, app_name=name)
        assert [p.path for p in err.value.problems] == ["metadata.name"]
        return
    app, related = _world(kit, app_name=name)
    svc = kit.one(_render(kit, app, related), "Service")

    assert svc["metadata"]["name"] == name and kit.dns1035.match(svc["metadata"]["name"])


def test_the_runtime_drains_before_it_is_killed_and_names_its_replica(kit):
    """Durable runs: the pod leaves its Service (preStop), hands its runs back and lets chat completions finish
    within the grace period; its leases carry the pod's own name."""
    app, related = _world(kit, {"replicas": 1})
    dep = kit.one(_render(kit, app, related), "Deployment", "assistant")
    pod = dep["spec"]["template"]["spec"]
    c = kit.container(dep)
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert kit.env(c, "AGENTFLEET_REPLICA") == {"name": "AGENTFLEET_REPLICA",
                                                 "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    assert kit.env(c, "AGENTFLEET_SHUTDOWN_TIMEOUT_S")["value"] == "25"
    assert pod["terminationGracePeriodSeconds"] >= 5 + 25
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_the_runtime_gets_the_root_credentials_of_an_index_with_milvus_auth(kit):
    """With spec.milvus.authSecretRef the index's Milvus requires a login: the runtime must get it, or every
    retrieve fails against an authenticated store (the password comes from the Secret, never from a spec)."""
    app, related = _world(kit, {}, index_spec={"milvus": {"authSecretRef": {"name": "milvus-auth", "key": "pw"}}})
    children = _render(kit, app, related)
    c = kit.container(kit.one(children, "Deployment"))
    assert _config(kit, children).index.token_env == MILVUS_TOKEN_ENV
    password = next(e for e in c["env"] if e["name"] == "MILVUS_ROOT_PASSWORD")
    assert password["valueFrom"] == {"secretKeyRef": {"name": "milvus-auth", "key": "pw"}}
    assert kit.env(c, MILVUS_TOKEN_ENV) == {"name": MILVUS_TOKEN_ENV, "value": "root:$(MILVUS_ROOT_PASSWORD)"}


def test_metrics_are_served_off_the_serving_port(kit):
    """Per-tenant usage and Budget gauges are for Prometheus: the pod serves /metrics on its own named port (what
    AGENTFLEET_METRICS_PORT tells the runtime), the scrape annotation points there and the Service does not."""
    app, related = _world(kit, {"replicas": 1})
    children = _render(kit, app, related)
    dep = kit.one(children, "Deployment", "assistant")
    c = kit.container(dep)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert set(ports) == {"http", "metrics"} and ports["http"] != ports["metrics"]
    assert kit.env(c, "AGENTFLEET_METRICS_PORT")["value"] == str(ports["metrics"])
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(ports["metrics"])
    svc = kit.one(children, "Service", "assistant")
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["http"]
