"""status: what each kind's status should say, from what its children report and the time given."""

from __future__ import annotations

import datetime as dt

import pytest

from agentfleet import render, status
from agentfleet.api import Condition
from agentfleet.errors import DependencyMissing, Problem, SpecError, UpstreamError
from agentfleet.names import RUNTIME_PORT, engine_name, fleet_url

NOW = "2025-03-14T10:00:00Z"
LATER = "2025-03-14T10:05:00Z"
UTC = dt.timezone.utc


def _by_type(conditions):
    return {c["type"]: c for c in conditions}


def _workload(replicas=None, ready=None):
    st = {}
    if replicas is not None:
        st["replicas"] = replicas
    if ready is not None:
        st["readyReplicas"] = ready
    return {"metadata": {"name": "x"}, "status": st}


# --- ModelFleet ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "desired, sts, router, ready, reason, message, progressing, replicas, ready_replicas",
    [
        pytest.param(2, None, None, "False", "Creating", "creating the vLLM StatefulSet", True, 0, 0,
                     id="no-statefulset"),
        pytest.param(2, _workload(), _workload(1, 1), "False", "ReplicasNotReady",
                     "0 of 2 desired replicas ready (loading the model?)", True, 0, 0, id="statefulset-without-status"),
        pytest.param(2, _workload(2, 0), _workload(1, 1), "False", "ReplicasNotReady",
                     "0 of 2 desired replicas ready (loading the model?)", True, 2, 0, id="zero-ready"),
        pytest.param(2, _workload(2, 2), _workload(1, 0), "False", "RouterNotReady",
                     "2 of 2 desired replicas ready, router not ready", True, 2, 2, id="router-not-ready"),
        pytest.param(2, _workload(2, 2), None, "False", "RouterNotReady",
                     "2 of 2 desired replicas ready, router not ready", True, 2, 2, id="router-missing"),
        pytest.param(3, _workload(3, 1), _workload(1, 1), "True", "Scaling", "1 replicas ready, 3 running, 3 desired",
                     True, 3, 1, id="partially-ready"),
        pytest.param(3, _workload(2, 2), _workload(1, 1), "True", "Scaling", "2 replicas ready, 2 running, 3 desired",
                     True, 2, 2, id="scaling-up-pods-not-created-yet"),
        pytest.param(2, _workload(2, 2), _workload(2, 2), "True", "Ready", "2 of 2 replicas ready", False, 2, 2,
                     id="all-ready"),
        pytest.param(0, _workload(0, 0), _workload(1, 0), "True", "ScaledToZero", "scaled to zero replicas", False,
                     0, 0, id="desired-zero"),
        # Former bug: more ready replicas than desired read "Ready 2/1" with Progressing False.
        pytest.param(1, _workload(2, 2), _workload(1, 1), "True", "Scaling", "2 replicas ready, 2 running, 1 desired",
                     True, 2, 2, id="scaling-down"),
        # Former bug: ready == desired while an extra pod still ran read "Ready".
        pytest.param(1, _workload(2, 1), _workload(1, 1), "True", "Scaling", "1 replicas ready, 2 running, 1 desired",
                     True, 2, 1, id="scaling-down-extra-pod-not-ready"),
    ],
)
def test_modelfleet_verdict(kit, desired, sts, router, ready, reason, message, progressing, replicas,
                            ready_replicas):
    fleet = kit.fleet("llm", {"replicas": desired, "model": {"servedModelName": "chat"}}, generation=4)
    out = status.modelfleet(fleet, statefulset=sts, router=router, now=NOW)
    conds = _by_type(out["conditions"])

    assert (conds["Ready"]["status"], conds["Ready"]["reason"], conds["Ready"]["message"]) == (ready, reason, message)
    assert (conds["Progressing"]["status"], conds["Progressing"]["reason"], conds["Progressing"]["message"]) == (
        ("True", reason, message) if progressing else ("False", "Stable", ""))
    assert (conds["Degraded"]["status"], conds["Degraded"]["reason"]) == ("False", "AsExpected")
    assert [c["type"] for c in out["conditions"]] == ["Ready", "Progressing", "Degraded"]
    assert all(c["lastTransitionTime"] == NOW and c["observedGeneration"] == 4 for c in out["conditions"])
    assert (out["replicas"], out["readyReplicas"]) == (replicas, ready_replicas)
    assert out["observedGeneration"] == 4
    assert out["endpoint"] == fleet_url("llm", kit.ns)
    assert out["servedModelName"] == "chat"
    assert set(out) == {"observedGeneration", "replicas", "readyReplicas", "selector", "endpoint",
                        "servedModelName", "conditions"}


