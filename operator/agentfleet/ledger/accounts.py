"""Accounts: which Budget a call is charged to and the limits that hold for it. A Budget is one account (one set of
counters per window, shared by every caller its scope covers); limits travel with each call instead of living in
the store, so an edited Budget takes effect on the next reservation."""

from __future__ import annotations

from dataclasses import dataclass

from ..api.budget import BudgetScope, BudgetSpec, Window
from .money import usd_to_micro

__all__ = ["Limits", "Account", "account_key", "budget_applies"]


@dataclass(frozen=True)
class Limits:
    """A Budget's limits in ledger units; None means unlimited on that axis."""

    window: Window = "total"
    tokens: int | None = None
    micro_usd: int | None = None
    task_tokens: int | None = None
    task_micro_usd: int | None = None
    degrade_at_percent: int | None = None  # a root reservation past this share of a window limit is degraded

    @classmethod
    def from_budget(cls, spec: BudgetSpec) -> Limits:
        lim, task = spec.limits, spec.per_task
        return cls(window=spec.window, tokens=lim.tokens,
                   micro_usd=None if lim.cost_usd is None else usd_to_micro(lim.cost_usd),
                   task_tokens=task.max_tokens,
                   task_micro_usd=None if task.max_cost_usd is None else usd_to_micro(task.max_cost_usd),
                   degrade_at_percent=spec.degrade_at_percent)


def account_key(namespace: str, budget: str) -> str:
    return f"{namespace}/{budget}"


@dataclass(frozen=True)
class Account:
    key: str
    limits: Limits

    @classmethod
    def for_budget(cls, namespace: str, name: str, spec: BudgetSpec) -> Account:
        return cls(account_key(namespace, name), Limits.from_budget(spec))


def budget_applies(scope: BudgetScope, *, app: str, tenant: str) -> bool:
    """Whether a caller of `app` from `tenant` is charged to a Budget with this scope (empty: every caller)."""
    return (scope.app is None or scope.app == app) and (scope.tenant is None or scope.tenant == tenant)
