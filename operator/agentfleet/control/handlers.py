"""kopf registrations, nothing more: each handler hands the object to `reconcile` and maps the error tree to
kopf (a spec error is permanent, a missing dependency or an upstream failure is retried with a delay)."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic.exceptions import DynamicApiError

from .. import status
from ..api import AgentApp
from ..errors import DependencyMissing, SpecError, UpstreamError
from ..names import ANNOTATION_PREFIX, FINALIZER, GROUP, LABEL_MANAGED_BY, MANAGED_BY, VERSION
from ..render import Defaults
from ..render.evaluation import EVALUATION_LABEL
from . import reconcile as rec
from . import autoscaler  # noqa: F401  (registers the autoscaler timer)
from .kube import Kube

__all__ = ["PLURALS", "configure"]

PLURALS = {"ModelFleet": "modelfleets", "VectorIndex": "vectorindexes", "AgentApp": "agentapps",
           "Budget": "budgets"}
DEPENDENCY_RETRY_S = 15
UPSTREAM_RETRY_S = 10
DRIFT_INTERVAL_S = 60


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _plain(body: Any) -> dict[str, Any]:
    """kopf's Body is a read-only view; the reconciler wants plain dicts."""
    if hasattr(body, "items"):
        return {k: _plain(v) for k, v in body.items()}
    if isinstance(body, list):
        return [_plain(v) for v in body]  # type: ignore[return-value]
    return body


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Decided once (design.md): changing these later makes kopf re-handle every object.
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration")
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300
    settings.networking.request_timeout = 60
    if getattr(memo, "kube", None) is None:
        memo.kube = Kube()
    if getattr(memo, "defaults", None) is None:
        memo.defaults = Defaults()


@kopf.on.login()
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    # kopf's watches use the credentials of the client that applies the children, not a second lookup of
    # ~/.kube/config (which kwokctl, kind and others leave pointing at clusters long gone).
    return memo.kube.connection_info()


def namespace_terminating(err: BaseException) -> bool:
    """The API server's refusal to create anything in a namespace being deleted (403, cause
    NamespaceTerminating): the resource goes with its namespace, so there is nothing to converge or retry."""
    status = getattr(err, "status", None)
    body = getattr(err, "body", None)
    return status == 403 and "NamespaceTerminating" in (body.decode(errors="replace") if isinstance(body, bytes)
                                                        else str(body))


