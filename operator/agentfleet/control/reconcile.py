"""One idempotent reconcile per kind: parse -> resolve references -> render -> server-side apply -> prune what
is no longer rendered -> observe the children -> write status. resume, create, update, the drift timer and
child events all end up here, so a restart or a missed event converges to the same state."""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from .. import render, status
from ..api import KINDS, AgentApp, Budget, Condition, ModelFleet, Resource, VectorIndex, parse
from ..errors import AgentfleetError, CRDNotServed, DependencyMissing, SpecError, UpstreamError
from ..names import (
    API_VERSION, CONFIG_HASH_ANNOTATION, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_PART_OF, MANAGED_BY,
    SPEC_HASH_LABEL, engine_name, router_name,
)
from ..render import Defaults
from ..render.cluster import INFERENCE_POOL, LEADER_WORKER_SET, POD_MONITOR
from ..render.evaluation import EVALUATION_LABEL, waiting_message
from . import cluster
from .kube import Kube

__all__ = ["reconcile", "refresh", "dependents", "observe", "needs_cleanup", "finalize_vectorindex"]

log = logging.getLogger(__name__)


def _stamp(now: dt.datetime) -> str:
    return now.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _current_conditions(body: dict[str, Any]) -> list[Condition]:
    out = []
    for c in ((body.get("status") or {}).get("conditions") or []):
        try:
            out.append(Condition.model_validate(c))
        except ValueError:
            continue
    return out


def _stored(value: Any) -> Any:
    """A status value as the API server keeps it: a merge patch's nulls inside objects remove the field."""
    if isinstance(value, dict):
        return {k: _stored(v) for k, v in value.items() if v is not None}
    return value


def _write_status(kube: Kube, body: dict[str, Any], new: dict[str, Any]) -> bool:
    """Patch only what differs, so an unchanged object is not written (no resourceVersion churn)."""
    old = body.get("status") or {}
    diff = {k: v for k, v in new.items() if old.get(k) != _stored(v)}
    if not diff:
        return False
    meta = body["metadata"]
    kube.patch_status(body["kind"], meta["name"], meta.get("namespace", "default"), diff)
    return True


def _related(kube: Kube, obj: Resource) -> render.Related:
    """The referenced objects that exist and parse; an invalid one counts as missing for its dependents."""
    out: render.Related = {}
    for kind, name in render.references(obj):
        body = kube.get(API_VERSION, kind, name, obj.namespace)
        if body is None:
            continue
        try:
            out[(kind, name)] = parse(body)
        except SpecError:
            continue
    return out


def _suite(kube: Kube, obj: Resource) -> dict[str, Any] | None:
    """The ConfigMap holding an AgentApp's evaluation suite (None: no evaluation, or not there yet). The only
    user object the operator reads besides its own kinds; the key store stays a Secret it never reads."""
    if not isinstance(obj, AgentApp) or obj.spec.evaluation is None:
        return None
    return kube.get("v1", "ConfigMap", obj.spec.evaluation.suite_ref.name, obj.namespace)


def _evaluation(kube: Kube, app: AgentApp, children: list[dict[str, Any]]) -> dict[str, Any] | None:
    """status.evaluation from this app's evaluation Jobs (its own and its CronJob's) and their pods."""
    if app.spec.evaluation is None:
        return None
    selector = f"{EVALUATION_LABEL}={app.name}"
    rendered = [c for c in children if EVALUATION_LABEL in c["metadata"].get("labels", {})]
    spec_hash = rendered[0]["metadata"]["labels"][SPEC_HASH_LABEL] if rendered else None
    jobs = kube.list("batch/v1", "Job", app.namespace, label_selector=selector)
    pods = kube.list("v1", "Pod", app.namespace, label_selector=selector)
    ev = status.evaluation(app, jobs=jobs, pods=pods, spec_hash=spec_hash,
                           waiting=None if rendered else waiting_message(app))
    if ev and ev["phase"] == "Failed" and (app.status.evaluation is None or app.status.evaluation.phase != "Failed"
                                           or app.status.evaluation.job != ev["job"]):
        log.warning("%s: %s", app.ref(), ev["message"])
    return ev


def _prune(kube: Kube, obj: Resource, children: list[dict[str, Any]]) -> list[str]:
    """Delete children this object owns but no longer renders (an old ingestion Job, a claim after a mode
    change). Only objects whose controller owner reference carries our uid are touched."""
    keep = {(c["kind"], c["metadata"]["name"]) for c in children}
    selector = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_INSTANCE}={obj.name},{LABEL_PART_OF}={obj.kind.lower()}"
    pruned = []
    caps = _capabilities(kube, obj)
    absent = set() if caps is None else {kind for kind, served in ((POD_MONITOR, caps.pod_monitor),
                                                                   (LEADER_WORKER_SET, caps.leader_worker_set),
                                                                   (INFERENCE_POOL, caps.inference_pool))
                                          if not served}
    for api_version, kind in render.CHILD_KINDS[obj.kind]:
        if (api_version, kind) in absent:
            continue  # known not served (detected, cached): no discovery round-trip per reconcile
        try:
            existing = kube.list(api_version, kind, obj.namespace, label_selector=selector)
        except UpstreamError:
            continue  # kind not served here (the Milvus operator is optional)
        for item in existing:
            meta = item["metadata"]
            owned = any(r.get("uid") == obj.metadata.uid and r.get("controller")
                        for r in meta.get("ownerReferences") or [])
            if owned and (kind, meta["name"]) not in keep:
                kube.delete(api_version, kind, meta["name"], obj.namespace)
                pruned.append(f"{kind}/{meta['name']}")
    return pruned


