"""`GET /v1/sources/{doc_id}`, the cited-source route, against the real runtime over a real milvus-lite index
(ingested by the pipeline, plus one chunk written with narrower access than the rest of its document): a caller
gets the chunks of a document that their tenant and groups may read, exactly as retrieval filters them; another
tenant's document, a document of a group they are not in, an unknown id and a malformed one are the same 404; a
chunk of a group they are not in is left out of a document they may otherwise read. An answer's citations carry a
`url` to this route, which the same caller can follow."""

from __future__ import annotations

import asyncio
import io
import json

import pytest

from agentfleet.ingest.pipeline import document_key
from agentfleet.retrieval.embedders import LocalMiniLM
from agentfleet.retrieval.filters import stored_access
from agentfleet.retrieval.indexer import IngestOptions, run_ingest
from agentfleet.retrieval.search import Retriever
from agentfleet.retrieval.store import MilvusStore
from runtime_kit import ALICE, FRANK, GINA, final, make_config, scripted, serve

VACATION = "handbook/vacation.md"
BUDGET = "finance/budget.md"
GLOBEX = "globex/plan.md"
ANNEX = "Annex for finance: the carry-over budget is 40000 dollars."


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    src = tmp_path_factory.mktemp("corpus")
    docs = {VACATION: ("acme", "[all]", "# Vacation\n\nEmployees get 25 days of paid vacation per year.\n\n"
                                        "## Carry-over\n\nUp to 5 unused days carry over to the next year."),
            BUDGET: ("acme", "[finance]", "# Budget\n\nThe travel budget is 1200 dollars per quarter."),
            GLOBEX: ("globex", "[all]", "# Plan\n\nGlobex ships the new product in March.")}
    for path, (tenant, groups, body) in docs.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_text(f"---\ntenant: {tenant}\ngroups: {groups}\n---\n{body}")
    db = str(tmp_path_factory.mktemp("index") / "docs.db")
    embedder = LocalMiniLM()
    summary = run_ingest(IngestOptions(source=src, size_tokens=16, overlap_tokens=4),
                         open_store=lambda: MilvusStore(db, "documents"), embedder=embedder, log=io.StringIO(),
                         is_tty=False)
    assert summary.documents == 3 and summary.chunks > 3
    # One chunk of the vacation document readable by finance only: the route must leave it out for everyone else.
    access = stored_access("acme", ["finance"])
    with MilvusStore(db, "documents") as store:
        store.upsert([{"id": "annex-finance-only-0001", "vector": embedder.embed([ANNEX])[0], "tenant": access.tenant,
                       "groups": access.groups, "doc": document_key(VACATION), "source": VACATION,
                       "title": "Vacation", "trail": json.dumps(["Vacation", "Annex"]), "start": 10_000,
                       "end": 10_000 + len(ANNEX), "text": ANNEX}])
        store.flush()
    return db


def _sources(tmp_path, db, requests, *, reply=lambda body, headers: final("ok")):
    """Serve the app over the index and make `requests` (path or async fn of the server, key, headers) in order."""
    async def go():
        async with scripted(reply) as model:
            cfg = make_config(tmp_path, large_url=model.url, index_uri=db)
            retriever = Retriever(MilvusStore(db, "documents"), LocalMiniLM())
            try:
                async with serve(cfg, tmp_path, retriever=retriever) as s:
                    out = []
                    for path, key, headers in requests:
                        path = await path(s) if callable(path) else path
                        async with s.session.get(s.url + path, headers={
                                **({"Authorization": f"Bearer {key}"} if key else {}), **headers}) as r:
                            out.append((r.status, r.headers.get("Content-Type", "").split(";")[0], await r.text()))
                    return out
            finally:
                retriever.store.close()

    return asyncio.run(go())


def path_of(source: str) -> str:
    return f"/v1/sources/{document_key(source)}"


def test_a_caller_reads_the_chunks_of_a_document_their_groups_may_read(index, tmp_path):
    (a_status, a_type, alice), (f_status, _, frank), (t_status, t_type, text) = _sources(tmp_path, index, [
        (path_of(VACATION), ALICE, {}), (path_of(VACATION), FRANK, {}),
        (path_of(VACATION), ALICE, {"Accept": "text/plain"})])
    assert (a_status, a_type, f_status, t_status, t_type) == (200, "application/json", 200, 200, "text/plain")
    alice, frank = json.loads(alice), json.loads(frank)
    assert alice["object"] == "agentfleet.source" and alice["id"] == document_key(VACATION)
    assert alice["source"] == VACATION and alice["title"] == "Vacation" and alice["truncated"] is False
    alice_text = " ".join(c["text"] for c in alice["chunks"])
    assert "25 days of paid vacation" in alice_text and "Up to 5 unused days" in alice_text
    # The finance-only chunk of this document: frank (finance) gets it, alice (eng) does not
    assert ANNEX not in alice_text and ANNEX in [c["text"] for c in frank["chunks"]]
    assert [c["id"] for c in frank["chunks"] if c["text"] != ANNEX] == [c["id"] for c in alice["chunks"]]
    assert [c["start"] for c in alice["chunks"]] == sorted(c["start"] for c in alice["chunks"])
    # As text: the chunks joined at their offsets (overlaps once), the annex absent
    assert "Employees get 25 days of paid vacation per year." in text and ANNEX not in text
    assert text.count("Employees get 25 days") == 1


NOT_FOUND = [
    ("another-tenant", GLOBEX, ALICE),
    ("another-group", BUDGET, ALICE),
    ("unknown-id", "no/such/document.md", ALICE),
]


def test_what_a_caller_may_not_read_is_the_same_404_as_nothing(index, tmp_path):
    requests = [(path_of(source), key, {}) for _, source, key in NOT_FOUND]
    requests += [("/v1/sources/not-a-document-id", ALICE, {}), (path_of(GLOBEX), GINA, {}),
                 (path_of(BUDGET), FRANK, {}), (path_of(VACATION), None, {})]
    got = _sources(tmp_path, index, requests)
    refused, malformed, (gina_status, _, gina), (frank_status, _, _), (anon_status, _, _) = \
        got[:3], got[3], got[4], got[5], got[6]
    assert [status for status, _, _ in refused] == [404, 404, 404]
    assert len({body for _, _, body in refused}) == 1  # one body: existence does not leak
    assert json.loads(refused[0][2])["error"]["code"] == "not_found"
    assert malformed[0] == 404 and malformed[2] == refused[0][2]
    assert gina_status == 200 and "Globex ships" in gina  # the same document, for its own tenant
    assert frank_status == 200  # the finance document, for finance
    assert anon_status == 401


def test_an_answers_citations_link_to_the_route_the_caller_can_follow(index, tmp_path):
    """The retrieve step before the first model call cites the vacation document; the answer's citation `url`
    is this runtime's route for it, and alice following it reads the document."""
    seen = {}

    async def ask(s):
        status, body = await s.chat("How many vacation days do I get?")
        assert status == 200, body
        seen["citations"] = body["agentfleet"]["citations"]
        return next(c["url"] for c in seen["citations"] if c["source"] == VACATION)

    [(status, _, body)] = _sources(tmp_path, index, [(ask, ALICE, {})],
                                   reply=lambda b, h: "Vacation is 25 days [1]." if not b.get("response_format")
                                   else final("Vacation is 25 days [1]."))
    cites = seen["citations"]
    assert cites and all(c["url"] == path_of(c["source"]) for c in cites)
    assert status == 200 and json.loads(body)["source"] == VACATION
