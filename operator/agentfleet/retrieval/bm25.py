"""BM25 scoring with the principal's own statistics (pure). Milvus computes BM25's IDF and average document length
over everything its index holds — per segment on milvus-lite 3.2.2, per shard (all partitions, so every tenant that
hashes there) on a Milvus cluster — so one tenant's chunks, or a group's the caller lacks, would move another
principal's scores and order (a side channel, and a ranking the caller cannot explain). The store therefore takes
only candidates from the engine (filtered: readable chunks only) and scores them here with N, avgdl and document
frequencies counted over what the principal may read (Okapi BM25, Lucene's IDF, the same k1 and b as the engine's
index)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from collections import Counter
from typing import Iterable, Mapping, Sequence

__all__ = ["CorpusStats", "corpus_stats", "rank"]


@dataclass(frozen=True)
class CorpusStats:
    """What BM25 needs of the whole readable corpus: how many chunks, their mean analysed length, and in how many
    chunks each term occurs."""

    docs: int
    avgdl: float
    df: Mapping[str, int]


def corpus_stats(chunks: Iterable[str]) -> CorpusStats:
    """The statistics of chunks given as their stored terms."""
    n = total = 0
    df: Counter[str] = Counter()
    for terms in chunks:
        toks = terms.split()
        n += 1
        total += len(toks)
        df.update(set(toks))
    return CorpusStats(n, total / n if n else 0.0, dict(df))


def rank(query_terms: Sequence[str], docs: Mapping[str, str], stats: CorpusStats, *, k1: float,
         b: float) -> list[tuple[str, float]]:
    """(id, score) of every chunk in `docs` (id -> stored terms, the candidates) that holds a query term, best first,
    ties by id; document frequencies come from `stats` (at least the candidates' own count, should `stats` be older
    than them). A term repeated in the query counts that many times, as in the engine's BM25."""
    weights: dict[str, int] = {}
    for t in query_terms:
        weights[t] = weights.get(t, 0) + 1
    if not weights or not docs:
        return []
    parsed = {cid: terms.split() for cid, terms in docs.items()}
    df = {t: max(stats.df.get(t, 0), sum(1 for toks in parsed.values() if t in toks)) for t in weights}
    n = max(stats.docs, max(df.values()), 1)
    avgdl = stats.avgdl if stats.avgdl > 0 else 1.0
    idf = {t: math.log(1.0 + (n - d + 0.5) / (d + 0.5)) for t, d in df.items() if d}
    out = []
    for cid, toks in parsed.items():
        norm = k1 * (1.0 - b + b * len(toks) / avgdl)
        score = 0.0
        for t, w in idf.items():
            tf = toks.count(t)
            if tf:
                score += weights[t] * w * tf * (k1 + 1.0) / (tf + norm)
        if score > 0:
            out.append((cid, score))
    out.sort(key=lambda kv: (-kv[1], kv[0]))
    return out
