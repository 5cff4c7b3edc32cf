"""BM25 scores depend only on what the principal may read (issue 17): on a real milvus-lite collection, adding 30
chunks the principal may not read — another tenant's, or their own tenant's in a group they lack — changes neither
the permitted BM25 ranking nor its scores, nor the hybrid ranking built on it. Milvus' own BM25 statistics (IDF,
avgdl) are collection-wide (per segment on milvus-lite 3.2.2, per shard on Milvus), so before the store scored BM25
with the principal's statistics these chunks reordered acme's results. The other tenant is one that milvus-lite's
partition-key bucketing (md5 of the stored tenant, 16 buckets) puts in acme's bucket, as a real cluster's shard
holds many tenants."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from agentfleet.retrieval.analysis import terms
from agentfleet.retrieval.bm25 import CorpusStats, corpus_stats, rank
from agentfleet.retrieval.filters import Principal, encode_name, stored_access
from agentfleet.retrieval.search import Retriever
from agentfleet.retrieval.store import BM25_PARAMS, MilvusStore

DIM = 8
ENG = Principal("acme", ("eng",))
QUERIES = ["frobnicator widget gears", "How is the widget manual organised?", "levers"]


def _bucket(tenant: str) -> int:
    return int(hashlib.md5(encode_name(tenant).encode()).hexdigest(), 16) % 16


# A tenant that shares acme's partition-key bucket on milvus-lite (so its chunks share acme's segments).
NEIGHBOUR = next(t for t in (f"tenant{i}" for i in range(1000)) if _bucket(t) == _bucket("acme"))


def _row(cid: str, text: str, *, tenant: str = "acme", groups: tuple[str, ...] = (), seed: int = 0) -> dict:
    acc = stored_access(tenant, list(groups))
    vector = np.random.default_rng(seed).standard_normal(DIM).tolist()
    return {"id": cid, "vector": vector, "tenant": acc.tenant, "groups": acc.groups, "doc": cid, "source": cid,
            "title": "", "trail": "[]", "start": 0, "end": len(text), "text": text}


PERMITTED = [_row(f"p{i:02d}", f"the frobnicator widget {'manual ' * (i % 3)}note {i} about gears and levers"
                  + " widget" * (i % 2), groups=("eng",) if i % 2 else (), seed=i) for i in range(12)]
# Readable by others only: acme's hr group (same tenant), and a neighbouring tenant.
FORBIDDEN = {
    "other_tenant": [_row(f"x{i:02d}", f"frobnicator frobnicator widget extra words {i} " + "padding " * (i % 7),
                          tenant=NEIGHBOUR, seed=100 + i) for i in range(30)],
    "same_tenant_other_group": [_row(f"x{i:02d}", f"frobnicator frobnicator widget extra words {i} "
                                     + "padding " * (i % 7), groups=("hr",), seed=100 + i) for i in range(30)],
}


class _Fixed:
    name, dimension = "fixed", DIM

    def embed(self, texts):
        return [np.ones(DIM).tolist() for _ in texts]


def _results(tmp_path, name: str, rows: list[dict]) -> dict[str, list[tuple[str, float]]]:
    with MilvusStore(str(tmp_path / f"{name}.db"), "docs") as s:
        assert s.ensure_collection(dimension=DIM) is True
        s.upsert(rows)   # one batch, one flush: permitted and forbidden chunks share a segment
        s.flush()
        out = {}
        for q in QUERIES:
            out[f"bm25:{q}"] = [(h.id, h.score) for h in s.search_text([q], ENG, k=8)[0]]
            out[f"hybrid:{q}"] = [(h.id, h.score) for h in Retriever(s, _Fixed()).search(q, ENG, k=8)]
        return out


@pytest.mark.parametrize("kind", sorted(FORBIDDEN))
def test_chunks_the_principal_cannot_read_change_no_bm25_score(tmp_path, kind):
    assert _bucket(NEIGHBOUR) == _bucket("acme")
    alone = _results(tmp_path, "alone", PERMITTED)
    assert alone[f"bm25:{QUERIES[0]}"] and all(s > 0 for _, s in alone[f"bm25:{QUERIES[0]}"])
    crowded = _results(tmp_path, "crowded", PERMITTED + FORBIDDEN[kind])
    for key, hits in alone.items():
        assert [cid for cid, _ in crowded[key]] == [cid for cid, _ in hits], key
        assert [s for _, s in crowded[key]] == pytest.approx([s for _, s in hits], rel=1e-9, abs=1e-12), key
        assert not any(cid.startswith("x") for cid, _ in crowded[key])


def test_the_scores_are_okapi_bm25_over_the_permitted_chunks(tmp_path):
    # Hand-computed from the permitted chunks alone: idf = ln(1 + (N - df + 0.5) / (df + 0.5)),
    # tf' = tf (k1 + 1) / (tf + k1 (1 - b + b dl / avgdl)), k1 0.9, b 0.4.
    rows = [_row("a", "levers levers gears"), _row("b", "gears only here now"), _row("c", "nothing relevant")]
    with MilvusStore(str(tmp_path / "okapi.db"), "docs") as s:
        s.ensure_collection(dimension=DIM)
        s.upsert(rows + FORBIDDEN["same_tenant_other_group"])
        s.flush()
        got = {h.id: h.score for h in s.search_text(["levers gears"], ENG, k=10)[0]}
    k1, b = BM25_PARAMS["bm25_k1"], BM25_PARAMS["bm25_b"]
    n, avgdl = 3, (3 + 4 + 2) / 3    # analysed lengths: "lever lever gear", "gear only here now", "nothing relevant"

    def w(tf, dl, df):
        return math.log(1 + (n - df + 0.5) / (df + 0.5)) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))

    assert got == pytest.approx({"a": w(2, 3, 1) + w(1, 3, 2), "b": w(1, 4, 2)}, rel=1e-9)


@pytest.mark.parametrize("terms, docs, stats, expected", [
    pytest.param(["x"], {"b": "x y", "a": "y x"}, corpus_stats(["x y", "y x"]), ["a", "b"], id="ties-by-id"),
    pytest.param(["x"], {"a": "y", "b": "x"}, corpus_stats(["y", "x"]), ["b"], id="no-match-no-hit"),
    pytest.param(["x", "x"], {"a": "x", "b": "x x"}, corpus_stats(["x", "x x"]), ["b", "a"], id="repeated-term"),
    pytest.param([], {"a": "x"}, corpus_stats(["x"]), [], id="no-terms"),
    # statistics older than the candidates: df is at least the candidates' own count
    pytest.param(["x"], {"a": "x", "b": "x y"}, CorpusStats(1, 1.0, {}), ["a", "b"], id="stale-stats"),
])
def test_rank_table(terms, docs, stats, expected):
    assert corpus_stats(["x y", "y"]) == CorpusStats(2, 1.5, {"x": 1, "y": 2})
    got = rank(terms, docs, stats, k1=0.9, b=0.4)
    assert [cid for cid, _ in got] == expected
    assert all(s > 0 for _, s in got)


def test_statistics_follow_writes_through_the_store_and_others_after_the_ttl(tmp_path):
    now = [0.0]
    more = [_row(f"m{i}", f"levers and more levers {i}", groups=("eng",), seed=50 + i) for i in range(5)]
    with MilvusStore(str(tmp_path / "fresh.db"), "docs") as s:
        s.ensure_collection(dimension=DIM)
        s.upsert(PERMITTED + more)
        s.flush()
        expected = [(h.id, h.score) for h in s.search_text(["levers"], ENG, k=20)[0]]
    with MilvusStore(str(tmp_path / "ttl.db"), "docs", stats_ttl_s=60.0, clock=lambda: now[0]) as s:
        s.ensure_collection(dimension=DIM)
        s.upsert(PERMITTED)
        s.flush()
        s.search_text(["levers"], ENG, k=20)
        s.upsert(more[:2])            # through the store: its statistics are recounted at once
        s.flush()
        n2 = {h.id for h in s.search_text(["levers"], ENG, k=20)[0]}
        assert {"m0", "m1"} <= n2
        # Another writer (the engine client directly, as an ingest Job would): cached for the TTL, then recounted.
        s.client.upsert(s.collection, [{**r, "terms": terms(r["text"])} for r in more[2:]])
        s.client.flush(s.collection)
        now[0] = 61.0
        got = [(h.id, h.score) for h in s.search_text(["levers"], ENG, k=20)[0]]
    assert [cid for cid, _ in got] == [cid for cid, _ in expected]
    assert [sc for _, sc in got] == pytest.approx([sc for _, sc in expected], rel=1e-9)
