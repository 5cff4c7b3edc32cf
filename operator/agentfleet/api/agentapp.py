"""AgentApp: the orchestrator. An OpenAI-compatible service running a multi-step agent loop (plan, call tools,
delegate to sub-agents, reflect) over retrieval that only returns what the caller may see."""

from __future__ import annotations

import ipaddress
import re
from typing import ClassVar, Literal, get_args

from pydantic import Field, field_validator

from ..names import API_VERSION
from .base import (
    DNS1123_LABEL, CRDInfo, Condition, LocalRef, Model, PodOptions, PrinterColumn, Resource, Rule, SecretKeyRef,
    StatusModel,
)

__all__ = [
    "FleetRoles", "IndexRef", "MCPServer", "ToolsSpec", "A2AAgent", "SubAgent", "LoopLimits", "AuthSpec",
    "FailedAttempts", "LedgerSpec", "DEFAULT_SUB_AGENT_TOOLS", "DEFAULT_SUB_AGENT_ROLE",
    "AgentAppSpec", "AgentAppStatus", "AgentApp", "UpstreamStatus", "BuiltinTool", "LedgerStorage", "ModelRole", "ConfigMapKeyRef",
    "EvaluationGate", "EvaluationSpec", "EvaluationStatus", "TelemetrySpec", "WarmSpec", "cron_problem",
]

BuiltinTool = Literal["retrieve", "delegate", "calculator"]
ModelRole = Literal["large", "small"]
RetrievalMode = Literal["hybrid", "dense", "bm25"]
RETRIEVAL_MODES: tuple[str, ...] = get_args(RetrievalMode)


class FleetRoles(Model):
    """ModelFleets by role: `large` plans and answers, `small` formats tool calls and does simple steps."""

    large: str = Field(pattern=DNS1123_LABEL, max_length=253, description="ModelFleet for planning and answers.")
    small: str | None = Field(default=None, pattern=DNS1123_LABEL, max_length=253,
                              description="ModelFleet for cheap steps; defaults to large.")
    embedder: str | None = Field(default=None, pattern=DNS1123_LABEL, max_length=253,
                                 description="ModelFleet serving query embeddings; defaults to the index's embedder.")


class IndexRef(LocalRef):
    top_k: int = Field(default=5, ge=1, le=100)
    mode: RetrievalMode = Field(
        default="hybrid",
        description="hybrid: dense and BM25 full-text search fused (the default, best measured on pyfaq); dense: "
                    "vector search only (Milvus < 2.5, or the lowest latency); bm25: full-text only.")


class MCPServer(Model):
    name: str = Field(pattern=r"^[a-z0-9_-]{1,64}$")
    url: str = Field(pattern=r"^https?://\S+$", description="Streamable HTTP endpoint of the MCP server.")
    headers_secret_ref: LocalRef | None = Field(default=None,
                                                description="Secret whose keys become HTTP headers.")
    idempotent: bool = Field(default=False, description=(
        "Whether this server's tools are safe to call again: a call interrupted by a runtime replica's death is "
        "re-run by the replica that takes the run over only when true, else recorded as interrupted."))


class WarmSpec(Model):
    """Warm the next step's prefix while a long tool runs: `leadSeconds` before a tool is expected to end (its
    typical duration on this replica, learned from its past calls), the run's transcript so far is sent to the
    model as a 1-token request on the run's session, so an engine that evicted the history during the tool prefills
    it again off the run's critical path. Each warm is a real call: its prompt tokens are charged to the task and
    the Budget. Measured in the README (`agentfleet bench routing --tool-s 1 --kv-pressure`, +warm)."""

    enabled: bool = False
    min_tool_seconds: float = Field(default=1.0, ge=0.1, le=3600,
                                    description="Only tools whose typical duration is at least this are warmed for.")
    lead_seconds: float = Field(default=0.5, ge=0.05, le=60,
                                description="How long before the tool's expected end the warm request is sent.")


class ToolsSpec(Model):
    builtin: list[BuiltinTool] = Field(default_factory=lambda: ["retrieve", "calculator"])
    mcp_servers: list[MCPServer] = Field(default_factory=list)
    warm: WarmSpec = Field(default_factory=WarmSpec)


