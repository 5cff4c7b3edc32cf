"""Durable state: what outlives a pod (budget reservations, agent runs) is kept in one store interface with two
backends, SQLite for one machine (or one replica on a volume) and Redis shared by several replicas. A store offers
one thing: an atomic transaction over JSON records plus time-ordered indexes (`Txn`); the ledger's rules
(ledger/book.py) and the run rules (runtime/runs.py) are written once over it, so both backends behave identically
by construction and one behavioural suite runs on both. `open_store` picks the backend."""

from __future__ import annotations

import os

from ..names import REDIS_URL_ENV  # the operator renders it from spec.ledger.redisUrlSecretRef
from .txn import Store, Txn

__all__ = ["Txn", "Store", "open_store", "REDIS_URL_ENV"]



def open_store(backend: str, *, sqlite_path: str | os.PathLike[str], redis_url: str | None,
               prefix: str) -> Store:
    """`prefix` separates what shares one Redis (ledger counters are keyed by Budget; runs by app)."""
    if backend == "redis":
        from .redis import RedisStore

        url = redis_url or os.environ.get(REDIS_URL_ENV)
        if not url:
            raise ValueError(f"the redis backend needs spec.ledger.redisUrl or ${REDIS_URL_ENV}")
        return RedisStore(url, prefix=prefix)
    from .sqlite import SqliteStore

    return SqliteStore(sqlite_path)
