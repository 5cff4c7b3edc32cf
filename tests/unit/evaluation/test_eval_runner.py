"""The agent-mode runner against a real runtime server (runtime_kit: the operator's own runtime configuration, a
scripted OpenAI-compatible model server, milvus-lite retrieval over the example corpus): traces have the shape
the runtime really returns and score into numbers, concurrency stays within its bound, a rerun resumes (no
POST /v1/runs for finished cases; timed-out ones run again and were cancelled on the server), a 429 is waited
out, and the progress line reads as documented."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import pytest

from eval_kit import FRANK, KEYS, SUITE, agent_model, corpus_index, final, make_config, runs_posted, scripted, \
    serve
from agentfleet.evaluation import runner as runner_mod
from agentfleet.evaluation.runner import CaseRun, Progress, StateFile, default_state_path, run_cases
from agentfleet.evaluation.scoring import score_case
from agentfleet.evaluation.suite import Case, parse_suite
from agentfleet.evaluation.target import CorpusAccess
from agentfleet.retrieval.filters import Principal
from agentfleet.retrieval.search import Retriever
from agentfleet.retrieval.store import MilvusStore

KEY_OF = {entry["user"]: key for key, entry in KEYS.items()}


@pytest.fixture(scope="module")
def index():
    from agentfleet.retrieval.embedders import LocalMiniLM

    src, db = corpus_index()
    store = MilvusStore(str(db), "documents")
    yield src, db, Retriever(store, LocalMiniLM())
    store.close()


def by_principal(case: Case) -> str:
    return KEY_OF[case.principal]


def test_traces_have_the_runtime_shape_and_score_into_numbers(index, tmp_path):
    src, _, retriever = index
    suite = parse_suite(SUITE)

    async def go():
        async with scripted(agent_model) as m, \
                serve(make_config(tmp_path, large_url=m.url, index_uri="unused.db"), tmp_path,
                      retriever=retriever) as s:
            return await run_cases(suite.cases, CaseRun(s.url + "/v1", by_principal, concurrency=3))

    traces = asyncio.run(go())
    assert [t["case_id"] for t in traces] == [c.id for c in suite.cases]
    for t in traces:
        assert set(t) >= {"case_id", "principal", "status", "http_status", "answer", "error", "latency_s",
                          "agentfleet", "steps"}
        assert (t["status"], t["http_status"], t["error"]) == ("completed", 202, None), t
        assert t["steps"][0]["kind"] == "retrieve" and t["steps"][0]["observation"].startswith("[1] ")
        af = t["agentfleet"]
        assert set(af) >= {"task_id", "stop_reason", "steps", "models", "citations", "cost_usd", "usage", "seconds"}
        assert af["stop_reason"] == "answered" and af["citations"] and af["usage"]["total_tokens"] > 0
        assert t["latency_s"] >= af["seconds"] > 0
    vacation = traces[0]
    assert "25 days" in vacation["answer"] and "[1]" in vacation["answer"]
    assert vacation["agentfleet"]["citations"][0]["source"] == "handbook-vacation.md"

    corpus = CorpusAccess.from_dir(src)
    alice = Principal("acme", ("eng", "all"), user="alice")
    result = score_case(suite.cases[0], vacation, permitted=corpus.permitted(alice),
                        forbidden_texts=corpus.forbidden_texts(suite.cases[0].forbidden))
    assert result["retrieval"]["ndcg_at_10"] == 1.0 and result["retrieval"]["mrr"] == 1.0
    assert result["answers"]["facts_recall"] == 1.0 and result["answers"]["faithfulness"] == 1.0
    assert result["answers"]["citation_precision"] == 1.0
    assert result["task"]["cost_usd"] >= 0 and result["task"]["tokens"] > 0 and result["task"]["steps"] >= 1
    assert result["leaks"] == [] and result["passed"], result["failures"]
    mars = score_case(suite.cases[-1], traces[-1])
    assert mars["answers"]["refused"] and mars["answers"]["refusal_correct"]


def test_concurrency_never_exceeds_the_bound(tmp_path):
    in_flight, peak = [0], [0]

    async def slow(body, headers):
        in_flight[0] += 1
        peak[0] = max(peak[0], in_flight[0])
        try:
            await asyncio.sleep(0.25)
        finally:
            in_flight[0] -= 1
        return final("done")

    cases = [Case(id=f"c{i}", principal="alice", question=f"question {i}?") for i in range(6)]

    async def go():
        async with scripted(slow) as m, serve(make_config(tmp_path, large_url=m.url), tmp_path) as s:
            traces = await run_cases(cases, CaseRun(s.url, by_principal, concurrency=2))
            return traces, m.requests

    traces, requests = asyncio.run(go())
    assert [t["status"] for t in traces] == ["completed"] * 6
    assert len(requests) == 6
    assert peak[0] == 2


def test_a_rerun_skips_finished_cases_and_retries_timed_out_ones(tmp_path):
    release = asyncio.Event()

    async def model(body, headers):
        if "slow" in body["messages"][-1]["content"] and not release.is_set():
            await asyncio.sleep(30)
        return final("the answer")

    cases = [Case(id="fast1", principal="alice", question="fast one?"),
             Case(id="slow", principal="frank", question="slow one?"),
             Case(id="fast2", principal="gina", question="fast two?")]
    state = StateFile(tmp_path / "state.jsonl")

    async def first_then_second():
        async with scripted(model) as m, serve(make_config(tmp_path, large_url=m.url), tmp_path) as s:
            opts = CaseRun(s.url, by_principal, concurrency=3, timeout_s=1.5, on_trace=state.append)
            first = await run_cases(cases, opts)
            cancelled = (await s.get(f"/v1/runs/{first[1]['run_id']}", key=FRANK))[1]
            posted_after_first = await runs_posted(s)
            release.set()
            done = state.load([c.id for c in cases])
            todo = [c for c in cases if c.id not in done]
            second = await run_cases(todo, CaseRun(s.url, by_principal, timeout_s=10, on_trace=state.append))
            return first, cancelled, posted_after_first, done, second, await runs_posted(s)

    first, cancelled, posted1, done, second, posted2 = asyncio.run(first_then_second())
    assert [t["status"] for t in first] == ["completed", "error", "completed"]
    assert first[1]["error"]["code"] == "timeout" and "cancelled" in first[1]["error"]["message"]
    assert cancelled["status"] == "cancelled"           # the timed-out run was DELETEd on the server
    assert sorted(done) == ["fast1", "fast2"]
    assert [t["case_id"] for t in second] == ["slow"] and second[0]["status"] == "completed"
    assert (posted1, posted2) == (3, 4)                  # the rerun POSTed only the case that had not finished
    assert sorted(state.load([c.id for c in cases])) == ["fast1", "fast2", "slow"]


def test_state_file_ignores_torn_lines_and_later_errors_override(tmp_path):
    path = tmp_path / "s.jsonl"
    ok = {"case_id": "a", "status": "completed"}
    path.write_text(json.dumps(ok) + "\n" + json.dumps({"case_id": "b", "status": "failed"}) + "\n"
                    + json.dumps({"case_id": "b", "status": "error"}) + "\n" + '{"case_id": "c", "sta')
    assert StateFile(path).load(["a", "b", "c"]) == {"a": ok}
    assert StateFile(tmp_path / "missing.jsonl").load(["a"]) == {}


@pytest.mark.parametrize("suite_text, target, same", [
    ("cases: []", "http://a:8080", True),
    ("cases: [x]", "http://a:8080", False),
    ("cases: []", "http://b:8080", False),
], ids=["same", "suite-changed", "target-changed"])
def test_the_default_state_file_follows_the_suite_and_the_target(tmp_path, suite_text, target, same):
    base = default_state_path("evals/suite.yaml", "cases: []", "http://a:8080", cwd=tmp_path)
    got = default_state_path("evals/suite.yaml", suite_text, target, cwd=tmp_path)
    assert base.parent == tmp_path / ".agentfleet-eval" and base.name.startswith("suite-")
    assert (got == base) is same


def test_a_429_is_waited_out_and_retried(tmp_path, monkeypatch):
    # The runtime runs one run at a time (max_runs=1: a second is refused with 429 while the first runs). Retry-After:
    # 5, shortened; still longer than the first run takes to finish.
    monkeypatch.setattr(runner_mod, "MAX_RETRY_AFTER_S", 1.0)

    async def model(body, headers):
        await asyncio.sleep(0.2)
        return final("ok")

    cases = [Case(id="a", principal="alice", question="one?"), Case(id="b", principal="alice", question="two?")]

    async def go():
        async with scripted(model) as m, serve(make_config(tmp_path, large_url=m.url), tmp_path, max_runs=1) as s:
            return await run_cases(cases, CaseRun(s.url, by_principal, concurrency=2))

    traces = asyncio.run(go())
    assert [t["status"] for t in traces] == ["completed", "completed"], traces
    assert max(t["latency_s"] for t in traces) >= 1.0   # one of them waited


def test_a_refused_request_is_recorded_not_raised(tmp_path):
    cases = [Case(id="long", principal="alice", question="x" * 40_000)]   # over the runtime's MAX_INPUT_CHARS

    async def go():
        async with scripted(lambda b, h: final("never")) as m, serve(make_config(tmp_path, large_url=m.url),
                                                                     tmp_path) as s:
            return await run_cases(cases, CaseRun(s.url, by_principal))

    (trace,) = asyncio.run(go())
    assert (trace["status"], trace["http_status"]) == ("failed", 400)
    assert trace["error"]["type"] == "invalid_request_error" and trace["error"]["message"]


@pytest.mark.parametrize("is_tty", [False, True], ids=["plain", "tty"])
def test_progress_reads_as_documented(is_tty):
    out = io.StringIO()
    p = Progress(30, done=11, stream=out, is_tty=is_tty, width=10)
    p.update({"case_id": "q7", "principal": "alice", "status": "completed", "latency_s": 8.06,
              "agentfleet": {"cost_usd": 0.0012}})
    text = out.getvalue()
    assert "[12/30] q7 alice completed 8.1s $0.0012" in text
    assert text.startswith("\r\x1b[K[####......] ") if is_tty else text.endswith("\n")


def test_an_index_held_open_elsewhere_is_searched_through_a_snapshot(index, tmp_path):
    from agentfleet.evaluation.retrieval import open_search
    from agentfleet.evaluation.target import is_held, snapshot_index

    _, db, _ = index   # this process's milvus-lite server holds it (the fixture's store)
    assert is_held(str(db)) and not is_held(str(tmp_path / "nothing.db")) and not is_held("http://milvus:19530")
    copy = snapshot_index(db, tmp_path)
    assert not (copy / "LOCK").exists()
    with open_search(str(copy), "documents") as search:
        hits = search("How many vacation days do I get?", Principal("acme", ("all",), user="alice"), 5)
    assert hits[0].source == "handbook-vacation.md" and hits[0].tenant == "61636d65"   # hex of "acme"


def test_corpus_readable_is_by_the_principals_permissions(tmp_path):
    # The example corpus: faq-office.md (acme, all) and security-incident-response.md (acme, security) share the
    # sentence about their access sidecar; the incident channel's name is only in the security page.
    import yaml

    from agentfleet.evaluation.scoring import _shingles
    from agentfleet.ingest.corpus import materialise_configmap

    repo = Path(__file__).resolve().parents[3]
    docs = [d for d in yaml.safe_load_all((repo / "examples" / "agentapp.yaml").read_text()) if d]
    materialise_configmap(next(d for d in docs if d.get("kind") == "ConfigMap" and "corpus" in
                               d["metadata"]["name"]), tmp_path)
    corpus = CorpusAccess.from_dir(tmp_path)
    security = corpus.texts["security-incident-response.md"]
    shared = _shingles(security) & _shingles(corpus.texts["faq-office.md"])
    assert shared
    bob = Principal("acme", ("finance", "all"), user="bob")
    assert not corpus.permitted(bob)("security-incident-response.md")
    readable = corpus.readable(bob)
    assert all(readable(" ".join(q)) for q in shared)
    only_security = _shingles(security) - shared
    assert only_security and not any(readable(" ".join(q)) for q in only_security)
    assert not corpus.readable(Principal("globex", ("all",), user="gina"))(" ".join(next(iter(shared))))