def test_modelfleet_selector_selects_the_engine_pods(kit):
    fleet = kit.fleet("llm")
    sel = status.modelfleet(fleet, statefulset=None, router=None, now=NOW)["selector"]
    sts = kit.one(render.modelfleet(fleet, kit.defaults), "StatefulSet", engine_name("llm"))

    assert sel == ("app.kubernetes.io/name=vllm,app.kubernetes.io/instance=llm,"
                   "app.kubernetes.io/component=engine")
    assert dict(pair.split("=", 1) for pair in sel.split(",")) == sts["spec"]["selector"]["matchLabels"]


def test_modelfleet_conditions_keep_their_transition_time_across_reconciles(kit):
    first = status.modelfleet(kit.fleet("llm"), statefulset=_workload(1, 1), router=_workload(1, 1), now=NOW)
    again = status.modelfleet(kit.fleet("llm", status={"conditions": first["conditions"]}),
                              statefulset=_workload(1, 1), router=_workload(1, 1), now=LATER)
    flipped = status.modelfleet(kit.fleet("llm", status={"conditions": first["conditions"]}),
                                statefulset=_workload(1, 0), router=_workload(1, 1), now=LATER)

    assert again["conditions"] == first["conditions"]
    assert {c["type"]: c["lastTransitionTime"] for c in flipped["conditions"]} == {
        "Ready": LATER, "Progressing": LATER, "Degraded": NOW}


def test_modelfleet_scaling_moves_only_progressing(kit):
    ready = status.modelfleet(kit.fleet("llm", {"replicas": 1}), statefulset=_workload(1, 1),
                              router=_workload(1, 1), now=NOW)
    scaling = status.modelfleet(kit.fleet("llm", {"replicas": 3}, status={"conditions": ready["conditions"]}),
                                statefulset=_workload(3, 1), router=_workload(1, 1), now=LATER)
    conds = _by_type(scaling["conditions"])

    assert {t: (c["status"], c["reason"], c["lastTransitionTime"]) for t, c in conds.items()} == {
        "Ready": ("True", "Scaling", NOW), "Progressing": ("True", "Scaling", LATER),
        "Degraded": ("False", "AsExpected", NOW)}


# --- VectorIndex -----------------------------------------------------------------------------------------------

def _job(*conditions, succeeded=None):
    st = {"conditions": [dict(c) for c in conditions]}
    if succeeded is not None:
        st["succeeded"] = succeeded
    return {"metadata": {"name": "docs-ingest-0123456789"}, "status": st}


COMPLETE = {"type": "Complete", "status": "True", "lastTransitionTime": "2025-03-14T09:30:00Z"}
FAILED = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
          "message": "Job has reached the specified backoff limit"}


@pytest.mark.parametrize(
    "job, phase, ready, reason, message, degraded, last_ingest",
    [
        pytest.param(None, "Pending", "False", "Pending", "creating the ingestion Job", None, None, id="no-job"),
        pytest.param(_job(succeeded=1), "Ingesting", "False", "Ingesting", "1/2 ingestion workers finished", None,
                     None, id="running"),
        pytest.param(_job({"type": "Complete", "status": "False"}), "Ingesting", "False", "Ingesting",
                     "0/2 ingestion workers finished", None, None, id="complete-false-is-running"),
        pytest.param(_job(COMPLETE, succeeded=2), "Ready", "True", "Ready",
                     "collection docs ingested by docs-ingest-0123456789", None, "2025-03-14T09:30:00Z",
                     id="complete"),
        pytest.param(_job({"type": "Complete", "status": "True"}), "Ready", "True", "Ready",
                     "collection docs ingested by docs-ingest-0123456789", None, NOW,
                     id="complete-without-time-uses-now"),
        pytest.param(_job(FAILED), "Failed", "False", "IngestionFailed",
                     "ingestion Job docs-ingest-0123456789 failed: BackoffLimitExceeded Job has reached the "
                     "specified backoff limit", "IngestionFailed", None, id="failed"),
    ],
)
def test_vectorindex_phase(kit, job, phase, ready, reason, message, degraded, last_ingest):
    index = kit.index("docs", generation=3)
    out = status.vectorindex(index, job=job, uri="/data/index/docs.db", now=NOW)
    conds = _by_type(out["conditions"])

    assert out["phase"] == phase
    assert (conds["Ready"]["status"], conds["Ready"]["reason"], conds["Ready"]["message"]) == (ready, reason, message)
    assert (conds["Degraded"]["status"], conds["Degraded"]["reason"]) == (
        ("True", degraded) if degraded else ("False", "AsExpected"))
    assert conds["Progressing"]["status"] == ("True" if ready == "False" and not degraded else "False")
    assert out.get("lastIngestTime") == last_ingest
    assert out.get("job") == (job["metadata"]["name"] if job else None)
    assert (out["observedGeneration"], out["collection"], out["uri"]) == (3, "docs", "/data/index/docs.db")


