"""The runtime configuration: what the operator (or `agentfleet up`) hands an AgentApp's server. It is the
contract between render and the runtime, so it is a model like the resources themselves."""

from __future__ import annotations

from pydantic import Field

from .agentapp import (CallerLimit, FailedAttempts, LedgerSpec, LoopLimits, ModelRole, RetrievalMode, SubAgent,
                       TelemetrySpec, ToolsSpec, default_per_key, default_per_tenant)
from .base import Model
from .budget import BudgetSpec
from .vectorindex import AccessDefaults, ChunkingSpec, EmbeddingSpec

__all__ = ["ModelEndpoint", "IndexConnection", "BudgetConfig", "RuntimeConfig"]


class ModelEndpoint(Model):
    role: ModelRole
    fleet: str
    url: str = Field(description="OpenAI-compatible base URL, ending in /v1.")
    model: str = Field(description="Served model name sent in requests.")
    is_router: bool = Field(default=False, description=(
        "The URL is a ModelFleet's agentfleet router: calls carry the run (x-agentfleet-run) and the run's end is "
        "sent to it (POST /v1/sessions/end). Never for a hosted API."))
    input_per_m_tokens_usd: float | None = None
    output_per_m_tokens_usd: float | None = None


class IndexConnection(Model):
    name: str
    uri: str = Field(description="A milvus-lite file path or a Milvus URI.")
    collection: str
    token_env: str | None = Field(default=None, description="Environment variable holding the Milvus token.")
    top_k: int = 5
    mode: RetrievalMode = "hybrid"
    embedding: EmbeddingSpec = Field(default_factory=EmbeddingSpec)
    embedding_url: str | None = Field(default=None, description="Base URL when embeddings come from a ModelFleet.")
    chunking: ChunkingSpec = Field(default_factory=ChunkingSpec)
    access: AccessDefaults = Field(default_factory=AccessDefaults)
    source_url: str | None = Field(default=None, description=(
        "The VectorIndex's spec.source.url, when it has one: a citation of its one http(s) document links there."))


class BudgetConfig(Model):
    name: str
    spec: BudgetSpec


class RuntimeConfig(Model):
    app: str
    namespace: str
    models: dict[ModelRole, ModelEndpoint]
    index: IndexConnection | None = None
    budget: BudgetConfig | None = None
    system_prompt: str
    tools: ToolsSpec
    sub_agents: list[SubAgent] = Field(default_factory=list)
    limits: LoopLimits
    ledger: LedgerSpec
    api_keys_file: str = Field(description="YAML file: API key -> {user, tenant, groups}.")
    failed_attempts: FailedAttempts = Field(default_factory=FailedAttempts)
    per_key: CallerLimit = Field(default_factory=default_per_key)
    per_tenant: CallerLimit = Field(default_factory=default_per_tenant)
    trusted_proxies: list[str] = Field(default_factory=list)
    telemetry: TelemetrySpec | None = Field(default=None, description="OpenTelemetry export; absent: off.")
