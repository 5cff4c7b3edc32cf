"""Search as the agent runtime and `agentfleet search` use it: embed the query, search the store under the
principal's filter, cache by permissions.

The default is hybrid: a dense (cosine) search and a BM25 full-text search, each with the principal's filter inside
it, each fetching max(3k, 30) candidates, fused by `fusion.weighted_fusion` (min-max normalised scores, dense weight
`fusion.DENSE_WEIGHT`): on pyfaq it beats dense search alone (`agentfleet bench eval`). A hit's score is its fused
score. Both candidate lists hold only permitted chunks and each holds min(N, permitted) of them, so k hits come
back whenever k permitted chunks exist. A collection created before hybrid retrieval (no BM25 field) is searched
dense only."""

from __future__ import annotations

from ..api.agentapp import RETRIEVAL_MODES
from ..api.agentapp import RetrievalMode as Mode
from .cache import RetrievalCache, cache_key, normalise_query
from .embedders import Embedder
from .filters import Principal
from .fusion import DENSE_WEIGHT, weighted_fusion
from .store import Hit, MilvusStore

__all__ = ["Retriever", "Mode", "DEFAULT_MODE", "candidates", "fuse"]

DEFAULT_MODE: Mode = "hybrid"


def candidates(k: int) -> int:
    """How many chunks each ranker contributes to a hybrid search for k results."""
    return max(3 * k, 30)


class Retriever:
    def __init__(self, store: MilvusStore, embedder: Embedder, *, cache: RetrievalCache | None = None,
                 mode: Mode | None = None, dense_weight: float = DENSE_WEIGHT) -> None:
        mode = mode or DEFAULT_MODE
        if mode not in RETRIEVAL_MODES:
            raise ValueError(f"unknown retrieval mode {mode!r}")
        self.store, self.embedder, self.cache = store, embedder, cache
        self.requested_mode, self.dense_weight = mode, dense_weight

    @property
    def mode(self) -> Mode:
        """The mode searches run in: hybrid (or bm25) falls back to dense on a collection without a BM25 field."""
        if self.requested_mode != "dense" and not self.store.full_text:
            return "dense"
        return self.requested_mode

    def search(self, query: str, principal: Principal, *, k: int = 10) -> list[Hit]:
        if not isinstance(principal, Principal):
            raise TypeError("search needs the authenticated Principal")
        mode = self.mode
        key = cache_key(f"{self.store.uri}#{self.store.collection}#{mode}:{self.dense_weight}", query, k, principal)
        if self.cache is not None:
            cached = self.cache.get(key)
            if cached is not None:
                return list(cached)
        text = normalise_query(query)
        if mode == "bm25":
            hits = self.store.search_text([text], principal, k=k)[0]
        else:
            n = k if mode == "dense" else candidates(k)
            vector = self.embedder.embed([text])[0]
            hits = self.store.search([vector], principal, k=n)[0]
            if mode == "hybrid":
                hits = fuse(hits, self.store.search_text([text], principal, k=n)[0], self.dense_weight, k)
        if self.cache is not None:
            self.cache.put(key, tuple(hits))
        return hits


def fuse(dense: list[Hit], bm25: list[Hit], dense_weight: float, k: int) -> list[Hit]:
    """The top k of the weighted fusion of two hit lists, each hit carrying its fused score."""
    by_id = {h.id: h for h in bm25}
    by_id.update({h.id: h for h in dense})
    ranked = weighted_fusion([{h.id: h.score for h in bm25}, {h.id: h.score for h in dense}],
                             (1.0 - dense_weight, dense_weight))
    out = []
    for cid, score in ranked[:k]:
        h = by_id[cid]
        out.append(Hit(h.id, score, h.text, h.source, h.title, h.trail, h.start, h.end))
    return out