def _ingest_summary(kube: Kube, namespace: str, job_name: str) -> dict[str, int] | None:
    """Each ingestion worker ends by printing a JSON summary as its termination message; add them up."""
    pods = kube.list("v1", "Pod", namespace, label_selector=f"job-name={job_name}")
    total: dict[str, int] = {}
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = ((cs.get("state") or {}).get("terminated") or {})
            if term.get("exitCode") != 0:
                continue
            try:
                report = json.loads(term.get("message") or "")
            except ValueError:
                continue
            for key in ("documents", "chunks", "skippedDocuments"):
                if isinstance(report.get(key), int):
                    total[key] = total.get(key, 0) + report[key]
    return total or None


def _capabilities(kube: Kube, obj: Resource) -> render.Capabilities | None:
    """What the cluster offers a ModelFleet (PodMonitor, LeaderWorkerSet, InferencePool, GPUs per node); None for
    other kinds."""
    return cluster.capabilities(kube) if isinstance(obj, ModelFleet) and not obj.spec.base_url else None


def _observe_fleet(kube: Kube, fleet: ModelFleet, *, now: str, children: list[dict[str, Any]],
                   defaults: Defaults | None) -> dict[str, Any]:
    """A fleet's status from its engine workload (StatefulSet or LeaderWorkerSet, as rendered), its router and its
    engine pods (their failure reasons)."""
    ns = fleet.namespace
    rendered = next((c for c in children if c["metadata"]["name"] == engine_name(fleet.name)
                     and c["kind"] in ("StatefulSet", "LeaderWorkerSet")), None)
    workload = (kube.get(rendered["apiVersion"], rendered["kind"], engine_name(fleet.name), ns)
                if rendered is not None else None)
    pods = kube.list("v1", "Pod", ns, label_selector=status.selector_string(fleet)) if not fleet.spec.base_url else []
    prom = fleet.spec.autoscaling.prometheus_url or (defaults.prometheus_url if defaults else None)
    return status.modelfleet(fleet, statefulset=workload, router=kube.get("apps/v1", "Deployment",
                                                                          router_name(fleet.name), ns),
                             now=now, pods=pods, capabilities=_capabilities(kube, fleet), prometheus_url=prom)


def observe(kube: Kube, obj: Resource, *, now: dt.datetime, children: list[dict[str, Any]],
            defaults: Defaults | None = None) -> dict[str, Any]:
    """The status `obj` should have, from what its (rendered) children report now."""
    stamp = _stamp(now)
    ns = obj.namespace
    if isinstance(obj, ModelFleet):
        return _observe_fleet(kube, obj, now=stamp, children=children, defaults=defaults)
    if isinstance(obj, VectorIndex):
        job_name = next(c for c in children if c["kind"] == "Job")["metadata"]["name"]
        job = kube.get("batch/v1", "Job", job_name, ns)
        summary = _ingest_summary(kube, ns, job_name) if job else None
        return status.vectorindex(obj, job=job, uri=render.connection(obj).uri, now=stamp, summary=summary)
    if isinstance(obj, AgentApp):
        dep = kube.get("apps/v1", "Deployment", obj.name, ns)
        rendered = next((c for c in children if c["kind"] == "Deployment"), dep)
        cfg_hash = (((rendered or {}).get("spec") or {}).get("template", {}).get("metadata", {})
                    .get("annotations", {}).get(CONFIG_HASH_ANNOTATION))
        return status.agentapp(obj, deployment=dep, config_hash=cfg_hash, now=stamp,
                               evaluation=_evaluation(kube, obj, children),
                               upstreams=status.upstreams(obj, _related(kube, obj)))
    if isinstance(obj, Budget):
        apps, fleets = _budget_users(kube, obj)
        return status.budget(obj, now=now, prices=render.price_problems(obj, apps=apps, fleets=fleets),
                             is_referenced=bool(apps), unshared=status.unshared_ledgers(obj, apps),
                             unqueued=status.unqueued_fleets(obj, apps, fleets))
    raise TypeError(type(obj).__name__)


