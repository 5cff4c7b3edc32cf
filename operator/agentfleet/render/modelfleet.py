"""ModelFleet -> its children: the vLLM engines (a StatefulSet, one pod per replica; or a LeaderWorkerSet, one group
of pods per replica, when a replica needs more GPUs than one node gives), a headless Service over the pods that
serve HTTP, a PodDisruptionBudget, a PodMonitor when the cluster runs the Prometheus Operator, an InferencePool
(Gateway API Inference Extension) when asked for and served, NetworkPolicies, and the fleet's router (Deployment,
Service, ServiceAccount and a Role to read the engine's EndpointSlices). Every pod passes a `restricted` Pod
Security namespace."""

from __future__ import annotations

import copy
import re
from typing import Any

from ..api import ModelFleet
from ..api.modelfleet import PodOptions
from ..names import ENGINE_PORT, LABEL_INSTANCE, LABEL_NAME, ROUTER_PORT, engine_name, router_name
from .agentapp import RUNTIME_APP
from .cluster import INFERENCE_POOL, LEADER_WORKER_SET, POD_MONITOR, Capabilities
from .defaults import Defaults
from .evaluation import EVAL_APP
from .meta import child_meta, pod_labels, selector_labels
from .vectorindex import INGEST_APP

__all__ = ["modelfleet", "engine_args", "model_argument", "engine_workload_kind", "supports_shutdown_timeout",
           "grace_period_seconds", "ENGINE_APP", "ROUTER_APP", "LWS_WORKER_INDEX_LABEL", "Capabilities"]

ENGINE_APP = "vllm"
ROUTER_APP = "agentfleet-router"
MODEL_MOUNT = "/mnt/models"
ADAPTER_MOUNT = "/mnt/adapters"
CACHE_MOUNT = "/cache"
STARTUP_PERIOD_S = 10
# Kills are not instant: SIGKILL comes this long after preStop + vLLM's own drain, so the drain is never cut.
GRACE_HEADROOM_S = 15
ROUTER_PRE_STOP_S = 5
# vLLM images run as root by default; a `restricted` namespace needs a non-root uid (any works: every path vLLM
# writes is an emptyDir or a claim made group-writable by fsGroup).
ENGINE_UID = 1000
# vLLM added --shutdown-timeout (drain in-flight requests on SIGTERM) in 0.18.0 (vllm-project/vllm#34730, #36666);
# older images exit with "unrecognized arguments" when given it.
SHUTDOWN_TIMEOUT_SINCE = (0, 18)
# The label LeaderWorkerSet puts on every pod of a group: "0" is the leader, the one that serves HTTP.
LWS_WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"
# vLLM's multi-node recipe for LeaderWorkerSet (docs.vllm.ai, deployment/frameworks/lws): Ray over the group,
# started by the script shipped in the vllm-openai image.
LWS_RAY_SCRIPT = "/vllm-workspace/examples/online_serving/multi-node-serving.sh"
PROMETHEUS_PEER = {"namespaceSelector": {}, "podSelector": {"matchLabels": {LABEL_NAME: "prometheus"}}}


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


def _adapter_path(uri: str) -> str:
    scheme, _, rest = uri.partition("://")
    if scheme == "hf":
        return rest  # vLLM resolves a hub id itself
    if scheme == "pvc":
        claim, _, path = rest.partition("/")
        return f"{ADAPTER_MOUNT}/{claim}/{path}".rstrip("/")
    return uri


def supports_shutdown_timeout(image: str) -> bool:
    """False only for an image whose tag reads as a vLLM version older than 0.18; unknown tags (a digest, a custom
    build) are taken to be recent, and `engine.drain.shutdownTimeoutSeconds: 0` leaves the flag out."""
    tag = image.rsplit("@", 1)[0].rsplit("/", 1)[-1].partition(":")[2]
    m = re.match(r"^v?(\d+)\.(\d+)", tag)
    return m is None or (int(m.group(1)), int(m.group(2))) >= SHUTDOWN_TIMEOUT_SINCE


def _image(fleet: ModelFleet, d: Defaults) -> str:
    return fleet.spec.engine.image or d.vllm_image


