"""ModelFleet -> its children: a StatefulSet of vLLM pods (one pod = one tensor-parallel group), a headless
Service over them, a PodDisruptionBudget, and the fleet's router (Deployment, Service, ServiceAccount and a Role
to read the engine's EndpointSlices)."""

from __future__ import annotations

import copy
from typing import Any

from ..api import ModelFleet
from ..names import ENGINE_PORT, ROUTER_PORT, engine_name, router_name
from .defaults import Defaults
from .meta import child_meta, pod_labels, selector_labels

__all__ = ["modelfleet", "engine_args", "model_argument", "ENGINE_APP", "ROUTER_APP"]

ENGINE_APP = "vllm"
ROUTER_APP = "agentfleet-router"
MODEL_MOUNT = "/mnt/models"
STARTUP_PERIOD_S = 10


def model_argument(fleet: ModelFleet) -> str:
    """What `vllm serve` loads: a hub id, a path in the mounted claim, or an object-store URL."""
    uri = fleet.spec.model.uri
    scheme, _, rest = uri.partition("://")
    if scheme == "hf":
        return rest
    if scheme == "pvc":
        _, _, path = rest.partition("/")
        return f"{MODEL_MOUNT}/{path}".rstrip("/")
    return uri


def engine_args(fleet: ModelFleet) -> list[str]:
    eng = fleet.spec.engine
    args = [
        model_argument(fleet),
        "--host", "0.0.0.0",
        "--port", str(ENGINE_PORT),
        "--served-model-name", fleet.served_model_name,
        "--tensor-parallel-size", str(eng.tensor_parallel_size),
        "--gpu-memory-utilization", str(eng.gpu_memory_utilization),
        "--dtype", eng.dtype,
        "--enable-prefix-caching" if eng.enable_prefix_caching else "--no-enable-prefix-caching",
    ]
    if eng.max_num_seqs is not None:
        args += ["--max-num-seqs", str(eng.max_num_seqs)]
    if eng.max_model_len is not None:
        args += ["--max-model-len", str(eng.max_model_len)]
    if fleet.spec.model.revision:
        args += ["--revision", fleet.spec.model.revision]
    if fleet.spec.model.uri.startswith(("s3://", "gs://")):
        args += ["--load-format", "runai_streamer"]
    return args + list(eng.extra_args)


def _http_probe(path: str, *, period_s: int, failures: int, timeout_s: int = 5) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period_s,
            "failureThreshold": failures, "timeoutSeconds": timeout_s}


