"""pydantic models of the four custom resources: the single source of truth for the CRDs, `validate`, the
renderers and the runtime configuration."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ..errors import Problem, SpecError
from .agentapp import (
    AgentApp, AgentAppSpec, AgentAppStatus, ConfigMapKeyRef, EvaluationGate, EvaluationSpec, EvaluationStatus,
)
from .base import Condition, CRDInfo, ObjectMeta, PrinterColumn, Resource, Rule
from .budget import Budget, BudgetSpec, BudgetStatus
from .modelfleet import ModelFleet, ModelFleetSpec, ModelFleetStatus, ScalingDecision
from .runtime_config import BudgetConfig, IndexConnection, ModelEndpoint, RuntimeConfig
from .vectorindex import VectorIndex, VectorIndexSpec, VectorIndexStatus

__all__ = [
    "KINDS", "parse", "problems_of", "is_ours", "describe",
    "Resource", "ObjectMeta", "Condition", "CRDInfo", "PrinterColumn", "Rule",
    "ModelFleet", "ModelFleetSpec", "ModelFleetStatus", "ScalingDecision",
    "VectorIndex", "VectorIndexSpec", "VectorIndexStatus",
    "AgentApp", "AgentAppSpec", "AgentAppStatus", "ConfigMapKeyRef", "EvaluationSpec", "EvaluationGate",
    "EvaluationStatus",
    "Budget", "BudgetSpec", "BudgetStatus",
    "RuntimeConfig", "ModelEndpoint", "IndexConnection", "BudgetConfig",
]

KINDS: dict[str, type[Resource]] = {cls.__crd__.kind: cls for cls in (ModelFleet, VectorIndex, AgentApp, Budget)}


def is_ours(doc: dict[str, Any]) -> bool:
    return isinstance(doc, dict) and doc.get("kind") in KINDS and str(doc.get("apiVersion", "")).startswith(
        "agentfleet.io/")


def describe(doc: dict[str, Any]) -> str:
    meta = doc.get("metadata") or {}
    return f"{doc.get('kind', '?')} {meta.get('namespace', 'default')}/{meta.get('name', '?')}"


def problems_of(err: ValidationError) -> list[Problem]:
    """pydantic's errors as field paths users recognise: `spec.autoscaling.minReplicas: ...`."""
    out = []
    for e in err.errors(include_url=False):
        loc = [str(p) for p in e["loc"]]
        field = (e.get("ctx") or {}).get("field")
        if e["type"] == "rule" and field:
            loc.append(field)
        path = ""
        for part in loc:
            path += f"[{part}]" if part.isdigit() else (f".{part}" if path else part)
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "literal_error":
            msg = f"{msg}, got {e['input']!r}"
        out.append(Problem(path, msg))
    return out


def parse(doc: dict[str, Any]) -> Resource:
    """A dict from YAML or the API server -> its model; SpecError naming each bad field otherwise."""
    kind = doc.get("kind") if isinstance(doc, dict) else None
    if kind not in KINDS:
        raise SpecError(describe(doc) if isinstance(doc, dict) else "document",
                        [Problem("kind", f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")])
    try:
        return KINDS[kind].model_validate(doc)
    except ValidationError as err:
        raise SpecError(describe(doc), problems_of(err)) from None