def engine_args(fleet: ModelFleet, d: Defaults | None = None) -> list[str]:
    eng = fleet.spec.engine
    args = [
        model_argument(fleet),
        "--host", "0.0.0.0",
        "--port", str(ENGINE_PORT),
        "--served-model-name", fleet.served_model_name,
        "--tensor-parallel-size", str(eng.tp),
        "--gpu-memory-utilization", str(eng.gpu_memory_utilization),
        "--dtype", eng.dtype,
        "--enable-prefix-caching" if eng.enable_prefix_caching else "--no-enable-prefix-caching",
    ]
    if eng.pp > 1:
        args += ["--pipeline-parallel-size", str(eng.pp)]
    if eng.pods_per_replica > 1:
        args += ["--distributed-executor-backend", "ray"]
    if eng.max_num_seqs is not None:
        args += ["--max-num-seqs", str(eng.max_num_seqs)]
    if eng.max_model_len is not None:
        args += ["--max-model-len", str(eng.max_model_len)]
    if fleet.spec.model.revision:
        args += ["--revision", fleet.spec.model.revision]
    if fleet.spec.model.uri.startswith(("s3://", "gs://")):
        args += ["--load-format", "runai_streamer"]
    if fleet.spec.adapters:
        args += ["--enable-lora", "--max-loras", str(len(fleet.spec.adapters)), "--lora-modules",
                 *(f"{a.name}={_adapter_path(a.uri)}" for a in fleet.spec.adapters)]
    timeout_s = eng.drain.shutdown_timeout_seconds
    if timeout_s > 0 and supports_shutdown_timeout(_image(fleet, d or Defaults())):
        args += ["--shutdown-timeout", str(timeout_s)]
    if eng.telemetry is not None:
        args += ["--otlp-traces-endpoint", eng.telemetry.otlp_traces_endpoint]
        if eng.telemetry.collect_detailed_traces:
            args += ["--collect-detailed-traces", eng.telemetry.collect_detailed_traces]
    return args + list(eng.extra_args)


def grace_period_seconds(fleet: ModelFleet) -> int:
    """terminationGracePeriodSeconds of an engine pod: the preStop sleep, then vLLM's drain, then headroom."""
    drain = fleet.spec.engine.drain
    return drain.pre_stop_seconds + drain.shutdown_timeout_seconds + GRACE_HEADROOM_S


def engine_workload_kind(fleet: ModelFleet) -> str:
    return "LeaderWorkerSet" if fleet.spec.engine.pods_per_replica > 1 else "StatefulSet"


def _http_probe(path: str, *, period_s: int, failures: int, timeout_s: int = 5) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period_s,
            "failureThreshold": failures, "timeoutSeconds": timeout_s}