class A2AAgent(Model):
    """A remote agent spoken to over A2A (0.3, JSON-RPC `message/send`, blocking): another AgentApp or any A2A
    server. This app authenticates with its own API key there and names the end user in on-behalf-of headers;
    the remote app accepts them only from a key its key store marks `delegate: true`, and only narrowed to that
    key's tenant and groups."""

    url: str = Field(pattern=r"^https?://\S+$", max_length=2048, description=(
        "The remote agent's JSON-RPC endpoint (its agent card's url), e.g. http://research.team-b:8080/a2a."))
    key_secret_ref: SecretKeyRef = Field(description=(
        "Secret key holding this app's API key at the remote agent (sent as `Authorization: Bearer`); mounted into "
        "the runtime, never read by the operator."))


DEFAULT_SUB_AGENT_TOOLS: tuple[str, ...] = ("retrieve",)
DEFAULT_SUB_AGENT_ROLE: ModelRole = "small"


class SubAgent(Model):
    """A local sub-agent (systemPrompt, tools, modelRole: run by this runtime's loop on this app's fleets and
    Budget) or a remote A2A agent (a2a: its prompt, tools, models and Budget are the remote app's)."""

    __rules__: ClassVar = (
        Rule("has(self.a2a) || has(self.systemPrompt)",
             "a local sub-agent needs systemPrompt (or set a2a to call a remote A2A agent)",
             lambda s: s.a2a is not None or s.system_prompt is not None, "systemPrompt"),
        Rule("!has(self.a2a) || (!has(self.systemPrompt) && !has(self.tools) && !has(self.modelRole))",
             "an a2a sub-agent runs remotely: its system prompt, tools and model are the remote app's, so leave "
             "out systemPrompt, tools and modelRole",
             lambda s: s.a2a is None or (s.system_prompt is None and s.tools is None and s.model_role is None),
             "a2a"),
    )

    name: str = Field(pattern=r"^[a-z0-9_-]{1,64}$")
    description: str = Field(min_length=1, description="Tells the parent agent when to delegate.")
    system_prompt: str | None = Field(default=None, min_length=1,
                                      description="A local sub-agent's instructions (required unless a2a is set).")
    tools: list[str] | None = Field(default=None, description=(
        "Built-in or MCP tool names of a local sub-agent (default: retrieve)."))
    model_role: ModelRole | None = Field(default=None,
                                         description="The fleet a local sub-agent runs on (default: small).")
    budget_share: float = Field(default=0.25, gt=0, le=1, description=(
        "Share of the parent's remaining budget (a local sub-agent; an a2a one spends the remote app's Budget)."))
    a2a: A2AAgent | None = Field(default=None, alias="a2a",  # to_camel would spell it a2A
                                 description="Call a remote A2A agent instead of running one here.")

    @property
    def local_tools(self) -> tuple[str, ...]:
        """The tools a local sub-agent runs with (none for an a2a one)."""
        if self.a2a is not None:
            return ()
        return tuple(self.tools) if self.tools is not None else DEFAULT_SUB_AGENT_TOOLS

    @property
    def role(self) -> ModelRole:
        return self.model_role or DEFAULT_SUB_AGENT_ROLE


class LoopLimits(Model):
    """Hard caps: hitting one ends the task with its reason and the partial answer, never a hang."""

    max_steps: int = Field(default=8, ge=1, le=100)
    max_tokens: int = Field(default=32000, ge=256)
    deadline_seconds: int = Field(default=120, ge=1, le=86400)
    tool_timeout_seconds: int = Field(default=20, ge=1, le=3600)
    max_delegation_depth: int = Field(default=2, ge=0, le=5)
    max_parallel_sub_agents: int = Field(default=4, ge=1, le=64)


class FailedAttempts(Model):
    """Failed authentication allowed per minute before the runtime answers 429 with Retry-After (0: no limit)."""

    per_address_per_minute: int = Field(default=30, ge=0, le=100000,
                                        description="Failures from one client address.")
    per_key_prefix_per_minute: int = Field(default=10, ge=0, le=100000,
                                           description="Failures naming one key prefix (its first 8 characters).")


