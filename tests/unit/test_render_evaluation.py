"""render.evaluation: an AgentApp's spec.evaluation becomes a Job named with a hash of the app and the suite (a
new run exactly when either changes), a CronJob with the same pod when scheduled, and nothing without a suite;
and the schema of spec.evaluation, whose errors name the field."""

from __future__ import annotations

import pytest

from agentfleet import render
from agentfleet.errors import SpecError
from agentfleet.names import LABEL_NAME, RUNTIME_PORT, SPEC_HASH_LABEL
from agentfleet.render.evaluation import (
    EVAL_CONTAINER, EVAL_KEYS_DIR, EVALUATION_LABEL, SUITE_DIR, SUMMARY_FILE, eval_cronjob_name,
)
from agentfleet.render.meta import pod_labels

SUITE = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "eval-suite"},
         "data": {"suite.yaml": "cases:\n  - {id: a, principal: alice, question: Why?}\n", "notes.md": "x"}}
EVALUATION = {"suiteRef": {"name": "eval-suite", "key": "suite.yaml"}}


def _world(kit, evaluation=EVALUATION, app_spec=None, *, name="assistant", large_spec=None):
    spec = {**({"evaluation": evaluation} if evaluation is not None else {}), **(app_spec or {})}
    app = kit.app(name, spec, labels=kit.owner_labels)
    related = kit.related(kit.fleet("large", large_spec), kit.index("docs"))
    return app, related


def _children(kit, app, related, suite=SUITE):
    return render.render(app, related=related, defaults=kit.defaults, suite=suite)


def _evals(children):
    return [c for c in children if c["kind"] in ("Job", "CronJob")]


def _job(kit, children):
    return kit.one(children, "Job")


# --- what is rendered ------------------------------------------------------------------------------------------

NOTHING = [
    ("no-spec-evaluation", None, SUITE),
    ("suite-configmap-missing", EVALUATION, None),
    ("suite-key-missing", {"suiteRef": {"name": "eval-suite", "key": "other.yaml"}}, SUITE),
]


@pytest.mark.parametrize(("evaluation", "suite"), [r[1:] for r in NOTHING], ids=[r[0] for r in NOTHING])
def test_nothing_is_rendered_without_evaluation_or_its_suite(kit, evaluation, suite):
    app, related = _world(kit, evaluation)
    children = _children(kit, app, related, suite)
    assert _evals(children) == []
    # the runtime alone (its SQLite ledger's claim included): no Job, no CronJob
    assert {c["kind"] for c in children} == {"ServiceAccount", "ConfigMap", "Deployment", "Service",
                                             "PersistentVolumeClaim"}


def test_the_job_runs_eval_against_the_apps_service_with_the_suite_and_keys_mounted(kit):
    app, related = _world(kit, {**EVALUATION, "concurrency": 6, "judge": "large"})
    job = _job(kit, _children(kit, app, related))
    c = kit.container(job)
    assert c["name"] == EVAL_CONTAINER
    assert c["image"] == kit.defaults.agentfleet_image
    assert c["command"] == ["agentfleet", "eval"]
    assert c["args"] == [
        "--suite", f"{SUITE_DIR}/suite.yaml",
        "--url", f"http://assistant.{kit.ns}.svc:{RUNTIME_PORT}",
        "--keys", f"{EVAL_KEYS_DIR}/keys.yaml",
        "--concurrency", "6",
        # In the cluster a role judge is the fleet's router, by the fleet's served model name.
        "--judge", f"http://large-router.{kit.ns}.svc:8000/v1", "--judge-model", "large",
        "--json", "--summary-file", SUMMARY_FILE,
    ]
    assert kit.volume(job, "suite") == {"name": "suite", "configMap": {
        "name": "eval-suite", "items": [{"key": "suite.yaml", "path": "suite.yaml"}]}}
    # Without keysSecretRef: the app's own key store.
    assert kit.volume(job, "keys") == {"name": "keys", "secret": {
        "secretName": "api-keys", "items": [{"key": "keys.yaml", "path": "keys.yaml"}]}}
    assert kit.mount(c, "suite") == {"name": "suite", "mountPath": SUITE_DIR, "readOnly": True}
    assert kit.mount(c, "keys") == {"name": "keys", "mountPath": EVAL_KEYS_DIR, "readOnly": True}
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"