def _pre_stop(seconds: int) -> dict[str, Any]:
    # exec, not the sleep action: that one needs Kubernetes 1.30+ (PodLifecycleSleepAction).
    return {"preStop": {"exec": {"command": ["sleep", str(seconds)]}}} if seconds > 0 else {}


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _pod_options(opts: PodOptions, *, node_selector: dict[str, str] | None = None,
                 tolerations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The pod-spec fields a user's PodOptions set (merged with ours where both exist)."""
    out: dict[str, Any] = {}
    selector = {**(node_selector or {}), **opts.node_selector}
    if selector:
        out["nodeSelector"] = selector
    tol = [*(tolerations or []), *opts.tolerations]
    if tol:
        out["tolerations"] = tol
    if opts.affinity:
        out["affinity"] = opts.affinity
    if opts.priority_class_name:
        out["priorityClassName"] = opts.priority_class_name
    if opts.image_pull_secrets:
        out["imagePullSecrets"] = [{"name": r.name} for r in opts.image_pull_secrets]
    return out


def _engine_selector(fleet: ModelFleet) -> dict[str, str]:
    return selector_labels(fleet, app=ENGINE_APP, component="engine")


def _serving_selector(fleet: ModelFleet) -> dict[str, str]:
    """The engine pods that serve HTTP: every StatefulSet pod, or each LeaderWorkerSet group's leader."""
    sel = _engine_selector(fleet)
    if engine_workload_kind(fleet) == "LeaderWorkerSet":
        sel = {**sel, LWS_WORKER_INDEX_LABEL: "0"}
    return sel


def _engine_pod(fleet: ModelFleet, d: Defaults, *, role: str = "single") -> dict[str, Any]:
    """The pod template of an engine. role: single (StatefulSet), leader or worker (LeaderWorkerSet)."""
    eng = fleet.spec.engine
    opts = eng.pod
    image = _image(fleet, d)
    gpu = {eng.gpu.resource_name: str(eng.gpus_per_pod)}
    env: list[dict[str, Any]] = [
        {"name": "HF_HOME", "value": f"{CACHE_MOUNT}/huggingface"},
        # Non-root with a read-only image home: every cache vLLM, torch, Triton and friends write goes to the
        # cache volume or /tmp.
        {"name": "HOME", "value": "/tmp/home"},
        {"name": "XDG_CACHE_HOME", "value": f"{CACHE_MOUNT}/xdg"},
        {"name": "VLLM_CACHE_ROOT", "value": f"{CACHE_MOUNT}/vllm"},
        {"name": "VLLM_CONFIG_ROOT", "value": "/tmp/vllm-config"},
        {"name": "TRITON_CACHE_DIR", "value": f"{CACHE_MOUNT}/triton"},
        {"name": "NUMBA_CACHE_DIR", "value": "/tmp/numba"},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "DO_NOT_TRACK", "value": "1"},
    ]
    if eng.telemetry is not None:
        env.append({"name": "OTEL_SERVICE_NAME", "value": eng.telemetry.service_name or engine_name(fleet.name)})
        if eng.telemetry.otlp_traces_endpoint.startswith("grpc://"):
            env.append({"name": "OTEL_EXPORTER_OTLP_TRACES_INSECURE", "value": "true"})  # grpc:// is plaintext
    env_from: list[dict[str, Any]] = []
    ref = fleet.spec.model.token_secret_ref
    if ref and fleet.spec.model.uri.startswith("hf://"):
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    elif ref and fleet.spec.model.uri.startswith(("s3://", "gs://")):
        # Object stores read their own variables (AWS_ACCESS_KEY_ID, GOOGLE_APPLICATION_CREDENTIALS, ...): the
        # whole Secret becomes the environment.
        env_from.append({"secretRef": {"name": ref.name}})
    # The user's variables win over ours of the same name (an explicit choice, e.g. another HF_HOME).
    theirs = {e.get("name") for e in opts.env}
    env = [e for e in env if e["name"] not in theirs] + list(opts.env)
    env_from += opts.env_from
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "cache", "mountPath": CACHE_MOUNT},
              {"name": "tmp", "mountPath": "/tmp"}]
    cache = eng.cache
    volumes: list[dict[str, Any]] = [
        # NCCL moves tensor-parallel activations through /dev/shm; the container default of 64Mi is too small.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": eng.shm_size}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "4Gi"}},
    ]
    if cache.mode == "Shared":
        volumes.append({"name": "cache", "persistentVolumeClaim": {"claimName": cache.claim_name}})
    elif cache.mode == "EmptyDir" or role != "single":
        # Bounded: an unbounded emptyDir fills the node's ephemeral storage; past the limit the pod is evicted
        # rather than the node. (LeaderWorkerSet has no per-pod claim templates: its pods use this too.)
        volumes.append({"name": "cache", "emptyDir": {"sizeLimit": cache.size}})
    # PerReplica on a StatefulSet: the volumeClaimTemplate named "cache" supplies the volume.
    if fleet.spec.model.uri.startswith("pvc://"):
        claim = fleet.spec.model.uri[len("pvc://"):].split("/", 1)[0]
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": "models", "mountPath": MODEL_MOUNT, "readOnly": True})
    for claim in sorted({a.uri[len("pvc://"):].split("/", 1)[0] for a in fleet.spec.adapters
                         if a.uri.startswith("pvc://")}):
        vol = f"adapters-{claim}"[:63].rstrip("-")
        volumes.append({"name": vol, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": vol, "mountPath": f"{ADAPTER_MOUNT}/{claim}", "readOnly": True})
    volumes += opts.volumes
    mounts += opts.volume_mounts

    args = engine_args(fleet, d)
    if role == "single":
        command, cargs = ["vllm", "serve"], args
    elif role == "leader":
        # Start the Ray head, wait for the group's workers to join, then serve (the script's documented use).
        command = ["/bin/sh", "-c",
                   f'bash {LWS_RAY_SCRIPT} leader --ray_cluster_size="$LWS_GROUP_SIZE" && exec vllm serve "$@"',
                   "vllm"]
        cargs = args
    else:
        command = ["/bin/sh", "-c", f'exec bash {LWS_RAY_SCRIPT} worker --ray_address="$LWS_LEADER_ADDRESS"']
        cargs = []
    serves_http = role in ("single", "leader")
    container: dict[str, Any] = {
        "name": "vllm",
        "image": image,
        "imagePullPolicy": d.image_pull_policy,
        "command": command,
        **({"args": cargs} if cargs else {}),
        "env": env,
        **({"envFrom": env_from} if env_from else {}),
        "ports": [{"name": "http", "containerPort": ENGINE_PORT, "protocol": "TCP"}] if serves_http else [],
        "resources": {
            "requests": {"cpu": eng.resources.cpu, "memory": eng.resources.memory, **gpu},
            "limits": {"memory": eng.resources.memory, **gpu},
        },
        "securityContext": _container_security(),
        "volumeMounts": mounts,
    }
    if not container["ports"]:
        del container["ports"]
    if serves_http:
        container.update({
            # Loading a large model takes minutes: the startup probe holds the others off for the whole budget.
            "startupProbe": _http_probe("/health", period_s=STARTUP_PERIOD_S,
                                        failures=-(-eng.startup_timeout_seconds // STARTUP_PERIOD_S)),
            "readinessProbe": _http_probe("/health", period_s=5, failures=3),
            "livenessProbe": _http_probe("/health", period_s=15, failures=4, timeout_s=10),
            # Out of the Service and the router's endpoints first (terminating), then SIGTERM: vLLM refuses new
            # requests and finishes the running ones within --shutdown-timeout.
            "lifecycle": _pre_stop(eng.drain.pre_stop_seconds),
        })
        if not container["lifecycle"]:
            del container["lifecycle"]
    labels = {**opts.labels, **pod_labels(fleet, app=ENGINE_APP, component="engine")}
    annotations = {**opts.annotations, "prometheus.io/scrape": "true", "prometheus.io/port": str(ENGINE_PORT),
                   "prometheus.io/path": "/metrics"}
    spec: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        **_pod_options(opts, node_selector=eng.node_selector,
                       tolerations=[{"key": eng.gpu.resource_name, "operator": "Exists", "effect": "NoSchedule"}]),
        "securityContext": {"runAsNonRoot": True, "runAsUser": ENGINE_UID, "runAsGroup": ENGINE_UID,
                            "fsGroup": ENGINE_UID,
                            # A weight cache claim holds hundreds of GiB: chown it once, not on every start.
                            "fsGroupChangePolicy": "OnRootMismatch",
                            "seccompProfile": {"type": "RuntimeDefault"}, **(opts.security_context or {})},
        # Lets in-flight requests finish when a replica is scaled away (highest ordinal first).
        "terminationGracePeriodSeconds": grace_period_seconds(fleet),
    }
    if "nodeSelector" not in spec:
        spec["nodeSelector"] = {}
    if opts.service_account_name:
        spec["serviceAccountName"] = opts.service_account_name
    else:
        # vLLM never calls the Kubernetes API: no token in the pod.
        spec["automountServiceAccountToken"] = False
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": spec}


def _engine_statefulset(fleet: ModelFleet, d: Defaults) -> dict[str, Any]:
    name = engine_name(fleet.name)
    out: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": child_meta(fleet, name, app=ENGINE_APP, component="engine"),
        "spec": {
            "serviceName": name,
            "replicas": fleet.spec.replicas,
            # Replicas are independent model servers: start and stop them together, not one by one.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": _engine_selector(fleet)},
            "template": _engine_pod(fleet, d),
        },
    }
    cache = fleet.spec.engine.cache
    if cache.mode == "PerReplica":
        # Each replica keeps its weights across restarts and reschedules (on the same zone's storage).
        claim_spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"],
                                      "resources": {"requests": {"storage": cache.size}}}
        if cache.storage_class_name:
            claim_spec["storageClassName"] = cache.storage_class_name
        out["spec"]["volumeClaimTemplates"] = [{"metadata": {"name": "cache"}, "spec": claim_spec}]
        out["spec"]["persistentVolumeClaimRetentionPolicy"] = {"whenDeleted": "Delete", "whenScaled": "Retain"}
    return out


def _engine_leaderworkerset(fleet: ModelFleet, d: Defaults) -> dict[str, Any]:
    api_version, kind = LEADER_WORKER_SET
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": child_meta(fleet, engine_name(fleet.name), app=ENGINE_APP, component="engine"),
        "spec": {
            "replicas": fleet.spec.replicas,
            "startupPolicy": "LeaderCreated",
            "leaderWorkerTemplate": {
                "size": fleet.spec.engine.pods_per_replica,
                # A lost worker breaks the whole Ray group: recreate the group, not just the pod.
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": _engine_pod(fleet, d, role="leader"),
                "workerTemplate": _engine_pod(fleet, d, role="worker"),
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
            "selector": _serving_selector(fleet),
            "ports": [{"name": "http", "port": ENGINE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def _engine_pdb(fleet: ModelFleet) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": child_meta(fleet, engine_name(fleet.name), app=ENGINE_APP, component="engine"),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _engine_selector(fleet)}},
    }


def _pod_monitor(fleet: ModelFleet) -> dict[str, Any]:
    """Scrapes the serving engine pods' /metrics. The Prometheus Operator labels each series with namespace, pod,
    container, endpoint (the port name) and job (<namespace>/<PodMonitor name>): the autoscaler selects on
    namespace and pod, which annotation-based discovery sets the same way."""
    api_version, kind = POD_MONITOR
    meta = child_meta(fleet, engine_name(fleet.name), app=ENGINE_APP, component="engine")
    meta["labels"] = {**meta["labels"], **fleet.spec.autoscaling.pod_monitor_labels}
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": _serving_selector(fleet)},
            "podMetricsEndpoints": [{"port": "http", "path": "/metrics",
                                     "interval": f"{min(fleet.spec.autoscaling.interval_seconds, 15)}s"}],
        },
    }


def _inference_pool(fleet: ModelFleet) -> dict[str, Any]:
    """The serving engine pods as a Gateway API Inference Extension pool: the same selector as the engine Service
    (LeaderWorkerSet: the leaders only), vLLM's port as the one target port."""
    api_version, kind = INFERENCE_POOL
    pool = fleet.spec.inference_pool
    spec: dict[str, Any] = {"selector": {"matchLabels": _serving_selector(fleet)},
                            "targetPorts": [{"number": ENGINE_PORT}]}
    picker = pool.endpoint_picker_ref
    if picker is not None:
        spec["endpointPickerRef"] = {"name": picker.name, "port": {"number": picker.port},
                                     "failureMode": picker.failure_mode}
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": child_meta(fleet, engine_name(fleet.name), app=ENGINE_APP, component="engine"),
        "spec": spec,
    }


def _peers(fleet: ModelFleet, *apps: str) -> list[dict[str, Any]]:
    return copy.deepcopy([
        {"podSelector": {"matchExpressions": [{"key": LABEL_NAME, "operator": "In", "values": list(apps)}]}},
        PROMETHEUS_PEER, *fleet.spec.network_policy.allow_from])


def _network_policies(fleet: ModelFleet) -> list[dict[str, Any]]:
    """Engines: reachable from this fleet's router and engines (a multi-node group talks to itself), the
    namespace's AgentApp runtimes, ingestion and evaluation pods, and Prometheus. Router: from the runtimes,
    ingestion, evaluation and Prometheus. Egress is left open (model downloads)."""
    def router_pods() -> dict[str, str]:
        return selector_labels(fleet, app=ROUTER_APP, component="router")

    engine = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_meta(fleet, engine_name(fleet.name), app=ENGINE_APP, component="engine"),
        "spec": {
            "podSelector": {"matchLabels": _engine_selector(fleet)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": _engine_selector(fleet)}}]},
                {"from": [{"podSelector": {"matchLabels": router_pods()}},
                          *_peers(fleet, RUNTIME_APP, INGEST_APP, EVAL_APP)],
                 "ports": [{"protocol": "TCP", "port": ENGINE_PORT}]},
            ],
        },
    }
    router = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_meta(fleet, router_name(fleet.name), app=ROUTER_APP, component="router"),
        "spec": {
            "podSelector": {"matchLabels": router_pods()},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": _peers(fleet, RUNTIME_APP, INGEST_APP, EVAL_APP),
                         "ports": [{"protocol": "TCP", "port": ROUTER_PORT}]}],
        },
    }
    return [engine, router]


