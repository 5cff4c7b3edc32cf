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
                        "servedModelName", "conditions", "gpusPerReplica", "podsPerReplica", "workload",
                        "metricsDiscovery", "adapters"}


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


def _ready_cond(state: str, reason: str, message: str = "") -> dict:
    return {"type": "Ready", "status": state, "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z"}


def test_agentapp_names_each_upstream_and_stays_ready_when_one_is_down(kit):
    """status.upstreams and UpstreamsReady carry the fleets' and the index's own readiness; the app's Ready (its
    runtime pods, which stay in their Service) is not held back by them."""
    app = kit.app("assistant", {"fleets": {"large": "large", "small": "small"}})
    large = kit.fleet("large", status={"conditions": [_ready_cond("True", "Ready", "1/1 replicas ready")]})
    small = kit.fleet("small", status={"conditions": [
        _ready_cond("False", "CrashLoopBackOff", "small-engine-0: back-off restarting failed container")]})
    ups = status.upstreams(app, kit.related(large, small))  # the index does not exist
    assert ups == [
        {"kind": "ModelFleet", "name": "large", "ready": "True", "reason": "Ready", "message": "1/1 replicas ready"},
        {"kind": "ModelFleet", "name": "small", "ready": "False", "reason": "CrashLoopBackOff",
         "message": "small-engine-0: back-off restarting failed container"},
        {"kind": "VectorIndex", "name": "docs", "ready": "False", "reason": "NotFound",
         "message": "VectorIndex docs does not exist or is invalid"}]
    out = status.agentapp(app, deployment=_workload(1, 1), config_hash="c", now=NOW, upstreams=ups)
    conds = _by_type(out["conditions"])
    assert conds["Ready"]["status"] == "True"
    assert conds["UpstreamsReady"]["status"] == "False" and conds["UpstreamsReady"]["reason"] == "UpstreamNotReady"
    assert conds["UpstreamsReady"]["message"] == (
        "ModelFleet/small: CrashLoopBackOff (small-engine-0: back-off restarting failed container); "
        "VectorIndex/docs: NotFound (VectorIndex docs does not exist or is invalid)")
    assert out["upstreams"] == ups
    fine = status.upstreams(app, kit.related(large, kit.fleet("small", status={"conditions": [
        _ready_cond("True", "Ready")]}), kit.index("docs", status={"conditions": [_ready_cond("True", "Ready")]})))
    conds = _by_type(status.agentapp(app, deployment=_workload(1, 1), config_hash="c", now=NOW,
                                     upstreams=fine)["conditions"])
    assert (conds["UpstreamsReady"]["status"], conds["UpstreamsReady"]["message"]) == ("True", "3 upstreams ready")
    # A fleet whose status has no Ready condition yet (just created): Unknown, named without a reason.
    new = status.upstreams(app, kit.related(large, kit.fleet("small"), kit.index("docs")))
    assert new[1] == {"kind": "ModelFleet", "name": "small", "ready": "Unknown"}
    conds = _by_type(status.agentapp(app, deployment=None, config_hash=None, now=NOW, upstreams=new)["conditions"])
    assert conds["UpstreamsReady"]["message"] == "ModelFleet/small: Ready Unknown; VectorIndex/docs: Ready Unknown"


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
# One writer per field: spent*, windowStart and windowEnd belong to the runtime (status.RUNTIME_BUDGET_FIELDS).
BUDGET_KEYS = {"observedGeneration", "remainingUsd", "remainingTokens", "conditions"}


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

    # One writer per field: spentUsd/spentTokens and the window belong to the runtime's ledger.
    assert set(out) == BUDGET_KEYS and not set(out) & set(status.RUNTIME_BUDGET_FIELDS)
    assert (out["remainingUsd"], out["remainingTokens"]) == (remaining_usd, remaining_tokens)
    assert (conds["Exhausted"]["status"], conds["Exhausted"]["reason"], conds["Exhausted"]["message"]) == (
        ("True", "Exhausted", exhausted_message) if exhausted else ("False", "WithinBudget", ""))
    assert (conds["Ready"]["status"], conds["Ready"]["reason"], conds["Ready"]["message"]) == (
        ("True", "Exhausted", exhausted_message) if exhausted else ("True", "Ready", "within budget"))
    # Argo CD shows an exhausted Budget Degraded (manifests/argocd/health.lua reads Degraded first).
    assert (conds["Degraded"]["status"], conds["Degraded"]["reason"], conds["Degraded"]["message"]) == (
        ("True", "BudgetExhausted", exhausted_message) if exhausted else ("False", "AsExpected", ""))
    assert conds["Progressing"]["status"] == "False"
    assert (conds["Priced"]["status"], conds["Priced"]["reason"]) == ("True", "AllFleetsPriced")
    assert [c["type"] for c in out["conditions"]] == ["Ready", "Progressing", "Degraded", "Exhausted", "Priced"]
    assert all(c["lastTransitionTime"] == NOW and c["observedGeneration"] == 5 for c in out["conditions"])
    assert out["observedGeneration"] == 5


