"""VectorIndex -> its children: an indexed ingestion Job (worker i of P takes its slice; the name carries a hash
of the Job's whole spec, since a Job cannot change in place) and the vector store: for `embedded`, one Milvus
standalone pod (embedded etcd, local storage) with its Service and a NetworkPolicy letting only the AgentApp
runtimes and this index's ingestion pods reach it; for `managed`, a `Milvus` resource for the Milvus operator,
owned by the VectorIndex only when its deletionPolicy is Delete. Every pod rendered here passes the `restricted`
Pod Security Standard. `connection()` is how readers (the AgentApp runtime) reach the index, `client_env()` the
environment that gives them its token."""

from __future__ import annotations

import copy
import json
from typing import Any

from ..api import IndexConnection, VectorIndex
from ..api.agentapp import RetrievalMode
from ..names import GROUP, LABEL_NAME, ingest_job_name, milvus_name, milvus_uri
from .defaults import Defaults
from .meta import child_meta, pod_labels, selector_labels, stable_hash
from .pod_options import overlay

__all__ = ["vectorindex", "connection", "client_env", "ingest_job", "drop_job", "INGEST_APP", "MILVUS_APP",
           "SOURCE_MOUNT", "MILVUS_TOKEN_ENV", "MILVUS_PASSWORD_ENV", "REINGEST_ANNOTATION", "MILVUS_PORT",
           "SOURCE_CREDENTIALS_MOUNT", "RESTRICTED_POD", "RESTRICTED_CONTAINER"]

INGEST_APP = "agentfleet-ingest"
MILVUS_APP = "milvus"
# The AgentApp runtime's app label (render.agentapp.RUNTIME_APP; that module imports this one).
RUNTIME_APP = "agentfleet-runtime"
SOURCE_MOUNT = "/data/source"
SOURCE_CREDENTIALS_MOUNT = "/var/run/agentfleet/source-credentials"
GCS_CREDENTIALS_KEY = "credentials.json"
MILVUS_TOKEN_ENV = "MILVUS_TOKEN"
MILVUS_PASSWORD_ENV = "MILVUS_ROOT_PASSWORD"
MILVUS_PORT = 19530
MILVUS_METRICS_PORT = 9091
# Milvus's image runs as root by default; `restricted` needs a non-root UID, and fsGroup makes the volume its own.
MILVUS_UID = 1000
# The `restricted` Pod Security Standard (https://kubernetes.io/docs/concepts/security/pod-security-standards/).
RESTRICTED_POD: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
RESTRICTED_CONTAINER: dict[str, Any] = {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                        "capabilities": {"drop": ["ALL"]},
                                        "seccompProfile": {"type": "RuntimeDefault"}}
# Changing this annotation's value re-runs ingestion without changing the spec.
REINGEST_ANNOTATION = f"{GROUP}/reingest"
# Milvus standalone with embedded etcd and local storage: the settings of Milvus's own standalone_embed.sh.
EMBED_ETCD = """\
listen-client-urls: http://0.0.0.0:2379
advertise-client-urls: http://0.0.0.0:2379
quota-backend-bytes: 4294967296
auto-compaction-mode: revision
auto-compaction-retention: '1000'
"""


def connection(index: VectorIndex, *, top_k: int = 5, mode: RetrievalMode = "hybrid",
               embedding_url: str | None = None) -> IndexConnection:
    """Where the index lives inside the cluster (`agentfleet up` substitutes a local milvus-lite file)."""
    m = index.spec.milvus
    uri = m.uri or "" if m.mode == "external" else milvus_uri(index.name, index.namespace)
    return IndexConnection(
        name=index.name, uri=uri, collection=index.collection,
        token_env=MILVUS_TOKEN_ENV if (m.token_secret_ref or m.auth_secret_ref) else None, top_k=top_k, mode=mode,
        embedding=index.spec.embedding, embedding_url=embedding_url, chunking=index.spec.chunking,
        access=index.spec.access, source_url=index.spec.source.url,
    )