def _budget_users(kube: Kube, budget: Budget) -> tuple[list[AgentApp], dict[str, ModelFleet]]:
    """The AgentApps referencing `budget` and the ModelFleets they name that exist and parse (its price table is
    checked against them)."""
    apps = [a for body in dependents(kube, "Budget", budget.name, budget.namespace)
            if isinstance(a := _parsed(body), AgentApp)]
    fleets: dict[str, ModelFleet] = {}
    for name in sorted({n for a in apps for n in a.fleet_names}):
        fleet = _parsed(kube.get(API_VERSION, "ModelFleet", name, budget.namespace))
        if isinstance(fleet, ModelFleet):
            fleets[name] = fleet
    return apps, fleets


def _parsed(body: dict[str, Any] | None) -> Resource | None:
    if body is None:
        return None
    try:
        return parse(body)
    except SpecError:
        return None


def reconcile(kube: Kube, body: dict[str, Any], *, defaults: Defaults, now: dt.datetime) -> Resource:
    """Converge one object. Raises SpecError (permanent) or DependencyMissing (retry later) after recording
    them in status; UpstreamError and API errors propagate for the caller to retry."""
    meta = body.get("metadata") or {}
    try:
        obj = parse(body)
        children = render.render(obj, related=_related(kube, obj), defaults=defaults, suite=_suite(kube, obj),
                                 capabilities=_capabilities(kube, obj))
    except (SpecError, DependencyMissing) as err:
        _write_status(kube, body, status.failed(_current_conditions(body), err, generation=meta.get("generation"),
                                                now=_stamp(now)))
        raise
    try:
        for child in children:
            kube.apply(child)
    except CRDNotServed as err:  # a prerequisite operator is missing: say so where the user looks, then retry
        _write_status(kube, body, status.failed(_current_conditions(body), err, generation=meta.get("generation"),
                                                now=_stamp(now)))
        raise
    pruned = _prune(kube, obj, children) if obj.metadata.uid else []
    if pruned:
        log.info("%s: pruned %s", obj.ref(), ", ".join(pruned))
    _write_status(kube, body, observe(kube, obj, now=now, children=children, defaults=defaults))
    return obj


def refresh(kube: Kube, kind: str, name: str, namespace: str, *, defaults: Defaults, now: dt.datetime) -> None:
    """Status only (a child changed): no apply, so a busy StatefulSet does not cause API writes of its own."""
    if kind not in KINDS:
        return
    body = kube.get(API_VERSION, kind, name, namespace)
    if body is None:
        return
    try:
        obj = parse(body)
    except SpecError:
        return  # its own reconcile reports this
    try:
        children = render.render(obj, related=_related(kube, obj), defaults=defaults, suite=_suite(kube, obj),
                                 capabilities=_capabilities(kube, obj))
    except DependencyMissing:
        return  # its own reconcile reports and retries this
    _write_status(kube, body, observe(kube, obj, now=now, children=children, defaults=defaults))


def needs_cleanup(body: dict[str, Any]) -> bool:
    """A VectorIndex whose collection lives outside Kubernetes (external Milvus) and is to be deleted with it.
    Embedded and managed stores are children: garbage collection (and the claim retention policy) handle them."""
    milvus = ((body.get("spec") or {}).get("milvus") or {})
    return milvus.get("mode") == "external" and milvus.get("deletionPolicy", "Delete") == "Delete"


def finalize_vectorindex(kube: Kube, body: dict[str, Any], *, defaults: Defaults) -> str:
    """Drop the external collection through a Job. Returns "done", "running" or "failed: <why>"."""
    try:
        index = parse(body)
    except SpecError as err:
        return f"failed: cannot parse the index to find its collection: {err.message}"
    job = render.drop_job(index, defaults)  # type: ignore[arg-type]
    current = kube.get("batch/v1", "Job", job["metadata"]["name"], index.namespace)
    if current is None:
        try:
            kube.apply(job)
        except Exception as err:  # noqa: BLE001 - only the terminating-namespace refusal is handled here
            if "NamespaceTerminating" not in str(getattr(err, "body", "") or err):
                raise
            # The whole namespace is going: no Job can run in it any more, and waiting would block its deletion.
            return (f"failed: namespace {index.namespace} is being deleted, so collection {index.collection} at "
                    f"{render.connection(index).uri} was not dropped")
        return "running"
    conds = {c.get("type"): c for c in (current.get("status") or {}).get("conditions") or []
             if c.get("status") == "True"}
    if "Complete" in conds:
        return "done"
    if "Failed" in conds:
        return f"failed: Job {job['metadata']['name']}: {conds['Failed'].get('message', '')}"
    return "running"


def dependents(kube: Kube, kind: str, name: str, namespace: str) -> list[dict[str, Any]]:
    """AgentApps (and VectorIndexes) that reference kind/name: they re-render when it changes or appears."""
    out = []
    for dep_kind in ("AgentApp", "VectorIndex"):
        for body in kube.list(API_VERSION, dep_kind, namespace):
            try:
                obj = parse(body)
            except AgentfleetError:
                continue
            if (kind, name) in render.references(obj):
                out.append(body)
    return out
