"""status.evaluation: the evaluation pods' summaries (their termination messages) and the newest Job become
status.evaluation; the gate names each failing metric with its value and threshold; a failing gate is Degraded
EvaluationRegressed next to the app's own conditions, and a run that died without a summary is not."""

from __future__ import annotations

import json

import pytest

from agentfleet import status
from agentfleet.api import EvaluationGate
from agentfleet.names import SPEC_HASH_LABEL
from agentfleet.render.evaluation import EVAL_CONTAINER, EVALUATION_LABEL

NOW = "2025-03-14T10:00:00Z"
LATER = "2025-03-14T10:05:00Z"
HASH = "abcdef0123"
EVALUATION = {"suiteRef": {"name": "eval-suite", "key": "suite.yaml"},
              "gate": {"minSuccessRate": 0.8, "minFaithfulness": 0.7, "maxLeaks": 0}}
GOOD = {"successRate": 0.9, "faithfulness": 0.85, "ndcgAt10": 0.6, "costPerSolvedTaskUsd": 0.012, "leaks": 0,
        "cases": 25, "time": "2025-03-14T09:58:00Z"}
BAD = {**GOOD, "successRate": 0.62, "leaks": 1, "time": "2025-03-14T09:59:00Z"}
READY_DEPLOYMENT = {"metadata": {"name": "assistant"}, "status": {"replicas": 1, "readyReplicas": 1}}


def _app(kit, evaluation=EVALUATION, *, prior=None, generation=3):
    spec = {"evaluation": evaluation} if evaluation is not None else {}
    return kit.app("assistant", spec, generation=generation, status=prior)


def _job(name, *, created="2025-03-14T09:50:00Z", done=None, reason=None, message=None, deleting=False):
    meta = {"name": name, "creationTimestamp": created, "labels": {EVALUATION_LABEL: "assistant"}}
    if deleting:
        meta["deletionTimestamp"] = NOW
    conds = []
    if done:
        conds.append({"type": done, "status": "True", **({"reason": reason} if reason else {}),
                      **({"message": message} if message else {})})
    return {"metadata": meta, "status": {"conditions": conds} if conds else {}}


