"""Pure scoring of one case: chunks deduplicated into a document ranking, and the independent leak check."""

from __future__ import annotations

import pytest

from agentfleet.evaluation.retrieval import RetrievedChunk, may_read, score_case, summarise
from agentfleet.evaluation.suite import Case
from agentfleet.retrieval.filters import Principal, stored_access

ALICE = Principal("python", ("faq", "docs"), user="alice")


def chunk(source: str, tenant: str | None = "python", groups=("docs",), *, public=False, cid=None) -> RetrievedChunk:
    acc = stored_access(tenant, groups, public=public)
    return RetrievedChunk(cid or source, source, 0.5, acc.tenant, acc.groups)


@pytest.mark.parametrize("tenant, groups, public, readable", [
    ("python", ("docs",), False, True),
    ("python", ("staff",), False, False),
    ("python", (), False, True),          # tenant-wide
    ("contoso", (), False, False),        # other tenant
    ("contoso", ("docs",), False, False),
    (None, (), True, True),               # public
], ids=["own-group", "other-group", "tenant-wide", "other-tenant", "other-tenant-same-group-name", "public"])
def test_may_read_matches_the_stored_access(tenant, groups, public, readable):
    c = chunk("x", tenant, groups, public=public)
    assert may_read(ALICE, c.tenant, c.groups) is readable


def test_chunks_of_one_document_count_once_and_leaks_are_listed():
    case = Case(id="q", principal="alice", question="?", relevant={"a.txt": 2, "b.jsonl": 1},
                forbidden=("secret.txt",))
    chunks = [chunk("x.txt", cid="1"), chunk("a.txt", cid="2"), chunk("a.txt", cid="3"),
              chunk("b.jsonl#7", cid="4"), chunk("secret.txt", cid="5"), chunk("s.txt", "contoso", (), cid="6")]
    got = score_case(case, ALICE, chunks, k=10)
    assert got["retrieved"] == ["x.txt", "a.txt", "b.jsonl", "secret.txt", "s.txt"]
    assert got["recall_at_10"] == 1.0
    assert got["mrr"] == 0.5
    assert got["leaks"] == [{"source": "secret.txt", "chunk": "5", "reason": "forbidden source"},
                            {"source": "s.txt", "chunk": "6", "reason": "outside the principal's permissions"}]
    report = summarise([got])
    assert report["security"] == {"leaks": 2, "cases_with_leaks": ["q"]}
    assert set(report["retrieval"]) >= {"recall_at_10", "ndcg_at_10", "mrr"}
    assert report["mode"] == "retrieval-only"


@pytest.mark.parametrize("k, kept", [(5, 10), (10, 10), (11, 11)], ids=["below-10", "10", "above-10"])
def test_the_ranking_keeps_max_k_10_documents(k, kept):
    case = Case(id="q", principal="alice", question="?", relevant={"d9.txt": 1})
    got = score_case(case, ALICE, [chunk(f"d{i}.txt") for i in range(12)], k=k)
    assert len(got["retrieved"]) == kept
    assert got[f"recall_at_{k}"] == (0.0 if k < 10 else 1.0)
    assert got["recall_at_10"] == 1.0
    assert got["mrr"] == 0.1
