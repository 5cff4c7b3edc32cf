"""VectorIndex -> its children: an indexed ingestion Job (worker i of P takes its slice; the name carries a hash
of what it ingests, since a Job cannot change in place), the claim holding a milvus-lite file, or a `Milvus`
resource for the Milvus operator. `connection()` is how readers (the AgentApp runtime) reach the index."""

from __future__ import annotations

import json
from typing import Any

from ..api import IndexConnection, VectorIndex
from ..names import GROUP, index_data_claim_name, ingest_job_name, milvus_name, milvus_uri
from .defaults import Defaults
from .meta import child_meta, stable_hash

__all__ = ["vectorindex", "connection", "ingest_hash", "INGEST_APP", "SOURCE_MOUNT", "INDEX_MOUNT", "MILVUS_TOKEN_ENV",
           "REINGEST_ANNOTATION"]

INGEST_APP = "agentfleet-ingest"
SOURCE_MOUNT = "/data/source"
INDEX_MOUNT = "/data/index"
MILVUS_TOKEN_ENV = "MILVUS_TOKEN"
# Changing this annotation's value re-runs ingestion without changing the spec.
REINGEST_ANNOTATION = f"{GROUP}/reingest"


def connection(index: VectorIndex, *, top_k: int = 5, embedding_url: str | None = None) -> IndexConnection:
    spec = index.spec
    m = spec.milvus
    if m.mode == "lite":
        uri = f"{INDEX_MOUNT}/{index.collection}.db"
    elif m.mode == "external":
        uri = m.uri or ""
    else:
        uri = milvus_uri(index.name, index.namespace)
    return IndexConnection(
        name=index.name, uri=uri, collection=index.collection,
        token_env=MILVUS_TOKEN_ENV if m.token_secret_ref else None, top_k=top_k,
        embedding=spec.embedding, embedding_url=embedding_url, chunking=spec.chunking, access=spec.access,
    )


def ingest_hash(index: VectorIndex) -> str:
    """Everything that changes what ends up in the collection; not replicas, images or resources alone."""
    s = index.spec
    return stable_hash({
        "source": s.source.wire(), "chunking": s.chunking.wire(), "embedding": s.embedding.wire(),
        "milvus": {"mode": s.milvus.mode, "uri": s.milvus.uri, "collection": index.collection,
                   "shards": s.milvus.shards},
        "access": s.access.wire(), "workers": s.ingestion.workers,
        "reingest": index.metadata.annotations.get(REINGEST_ANNOTATION, ""),
    })


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


def _job(index: VectorIndex, conn: IndexConnection, d: Defaults, embedder_url: str | None) -> dict[str, Any]:
    spec = index.spec
    h = ingest_hash(index)
    name = ingest_job_name(index.name, h)
    source, volumes, mounts = _source(index)
    args = [
        "--source", source,
        "--index", conn.uri,
        "--collection", conn.collection,
        "--workers", str(spec.ingestion.workers),
        "--shards", str(spec.milvus.shards),
        "--chunk-tokens", str(spec.chunking.size_tokens),
        "--chunk-overlap", str(spec.chunking.overlap_tokens),
        "--embedder", embedder_url or (spec.embedding.local.model if spec.embedding.local else "all-minilm-l6-v2"),
        # Group and tenant names are arbitrary strings: JSON carries them without any quoting games.
        "--access", json.dumps(spec.access.wire(), sort_keys=True),
    ]
    env: list[dict[str, Any]] = []
    if spec.milvus.token_secret_ref:
        ref = spec.milvus.token_secret_ref
        env.append({"name": MILVUS_TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
    if spec.milvus.mode == "lite":
        volumes.append({"name": "index", "persistentVolumeClaim": {"claimName": index_data_claim_name(index.name)}})
        mounts.append({"name": "index", "mountPath": INDEX_MOUNT})
    volumes.append({"name": "tmp", "emptyDir": {}})
    mounts.append({"name": "tmp", "mountPath": "/tmp"})
    meta = child_meta(index, name, app=INGEST_APP, component="ingest")
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            # Worker i of P reads JOB_COMPLETION_INDEX and takes its slice of the documents.
            "completionMode": "Indexed",
            "completions": spec.ingestion.workers,
            "parallelism": spec.ingestion.workers,
            "backoffLimit": spec.ingestion.backoff_limit,
            "template": {
                "metadata": {"labels": meta["labels"]},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "ingest",
                        "image": spec.ingestion.image or d.agentfleet_image,
                        "imagePullPolicy": d.image_pull_policy,
                        "command": ["agentfleet", "ingest"],
                        "args": args,
                        "env": env,
                        "resources": {"requests": dict(spec.ingestion.resources),
                                      "limits": {k: v for k, v in spec.ingestion.resources.items()
                                                 if k == "memory"}},
                        "volumeMounts": mounts,
                        # The worker's summary (documents, chunks, skipped) is read back from here into status.
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False},
                    }],
                    "volumes": volumes,
                },
            },
        },
    }


def _lite_claim(index: VectorIndex) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": child_meta(index, index_data_claim_name(index.name), app=INGEST_APP, component="index-data"),
        "spec": {"accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": index.spec.milvus.storage_size}}},
    }


def _managed_milvus(index: VectorIndex) -> dict[str, Any]:
    m = index.spec.milvus.managed
    spec: dict[str, Any] = {
        "mode": m.mode,
        "dependencies": {"storage": {"inCluster": {"deletionPolicy": "Delete", "pvcDeletion": True}},
                         "etcd": {"inCluster": {"deletionPolicy": "Delete", "pvcDeletion": True}}},
        "config": {},
    }
    if m.mode == "cluster":
        spec["components"] = {"queryNode": {"replicas": m.query_node_replicas},
                              "dataNode": {"replicas": m.data_node_replicas}}
    return {
        "apiVersion": "milvus.io/v1beta1",
        "kind": "Milvus",
        "metadata": child_meta(index, milvus_name(index.name), app="milvus", component="vector-store"),
        "spec": spec,
    }


def vectorindex(index: VectorIndex, defaults: Defaults, *, embedder_url: str | None = None) -> list[dict[str, Any]]:
    """`embedder_url` is the base URL of the ModelFleet named by spec.embedding.fleetRef, resolved by the caller."""
    conn = connection(index, embedding_url=embedder_url)
    children: list[dict[str, Any]] = []
    if index.spec.milvus.mode == "lite":
        children.append(_lite_claim(index))
    elif index.spec.milvus.mode == "managed":
        children.append(_managed_milvus(index))
    children.append(_job(index, conn, defaults, embedder_url))
    return children