class CallerLimit(Model):
    """Limits on starting runs (chat completions, responses and /v1/runs), per replica; 0 turns one off."""

    concurrent_runs: int = Field(ge=0, le=100000, description="Runs in progress at once.")
    runs_per_minute: int = Field(default=0, ge=0, le=1000000,
                                 description="Runs started per minute (a token bucket; the burst is one minute's "
                                             "worth).")


def default_per_key() -> CallerLimit:
    return CallerLimit(concurrent_runs=100)


def default_per_tenant() -> CallerLimit:
    return CallerLimit(concurrent_runs=500)


class AuthSpec(Model):
    api_keys_secret_ref: SecretKeyRef = Field(
        description="Secret key holding YAML: API key -> {user, tenant, groups}.")
    failed_attempts: FailedAttempts = Field(default_factory=FailedAttempts)
    per_key: CallerLimit = Field(
        default_factory=default_per_key,
        description="Each API key's share: by default a tenth of a replica's 1,000-run registry, so one key cannot "
                    "fill it (or hold every reservation of the Budget) for everyone.")
    per_tenant: CallerLimit = Field(default_factory=default_per_tenant,
                                    description="Each tenant's share, all its keys together.")
    trusted_proxies: list[str] = Field(
        default_factory=list, max_length=32,
        description="CIDRs of proxies (an ingress) whose X-Forwarded-For names the client; empty: the TCP peer is "
                    "the client.")

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        for cidr in v:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IP address or CIDR") from None
        return v


class LedgerStorage(Model):
    """The volume a SQLite ledger lives on in a cluster (a PersistentVolumeClaim `<app>-state`), so the day's
    spend survives pod restarts and rollouts."""

    __rules__: ClassVar = (
        # A claim's storage class cannot change in place.
        Rule("has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || "
             "self.storageClassName == oldSelf.storageClassName)",
             "storageClassName of the ledger's volume cannot change once created", None, "storageClassName"),
    )

    size: str = Field(default="1Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)$",
                      description="Requested size of the claim; it can grow (when the class allows), not shrink.")
    storage_class_name: str | None = Field(default=None, pattern=DNS1123_LABEL, max_length=253,
                                           description="Storage class of the claim; the cluster's default if unset.")


class LedgerSpec(Model):
    """Where budget reservations live: SQLite on a PersistentVolumeClaim for one replica, Redis shared by several
    replicas and by every AgentApp that references the same Budget."""

    __rules__: ClassVar = (
        Rule("self.backend != 'redis' || has(self.redisUrlSecretRef) || has(self.redisUrl)",
             "backend redis needs redisUrlSecretRef (a Secret key holding the redis:// URL; redisUrl is for local "
             "use only)",
             lambda s: s.backend != "redis" or s.redis_url_secret_ref is not None or s.redis_url is not None,
             "redisUrlSecretRef"),
        Rule("!has(self.redisUrl) || !has(self.redisUrlSecretRef)", "set one of redisUrl and redisUrlSecretRef",
             lambda s: s.redis_url is None or s.redis_url_secret_ref is None, "redisUrl"),
    )

    backend: Literal["sqlite", "redis"] = "sqlite"
    redis_url_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the Redis URL (redis:// or rediss://, with credentials); "
                                  "the runtime reads it from the environment variable AGENTFLEET_REDIS_URL.")
    redis_url: str | None = Field(
        default=None, pattern=r"^rediss?://\S+$",
        description="The Redis URL in plain text: for `agentfleet up` and local use. In a cluster use "
                    "redisUrlSecretRef, so credentials stay out of the spec and the runtime ConfigMap.")
    storage: LedgerStorage = Field(default_factory=LedgerStorage,
                                   description="backend sqlite in a cluster: the claim holding ledger.db.")


class ConfigMapKeyRef(Model):
    """A key of a ConfigMap in the same namespace (mounted as a file of that name)."""

    name: str = Field(pattern=DNS1123_LABEL, max_length=253)
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253, description="The key (and file name).")


