"""Hybrid retrieval: the fusion against a hand-computed table, and on a tiny real milvus-lite collection a chunk that
only the keyword finds (its vector points away from the query) comes back from hybrid search and not from dense
search, while a forbidden chunk that matches the keyword best (and the query vector exactly) never comes back.
A collection created before hybrid retrieval (no BM25 field) is searched dense only."""

from __future__ import annotations

import numpy as np
import pytest

from agentfleet.retrieval.analysis import analyse, query_terms, terms
from agentfleet.retrieval.cache import RetrievalCache
from agentfleet.retrieval.filters import Principal, stored_access
from agentfleet.retrieval.fusion import DENSE_WEIGHT, weighted_fusion
from agentfleet.retrieval.search import Retriever, candidates, fuse
from agentfleet.retrieval.store import Hit, MilvusStore

DIM = 8
ACME = Principal("acme", ())


def _hit(cid: str, score: float) -> Hit:
    return Hit(cid, score, f"text {cid}", f"{cid}.md", "", (), 0, 1)


def test_fuse_matches_a_hand_computed_table():
    # bm25 min-max: c 1, d (4 - 2) / 8 = 0.25, a 0; dense min-max: a 1, b 0.5, c 0; w(dense) 0.6:
    # a 0.6, c 0.4, b 0.3, d 0.1
    dense = [_hit("a", 0.9), _hit("b", 0.5), _hit("c", 0.1)]
    bm25 = [_hit("c", 10.0), _hit("d", 4.0), _hit("a", 2.0)]
    got = fuse(dense, bm25, 0.6, 3)
    assert [h.id for h in got] == ["a", "c", "b"]
    assert [h.score for h in got] == pytest.approx([0.6, 0.4, 0.3])
    assert got[1].text == "text c" and got[1].source == "c.md"    # the stored hit, with the fused score
    assert [h.id for h in fuse(dense, bm25, 0.6, 10)] == ["a", "c", "b", "d"]
    assert fuse([], [], 0.6, 5) == []
    assert [(h.id, h.score) for h in fuse([_hit("a", 0.3)], [], 0.6, 5)] == [("a", pytest.approx(0.6))]


def test_weighted_fusion_is_the_one_the_bench_measures():
    from agentfleet.evaluation import bench

    assert bench.weighted_fusion is weighted_fusion
    assert bench.analyse is analyse
    assert weighted_fusion([{"x": 2.0, "y": 1.0}, {"y": 5.0, "x": 1.0}], (0.4, 0.6)) == [
        ("y", pytest.approx(0.6)), ("x", pytest.approx(0.4))]
    assert 0.5 < DENSE_WEIGHT < 0.75


def test_candidates_and_terms():
    assert candidates(1) == 30 and candidates(10) == 30 and candidates(30) == 90
    assert terms("The Frobnicators are configured, and it works!") == "frobnicator configured work"
    # A query drops a question's scaffolding; documents keep every word; a query of scaffolding only keeps it.
    assert query_terms("How many vacation days do I get?") == "vacation day"
    assert query_terms("Why does my function raise RecursionError?") == "function raise recursionerror"
    assert terms("Where do I get a badge?") == "where do i get badge"
    assert query_terms("How do I?") == "how do i"


def test_question_scaffolding_does_not_outrank_the_topic(tmp_path):
    # Found on the example corpus: "do", "I" and "get" are rare there, so an office FAQ full of "do I" outranked the
    # vacation policy in BM25 (and second in hybrid), and the small model answered from the FAQ.
    with MilvusStore(str(tmp_path / "q.db"), "docs") as s:
        assert s.ensure_collection(dimension=DIM) is True
        rows = [_row("faq", _e(1), "Where do I park? Can I bring a guest? Do I get lunch? Where do I get a badge?"),
                _row("vacation", _e(2), "Employees earn 25 vacation days per year.")]
        rows += [_row(f"f{i}", _e(3 + i % 4), f"Expense claims within {i} days, receipts for meals.") for i in range(6)]
        s.upsert(rows)
        s.flush()
        top = s.search_text(["How many vacation days do I get?"], ACME, k=3)[0]
        assert top[0].id == "vacation" and "faq" not in [h.id for h in top[:2]]
        assert s.search_text(["Where do I park?"], ACME, k=1)[0][0].id == "faq"


class _Fixed:
    name, dimension = "fixed", DIM

    def __init__(self, vector):
        self.vector = np.asarray(vector, dtype=np.float32)
        self.calls = 0

    def embed(self, texts):
        self.calls += 1
        return np.stack([self.vector for _ in texts])


