"""Which model role a step of the agent loop uses, under the Budget's routing policy: cheap-first sends tool-call
formatting and simple steps to the small model and planning and final answers to the large one (and, with
escalateOnFailure, retries a failed small step on the large one); large-only and small-only pin every step. An
exhausted budget either degrades every step to the small model or rejects the request with the ledger's reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping

from ..api.agentapp import ModelRole
from ..api.budget import RoutingSpec
from ..api.runtime_config import ModelEndpoint
from ..errors import BudgetExhausted

__all__ = ["StepKind", "Route", "choose_role", "endpoint_for", "CHEAP_STEPS"]

StepKind = Literal["plan", "answer", "tool_format", "simple"]
CHEAP_STEPS: frozenset[str] = frozenset({"tool_format", "simple"})


@dataclass(frozen=True)
class Route:
    role: ModelRole
    reason: str
    is_degraded: bool = False


def choose_role(step: StepKind, *, routing: RoutingSpec | None = None, on_exhausted: str = "reject",
                exhausted: BudgetExhausted | None = None, failed_role: ModelRole | None = None,
                pinned: ModelRole | None = None) -> Route:
    """`exhausted`: the ledger refused this call's reservation; `failed_role`: this step is a retry after a call
    on that role failed; `pinned`: a sub-agent's configured modelRole (the policy overrides it unless cheap-first).
    No Budget (routing None) behaves as cheap-first with escalation."""
    if exhausted is not None:
        if on_exhausted == "degrade":
            return Route("small", f"budget exhausted, degraded to the small model: {exhausted}", True)
        raise exhausted
    policy = routing or RoutingSpec()
    if policy.policy == "large-only":
        return Route("large", "policy large-only")
    if policy.policy == "small-only":
        return Route("small", "policy small-only")
    if failed_role == "small" and policy.escalate_on_failure:
        return Route("large", "escalated: the step failed on the small model")
    if pinned is not None:
        return Route(pinned, f"sub-agent modelRole {pinned}")
    if step in CHEAP_STEPS:
        return Route("small", f"cheap-first: {step} step")
    return Route("large", f"cheap-first: {step} step")


def endpoint_for(role: ModelRole, models: Mapping[str, ModelEndpoint]) -> ModelEndpoint:
    """The endpoint serving a role; an app without a small fleet uses the large one for both."""
    return models.get(role) or models["large"]
