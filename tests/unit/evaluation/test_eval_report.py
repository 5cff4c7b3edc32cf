"""The agent evaluation report: aggregates over scored cases (hand-computed), the status summary, the baseline
comparison's directions and tolerances, and the self-contained HTML page."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from agentfleet.evaluation.report import SCHEMA, build_report, compare, percentile, summary_for_status, write_html
from agentfleet.evaluation.scoring import score_case
from agentfleet.evaluation.suite import METRICS, Case, Suite


def run(answer: str, *, status: str = "completed", stop: str | None = "answered", cost: float = 0.0,
        latency: float = 1.0, citations: list[dict[str, Any]] | None = None, error: dict | None = None,
        steps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    af = None if stop is None else {
        "task_id": "t", "stop_reason": stop, "detail": "", "steps": 1, "models": {}, "citations": citations or [],
        "cost_usd": cost, "usage": {"prompt_tokens": 80, "completion_tokens": 20, "total_tokens": 100},
        "degraded": False, "seconds": latency, "budget": None}
    return {"case_id": "q", "principal": "alice", "status": status, "http_status": 200 if af else 429,
            "answer": answer, "error": error, "latency_s": latency, "agentfleet": af, "steps": steps or []}


def cite(n: int, source: str) -> dict[str, Any]:
    return {"n": n, "id": f"c{n}", "source": source, "title": source, "headings": [], "score": 0.5}


CASES = (
    Case(id="c1", principal="alice", question="Vacation days?", reference="25 days", relevant={"v.md": 1}),
    Case(id="c2", principal="alice", question="Travel budget?", relevant={"t.md": 1, "v.md": 1}),
    Case(id="c3", principal="bob", question="Sick days?", checks=[{"type": "judge", "rubric": "polite"}]),
    Case(id="c4", principal="bob", question="Parking?", unanswerable=True),
    Case(id="c5", principal="carol", question="Salaries?", forbidden=("s.md",)),
)
TRACES = (
    run("25 days [1]", cost=0.002, latency=1.0, citations=[cite(1, "v.md")]),
    run("USD 2,000 [1]", cost=0.004, latency=2.0, citations=[cite(1, "t.md"), cite(2, "x.md")]),
    run("I cannot find the sick-day rule.", status="incomplete", stop="max_steps", cost=0.006, latency=10.0),
    run("", status="error", stop=None, latency=0.1, error={"message": "window exhausted", "code": "budget_exhausted"}),
    run("The CEO earns 900,000 [1]", status="incomplete", stop="deadline", cost=0.008, latency=30.0,
        citations=[cite(1, "s.md")]),
)


@pytest.fixture
def report() -> dict[str, Any]:
    suite = Suite(cases=CASES)
    results = [score_case(c, t) for c, t in zip(CASES, TRACES)]
    return build_report(suite, results, meta={"suite": "s.yaml", "finished": "2025-01-02T03:04:05Z"})


def test_report_aggregates(report):
    assert report["schema"] == SCHEMA and report["mode"] == "agent"
    assert set(report) == {"schema", "mode", "meta", "retrieval", "answers", "tasks", "security", "checks", "cases"}
    assert report["meta"] == {"suite": "s.yaml", "finished": "2025-01-02T03:04:05Z", "suite_cases": 5, "judge": None,
                              "faithfulness_method": "lexical"}
    # c1 passes; c2 passes; c3 incomplete; c4 error (refused: empty answer, and unanswerable); c5 leaks.
    assert [c["passed"] for c in report["cases"]] == [True, True, False, False, False]
    assert report["tasks"] == {
        "cases": 5, "success_rate": 0.4, "solved": 2, "cost_usd_total": 0.02, "cost_per_task_usd": 0.004,
        "cost_per_solved_task_usd": 0.01,              # all spend over the two solved cases
        "steps_mean": 1.0, "tokens_mean": 100.0,       # over the four runs: c4 was refused before it started
        "latency_p50_s": 2.0, "latency_p95_s": 30.0,   # nearest rank over 1, 2, 10, 30 (c4's 0.1 s left out)
        "caps": {"max_steps": 1, "deadline": 1, "budget_exhausted": 1}, "budget_exhausted": 1, "errors": 1}
    # Means skip cases a metric does not apply to: only c1 and c2 judge any source relevant.
    r = report["retrieval"]
    assert (r["recall_at_10"], r["mrr"], r["context_precision"], r["direct"]) == (0.75, 1.0, 0.75, None)
    assert r["recall_at_k"] == {"1": 0.75, "3": 0.75, "5": 0.75, "10": 0.75}
    a = report["answers"]
    assert (a["correctness"], a["exact_match"], a["f1"]) == (1.0, 1.0, 1.0)     # only c1 has a reference
    assert (a["citation_precision"], a["citation_recall"]) == (1.0, 0.75)        # c1 1/1 and 1/1; c2 1/1 and 1/2
    assert a["refusal_accuracy"] == 0.8   # c3 refused an answerable question; c4 (empty) refused an unanswerable one
    assert a["judge_agreement"] is None
    assert report["security"] == {"leaks": 1, "cases_with_leaks": ["c5"]}
    assert report["checks"] == {"passed": 0, "failed": 0, "skipped": 1}


def test_nothing_solved_has_no_cost_per_solved_task():
    results = [score_case(CASES[2], TRACES[2])]
    got = build_report(Suite(cases=CASES), results, meta={})["tasks"]
    assert (got["solved"], got["cost_per_solved_task_usd"], got["cost_per_task_usd"]) == (0, None, 0.006)


def test_no_cases_gives_undefined_metrics_not_zeros():
    got = build_report(Suite(cases=CASES), [], meta={})
    assert got["tasks"]["success_rate"] is None and got["retrieval"]["recall_at_10"] is None
    assert got["answers"]["faithfulness"] is None and got["tasks"]["latency_p95_s"] is None


@pytest.mark.parametrize("values, p, expected", [
    (list(range(1, 21)), 95, 19), (list(range(1, 101)), 95, 95), ([5.0], 95, 5.0), ([], 95, None),
    ([3, 1, 2], 50, 2), ([1, 2, 3, 4], 50, 2),
], ids=["20-values", "100-values", "one", "none", "odd-median", "even-median-lower"])
def test_percentile_is_nearest_rank(values, p, expected):
    assert percentile(values, p) == expected


def test_summary_for_status_is_compact(report):
    got = summary_for_status(report)
    assert got == {"successRate": 0.4, "faithfulness": report["answers"]["faithfulness"],
                   "ndcgAt10": report["retrieval"]["ndcg_at_10"], "costPerSolvedTaskUsd": 0.01, "leaks": 1,
                   "cases": 5, "time": "2025-01-02T03:04:05Z"}
    assert len(json.dumps(got).encode()) < 1024
    del report["meta"]["finished"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", summary_for_status(report)["time"])


# --- compare ------------------------------------------------------------------------------------------------------
def with_metrics(**values: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dotted, v in values.items():
        section, key = dotted.split("__")
        out.setdefault(section, {})[key] = v
    return out


@pytest.mark.parametrize("metric, base, cur, tolerance, regression", [
    ("retrieval.ndcg_at_10", 0.80, 0.78, 0.01, True),
    ("retrieval.ndcg_at_10", 0.80, 0.78, 0.05, False),
    ("retrieval.ndcg_at_10", 0.80, 0.85, 0.0, False),
    ("retrieval.ndcg_at_10", 0.80, 0.70, None, False),        # no tolerance: reported, not gated
    ("tasks.cost_per_solved_task_usd", 0.010, 0.012, 0.001, True),
    ("tasks.cost_per_solved_task_usd", 0.010, 0.008, 0.0, False),
    ("tasks.latency_p95_s", 2.0, 2.5, 0.4, True),
    ("tasks.steps_mean", 4.0, 3.0, 0.0, False),
    ("security.leaks", 0, 1, None, True),                      # always gated at 0
    ("security.leaks", 0, 1, 1.0, False),
    ("security.leaks", 2, 0, None, False),
    ("tasks.success_rate", 0.9, None, 0.0, False),             # missing now: never gated
], ids=["score-down-past-tolerance", "score-down-within", "score-up", "ungated", "cost-up", "cost-down",
        "latency-up", "steps-down", "leak-added", "leak-tolerated", "leaks-fixed", "missing"])
def test_compare_directions_and_tolerances(metric, base, cur, tolerance, regression):
    key = metric.replace(".", "__")
    tolerances = {} if tolerance is None else {metric: tolerance}
    deltas, regressions = compare(with_metrics(**{key: cur}), with_metrics(**{key: base}), tolerances)
    assert [d["metric"] for d in deltas] == list(METRICS)
    [row] = [d for d in deltas if d["metric"] == metric]
    assert (row["baseline"], row["current"]) == (base, cur)
    assert row["delta"] == (None if cur is None else round(cur - base, 6))
    assert row["regression"] is regression
    assert [r["metric"] for r in regressions] == ([metric] if regression else [])


def test_compare_a_report_with_itself_has_no_regression(report):
    deltas, regressions = compare(report, report, {m: 0.0 for m in METRICS})
    assert regressions == [] and all(d["delta"] in (0, None) for d in deltas)


# --- HTML ---------------------------------------------------------------------------------------------------------
def test_html_is_self_contained_and_escapes_the_answer(tmp_path):
    step = {"n": 1, "agent": "assistant", "kind": "retrieve", "role": "none", "model": "", "action": "retrieve",
            "arguments": {"query": "<b>q</b>"}, "observation": "[1] V (v.md): " + "x" * 2000, "error": None,
            "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "seconds": 0.01, "route": "",
            "sub_agents": [{"agent": "helper", "answer": "<i>sub</i>", "stop_reason": "answered", "detail": "",
                            "steps": []}]}
    answer = '<script>alert("x")</script> 25 days [1]'
    c = Case(id="<c1>", principal="alice", question="Vacation days?", relevant={"v.md": 1})
    results = [score_case(c, run(answer, cost=0.002, citations=[cite(1, "v.md")], steps=[step]))]
    report = build_report(Suite(cases=(c,)), results, meta={"suite": "s.yaml"})
    path = write_html(report, tmp_path / "out")
    page = path.read_text("utf-8")
    assert path == tmp_path / "out" / "report.html"
    assert json.loads((tmp_path / "out" / "report.json").read_text("utf-8")) == report
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; 25 days [1]" in page
    assert "<script" not in page and "<link" not in page and "src=" not in page and "@import" not in page
    assert page.count("<svg") == 3 and "<polyline" in page and "<rect" in page and "<circle" in page
    assert "&lt;c1&gt;" in page and "&lt;i&gt;sub&lt;/i&gt;" in page and "{&quot;query&quot;: &quot;&lt;b&gt;" in page
    # observations are cut at 600 characters: the 14 of "[1] V (v.md): " and 586 x
    assert "x" * 586 + "… (2014 chars)" in page and "x" * 587 not in page
    assert page.count("<details>") == 2                                      # the case and its sub-agent