# Kubernetes CronJobs parse schedules with robfig/cron's standard parser: five fields or a descriptor.
_CRON_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_CRON_SHAPE = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|\S+( +\S+){4})$"
_CRON_FIELDS = (  # (name, low, high, names)
    ("minute", 0, 59, ()), ("hour", 0, 23, ()), ("day of month", 1, 31, ()),
    ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")),
    ("day of week", 0, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")),
)
_CRON_ITEM = re.compile(r"^(\*|\?|[0-9A-Za-z]+(-[0-9A-Za-z]+)?)(/[0-9]+)?$")


def cron_problem(schedule: str) -> str | None:
    """Why `schedule` is not a cron schedule a Kubernetes CronJob accepts, or None when it is."""
    text = schedule.strip()
    if text.startswith("@"):
        return None if text in _CRON_DESCRIPTORS else f"unknown descriptor {text!r}; use one of " + ", ".join(
            _CRON_DESCRIPTORS) + " or five fields"
    fields = text.split()
    if len(fields) != 5:
        return f"want five fields (minute hour day-of-month month day-of-week), got {len(fields)}"
    for value, (what, low, high, names) in zip(fields, _CRON_FIELDS):
        for item in value.split(","):
            m = _CRON_ITEM.match(item)
            if not m:
                return f"{what} field {value!r}: cannot read {item!r}"
            if m.group(3) and int(m.group(3)[1:]) == 0:
                return f"{what} field {value!r}: step 0"
            if m.group(1) == "?" and what not in ("day of month", "day of week"):
                return f"{what} field {value!r}: '?' is only for day of month or day of week"
            if m.group(1) in ("*", "?"):
                continue
            bounds = []
            for part in m.group(1).split("-"):
                if part.isdigit():
                    n = int(part)
                elif part.upper() in names:
                    n = names.index(part.upper()) + low
                else:
                    return f"{what} field {value!r}: {part!r} is not a number" + (
                        f" or one of {', '.join(names)}" if names else "")
                if not low <= n <= high:
                    return f"{what} field {value!r}: {n} is outside {low}-{high}"
                bounds.append(n)
            if len(bounds) == 2 and bounds[0] > bounds[1]:
                return f"{what} field {value!r}: range {item!r} runs backwards"
    return None


class EvaluationGate(Model):
    """Thresholds applied to every evaluation's summary. A metric with a threshold that the run did not measure
    (null: no relevance labels for nDCG, no solved task for cost per solved task) fails the gate."""

    min_success_rate: float | None = Field(default=None, ge=0, le=1,
                                           description="Share of cases whose checks all pass.")
    min_faithfulness: float | None = Field(default=None, ge=0, le=1,
                                           description="Share of answer claims supported by the retrieved context.")
    min_ndcg_at10: float | None = Field(default=None, ge=0, le=1, description="Retrieval nDCG@10 (graded).")
    max_cost_per_solved_task_usd: float | None = Field(default=None, ge=0,
                                                       description="Money spent per successful case, in USD.")
    max_leaks: int = Field(default=0, ge=0,
                           description="Answers or citations from a source the principal may not see.")


class EvaluationSpec(Model):
    """Run `agentfleet eval` against the app's own Service as real principals: a Job whenever the app or the
    suite changes (onChange) and/or on a cron schedule; the summary lands in status.evaluation and a failing gate
    sets Degraded (reason EvaluationRegressed)."""

    __rules__: ClassVar = (
        Rule("has(self.schedule) || self.onChange", "set schedule, onChange: true, or both (else it never runs)",
             lambda s: s.schedule is not None or s.on_change, "onChange"),
    )

    suite_ref: ConfigMapKeyRef = Field(description="ConfigMap key holding the suite (YAML, or JSONL for *.jsonl).")
    keys_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the evaluation key store (API key -> {user, tenant, groups});"
                                  " defaults to auth.apiKeysSecretRef.")
    schedule: str | None = Field(default=None, pattern=_CRON_SHAPE, max_length=128,
                                 description="Cron schedule of a CronJob running the evaluation.")
    on_change: bool = Field(default=True, description="Run a Job whenever the app's spec or the suite changes.")
    concurrency: int = Field(default=4, ge=1, le=64, description="Cases asked at the same time.")
    judge: str | None = Field(default=None, pattern=r"^(large|small|https?://\S+)$",
                              description="LLM judge: a model role of this app or an OpenAI-compatible URL.")
    gate: EvaluationGate = Field(default_factory=EvaluationGate)
    deadline_seconds: int = Field(default=3600, ge=60, le=86400,
                                  description="The run is stopped (and reported Failed) after this long.")
    resources: dict[str, str] = Field(default_factory=lambda: {"cpu": "250m", "memory": "1Gi"})

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and (why := cron_problem(value)):
            raise ValueError(f"not a cron schedule: {why}")
        return value


