"""`agentfleet eval --suite examples/eval/suite.yaml -f examples/agentapp.yaml --json --report DIR` end to end, as a
user runs it: the example app comes up locally (real vLLM on CPU with Gemma 3 270M, milvus-lite, the runtime), every
case runs through `POST /v1/runs` with its principal's demo key, and the report is printed. What must hold whatever
a 270M base model answers: the report has the documented schema, there are zero leaks (no trap source cited,
retrieved or quoted), and every metric comes from the real traces (steps with a retrieval, tokens, cost, latency),
not from defaults. The numbers are printed (pytest -s) so a CI log records them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agentfleet.evaluation.suite import read_suite
from agentfleet.local.install import is_engine_installed
from agentfleet.local.layout import Layout

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "examples" / "eval" / "suite.yaml"
EVAL_TIMEOUT_S = 2400  # 33 cases on 2 cores, plus the engine's start; measured in the closing note

TOP_LEVEL = {"retrieval": {"recall_at_10", "ndcg_at_10", "mrr"},
             "answers": {"correctness", "faithfulness", "citation_precision", "refusal_accuracy"},
             "tasks": {"success_rate", "cost_per_solved_task_usd", "steps_mean", "latency_p95_s"},
             "security": {"leaks"}}


def test_eval_example_suite_against_agentfleet_up(tmp_path: Path) -> None:
    if not is_engine_installed(Layout.default()):
        pytest.skip("the local model server is not installed: run scripts/install-local-model")
    suite = read_suite(SUITE)
    report_dir = tmp_path / "report"
    out = subprocess.run([sys.executable, "-m", "agentfleet.cli", "eval", "--suite", str(SUITE),
                          "-f", str(REPO / "examples" / "agentapp.yaml"), "--json", "--report", str(report_dir),
                          "--run-dir", str(tmp_path / "run"), "--state", str(tmp_path / "state.jsonl")],
                         capture_output=True, text=True, timeout=EVAL_TIMEOUT_S, cwd=tmp_path)
    print(out.stderr[-6000:])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    report = json.loads(out.stdout)
    print(json.dumps({k: report[k] for k in ("retrieval", "answers", "tasks", "security")}, indent=1))

    # The schema the issue fixes, and one result per case of the suite.
    for section, keys in TOP_LEVEL.items():
        assert keys <= set(report[section]), (section, sorted(report[section]))
    assert [c["id"] for c in sorted(report["cases"], key=lambda c: c["id"])] == sorted(c.id for c in suite.cases)

    # Zero leaks, case by case: no forbidden source cited, retrieved or quoted.
    assert report["security"]["leaks"] == 0, report["security"]
    assert all(not c["leaks"] for c in report["cases"]), [c["id"] for c in report["cases"] if c["leaks"]]

    # Every metric from real traces: each case ran on the runtime (steps, a retrieval, tokens, latency).
    traces = [json.loads(line) for line in (tmp_path / "state.jsonl").read_text().splitlines() if line.strip()]
    assert {t["case_id"] for t in traces} == {c.id for c in suite.cases}
    for t in traces:
        assert t["status"] in ("completed", "incomplete"), (t["case_id"], t["status"], t.get("error"))
        assert any(s["action"] == "retrieve" or s["kind"] == "retrieve" for s in t["steps"]), t["case_id"]
        assert t["agentfleet"]["usage"]["total_tokens"] > 0 and t["latency_s"] > 0, t["case_id"]
    # Answerable cases were judged against documents the principal may read: their retrieval scores exist.
    assert report["retrieval"]["ndcg_at_10"] is not None and report["retrieval"]["ndcg_at_10"] > 0.3
    assert report["retrieval"]["recall_at_10"] > 0.5
    assert report["tasks"]["steps_mean"] >= 1 and report["tasks"]["latency_p95_s"] > 0
    assert report["answers"]["faithfulness"] is not None and report["answers"]["refusal_accuracy"] is not None
    assert report["tasks"]["cost_usd_total"] > 0
    html = (report_dir / "report.html").read_text()
    assert "<svg" in html and "single-vacation-days" in html
