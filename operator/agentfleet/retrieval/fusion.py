"""Rank fusion (pure): how the product's hybrid retrieval combines its BM25 and dense runs, and the fusions
`agentfleet bench eval` measures. One implementation for both, so the bench measures what the product does."""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence, TypeVar

__all__ = ["rrf", "weighted_fusion", "RRF_K", "DENSE_WEIGHT"]

K = TypeVar("K", bound=Hashable)

RRF_K = 60
# The product's dense weight in `weighted_fusion((bm25, dense), (1 - w, w))`: the weights two-fold cross-validation
# picked on pyfaq (`agentfleet bench eval`: 0.55 and 0.70 on the two halves of the questions), rounded; never tuned
# on the questions the bench scores.
DENSE_WEIGHT = 0.6


def rrf(rankings: Sequence[Sequence[K]], *, k: int = RRF_K) -> list[tuple[K, float]]:
    """Reciprocal-rank fusion (Cormack et al. 2009): score(d) = sum over rankings of 1 / (k + rank), rank from 1;
    best first, ties by first appearance across the rankings."""
    score: dict[K, float] = {}
    for ranking in rankings:
        for r, doc in enumerate(ranking, 1):
            score[doc] = score.get(doc, 0.0) + 1.0 / (k + r)
    order = {d: i for i, d in enumerate(score)}
    return sorted(score.items(), key=lambda kv: (-kv[1], order[kv[0]]))


def weighted_fusion(runs: Sequence[Mapping[K, float]], weights: Sequence[float]) -> list[tuple[K, float]]:
    """sum_i w_i * minmax(run_i)(d), a document absent from a run scoring 0 there (a run whose scores are all equal
    normalises to 1); best first, ties by first appearance across the runs."""
    score: dict[K, float] = {}
    for run, w in zip(runs, weights):
        if not run:
            continue
        lo, hi = min(run.values()), max(run.values())
        for doc, s in run.items():
            score[doc] = score.get(doc, 0.0) + w * ((s - lo) / (hi - lo) if hi > lo else 1.0)
    order = {d: i for i, d in enumerate(score)}
    return sorted(score.items(), key=lambda kv: (-kv[1], order[kv[0]]))
