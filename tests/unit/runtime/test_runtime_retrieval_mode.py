"""The AgentApp's spec.index.mode reaches the runtime's retrieve tool: `open_retrieval` builds the Retriever the
runtime serves with, over a real milvus-lite index, in the configured mode (hybrid by default)."""

from __future__ import annotations

import io

import pytest

from agentfleet.retrieval.embedders import LocalMiniLM
from agentfleet.retrieval.filters import Principal
from agentfleet.retrieval.indexer import IngestOptions, run_ingest
from agentfleet.retrieval.store import MilvusStore
from agentfleet.runtime.metrics import RuntimeMetrics
from agentfleet.runtime.server import open_retrieval
from runtime_kit import make_config


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    src = tmp_path_factory.mktemp("corpus")
    head = "---\ntenant: acme\ngroups: [all]\n---\n"
    (src / "vacation.md").write_text(head + "# Vacation\n\nEmployees get 25 days of paid vacation per year.")
    (src / "oncall.md").write_text(head + "# On-call\n\nThe on-call engineer answers pages within fifteen minutes.")
    db = str(tmp_path_factory.mktemp("index") / "docs.db")
    summary = run_ingest(IngestOptions(source=src), open_store=lambda: MilvusStore(db, "documents"),
                         embedder=LocalMiniLM(), log=io.StringIO(), is_tty=False)
    assert summary.documents == 2
    return db


@pytest.mark.parametrize("mode, unrelated_hits", [(None, 2), ("hybrid", 2), ("dense", 2), ("bm25", 0)])
def test_the_runtime_searches_in_the_apps_mode(index, tmp_path, mode, unrelated_hits):
    ref = {"name": "docs", "topK": 3, **({"mode": mode} if mode else {})}
    cfg = make_config(tmp_path, large_url="http://127.0.0.1:9/v1", index_uri=index, app={"index": ref})
    assert cfg.index is not None and cfg.index.mode == (mode or "hybrid")
    retrieval = open_retrieval(cfg, RuntimeMetrics())
    assert retrieval is not None
    try:
        assert retrieval.retriever.mode == (mode or "hybrid")
        acme = Principal("acme", ("all",))
        # A query sharing no term with the corpus: BM25 alone finds nothing, the vector search ranks everything.
        assert len(retrieval.retriever.search("zyxwvut qqq", acme, k=3)) == unrelated_hits
        assert retrieval.retriever.search("paid vacation days", acme, k=3)[0].source == "vacation.md"
    finally:
        retrieval.close()
        retrieval.retriever.store.close()
