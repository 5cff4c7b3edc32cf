"""Pure status computation: (resource, what its children report, now) -> the status to write. Conditions follow
one vocabulary for all four kinds: Ready, Progressing, Degraded, each with a reason a human can act on."""

from __future__ import annotations

import datetime as dt
from typing import Any

import json
from typing import Mapping, NamedTuple, Sequence

from .api import AgentApp, Budget, Condition, EvaluationGate, EvaluationStatus, ModelFleet, Resource, VectorIndex
from .conditions import DEGRADED, EVALUATED, PROGRESSING, READY, Status, remove, set_condition
from .errors import AgentfleetError
from .names import ENGINE_PORT, RUNTIME_PORT, SPEC_HASH_LABEL, engine_name, fleet_url
from .render.evaluation import EVAL_CONTAINER
from .render.meta import selector_labels
from .pods import worst_problem
from .render.cluster import INFERENCE_POOL, Capabilities
from .render.modelfleet import ENGINE_APP, engine_workload_kind
from .render.prices import PRICE_MATCHES_NO_FLEET, PriceProblem

__all__ = ["Verdict", "conditions_for", "failed", "modelfleet", "vectorindex", "agentapp", "budget",
           "window_bounds", "selector_string", "EvalSummary", "eval_summary", "gate_failures", "evaluation",
           "SUMMARY_METRICS", "BUDGET_EXHAUSTED", "PRICED", "RUNTIME_BUDGET_FIELDS", "LEDGER_NOT_SHARED",
           "unshared_ledgers", "METRICS_AVAILABLE", "metrics_conditions", "INFERENCE_POOL_AVAILABLE"]

Verdict = tuple[Status, str, str]
"""(Ready status, reason, message)."""


# Ready=True reasons that still mean work in flight (Progressing stays True).
_MOVING = {"Scaling"}


def conditions_for(current: list[Condition], verdict: Verdict, *, generation: int | None, now: str,
                   degraded: tuple[str, str] | None = None, degraded_stalls: bool = True) -> list[dict[str, Any]]:
    """Ready from the verdict; Progressing while not (fully) ready and not failed; Degraded when given a
    (reason, message). `degraded_stalls` False: the degradation (a failed evaluation gate) does not stop the
    rollout, so Progressing still follows the verdict."""
    ready, reason, message = verdict
    conds = set_condition(current, READY, ready, reason, message, generation=generation, now=now)
    stalled = degraded is not None and degraded_stalls
    progressing: Status = "True" if (ready != "True" or reason in _MOVING) and not stalled else "False"
    conds = set_condition(conds, PROGRESSING, progressing, reason if progressing == "True" else "Stable",
                          message if progressing == "True" else "", generation=generation, now=now)
    if degraded:
        conds = set_condition(conds, DEGRADED, "True", degraded[0], degraded[1], generation=generation, now=now)
    else:
        conds = set_condition(conds, DEGRADED, "False", "AsExpected", "", generation=generation, now=now)
    return [c.wire() for c in conds]


def failed(current: list[Condition], err: AgentfleetError, *, generation: int | None, now: str) -> dict[str, Any]:
    """The status patch for a spec error (Degraded, no retry), a missing prerequisite operator (Degraded,
    retried) or a missing dependency (Progressing, retried)."""
    message = getattr(err, "message", str(err))
    degraded = (err.reason, message) if err.reason in ("InvalidSpec", "CRDNotServed") else None
    return {"observedGeneration": generation,
            "conditions": conditions_for(current, ("False", err.reason, message), generation=generation, now=now,
                                         degraded=degraded)}


def selector_string(fleet: ModelFleet) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(fleet, app=ENGINE_APP, component="engine").items())


def _int(obj: dict[str, Any] | None, *path: str) -> int:
    cur: Any = obj or {}
    for p in path:
        cur = cur.get(p) if isinstance(cur, dict) else None
    return int(cur or 0)


METRICS_AVAILABLE = "MetricsAvailable"


def metrics_conditions(fleet: ModelFleet, *, last_reason: str | None, prometheus_url: str | None,
                       now: str) -> list[dict[str, Any]]:
    """The fleet's conditions with MetricsAvailable as an autoscaler evaluation ending in `last_reason` makes it:
    the autoscaler writes it together with its memo, so an evaluation that changes it is one status write (not a
    memo now and the condition at the next reconcile)."""
    discovery = fleet.status.metrics_discovery or "Annotations"
    metrics = _metrics_condition(fleet, discovery=discovery, prometheus_url=prometheus_url, last_reason=last_reason)
    conds = list(fleet.status.conditions)
    conds = (remove(conds, METRICS_AVAILABLE) if metrics is None else
             set_condition(conds, METRICS_AVAILABLE, *metrics, generation=fleet.metadata.generation, now=now))
    return [c.wire() for c in conds]


