"""AgentApp spec.evaluation against a real API server with the operator in-process: the schema (and the operator's
own cron check) rejects a bad evaluation naming the field; the example app waits for its suite ConfigMap without
losing Ready, then gets its evaluation Job and CronJob; an evaluation pod's termination message (forged here:
kwok runs no `agentfleet eval`) lands in status.evaluation, a failing gate is Degraded EvaluationRegressed with
the failing metrics, a passing run clears it, and removing spec.evaluation prunes the children."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
import yaml

from agentfleet.control import reconcile as rec
from agentfleet.render import Defaults

pytestmark = pytest.mark.api

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "agentapp.yaml"
API = "agentfleet.io/v1alpha1"
EVAL_LABEL = "agentfleet.io/evaluation"
HASH_LABEL = "agentfleet.io/spec-hash"
SUITE = "cases:\n  - {id: single-vacation-days, principal: alice, question: How many vacation days?}\n"


def app(name: str, evaluation: dict) -> dict:
    return {"apiVersion": API, "kind": "AgentApp", "metadata": {"name": name},
            "spec": {"fleets": {"large": "big"}, "auth": {"apiKeysSecretRef": {"name": "keys", "key": "keys.yaml"}},
                     "tools": {"builtin": ["calculator"]}, "evaluation": evaluation}}


def apply(kubectl, *docs: dict, check: bool = True):
    return kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs), check=check)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


SUITE_REF = {"suiteRef": {"name": "suite", "key": "suite.yaml"}}
REJECTED = [
    ("negative-threshold", {**SUITE_REF, "gate": {"minSuccessRate": -0.5}}, "spec.evaluation.gate.minSuccessRate",
     "should be greater than or equal to 0"),
    ("leaks-below-zero", {**SUITE_REF, "gate": {"maxLeaks": -1}}, "spec.evaluation.gate.maxLeaks",
     "should be greater than or equal to 0"),
    ("cron-with-four-fields", {**SUITE_REF, "schedule": "0 3 * *"}, "spec.evaluation.schedule", "should match"),
    ("never-runs", {**SUITE_REF, "onChange": False}, "spec.evaluation.onChange",
     "set schedule, onChange: true, or both"),
    ("judge-is-neither-role-nor-url", {**SUITE_REF, "judge": "gpt-4o"}, "spec.evaluation.judge", "should match"),
    ("no-suite", {"schedule": "@daily"}, "spec.evaluation.suiteRef", "Required value"),
]


@pytest.mark.parametrize(("evaluation", "field", "message"), [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED])
def test_api_server_rejects_an_invalid_evaluation_naming_the_field(kubectl, evaluation, field, message):
    out = apply(kubectl, app("a", evaluation), check=False)
    assert out.returncode != 0
    assert field in out.stderr and message in out.stderr, out.stderr
    assert kubectl.get("app", "a") is None


def test_a_cron_schedule_the_schema_lets_through_is_invalid_spec(kubectl, operator):
    # Five fields, so the schema's pattern passes; hour 25 is for the operator's cron check to refuse.
    apply(kubectl, app("a", {**SUITE_REF, "schedule": "0 25 * * *"}))
    cond = kubectl.wait_for("Ready=False InvalidSpec", lambda: (
        c if (c := kubectl.condition("app", "a")) and c["reason"] == "InvalidSpec" else None))
    assert "spec.evaluation.schedule" in cond["message"] and "25 is outside 0-23" in cond["message"], cond
    assert kubectl.json("get", "cronjobs")["items"] == []


def eval_pod(kubectl, name: str, job: str, spec_hash: str, summary: dict, *, exit_code: int) -> None:
    """A Pod labelled like the evaluation Job's, terminated with `summary` as its termination message. No
    scheduler picks it up (an unknown schedulerName), so kwok leaves it alone and the status written through the
    status subresource stays what a kubelet would have reported."""
    labels = {EVAL_LABEL: "assistant", "job-name": job, HASH_LABEL: spec_hash}
    apply(kubectl, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
                    "spec": {"schedulerName": "nobody", "restartPolicy": "Never",
                             "containers": [{"name": "eval", "image": "registry.test/agentfleet:api"}]}})
    stamp = now().strftime("%Y-%m-%dT%H:%M:%SZ")
    status = {"status": {"phase": "Failed" if exit_code else "Succeeded", "containerStatuses": [{
        "name": "eval", "image": "registry.test/agentfleet:api", "imageID": "", "ready": False, "restartCount": 0,
        "state": {"terminated": {"exitCode": exit_code, "reason": "Error" if exit_code else "Completed",
                                 "message": json.dumps(summary), "startedAt": stamp, "finishedAt": stamp}}}]}}
    kubectl("patch", "pod", name, "--subresource=status", "--type=merge", "-p", json.dumps(status))


def test_example_app_evaluation_reaches_status_and_gates_the_app(kubectl, operator, kube):
    kubectl.cluster.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"pv-{kubectl.ns}"},
                           "spec": {"capacity": {"storage": "50Gi"}, "accessModes": ["ReadWriteOnce"],
                                    "persistentVolumeReclaimPolicy": "Delete",
                                    "hostPath": {"path": f"/tmp/agentfleet-pv-{kubectl.ns}"}}})
    kubectl.bind_state_volume("assistant")  # the example app's SQLite ledger claim
    kubectl("apply", "-f", "-", input=EXAMPLE.read_text())
    ev_spec = next(d for d in yaml.safe_load_all(EXAMPLE.read_text())
                   if d and d["kind"] == "AgentApp")["spec"]["evaluation"]
    suite_cm = ev_spec["suiteRef"]["name"]

    # No suite ConfigMap yet: Waiting, no evaluation children, and the app is Ready all the same.
    kubectl("wait", "--for=condition=Ready", "app/assistant", "--timeout=120s", timeout=130)
    st = kubectl.wait_for("status.evaluation Waiting", lambda: (
        s if (s := (kubectl.get("app", "assistant").get("status") or {}).get("evaluation") or {}).get("phase")
        == "Waiting" else None))
    assert f"waiting for ConfigMap {suite_cm}" in st["message"]
    assert kubectl.json("get", "cronjobs")["items"] == []
    assert [j for j in kubectl.json("get", "jobs", "-l", EVAL_LABEL)["items"]] == []

    apply(kubectl, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": suite_cm},
                    "data": {ev_spec["suiteRef"]["key"]: SUITE}})
    # The drift timer would notice within a minute; reconcile now instead.
    rec.reconcile(kube, kubectl.get("app", "assistant"), defaults=Defaults(), now=now())
    jobs = kubectl.wait_for("the evaluation Job", lambda: kubectl.json(
        "get", "jobs", "-l", f"{EVAL_LABEL}=assistant")["items"])
    assert len(jobs) == 1
    job = jobs[0]
    name, spec_hash = job["metadata"]["name"], job["metadata"]["labels"][HASH_LABEL]
    assert name == f"assistant-eval-{spec_hash}"
    assert [(r["kind"], r["name"]) for r in job["metadata"]["ownerReferences"]] == [("AgentApp", "assistant")]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["agentfleet", "eval"]
    args = container["args"]
    assert args[args.index("--url") + 1] == f"http://assistant.{kubectl.ns}.svc:8080"
    assert args[-2:] == ["--summary-file", "/dev/termination-log"]
    cron = kubectl.get("cronjob", "assistant-eval")
    assert cron["spec"]["schedule"] == ev_spec["schedule"] and cron["spec"]["concurrencyPolicy"] == "Forbid"

    # A run that leaked and solved too little (exit 1, as `agentfleet eval` exits on leaks).
    failing = {"successRate": 0.4, "faithfulness": 0.71, "ndcgAt10": None, "costPerSolvedTaskUsd": 0.02,
               "leaks": 1, "cases": 25, "time": now().strftime("%Y-%m-%dT%H:%M:%SZ")}
    eval_pod(kubectl, "eval-run-1", name, spec_hash, failing, exit_code=1)
    # A finished Job's event refreshes status; this Pod is forged, so refresh the way that event handler does.
    rec.refresh(kube, "AgentApp", "assistant", kubectl.ns, defaults=Defaults(), now=now())
    degraded = kubectl.wait_for("Degraded EvaluationRegressed", lambda: (
        c if (c := kubectl.condition("app", "assistant", "Degraded")) and c["reason"] == "EvaluationRegressed"
        else None))
    assert degraded["status"] == "True"
    gate_min = ev_spec["gate"]["minSuccessRate"]
    assert degraded["message"].startswith(f"successRate 0.40 < {gate_min:.2f}; leaks 1 > 0"), degraded
    obj = kubectl.get("app", "assistant")
    ev = obj["status"]["evaluation"]
    assert {k: ev.get(k) for k in ("successRate", "faithfulness", "ndcgAt10", "costPerSolvedTaskUsd", "leaks",
                                   "cases", "time")} == {**failing, "ndcgAt10": None}
    assert (ev["phase"], ev["gate"], ev["job"]) == ("Succeeded", "Failed", name)
    assert ev["observedGeneration"] == obj["metadata"]["generation"]
    assert kubectl.condition("app", "assistant")["status"] == "True"  # still serving
    row = kubectl("get", "app", "assistant").stdout.splitlines()
    header, values = row[0].split(), row[1].split()
    assert dict(zip(header, values)).get("GATE") == "Failed" and dict(zip(header, values)).get("LEAKS") == "1", row
    wide = kubectl("get", "app", "assistant", "-o", "wide").stdout.splitlines()[0].split()
    assert {"FAITHFUL", "NDCG", "COST/SOLVED"} <= set(wide)

    # The next run passes: the regression clears.
    passing = {**failing, "successRate": 0.9, "leaks": 0,
               "time": (now() + dt.timedelta(seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    eval_pod(kubectl, "eval-run-2", name, spec_hash, passing, exit_code=0)
    rec.refresh(kube, "AgentApp", "assistant", kubectl.ns, defaults=Defaults(), now=now())
    cleared = kubectl.wait_for("Degraded False", lambda: (
        c if (c := kubectl.condition("app", "assistant", "Degraded")) and c["status"] == "False" else None))
    assert cleared["reason"] == "AsExpected"
    ev = kubectl.get("app", "assistant")["status"]["evaluation"]
    assert (ev["successRate"], ev["leaks"], ev["gate"]) == (0.9, 0, "Passed")
    assert kubectl.condition("app", "assistant", "Evaluated")["status"] == "True"

    def reconcile_writes_nothing():
        before = kubectl.get("app", "assistant")
        rec.reconcile(kube, before, defaults=Defaults(), now=now())
        return kubectl.get("app", "assistant")["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]

    # Settled: a reconcile with nothing new writes nothing (status.evaluation's nulls do not count as changes).
    kubectl.wait_for("a reconcile that writes nothing", reconcile_writes_nothing, timeout=60, interval=2)

    # Without spec.evaluation: Job and CronJob are pruned, status.evaluation and its condition go.
    kubectl("patch", "app", "assistant", "--type=json", "-p", '[{"op": "remove", "path": "/spec/evaluation"}]')
    kubectl.wait_for("evaluation children pruned", lambda: kubectl.get("job", name) is None
                     and kubectl.get("cronjob", "assistant-eval") is None)
    status = kubectl.wait_for("status.evaluation gone", lambda: (
        s if "evaluation" not in (s := kubectl.get("app", "assistant")["status"]) else None))
    assert "Evaluated" not in {c["type"] for c in status["conditions"]}