class TelemetrySpec(Model):
    """OpenTelemetry traces and metrics (GenAI semantic conventions) sent over OTLP/HTTP. Absent: off, and no
    span is made. Attributes carry names, counts, ids and cost, never prompts, answers, passages or the
    caller's groups."""

    otlp_endpoint: str = Field(pattern=r"^https?://\S+$", description=(
        "OTLP/HTTP base URL of a collector (e.g. http://otel-collector.observability:4318); /v1/traces and "
        "/v1/metrics are appended."))
    service_name: str | None = Field(default=None, max_length=253,
                                     description="service.name of the runtime's spans (default: the AgentApp's name).")
    sample_ratio: float = Field(default=1.0, ge=0, le=1, description=(
        "Share of new traces recorded; a caller's sampled traceparent is always followed."))


class AgentAppSpec(Model):
    __rules__: ClassVar = (
        Rule("self.replicas <= 1 || self.ledger.backend == 'redis'",
             "more than one replica needs ledger.backend redis with ledger.redisUrlSecretRef: a SQLite ledger lives "
             "on one ReadWriteOnce volume and cannot be shared",
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
    pod: PodOptions = Field(default_factory=PodOptions,
                            description="Laid over the runtime's pods and the evaluation Jobs' pods.")
    evaluation: EvaluationSpec | None = None
    telemetry: TelemetrySpec | None = None


class EvaluationStatus(StatusModel):
    """The newest evaluation summary (null: not measured) and the run that is or was last in flight."""

    phase: Literal["Waiting", "Running", "Succeeded", "Failed"] | None = None
    job: str | None = Field(default=None, description="The newest evaluation Job.")
    gate: Literal["Passed", "Failed"] | None = None
    message: str | None = None
    success_rate: float | None = None
    faithfulness: float | None = None
    ndcg_at10: float | None = None
    cost_per_solved_task_usd: float | None = None
    leaks: int | None = None
    cases: int | None = None
    time: str | None = Field(default=None, description="When the summarised run finished (RFC 3339).")
    observed_generation: int | None = Field(
        default=None, description="The AgentApp generation the summarised run evaluated, when known.")


class UpstreamStatus(StatusModel):
    """A fleet or index the runtime calls, as its own status reports it (Ready condition)."""

    kind: str
    name: str
    ready: Literal["True", "False", "Unknown"] = "Unknown"
    reason: str | None = None
    message: str | None = None


class AgentAppStatus(StatusModel):
    observed_generation: int | None = None
    endpoint: str | None = None
    replicas: int = 0
    ready_replicas: int = 0
    fleets: list[str] = Field(default_factory=list)
    index: str | None = None
    budget: str | None = None
    config_hash: str | None = None
    upstreams: list[UpstreamStatus] = Field(
        default_factory=list, description="The fleets and index the runtime calls, with their readiness (the "
                                          "UpstreamsReady condition sums it up; the app's own Ready does not wait "
                                          "on them).")
    evaluation: EvaluationStatus | None = None
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
            PrinterColumn("Success", ".status.evaluation.successRate", "number",
                          description="Evaluation: share of cases solved."),
            PrinterColumn("Leaks", ".status.evaluation.leaks", "integer",
                          description="Evaluation: answers or citations from forbidden sources."),
            PrinterColumn("Gate", ".status.evaluation.gate", description="Evaluation gate: Passed or Failed."),
            PrinterColumn("Faithful", ".status.evaluation.faithfulness", "number", priority=1),
            PrinterColumn("nDCG", ".status.evaluation.ndcgAt10", "number", priority=1),
            PrinterColumn("Cost/Solved", ".status.evaluation.costPerSolvedTaskUsd", "number", priority=1),
            PrinterColumn("Evaluated", ".status.evaluation.time", "date", priority=1),
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