def _engine_statefulset(fleet: ModelFleet, d: Defaults) -> dict[str, Any]:
    eng = fleet.spec.engine
    name = engine_name(fleet.name)
    sel = selector_labels(fleet, app=ENGINE_APP, component="engine")
    gpu = {eng.gpu.resource_name: str(fleet.gpus_per_replica)}
    env = [{"name": "HF_HOME", "value": "/cache/huggingface"}]
    env_from: list[dict[str, Any]] = []
    ref = fleet.spec.model.token_secret_ref
    if ref and fleet.spec.model.uri.startswith("hf://"):
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    elif ref and fleet.spec.model.uri.startswith(("s3://", "gs://")):
        # Object stores read their own variables (AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS, ...): the
        # whole Secret becomes the environment.
        env_from.append({"secretRef": {"name": ref.name}})
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "cache", "mountPath": "/cache"}]
    volumes: list[dict[str, Any]] = [
        # NCCL moves tensor-parallel activations through /dev/shm; the container default of 64Mi is too small.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": eng.shm_size}},
        {"name": "cache", "emptyDir": {}},
    ]
    if fleet.spec.model.uri.startswith("pvc://"):
        claim = fleet.spec.model.uri[len("pvc://"):].split("/", 1)[0]
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": "models", "mountPath": MODEL_MOUNT, "readOnly": True})
    container = {
        "name": "vllm",
        "image": eng.image or d.vllm_image,
        "imagePullPolicy": d.image_pull_policy,
        "command": ["vllm", "serve"],
        "args": engine_args(fleet),
        "env": env,
        **({"envFrom": env_from} if env_from else {}),
        "ports": [{"name": "http", "containerPort": ENGINE_PORT, "protocol": "TCP"}],
        "resources": {
            "requests": {"cpu": eng.resources.cpu, "memory": eng.resources.memory, **gpu},
            "limits": {"memory": eng.resources.memory, **gpu},
        },
        # Loading a large model takes minutes: the startup probe holds the others off for the whole budget.
        "startupProbe": _http_probe("/health", period_s=STARTUP_PERIOD_S,
                                    failures=-(-eng.startup_timeout_seconds // STARTUP_PERIOD_S)),
        "readinessProbe": _http_probe("/health", period_s=5, failures=3),
        "livenessProbe": _http_probe("/health", period_s=15, failures=4, timeout_s=10),
        "volumeMounts": mounts,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": child_meta(fleet, name, app=ENGINE_APP, component="engine"),
        "spec": {
            "serviceName": name,
            "replicas": fleet.spec.replicas,
            # Replicas are independent model servers: start and stop them together, not one by one.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": sel},
            "template": {
                "metadata": {
                    "labels": pod_labels(fleet, app=ENGINE_APP, component="engine"),
                    "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": str(ENGINE_PORT),
                                    "prometheus.io/path": "/metrics"},
                },
                "spec": {
                    "containers": [container],
                    "volumes": volumes,
                    "nodeSelector": dict(eng.node_selector),
                    "tolerations": [{"key": eng.gpu.resource_name, "operator": "Exists", "effect": "NoSchedule"}],
                    # Lets in-flight requests finish when a replica is scaled away (highest ordinal first).
                    "terminationGracePeriodSeconds": 120,
                },
            },
        },
    }


def _engine_service(fleet: ModelFleet) -> dict[str, Any]:
    name = engine_name(fleet.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_meta(fleet, name, app=ENGINE_APP, component="engine"),
        "spec": {
            "clusterIP": "None",
            "selector": selector_labels(fleet, app=ENGINE_APP, component="engine"),
            "ports": [{"name": "http", "port": ENGINE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def _engine_pdb(fleet: ModelFleet) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": child_meta(fleet, engine_name(fleet.name), app=ENGINE_APP, component="engine"),
        "spec": {"maxUnavailable": 1,
                 "selector": {"matchLabels": selector_labels(fleet, app=ENGINE_APP, component="engine")}},
    }


def _router(fleet: ModelFleet, d: Defaults) -> list[dict[str, Any]]:
    name = router_name(fleet.name)

    def meta() -> dict[str, Any]:
        return child_meta(fleet, name, app=ROUTER_APP, component="router")

    sel = selector_labels(fleet, app=ROUTER_APP, component="router")
    r = fleet.spec.router
    args = [
        "--fleet", fleet.name,
        "--namespace", fleet.namespace,
        "--service", engine_name(fleet.name),
        "--port", str(ROUTER_PORT),
        "--policy", r.policy,
        "--load-bound-factor", str(r.load_bound_factor),
        "--prefix-tokens", str(r.prefix_tokens),
    ]
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta()},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": meta(),
            "rules": [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                       "verbs": ["get", "list", "watch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": meta(),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": fleet.namespace}],
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta(),
            "spec": {
                "replicas": r.replicas,
                "selector": {"matchLabels": dict(sel)},
                "template": {
                    "metadata": {"labels": pod_labels(fleet, app=ROUTER_APP, component="router"),
                                 "annotations": {"prometheus.io/scrape": "true",
                                                 "prometheus.io/port": str(ROUTER_PORT)}},
                    "spec": {
                        "serviceAccountName": name,
                        "containers": [{
                            "name": "router",
                            "image": d.agentfleet_image,
                            "imagePullPolicy": d.image_pull_policy,
                            "command": ["agentfleet", "router"],
                            "args": args,
                            "ports": [{"name": "http", "containerPort": ROUTER_PORT, "protocol": "TCP"}],
                            "resources": {"requests": {"cpu": "250m", "memory": "256Mi"},
                                          "limits": {"memory": "512Mi"}},
                            "readinessProbe": _http_probe("/readyz", period_s=5, failures=3),
                            "livenessProbe": _http_probe("/healthz", period_s=10, failures=3),
                            "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                                "readOnlyRootFilesystem": True},
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                        }],
                        "volumes": [{"name": "tmp", "emptyDir": {}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(),
            "spec": {"selector": dict(sel),
                     "ports": [{"name": "http", "port": ROUTER_PORT, "targetPort": "http", "protocol": "TCP"}]},
        },
    ]


def modelfleet(fleet: ModelFleet, defaults: Defaults) -> list[dict[str, Any]]:
    if fleet.spec.base_url:
        return []  # served elsewhere: nothing to run
    # Each child gets its own dicts: shared ones would alias in YAML output and change together.
    return copy.deepcopy([
        _engine_service(fleet),
        _engine_statefulset(fleet, defaults),
        _engine_pdb(fleet),
        *_router(fleet, defaults),
    ])