def test_budget_spend_counts_only_in_the_window_the_runtime_published_it_for(kit):
    """The runtime publishes spent with its ledger's window; once that window has turned (and no runtime published
    the new one yet) the spend counts as nothing."""
    published = {"windowStart": TODAY, "windowEnd": "2025-03-15T00:00:00Z", "spentUsd": 2.0}
    first = status.budget(kit.budget("spend", {"limits": {"costUsd": 5}}, status=published), now=BUDGET_NOW)
    b = kit.budget("spend", {"limits": {"costUsd": 5}}, status={**published, **first})

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
    assert out["remainingUsd"] == 4.0
    assert {c["lastTransitionTime"] for c in out["conditions"]} == {NOW}


def test_budget_exhaustion_flips_only_what_changed(kit):
    spec = {"limits": {"costUsd": 5}}
    fine = status.budget(kit.budget("spend", spec, status={"windowStart": TODAY, "spentUsd": 1.0}), now=BUDGET_NOW)
    later = BUDGET_NOW + dt.timedelta(minutes=5)
    out = status.budget(kit.budget("spend", spec, status={**fine, "spentUsd": 5.0}), now=later)

    assert {c["type"]: (c["status"], c["reason"], c["lastTransitionTime"]) for c in out["conditions"]} == {
        "Ready": ("True", "Exhausted", NOW), "Progressing": ("False", "Stable", NOW),
        "Degraded": ("True", "BudgetExhausted", LATER), "Exhausted": ("True", "Exhausted", LATER),
        "Priced": ("True", "AllFleetsPriced", NOW)}


def test_raising_the_limit_keeps_the_spend_and_lifts_exhaustion(kit):
    """A Budget edit changes the limits, not the spend: the runtime's spent stays, remaining follows the spec."""
    spent = {"windowStart": TODAY, "spentUsd": 5.0, "spentTokens": 900}
    before = status.budget(kit.budget("spend", {"limits": {"costUsd": 5}}, status=spent, generation=1),
                           now=BUDGET_NOW)
    after = status.budget(kit.budget("spend", {"limits": {"costUsd": 6}}, status={**spent, **before}, generation=2),
                          now=BUDGET_NOW)

    assert (before["remainingUsd"], _by_type(before["conditions"])["Exhausted"]["status"]) == (0.0, "True")
    assert (after["remainingUsd"], _by_type(after["conditions"])["Exhausted"]["status"]) == (1.0, "False")
    assert _by_type(after["conditions"])["Degraded"]["status"] == "False"
    assert after["observedGeneration"] == 2 and not set(after) & set(status.RUNTIME_BUDGET_FIELDS)


def _priced_world(kit, prices, *, limits=None, apps=("assistant",)):
    b = kit.budget("spend", {"limits": limits or {"costUsd": 5}, "prices": prices}, generation=3)
    fleets = {"large": kit.fleet("large", {"model": {"servedModelName": "qwen-32b"}}),
              "small": kit.fleet("small", {"pricing": {"inputPerMTokensUsd": 0.1, "outputPerMTokensUsd": 0.2}})}
    users = [kit.app(a, {"fleets": {"large": "large", "small": "small"}, "budgetRef": {"name": "spend"}})
             for a in apps]
    other = kit.app("other", {"fleets": {"large": "elsewhere"}})  # does not use the Budget: its fleet is no excuse
    return b, [*users, other], {**fleets, "elsewhere": kit.fleet("elsewhere")}


ROW = {"inputPerMTokensUsd": 1, "outputPerMTokensUsd": 2}


