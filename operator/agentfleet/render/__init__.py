"""Pure rendering: (resource, the resources it references, defaults) -> child manifests. No cluster access;
the same functions back the operator, `agentfleet render` and `agentfleet up`."""

from __future__ import annotations

from typing import Any

from ..api import AgentApp, Budget, ModelFleet, Resource, VectorIndex
from ..errors import DependencyMissing
from ..names import CONFIG_HASH_ANNOTATION, fleet_url
from .agentapp import agentapp, runtime_config
from .cluster import INFERENCE_POOL, LEADER_WORKER_SET, POD_MONITOR, Capabilities
from .defaults import Defaults
from .evaluation import evaluation
from .meta import child_meta, labels, owner_reference, selector_labels, stable_hash
from .modelfleet import modelfleet
from .prices import PriceProblem, price_problems, price_row
from .vectorindex import connection, drop_job, ingest_job, vectorindex

__all__ = [
    "Defaults", "Capabilities", "Related", "render", "references", "missing_references", "modelfleet",
    "vectorindex", "agentapp",
    "runtime_config", "evaluation", "connection", "ingest_job", "drop_job", "child_meta", "labels",
    "owner_reference", "selector_labels",
    "stable_hash", "CHILD_KINDS", "PriceProblem", "price_problems", "price_row",
]

# What each kind may own, for pruning and RBAC: (apiVersion, kind).
CHILD_KINDS: dict[str, tuple[tuple[str, str], ...]] = {
    "ModelFleet": (("v1", "Service"), ("apps/v1", "StatefulSet"), ("policy/v1", "PodDisruptionBudget"),
                   ("v1", "ServiceAccount"), ("rbac.authorization.k8s.io/v1", "Role"),
                   ("rbac.authorization.k8s.io/v1", "RoleBinding"), ("apps/v1", "Deployment"),
                   ("networking.k8s.io/v1", "NetworkPolicy"), POD_MONITOR, LEADER_WORKER_SET,
                   INFERENCE_POOL),
    "VectorIndex": (("v1", "ConfigMap"), ("v1", "Service"), ("apps/v1", "StatefulSet"),
                    ("networking.k8s.io/v1", "NetworkPolicy"), ("milvus.io/v1beta1", "Milvus"), ("batch/v1", "Job")),
    "AgentApp": (("v1", "ServiceAccount"), ("v1", "ConfigMap"), ("apps/v1", "Deployment"), ("v1", "Service"),
                 ("batch/v1", "Job"), ("batch/v1", "CronJob"), ("v1", "PersistentVolumeClaim"),
                 ("rbac.authorization.k8s.io/v1", "Role"), ("rbac.authorization.k8s.io/v1", "RoleBinding")),
    "Budget": (),
}

Related = dict[tuple[str, str], Resource]
"""Objects a resource may reference, keyed by (kind, name) in its namespace."""


def references(obj: Resource) -> list[tuple[str, str]]:
    """(kind, name) of every object `obj` references in its namespace, in a stable order."""
    wanted: list[tuple[str, str]] = []
    if isinstance(obj, AgentApp):
        wanted += [("ModelFleet", n) for n in obj.fleet_names]
        if obj.spec.index:
            wanted.append(("VectorIndex", obj.spec.index.name))
        if obj.spec.budget_ref:
            wanted.append(("Budget", obj.spec.budget_ref.name))
    elif isinstance(obj, VectorIndex) and obj.spec.embedding.fleet_ref:
        wanted.append(("ModelFleet", obj.spec.embedding.fleet_ref.name))
    return wanted


def missing_references(obj: Resource, related: Related) -> list[str]:
    """`Kind/name` of every referenced object not in `related`."""
    return [f"{k}/{n}" for k, n in references(obj) if (k, n) not in related]


def render(obj: Resource, *, related: Related, defaults: Defaults,
           suite: dict[str, Any] | None = None, capabilities: Capabilities | None = None) -> list[dict[str, Any]]:
    """Every child of `obj`. Raises DependencyMissing when a reference is not in `related`. `suite`: the
    ConfigMap named by an AgentApp's spec.evaluation.suiteRef, None while it does not exist (no evaluation runs;
    it is not a dependency: the app itself serves without it). `capabilities`: what the cluster offers a
    ModelFleet (PodMonitor, LeaderWorkerSet, InferencePool, GPUs per node); None renders offline."""
    missing = missing_references(obj, related)
    if missing:
        raise DependencyMissing(obj.ref(), missing)
    if isinstance(obj, ModelFleet):
        return modelfleet(obj, defaults, capabilities)
    if isinstance(obj, VectorIndex):
        ref = obj.spec.embedding.fleet_ref
        if ref is None:
            return vectorindex(obj, defaults)
        emb = related[("ModelFleet", ref.name)]
        return vectorindex(obj, defaults, embedder_url=fleet_url(ref.name, obj.namespace),
                           embedder_model=emb.served_model_name)  # type: ignore[attr-defined]
    if isinstance(obj, AgentApp):
        fleets = {n: related[("ModelFleet", n)] for n in obj.fleet_names}
        index = related[("VectorIndex", obj.spec.index.name)] if obj.spec.index else None
        budget = related[("Budget", obj.spec.budget_ref.name)] if obj.spec.budget_ref else None
        children = agentapp(obj, defaults, fleets=fleets, index=index, budget=budget)  # type: ignore[arg-type]
        deployment = next(c for c in children if c["kind"] == "Deployment")
        runtime_hash = deployment["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION]
        return children + evaluation(obj, defaults, suite=suite, runtime_hash=runtime_hash,
                                     fleets=fleets)  # type: ignore[arg-type]
    if isinstance(obj, Budget):
        return []
    raise TypeError(f"cannot render {type(obj).__name__}")
