"""Budget: token and money limits per app or tenant, cheap-versus-large routing, and per-task caps. It creates
nothing; the AgentApp runtime enforces it with a reservation ledger and its spend is read back into status."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ..names import API_VERSION
from .base import CRDInfo, Condition, Model, PrinterColumn, Resource, Rule, StatusModel

__all__ = [
    "BudgetScope", "BudgetLimits", "TaskCaps", "Price", "RoutingSpec", "BudgetSpec", "BudgetStatus", "Budget",
    "Window",
]

Window = Literal["hour", "day", "week", "month", "total"]


class BudgetScope(Model):
    """What the limits apply to: an AgentApp, a tenant, or a tenant of an app. Empty means every caller."""

    app: str | None = Field(default=None, min_length=1)
    tenant: str | None = Field(default=None, min_length=1)


class BudgetLimits(Model):
    __rules__: ClassVar = (
        Rule("has(self.tokens) || has(self.costUsd)", "set at least one of tokens and costUsd",
             lambda s: s.tokens is not None or s.cost_usd is not None),
    )

    tokens: int | None = Field(default=None, ge=0, description="Prompt + completion tokens per window.")
    cost_usd: float | None = Field(default=None, ge=0, description="Money per window, in US dollars.")


class TaskCaps(Model):
    max_tokens: int | None = Field(default=None, ge=1)
    max_cost_usd: float | None = Field(default=None, ge=0)


class Price(Model):
    model: str = Field(min_length=1, description="A ModelFleet name or a served model name.")
    input_per_m_tokens_usd: float = Field(ge=0)
    output_per_m_tokens_usd: float = Field(ge=0)


class RoutingSpec(Model):
    policy: Literal["cheap-first", "large-only", "small-only"] = "cheap-first"
    escalate_on_failure: bool = Field(default=True, description="Retry a failed cheap step on the large model.")


class BudgetSpec(Model):
    __rules__: ClassVar = (
        Rule("!(self.onExhausted == 'degrade' && self.degradeBy == 'low-priority')",
             "onExhausted: degrade runs tasks past the limit on the small model: with it, set degradeBy to "
             "small-model or both (low-priority alone would let them spend at the large model's price)",
             lambda s: not (s.on_exhausted == "degrade" and s.degrade_by == "low-priority")),
    )

    scope: BudgetScope = Field(default_factory=BudgetScope)
    window: Window = "day"
    limits: BudgetLimits
    per_task: TaskCaps = Field(default_factory=TaskCaps)
    prices: list[Price] = Field(default_factory=list)
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    on_exhausted: Literal["reject", "degrade"] = Field(
        default="reject", description="reject: 429 with the reason; degrade: route everything to the small model.")
    degrade_at_percent: int | None = Field(
        default=None, ge=1, le=99,
        description="Before the limit: a task admitted once this share of a window limit (tokens or costUsd) is "
                    "spent or reserved is degraded as degradeBy says (by default every step runs on the small model), "
                    "so the rest of the window stretches further, or yields to other work, before any 429. Unset: "
                    "full routing until the limit, then onExhausted.")
    degrade_by: Literal["small-model", "low-priority", "both"] = Field(
        default="small-model",
        description="What a degraded task gives up: small-model runs every step on the small model; low-priority "
                    "keeps its routing but sends its calls in the fleet router's low priority band, so at "
                    "saturation they wait while other tasks' calls go (needs router.fairQueue on the fleet); both.")


class BudgetStatus(StatusModel):
    """Two writers, one per field: the runtime publishes spentTokens, spentUsd, windowStart and windowEnd from its
    ledger (within ~10 s of the spend); the operator derives observedGeneration, remaining* and the conditions
    (Ready, Degraded, Exhausted, Priced) from them and the spec."""

    observed_generation: int | None = None
    window_start: str | None = Field(default=None, description="Runtime: start of the window spent* belongs to.")
    window_end: str | None = Field(default=None, description="Runtime: end of that window.")
    spent_tokens: int = Field(default=0, description="Runtime: tokens settled in the window, from the ledger.")
    spent_usd: float = Field(default=0.0, description="Runtime: US dollars settled in the window, from the ledger.")
    remaining_tokens: int | None = Field(default=None, description="Operator: limits.tokens - spentTokens.")
    remaining_usd: float | None = Field(default=None, description="Operator: limits.costUsd - spentUsd.")
    conditions: list[Condition] = Field(default_factory=list)


class Budget(Resource):
    __crd__: ClassVar = CRDInfo(
        kind="Budget", plural="budgets", short_names=("bgt",),
        columns=(
            PrinterColumn("Window", ".spec.window"),
            PrinterColumn("Spent-USD", ".status.spentUsd", "number"),
            PrinterColumn("Remaining-USD", ".status.remainingUsd", "number"),
            PrinterColumn("Spent-Tokens", ".status.spentTokens", "integer"),
            PrinterColumn("Remaining-Tokens", ".status.remainingTokens", "integer", priority=1),
            PrinterColumn("Window-Start", ".status.windowStart", priority=1,
                          description="Start of the window the spend belongs to (published by the runtime)."),
            PrinterColumn("Pricing", '.status.conditions[?(@.type=="Priced")].reason', priority=1,
                          description="AllFleetsPriced, PriceMatchesNoFleet (error) or FleetUnpriced (warning)."),
            PrinterColumn("Status", '.status.conditions[?(@.type=="Ready")].reason'),
            PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
        ),
    )

    api_version: Literal[API_VERSION] = API_VERSION  # type: ignore[valid-type]
    kind: Literal["Budget"] = "Budget"
    spec: BudgetSpec
    status: BudgetStatus = Field(default_factory=BudgetStatus)