def client_env(index: VectorIndex) -> list[dict[str, Any]]:
    """The environment that gives a Milvus client (ingestion, drop, the AgentApp runtime) its token: an external
    Milvus's token Secret as is; for authSecretRef, the root password and `root:<password>` built from it by the
    kubelet's $(VAR) expansion, so the Secret holds one value that both Milvus and its clients use."""
    m = index.spec.milvus
    if m.auth_secret_ref:
        ref = m.auth_secret_ref
        return [{"name": MILVUS_PASSWORD_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}},
                {"name": MILVUS_TOKEN_ENV, "value": f"root:$({MILVUS_PASSWORD_ENV})"}]
    if m.token_secret_ref:
        ref = m.token_secret_ref
        return [{"name": MILVUS_TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]
    return []


def _source(index: VectorIndex) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    src = index.spec.source
    if src.config_map:
        return SOURCE_MOUNT, [{"name": "source", "configMap": {"name": src.config_map.name}}], [
            {"name": "source", "mountPath": SOURCE_MOUNT, "readOnly": True}]
    if src.persistent_volume_claim:
        pvc = src.persistent_volume_claim
        mount = {"name": "source", "mountPath": SOURCE_MOUNT, "readOnly": True}
        if pvc.path:
            mount["subPath"] = pvc.path.strip("/")
        return SOURCE_MOUNT, [{"name": "source", "persistentVolumeClaim": {"claimName": pvc.claim_name,
                                                                           "readOnly": True}}], [mount]
    return src.url or "", [], []


def drop_job(index: VectorIndex, d: Defaults) -> dict[str, Any]:
    """Deleting an index whose collection lives in an external Milvus: a Job drops the collection (it holds the
    token Secret; the operator never reads Secrets)."""
    conn = connection(index)
    env = client_env(index)
    meta = child_meta(index, f"{index.name}-drop", app=INGEST_APP, component="drop")
    job = copy.deepcopy({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": 3,
            "template": {
                "metadata": {"labels": pod_labels(index, app=INGEST_APP, component="drop")},
                "spec": {
                    "restartPolicy": "Never",
                    **({"serviceAccountName": index.spec.ingestion.service_account_name}
                       if index.spec.ingestion.service_account_name else {}),
                    "securityContext": copy.deepcopy(RESTRICTED_POD),
                    "containers": [{
                        "name": "drop",
                        "image": index.spec.ingestion.image or d.agentfleet_image,
                        "imagePullPolicy": d.image_pull_policy,
                        "command": ["agentfleet", "drop-collection"],
                        "args": ["--index", conn.uri, "--collection", conn.collection],
                        "env": env,
                        "securityContext": copy.deepcopy(RESTRICTED_CONTAINER),
                    }],
                },
            },
        },
    })
    overlay(job["spec"]["template"], index.spec.pod)
    return job