def _metrics_condition(fleet: ModelFleet, *, discovery: str, prometheus_url: str | None,
                       last_reason: str | None = None) -> Verdict | None:
    """MetricsAvailable from the autoscaler's last evaluation; None when nothing reads metrics."""
    if not fleet.spec.autoscaling.enabled or fleet.spec.base_url:
        return None
    memo = fleet.status.autoscaler
    reason = last_reason if last_reason is not None else (memo.last_reason if memo is not None else None)
    if reason is None:
        return None  # not evaluated yet: no claim either way
    if reason != "MetricsMissing":
        return ("True", "MetricsFlowing", f"vLLM metrics read from {prometheus_url or 'Prometheus'}")
    if discovery == "PodMonitor":
        how = (f"PodMonitor {engine_name(fleet.name)} is rendered: check that the Prometheus' podMonitorSelector "
               f"and podMonitorNamespaceSelector select it (spec.autoscaling.podMonitorLabels)")
    else:
        how = ("only prometheus.io/* pod annotations are rendered (the Prometheus Operator's PodMonitor CRD is not "
               "installed): Prometheus needs a kubernetes_sd pod scrape job that honours them")
    return ("False", "MetricsMissing",
            f"no vLLM metrics for namespace={fleet.namespace}, pod=~{engine_name(fleet.name)}-N at "
            f"{prometheus_url or 'Prometheus'}; {how}; the autoscaler holds the replica count until they appear")


INFERENCE_POOL_AVAILABLE = "InferencePoolAvailable"


def _inference_pool_condition(fleet: ModelFleet, capabilities: Capabilities | None) -> Verdict | None:
    """InferencePoolAvailable when spec.inferencePool.enabled: is the pool rendered, or is its CRD missing? None
    when not asked for, or when the cluster was not read."""
    if not fleet.spec.inference_pool.enabled or capabilities is None:
        return None
    api_version, kind = INFERENCE_POOL
    if not capabilities.inference_pool:
        return ("False", "CRDNotServed",
                f"spec.inferencePool.enabled is true but the cluster does not serve {kind} ({api_version}): "
                f"install the Gateway API Inference Extension's CRDs (v1.5.0 or newer when "
                f"spec.inferencePool.endpointPickerRef is unset); the fleet is still served by its router")
    return ("True", "Rendered",
            f"{kind} {engine_name(fleet.name)} selects the serving engine pods on port {ENGINE_PORT}: route to it "
            f"with an HTTPRoute backendRef (group inference.networking.k8s.io, kind {kind})")


def _fit_problem(fleet: ModelFleet, capabilities: Capabilities | None) -> str | None:
    """Why one replica's pod cannot fit any node that exists now (None: it fits, or the nodes are unknown or
    offer none of the resource yet, e.g. a node group scaling from zero)."""
    eng = fleet.spec.engine
    largest = capabilities.gpus_per_node(eng.gpu.resource_name) if capabilities else None
    if not largest or eng.gpus_per_pod <= largest:
        return None
    hint = (f"set engine.gpu.perNode: {largest} to spread each replica over {-(-eng.gpus // largest)} pods "
            f"(LeaderWorkerSet)" if eng.gpus % largest == 0 else
            f"choose tensor x pipeline parallel sizes whose product is a multiple of {largest}")
    return (f"one replica needs {eng.gpus_per_pod} {eng.gpu.resource_name} in one pod, the largest node offers "
            f"{largest}: {hint}")