@pytest.mark.parametrize(
    "prices, limits, apps, ready, priced, degraded, paths",
    [
        pytest.param([{"model": "large", **ROW}], None, ("assistant",), ("True", "Ready"),
                     ("True", "AllFleetsPriced"), ("False", "AsExpected"), [], id="row-by-fleet-name"),
        pytest.param([{"model": "qwen-32b", **ROW}], None, ("assistant",), ("True", "Ready"),
                     ("True", "AllFleetsPriced"), ("False", "AsExpected"), [], id="row-by-served-model-name"),
        pytest.param([{"model": "large", **ROW}, {"model": "lrage", **ROW}], None, ("assistant",),
                     ("False", "PriceMatchesNoFleet"), ("False", "PriceMatchesNoFleet"),
                     ("True", "PriceMatchesNoFleet"), ["spec.prices[1].model"], id="typo-is-an-error"),
        pytest.param([{"model": "elsewhere", **ROW}], None, ("assistant",), ("False", "PriceMatchesNoFleet"),
                     ("False", "PriceMatchesNoFleet"), ("True", "PriceMatchesNoFleet"),
                     ["spec.prices[0].model", "spec.prices"], id="fleet-of-an-app-not-using-it"),
        pytest.param([], None, ("assistant",), ("True", "Ready"), ("False", "FleetUnpriced"),
                     ("False", "AsExpected"), ["spec.prices"], id="unpriced-fleet-is-a-warning"),
        pytest.param([], {"tokens": 1000, "costUsd": None}, ("assistant",), ("True", "Ready"), ("True", "AllFleetsPriced"),
                     ("False", "AsExpected"), [], id="unpriced-fleet-without-money-limit"),
        pytest.param([{"model": "anything", **ROW}], None, (), ("True", "Ready"), ("Unknown", "NotReferenced"),
                     ("False", "AsExpected"), [], id="no-app-uses-it"),
    ],
)
def test_budget_price_rows_are_checked_against_the_fleets_using_it(kit, prices, limits, apps, ready, priced,
                                                                   degraded, paths):
    b, all_apps, fleets = _priced_world(kit, prices, limits=limits, apps=apps)
    problems = render.price_problems(b, apps=all_apps, fleets=fleets)
    out = status.budget(b, now=BUDGET_NOW, prices=problems, is_referenced=bool(apps))
    conds = _by_type(out["conditions"])

    assert [p.path for p in problems] == paths
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ready
    assert (conds["Priced"]["status"], conds["Priced"]["reason"]) == priced
    assert (conds["Degraded"]["status"], conds["Degraded"]["reason"]) == degraded
    for p in problems:
        assert p.path in conds["Priced"]["message"] or not p.is_error
    if ready[0] == "False":  # the message names the row and the fleets it could have named
        assert "spec.prices[" in conds["Ready"]["message"] and "large, small" in conds["Ready"]["message"]
        assert "qwen-32b" in conds["Ready"]["message"]


@pytest.mark.parametrize(
    "ledgers, degraded, names",
    [
        pytest.param({"a": "redis", "b": "redis"}, ("False", "AsExpected"), None, id="all-on-redis"),
        pytest.param({"a": "sqlite"}, ("False", "AsExpected"), None, id="one-app-on-sqlite"),
        pytest.param({"a": "sqlite", "b": "redis"}, ("True", "LedgerNotShared"), "AgentApps a, b use this Budget "
                     "but a keeps a SQLite ledger", id="one-of-two-on-sqlite"),
        pytest.param({"a": "sqlite", "b": "sqlite"}, ("True", "LedgerNotShared"), "but a, b keep a SQLite",
                     id="both-on-sqlite"),
    ],
)
def test_apps_that_cannot_share_a_budgets_counter_are_degraded(kit, ledgers, degraded, names):
    """Former bug: two apps on one Budget each counted its spend apart (SQLite is per pod's claim)."""
    redis = {"backend": "redis", "redisUrlSecretRef": {"name": "r", "key": "url"}}
    apps = [kit.app(n, {"budgetRef": {"name": "spend"}, "ledger": redis if backend == "redis" else {}})
            for n, backend in ledgers.items()]
    b = kit.budget("spend")
    why = status.unshared_ledgers(b, apps)
    cond = _by_type(status.budget(b, now=BUDGET_NOW, unshared=why)["conditions"])["Degraded"]

    assert (cond["status"], cond["reason"]) == degraded
    assert (why is None) is (names is None) and (names is None or names in cond["message"])


@pytest.mark.parametrize(("degrade_by", "queued", "degraded"), [
    pytest.param("low-priority", {"large": False, "small": True}, ("True", "LowBandNotQueued"), id="one-fleet-off"),
    pytest.param("both", {"large": True, "small": True}, ("False", "AsExpected"), id="all-queued"),
    pytest.param("small-model", {"large": False, "small": False}, ("False", "AsExpected"), id="no-band-asked"),
])
def test_a_low_band_that_no_router_queues_is_a_degraded_budget(kit, degrade_by, queued, degraded):
    """degradeBy low-priority waits in the fleet routers' fair queue: a fleet the apps call with fairQueue off
    would send the degraded calls at once, so the Budget says which fleet and what to set."""
    fleets = {n: kit.fleet(n, {"engine": {"maxNumSeqs": 8}, "router": {"fairQueue": on}}) for n, on in queued.items()}
    app = kit.app("a", {"fleets": {"large": "large", "small": "small"}, "budgetRef": {"name": "spend"}})
    b = kit.budget("spend", {"degradeAtPercent": 80, "degradeBy": degrade_by})
    why = status.unqueued_fleets(b, [app], fleets)
    cond = _by_type(status.budget(b, now=BUDGET_NOW, unqueued=why)["conditions"])["Degraded"]
    assert (cond["status"], cond["reason"]) == degraded
    if degraded[1] == "LowBandNotQueued":
        assert cond["message"].startswith("degradeBy low-priority: ModelFleet large has router.fairQueue off"), cond
        assert "set router.fairQueue: true" in cond["message"]
    assert status.unqueued_fleets(b, [kit.app("other", {"budgetRef": {"name": "another"}})], fleets) is None


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
