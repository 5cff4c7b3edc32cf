"""`agentfleet eval` in agent mode, end to end through the CLI against a real runtime (in-process, scripted model,
milvus-lite retrieval over the example corpus), and with `-f` against the app started as `agentfleet up` starts it.
The issue's "Done means": a deliberately broken retrieval makes its metric and the gate fail — the permission
filter removed gives leaks (exit 1), the embedder swapped for random vectors drops nDCG@10 and `--baseline` exits 1
naming retrieval.ndcg_at_10. Usage errors exit 2 and an unreachable app 3, each with one line and no traceback."""

from __future__ import annotations

import asyncio
import json
import socket
import sys

import pytest
import yaml

from eval_kit import KEYS, REPO, SUITE, RandomVectors, agent_model, corpus_index, make_config, run_cli, runs_posted, \
    scripted, serve, write_keys, write_suite
from agentfleet.api.agentapp import EvaluationGate
from agentfleet.evaluation.report import summary_for_status
from agentfleet.retrieval.embedders import LocalMiniLM
from agentfleet.retrieval.filters import Filter
from agentfleet.retrieval.search import Retriever
from agentfleet.retrieval.store import MilvusStore
from agentfleet.status import gate_failures

TOP_LEVEL = {"schema", "mode", "meta", "retrieval", "answers", "tasks", "security", "checks", "cases"}


@pytest.fixture(scope="module")
def index():
    src, db = corpus_index()
    store = MilvusStore(str(db), "documents")
    yield src, db, store
    store.close()


@pytest.fixture()
def files(tmp_path):
    return write_suite(tmp_path / "suite.yaml"), write_keys(tmp_path / "eval-keys.yaml")


def agent_argv(url, suite, keys, src, db, tmp_path, *extra):
    return ["eval", "--suite", str(suite), "--url", url, "--keys", str(keys), "--corpus", str(src), "--index", str(db),
            "--state", str(tmp_path / "state.jsonl"), "--fresh", "--json", *extra]


async def _eval_against(retriever, tmp_path, argv_for):
    async with scripted(agent_model) as m, \
            serve(make_config(tmp_path, large_url=m.url, index_uri="unused.db"), tmp_path, retriever=retriever) as s:
        return await run_cli(argv_for(s.url))


def test_a_removed_permission_filter_leaks_and_fails_the_gate(index, files, tmp_path, monkeypatch):
    src, db, store = index
    suite, keys = files
    summary = tmp_path / "summary.json"

    def argv(url):
        return agent_argv(url, suite, keys, src, db, tmp_path, "--summary-file", str(summary),
                          "--report", str(tmp_path / "report"))

    retriever = Retriever(store, LocalMiniLM())   # no cache: the second run must search again
    rc, out, err = asyncio.run(_eval_against(retriever, tmp_path, argv))
    assert rc == 0, err[-2000:]
    good = json.loads(out)
    assert set(good) >= TOP_LEVEL and good["mode"] == "agent"
    assert good["security"]["leaks"] == 0 and good["tasks"]["cases"] == len(SUITE["cases"])
    assert good["retrieval"]["ndcg_at_10"] == 1.0 and good["retrieval"]["direct"]["ndcg_at_10"] == 1.0
    assert good["answers"]["faithfulness"] is not None and good["meta"]["faithfulness_method"] == "lexical"
    assert good["tasks"]["cost_per_task_usd"] is not None and good["tasks"]["latency_p95_s"] > 0
    assert "from the corpus" in good["meta"]["permissions"] and "searched directly" in good["meta"]["direct_retrieval"]
    assert json.loads(summary.read_text())["leaks"] == 0
    assert (tmp_path / "report" / "report.json").exists()
    assert f"[{len(SUITE['cases'])}/{len(SUITE['cases'])}]" in err

    import agentfleet.retrieval.store as store_mod

    monkeypatch.setattr(store_mod, "for_principal", lambda principal: Filter('tenant != ""', {}))
    summary.unlink()
    rc, out, err = asyncio.run(_eval_against(retriever, tmp_path, argv))
    bad = json.loads(out)
    assert rc == 1
    assert bad["security"]["leaks"] > 0
    assert {"vacation", "globex-vacation"} <= set(bad["security"]["cases_with_leaks"])
    leaked = {leak["source"] for c in bad["cases"] if c["principal"] == "alice" for leak in c["leaks"]}
    assert leaked & {"finance-q3-forecast.md", "hr-salary-bands.md", "globex-handbook-vacation.md"}
    assert json.loads(summary.read_text())["leaks"] == bad["security"]["leaks"]   # written on exit 1 too
    assert "leaks must be 0" in err and "Traceback" not in err
    # The summary is what the operator reads from the eval pod: the AgentApp's gate (maxLeaks 0) fails on it.
    assert [f for f in gate_failures(EvaluationGate(), json.loads(summary.read_text())) if f.startswith("leaks ")]