def modelfleet(fleet: ModelFleet, *, statefulset: dict[str, Any] | None, router: dict[str, Any] | None,
               now: str, pods: Sequence[dict[str, Any]] = (), capabilities: Capabilities | None = None,
               prometheus_url: str | None = None) -> dict[str, Any]:
    """`statefulset`: the engine workload as read back (a StatefulSet, or a LeaderWorkerSet for multi-node
    replicas; both report replicas and readyReplicas). `pods`: the engine pods, read for failure reasons.
    `capabilities`: what the cluster offers (None: unknown)."""
    gen = fleet.metadata.generation
    ready = _int(statefulset, "status", "readyReplicas")
    current = _int(statefulset, "status", "replicas")
    desired = fleet.spec.replicas
    router_ready = _int(router, "status", "readyReplicas")
    if fleet.spec.base_url:
        return {
            "observedGeneration": gen, "replicas": 0, "readyReplicas": 0, "selector": selector_string(fleet),
            "endpoint": fleet.spec.base_url, "servedModelName": fleet.served_model_name,
            "conditions": conditions_for(remove(remove(fleet.status.conditions, METRICS_AVAILABLE),
                                                INFERENCE_POOL_AVAILABLE),
                                         ("True", "External", f"served by {fleet.spec.base_url}"),
                                         generation=gen, now=now),
        }
    eng = fleet.spec.engine
    workload = engine_workload_kind(fleet)
    discovery = "PodMonitor" if capabilities is not None and capabilities.pod_monitor else "Annotations"
    stamp = dt.datetime.strptime(now, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
    stuck = worst_problem(pods, now=stamp, min_since_s=eng.progress_deadline_seconds)
    pending = stuck or worst_problem(pods, now=stamp)
    if capabilities is not None and capabilities.gpus_per_node(eng.gpu.resource_name) == 0:
        # No node advertises the resource at all: the likely cause, named where the scheduler's message is shown.
        hint = (f"; no node advertises {eng.gpu.resource_name}: is the GPU operator / device plugin installed "
                f"(or a GPU node group able to scale up)?")
        stuck, pending = (p._replace(message=p.message + hint) if p is not None and p.reason == "Unschedulable"
                          else p for p in (stuck, pending))
    fit = _fit_problem(fleet, capabilities)
    degraded: tuple[str, str] | None = None
    if workload == "LeaderWorkerSet" and capabilities is not None and not capabilities.leader_worker_set:
        msg = (f"each replica needs {eng.gpus} GPUs over {eng.pods_per_replica} pods: a LeaderWorkerSet, whose "
               f"CRD (leaderworkerset.x-k8s.io/v1) is not installed; install LeaderWorkerSet or fit a replica "
               f"on one node (engine.gpu.perNode)")
        verdict: Verdict = ("False", "LeaderWorkerSetMissing", msg)
        degraded = ("LeaderWorkerSetMissing", msg)
    elif fit and ready == 0 and desired > 0:
        verdict = ("False", "ReplicaDoesNotFit", fit)
        degraded = ("ReplicaDoesNotFit", fit)
    elif statefulset is None:
        verdict = ("False", "Creating", f"creating the vLLM {workload}")
    elif desired == 0 and current == 0:
        verdict = ("True", "ScaledToZero", "scaled to zero replicas")
    elif desired == 0:
        verdict = ("True", "Scaling", f"{ready} replicas ready, {current} running, 0 desired")
    elif ready == 0 and stuck is not None:
        verdict = ("False", stuck.reason, f"0 of {desired} desired replicas ready: {stuck.describe()}")
    elif ready == 0:
        why = (f": {pending.describe()} (Degraded after {eng.progress_deadline_seconds}s)" if pending
               else " (loading the model?)")
        verdict = ("False", "ReplicasNotReady", f"0 of {desired} desired replicas ready{why}")
    elif router_ready == 0:
        verdict = ("False", "RouterNotReady", f"{ready} of {desired} desired replicas ready, router not ready")
    elif ready != desired or current != desired:
        verdict = ("True", "Scaling", f"{ready} replicas ready, {current} running, {desired} desired")
    else:
        verdict = ("True", "Ready", f"{ready} of {desired} replicas ready")
    if degraded is None and stuck is not None:
        degraded = (stuck.reason, f"{stuck.describe()} (for {int(stuck.since_s)}s, deadline "
                                  f"{eng.progress_deadline_seconds}s)")
    conds = conditions_for(fleet.status.conditions, verdict, generation=gen, now=now, degraded=degraded)
    metrics = _metrics_condition(fleet, discovery=discovery, prometheus_url=prometheus_url)
    parsed = [Condition.model_validate(c) for c in conds]
    parsed = (remove(parsed, METRICS_AVAILABLE) if metrics is None else
              set_condition(parsed, METRICS_AVAILABLE, *metrics, generation=gen, now=now))
    pool = _inference_pool_condition(fleet, capabilities)
    parsed = (remove(parsed, INFERENCE_POOL_AVAILABLE) if pool is None else
              set_condition(parsed, INFERENCE_POOL_AVAILABLE, *pool, generation=gen, now=now))
    return {
        "observedGeneration": gen,
        "replicas": current,
        "readyReplicas": ready,
        "selector": selector_string(fleet),
        "endpoint": fleet_url(fleet.name, fleet.namespace),
        "servedModelName": fleet.served_model_name,
        "gpusPerReplica": eng.gpus,
        "podsPerReplica": eng.pods_per_replica,
        "workload": workload,
        "metricsDiscovery": discovery,
        "adapters": [a.name for a in fleet.spec.adapters],
        "conditions": [c.wire() for c in parsed],
    }


def _job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (job.get("status") or {}).get("conditions") or []
                 if c.get("type") == type_ and c.get("status") == "True"), None)


