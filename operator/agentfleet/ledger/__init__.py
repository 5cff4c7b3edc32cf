"""The budget ledger: reservations over a whole task tree, taken before each model call and settled after,
atomically under concurrency and across replicas. `book` holds the rules (pure over a transaction); `sqlite_store`
and `redis_store` are the two backends; `open_ledger` picks one from the AgentApp's LedgerSpec."""

from __future__ import annotations

import os

from ..api.agentapp import LedgerSpec
from .accounts import Account, Limits, account_key, budget_applies
from .book import DEFAULT_HOLD_TTL_S, Ledger, Reservation, Settlement, Store, Usage
from .money import MICRO_PER_USD, Amount, micro_to_usd, usd_to_micro

__all__ = ["Ledger", "Reservation", "Settlement", "Usage", "Store", "Account", "Limits", "account_key",
           "budget_applies", "Amount", "MICRO_PER_USD", "micro_to_usd", "usd_to_micro", "open_ledger",
           "DEFAULT_HOLD_TTL_S"]


def open_ledger(spec: LedgerSpec, *, sqlite_path: str | os.PathLike[str], redis_prefix: str = "agentfleet:ledger:",
                hold_ttl_s: float = DEFAULT_HOLD_TTL_S) -> Ledger:
    """The ledger the spec asks for. `sqlite_path` is used only by the sqlite backend; `redis_prefix` should name
    the app (namespace/app) so apps sharing one Redis never share counters by accident."""
    if spec.backend == "redis":
        from .redis_store import RedisStore

        assert spec.redis_url is not None  # LedgerSpec's rule
        return Ledger(RedisStore(spec.redis_url, prefix=redis_prefix), hold_ttl_s=hold_ttl_s)
    from .sqlite_store import SqliteStore

    return Ledger(SqliteStore(sqlite_path), hold_ttl_s=hold_ttl_s)
