"""AgentApp -> its children: the runtime configuration (a ConfigMap rendered from the app and the fleets, index
and budget it references), a ServiceAccount, the orchestrator Deployment (`agentfleet serve`) and its Service.
References are resolved by the caller and passed in; a missing one is the caller's DependencyMissing."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from ..api import AgentApp, Budget, BudgetConfig, ModelEndpoint, ModelFleet, RuntimeConfig, VectorIndex
from ..names import CONFIG_HASH_ANNOTATION, RUNTIME_PORT, app_config_name, fleet_url
from .defaults import Defaults
from .meta import child_meta, pod_labels, selector_labels, stable_hash
from .vectorindex import MILVUS_TOKEN_ENV, connection

__all__ = ["agentapp", "runtime_config", "RUNTIME_APP", "CONFIG_DIR", "KEYS_DIR"]

RUNTIME_APP = "agentfleet-runtime"
CONFIG_DIR = "/etc/agentfleet/config"
KEYS_DIR = "/etc/agentfleet/keys"
CONFIG_FILE = "runtime.yaml"


def _endpoint(role: str, fleet: ModelFleet, budget: Budget | None, url: str) -> ModelEndpoint:
    """Price from the Budget's table (by fleet or served model name), else from the fleet's own pricing."""
    price = next((p for p in (budget.spec.prices if budget else [])
                  if p.model in (fleet.name, fleet.served_model_name)), None)
    return ModelEndpoint(
        role=role, fleet=fleet.name, url=url, model=fleet.served_model_name,
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
    models = {
        "large": _endpoint("large", fleets[roles.large], budget, url(roles.large)),
        "small": _endpoint("small", fleets[small], budget, url(small)),
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
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": app_config_name(app.name)}},
        {"name": "keys", "secret": {"secretName": auth.name, "items": [{"key": auth.key, "path": "keys.yaml"}]}},
        {"name": "state", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "keys", "mountPath": KEYS_DIR, "readOnly": True},
        {"name": "state", "mountPath": "/var/lib/agentfleet"},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    env: list[dict[str, Any]] = [{"name": "AGENTFLEET_STATE_DIR", "value": "/var/lib/agentfleet"}]
    if index is not None and cfg.index is not None and index.spec.milvus.token_secret_ref:
        ref = index.spec.milvus.token_secret_ref
        env.append({"name": MILVUS_TOKEN_ENV,
                    "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    return copy.deepcopy([
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
                "selector": {"matchLabels": dict(sel)},
                "template": {
                    "metadata": {
                        "labels": pod_labels(app, app=RUNTIME_APP, component="runtime"),
                        # A new configuration rolls the pods: ConfigMap changes alone would not.
                        "annotations": {CONFIG_HASH_ANNOTATION: cfg_hash, "prometheus.io/scrape": "true",
                                        "prometheus.io/port": str(RUNTIME_PORT)},
                    },
                    "spec": {
                        "serviceAccountName": app.name,
                        "automountServiceAccountToken": False,
                        "containers": [{
                            "name": "runtime",
                            "image": app.spec.image or defaults.agentfleet_image,
                            "imagePullPolicy": defaults.image_pull_policy,
                            "command": ["agentfleet", "serve"],
                            "args": ["--config", f"{CONFIG_DIR}/{CONFIG_FILE}", "--port", str(RUNTIME_PORT)],
                            "env": env,
                            "ports": [{"name": "http", "containerPort": RUNTIME_PORT, "protocol": "TCP"}],
                            "resources": {"requests": dict(app.spec.resources),
                                          "limits": {k: v for k, v in app.spec.resources.items()
                                                     if k == "memory"}},
                            "readinessProbe": _probe("/readyz", 5),
                            "livenessProbe": _probe("/healthz", 10),
                            "volumeMounts": mounts,
                            "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                                "readOnlyRootFilesystem": True},
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
    ])
