"""A retrieval cache keyed by (index, normalised query, k, tenant-and-groups signature): one principal's cached
hits can never answer another principal with different permissions, because the permissions are part of the key.
Bounded (LRU) and time-limited; time is a parameter so tests never sleep."""

from __future__ import annotations

import re
import time
import unicodedata
from collections import OrderedDict
from typing import Callable, Generic, TypeVar

from .filters import Principal, groups_signature

__all__ = ["RetrievalCache", "normalise_query", "cache_key"]

V = TypeVar("V")


def normalise_query(query: str) -> str:
    """NFKC, case-folded, whitespace collapsed: the built-in embedder is uncased, so these embed alike."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", query).casefold()).strip()


def cache_key(index: str, query: str, k: int, principal: Principal) -> tuple[str, str, int, str]:
    return (index, normalise_query(query), k, groups_signature(principal))


class RetrievalCache(Generic[V]):
    def __init__(self, *, max_entries: int = 4096, ttl_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries, self.ttl_s, self.clock = max_entries, ttl_s, clock
        self._data: OrderedDict[tuple, tuple[float, V]] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: tuple) -> V | None:
        item = self._data.get(key)
        if item is None or item[0] <= self.clock():
            if item is not None:
                del self._data[key]
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return item[1]

    def put(self, key: tuple, value: V) -> None:
        self._data[key] = (self.clock() + self.ttl_s, value)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def clear(self) -> None:
        """Call after re-ingesting: cached hits may name chunks that no longer exist."""
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