def _pod(job, *, summary=None, message=None, exit_code=0, waiting=None, spec_hash=HASH, running=False,
         finished="2025-03-14T09:58:30Z", container=EVAL_CONTAINER):
    if waiting:
        state = {"waiting": {"reason": waiting, "message": "Back-off pulling image \"registry.test/x\""}}
    elif running:
        state = {"running": {"startedAt": "2025-03-14T09:51:00Z"}}
    else:
        text = json.dumps(summary, separators=(",", ":")) if summary is not None else (message or "")
        state = {"terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                                "message": text, "finishedAt": finished}}
    return {"metadata": {"name": f"{job}-x1", "creationTimestamp": "2025-03-14T09:50:01Z",
                         "labels": {EVALUATION_LABEL: "assistant", "job-name": job, SPEC_HASH_LABEL: spec_hash}},
            "status": {"containerStatuses": [{"name": container, "state": state}]}}


def _by_type(conditions):
    return {c["type"]: c for c in conditions}


# --- reading a pod's summary -----------------------------------------------------------------------------------

SUMMARIES = [
    ("complete-summary", _pod("j", summary=GOOD),
     ("j", HASH, "2025-03-14T09:58:00Z", {k: GOOD[k] for k in status.SUMMARY_METRICS})),
    ("leaks-exit-1-still-a-summary", _pod("j", summary=BAD, exit_code=1),
     ("j", HASH, "2025-03-14T09:59:00Z", {k: BAD[k] for k in status.SUMMARY_METRICS})),
    ("nulls-are-not-measured", _pod("j", summary={"successRate": None, "faithfulness": None, "ndcgAt10": None,
                                                  "costPerSolvedTaskUsd": None, "leaks": 0, "cases": 3,
                                                  "time": "2025-03-14T11:58:00+02:00"}),
     ("j", HASH, "2025-03-14T09:58:00Z", {"successRate": None, "faithfulness": None, "ndcgAt10": None,
                                          "costPerSolvedTaskUsd": None, "leaks": 0, "cases": 3})),
    ("no-time-uses-finished-at", _pod("j", summary={"leaks": 0, "cases": 1, "successRate": 1}),
     ("j", HASH, "2025-03-14T09:58:30Z", {"successRate": 1.0, "faithfulness": None, "ndcgAt10": None,
                                          "costPerSolvedTaskUsd": None, "leaks": 0, "cases": 1})),
    ("log-tail-is-no-summary", _pod("j", message="Traceback...\nValueError: boom", exit_code=1), None),
    ("json-without-leaks", _pod("j", summary={"cases": 3}), None),
    ("boolean-is-no-count", _pod("j", summary={"cases": 3, "leaks": False}), None),
    ("still-running", _pod("j", running=True), None),
    ("image-pull", _pod("j", waiting="ImagePullBackOff"), None),
    ("another-container", _pod("j", summary=GOOD, container="istio-proxy"), None),
]


@pytest.mark.parametrize(("pod", "expected"), [r[1:] for r in SUMMARIES], ids=[r[0] for r in SUMMARIES])
def test_eval_summary(pod, expected):
    got = status.eval_summary(pod)
    assert (None if got is None else tuple(got)) == expected


# --- the gate --------------------------------------------------------------------------------------------------

GATES = [
    ("all-pass", {"minSuccessRate": 0.8, "maxLeaks": 0}, GOOD, []),
    ("success-and-leaks", {"minSuccessRate": 0.8, "maxLeaks": 0}, BAD, ["successRate 0.62 < 0.80", "leaks 1 > 0"]),
    ("only-leaks-by-default", {}, BAD, ["leaks 1 > 0"]),
    ("leaks-allowed", {"maxLeaks": 2}, BAD, []),
    ("every-metric", {"minSuccessRate": 0.95, "minFaithfulness": 0.9, "minNdcgAt10": 0.7,
                      "maxCostPerSolvedTaskUsd": 0.01, "maxLeaks": 0}, BAD,
     ["successRate 0.62 < 0.95", "faithfulness 0.85 < 0.90", "ndcgAt10 0.60 < 0.70",
      "costPerSolvedTaskUsd 0.012 > 0.010", "leaks 1 > 0"]),
    ("close-values-get-more-digits", {"maxCostPerSolvedTaskUsd": 0.05}, {**GOOD, "costPerSolvedTaskUsd": 0.0512},
     ["costPerSolvedTaskUsd 0.051 > 0.050"]),
    ("needs-four-digits", {"maxCostPerSolvedTaskUsd": 0.0501}, {**GOOD, "costPerSolvedTaskUsd": 0.0502},
     ["costPerSolvedTaskUsd 0.0502 > 0.0501"]),
    ("at-the-threshold-passes", {"minSuccessRate": 0.9, "maxCostPerSolvedTaskUsd": 0.012}, GOOD, []),
    ("gated-but-not-measured", {"minNdcgAt10": 0.5, "maxCostPerSolvedTaskUsd": 0.1},
     {**GOOD, "ndcgAt10": None, "costPerSolvedTaskUsd": None},
     ["ndcgAt10 not measured (minimum 0.50)", "costPerSolvedTaskUsd not measured (maximum 0.10)"]),
    ("unround-threshold-as-written", {"maxCostPerSolvedTaskUsd": 0.025}, {**GOOD, "costPerSolvedTaskUsd": None},
     ["costPerSolvedTaskUsd not measured (maximum 0.025)"]),
    ("not-measured-and-not-gated", {}, {**GOOD, "ndcgAt10": None, "faithfulness": None}, []),
]


@pytest.mark.parametrize(("gate", "values", "failures"), [r[1:] for r in GATES], ids=[r[0] for r in GATES])
def test_gate_failures(gate, values, failures):
    assert status.gate_failures(EvaluationGate.model_validate(gate), values) == failures


# --- status.evaluation -----------------------------------------------------------------------------------------

def _metrics(values):
    return {k: values.get(k) for k in status.SUMMARY_METRICS}


# (id, jobs, pods, spec_hash, waiting, phase, job, gate, message contains)
PHASES = [
    ("suite-missing", [], [], None, "waiting for ConfigMap eval-suite", "Waiting", None, None,
     "waiting for ConfigMap eval-suite"),
    ("job-not-created-yet", [], [], HASH, None, "Waiting", None, None, "creating the evaluation Job"),
    ("running", [_job("a-eval-1")], [_pod("a-eval-1", running=True)], HASH, None, "Running", "a-eval-1", None,
     "evaluation Job a-eval-1 is running"),
    ("passed", [_job("a-eval-1", done="Complete")], [_pod("a-eval-1", summary=GOOD)], HASH, None, "Succeeded",
     "a-eval-1", "Passed", "evaluation Job a-eval-1 finished: 25 cases"),
    ("leaks-exit-1-fails-the-gate", [_job("a-eval-1", done="Failed", reason="BackoffLimitExceeded")],
     [_pod("a-eval-1", summary=BAD, exit_code=1)], HASH, None, "Succeeded", "a-eval-1", "Failed",
     "finished: 25 cases"),
    ("image-pull-no-summary", [_job("a-eval-1", done="Failed", reason="DeadlineExceeded",
                                    message="Job was active longer than specified deadline")],
     [_pod("a-eval-1", waiting="ImagePullBackOff")], HASH, None, "Failed", "a-eval-1", None,
     "evaluation Job a-eval-1 ended without a summary (DeadlineExceeded: Job was active longer than specified "
     "deadline); container ImagePullBackOff: Back-off pulling image \"registry.test/x\"; see kubectl logs "
     "job/a-eval-1"),
    ("crash-shows-the-log-tail", [_job("a-eval-1", done="Failed", reason="BackoffLimitExceeded")],
     [_pod("a-eval-1", message="Traceback...\nValueError: suite case 3: principal 'zed' not in the key store",
           exit_code=1)], HASH, None, "Failed", "a-eval-1", None,
     "container Error, exit code 1: ValueError: suite case 3: principal 'zed' not in the key store"),
    ("completed-without-summary", [_job("a-eval-1", done="Complete")], [_pod("a-eval-1")], HASH, None, "Failed",
     "a-eval-1", None, "ended without a summary (it completed without writing a summary)"),
    ("newest-job-wins", [_job("a-eval-1", done="Complete"), _job("a-eval-cron-2", created="2025-03-14T09:55:00Z")],
     [_pod("a-eval-1", summary=GOOD), _pod("a-eval-cron-2", running=True)], HASH, None, "Running", "a-eval-cron-2",
     "Passed", "a-eval-cron-2 is running"),
    ("job-being-deleted-is-ignored", [_job("a-eval-old", created="2025-03-14T09:55:00Z", deleting=True),
                                      _job("a-eval-1", done="Complete")],
     [_pod("a-eval-1", summary=GOOD)], HASH, None, "Succeeded", "a-eval-1", "Passed", "finished"),
    ("summary-before-the-job-is-marked-done", [_job("a-eval-1")], [_pod("a-eval-1", summary=GOOD)], HASH, None,
     "Succeeded", "a-eval-1", "Passed", "finished: 25 cases"),
    ("pod-of-no-known-job-is-ignored", [_job("a-eval-1")], [_pod("forged", summary=BAD)], HASH, None,
     "Running", "a-eval-1", None, "running"),
]


@pytest.mark.parametrize(("jobs", "pods", "spec_hash", "waiting", "phase", "job", "gate", "message"),
                         [r[1:] for r in PHASES], ids=[r[0] for r in PHASES])
def test_evaluation_phase(kit, jobs, pods, spec_hash, waiting, phase, job, gate, message):
    ev = status.evaluation(_app(kit), jobs=jobs, pods=pods, spec_hash=spec_hash, waiting=waiting)
    assert set(ev) == {"phase", "job", "gate", "message", *status.SUMMARY_METRICS, "time", "observedGeneration"}
    assert (ev["phase"], ev["job"], ev["gate"]) == (phase, job, gate)
    assert message in ev["message"]


def test_metrics_come_from_the_newest_summary(kit):
    jobs = [_job("a-eval-1", done="Complete"), _job("a-eval-2", done="Failed", created="2025-03-14T09:56:00Z")]
    pods = [_pod("a-eval-1", summary=GOOD), _pod("a-eval-2", summary=BAD, exit_code=1)]
    ev = status.evaluation(_app(kit), jobs=jobs, pods=pods, spec_hash=HASH)
    assert {k: ev[k] for k in status.SUMMARY_METRICS} == _metrics(BAD)
    assert ev["time"] == BAD["time"]
    assert ev["gate"] == "Failed"


def test_no_app_evaluation_no_status_evaluation(kit):
    assert status.evaluation(_app(kit, None), jobs=[_job("x")], pods=[], spec_hash=None) is None


OBSERVED = [
    # (id, pod's hash, prior status.evaluation, observedGeneration)
    ("ran-the-current-spec", HASH, None, 3),
    ("ran-an-older-spec", "0000000000", None, None),
    ("same-run-as-stored", "0000000000", {**_metrics(GOOD), "time": GOOD["time"], "observedGeneration": 2}, 2),
]


@pytest.mark.parametrize(("pod_hash", "prior", "observed"), [r[1:] for r in OBSERVED], ids=[r[0] for r in OBSERVED])
def test_observed_generation_is_the_spec_the_run_evaluated(kit, pod_hash, prior, observed):
    app = _app(kit, prior={"evaluation": prior} if prior else None)
    ev = status.evaluation(app, jobs=[_job("a-eval-1", done="Complete")],
                           pods=[_pod("a-eval-1", summary=GOOD, spec_hash=pod_hash)], spec_hash=HASH)
    assert ev["observedGeneration"] == observed


def test_the_stored_result_survives_its_pods(kit):
    """A pruned Job takes its pods along; status is the memory (and a gate change still applies to it)."""
    prior = {"evaluation": {**_metrics(BAD), "time": BAD["time"], "observedGeneration": 2, "job": "a-eval-1",
                            "phase": "Succeeded", "gate": "Failed"}}
    ev = status.evaluation(_app(kit, prior=prior), jobs=[_job("a-eval-2")], pods=[_pod("a-eval-2", running=True)],
                           spec_hash=HASH)
    assert {k: ev[k] for k in status.SUMMARY_METRICS} == _metrics(BAD)
    assert (ev["time"], ev["observedGeneration"], ev["phase"], ev["job"]) == (BAD["time"], 2, "Running", "a-eval-2")
    assert ev["gate"] == "Failed"
    relaxed = {**EVALUATION, "gate": {"minSuccessRate": 0.5, "maxLeaks": 1}}
    ev = status.evaluation(_app(kit, relaxed, prior=prior), jobs=[], pods=[], spec_hash=HASH)
    assert ev["gate"] == "Passed"


def test_an_older_summary_does_not_replace_a_newer_stored_one(kit):
    prior = {"evaluation": {**_metrics(BAD), "time": "2025-03-14T12:00:00Z"}}
    ev = status.evaluation(_app(kit, prior=prior), jobs=[_job("a-eval-1", done="Complete")],
                           pods=[_pod("a-eval-1", summary=GOOD)], spec_hash=HASH)
    assert ev["successRate"] == BAD["successRate"] and ev["time"] == "2025-03-14T12:00:00Z"


# --- conditions ------------------------------------------------------------------------------------------------

def _agentapp(kit, app, ev, now=NOW):
    return status.agentapp(app, deployment=READY_DEPLOYMENT, config_hash="c", now=now, evaluation=ev)


def test_a_failing_gate_is_degraded_evaluation_regressed_and_the_app_stays_ready(kit):
    app = _app(kit)
    ev = status.evaluation(app, jobs=[_job("a-eval-1", done="Failed")], pods=[_pod("a-eval-1", summary=BAD)],
                           spec_hash=HASH)
    out = _agentapp(kit, app, ev)
    conds = _by_type(out["conditions"])
    assert conds["Ready"]["status"] == "True" and conds["Ready"]["reason"] == "Ready"
    assert conds["Progressing"]["status"] == "False"
    degraded = conds["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "EvaluationRegressed")
    assert degraded["message"] == f"successRate 0.62 < 0.80; leaks 1 > 0 (evaluation finished {BAD['time']})"
    assert (conds["Evaluated"]["status"], conds["Evaluated"]["reason"]) == ("True", "Evaluated")
    assert out["evaluation"] == ev


def test_a_passing_run_clears_evaluation_regressed(kit):
    first = _agentapp(kit, _app(kit), status.evaluation(
        _app(kit), jobs=[_job("a-eval-1", done="Failed")], pods=[_pod("a-eval-1", summary=BAD)], spec_hash=HASH))
    app = _app(kit, prior={"conditions": first["conditions"], "evaluation": first["evaluation"]})
    jobs = [_job("a-eval-1", done="Failed"), _job("a-eval-2", done="Complete", created="2025-03-14T09:59:30Z")]
    pods = [_pod("a-eval-1", summary=BAD), _pod("a-eval-2", summary={**GOOD, "time": "2025-03-14T10:04:00Z"})]
    out = _agentapp(kit, app, status.evaluation(app, jobs=jobs, pods=pods, spec_hash=HASH), now=LATER)
    conds = _by_type(out["conditions"])
    assert (conds["Degraded"]["status"], conds["Degraded"]["reason"]) == ("False", "AsExpected")
    assert conds["Degraded"]["lastTransitionTime"] == LATER
    assert out["evaluation"]["gate"] == "Passed"


def test_a_run_without_summary_is_evaluation_failed_not_regressed(kit):
    app = _app(kit)
    ev = status.evaluation(app, jobs=[_job("a-eval-1", done="Failed", reason="DeadlineExceeded")],
                           pods=[_pod("a-eval-1", waiting="ErrImagePull")], spec_hash=HASH)
    conds = _by_type(_agentapp(kit, app, ev)["conditions"])
    assert conds["Degraded"]["status"] == "False"
    assert conds["Ready"]["status"] == "True"
    evaluated = conds["Evaluated"]
    assert (evaluated["status"], evaluated["reason"]) == ("False", "EvaluationFailed")
    assert "evaluation Job a-eval-1 ended without a summary" in evaluated["message"]


@pytest.mark.parametrize(("jobs", "pods", "waiting", "reason"), [
    ([_job("a-eval-1")], [_pod("a-eval-1", running=True)], None, "Running"),
    ([], [], "waiting for ConfigMap eval-suite", "Waiting"),
], ids=["running", "waiting"])
def test_a_running_or_waiting_evaluation_does_not_touch_readiness(kit, jobs, pods, waiting, reason):
    app = _app(kit)
    ev = status.evaluation(app, jobs=jobs, pods=pods, spec_hash=None if waiting else HASH, waiting=waiting)
    conds = _by_type(_agentapp(kit, app, ev)["conditions"])
    assert conds["Ready"]["status"] == "True" and conds["Degraded"]["status"] == "False"
    assert (conds["Evaluated"]["status"], conds["Evaluated"]["reason"]) == ("Unknown", reason)


def test_regressed_while_rolling_out_still_progresses(kit):
    app = _app(kit)
    ev = status.evaluation(app, jobs=[_job("a-eval-1", done="Failed")], pods=[_pod("a-eval-1", summary=BAD)],
                           spec_hash=HASH)
    out = status.agentapp(app, deployment={"metadata": {"name": "a"}, "status": {"replicas": 1}},
                          config_hash="c", now=NOW, evaluation=ev)
    conds = _by_type(out["conditions"])
    assert (conds["Ready"]["status"], conds["Progressing"]["status"]) == ("False", "True")
    assert conds["Degraded"]["reason"] == "EvaluationRegressed"


def test_regressed_keeps_its_transition_time_across_reconciles(kit):
    app = _app(kit)
    ev = status.evaluation(app, jobs=[_job("a-eval-1", done="Failed")], pods=[_pod("a-eval-1", summary=BAD)],
                           spec_hash=HASH)
    first = _agentapp(kit, app, ev)
    again = _agentapp(kit, _app(kit, prior={"conditions": first["conditions"]}), ev, now=LATER)
    assert _by_type(again["conditions"])["Degraded"]["lastTransitionTime"] == NOW
    assert _by_type(again["conditions"])["Evaluated"]["lastTransitionTime"] == NOW


def test_removing_spec_evaluation_removes_its_status_and_condition(kit):
    with_eval = _agentapp(kit, _app(kit), status.evaluation(
        _app(kit), jobs=[_job("a-eval-1", done="Failed")], pods=[_pod("a-eval-1", summary=BAD)], spec_hash=HASH))
    app = _app(kit, None, prior={"conditions": with_eval["conditions"], "evaluation": with_eval["evaluation"]})
    out = _agentapp(kit, app, status.evaluation(app, jobs=[], pods=[], spec_hash=None), now=LATER)
    assert out["evaluation"] is None
    conds = _by_type(out["conditions"])
    assert "Evaluated" not in conds
    assert conds["Degraded"]["status"] == "False"
