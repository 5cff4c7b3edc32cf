"""A Budget's price table against the fleets it prices: which row prices a fleet (by fleet name, then served model
name, the rule the runtime applies too), and what is wrong with the table given the AgentApps that reference the
Budget: a row that matches none of their fleets is an error (it prices nothing, and the fleet it was meant for runs
at its own price or free); a fleet with no row and no pricing of its own is a warning when the Budget limits money
(its calls cost $0 against the limit)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

from ..api import AgentApp, Budget, ModelFleet
from ..api.budget import Price

__all__ = ["PriceProblem", "price_row", "price_problems", "PRICE_MATCHES_NO_FLEET", "FLEET_UNPRICED"]

PRICE_MATCHES_NO_FLEET = "PriceMatchesNoFleet"
FLEET_UNPRICED = "FleetUnpriced"


@dataclass(frozen=True)
class PriceProblem:
    """`path`: the field the problem is about (`spec.prices[1].model`); `reason`: PriceMatchesNoFleet (an error)
    or FleetUnpriced (a warning)."""

    path: str
    reason: str
    message: str

    @property
    def is_error(self) -> bool:
        return self.reason == PRICE_MATCHES_NO_FLEET


def price_row(prices: Sequence[Price], fleet: str, served_model: str | None = None) -> Price | None:
    """The row pricing a fleet: by fleet name first, then by the model name it serves."""
    for key in (fleet, served_model):
        row = next((p for p in prices if key is not None and p.model == key), None)
        if row is not None:
            return row
    return None


def _users(budget: Budget, apps: Sequence[AgentApp]) -> list[AgentApp]:
    return sorted((a for a in apps if a.namespace == budget.namespace and a.spec.budget_ref is not None
                   and a.spec.budget_ref.name == budget.name), key=lambda a: a.name)


def price_problems(budget: Budget, *, apps: Sequence[AgentApp],
                   fleets: Mapping[str, ModelFleet]) -> list[PriceProblem]:
    """Problems of `budget`'s price table, errors first. `apps`: AgentApps in its namespace (those that do not
    reference it are ignored); `fleets`: ModelFleets by name (a missing one is matched by name only). No AgentApp
    referencing the Budget: nothing to check against, no problem."""
    users = _users(budget, apps)
    if not users:
        return []
    names: dict[str, str] = {}  # what a row may name -> the fleet it prices
    for app in users:
        for name in app.fleet_names:
            names.setdefault(name, name)
            fleet = fleets.get(name)
            if fleet is not None:
                names.setdefault(fleet.served_model_name, name)
    out: list[PriceProblem] = []
    fleet_names = sorted({n for n in names.values()})
    served = sorted(k for k, v in names.items() if k != v)
    using = ", ".join(f"AgentApp {a.name}" for a in users)
    for i, row in enumerate(budget.spec.prices):
        if row.model not in names:
            hint = f"name one of the fleets {', '.join(fleet_names)}" + (
                f" or a model they serve ({', '.join(served)})" if served else "")
            out.append(PriceProblem(
                f"spec.prices[{i}].model", PRICE_MATCHES_NO_FLEET,
                f"{row.model!r} matches no fleet of the apps using this Budget ({using}): it prices nothing; "
                f"{hint}"))
    spec = budget.spec
    if spec.limits.cost_usd is None and spec.per_task.max_cost_usd is None:
        return out
    seen: set[str] = set()
    for app in users:
        roles = app.spec.fleets
        for role, name in (("large", roles.large), ("small", roles.small or roles.large)):
            fleet = fleets.get(name)
            if fleet is None or name in seen:
                continue
            seen.add(name)
            own = fleet.spec.pricing
            if price_row(spec.prices, name, fleet.served_model_name) is None and \
                    own.input_per_m_tokens_usd is None and own.output_per_m_tokens_usd is None:
                out.append(PriceProblem(
                    "spec.prices", FLEET_UNPRICED,
                    f"ModelFleet {name} (AgentApp {app.name}, {role}) has no price row here and no spec.pricing of "
                    f"its own: its calls cost $0 against the money limits; add a row with model: {name}"))
    return out
