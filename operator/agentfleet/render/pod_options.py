"""A user's PodOptions laid over a pod template the operator rendered (the runtime, the index's Jobs and
embedded Milvus, the evaluation Jobs): scheduling, pull secrets, metadata, environment, extra volumes and a
securityContext overlay. For an env name both set, the user's value wins (an explicit override); for a label, ours
win (selectors depend on them). The ModelFleet's own renderer merges the same fields itself, interleaved with its
GPU scheduling."""

from __future__ import annotations

from typing import Any

from ..api.base import PodOptions


def overlay(template: dict[str, Any], opts: PodOptions) -> dict[str, Any]:
    """`template` ({metadata, spec} of a pod) with `opts` merged in, in place; returned for chaining."""
    meta = template.setdefault("metadata", {})
    if opts.labels:
        meta["labels"] = {**opts.labels, **meta.get("labels", {})}
    if opts.annotations:
        meta["annotations"] = {**opts.annotations, **meta.get("annotations", {})}
    spec = template["spec"]
    if opts.node_selector:
        spec["nodeSelector"] = {**spec.get("nodeSelector", {}), **opts.node_selector}
    if opts.tolerations:
        spec["tolerations"] = [*spec.get("tolerations", []), *opts.tolerations]
    if opts.affinity:
        spec["affinity"] = opts.affinity
    if opts.priority_class_name:
        spec["priorityClassName"] = opts.priority_class_name
    if opts.image_pull_secrets:
        spec["imagePullSecrets"] = [*spec.get("imagePullSecrets", []),
                                    *({"name": r.name} for r in opts.image_pull_secrets)]
    if opts.volumes:
        spec["volumes"] = [*spec.get("volumes", []), *opts.volumes]
    if opts.security_context:
        spec["securityContext"] = {**spec.get("securityContext", {}), **opts.security_context}
    theirs = {e.get("name") for e in opts.env}
    for c in spec["containers"]:
        if opts.env:
            c["env"] = [e for e in c.get("env", []) if e["name"] not in theirs] + list(opts.env)
        if opts.env_from:
            c["envFrom"] = [*c.get("envFrom", []), *opts.env_from]
        if opts.volume_mounts:
            c["volumeMounts"] = [*c.get("volumeMounts", []), *opts.volume_mounts]
    return template
