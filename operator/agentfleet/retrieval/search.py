"""Search as the agent runtime and `agentfleet search` use it: embed the query, search the store under the
principal's filter, cache by permissions."""

from __future__ import annotations

from .cache import RetrievalCache, cache_key, normalise_query
from .embedders import Embedder
from .filters import Principal
from .store import Hit, MilvusStore

__all__ = ["Retriever"]


class Retriever:
    def __init__(self, store: MilvusStore, embedder: Embedder, *, cache: RetrievalCache | None = None) -> None:
        self.store, self.embedder, self.cache = store, embedder, cache

    def search(self, query: str, principal: Principal, *, k: int = 10) -> list[Hit]:
        if not isinstance(principal, Principal):
            raise TypeError("search needs the authenticated Principal")
        key = cache_key(f"{self.store.uri}#{self.store.collection}", query, k, principal)
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                return list(cached)
        vector = self.embedder.embed([normalise_query(query)])[0]
        hits = self.store.search([vector], principal, k=k)[0]
        if self.cache is not None:
            self.cache.put(key, tuple(hits))
        return hits