def _e(i: int, sign: float = 1.0) -> list[float]:
    v = [0.0] * DIM
    v[i] = sign
    return v


def _row(cid, vector, text, tenant="acme"):
    acc = stored_access(tenant, [], public=False)
    return {"id": cid, "vector": vector, "tenant": acc.tenant, "groups": acc.groups, "doc": cid, "source": cid,
            "title": "", "trail": "[]", "start": 0, "end": len(text), "text": text}


@pytest.fixture()
def store(tmp_path):
    s = MilvusStore(str(tmp_path / "hybrid.db"), "docs")
    assert s.ensure_collection(dimension=DIM) is True
    assert s.full_text
    rows = [_row("near", _e(0), "unrelated prose about gardens and tomatoes"),
            _row("kw", _e(0, -1.0), "how the frobnicator widget is configured"),
            _row("forbidden", _e(0), "frobnicator frobnicators frobnicator secrets", tenant="globex")]
    rows += [_row(f"filler{i}", _e(i), f"filler text number {i} about other matters") for i in range(1, 6)]
    s.upsert(rows)
    s.flush()
    yield s
    s.close()


def test_hybrid_finds_the_keyword_only_match_and_never_the_forbidden_one(store):
    query = "Frobnicators"   # stemmed to the indexed "frobnicator"
    emb = _Fixed(_e(0))
    dense = [h.id for h in Retriever(store, emb, mode="dense").search(query, ACME, k=2)]
    assert dense[0] == "near" and "kw" not in dense
    # dense min-max: near 1, fillers 0.5, kw 0; bm25: kw 1, the rest absent or 0 -> near 0.6, kw 0.4, fillers 0.3
    hybrid = Retriever(store, emb).search(query, ACME, k=2)
    assert [h.id for h in hybrid] == ["near", "kw"]
    assert [h.score for h in hybrid] == pytest.approx([DENSE_WEIGHT, 1 - DENSE_WEIGHT], abs=1e-6)
    bm25 = store.search_text([query], ACME, k=10)[0]
    assert bm25[0].id == "kw" and bm25[0].score > 0
    for mode in ("hybrid", "dense", "bm25"):
        for k in (1, 2, 8, 50):
            got = [h.id for h in Retriever(store, emb, mode=mode).search(query, ACME, k=k)]
            assert "forbidden" not in got
            if mode != "bm25":
                assert len(got) == min(k, 7)   # 7 chunks acme may read
    globex = Principal("globex", ())
    assert [h.id for h in Retriever(store, emb).search(query, globex, k=5)] == ["forbidden"]


def test_the_cache_key_holds_the_mode(store):
    emb, cache = _Fixed(_e(0)), RetrievalCache()
    dense = Retriever(store, emb, mode="dense", cache=cache).search("frobnicator", ACME, k=2)
    hybrid = Retriever(store, emb, cache=cache).search("frobnicator", ACME, k=2)
    assert [h.id for h in dense] != [h.id for h in hybrid] and len(cache) == 2
    assert Retriever(store, emb, cache=cache).search("frobnicator", ACME, k=2) == hybrid and cache.hits == 1


def test_a_collection_without_the_bm25_field_is_searched_dense_only(tmp_path, caplog):
    from pymilvus import DataType, MilvusClient

    path = str(tmp_path / "old.db")
    c = MilvusClient(path)
    s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    s.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
    s.add_field("vector", DataType.FLOAT_VECTOR, dim=DIM)
    for f in ("tenant", "groups", "doc", "source", "title", "trail", "text"):
        s.add_field(f, DataType.VARCHAR, max_length=1024)
    s.add_field("start", DataType.INT64)
    s.add_field("end", DataType.INT64)
    ip = c.prepare_index_params()
    ip.add_index("vector", index_type="FLAT", metric_type="COSINE")
    c.create_collection("docs", schema=s, index_params=ip)
    c.close()
    with MilvusStore(path, "docs") as old, caplog.at_level("INFO", logger="agentfleet.retrieval.store"):
        assert old.ensure_collection(dimension=DIM) is False
        old.upsert([_row("near", _e(0), "gardens"), _row("kw", _e(0, -1.0), "frobnicator")])   # no terms written
        old.flush()
        r = Retriever(old, _Fixed(_e(0)))
        assert r.mode == "dense" and not old.full_text
        assert "no BM25 field" in caplog.text
        assert [h.id for h in r.search("frobnicator", ACME, k=1)] == ["near"]


def test_unknown_mode_is_refused(store):
    with pytest.raises(ValueError):
        Retriever(store, _Fixed(_e(0)), mode="sparse")  # type: ignore[arg-type]
