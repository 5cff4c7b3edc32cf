"""Money in integers and Budget specs as ledger accounts (pure)."""

from __future__ import annotations

import pytest

from agentfleet.api.budget import BudgetScope, BudgetSpec
from agentfleet.ledger import Account, Amount, Limits, budget_applies, micro_to_usd, usd_to_micro


@pytest.mark.parametrize("usd, micro", [
    (0.0, 0), (0.15, 150_000), (5, 5_000_000), (0.1 + 0.2, 300_000), (1e-6, 1), (0.0000004, 0), (123.456789, 123_456_789),
], ids=["zero", "cents", "whole", "float-sum", "one-micro", "below-micro", "many-digits"])
def test_usd_to_micro(usd: float, micro: int) -> None:
    assert usd_to_micro(usd) == micro
    assert micro_to_usd(micro) == round(usd, 6)


def test_amount_arithmetic() -> None:
    assert Amount(5, 7) + Amount(1, 2) - Amount(10, 1) == Amount(-4, 8)
    assert Amount(-4, 8).floor0() == Amount(0, 8)
    assert Amount(999, 10).share(0.25) == Amount(249, 2)
    assert Amount(3, 3).fits_in(Amount(3, 3)) and not Amount(4, 3).fits_in(Amount(3, 3))


def test_limits_from_budget() -> None:
    spec = BudgetSpec.model_validate({"window": "week", "limits": {"tokens": 1000, "costUsd": 2.5},
                                      "perTask": {"maxTokens": 100, "maxCostUsd": 0.05}})
    assert Account.for_budget("team-a", "spend", spec) == Account(
        "team-a/spend", Limits(window="week", tokens=1000, micro_usd=2_500_000, task_tokens=100,
                               task_micro_usd=50_000))
    only_cost = BudgetSpec.model_validate({"limits": {"costUsd": 5}})
    assert Limits.from_budget(only_cost) == Limits(window="day", micro_usd=5_000_000)


@pytest.mark.parametrize("scope, app, tenant, applies", [
    ({}, "chat", "acme", True),
    ({"app": "chat"}, "chat", "acme", True),
    ({"app": "chat"}, "other", "acme", False),
    ({"tenant": "acme"}, "chat", "acme", True),
    ({"tenant": "acme"}, "chat", "globex", False),
    ({"app": "chat", "tenant": "acme"}, "chat", "globex", False),
    ({"app": "chat", "tenant": "acme"}, "chat", "acme", True),
], ids=["everyone", "app-match", "app-other", "tenant-match", "tenant-other", "app-tenant-other", "app-tenant"])
def test_budget_applies(scope: dict, app: str, tenant: str, applies: bool) -> None:
    assert budget_applies(BudgetScope.model_validate(scope), app=app, tenant=tenant) is applies
