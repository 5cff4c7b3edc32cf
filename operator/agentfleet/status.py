"""Pure status computation: (resource, what its children report, now) -> the status to write. Conditions follow
one vocabulary for all four kinds: Ready, Progressing, Degraded, each with a reason a human can act on."""

from __future__ import annotations

import datetime as dt
from typing import Any

from .api import AgentApp, Budget, Condition, ModelFleet, VectorIndex
from .conditions import DEGRADED, PROGRESSING, READY, Status, set_condition
from .errors import AgentfleetError
from .names import RUNTIME_PORT, fleet_url
from .render.meta import selector_labels
from .render.modelfleet import ENGINE_APP

__all__ = ["Verdict", "conditions_for", "failed", "modelfleet", "vectorindex", "agentapp", "budget",
           "window_bounds", "selector_string"]

Verdict = tuple[Status, str, str]
"""(Ready status, reason, message)."""


# Ready=True reasons that still mean work in flight (Progressing stays True).
_MOVING = {"Scaling"}


def conditions_for(current: list[Condition], verdict: Verdict, *, generation: int | None, now: str,
                   degraded: tuple[str, str] | None = None) -> list[dict[str, Any]]:
    """Ready from the verdict; Progressing while not (fully) ready and not failed; Degraded when given a
    (reason, message)."""
    ready, reason, message = verdict
    conds = set_condition(current, READY, ready, reason, message, generation=generation, now=now)
    progressing: Status = "True" if (ready != "True" or reason in _MOVING) and degraded is None else "False"
    conds = set_condition(conds, PROGRESSING, progressing, reason if progressing == "True" else "Stable",
                          message if progressing == "True" else "", generation=generation, now=now)
    if degraded:
        conds = set_condition(conds, DEGRADED, "True", degraded[0], degraded[1], generation=generation, now=now)
    else:
        conds = set_condition(conds, DEGRADED, "False", "AsExpected", "", generation=generation, now=now)
    return [c.wire() for c in conds]


def failed(current: list[Condition], err: AgentfleetError, *, generation: int | None, now: str) -> dict[str, Any]:
    """The status patch for a spec error (Degraded, no retry) or a missing dependency (Progressing, retried)."""
    message = getattr(err, "message", str(err))
    degraded = (err.reason, message) if err.reason == "InvalidSpec" else None
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


def modelfleet(fleet: ModelFleet, *, statefulset: dict[str, Any] | None, router: dict[str, Any] | None,
               now: str) -> dict[str, Any]:
    gen = fleet.metadata.generation
    ready = _int(statefulset, "status", "readyReplicas")
    current = _int(statefulset, "status", "replicas")
    desired = fleet.spec.replicas
    router_ready = _int(router, "status", "readyReplicas")
    if fleet.spec.base_url:
        return {
            "observedGeneration": gen, "replicas": 0, "readyReplicas": 0, "selector": selector_string(fleet),
            "endpoint": fleet.spec.base_url, "servedModelName": fleet.served_model_name,
            "conditions": conditions_for(fleet.status.conditions,
                                         ("True", "External", f"served by {fleet.spec.base_url}"),
                                         generation=gen, now=now),
        }
    if statefulset is None:
        verdict: Verdict = ("False", "Creating", "creating the vLLM StatefulSet")
    elif desired == 0 and current == 0:
        verdict = ("True", "ScaledToZero", "scaled to zero replicas")
    elif desired == 0:
        verdict = ("True", "Scaling", f"{ready} replicas ready, {current} running, 0 desired")
    elif ready == 0:
        verdict = ("False", "ReplicasNotReady", f"0 of {desired} desired replicas ready (loading the model?)")
    elif router_ready == 0:
        verdict = ("False", "RouterNotReady", f"{ready} of {desired} desired replicas ready, router not ready")
    elif ready != desired or current != desired:
        verdict = ("True", "Scaling", f"{ready} replicas ready, {current} running, {desired} desired")
    else:
        verdict = ("True", "Ready", f"{ready} of {desired} replicas ready")
    return {
        "observedGeneration": gen,
        "replicas": current,
        "readyReplicas": ready,
        "selector": selector_string(fleet),
        "endpoint": fleet_url(fleet.name, fleet.namespace),
        "servedModelName": fleet.served_model_name,
        "conditions": conditions_for(fleet.status.conditions, verdict, generation=gen, now=now),
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


def agentapp(app: AgentApp, *, deployment: dict[str, Any] | None, config_hash: str | None,
             now: str) -> dict[str, Any]:
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
    return {
        "observedGeneration": gen,
        "endpoint": f"http://{app.name}.{app.namespace}.svc:{RUNTIME_PORT}/v1",
        "replicas": _int(deployment, "status", "replicas"),
        "readyReplicas": ready,
        "fleets": app.fleet_names,
        "index": app.spec.index.name if app.spec.index else None,
        "budget": app.spec.budget_ref.name if app.spec.budget_ref else None,
        "configHash": config_hash,
        "conditions": conditions_for(app.status.conditions, verdict, generation=gen, now=now),
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


def budget(b: Budget, *, now: dt.datetime) -> dict[str, Any]:
    """Window and remaining allowance. One writer per field: spentUsd/spentTokens belong to the runtime's ledger
    (which resets them when its window turns); the operator only derives remaining and Exhausted from them."""
    gen = b.metadata.generation
    start, end = window_bounds(b.spec.window, now)
    same_window = b.status.window_start in (None, _iso(start))
    spent_usd = b.status.spent_usd if same_window else 0.0
    spent_tokens = b.status.spent_tokens if same_window else 0
    lim = b.spec.limits
    remaining_usd = None if lim.cost_usd is None else max(0.0, round(lim.cost_usd - spent_usd, 6))
    remaining_tokens = None if lim.tokens is None else max(0, lim.tokens - spent_tokens)
    exhausted = remaining_usd == 0 or remaining_tokens == 0
    stamp = _iso(now)
    if exhausted:
        what = "money" if remaining_usd == 0 else "tokens"
        action = "rejecting requests" if b.spec.on_exhausted == "reject" else "degrading to the small model"
        verdict: Verdict = ("True", "Exhausted", f"{what} exhausted for this {b.spec.window}; {action}")
    else:
        verdict = ("True", "Ready", "within budget")
    conds = [Condition.model_validate(c)
             for c in conditions_for(b.status.conditions, verdict, generation=gen, now=stamp or "")]
    conds = set_condition(conds, "Exhausted", "True" if exhausted else "False",
                          "Exhausted" if exhausted else "WithinBudget", verdict[2] if exhausted else "",
                          generation=gen, now=stamp or "")
    return {
        "observedGeneration": gen,
        "windowStart": _iso(start),
        "windowEnd": _iso(end),
        "remainingUsd": remaining_usd,
        "remainingTokens": remaining_tokens,
        "conditions": [c.wire() for c in conds],
    }
