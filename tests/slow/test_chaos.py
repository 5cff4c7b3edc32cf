"""Durable runs under faults, against real processes on 127.0.0.1 (`agentfleet bench chaos`, run once per module
through the CLI): two runtime replicas behind a connection-level load balancer, a real Redis (append only), three
llm-d-inference-sim engines behind `agentfleet router` and an MCP server that records every tool call (one key per
step, so a step run twice shows). 60 runs of 2 to 5 model calls at concurrency 20 fault-free, then 60 more while
one replica is killed with SIGKILL, one engine is killed and Redis is stopped and started again. Each invariant of
issue 12 is its own test; a failure prints the runs, steps and events that broke it. Skips, saying why, when the
simulator cannot be built or redis-server installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agentfleet.bench import chaos

pytestmark = pytest.mark.slow

BENCH_TIMEOUT_S = 600  # ~1-2 min measured on 2 slow cores; other suites may share the CPU


def _problems(result: dict[str, Any], *invariants: str) -> str:
    found = [p for p in result["problems"] if p["invariant"] in invariants]
    return (f"{len(found)} violation(s), logs in {result['logs']}:\n"
            + "\n".join(json.dumps(p)[:2000] for p in found[:10]))


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    reason = chaos.missing(install=True)
    if reason:
        pytest.skip(reason)
    logs = tmp_path_factory.mktemp("chaos")
    # Runs of 2 to 5 model calls: every invariant is exercised at a third of the default workload's time (10 to
    # 30 calls a run, the task; its p95 ratio is measured by the bench, never asserted here).
    proc = subprocess.run([sys.executable, "-m", "agentfleet.cli", "bench", "chaos", "--json", "--calls", "2-5",
                           "--log-dir", str(logs)], capture_output=True, text=True, timeout=BENCH_TIMEOUT_S,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, f"the bench failed (logs in {logs}):\n{proc.stderr[-4000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print("\nchaos: " + json.dumps({k: out[k] for k in ("lost", "duplicated_tool_calls", "overspend_usd",
                                                          "reservations_left", "spent_usd", "sum_of_run_costs_usd",
                                                          "statuses", "task_p95_s", "task_p95_ratio", "wall_s")}))
    (Path(logs) / "result.json").write_text(json.dumps(out, indent=2))
    return out


def test_faults_were_injected_mid_way(result: dict[str, Any]) -> None:
    faults = result["phases"]["faults"]["faults"]
    assert [f["fault"] for f in faults] == ["kill -9 replica rt-1", "kill engine sim-2", "restart redis"]
    assert result["phases"]["fault_free"]["completed"] == result["runs_per_phase"], _problems(
        result, "lost", "stated_reason", "rejected_5xx")


def test_no_run_is_lost(result: dict[str, Any]) -> None:
    assert result["lost"] == 0, _problems(result, "lost", "idempotency")


def test_every_run_completes_or_states_why(result: dict[str, Any]) -> None:
    why = ("stated_reason", "rejected_5xx", "internal_error")
    assert not [p for p in result["problems"] if p["invariant"] in why], _problems(result, *why)
    total = sum(result["statuses"].values())
    assert total == 2 * result["runs_per_phase"], result["statuses"]


def test_no_completed_tool_call_runs_twice(result: dict[str, Any]) -> None:
    assert result["duplicated_tool_calls"] == 0, _problems(result, "duplicated_tool_call", "tool_step_twice",
                                                           "idempotency")
    assert not [p for p in result["problems"] if p["invariant"] == "tool_step_twice"], _problems(
        result, "tool_step_twice")


def test_retried_posts_get_the_same_run(result: dict[str, Any]) -> None:
    assert not [p for p in result["problems"] if p["invariant"] == "idempotency"], _problems(result, "idempotency")


def test_budget_is_never_overspent(result: dict[str, Any]) -> None:
    assert result["overspend_usd"] == 0, _problems(result, "overspend")


def test_nothing_is_left_reserved(result: dict[str, Any]) -> None:
    assert result["reservations_left"] == {"usd": 0.0, "tokens": 0}, _problems(result, "reservations_left")


def test_spent_equals_the_runs_reported_costs(result: dict[str, Any]) -> None:
    assert result["spent_equals_run_costs"], _problems(result, "spent_equals_run_costs", "lost")


def test_redis_outage_answers_503_with_retry_after(result: dict[str, Any]) -> None:
    http = result["phases"]["faults"]["http"]
    assert http["503_without_retry_after"] == 0, http
    # Twenty clients poll every 0.3 s through a 3 s outage: some request must have needed Redis.
    assert http["503_with_retry_after"] >= 1, http
    assert http["status"].get("500", 0) == 0, http


def test_an_interrupted_tool_call_shows_in_its_run_and_is_not_rerun(result: dict[str, Any]) -> None:
    run = result["mid_tool_call_run"]
    if run is None:
        pytest.skip("no record() call was in flight on the replica when it was killed (timing); the invariants "
                    "above still held")
    assert run["calls_recorded"] == 1, run
    assert run["record_steps"], f"the run does not show the record() call its replica died in: {run}"
    assert all("interrupt" in (s.get("error") or "interrupt") for s in run["record_steps"][:1]), run