def _converge(body: Any, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    plain = _plain(body)
    try:
        obj = rec.reconcile(memo.kube, plain, defaults=memo.defaults, now=_now())
    except SpecError as err:
        raise kopf.PermanentError(str(err)) from None
    except DependencyMissing as err:
        raise kopf.TemporaryError(str(err), delay=DEPENDENCY_RETRY_S) from None
    except (UpstreamError, ApiException, DynamicApiError) as err:
        if namespace_terminating(err):
            logger.info("namespace %s is being deleted: nothing to converge", (plain.get("metadata") or {})
                        .get("namespace"))
            return
        raise kopf.TemporaryError(f"{type(err).__name__}: {err}", delay=UPSTREAM_RETRY_S) from None
    logger.debug("reconciled %s", obj.ref())
    if isinstance(obj, AgentApp):
        _refresh_budget(memo, obj.namespace, (obj.spec.budget_ref.name if obj.spec.budget_ref else None), logger)
    if obj.kind in ("ModelFleet", "VectorIndex", "Budget"):
        budgets: set[str] = set()
        for dep in rec.dependents(memo.kube, obj.kind, obj.name, obj.namespace):
            try:
                rec.reconcile(memo.kube, dep, defaults=memo.defaults, now=_now())
            except (SpecError, DependencyMissing, UpstreamError) as err:
                logger.info("dependent %s not converged yet: %s", dep["metadata"]["name"], err)
            budgets.add(((dep.get("spec") or {}).get("budgetRef") or {}).get("name") or "")
        if obj.kind == "ModelFleet":  # its pricing and fair queue show in the Budgets of the apps using it
            for name in sorted(budgets - {""}):  # once each, however many of its apps use the fleet
                _refresh_budget(memo, obj.namespace, name, logger)


def _refresh_budget(memo: kopf.Memo, namespace: str, name: str | None, logger: logging.Logger) -> None:
    """The Budget's price table and low band are checked against the fleets of the apps using it (its Priced
    condition, Degraded LowBandNotQueued): refresh its status after one of them changed."""
    if not name:
        return
    try:
        rec.refresh(memo.kube, "Budget", name, namespace, defaults=memo.defaults, now=_now())
    except (UpstreamError, ApiException, DynamicApiError) as err:
        logger.info("budget %s status not refreshed: %s", name, err)


def _drift(body: Any, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """The slow timer: same reconcile; failures are already in status and are retried at the next tick."""
    try:
        _converge(body, memo, logger)
    except (kopf.PermanentError, kopf.TemporaryError) as err:
        logger.debug("drift check: %s", err)


for _kind, _plural in PLURALS.items():
    kopf.on.resume(GROUP, VERSION, _plural, id=f"reconcile-{_plural}")(_converge)
    kopf.on.create(GROUP, VERSION, _plural, id=f"reconcile-{_plural}")(_converge)
    kopf.on.update(GROUP, VERSION, _plural, id=f"reconcile-{_plural}")(_converge)
    kopf.timer(GROUP, VERSION, _plural, id=f"drift-{_plural}", interval=DRIFT_INTERVAL_S,
               initial_delay=DRIFT_INTERVAL_S)(_drift)


@kopf.on.delete(GROUP, VERSION, "vectorindexes", id="drop-external-collection")
def _drop_collection(body: Any, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Every VectorIndex carries the finalizer (design.md: external state); only an external collection under
    deletionPolicy Delete needs work, the rest returns at once and deletion proceeds."""
    if not rec.needs_cleanup(_plain(body)):
        return
    try:
        state = rec.finalize_vectorindex(memo.kube, _plain(body), defaults=memo.defaults)
    except (UpstreamError, ApiException, DynamicApiError) as err:
        raise kopf.TemporaryError(str(err), delay=UPSTREAM_RETRY_S) from None
    if state == "running":
        raise kopf.TemporaryError("dropping the collection in the external Milvus", delay=5)
    if state != "done":
        # Keeping the object forever would block its namespace; the message says what to clean up by hand.
        logger.error("collection not dropped (%s); drop it by hand or set deletionPolicy Retain", state)


def _child_changed(body: Any, memo: kopf.Memo, **_: Any) -> None:
    """A child's status moved (pods became ready, a Job finished): refresh the owner's status. A scheduled
    evaluation's Job belongs to its CronJob: its label names the AgentApp instead."""
    meta = body.get("metadata") or {}
    owners = [(ref["kind"], ref["name"]) for ref in meta.get("ownerReferences") or []
              if ref.get("controller") and str(ref.get("apiVersion", "")).startswith(f"{GROUP}/")]
    evaluated = (meta.get("labels") or {}).get(EVALUATION_LABEL)
    if not owners and evaluated:
        owners = [("AgentApp", evaluated)]
    for kind, name in owners:
        try:
            rec.refresh(memo.kube, kind, name, meta["namespace"], defaults=memo.defaults, now=_now())
            # The apps that call this fleet or index show its readiness (status.upstreams, UpstreamsReady).
            if kind in ("ModelFleet", "VectorIndex"):
                for dep in rec.dependents(memo.kube, kind, name, meta["namespace"]):
                    if dep.get("kind") == "AgentApp":
                        rec.refresh(memo.kube, "AgentApp", dep["metadata"]["name"], meta["namespace"],
                                    defaults=memo.defaults, now=_now())
        except (UpstreamError, ApiException, DynamicApiError) as err:
            raise kopf.TemporaryError(str(err), delay=UPSTREAM_RETRY_S) from None


@kopf.on.event(GROUP, VERSION, "budgets", id="budget-spend")
def _budget_spend(body: Any, type: str | None, memo: kopf.Memo, logger: logging.Logger,  # noqa: A002 - kopf's
                  **_: Any) -> None:
    """The runtime published spend (status.spentUsd and the rest of status.RUNTIME_BUDGET_FIELDS): re-derive
    remaining and Exhausted now rather than at the next drift tick. kopf's update handlers never see status
    changes, so this watches every event; a refresh that changes nothing writes nothing (no loop on our own
    status writes)."""
    if type == "DELETED" or not any(k in (body.get("status") or {}) for k in status.RUNTIME_BUDGET_FIELDS):
        return
    meta = body.get("metadata") or {}
    try:
        rec.refresh(memo.kube, "Budget", meta["name"], meta.get("namespace", "default"), defaults=memo.defaults,
                    now=_now())
    except (UpstreamError, ApiException, DynamicApiError) as err:
        # kopf does not retry event handlers: the drift timer catches up.
        logger.info("budget status not refreshed: %s", err)


_MANAGED = {LABEL_MANAGED_BY: MANAGED_BY}
kopf.on.event("apps", "v1", "statefulsets", labels=_MANAGED, id="child-statefulsets")(_child_changed)
kopf.on.event("apps", "v1", "deployments", labels=_MANAGED, id="child-deployments")(_child_changed)
# A ModelFleet whose replicas span nodes (served only where LeaderWorkerSet is installed; kopf starts watching it
# when its CRD appears).
kopf.on.event("leaderworkerset.x-k8s.io", "v1", "leaderworkersets", labels=_MANAGED,
              id="child-leaderworkersets")(_child_changed)
kopf.on.event("batch", "v1", "jobs", labels=_MANAGED, id="child-jobs")(_child_changed)