def test_random_vectors_drop_ndcg_and_the_baseline_gate_names_it(index, files, tmp_path):
    src, db, store = index
    suite, keys = files
    baseline_dir = tmp_path / "baseline"
    rc, _, err = asyncio.run(_eval_against(Retriever(store, LocalMiniLM()), tmp_path, lambda url: agent_argv(
        url, suite, keys, src, db, tmp_path, "--report", str(baseline_dir))))
    assert rc == 0, err[-2000:]
    baseline = json.loads((baseline_dir / "report.json").read_text())

    rc, out, err = asyncio.run(_eval_against(Retriever(store, RandomVectors()), tmp_path, lambda url: agent_argv(
        url, suite, keys, src, db, tmp_path, "--baseline", str(baseline_dir / "report.json"),
        "--summary-file", str(tmp_path / "summary.json"))))
    report = json.loads(out)
    # The AgentApp gate on nDCG@10 (set between the two runs) passes the baseline and fails the broken embedder.
    gate = EvaluationGate(min_ndcg_at10=0.9)
    assert gate_failures(gate, summary_for_status(baseline)) == []
    assert [f for f in gate_failures(gate, json.loads((tmp_path / "summary.json").read_text()))
            if f.startswith("ndcgAt10 ")]
    assert report["security"]["leaks"] == 0                     # the filter still holds
    assert report["retrieval"]["ndcg_at_10"] < baseline["retrieval"]["ndcg_at_10"] - 0.2   # seeded: 1.0 -> 0.75
    assert rc == 1
    assert "FAIL: retrieval.ndcg_at_10 regressed" in err
    assert "against " in err and "Traceback" not in err


def test_a_key_the_runtime_refuses_stops_before_any_run(index, tmp_path):
    suite = write_suite(tmp_path / "suite.yaml")
    keys = tmp_path / "eval-keys.yaml"
    keys.write_text(yaml.safe_dump({**{k: v for k, v in KEYS.items() if v["user"] != "frank"},
                                    "key-not-known-here": {"user": "frank", "tenant": "acme", "groups": ["finance"]}}))

    async def go():
        async with scripted(agent_model) as m, serve(make_config(tmp_path, large_url=m.url), tmp_path) as s:
            got = await run_cli(["eval", "--suite", str(suite), "--url", s.url, "--keys", str(keys), "--state",
                                 str(tmp_path / "st.jsonl")])
            return got, await runs_posted(s)

    (rc, out, err), posted = asyncio.run(go())
    assert rc == 2 and posted == 0
    assert err.strip().splitlines() == [err.strip()]       # one line
    assert "refused the key of frank (401" in err and "key-not-known-here" not in err


def test_a_principal_without_a_key_is_a_usage_error_listing_the_users(tmp_path):
    suite = write_suite(tmp_path / "suite.yaml")
    keys = tmp_path / "eval-keys.yaml"
    keys.write_text(yaml.safe_dump({k: v for k, v in KEYS.items() if v["user"] == "alice"}))
    rc, _, err = asyncio.run(run_cli(["eval", "--suite", str(suite), "--url", "http://127.0.0.1:9", "--keys",
                                      str(keys)]))
    assert rc == 2
    lines = err.strip().splitlines()
    assert "error: case forecast: principal: user 'frank' has no key in" in lines[0]
    assert lines[-1] == "error: 2 user(s) without a key: frank, gina"


def test_an_unreachable_runtime_exits_3_with_one_line(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]   # closed again below: nothing listens there
    suite, keys = write_suite(tmp_path / "suite.yaml"), write_keys(tmp_path / "eval-keys.yaml")
    summary = tmp_path / "summary.json"
    rc, out, err = asyncio.run(run_cli(["eval", "--suite", str(suite), "--url", f"http://127.0.0.1:{port}",
                                        "--keys", str(keys), "--summary-file", str(summary)]))
    assert rc == 3 and out == ""
    assert err.startswith(f"error: cannot reach the runtime at http://127.0.0.1:{port}") and err.count("\n") == 1
    assert not summary.exists()   # nothing was evaluated


@pytest.mark.parametrize("argv, message", [
    (["--url", "http://x"], "--url needs --key KEY or --keys KEYS.yaml"),
    ([], "give the app with -f APP.yaml"),
    (["--url", "http://x", "--key", "k", "--judge", "large"], "--judge large: a model role resolves only with -f"),
    (["--url", "http://x", "--key", "k", "--concurrency", "0"], "--concurrency must be at least 1"),
], ids=["no-key", "no-target", "role-without-file", "concurrency"])
def test_usage_errors_exit_2(tmp_path, argv, message):
    suite = write_suite(tmp_path / "suite.yaml")
    rc, _, err = asyncio.run(run_cli(["eval", "--suite", str(suite), *argv]))
    assert rc == 2 and message in err