def _router(fleet: ModelFleet, d: Defaults) -> list[dict[str, Any]]:
    name = router_name(fleet.name)

    def meta() -> dict[str, Any]:
        return child_meta(fleet, name, app=ROUTER_APP, component="router")

    sel = selector_labels(fleet, app=ROUTER_APP, component="router")
    r = fleet.spec.router
    opts = r.pod
    args = [
        "--fleet", fleet.name,
        "--namespace", fleet.namespace,
        "--service", engine_name(fleet.name),
        "--port", str(ROUTER_PORT),
        "--policy", r.policy,
        "--placement", r.placement if r.placement != "auto" else "shared" if r.replicas > 1 else "local",
        *(["--fair-queue", str(max(1, (fleet.spec.engine.max_num_seqs or 1) // r.replicas))] if r.fair_queue else []),
        *(["--fair-queue-order", r.fair_queue_order] if r.fair_queue and r.fair_queue_order != "least-served" else []),
        "--load-bound-factor", str(r.load_bound_factor),
        "--prefix-tokens", str(r.prefix_tokens),
    ]
    if r.telemetry is not None:  # a span per proxied request; the engines' spans become its children
        args += ["--otlp-endpoint", r.telemetry.otlp_endpoint, "--service-name", r.telemetry.service_name or name,
                 "--trace-sample-ratio", str(r.telemetry.sample_ratio)]
    mounts = [{"name": "tmp", "mountPath": "/tmp"}, *opts.volume_mounts]
    container: dict[str, Any] = {
        "name": "router",
        "image": d.agentfleet_image,
        "imagePullPolicy": d.image_pull_policy,
        "command": ["agentfleet", "router"],
        "args": args,
        **({"env": opts.env} if opts.env else {}),
        **({"envFrom": opts.env_from} if opts.env_from else {}),
        "ports": [{"name": "http", "containerPort": ROUTER_PORT, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": r.resources.cpu, "memory": r.resources.memory},
                      "limits": {"memory": r.resources.memory}},
        "readinessProbe": _http_probe("/readyz", period_s=5, failures=3),
        "livenessProbe": _http_probe("/healthz", period_s=10, failures=3),
        # Leave the Service before SIGTERM, so callers are not sent to a router that is closing.
        "lifecycle": _pre_stop(ROUTER_PRE_STOP_S),
        "securityContext": {**_container_security(), "readOnlyRootFilesystem": True},
        "volumeMounts": mounts,
    }
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
                    "metadata": {"labels": {**opts.labels, **pod_labels(fleet, app=ROUTER_APP, component="router")},
                                 "annotations": {**opts.annotations, "prometheus.io/scrape": "true",
                                                 "prometheus.io/port": str(ROUTER_PORT)}},
                    "spec": {
                        "serviceAccountName": name,
                        "containers": [container],
                        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}, *opts.volumes],
                        **_pod_options(opts),
                        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"},
                                            **(opts.security_context or {})},
                        # A stream it proxies may last as long as the engines' own drain.
                        "terminationGracePeriodSeconds": (ROUTER_PRE_STOP_S
                                                          + fleet.spec.engine.drain.shutdown_timeout_seconds
                                                          + GRACE_HEADROOM_S),
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


def modelfleet(fleet: ModelFleet, defaults: Defaults, capabilities: Capabilities | None = None
               ) -> list[dict[str, Any]]:
    """Every child. `capabilities` None (an offline render): render what the spec asks for, a LeaderWorkerSet and
    an InferencePool included, and no PodMonitor. Known capabilities: no engine workload when a replica needs a
    LeaderWorkerSet the cluster does not serve, no InferencePool when its CRD is not served (status says so), and
    a PodMonitor when the Prometheus Operator is there."""
    if fleet.spec.base_url:
        return []  # served elsewhere: nothing to run
    children = [_engine_service(fleet)]
    if engine_workload_kind(fleet) == "StatefulSet":
        children.append(_engine_statefulset(fleet, defaults))
    elif capabilities is None or capabilities.leader_worker_set:
        children.append(_engine_leaderworkerset(fleet, defaults))
    children.append(_engine_pdb(fleet))
    if capabilities is not None and capabilities.pod_monitor:
        children.append(_pod_monitor(fleet))
    if fleet.spec.inference_pool.enabled and (capabilities is None or capabilities.inference_pool):
        children.append(_inference_pool(fleet))
    if fleet.spec.network_policy.enabled:
        children += _network_policies(fleet)
    children += _router(fleet, defaults)
    # Each child gets its own dicts: shared ones would alias in YAML output and change together.
    return [copy.deepcopy(c) for c in children]