def vectorindex(index: VectorIndex, *, job: dict[str, Any] | None, uri: str, now: str,
                summary: dict[str, int] | None = None) -> dict[str, Any]:
    """`summary` adds up the workers' reports (documents, chunks, skippedDocuments) when the Job has finished."""
    gen = index.metadata.generation
    out: dict[str, Any] = {"observedGeneration": gen, "collection": index.collection, "uri": uri}
    degraded = None
    if job is None:
        out["phase"] = "Pending"
        verdict: Verdict = ("False", "Pending", "creating the ingestion Job")
    else:
        out["job"] = job["metadata"]["name"]
        done = _job_condition(job, "Complete")
        fail = _job_condition(job, "Failed")
        if fail:
            out["phase"] = "Failed"
            msg = f"ingestion Job {out['job']} failed: {fail.get('reason', '')} {fail.get('message', '')}".strip()
            verdict = ("False", "IngestionFailed", msg)
            degraded = ("IngestionFailed", msg)
        elif done:
            out["phase"] = "Ready"
            out["lastIngestTime"] = done.get("lastTransitionTime") or now
            verdict = ("True", "Ready", f"collection {index.collection} ingested by {out['job']}")
        else:
            out["phase"] = "Ingesting"
            succeeded = _int(job, "status", "succeeded")
            verdict = ("False", "Ingesting",
                       f"{succeeded}/{index.spec.ingestion.workers} ingestion workers finished")
    if summary:
        out.update({k: v for k, v in summary.items() if k in ("documents", "chunks", "skippedDocuments")})
    out["conditions"] = conditions_for(index.status.conditions, verdict, generation=gen, now=now, degraded=degraded)
    return out


# --- AgentApp evaluation ----------------------------------------------------------------------------------------

SUMMARY_METRICS = ("successRate", "faithfulness", "ndcgAt10", "costPerSolvedTaskUsd", "leaks", "cases")
"""The metrics of the eval's summary (its termination message) copied into status.evaluation."""
_FLOAT_METRICS = ("successRate", "faithfulness", "ndcgAt10", "costPerSolvedTaskUsd")


class EvalSummary(NamedTuple):
    """One run's summary as read back from its pod: which Job and spec hash ran it, when it finished, the
    metrics (None: not measured)."""

    job: str | None
    spec_hash: str | None
    time: str
    values: dict[str, Any]


def _rfc3339(value: Any) -> str | None:
    """Any RFC 3339 time as the one form status uses (UTC, seconds, Z), so that times compare as strings."""
    if not isinstance(value, str) or not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    t = t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _eval_state(pod: dict[str, Any]) -> dict[str, Any]:
    """The eval container's state (waiting / running / terminated), {} when the kubelet has not reported."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == EVAL_CONTAINER:
            return cs.get("state") or {}
    return {}


def eval_summary(pod: dict[str, Any]) -> EvalSummary | None:
    """The summary an eval pod left as its termination message (whatever its exit code: leaks exit 1), None
    when it left none (still running, or it died first: then the message is its log's tail, not JSON)."""
    term = _eval_state(pod).get("terminated") or {}
    try:
        report = json.loads(term.get("message") or "")
    except ValueError:
        return None
    if not isinstance(report, dict):
        return None
    leaks, cases = report.get("leaks"), report.get("cases")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (leaks, cases)):
        return None
    values: dict[str, Any] = {m: _number(report.get(m)) for m in _FLOAT_METRICS}
    values.update(leaks=leaks, cases=cases)
    labels = (pod.get("metadata") or {}).get("labels") or {}
    when = _rfc3339(report.get("time")) or _rfc3339(term.get("finishedAt")) or ""
    return EvalSummary(job=labels.get("job-name"), spec_hash=labels.get(SPEC_HASH_LABEL), time=when, values=values)