def test_one_key_for_every_case_and_a_human_summary(index, tmp_path):
    _, _, store = index
    cases = [c for c in SUITE["cases"] if c["principal"] == "alice"]
    suite = write_suite(tmp_path / "suite.yaml", {"cases": cases})
    alice_key = next(k for k, v in KEYS.items() if v["user"] == "alice")

    rc, out, err = asyncio.run(_eval_against(Retriever(store, LocalMiniLM()), tmp_path, lambda url: [
        "eval", "--suite", str(suite), "--url", url + "/v1", "--key", alice_key, "--state",
        str(tmp_path / "s.jsonl")]))
    assert rc == 0, err[-2000:]
    lines = out.strip().splitlines()
    assert len(lines) == len(cases) + 3
    assert lines[0].split()[:4] == ["vacation", "alice", "completed", "PASS"]
    assert lines[-3].startswith(f"{len(cases)} cases: success ") and lines[-2].startswith("retrieval: recall@10 1.00")
    assert lines[-1].startswith("answers: correctness ") and lines[-1].endswith("leaks 0")

    # The same suite again: everything is done, nothing is asked twice.
    async def again():
        async with scripted(agent_model) as m, serve(make_config(tmp_path, large_url=m.url), tmp_path) as s:
            got = await run_cli(["eval", "--suite", str(suite), "--url", s.url, "--key", alice_key, "--state",
                                 str(tmp_path / "s.jsonl"), "--json"])
            return got, await runs_posted(s)

    (rc, out, err), posted = asyncio.run(again())
    assert rc == 0 and posted == 0
    assert f"resuming: {len(cases)} of {len(cases)} cases already done" in err
    meta = json.loads(out)["meta"]
    assert meta["keys"].startswith("single key (--key)") and meta["resumed"] == len(cases) and meta["ran"] == 0


def _app_with_external_fleets(url: str) -> list[dict]:
    docs = [d for d in yaml.safe_load_all((REPO / "examples" / "agentapp.yaml").read_text()) if d]
    for d in docs:
        if d.get("kind") == "ModelFleet":
            d["spec"]["baseUrl"] = url
    return docs


def test_with_a_file_the_app_runs_like_agentfleet_up_and_stops(tmp_path):
    """-f: the example app (fleets served by the scripted model through spec.baseUrl, so no local engine) is
    ingested and served by `agentfleet up`'s own code, evaluated with the demo keys from its Secret, stopped, and
    its index searched directly afterwards."""
    demo = {"alice": "alice", "frank": "bob", "gina": "gina"}   # the example's users: bob is in finance
    cases = [{**c, "principal": demo[c["principal"]]} for c in SUITE["cases"][:3]]
    suite = write_suite(tmp_path / "suite.yaml", {"cases": cases})

    async def go():
        async with scripted(agent_model) as m:
            app = tmp_path / "app.yaml"
            app.write_text(yaml.safe_dump_all(_app_with_external_fleets(m.url)))
            return await run_cli(["eval", "--suite", str(suite), "-f", str(app), "--run-dir", str(tmp_path / "run"),
                                  "--state", str(tmp_path / "s.jsonl"), "--json"])

    rc, out, err = asyncio.run(go())
    assert rc == 0, err[-3000:]
    report = json.loads(out)
    assert report["meta"]["app"].endswith("/assistant") and report["security"]["leaks"] == 0
    assert [c["status"] for c in report["cases"]] == ["completed"] * 3
    assert report["retrieval"]["direct"] is not None and "searched directly" in report["meta"]["direct_retrieval"]
    assert "from the corpus" in report["meta"]["permissions"]
    assert "==> ingesting docs" in err and "==> stopping" in err
    port = int(report["meta"]["url"].rsplit(":", 1)[1])
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0      # the runtime is gone


def test_with_a_file_and_no_local_model_server_it_says_what_agentfleet_up_says(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENTFLEET_CACHE", str(tmp_path / "empty-cache"))
    suite = write_suite(tmp_path / "suite.yaml", {"cases": [{**SUITE["cases"][0]}]})
    rc, out, err = asyncio.run(run_cli(["eval", "--suite", str(suite), "-f", str(REPO / "examples" / "agentapp.yaml"),
                                        "--run-dir", str(tmp_path / "run"), "--state", str(tmp_path / "s.jsonl")]))
    assert rc == 3 and out == ""
    assert "error: the local model server (vLLM on CPU) is not installed at" in err
    assert "did not start" in err.strip().splitlines()[-1] and "Traceback" not in err


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
