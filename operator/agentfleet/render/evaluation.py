"""AgentApp spec.evaluation -> the evaluation Job and, with a schedule, a CronJob running the same pod. The pod runs
`agentfleet eval` against the app's own Service with the evaluation key store, as the suite's principals; its
summary is the container's termination message, which control reads back into status.evaluation. The Job cannot
change in place, so its name carries a hash of the app's spec, its runtime configuration and the suite's text:
a new Job (a new run) exactly when one of those changes."""

from __future__ import annotations

import copy
from typing import Any

from ..api import AgentApp, ModelFleet
from ..names import GROUP, RUNTIME_PORT, SPEC_HASH_LABEL, fleet_url
from .defaults import Defaults
from .meta import child_meta, pod_labels, stable_hash
from .pod_options import overlay

__all__ = ["evaluation", "suite_text", "waiting_message", "eval_job_name", "eval_cronjob_name", "service_url",
           "EVAL_APP", "EVAL_COMPONENT", "EVAL_CONTAINER", "EVALUATION_LABEL", "SUITE_DIR", "EVAL_KEYS_DIR",
           "SUMMARY_FILE"]

EVAL_APP = "agentfleet-eval"
EVAL_COMPONENT = "evaluation"
EVAL_CONTAINER = "eval"
# On the Jobs and their pods (the CronJob's too): how control finds every run of one app's evaluation.
EVALUATION_LABEL = f"{GROUP}/evaluation"
SUITE_DIR = "/etc/agentfleet/eval"
EVAL_KEYS_DIR = "/etc/agentfleet/eval-keys"
# The kubelet's default terminationMessagePath: what the eval writes there becomes the container's
# termination message (at most 4 KiB), which the operator reads without exec or logs access.
SUMMARY_FILE = "/dev/termination-log"
HISTORY_LIMIT = 3


def eval_job_name(app: str, spec_hash: str) -> str:
    return f"{app}-eval-{spec_hash}"


def eval_cronjob_name(app: str) -> str:
    # CronJob names are limited to 52 characters (its Jobs append 11): 40 + 5 fits.
    return f"{app}-eval"


def service_url(app: AgentApp) -> str:
    """The runtime's Service inside the cluster (what the evaluation asks, like any client)."""
    return f"http://{app.name}.{app.namespace}.svc:{RUNTIME_PORT}"


def suite_text(app: AgentApp, suite: dict[str, Any] | None) -> str | None:
    """The suite file's content from its ConfigMap (data or binaryData), None when either is missing."""
    ev = app.spec.evaluation
    if ev is None or suite is None:
        return None
    key = ev.suite_ref.key
    for field in ("data", "binaryData"):
        value = (suite.get(field) or {}).get(key)
        if value is not None:
            return f"{field}:{value}"
    return None


def waiting_message(app: AgentApp) -> str:
    ev = app.spec.evaluation
    assert ev is not None
    return (f"waiting for ConfigMap {ev.suite_ref.name} with key {ev.suite_ref.key} (the evaluation suite), e.g. "
            f"kubectl create configmap {ev.suite_ref.name} --from-file={ev.suite_ref.key}=SUITE_FILE")


def _judge(app: AgentApp, fleets: dict[str, ModelFleet]) -> list[str]:
    """A role judge is one of the app's fleets, reached at its router (or external base URL) by served name: in
    the cluster the eval has no AgentApp file to resolve `large` from. A URL judge is passed on as written."""
    ev = app.spec.evaluation
    assert ev is not None
    if not ev.judge:
        return []
    if ev.judge not in ("large", "small"):
        return ["--judge", ev.judge]
    name = app.spec.fleets.large if ev.judge == "large" else (app.spec.fleets.small or app.spec.fleets.large)
    fleet = fleets.get(name)
    if fleet is None:  # references are resolved before rendering; this is only an offline render's gap
        return ["--judge", fleet_url(name, app.namespace)]
    return ["--judge", fleet.spec.base_url or fleet_url(name, app.namespace), "--judge-model",
            fleet.served_model_name]