@pytest.mark.parametrize(
    "summary, expected",
    [
        pytest.param(None, {}, id="none"),
        pytest.param({}, {}, id="empty"),
        pytest.param({"documents": 10, "chunks": 42, "skippedDocuments": 1},
                     {"documents": 10, "chunks": 42, "skippedDocuments": 1}, id="all"),
        pytest.param({"documents": 3, "bogus": 7, "phase": 1}, {"documents": 3}, id="unknown-keys-dropped"),
    ],
)
def test_vectorindex_summary_is_copied(kit, summary, expected):
    out = status.vectorindex(kit.index("docs"), job=_job(COMPLETE), uri="u", now=NOW, summary=summary)

    assert {k: out[k] for k in ("documents", "chunks", "skippedDocuments") if k in out} == expected
    assert out["phase"] == "Ready"


# --- AgentApp --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "desired, deployment, ready, reason, message, ready_replicas",
    [
        pytest.param(1, None, "False", "Creating", "creating the runtime Deployment", 0, id="no-deployment"),
        pytest.param(1, _workload(1, 0), "False", "ReplicasNotReady", "0/1 runtime replicas ready", 0,
                     id="zero-ready"),
        pytest.param(1, _workload(1, 1), "True", "Ready", "1/1 runtime replicas ready", 1, id="ready"),
        pytest.param(0, _workload(0, 0), "True", "ScaledToZero", "scaled to zero replicas", 0, id="desired-zero"),
    ],
)
def test_agentapp_verdict(kit, desired, deployment, ready, reason, message, ready_replicas):
    app = kit.app("assistant", {"replicas": desired, "fleets": {"small": "small"}, "budgetRef": {"name": "spend"}},
                  generation=2)
    out = status.agentapp(app, deployment=deployment, config_hash="abc123", now=NOW)
    conds = _by_type(out["conditions"])

    assert (conds["Ready"]["status"], conds["Ready"]["reason"], conds["Ready"]["message"]) == (ready, reason, message)
    assert conds["Progressing"]["status"] == ("True" if ready == "False" else "False")
    assert out["readyReplicas"] == ready_replicas
    assert out["endpoint"] == f"http://assistant.{kit.ns}.svc:{RUNTIME_PORT}/v1"
    assert RUNTIME_PORT == 8080
    assert out["replicas"] == (deployment or {}).get("status", {}).get("replicas", 0)
    assert out["fleets"] == ["large", "small"]
    assert (out["index"], out["budget"], out["configHash"], out["observedGeneration"]) == (
        "docs", "spend", "abc123", 2)


# --- Budget ----------------------------------------------------------------------------------------------------

def _t(text):
    return dt.datetime.fromisoformat(text)