def _pair(value: float, limit: float) -> tuple[str, str]:
    """Both numbers with as few decimals (2 at least) as tell them apart: `0.052 > 0.05`, not `0.05 > 0.05`."""
    if isinstance(value, int) and isinstance(limit, int):
        return str(value), str(limit)
    for digits in range(2, 7):
        a, b = f"{value:.{digits}f}", f"{limit:.{digits}f}"
        if a != b:
            break
    return a, b


def _one(limit: float) -> str:
    """A threshold alone: two decimals when that is exact (`0.80`), else as written (`0.025`)."""
    if isinstance(limit, int):
        return str(limit)
    return f"{limit:.2f}" if round(limit, 2) == limit else f"{limit:g}"


def gate_failures(gate: EvaluationGate, values: dict[str, Any]) -> list[str]:
    """Each metric that fails its threshold, with its value and the threshold, in a fixed order:
    `successRate 0.62 < 0.80`, `leaks 1 > 0`. A gated metric the run did not measure fails too."""
    checks = (("successRate", gate.min_success_rate, "min"), ("faithfulness", gate.min_faithfulness, "min"),
              ("ndcgAt10", gate.min_ndcg_at10, "min"),
              ("costPerSolvedTaskUsd", gate.max_cost_per_solved_task_usd, "max"), ("leaks", gate.max_leaks, "max"))
    out = []
    for metric, limit, kind in checks:
        if limit is None:
            continue
        value = values.get(metric)
        if value is None:
            out.append(f"{metric} not measured ({kind}imum {_one(limit)})")
        elif kind == "min" and value < limit:
            out.append("{} {} < {}".format(metric, *_pair(value, limit)))
        elif kind == "max" and value > limit:
            out.append("{} {} > {}".format(metric, *_pair(value, limit)))
    return out