def ingest_job(index: VectorIndex, d: Defaults, *, embedder_url: str | None = None,
               embedder_model: str | None = None) -> dict[str, Any]:
    spec = index.spec
    conn = connection(index, embedding_url=embedder_url)
    source, volumes, mounts = _source(index)
    args = [
        "--source", source,
        "--index", conn.uri,
        "--collection", conn.collection,
        "--workers", str(spec.ingestion.workers),
        "--shards", str(spec.milvus.shards),
        "--chunk-tokens", str(spec.chunking.size_tokens),
        "--chunk-overlap", str(spec.chunking.overlap_tokens),
        "--dedupe-threshold", str(spec.chunking.dedupe_threshold),
        "--batch-size", str(spec.embedding.batch_size),
        "--embedder", embedder_url or (spec.embedding.local.model if spec.embedding.local else "all-minilm-l6-v2"),
        # Group and tenant names are arbitrary strings: JSON carries them without any quoting games.
        "--access", json.dumps(spec.access.wire(), sort_keys=True),
    ]
    if not spec.chunking.heading_aware:
        args.append("--no-heading-aware")
    if embedder_url and embedder_model:
        args += ["--embedding-model", embedder_model]
    env: list[dict[str, Any]] = client_env(index)
    env_from: list[dict[str, Any]] = []
    src = spec.source
    if src.url:
        args += ["--max-object-mb", str(src.max_object_mib), "--max-total-mb", str(src.max_total_mib)]
        if src.endpoint:
            args += ["--endpoint-url", src.endpoint]
        if src.region:
            args += ["--region", src.region]
        if src.credentials_secret_ref and src.url.startswith("gs://"):
            volumes.append({"name": "source-credentials", "secret": {
                "secretName": src.credentials_secret_ref.name,
                "items": [{"key": GCS_CREDENTIALS_KEY, "path": GCS_CREDENTIALS_KEY}]}})
            mounts.append({"name": "source-credentials", "mountPath": SOURCE_CREDENTIALS_MOUNT, "readOnly": True})
            env.append({"name": "GOOGLE_APPLICATION_CREDENTIALS",
                        "value": f"{SOURCE_CREDENTIALS_MOUNT}/{GCS_CREDENTIALS_KEY}"})
        elif src.credentials_secret_ref:
            env_from.append({"secretRef": {"name": src.credentials_secret_ref.name}})
    if spec.milvus.mode != "external" and spec.ingestion.store_wait_seconds:
        # The store this index created may still be starting (a managed Milvus: minutes); waiting here keeps the
        # Job's backoffLimit for real failures.
        args += ["--wait-for-store", str(spec.ingestion.store_wait_seconds)]
    volumes.append({"name": "tmp", "emptyDir": {}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})
    job_spec = {
        # Worker i of P reads JOB_COMPLETION_INDEX and takes its slice of the documents.
        "completionMode": "Indexed",
        "completions": spec.ingestion.workers,
        "parallelism": spec.ingestion.workers,
        "backoffLimit": spec.ingestion.backoff_limit,
        "template": {
            "metadata": {"labels": pod_labels(index, app=INGEST_APP, component="ingest")},
            "spec": {
                "restartPolicy": "Never",
                **({"serviceAccountName": spec.ingestion.service_account_name}
                   if spec.ingestion.service_account_name else {}),
                "securityContext": copy.deepcopy(RESTRICTED_POD),
                "containers": [{
                    "name": "ingest",
                    "image": spec.ingestion.image or d.agentfleet_image,
                    "imagePullPolicy": d.image_pull_policy,
                    "command": ["agentfleet", "ingest"],
                    "args": args,
                    "env": env,
                    **({"envFrom": env_from} if env_from else {}),
                    "resources": {"requests": dict(spec.ingestion.resources),
                                  "limits": {k: v for k, v in spec.ingestion.resources.items() if k == "memory"}},
                    "volumeMounts": mounts,
                    # The worker's summary (documents, chunks, skipped) is read back from here into status.
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                    "securityContext": copy.deepcopy(RESTRICTED_CONTAINER),
                }],
                "volumes": volumes,
            },
        },
    }
    overlay(job_spec["template"], spec.pod)
    # The name hashes the whole spec (a Job's template is immutable) plus the re-ingest annotation. Ingestion is
    # an idempotent upsert of content-hashed chunks, so a re-run after, say, an image upgrade is safe.
    # The store's mode is in it too: embedded and managed share a URI, but a new store starts empty.
    h = stable_hash({"spec": job_spec, "store": spec.milvus.mode,
                     "reingest": index.metadata.annotations.get(REINGEST_ANNOTATION, "")})
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": child_meta(index, ingest_job_name(index.name, h), app=INGEST_APP, component="ingest"),
        "spec": job_spec,
    }


