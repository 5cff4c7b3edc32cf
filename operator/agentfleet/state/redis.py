"""The shared state backend for an AgentApp with several replicas: one Redis. Atomicity is optimistic (WATCH /
MULTI / EXEC): a transaction WATCHes every key it reads, decides in Python (the same rules as SQLite, in
book.py), and EXEC applies its writes only if none of those keys changed meanwhile; otherwise it runs again after
a short randomised backoff. One implementation of the rules for both backends was chosen over a Lua port; if
contention on one hot account ever costs too many retries, the port is the known next step. All keys live under
one prefix; multi-key transactions need a single Redis (or one cluster hash slot), not Redis Cluster sharding."""

from __future__ import annotations

import json
import random
import time
from typing import Any, Callable, TypeVar

import redis
from redis.client import Pipeline

from ..errors import LedgerError, StateUnavailable

__all__ = ["RedisStore"]

T = TypeVar("T")


class _Txn:
    def __init__(self, pipe: Pipeline, prefix: str):
        self.pipe = pipe
        self.prefix = prefix
        self.writes: list[Callable[[Pipeline], Any]] = []

    def get(self, key: str) -> dict[str, Any] | None:
        k = self.prefix + key
        self.pipe.watch(k)
        raw = self.pipe.get(k)
        return None if raw is None else json.loads(raw)  # type: ignore[no-any-return]

    def put(self, key: str, value: dict[str, Any], *, ttl_s: float | None) -> None:
        k, v = self.prefix + key, json.dumps(value, separators=(",", ":"))
        if ttl_s is None:
            self.writes.append(lambda p: p.set(k, v))
        else:
            ms = max(int(ttl_s * 1000), 1)
            self.writes.append(lambda p: p.set(k, v, px=ms))

    def delete(self, key: str) -> None:
        k = self.prefix + key
        self.writes.append(lambda p: p.delete(k))

    def due(self, index: str, now_s: float) -> list[str]:
        k = self.prefix + index
        self.pipe.watch(k)
        return list(self.pipe.zrangebyscore(k, "-inf", now_s))

    def schedule(self, index: str, member: str, at_s: float) -> None:
        k = self.prefix + index
        self.writes.append(lambda p: p.zadd(k, {member: at_s}))

    def unschedule(self, index: str, member: str) -> None:
        k = self.prefix + index
        self.writes.append(lambda p: p.zrem(k, member))


class RedisStore:
    def __init__(self, url: str, *, prefix: str = "agentfleet:ledger:", timeout_s: float = 2.0,
                 max_attempts: int = 200):
        # Every call has a timeout (conventions 7): a stuck Redis fails the reservation instead of the request
        # hanging.
        self.client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=timeout_s,
                                           socket_connect_timeout=timeout_s)
        self.prefix = prefix
        self.max_attempts = max_attempts

    def transact(self, fn: Callable[[_Txn], T], *, now_s: float) -> T:
        for attempt in range(self.max_attempts):
            with self.client.pipeline(transaction=True) as pipe:
                try:
                    txn = _Txn(pipe, self.prefix)
                    result = fn(txn)
                    pipe.multi()
                    for write in txn.writes:
                        write(pipe)
                    pipe.execute()
                    return result
                except redis.WatchError:
                    pass
                except (redis.ConnectionError, redis.TimeoutError) as e:
                    # Nothing was committed (EXEC is all or nothing): the caller may retry the whole request.
                    raise StateUnavailable(f"the state store (Redis) is unreachable: {type(e).__name__}") from None
            # Randomised, growing backoff so racing replicas stop colliding in lockstep.
            time.sleep(random.uniform(0, min(0.0005 * (attempt + 1), 0.02)))
        raise LedgerError(f"ledger transaction gave up after {self.max_attempts} conflicting attempts")

    def close(self) -> None:
        self.client.close()
