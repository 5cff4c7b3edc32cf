"""Which model role a step uses under the Budget's routing policy (pure)."""

from __future__ import annotations

import pytest

from agentfleet.api.budget import RoutingSpec
from agentfleet.api.runtime_config import ModelEndpoint
from agentfleet.errors import BudgetExhausted
from agentfleet.runtime.routing import Route, choose_role, endpoint_for

CHEAP = RoutingSpec(policy="cheap-first")
NO_ESCALATE = RoutingSpec(policy="cheap-first", escalate_on_failure=False)
LARGE_ONLY = RoutingSpec(policy="large-only")
SMALL_ONLY = RoutingSpec(policy="small-only")
EXHAUSTED = BudgetExhausted("team-a/spend", "window_cost", "cost limit $5.0000 reached this day")


@pytest.mark.parametrize("step, kwargs, role, reason, degraded", [
    ("plan", {"routing": CHEAP}, "large", "cheap-first: plan step", False),
    ("answer", {"routing": CHEAP}, "large", "cheap-first: answer step", False),
    ("tool_format", {"routing": CHEAP}, "small", "cheap-first: tool_format step", False),
    ("simple", {"routing": CHEAP}, "small", "cheap-first: simple step", False),
    ("simple", {}, "small", "cheap-first: simple step", False),
    ("tool_format", {"routing": CHEAP, "failed_role": "small"}, "large",
     "escalated: the step failed on the small model", False),
    ("tool_format", {"routing": NO_ESCALATE, "failed_role": "small"}, "small", "cheap-first: tool_format step", False),
    ("plan", {"routing": CHEAP, "failed_role": "large"}, "large", "cheap-first: plan step", False),
    ("plan", {"routing": CHEAP, "pinned": "small"}, "small", "sub-agent modelRole small", False),
    ("simple", {"routing": CHEAP, "pinned": "small", "failed_role": "small"}, "large",
     "escalated: the step failed on the small model", False),
    ("simple", {"routing": LARGE_ONLY}, "large", "policy large-only", False),
    ("plan", {"routing": SMALL_ONLY}, "small", "policy small-only", False),
    ("plan", {"routing": SMALL_ONLY, "failed_role": "small"}, "small", "policy small-only", False),
    ("plan", {"routing": LARGE_ONLY, "pinned": "small"}, "large", "policy large-only", False),
    ("plan", {"routing": LARGE_ONLY, "on_exhausted": "degrade", "exhausted": EXHAUSTED}, "small",
     "budget exhausted, degraded to the small model: Budget team-a/spend: cost limit $5.0000 reached this day", True),
    ("answer", {"routing": CHEAP, "on_exhausted": "degrade", "exhausted": EXHAUSTED, "failed_role": "small"},
     "small", "budget exhausted, degraded to the small model: Budget team-a/spend: cost limit $5.0000 reached this "
     "day", True),
], ids=["plan-large", "answer-large", "tool-format-small", "simple-small", "no-budget-is-cheap-first",
        "failed-small-escalates", "no-escalation", "failed-large-stays", "sub-agent-pinned",
        "pinned-escalates", "large-only", "small-only", "small-only-never-escalates", "policy-beats-pin",
        "degrade", "degrade-beats-escalation"])
def test_choose_role(step: str, kwargs: dict, role: str, reason: str, degraded: bool) -> None:
    assert choose_role(step, **kwargs) == Route(role, reason, degraded)  # type: ignore[arg-type]


def test_reject_raises_the_ledgers_reason() -> None:
    with pytest.raises(BudgetExhausted) as err:
        choose_role("plan", routing=CHEAP, on_exhausted="reject", exhausted=EXHAUSTED)
    assert err.value is EXHAUSTED


def test_endpoint_for_falls_back_to_large() -> None:
    large = ModelEndpoint(role="large", fleet="l", url="http://l/v1", model="m")
    small = ModelEndpoint(role="small", fleet="s", url="http://s/v1", model="m")
    assert endpoint_for("small", {"large": large}) is large
    assert endpoint_for("small", {"large": large, "small": small}) is small