def _embedded_milvus(index: VectorIndex, d: Defaults) -> list[dict[str, Any]]:
    name = milvus_name(index.name)
    full = f"{name}-milvus"

    def meta(n: str) -> dict[str, Any]:
        return child_meta(index, n, app=MILVUS_APP, component="vector-store")

    sel = selector_labels(index, app=MILVUS_APP, component="vector-store")
    auth_env: list[dict[str, Any]] = []
    if index.spec.milvus.auth_secret_ref:
        ref = index.spec.milvus.auth_secret_ref
        # Milvus reads any config key from the environment (common.security.* -> COMMON_SECURITY_*).
        auth_env = [{"name": "COMMON_SECURITY_AUTHORIZATIONENABLED", "value": "true"},
                    {"name": "COMMON_SECURITY_DEFAULTROOTPASSWORD",
                     "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]

    def health(failures: int) -> dict[str, Any]:
        return {"httpGet": {"path": "/healthz", "port": "metrics"}, "periodSeconds": 10, "timeoutSeconds": 5,
                "failureThreshold": failures}

    children = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta(full), "data": {"embedEtcd.yaml": EMBED_ETCD}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta(full),
            "spec": {"selector": dict(sel), "ports": [
                {"name": "grpc", "port": MILVUS_PORT, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "metrics", "port": MILVUS_METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"}]},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": meta(full),
            "spec": {
                "serviceName": full,
                "replicas": 1,
                # The data volume follows the VectorIndex's deletion policy (StatefulSets keep claims by default).
                "persistentVolumeClaimRetentionPolicy": {
                    "whenDeleted": "Delete" if index.spec.milvus.deletion_policy == "Delete" else "Retain",
                    "whenScaled": "Retain"},
                "selector": {"matchLabels": dict(sel)},
                "template": {
                    "metadata": {"labels": pod_labels(index, app=MILVUS_APP, component="vector-store")},
                    "spec": {
                        "securityContext": {**RESTRICTED_POD, "runAsUser": MILVUS_UID, "runAsGroup": MILVUS_UID,
                                            "fsGroup": MILVUS_UID, "fsGroupChangePolicy": "OnRootMismatch"},
                        # Milvus needs no Kubernetes API access.
                        "automountServiceAccountToken": False,
                        "containers": [{
                            "name": "milvus",
                            "image": d.milvus_image,
                            "imagePullPolicy": d.image_pull_policy,
                            "command": ["milvus", "run", "standalone"],
                            "env": [
                                {"name": "ETCD_USE_EMBED", "value": "true"},
                                {"name": "ETCD_DATA_DIR", "value": "/var/lib/milvus/etcd"},
                                {"name": "ETCD_CONFIG_PATH", "value": "/milvus/configs/embedEtcd.yaml"},
                                {"name": "COMMON_STORAGETYPE", "value": "local"},
                                {"name": "DEPLOY_MODE", "value": "STANDALONE"},
                                *auth_env,
                            ],
                            "ports": [{"name": "grpc", "containerPort": MILVUS_PORT, "protocol": "TCP"},
                                      {"name": "metrics", "containerPort": MILVUS_METRICS_PORT, "protocol": "TCP"}],
                            "resources": {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "8Gi"}},
                            "startupProbe": health(30),
                            "readinessProbe": health(3),
                            "livenessProbe": health(6),
                            "securityContext": copy.deepcopy(RESTRICTED_CONTAINER),
                            "volumeMounts": [
                                {"name": "data", "mountPath": "/var/lib/milvus"},
                                {"name": "config", "mountPath": "/milvus/configs/embedEtcd.yaml",
                                 "subPath": "embedEtcd.yaml", "readOnly": True},
                            ],
                        }],
                        "volumes": [{"name": "config", "configMap": {"name": full}}],
                    },
                },
                "volumeClaimTemplates": [{
                    "apiVersion": "v1",
                    "kind": "PersistentVolumeClaim",
                    "metadata": {"name": "data"},
                    "spec": {"accessModes": ["ReadWriteOnce"],
                             "resources": {"requests": {"storage": index.spec.milvus.storage_size}}},
                }],
            },
        },
        _milvus_network_policy(index, full, sel),
    ]
    overlay(next(c for c in children if c["kind"] == "StatefulSet")["spec"]["template"], index.spec.pod)
    return children


def _milvus_network_policy(index: VectorIndex, name: str, sel: dict[str, str]) -> dict[str, Any]:
    """Only this index's ingestion (and drop) pods and the namespace's AgentApp runtimes reach Milvus's port; its
    metrics port only Prometheus. Kubelet probes are not subject to NetworkPolicy."""
    ingest = selector_labels(index, app=INGEST_APP, component="ingest")
    drop = selector_labels(index, app=INGEST_APP, component="drop")
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": child_meta(index, name, app=MILVUS_APP, component="vector-store"),
        "spec": {
            "podSelector": {"matchLabels": dict(sel)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": [{"podSelector": {"matchLabels": ingest}}, {"podSelector": {"matchLabels": drop}},
                          {"podSelector": {"matchLabels": {LABEL_NAME: RUNTIME_APP}}}],
                 "ports": [{"protocol": "TCP", "port": MILVUS_PORT}]},
                {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {LABEL_NAME: "prometheus"}}}],
                 "ports": [{"protocol": "TCP", "port": MILVUS_METRICS_PORT}]},
            ],
        },
    }


