"""AgentApp: the orchestrator. An OpenAI-compatible service running a multi-step agent loop (plan, call tools,
delegate to sub-agents, reflect) over retrieval that only returns what the caller may see."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ..names import API_VERSION
from .base import (
    DNS1123_LABEL, CRDInfo, Condition, LocalRef, Model, PrinterColumn, Resource, Rule, SecretKeyRef, StatusModel,
)

__all__ = [
    "FleetRoles", "IndexRef", "MCPServer", "ToolsSpec", "SubAgent", "LoopLimits", "AuthSpec", "LedgerSpec",
    "AgentAppSpec", "AgentAppStatus", "AgentApp", "BuiltinTool", "ModelRole",
]

BuiltinTool = Literal["retrieve", "delegate", "calculator"]
ModelRole = Literal["large", "small"]


class FleetRoles(Model):
    """ModelFleets by role: `large` plans and answers, `small` formats tool calls and does simple steps."""

    large: str = Field(pattern=DNS1123_LABEL, max_length=253, description="ModelFleet for planning and answers.")
    small: str | None = Field(default=None, pattern=DNS1123_LABEL, max_length=253,
                              description="ModelFleet for cheap steps; defaults to large.")
    embedder: str | None = Field(default=None, pattern=DNS1123_LABEL, max_length=253,
                                 description="ModelFleet serving query embeddings; defaults to the index's embedder.")


class IndexRef(LocalRef):
    top_k: int = Field(default=5, ge=1, le=100)


class MCPServer(Model):
    name: str = Field(pattern=r"^[a-z0-9_-]{1,64}$")
    url: str = Field(pattern=r"^https?://\S+$", description="Streamable HTTP endpoint of the MCP server.")
    headers_secret_ref: LocalRef | None = Field(default=None,
                                                description="Secret whose keys become HTTP headers.")


class ToolsSpec(Model):
    builtin: list[BuiltinTool] = Field(default_factory=lambda: ["retrieve", "calculator"])
    mcp_servers: list[MCPServer] = Field(default_factory=list)


class SubAgent(Model):
    name: str = Field(pattern=r"^[a-z0-9_-]{1,64}$")
    description: str = Field(min_length=1, description="Tells the parent agent when to delegate.")
    system_prompt: str = Field(min_length=1)
    tools: list[str] = Field(default_factory=lambda: ["retrieve"], description="Built-in or MCP tool names.")
    model_role: ModelRole = "small"
    budget_share: float = Field(default=0.25, gt=0, le=1, description="Share of the parent's remaining budget.")


class LoopLimits(Model):
    """Hard caps: hitting one ends the task with its reason and the partial answer, never a hang."""

    max_steps: int = Field(default=8, ge=1, le=100)
    max_tokens: int = Field(default=32000, ge=256)
    deadline_seconds: int = Field(default=120, ge=1, le=86400)
    tool_timeout_seconds: int = Field(default=20, ge=1, le=3600)
    max_delegation_depth: int = Field(default=2, ge=0, le=5)
    max_parallel_sub_agents: int = Field(default=4, ge=1, le=64)


class AuthSpec(Model):
    api_keys_secret_ref: SecretKeyRef = Field(
        description="Secret key holding YAML: API key -> {user, tenant, groups}.")


class LedgerSpec(Model):
    """Where budget reservations live: SQLite for one replica, Redis shared by several."""

    __rules__: ClassVar = (
        Rule("self.backend != 'redis' || has(self.redisUrl)", "redisUrl is required when backend is redis",
             lambda s: s.backend != "redis" or s.redis_url is not None, "redisUrl"),
    )

    backend: Literal["sqlite", "redis"] = "sqlite"
    redis_url: str | None = Field(default=None, pattern=r"^rediss?://\S+$")


class AgentAppSpec(Model):
    __rules__: ClassVar = (
        Rule("self.replicas <= 1 || self.ledger.backend == 'redis'",
             "more than one replica needs ledger.backend redis (a SQLite ledger cannot be shared)",
             lambda s: s.replicas <= 1 or s.ledger.backend == "redis", "replicas"),
        Rule("!self.tools.builtin.exists(t, t == 'retrieve') || has(self.index)",
             "the retrieve tool needs an index", lambda s: "retrieve" not in s.tools.builtin or s.index is not None,
             "index"),
    )

    fleets: FleetRoles
    index: IndexRef | None = None
    budget_ref: LocalRef | None = None
    system_prompt: str = Field(
        default="You are a helpful assistant. Answer from the retrieved documents and cite them.", min_length=1)
    tools: ToolsSpec = Field(default_factory=ToolsSpec)
    sub_agents: list[SubAgent] = Field(default_factory=list)
    limits: LoopLimits = Field(default_factory=LoopLimits)
    auth: AuthSpec
    ledger: LedgerSpec = Field(default_factory=LedgerSpec)
    replicas: int = Field(default=1, ge=0, le=100)
    image: str | None = None
    resources: dict[str, str] = Field(default_factory=lambda: {"cpu": "500m", "memory": "512Mi"})


class AgentAppStatus(StatusModel):
    observed_generation: int | None = None
    endpoint: str | None = None
    replicas: int = 0
    ready_replicas: int = 0
    fleets: list[str] = Field(default_factory=list)
    index: str | None = None
    budget: str | None = None
    config_hash: str | None = None
    conditions: list[Condition] = Field(default_factory=list)


class AgentApp(Resource):
    __crd__: ClassVar = CRDInfo(
        kind="AgentApp", plural="agentapps", short_names=("app",),
        columns=(
            PrinterColumn("Ready", ".status.readyReplicas", "integer"),
            PrinterColumn("Endpoint", ".status.endpoint"),
            PrinterColumn("Large", ".spec.fleets.large"),
            PrinterColumn("Index", ".spec.index.name"),
            PrinterColumn("Budget", ".spec.budgetRef.name"),
            PrinterColumn("Status", '.status.conditions[?(@.type=="Ready")].reason'),
            PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
        ),
    )

    api_version: Literal[API_VERSION] = API_VERSION  # type: ignore[valid-type]
    kind: Literal["AgentApp"] = "AgentApp"
    spec: AgentAppSpec
    status: AgentAppStatus = Field(default_factory=AgentAppStatus)

    @property
    def fleet_names(self) -> list[str]:
        roles = self.spec.fleets
        return list(dict.fromkeys(n for n in (roles.large, roles.small, roles.embedder) if n))