@pytest.mark.parametrize(
    "window, now, start, end",
    [
        pytest.param("hour", "2025-03-14T10:37:12.500+00:00", "2025-03-14T10:00:00+00:00",
                     "2025-03-14T11:00:00+00:00", id="hour"),
        pytest.param("hour", "2025-03-14T23:59:59+00:00", "2025-03-14T23:00:00+00:00",
                     "2025-03-15T00:00:00+00:00", id="hour-crosses-midnight"),
        pytest.param("day", "2025-03-14T10:37:12+00:00", "2025-03-14T00:00:00+00:00", "2025-03-15T00:00:00+00:00",
                     id="day"),
        pytest.param("day", "2025-03-01T01:30:00+02:00", "2025-02-28T00:00:00+00:00", "2025-03-01T00:00:00+00:00",
                     id="day-is-utc-aligned"),
        pytest.param("week", "2025-03-14T10:00:00+00:00", "2025-03-10T00:00:00+00:00",
                     "2025-03-17T00:00:00+00:00", id="week-friday"),
        pytest.param("week", "2025-03-10T00:00:00+00:00", "2025-03-10T00:00:00+00:00",
                     "2025-03-17T00:00:00+00:00", id="week-monday-midnight"),
        pytest.param("week", "2025-03-16T23:59:59+00:00", "2025-03-10T00:00:00+00:00",
                     "2025-03-17T00:00:00+00:00", id="week-sunday-night"),
        pytest.param("week", "2024-12-31T12:00:00+00:00", "2024-12-30T00:00:00+00:00",
                     "2025-01-06T00:00:00+00:00", id="week-across-new-year"),
        pytest.param("month", "2025-03-14T10:00:00+00:00", "2025-03-01T00:00:00+00:00",
                     "2025-04-01T00:00:00+00:00", id="month"),
        pytest.param("month", "2024-02-29T23:00:00+00:00", "2024-02-01T00:00:00+00:00",
                     "2024-03-01T00:00:00+00:00", id="month-leap-february"),
        pytest.param("month", "2025-12-31T23:59:59+00:00", "2025-12-01T00:00:00+00:00",
                     "2026-01-01T00:00:00+00:00", id="month-december-rollover"),
        pytest.param("month", "2026-01-01T00:30:00+01:00", "2025-12-01T00:00:00+00:00",
                     "2026-01-01T00:00:00+00:00", id="month-utc-still-december"),
        pytest.param("total", "2025-03-14T10:00:00+00:00", None, None, id="total"),
    ],
)
def test_window_bounds(window, now, start, end):
    got_start, got_end = status.window_bounds(window, _t(now))

    assert got_start == (_t(start) if start else None)
    assert got_end == (_t(end) if end else None)
    assert got_start is None or got_start.utcoffset() == dt.timedelta(0)
    assert got_start is None or got_start <= _t(now) < got_end


TODAY = "2025-03-14T00:00:00Z"
YESTERDAY = "2025-03-13T00:00:00Z"
BUDGET_NOW = _t("2025-03-14T10:00:00+00:00")
BUDGET_KEYS = {"observedGeneration", "windowStart", "windowEnd", "remainingUsd", "remainingTokens", "conditions"}