JUDGES = [
    ("small-falls-back-to-large", {"judge": "small"}, None, ["--judge", "http://large-router.team-a.svc:8000/v1",
                                                             "--judge-model", "large"]),
    ("small-fleet", {"judge": "small"}, {"fleets": {"small": "cheap"}},
     ["--judge", "http://cheap-router.team-a.svc:8000/v1", "--judge-model", "tiny"]),
    ("url-as-written", {"judge": "https://judge.example/v1"}, None, ["--judge", "https://judge.example/v1"]),
]


@pytest.mark.parametrize(("ev", "app_spec", "want"), [r[1:] for r in JUDGES], ids=[r[0] for r in JUDGES])
def test_the_judge(kit, ev, app_spec, want):
    app = kit.app("assistant", {"evaluation": {**EVALUATION, **ev}, **(app_spec or {})})
    related = kit.related(kit.fleet("large"), kit.fleet("cheap", {"model": {"servedModelName": "tiny"}}),
                          kit.index("docs"))
    args = kit.container(_job(kit, _children(kit, app, related)))["args"]
    got = args[args.index("--judge"):args.index("--json")]
    assert got == want


def test_a_dedicated_key_store_and_no_judge(kit):
    app, related = _world(kit, {**EVALUATION, "keysSecretRef": {"name": "eval-keys", "key": "eval.yaml"}})
    job = _job(kit, _children(kit, app, related))
    args = kit.container(job)["args"]
    assert kit.flag(args, "--keys") == f"{EVAL_KEYS_DIR}/eval.yaml"
    assert kit.flag(args, "--judge") is None
    assert kit.flag(args, "--concurrency") == "4"
    assert kit.volume(job, "keys")["secret"] == {"secretName": "eval-keys",
                                                 "items": [{"key": "eval.yaml", "path": "eval.yaml"}]}


