"""Condition lists, merged the way Kubernetes expects: one entry per type, lastTransitionTime moves only when the
status flips, observedGeneration says which spec the condition is about."""

from __future__ import annotations

from typing import Literal

from .api import Condition

__all__ = ["READY", "PROGRESSING", "DEGRADED", "EVALUATED", "set_condition", "remove", "get", "is_true", "Status"]

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
# AgentApp with spec.evaluation only: did the newest evaluation run produce a result (True), is one running or
# waiting (Unknown), or did it end without one (False, EvaluationFailed)? A failing gate is Degraded instead.
EVALUATED = "Evaluated"

Status = Literal["True", "False", "Unknown"]


def get(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: list[Condition], type_: str) -> bool:
    c = get(conditions, type_)
    return c is not None and c.status == "True"


def remove(conditions: list[Condition], type_: str) -> list[Condition]:
    return [c for c in conditions if c.type != type_]


def set_condition(conditions: list[Condition], type_: str, status: Status, reason: str, message: str, *,
                  generation: int | None, now: str) -> list[Condition]:
    """A new list with `type_` set; the others keep their order and values."""
    old = get(conditions, type_)
    changed = old is None or old.status != status
    new = Condition(
        type=type_, status=status, reason=reason, message=message[:32768],
        last_transition_time=now if changed else (old.last_transition_time or now),
        observed_generation=generation,
    )
    if old is None:
        return [*conditions, new]
    return [new if c.type == type_ else c for c in conditions]
