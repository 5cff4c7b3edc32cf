"""Pure reading of pod statuses: why a pod that should serve does not (crash loop, image pull, unschedulable,
a config error) and since when, so that a fleet stuck in one of these states turns Degraded with the pod's own
reason after a deadline instead of staying Progressing forever."""

from __future__ import annotations

import datetime as dt
from typing import Any, NamedTuple, Sequence

__all__ = ["PodProblem", "pod_problem", "worst_problem", "FAILING_WAIT_REASONS"]

# Container waiting reasons that do not cure themselves (ContainerCreating and PodInitializing do).
FAILING_WAIT_REASONS = frozenset({
    "CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "ErrImageNeverPull", "InvalidImageName",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError", "PreCreateHookError",
    "PostStartHookError",
})
# Order in which one reason explains a fleet best when pods disagree (the first listed wins).
_PRIORITY = ("CreateContainerConfigError", "InvalidImageName", "ImagePullBackOff", "ErrImagePull",
             "ErrImageNeverPull", "CrashLoopBackOff", "Unschedulable")


class PodProblem(NamedTuple):
    pod: str
    reason: str  # a Kubernetes reason (CamelCase), fit for a condition's reason
    message: str
    since_s: float  # seconds the pod has not been ready

    def describe(self) -> str:
        return f"pod {self.pod}: {self.reason}: {self.message}".rstrip(": ")


def _time(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, str) and value:
        try:
            return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
        except ValueError:
            return None
    return None


def _condition(pod: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == type_), None)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def pod_problem(pod: dict[str, Any], *, now: dt.datetime) -> PodProblem | None:
    """Why `pod` is not ready, when the reason is one that needs a human; None for a ready pod, a terminating
    one, or one that is merely starting (pulling, loading the model: the startup probe governs that)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp"):
        return None
    ready = _condition(pod, "Ready")
    if ready is not None and ready.get("status") == "True":
        return None
    start = (_time(ready.get("lastTransitionTime")) if ready else None) or _time(meta.get("creationTimestamp"))
    since_s = max(0.0, (now - start).total_seconds()) if start else 0.0
    name = meta.get("name", "?")
    if status.get("phase") == "Failed":
        return PodProblem(name, status.get("reason") or "PodFailed", _one_line(status.get("message") or ""), since_s)
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason not in FAILING_WAIT_REASONS:
            continue
        message = waiting.get("message") or ""
        last = (cs.get("lastState") or {}).get("terminated") or {}
        if last:
            message = (f"{message}; last exit: {last.get('reason') or 'Error'} (code {last.get('exitCode')}), "
                       f"{cs.get('restartCount', 0)} restarts").lstrip("; ")
        return PodProblem(name, reason, _one_line(f"container {cs.get('name')}: {message}"), since_s)
    scheduled = _condition(pod, "PodScheduled")
    if scheduled is not None and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        return PodProblem(name, "Unschedulable", _one_line(scheduled.get("message") or ""), since_s)
    return None


def worst_problem(pods: Sequence[dict[str, Any]], *, now: dt.datetime, min_since_s: float = 0.0
                  ) -> PodProblem | None:
    """The problem that best explains a set of pods, among those standing at least `min_since_s`: the most
    telling reason, then the longest-standing."""
    found = [p for p in (pod_problem(pod, now=now) for pod in pods) if p is not None and p.since_s >= min_since_s]
    if not found:
        return None

    def rank(p: PodProblem) -> tuple[int, float, str]:
        order = _PRIORITY.index(p.reason) if p.reason in _PRIORITY else len(_PRIORITY)
        return order, -p.since_s, p.pod

    return min(found, key=rank)