def test_the_job_runs_once_within_its_deadline_with_least_privilege(kit):
    app, related = _world(kit, {**EVALUATION, "deadlineSeconds": 900})
    job = _job(kit, _children(kit, app, related))
    spec = job["spec"]
    assert spec["backoffLimit"] == 0
    assert spec["activeDeadlineSeconds"] == 900
    assert "ttlSecondsAfterFinished" not in spec  # reconcile would re-create a collected Job: a second paid run
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    c = kit.container(job)
    assert c["securityContext"] == {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    assert kit.mount(c, "tmp") == {"name": "tmp", "mountPath": "/tmp"}
    assert c["resources"] == {"requests": {"cpu": "250m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}}


@pytest.mark.parametrize("name", ["assistant", "n" * 38 + "-z"], ids=["short", "longest"])
def test_job_and_pods_carry_the_labels_status_finds_them_by(kit, name):
    app, related = _world(kit, {**EVALUATION, "schedule": "0 3 * * *"}, name=name)
    children = _evals(_children(kit, app, related))
    job = kit.one(children, "Job")
    h = job["metadata"]["labels"][SPEC_HASH_LABEL]
    assert job["metadata"]["name"] == f"{name}-eval-{h}" and len(h) == 10
    ours = {EVALUATION_LABEL: name, SPEC_HASH_LABEL: h}
    want_pod = {**pod_labels(app, app="agentfleet-eval", component="evaluation"), **ours}
    cron = kit.one(children, "CronJob")
    assert cron["metadata"]["name"] == eval_cronjob_name(name) and len(cron["metadata"]["name"]) <= 52
    for obj, template in ((job, job["spec"]["template"]), (cron, cron["spec"]["jobTemplate"]["spec"]["template"])):
        assert ours.items() <= obj["metadata"]["labels"].items()
        assert template["metadata"]["labels"] == want_pod
    assert ours.items() <= cron["spec"]["jobTemplate"]["metadata"]["labels"].items()
    # Everything else every child satisfies (pod templates carry our two evaluation labels on top: checked above).
    problems = [p for p in kit.child_problems(children, app) if "pod template labels" not in p]
    assert problems == []
    assert kit.aliased(children) == []
    assert {(c["apiVersion"], c["kind"]) for c in children} <= set(render.CHILD_KINDS["AgentApp"])


def test_a_schedule_adds_a_cronjob_with_the_same_pod(kit):
    app, related = _world(kit, {**EVALUATION, "schedule": "0 3 * * *"})
    children = _evals(_children(kit, app, related))
    job, cron = kit.one(children, "Job"), kit.one(children, "CronJob")
    spec = cron["spec"]
    assert spec["schedule"] == "0 3 * * *"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["successfulJobsHistoryLimit"] == 3 and spec["failedJobsHistoryLimit"] == 3
    assert spec["startingDeadlineSeconds"] == 600
    assert spec["jobTemplate"]["spec"] == job["spec"]


def test_schedule_only_renders_no_job(kit):
    app, related = _world(kit, {**EVALUATION, "schedule": "@daily", "onChange": False})
    children = _evals(_children(kit, app, related))
    assert [c["kind"] for c in children] == ["CronJob"]
    assert children[0]["spec"]["schedule"] == "@daily"


# --- the Job's name: a new run exactly when the app or the suite changes ---------------------------------------

def _suite_with(**data):
    return {**SUITE, "data": {**SUITE["data"], **data}}


# (id, evaluation override, app spec override, suite, large fleet spec, new run?)
NAMES = [
    ("same-inputs", None, None, SUITE, None, False),
    ("suite-text-changed", None, None, _suite_with(**{"suite.yaml": "cases: []\n"}), None, True),
    ("another-key-of-the-configmap", None, None, _suite_with(**{"notes.md": "y"}), None, False),
    ("suite-moved-to-binary-data", None, None,
     {**SUITE, "data": {}, "binaryData": {"suite.yaml": "Y2FzZXM6IFtdCg=="}}, None, True),
    ("system-prompt", None, {"systemPrompt": "Be terse."}, SUITE, None, True),
    ("loop-limits", None, {"limits": {"maxSteps": 3}}, SUITE, None, True),
    ("runtime-image", None, {"image": "registry.test/agentfleet:next"}, SUITE, None, True),
    ("referenced-fleet-served-name", None, None, SUITE, {"model": {"servedModelName": "bigger"}}, True),
    ("replicas", None, {"replicas": 0}, SUITE, None, False),
    ("concurrency", {"concurrency": 8}, None, SUITE, None, True),
    ("judge", {"judge": "https://judge.example/v1"}, None, SUITE, None, True),
    ("gate-threshold", {"gate": {"minSuccessRate": 0.9}}, None, SUITE, None, False),
    ("schedule-added", {"schedule": "0 3 * * *"}, None, SUITE, None, False),
]


@pytest.mark.parametrize(("ev", "app_spec", "suite", "large", "new_run"), [r[1:] for r in NAMES],
                         ids=[r[0] for r in NAMES])
def test_job_name_changes_with_the_app_spec_or_suite_and_only_then(kit, ev, app_spec, suite, large, new_run):
    base_app, base_related = _world(kit)
    base = _job(kit, _children(kit, base_app, base_related))["metadata"]["name"]
    app, related = _world(kit, {**EVALUATION, **(ev or {})}, app_spec, large_spec=large)
    name = _job(kit, _children(kit, app, related, suite))["metadata"]["name"]
    assert (name != base) is new_run, (base, name)


def test_job_name_does_not_depend_on_the_owner_uid_or_key_order(kit):
    app, related = _world(kit)
    first = _job(kit, _children(kit, app, related))["metadata"]["name"]
    reordered = {**SUITE, "data": dict(reversed(list(SUITE["data"].items())))}
    other = kit.app("assistant", {"evaluation": EVALUATION}, uid="00000000-0000-0000-0000-000000000000",
                    labels=kit.owner_labels)
    assert _job(kit, _children(kit, other, related, reordered))["metadata"]["name"] == first


# --- spec.evaluation: what parses, and what is an error naming its field -----------------------------------------

def test_defaults(kit):
    app, _ = _world(kit)
    ev = app.spec.evaluation
    assert (ev.on_change, ev.schedule, ev.concurrency, ev.judge, ev.deadline_seconds) == (True, None, 4, None, 3600)
    assert ev.gate.max_leaks == 0 and ev.gate.min_success_rate is None
    assert ev.keys_secret_ref is None


INVALID = [
    ("cron-hour-out-of-range", {"schedule": "0 25 * * *"}, "spec.evaluation.schedule", "25 is outside 0-23"),
    ("cron-four-fields", {"schedule": "0 3 * *"}, "spec.evaluation.schedule", "String should match pattern"),
    ("cron-unknown-descriptor", {"schedule": "@fortnightly"}, "spec.evaluation.schedule",
     "String should match pattern"),
    ("cron-sunday-as-7", {"schedule": "0 3 * * 7"}, "spec.evaluation.schedule", "7 is outside 0-6"),
    ("cron-backwards-range", {"schedule": "0 9-5 * * *"}, "spec.evaluation.schedule", "runs backwards"),
    ("cron-bad-name", {"schedule": "0 3 * FOO *"}, "spec.evaluation.schedule", "'FOO' is not a number"),
    ("negative-threshold", {"gate": {"minSuccessRate": -0.1}}, "spec.evaluation.gate.minSuccessRate",
     "greater than or equal to 0"),
    ("rate-above-one", {"gate": {"minNdcgAt10": 1.5}}, "spec.evaluation.gate.minNdcgAt10", "less than or equal to 1"),
    ("negative-leaks", {"gate": {"maxLeaks": -1}}, "spec.evaluation.gate.maxLeaks", "greater than or equal to 0"),
    ("never-runs", {"onChange": False}, "spec.evaluation.onChange", "set schedule, onChange: true, or both"),
    ("judge-not-a-role-or-url", {"judge": "gpt-4"}, "spec.evaluation.judge", "String should match pattern"),
    ("suite-key-with-slash", {"suiteRef": {"name": "s", "key": "a/b.yaml"}}, "spec.evaluation.suiteRef.key",
     "String should match pattern"),
    ("no-suite", {"suiteRef": None}, "spec.evaluation.suiteRef", "required field is missing"),
    ("unknown-field", {"gates": {}}, "spec.evaluation.gates", "unknown field"),
]


@pytest.mark.parametrize(("override", "field", "message"), [r[1:] for r in INVALID], ids=[r[0] for r in INVALID])
def test_invalid_evaluation_names_the_field(kit, override, field, message):
    ev = kit.merge(EVALUATION, override)
    with pytest.raises(SpecError) as err:
        kit.app("assistant", {"evaluation": ev})
    problems = {p.path: p.message for p in err.value.problems}
    assert field in problems, problems
    assert message in problems[field], problems


@pytest.mark.parametrize("schedule", ["0 3 * * *", "*/15 * * * *", "0 3 * * MON-FRI", "@hourly", "0 0 1,15 * ?",
                                      "30 2 1-31/2 jan,Dec SUN"])
def test_valid_schedules(kit, schedule):
    app = kit.app("assistant", {"evaluation": {**EVALUATION, "schedule": schedule}})
    assert app.spec.evaluation.schedule == schedule


def test_the_pod_label_name_is_the_eval_app(kit):
    app, related = _world(kit)
    assert _job(kit, _children(kit, app, related))["metadata"]["labels"][LABEL_NAME] == "agentfleet-eval"