@pytest.mark.parametrize(
    "spec, prior, remaining_usd, remaining_tokens, exhausted_message",
    [
        pytest.param({"limits": {"costUsd": 5, "tokens": 1000}},
                     {"windowStart": TODAY, "spentUsd": 1.25, "spentTokens": 400},
                     3.75, 600, None, id="within-budget"),
        pytest.param({"limits": {"costUsd": 5}, "onExhausted": "reject"},
                     {"windowStart": TODAY, "spentUsd": 5.0},
                     0.0, None, "money exhausted for this day; rejecting requests", id="money-reject"),
        pytest.param({"limits": {"costUsd": None, "tokens": 1000}, "onExhausted": "degrade"},
                     {"windowStart": TODAY, "spentTokens": 1200},
                     None, 0, "tokens exhausted for this day; degrading to the small model",
                     id="tokens-degrade-clamped"),
        pytest.param({"limits": {"costUsd": 5, "tokens": 1000}, "onExhausted": "degrade"},
                     {"windowStart": TODAY, "spentUsd": 7.5, "spentTokens": 10},
                     0.0, 990, "money exhausted for this day; degrading to the small model",
                     id="money-overspent-clamped"),
        pytest.param({"limits": {"costUsd": 5, "tokens": 1000}, "onExhausted": "reject"},
                     {"windowStart": TODAY, "spentUsd": 1.0, "spentTokens": 1000},
                     4.0, 0, "tokens exhausted for this day; rejecting requests", id="tokens-exhausted-money-left"),
        pytest.param({"limits": {"costUsd": 0.3}},
                     {"windowStart": TODAY, "spentUsd": 0.1 + 0.2},
                     0.0, None, "money exhausted for this day; rejecting requests", id="float-dust-exhausts"),
        pytest.param({"limits": {"costUsd": 5, "tokens": 1000}},
                     {"windowStart": YESTERDAY, "spentUsd": 5.0, "spentTokens": 1000},
                     5.0, 1000, None, id="new-window-resets-spend"),
        pytest.param({"limits": {"costUsd": 5, "tokens": 1000}},
                     {"spentUsd": 2.0, "spentTokens": 100},
                     3.0, 900, None, id="no-window-start-is-current-window"),
        pytest.param({"limits": {"costUsd": 5}}, None, 5.0, None, None, id="no-status-yet"),
        pytest.param({"limits": {"costUsd": 5}, "window": "total"},
                     {"spentUsd": 2.0}, 3.0, None, None, id="total-never-resets"),
        pytest.param({"limits": {"costUsd": None, "tokens": 100}, "window": "hour"},
                     {"windowStart": "2025-03-14T09:00:00Z", "spentTokens": 100},
                     None, 100, None, id="hour-window-rolled"),
        pytest.param({"limits": {"costUsd": None, "tokens": 100}, "window": "hour"},
                     {"windowStart": "2025-03-14T10:00:00Z", "spentTokens": 100},
                     None, 0, "tokens exhausted for this hour; rejecting requests", id="hour-window-current"),
        pytest.param({"limits": {"costUsd": 0}}, {}, 0.0, None, "money exhausted for this day; rejecting requests",
                     id="zero-limit-exhausted-at-once"),
    ],
)
def test_budget_remaining(kit, spec, prior, remaining_usd, remaining_tokens, exhausted_message):
    b = kit.budget("spend", spec, status=prior, generation=5)
    out = status.budget(b, now=BUDGET_NOW)
    conds = _by_type(out["conditions"])
    exhausted = exhausted_message is not None

    # One writer per field: spentUsd/spentTokens belong to the runtime's ledger.
    assert set(out) == BUDGET_KEYS
    assert (out["remainingUsd"], out["remainingTokens"]) == (remaining_usd, remaining_tokens)
    assert (conds["Exhausted"]["status"], conds["Exhausted"]["reason"], conds["Exhausted"]["message"]) == (
        ("True", "Exhausted", exhausted_message) if exhausted else ("False", "WithinBudget", ""))
    assert (conds["Ready"]["status"], conds["Ready"]["reason"], conds["Ready"]["message"]) == (
        ("True", "Exhausted", exhausted_message) if exhausted else ("True", "Ready", "within budget"))
    assert (conds["Progressing"]["status"], conds["Degraded"]["status"]) == ("False", "False")
    assert [c["type"] for c in out["conditions"]] == ["Ready", "Progressing", "Degraded", "Exhausted"]
    assert all(c["lastTransitionTime"] == NOW and c["observedGeneration"] == 5 for c in out["conditions"])
    assert out["observedGeneration"] == 5
    start, end = status.window_bounds(b.spec.window, BUDGET_NOW)
    assert out["windowStart"] == (start.strftime("%Y-%m-%dT%H:%M:%SZ") if start else None)
    assert out["windowEnd"] == (end.strftime("%Y-%m-%dT%H:%M:%SZ") if end else None)


def test_budget_window_written_is_the_one_read_back(kit):
    """The window a status write records makes the next reconcile in that window keep the ledger's spend."""
    first = status.budget(kit.budget("spend", {"limits": {"costUsd": 5}}), now=BUDGET_NOW)
    b = kit.budget("spend", {"limits": {"costUsd": 5}}, status={**first, "spentUsd": 2.0})

    assert status.budget(b, now=BUDGET_NOW + dt.timedelta(hours=1))["remainingUsd"] == 3.0
    assert status.budget(b, now=BUDGET_NOW + dt.timedelta(days=1))["remainingUsd"] == 5.0




