"""Metadata every child shares: the recommended labels, the owner reference that lets Kubernetes garbage-collect
it, and the stable hash that names children which cannot change in place."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ..api import Resource
from ..names import LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME, LABEL_PART_OF, MANAGED_BY

__all__ = ["selector_labels", "pod_labels", "labels", "owner_reference", "child_meta", "stable_hash"]


def selector_labels(owner: Resource, *, app: str, component: str) -> dict[str, str]:
    """The immutable subset used in selectors (never add to it: a StatefulSet's selector cannot change)."""
    return {LABEL_NAME: app, LABEL_INSTANCE: owner.name, LABEL_COMPONENT: component}


def pod_labels(owner: Resource, *, app: str, component: str) -> dict[str, str]:
    """Labels of a pod template: ours only. The owner's own labels stay off pods, since changing a template
    restarts every pod (for a vLLM fleet: minutes of model loading per replica)."""
    return {**selector_labels(owner, app=app, component=component), LABEL_MANAGED_BY: MANAGED_BY,
            LABEL_PART_OF: owner.kind.lower()}


def labels(owner: Resource, *, app: str, component: str) -> dict[str, str]:
    return {**owner.metadata.labels, **pod_labels(owner, app=app, component=component)}


def owner_reference(owner: Resource) -> dict[str, Any]:
    return {
        "apiVersion": owner.api_version,
        "kind": owner.kind,
        "name": owner.name,
        "uid": owner.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_meta(owner: Resource, name: str, *, app: str, component: str,
               annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """metadata of a child. Without a uid (an offline `agentfleet render`) there is no owner reference yet."""
    meta: dict[str, Any] = {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, app=app, component=component),
    }
    if annotations:
        meta["annotations"] = annotations
    if owner.metadata.uid:
        meta["ownerReferences"] = [owner_reference(owner)]
    return meta


def stable_hash(value: Any, length: int = 10) -> str:
    """A short hash of JSON-able data that does not depend on key order or process."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