def _pod_spec(app: AgentApp, d: Defaults, fleets: dict[str, ModelFleet]) -> dict[str, Any]:
    ev = app.spec.evaluation
    assert ev is not None
    keys = ev.keys_secret_ref or app.spec.auth.api_keys_secret_ref
    suite_key = ev.suite_ref.key
    args = [
        "--suite", f"{SUITE_DIR}/{suite_key}",
        "--url", service_url(app),
        "--keys", f"{EVAL_KEYS_DIR}/{keys.key}",
        "--concurrency", str(ev.concurrency),
    ]
    args += _judge(app, fleets)
    args += ["--json", "--summary-file", SUMMARY_FILE]
    return {
        "restartPolicy": "Never",
        # The evaluation talks to the app's Service only: no Kubernetes API token, no service links.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{
            "name": EVAL_CONTAINER,
            "image": app.spec.image or d.agentfleet_image,
            "imagePullPolicy": d.image_pull_policy,
            "command": ["agentfleet", "eval"],
            "args": args,
            "env": [{"name": "HOME", "value": "/tmp"}],
            "workingDir": "/tmp",
            "resources": {"requests": dict(ev.resources),
                          "limits": {k: v for k, v in ev.resources.items() if k == "memory"}},
            "volumeMounts": [
                {"name": "suite", "mountPath": SUITE_DIR, "readOnly": True},
                {"name": "keys", "mountPath": EVAL_KEYS_DIR, "readOnly": True},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
            # The summary is the termination message; a run that dies before writing one leaves its log's tail
            # there instead, which status shows as the reason.
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}},
        }],
        "volumes": [
            {"name": "suite", "configMap": {"name": ev.suite_ref.name,
                                            "items": [{"key": suite_key, "path": suite_key}]}},
            {"name": "keys", "secret": {"secretName": keys.name, "items": [{"key": keys.key, "path": keys.key}]}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }


def _spec_hash(app: AgentApp, pod: dict[str, Any], *, suite: str, runtime_hash: str | None) -> str:
    """What a new run is for: the app's spec (less replicas, which changes no answer, and less spec.evaluation:
    its pod fields are in `pod`, and gate, schedule and onChange need no new run), the rendered runtime
    configuration (so a referenced fleet, index or budget that changes counts), the pod and the suite's text.
    The key store is a Secret the operator never reads: rotating it alone does not start a run."""
    spec = {k: v for k, v in app.spec.wire().items() if k not in ("replicas", "evaluation")}
    return stable_hash({"app": spec, "runtime": runtime_hash, "pod": pod, "suite": suite})


def evaluation(app: AgentApp, defaults: Defaults, *, suite: dict[str, Any] | None, runtime_hash: str | None,
               fleets: dict[str, ModelFleet] | None = None) -> list[dict[str, Any]]:
    """The evaluation children of `app`: none without spec.evaluation or while its suite ConfigMap (or key) is
    missing (status says Waiting); else a Job when onChange, and a CronJob when scheduled. `suite` is the
    ConfigMap as read from the API server, `runtime_hash` the hash of the rendered runtime configuration,
    `fleets` the app's ModelFleets by name (a role judge is one of them)."""
    ev = app.spec.evaluation
    text = suite_text(app, suite)
    if ev is None or text is None:
        return []
    pod = _pod_spec(app, defaults, fleets or {})
    h = _spec_hash(app, pod, suite=text, runtime_hash=runtime_hash)
    ours = {EVALUATION_LABEL: app.name, SPEC_HASH_LABEL: h}

    def meta(name: str) -> dict[str, Any]:
        out = child_meta(app, name, app=EVAL_APP, component=EVAL_COMPONENT)
        out["labels"].update(ours)
        return out

    job_spec = {
        # One attempt: a failed evaluation is a result (leaks exit 1), not something to retry and pay for twice.
        "backoffLimit": 0,
        "activeDeadlineSeconds": ev.deadline_seconds,
        "template": {
            "metadata": {"labels": {**pod_labels(app, app=EVAL_APP, component=EVAL_COMPONENT), **ours}},
            "spec": pod,
        },
    }
    overlay(job_spec["template"], app.spec.pod)
    # No ttlSecondsAfterFinished on the onChange Job: reconcile would re-create a collected Job and pay for the
    # run again. It goes when the next hash replaces it (pruned); status keeps its summary.
    children: list[dict[str, Any]] = []
    if ev.on_change:
        children.append({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta(eval_job_name(app.name, h)),
                         "spec": job_spec})
    if ev.schedule:
        children.append({
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": meta(eval_cronjob_name(app.name)),
            "spec": {
                "schedule": ev.schedule,
                "concurrencyPolicy": "Forbid",
                # A control plane that was down does not fire a backlog of missed runs when it returns.
                "startingDeadlineSeconds": 600,
                "successfulJobsHistoryLimit": HISTORY_LIMIT,
                "failedJobsHistoryLimit": HISTORY_LIMIT,
                # Its Jobs carry the same labels as the onChange Job: status finds every run by them.
                "jobTemplate": {"metadata": {"labels": dict(meta(eval_cronjob_name(app.name))["labels"])},
                                "spec": copy.deepcopy(job_spec)},
            },
        })
    return [copy.deepcopy(c) for c in children]  # one deepcopy of the list would keep the shared job_spec shared