def _created(obj: dict[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return _rfc3339(meta.get("creationTimestamp")) or "", meta.get("name") or ""


def _eval_failure(job: dict[str, Any], pods: list[dict[str, Any]]) -> str:
    """Why a finished evaluation Job left no summary, from the Job's condition and its pod's container state."""
    name = job["metadata"]["name"]
    cond = _job_condition(job, "Failed")
    why = (f"{cond.get('reason') or 'Failed'}: {cond.get('message') or ''}".strip().rstrip(":") if cond
           else "it completed without writing a summary")
    detail = ""
    for pod in sorted((p for p in pods if ((p.get("metadata") or {}).get("labels") or {}).get("job-name") == name),
                      key=_created, reverse=True):
        state = _eval_state(pod)
        if state.get("waiting"):
            w = state["waiting"]
            detail = f"container {w.get('reason', 'waiting')}: {w.get('message', '')}".strip().rstrip(":")
        elif state.get("terminated"):
            t = state["terminated"]
            tail = (t.get("message") or "").strip().splitlines()
            detail = f"container {t.get('reason', 'terminated')}, exit code {t.get('exitCode')}" + (
                f": {tail[-1][:300]}" if tail else "")
        if detail:
            break
    return (f"evaluation Job {name} ended without a summary ({why})" + (f"; {detail}" if detail else "")
            + f"; see kubectl logs job/{name}")


def evaluation(app: AgentApp, *, jobs: list[dict[str, Any]], pods: list[dict[str, Any]],
               spec_hash: str | None, waiting: str | None = None) -> dict[str, Any] | None:
    """status.evaluation: the newest summary (from the evaluation pods, or the one status already holds when its
    pods are gone: a pruned Job takes them along) and the phase of the newest run. `jobs` and `pods`: this app's
    evaluation Jobs and their pods; `spec_hash`: the hash of what is rendered now (None with `waiting`, the
    reason nothing is rendered)."""
    ev = app.spec.evaluation
    if ev is None:
        return None
    prev = app.status.evaluation or EvaluationStatus()
    jobs = [j for j in jobs if not (j.get("metadata") or {}).get("deletionTimestamp")]
    names = {j["metadata"]["name"] for j in jobs}
    summaries = [s for p in pods if (s := eval_summary(p)) is not None and s.job in names]
    newest = max(summaries, key=lambda s: (s.time, s.job or ""), default=None)

    out: dict[str, Any] = {"phase": None, "job": prev.job, "gate": None, "message": None}
    if newest is not None and (prev.time is None or newest.time >= prev.time):
        out.update(newest.values)
        out["time"] = newest.time or None
        if newest.spec_hash is not None and newest.spec_hash == spec_hash:
            out["observedGeneration"] = app.metadata.generation  # the run evaluated the spec as it is now
        else:
            out["observedGeneration"] = prev.observed_generation if prev.time == newest.time else None
    else:
        stored = prev.wire()
        out.update({m: stored.get(m) for m in SUMMARY_METRICS})
        out["time"], out["observedGeneration"] = prev.time, prev.observed_generation

    latest = max(jobs, key=_created, default=None)
    if waiting is not None:
        out["phase"], out["message"] = "Waiting", waiting
    elif latest is None:
        out["phase"] = "Waiting"
        out["message"] = ("creating the evaluation Job" if ev.on_change
                          else f"the first run is due on the schedule {ev.schedule!r}")
    else:
        out["job"] = latest["metadata"]["name"]
        # One pod per run (backoffLimit 0): its summary means the run is over, whatever the Job says yet.
        if any(s.job == out["job"] for s in summaries):
            out["phase"] = "Succeeded"
            out["message"] = f"evaluation Job {out['job']} finished: {out.get('cases')} cases"
        elif not (_job_condition(latest, "Complete") or _job_condition(latest, "Failed")):
            out["phase"], out["message"] = "Running", f"evaluation Job {out['job']} is running"
        else:
            out["phase"], out["message"] = "Failed", _eval_failure(latest, pods)
    if out.get("cases") is not None:
        out["gate"] = "Failed" if gate_failures(ev.gate, out) else "Passed"
    return {k: out.get(k) for k in ("phase", "job", "gate", "message", *SUMMARY_METRICS, "time",
                                     "observedGeneration")}


def _evaluation_conditions(app: AgentApp, conds: list[Condition], ev: dict[str, Any] | None, *,
                           generation: int | None, now: str) -> list[Condition]:
    if app.spec.evaluation is None or ev is None:
        return remove(conds, EVALUATED)
    phase = ev.get("phase")
    status_: Status = {"Succeeded": "True", "Failed": "False"}.get(phase or "", "Unknown")  # type: ignore[assignment]
    reason = {"Succeeded": "Evaluated", "Failed": "EvaluationFailed"}.get(phase or "", phase or "Waiting")
    return set_condition(conds, EVALUATED, status_, reason, ev.get("message") or "", generation=generation, now=now)


UPSTREAMS_READY = "UpstreamsReady"


def upstreams(app: AgentApp, related: Mapping[tuple[str, str], Resource]) -> list[dict[str, Any]]:
    """The fleets and index `app`'s runtime calls, each with the Ready condition its own status reports."""
    out = []
    kinds = [("ModelFleet", n) for n in app.fleet_names] + (
        [("VectorIndex", app.spec.index.name)] if app.spec.index else [])
    for kind, name in kinds:
        obj = related.get((kind, name))
        if obj is None:
            out.append({"kind": kind, "name": name, "ready": "False", "reason": "NotFound",
                        "message": f"{kind} {name} does not exist or is invalid"})
            continue
        cond = next((c for c in getattr(obj.status, "conditions", []) if c.type == READY), None)
        row = {"kind": kind, "name": name, "ready": cond.status if cond else "Unknown",
               "reason": cond.reason if cond else None, "message": cond.message if cond else None}
        out.append({k: v for k, v in row.items() if v})  # as stored: a list item keeps no empty field
    return out


def _upstreams_condition(conds: list[Condition], ups: list[dict[str, Any]], *, generation: int | None,
                         now: str) -> list[Condition]:
    down = [u for u in ups if u["ready"] != "True"]
    if not down:
        return set_condition(conds, UPSTREAMS_READY, "True", "AllReady",
                             f"{len(ups)} upstreams ready" if ups else "no upstreams", generation=generation,
                             now=now)
    text = "; ".join(f"{u['kind']}/{u['name']}: {u.get('reason') or 'Ready ' + u['ready']}" +
                     (f" ({u['message']})" if u.get("message") else "") for u in down)
    return set_condition(conds, UPSTREAMS_READY, "False", "UpstreamNotReady", text, generation=generation, now=now)


def agentapp(app: AgentApp, *, deployment: dict[str, Any] | None, config_hash: str | None,
             now: str, evaluation: dict[str, Any] | None = None,
             upstreams: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """`evaluation`: status.evaluation as `evaluation()` computed it. A failing gate is Degraded
    (EvaluationRegressed) without touching Ready: the app still serves, and a running evaluation is no reason to
    hold traffic back either."""
    gen = app.metadata.generation
    ready = _int(deployment, "status", "readyReplicas")
    desired = app.spec.replicas
    if deployment is None:
        verdict: Verdict = ("False", "Creating", "creating the runtime Deployment")
    elif desired == 0:
        verdict = ("True", "ScaledToZero", "scaled to zero replicas")
    elif ready == 0:
        verdict = ("False", "ReplicasNotReady", f"0/{desired} runtime replicas ready")
    else:
        verdict = ("True", "Ready", f"{ready}/{desired} runtime replicas ready")
    degraded = None
    if app.spec.evaluation is not None and evaluation and evaluation.get("gate") == "Failed":
        failures = gate_failures(app.spec.evaluation.gate, evaluation)
        degraded = ("EvaluationRegressed", "; ".join(failures) + f" (evaluation finished {evaluation.get('time')})")
    conds = [Condition.model_validate(c) for c in conditions_for(
        app.status.conditions, verdict, generation=gen, now=now, degraded=degraded, degraded_stalls=False)]
    conds = _evaluation_conditions(app, conds, evaluation, generation=gen, now=now)
    if upstreams is not None:
        conds = _upstreams_condition(conds, upstreams, generation=gen, now=now)
    return {
        "observedGeneration": gen,
        **({"upstreams": upstreams} if upstreams is not None else {}),
        "endpoint": f"http://{app.name}.{app.namespace}.svc:{RUNTIME_PORT}/v1",
        "replicas": _int(deployment, "status", "replicas"),
        "readyReplicas": ready,
        "fleets": app.fleet_names,
        "index": app.spec.index.name if app.spec.index else None,
        "budget": app.spec.budget_ref.name if app.spec.budget_ref else None,
        "configHash": config_hash,
        "evaluation": evaluation,
        "conditions": [c.wire() for c in conds],
    }


def window_bounds(window: str, now: dt.datetime) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The current accounting window (UTC, calendar-aligned) containing `now` (a naive `now` is UTC)."""
    now = now.replace(tzinfo=dt.timezone.utc) if now.tzinfo is None else now.astimezone(dt.timezone.utc)
    if window == "total":
        return None, None
    if window == "hour":
        start = now.replace(minute=0, second=0, microsecond=0)
        return start, start + dt.timedelta(hours=1)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if window == "day":
        return day, day + dt.timedelta(days=1)
    if window == "week":
        start = day - dt.timedelta(days=day.weekday())
        return start, start + dt.timedelta(days=7)
    start = day.replace(day=1)
    end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start, end


def _iso(t: dt.datetime | None) -> str | None:
    if t is None:
        return None
    t = t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


BUDGET_EXHAUSTED = "BudgetExhausted"
PRICED = "Priced"
RUNTIME_BUDGET_FIELDS = ("spentTokens", "spentUsd", "windowStart", "windowEnd")
"""Budget status fields the runtime writes (runtime/budget_status.py, from its ledger); the operator never does."""


def _priced_condition(problems: Sequence[PriceProblem], *, is_referenced: bool) -> tuple[Status, str, str]:
    if not is_referenced:
        return "Unknown", "NotReferenced", "no AgentApp references this Budget"
    errors = [p for p in problems if p.is_error]
    worst = errors or list(problems)
    if not worst:
        return "True", "AllFleetsPriced", "every fleet of the apps using this Budget is priced"
    return "False", worst[0].reason, "; ".join(f"{p.path}: {p.message}" for p in worst)


LEDGER_NOT_SHARED = "LedgerNotShared"


def unshared_ledgers(b: Budget, apps: Sequence[AgentApp]) -> str | None:
    """Why the AgentApps using `b` do not draw on one counter, or None: in a cluster a SQLite ledger lives on its
    app's own claim, so two apps (one of them on SQLite) each count the Budget's spend apart."""
    users = sorted(a.name for a in apps if a.namespace == b.namespace and a.spec.budget_ref is not None
                   and a.spec.budget_ref.name == b.name)
    local = sorted(a.name for a in apps if a.name in users and a.spec.ledger.backend == "sqlite")
    if len(users) < 2 or not local:
        return None
    return (f"AgentApps {', '.join(users)} use this Budget but {', '.join(local)} keep"
            f"{'s' if len(local) == 1 else ''} a SQLite ledger of their own: each counts spend apart, so together they "
            "may spend more than the limits; give them all ledger.backend redis on one Redis (redisUrlSecretRef)")


LOW_BAND_NOT_QUEUED = "LowBandNotQueued"


def unqueued_fleets(b: Budget, apps: Sequence[AgentApp], fleets: Mapping[str, ModelFleet]) -> str | None:
    """Why degradeBy low-priority (or both) would change nothing, or None: the low band waits in the fleet router's
    fair queue, and a fleet the apps using `b` call (large or small) has router.fairQueue off."""
    if b.spec.degrade_by == "small-model":
        return None
    names = {n for a in apps if a.namespace == b.namespace and a.spec.budget_ref is not None
             and a.spec.budget_ref.name == b.name for n in (a.spec.fleets.large, a.spec.fleets.small) if n}
    off = sorted(n for n in names if (f := fleets.get(n)) is not None and not f.spec.router.fair_queue)
    if not off:
        return None
    many = len(off) > 1
    return (f"degradeBy {b.spec.degrade_by}: ModelFleet{'s' * many} {', '.join(off)} {'have' if many else 'has'} "
            f"router.fairQueue off, so nothing waits in {'their routers' if many else 'its router'} and a degraded "
            "task's low-priority calls go as soon as anyone's; set router.fairQueue: true (with engine.maxNumSeqs)")


def budget(b: Budget, *, now: dt.datetime, prices: Sequence[PriceProblem] = (),
           is_referenced: bool = True, unshared: str | None = None, unqueued: str | None = None) -> dict[str, Any]:
    """Remaining allowance and conditions. One writer per field: spentTokens, spentUsd, windowStart and windowEnd
    (RUNTIME_BUDGET_FIELDS) belong to the runtime, which publishes its ledger's current window; the operator
    derives the rest from them and the spec, so a raised limit shows at once and spend from a window that has
    turned since (no runtime publishing) counts as nothing. Exhausted: Ready stays True (the Budget is enforced)
    with reason Exhausted, Degraded is True (BudgetExhausted). `prices`: problems of the price table against the
    apps that reference the Budget (render.price_problems); a row matching no fleet makes it not Ready.
    `unshared`: unshared_ledgers() of those apps, Degraded (LedgerNotShared) when set; `unqueued`:
    unqueued_fleets(), Degraded (LowBandNotQueued) when set and nothing worse is."""
    gen = b.metadata.generation
    start, _ = window_bounds(b.spec.window, now)
    same_window = b.status.window_start in (None, _iso(start))  # None: a `total` window
    spent_usd = b.status.spent_usd if same_window else 0.0
    spent_tokens = b.status.spent_tokens if same_window else 0
    lim = b.spec.limits
    remaining_usd = None if lim.cost_usd is None else max(0.0, round(lim.cost_usd - spent_usd, 6))
    remaining_tokens = None if lim.tokens is None else max(0, lim.tokens - spent_tokens)
    exhausted = remaining_usd == 0 or remaining_tokens == 0
    stamp = _iso(now) or ""
    priced = _priced_condition(prices, is_referenced=is_referenced)
    exhausted_msg = ""
    if exhausted:
        what = "money" if remaining_usd == 0 else "tokens"
        action = "rejecting requests" if b.spec.on_exhausted == "reject" else "degrading to the small model"
        exhausted_msg = f"{what} exhausted for this {b.spec.window}; {action}"
    if priced[1] == PRICE_MATCHES_NO_FLEET:
        verdict: Verdict = ("False", PRICE_MATCHES_NO_FLEET, priced[2])
    elif exhausted:
        verdict = ("True", "Exhausted", exhausted_msg)
    else:
        verdict = ("True", "Ready", "within budget")
    degraded = ((BUDGET_EXHAUSTED, exhausted_msg) if exhausted
                else (PRICE_MATCHES_NO_FLEET, priced[2]) if priced[1] == PRICE_MATCHES_NO_FLEET
                else (LEDGER_NOT_SHARED, unshared) if unshared
                else (LOW_BAND_NOT_QUEUED, unqueued) if unqueued else None)
    conds = [Condition.model_validate(c)
             for c in conditions_for(b.status.conditions, verdict, generation=gen, now=stamp, degraded=degraded,
                                     degraded_stalls=False)]
    conds = set_condition(conds, "Exhausted", "True" if exhausted else "False",
                          "Exhausted" if exhausted else "WithinBudget", exhausted_msg,
                          generation=gen, now=stamp)
    conds = set_condition(conds, PRICED, *priced, generation=gen, now=stamp)
    return {
        "observedGeneration": gen,
        "remainingUsd": remaining_usd,
        "remainingTokens": remaining_tokens,
        "conditions": [c.wire() for c in conds],
    }