def _managed_milvus(index: VectorIndex) -> dict[str, Any]:
    """A `milvus.io/v1beta1` Milvus (fields from the Milvus operator's apis/milvus.io/v1beta1). Retain: not owned
    by the VectorIndex (Kubernetes would collect it with its owner), and its in-cluster dependencies are kept with
    their volumes when it is deleted by hand; Delete: owned, and the dependencies go with their claims."""
    milvus = index.spec.milvus
    m = milvus.managed
    is_delete = milvus.deletion_policy == "Delete"

    def dependency(**values: Any) -> dict[str, Any]:
        dep: dict[str, Any] = {"deletionPolicy": milvus.deletion_policy, "pvcDeletion": is_delete}
        if values:
            dep["values"] = values
        return {"inCluster": dep}

    spec: dict[str, Any] = {
        "mode": m.mode,
        "dependencies": {
            # MinIO holds the collections' data: its volume is managed.storageSize (the MinIO chart's value).
            "storage": dependency(persistence={"size": m.storage_size}),
            "etcd": dependency(),
        },
        "config": {},
    }
    if m.mode == "cluster":
        spec["dependencies"]["pulsar"] = dependency()
    components: dict[str, Any] = {}
    if m.mode == "cluster":
        components.update({"queryNode": {"replicas": m.query_node_replicas},
                           "dataNode": {"replicas": m.data_node_replicas}})
    if milvus.auth_secret_ref:
        ref = milvus.auth_secret_ref
        spec["config"] = {"common": {"security": {"authorizationEnabled": True}}}
        # The root password stays in its Secret: Milvus reads common.security.defaultRootPassword from the env.
        components["env"] = [{"name": "COMMON_SECURITY_DEFAULTROOTPASSWORD",
                              "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]
    if components:
        spec["components"] = components
    meta = child_meta(index, milvus_name(index.name), app=MILVUS_APP, component="vector-store")
    if not is_delete:
        meta.pop("ownerReferences", None)
    return {"apiVersion": "milvus.io/v1beta1", "kind": "Milvus", "metadata": meta, "spec": spec}


def vectorindex(index: VectorIndex, defaults: Defaults, *, embedder_url: str | None = None,
                embedder_model: str | None = None) -> list[dict[str, Any]]:
    """`embedder_url`/`embedder_model`: the base URL and served model name of the ModelFleet named by
    spec.embedding.fleetRef, resolved by the caller. The Job comes last (`control` reads its name from there)."""
    children: list[dict[str, Any]] = []
    if index.spec.milvus.mode == "embedded":
        children += _embedded_milvus(index, defaults)
    elif index.spec.milvus.mode == "managed":
        children.append(_managed_milvus(index))
    children.append(ingest_job(index, defaults, embedder_url=embedder_url, embedder_model=embedder_model))
    return copy.deepcopy(children)
