"""AgentApp -> its children: the runtime configuration (a ConfigMap rendered from the app and the fleets, index
and budget it references), a ServiceAccount, the orchestrator Deployment (`agentfleet serve`) and its Service.
State that must outlive a pod: a SQLite ledger gets a PersistentVolumeClaim (one replica, Recreate); a Redis
ledger gets its URL from a Secret. An app with a Budget gets a Role letting its runtime patch only that Budget's
status (the spend it reads from the ledger), and the service-account token to do it with. An MCP server's
`headersSecretRef` is mounted for the runtime to send as that server's headers, an a2a sub-agent's `keySecretRef`
as the key it calls the remote agent with.
References are resolved by the caller and passed in; a missing one is the caller's DependencyMissing."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from ..api import AgentApp, Budget, BudgetConfig, ModelEndpoint, ModelFleet, RuntimeConfig, VectorIndex
from ..names import (
    CONFIG_HASH_ANNOTATION, GROUP, REDIS_URL_ENV, RUNTIME_METRICS_PORT, RUNTIME_METRICS_PORT_ENV, RUNTIME_PORT,
    RUNTIME_PRE_STOP_S, RUNTIME_REPLICA_ENV, RUNTIME_SHUTDOWN_TIMEOUT_S, SERVICE_ACCOUNT_DIR, app_budget_role_name, MCP_HEADERS_DIR,
    A2A_KEY_FILE, A2A_KEYS_DIR,
    app_config_name, app_state_claim_name, fleet_url,
)
from .defaults import Defaults
from .meta import child_meta, pod_labels, selector_labels, stable_hash
from .pod_options import overlay
from .prices import price_row
from .vectorindex import client_env, connection

__all__ = ["agentapp", "runtime_config", "RUNTIME_APP", "CONFIG_DIR", "KEYS_DIR", "STATE_DIR", "state_claim",
           "budget_access"]

RUNTIME_APP = "agentfleet-runtime"
CONFIG_DIR = "/etc/agentfleet/config"
KEYS_DIR = "/etc/agentfleet/keys"
CONFIG_FILE = "runtime.yaml"
STATE_DIR = "/var/lib/agentfleet"
# The image's user and group (images/Dockerfile: USER 10001:10001). As the pod's fsGroup it makes a fresh claim
# writable by the runtime (a new volume's root is root's).
RUNTIME_GID = 10001
# What an automounted token gets. The kubelet rewrites a projected token at 80 % of its life, so
# runtime/budget_status.py reads the file for every request.
TOKEN_EXPIRATION_S = 3607


def _endpoint(role: str, fleet: ModelFleet, budget: Budget | None, url: str, *, is_router: bool = False
              ) -> ModelEndpoint:
    """Price from the Budget's table (by fleet or served model name), else from the fleet's own pricing."""
    price = price_row(budget.spec.prices, fleet.name, fleet.served_model_name) if budget else None
    return ModelEndpoint(
        role=role, fleet=fleet.name, url=url, model=fleet.served_model_name, is_router=is_router,
        input_per_m_tokens_usd=price.input_per_m_tokens_usd if price else fleet.spec.pricing.input_per_m_tokens_usd,
        output_per_m_tokens_usd=price.output_per_m_tokens_usd if price else fleet.spec.pricing.output_per_m_tokens_usd,
    )


def runtime_config(app: AgentApp, *, fleets: dict[str, ModelFleet], index: VectorIndex | None,
                   budget: Budget | None, fleet_urls: dict[str, str] | None = None,
                   keys_file: str = f"{KEYS_DIR}/keys.yaml") -> RuntimeConfig:
    """`fleet_urls` overrides the in-cluster router URLs (`agentfleet up` points them at local servers)."""
    def url(name: str) -> str:
        external = fleets[name].spec.base_url if name in fleets else None
        return (fleet_urls or {}).get(name) or external or fleet_url(name, app.namespace)

    roles = app.spec.fleets
    small = roles.small or roles.large
    def is_router(name: str) -> bool:  # our router in the cluster: not a hosted API, not `up`'s local server
        return not (fleet_urls or {}).get(name) and (name not in fleets or fleets[name].spec.base_url is None)

    models = {
        "large": _endpoint("large", fleets[roles.large], budget, url(roles.large), is_router=is_router(roles.large)),
        "small": _endpoint("small", fleets[small], budget, url(small), is_router=is_router(small)),
    }
    conn = None
    if index is not None and app.spec.index is not None:
        emb_fleet = roles.embedder or (index.spec.embedding.fleet_ref.name if index.spec.embedding.fleet_ref else None)
        conn = connection(index, top_k=app.spec.index.top_k, mode=app.spec.index.mode, embedding_url=url(emb_fleet) if emb_fleet else None)
    return RuntimeConfig(
        app=app.name, namespace=app.namespace, models=models, index=conn,
        budget=BudgetConfig(name=budget.name, spec=budget.spec) if budget else None,
        system_prompt=app.spec.system_prompt, tools=app.spec.tools, sub_agents=app.spec.sub_agents,
        limits=app.spec.limits, ledger=app.spec.ledger, api_keys_file=keys_file,
        failed_attempts=app.spec.auth.failed_attempts, trusted_proxies=app.spec.auth.trusted_proxies,
        per_key=app.spec.auth.per_key, per_tenant=app.spec.auth.per_tenant, telemetry=app.spec.telemetry,
    )


def _probe(path: str, period_s: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period_s, "failureThreshold": 3,
            "timeoutSeconds": 5}


def agentapp(app: AgentApp, defaults: Defaults, *, fleets: dict[str, ModelFleet], index: VectorIndex | None,
             budget: Budget | None) -> list[dict[str, Any]]:
    cfg = runtime_config(app, fleets=fleets, index=index, budget=budget)
    cfg_text = yaml.safe_dump(cfg.wire(), sort_keys=True)
    cfg_hash = stable_hash(cfg_text)
    def meta() -> dict[str, Any]:
        return child_meta(app, app.name, app=RUNTIME_APP, component="runtime")

    sel = selector_labels(app, app=RUNTIME_APP, component="runtime")
    auth = app.spec.auth.api_keys_secret_ref
    ledger = app.spec.ledger
    is_sqlite = ledger.backend == "sqlite"
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": app_config_name(app.name)}},
        {"name": "keys", "secret": {"secretName": auth.name, "items": [{"key": auth.key, "path": "keys.yaml"}]}},
        # SQLite: ledger.db on a claim, so spend survives restarts and rollouts. Redis holds the ledger itself.
        {"name": "state", "persistentVolumeClaim": {"claimName": app_state_claim_name(app.name)}} if is_sqlite
        else {"name": "state", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "keys", "mountPath": KEYS_DIR, "readOnly": True},
        {"name": "state", "mountPath": STATE_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    env: list[dict[str, Any]] = [
        {"name": "AGENTFLEET_STATE_DIR", "value": STATE_DIR},
        # The replica's name in the run store's leases: the pod's own, so a restarted pod is a new replica.
        {"name": RUNTIME_REPLICA_ENV, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "AGENTFLEET_SHUTDOWN_TIMEOUT_S", "value": str(RUNTIME_SHUTDOWN_TIMEOUT_S)},
        # /metrics on its own port (named "metrics"): the serving port answers only the API and the probes.
        {"name": RUNTIME_METRICS_PORT_ENV, "value": str(RUNTIME_METRICS_PORT)},
    ]
    if ledger.redis_url_secret_ref is not None:
        ref = ledger.redis_url_secret_ref
        env.append({"name": REDIS_URL_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    if index is not None and cfg.index is not None:
        env.extend(client_env(index))  # the index's Milvus token (external) or root credentials (authSecretRef)
    for server in app.spec.tools.mcp_servers:
        if server.headers_secret_ref is not None:
            # Every key of the Secret becomes a header of every call to this server (mcp_tools reads the files
            # per call, so a rotated Secret takes effect without a restart). Server names allow `_`, a volume name
            # does not: the volume is named by a hash of the server name.
            vol = f"mcp-headers-{stable_hash(server.name)[:10]}"
            volumes.append({"name": vol, "secret": {"secretName": server.headers_secret_ref.name,
                                                    "defaultMode": 0o444}})
            mounts.append({"name": vol, "mountPath": f"{MCP_HEADERS_DIR}/{server.name}", "readOnly": True})
    for sub in app.spec.sub_agents:
        if sub.a2a is not None:
            # This app's API key at the remote agent, as the file <A2A_KEYS_DIR>/<sub-agent>/key: a directory
            # mount (not subPath), so a rotated Secret reaches the pod; a2a_client reads it per call.
            ref = sub.a2a.key_secret_ref
            vol = f"a2a-key-{stable_hash(sub.name)[:10]}"
            volumes.append({"name": vol, "secret": {"secretName": ref.name, "defaultMode": 0o444,
                                                    "items": [{"key": ref.key, "path": A2A_KEY_FILE}]}})
            mounts.append({"name": vol, "mountPath": f"{A2A_KEYS_DIR}/{sub.name}", "readOnly": True})
    extra: list[dict[str, Any]] = []
    if budget is not None:
        # The token is mounted by hand rather than automounted: only an app with a Budget gets one, and all it
        # may do is what the Role below grants.
        volumes.append({"name": "kube-api-access", "projected": {"defaultMode": 0o444, "sources": [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_EXPIRATION_S}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1",
                                                                           "fieldPath": "metadata.namespace"}}]}},
        ]}})
        mounts.append({"name": "kube-api-access", "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True})
        extra += budget_access(app, budget.name)
    if is_sqlite:
        extra.append(state_claim(app))
    children = copy.deepcopy([
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta()},
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": child_meta(app, app_config_name(app.name), app=RUNTIME_APP, component="runtime"),
            "data": {CONFIG_FILE: cfg_text},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(),
            "spec": {
                "replicas": app.spec.replicas,
                # A ReadWriteOnce claim can be attached to one node at a time: the old pod goes before the new one.
                # RollingUpdate spells out the API server's defaults so that apply owns them and a later switch to
                # Recreate removes them (Recreate forbids rollingUpdate).
                "strategy": {"type": "Recreate"} if is_sqlite else {
                    "type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                "selector": {"matchLabels": dict(sel)},
                "template": {
                    "metadata": {
                        "labels": pod_labels(app, app=RUNTIME_APP, component="runtime"),
                        # A new configuration rolls the pods: ConfigMap changes alone would not.
                        "annotations": {CONFIG_HASH_ANNOTATION: cfg_hash, "prometheus.io/scrape": "true",
                                        "prometheus.io/port": str(RUNTIME_METRICS_PORT)},
                    },
                    "spec": {
                        "serviceAccountName": app.name,
                        "automountServiceAccountToken": False,
                        "terminationGracePeriodSeconds": RUNTIME_PRE_STOP_S + RUNTIME_SHUTDOWN_TIMEOUT_S + 10,
                        **({"securityContext": {"fsGroup": RUNTIME_GID, "fsGroupChangePolicy": "OnRootMismatch"}}
                           if is_sqlite else {}),
                        "containers": [{
                            "name": "runtime",
                            "image": app.spec.image or defaults.agentfleet_image,
                            "imagePullPolicy": defaults.image_pull_policy,
                            "command": ["agentfleet", "serve"],
                            "args": ["--config", f"{CONFIG_DIR}/{CONFIG_FILE}", "--port", str(RUNTIME_PORT)],
                            "env": env,
                            "ports": [{"name": "http", "containerPort": RUNTIME_PORT, "protocol": "TCP"},
                                      {"name": "metrics", "containerPort": RUNTIME_METRICS_PORT, "protocol": "TCP"}],
                            "resources": {"requests": dict(app.spec.resources),
                                          "limits": {k: v for k, v in app.spec.resources.items()
                                                     if k == "memory"}},
                            "readinessProbe": _probe("/readyz", 5),
                            "livenessProbe": _probe("/healthz", 10),
                            # Out of the Service's endpoints before SIGTERM closes the listener.
                            "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(RUNTIME_PRE_STOP_S)]}}},
                            "volumeMounts": mounts,
                            "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                                "readOnlyRootFilesystem": True,
                                                "capabilities": {"drop": ["ALL"]},
                                                "seccompProfile": {"type": "RuntimeDefault"}},
                        }],
                        "volumes": volumes,
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(),
            "spec": {"selector": dict(sel),
                     "ports": [{"name": "http", "port": RUNTIME_PORT, "targetPort": "http", "protocol": "TCP"}]},
        },
        *extra,
    ])
    overlay(next(c for c in children if c["kind"] == "Deployment")["spec"]["template"], app.spec.pod)
    return children


def state_claim(app: AgentApp) -> dict[str, Any]:
    """The SQLite ledger's volume. Owned by the app: deleting the app deletes the day's spend with it."""
    storage = app.spec.ledger.storage
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage.size}}}
    if storage.storage_class_name:
        spec["storageClassName"] = storage.storage_class_name
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": child_meta(app, app_state_claim_name(app.name), app=RUNTIME_APP, component="runtime"),
            "spec": spec}


def budget_access(app: AgentApp, budget: str) -> list[dict[str, Any]]:
    """A Role (and its binding to the runtime's ServiceAccount) allowing exactly get and patch of one Budget's
    status: the runtime publishes the spend it reads from the ledger there, and can touch nothing else."""
    meta = child_meta(app, app_budget_role_name(app.name), app=RUNTIME_APP, component="runtime")
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": meta,
         "rules": [{"apiGroups": [GROUP], "resources": ["budgets/status"], "resourceNames": [budget],
                    "verbs": ["get", "patch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": copy.deepcopy(meta),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": meta["name"]},
         "subjects": [{"kind": "ServiceAccount", "name": app.name, "namespace": app.namespace}]},
    ]
