"""Per-key and per-tenant limits on starting work, pure (time is a parameter). Two kinds, each per API key and per
tenant: concurrent runs (a fair share of the replica's run registry and, since every run holds a reservation, of the
Budget: one key cannot fill the registry or reserve the whole day for everyone) and runs started per minute (a token
bucket whose burst is one minute's worth). Chat completions, responses and `POST /v1/runs` all start runs; a retry
that the Idempotency-Key answers from an earlier run starts nothing and takes no slot. Counted per replica: with N
replicas behind a Service a key may have up to N times the limit in flight (the registry it protects is per replica
too). A refusal names which limit, never another caller; keys are held only as digests."""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from ..errors import TooManyRequests

__all__ = ["CallerLimits", "Slot", "caller_digest", "MAX_TRACKED"]

MAX_TRACKED = 50_000  # rate buckets kept per table; full (idle) buckets are dropped first

By = Literal["key_concurrency", "tenant_concurrency", "key_rate", "tenant_rate"]


def caller_digest(key: str) -> str:
    """What identifies an API key in the limiter's tables: a digest, never the key."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _refusal(by: By, limit: int, retry_after_s: float) -> TooManyRequests:
    what = {"key_concurrency": f"this API key already has {limit} runs in progress",
            "tenant_concurrency": f"this tenant already has {limit} runs in progress",
            "key_rate": f"this API key may start {limit} runs per minute",
            "tenant_rate": f"this tenant may start {limit} runs per minute"}[by]
    return TooManyRequests(f"{what}; retry after {max(1, math.ceil(retry_after_s))} s", by=by,
                           retry_after_s=retry_after_s)


@dataclass
class Slot:
    """One admitted run's place in the concurrency counts; release it exactly once when the run stops here."""

    key: str
    tenant: str
    is_released: bool = field(default=False)


@dataclass
class _Bucket:
    tokens: float
    at_s: float


class _Rate:
    def __init__(self, per_minute: int, max_tracked: int):
        self.per_minute, self.max_tracked = per_minute, max_tracked
        self.buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _level(self, who: str, now_s: float) -> _Bucket:
        b = self.buckets.get(who)
        if b is None:
            b = _Bucket(float(self.per_minute), now_s)
            self.buckets[who] = b
            while len(self.buckets) > self.max_tracked:  # the oldest-touched bucket first: it has refilled most
                self.buckets.popitem(last=False)
        else:
            b.tokens = min(float(self.per_minute), b.tokens + (now_s - b.at_s) * self.per_minute / 60.0)
            b.at_s = now_s
            self.buckets.move_to_end(who)
        return b

    def wait_s(self, who: str, now_s: float) -> float:
        """Seconds until `who` may start one more run (0: now)."""
        if self.per_minute <= 0:
            return 0.0
        b = self._level(who, now_s)
        return 0.0 if b.tokens >= 1.0 else (1.0 - b.tokens) * 60.0 / self.per_minute

    def take(self, who: str, now_s: float) -> None:
        if self.per_minute > 0:
            self._level(who, now_s).tokens -= 1.0

    def remaining(self, who: str, now_s: float) -> int | None:
        if self.per_minute <= 0:
            return None
        return int(self._level(who, now_s).tokens)


class CallerLimits:
    """0 turns a limit off."""

    def __init__(self, *, key_concurrent_runs: int, tenant_concurrent_runs: int, key_runs_per_minute: int,
                 tenant_runs_per_minute: int, max_tracked: int = MAX_TRACKED):
        self.key_concurrent, self.tenant_concurrent = key_concurrent_runs, tenant_concurrent_runs
        self.key_rate = _Rate(key_runs_per_minute, max_tracked)
        self.tenant_rate = _Rate(tenant_runs_per_minute, max_tracked)
        self.by_key: dict[str, int] = {}
        self.by_tenant: dict[str, int] = {}

    def acquire(self, key: str, tenant: str, now_s: float) -> Slot:
        """A slot for one more run of this key and tenant, or TooManyRequests naming the limit (nothing taken)."""
        if 0 < self.key_concurrent <= self.by_key.get(key, 0):
            raise _refusal("key_concurrency", self.key_concurrent, 1.0)
        if 0 < self.tenant_concurrent <= self.by_tenant.get(tenant, 0):
            raise _refusal("tenant_concurrency", self.tenant_concurrent, 1.0)
        wait = self.key_rate.wait_s(key, now_s)
        if wait > 0:
            raise _refusal("key_rate", self.key_rate.per_minute, wait)
        wait = self.tenant_rate.wait_s(tenant, now_s)
        if wait > 0:
            raise _refusal("tenant_rate", self.tenant_rate.per_minute, wait)
        self.key_rate.take(key, now_s)
        self.tenant_rate.take(tenant, now_s)
        self.by_key[key] = self.by_key.get(key, 0) + 1
        self.by_tenant[tenant] = self.by_tenant.get(tenant, 0) + 1
        return Slot(key, tenant)

    def release(self, slot: Slot | None) -> None:
        if slot is None or slot.is_released:
            return
        slot.is_released = True
        for table, who in ((self.by_key, slot.key), (self.by_tenant, slot.tenant)):
            n = table.get(who, 0) - 1
            if n > 0:
                table[who] = n
            else:
                table.pop(who, None)  # idle callers leave no entry behind

    def headers(self, key: str, now_s: float) -> dict[str, str]:
        """OpenAI-style `x-ratelimit-*-requests` headers for this key (none when its rate is unlimited)."""
        left = self.key_rate.remaining(key, now_s)
        if left is None:
            return {}
        return {"x-ratelimit-limit-requests": str(self.key_rate.per_minute),
                "x-ratelimit-remaining-requests": str(max(0, left))}
