"""The budget ledger: reservations over a whole task tree, taken before each model call and settled after,
atomically under concurrency and across replicas. `book` holds the rules (pure over a transaction of
agentfleet.state, whose SQLite and Redis backends it shares with the runs); `open_ledger` picks one from the
AgentApp's LedgerSpec."""

from __future__ import annotations

import os

from ..api.agentapp import LedgerSpec
from ..state import open_store
from .accounts import Account, Limits, account_key, budget_applies
from .book import DEFAULT_HOLD_TTL_S, Ledger, Reservation, Settlement, Store, Usage
from .money import MICRO_PER_USD, Amount, micro_to_usd, usd_to_micro

__all__ = ["Ledger", "Reservation", "Settlement", "Usage", "Store", "Account", "Limits", "account_key",
           "budget_applies", "Amount", "MICRO_PER_USD", "micro_to_usd", "usd_to_micro", "open_ledger",
           "DEFAULT_HOLD_TTL_S", "REDIS_PREFIX"]


# Accounts are keyed by Budget (namespace/name), so every AgentApp that references one Budget draws on one counter.
REDIS_PREFIX = "agentfleet:ledger:"


def open_ledger(spec: LedgerSpec, *, sqlite_path: str | os.PathLike[str], redis_prefix: str = REDIS_PREFIX,
                hold_ttl_s: float = DEFAULT_HOLD_TTL_S) -> Ledger:
    """The ledger the spec asks for. `sqlite_path` is used only by the sqlite backend; the Redis URL is the spec's
    or, when it names none, $AGENTFLEET_REDIS_URL (rendered from a Secret)."""
    store = open_store(spec.backend, sqlite_path=sqlite_path, redis_url=spec.redis_url, prefix=redis_prefix)
    return Ledger(store, hold_ttl_s=hold_ttl_s)