@pytest.mark.parametrize(
    "now",
    [
        pytest.param(dt.datetime(2025, 3, 14, 10, 0), id="naive-is-utc"),
        pytest.param(dt.datetime(2025, 3, 14, 10, 0, tzinfo=UTC), id="utc"),
        pytest.param(dt.datetime(2025, 3, 14, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
                     id="plus-two-hours"),
        pytest.param(dt.datetime(2025, 3, 14, 5, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
                     id="minus-five-hours"),
    ],
)
def test_budget_reads_any_clock_as_the_same_instant(kit, now):
    b = kit.budget("spend", {"limits": {"costUsd": 5}, "window": "hour"},
                   status={"windowStart": "2025-03-14T10:00:00Z", "spentUsd": 1.0})
    out = status.budget(b, now=now)

    assert out == status.budget(b, now=BUDGET_NOW)
    assert (out["windowStart"], out["windowEnd"], out["remainingUsd"]) == (
        "2025-03-14T10:00:00Z", "2025-03-14T11:00:00Z", 4.0)
    assert {c["lastTransitionTime"] for c in out["conditions"]} == {NOW}


def test_budget_exhaustion_flips_only_what_changed(kit):
    spec = {"limits": {"costUsd": 5}}
    fine = status.budget(kit.budget("spend", spec, status={"windowStart": TODAY, "spentUsd": 1.0}), now=BUDGET_NOW)
    later = BUDGET_NOW + dt.timedelta(minutes=5)
    out = status.budget(kit.budget("spend", spec, status={**fine, "spentUsd": 5.0}), now=later)

    assert {c["type"]: (c["status"], c["reason"], c["lastTransitionTime"]) for c in out["conditions"]} == {
        "Ready": ("True", "Exhausted", NOW), "Progressing": ("False", "Stable", NOW),
        "Degraded": ("False", "AsExpected", NOW), "Exhausted": ("True", "Exhausted", LATER)}


# --- failures --------------------------------------------------------------------------------------------------

SPEC_ERR = SpecError("ModelFleet team-a/llm",
                     [Problem("spec.autoscaling.minReplicas", "minReplicas must be less than or equal to maxReplicas")])
DEP_ERR = DependencyMissing("AgentApp team-a/assistant", ["ModelFleet/large", "Budget/spend"])


@pytest.mark.parametrize(
    "err, reason, message, progressing, degraded",
    [
        pytest.param(SPEC_ERR, "InvalidSpec",
                     "spec.autoscaling.minReplicas: minReplicas must be less than or equal to maxReplicas",
                     ("False", "Stable"), ("True", "InvalidSpec"), id="spec-error"),
        pytest.param(DEP_ERR, "DependencyMissing", "waiting for ModelFleet/large, Budget/spend",
                     ("True", "DependencyMissing"), ("False", "AsExpected"), id="dependency-missing"),
        pytest.param(UpstreamError("prometheus unreachable"), "UpstreamError", "prometheus unreachable",
                     ("True", "UpstreamError"), ("False", "AsExpected"), id="upstream"),
    ],
)
def test_failed(err, reason, message, progressing, degraded):
    out = status.failed([], err, generation=7, now=NOW)
    conds = _by_type(out["conditions"])

    assert out["observedGeneration"] == 7
    assert (conds["Ready"]["status"], conds["Ready"]["reason"], conds["Ready"]["message"]) == ("False", reason,
                                                                                               message)
    assert (conds["Progressing"]["status"], conds["Progressing"]["reason"]) == progressing
    assert (conds["Degraded"]["status"], conds["Degraded"]["reason"]) == degraded
    assert conds["Degraded"]["message"] == (message if degraded[0] == "True" else "")
    assert all(c["observedGeneration"] == 7 and c["lastTransitionTime"] == NOW for c in out["conditions"])


def test_fixed_spec_clears_degraded_with_a_new_transition_time():
    broken = [Condition.model_validate(c) for c in status.failed([], SPEC_ERR, generation=1, now=NOW)["conditions"]]
    waiting = _by_type(status.failed(broken, DEP_ERR, generation=2, now=LATER)["conditions"])

    assert (waiting["Degraded"]["status"], waiting["Degraded"]["lastTransitionTime"]) == ("False", LATER)
    assert (waiting["Progressing"]["status"], waiting["Progressing"]["lastTransitionTime"]) == ("True", LATER)
    assert (waiting["Ready"]["status"], waiting["Ready"]["lastTransitionTime"]) == ("False", NOW)
