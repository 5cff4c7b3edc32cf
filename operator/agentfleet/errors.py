"""The error tree. Every failure a user can cause or meet is one of these, named by resource and field path;
`control` maps them to kopf (permanent vs. temporary) and the servers map them to OpenAI-style HTTP errors with
`http_error` (status, body, headers), which never puts a traceback or an unexpected exception's text on the wire."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Problem", "AgentfleetError", "SpecError", "DependencyMissing", "UpstreamError", "UpstreamTimeout",
           "BudgetExhausted", "AuthenticationFailed", "DelegationRefused", "InvalidRequest", "RequestTooLarge",
           "UnsupportedMediaType", "RequestTimeout", "TooManyFailedAttempts", "TooManyRequests", "LedgerError",
           "StateUnavailable", "Draining", "ReservationNotFound", "ReservationClosed", "HttpError", "http_error"]


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class AgentfleetError(Exception):
    """Base of everything agentfleet raises on purpose."""

    reason = "Error"


class SpecError(AgentfleetError):
    """The object is wrong: retrying cannot help, the user must change it."""

    reason = "InvalidSpec"

    def __init__(self, ref: str, problems: list[Problem]):
        self.ref = ref
        self.problems = problems
        super().__init__(f"{ref}: " + "; ".join(str(p) for p in problems))

    @property
    def message(self) -> str:
        return "; ".join(str(p) for p in self.problems)


class DependencyMissing(AgentfleetError):
    """An object this one references does not exist (yet): wait and retry, it may appear."""

    reason = "DependencyMissing"

    def __init__(self, ref: str, missing: list[str]):
        self.ref = ref
        self.missing = missing
        super().__init__(f"{ref}: waiting for " + ", ".join(missing))

    @property
    def message(self) -> str:
        return "waiting for " + ", ".join(self.missing)


class UpstreamError(AgentfleetError):
    """Something outside agentfleet failed (API server, Prometheus, Milvus): retry later."""

    reason = "UpstreamError"


class CRDNotServed(UpstreamError):
    """A child's kind is not served by the API server: the operator that owns that CRD is not installed. The
    object says so in its status (Degraded) and is retried, so installing the operator heals it."""

    reason = "CRDNotServed"
    # kind -> what to install (README: Before you install)
    NEEDS = {"Milvus": "the Milvus operator (milvus.io), or set spec.milvus.mode: embedded or external",
             "LeaderWorkerSet": "LeaderWorkerSet (leaderworkerset.x-k8s.io)",
             "PodMonitor": "the Prometheus Operator (monitoring.coreos.com)",
             "InferencePool": "the Gateway API Inference Extension (inference.networking.k8s.io)"}

    def __init__(self, kind: str, api_version: str):
        self.kind, self.api_version = kind, api_version
        need = self.NEEDS.get(kind, "its CRD and operator")
        super().__init__(f"the API server does not serve {kind} ({api_version}): install {need}")


class UpstreamTimeout(UpstreamError):
    """Something outside agentfleet did not answer in time (a model server, Milvus)."""

    reason = "UpstreamTimeout"


class BudgetExhausted(AgentfleetError):
    """A reservation does not fit: the Budget's window limit, a per-task cap, or the parent reservation a sub-agent
    draws on. `what` says which (window_tokens, window_cost, task_tokens, task_cost, parent); `retry_after_s` is
    the time to the window's end when waiting helps, else None."""

    reason = "BudgetExhausted"

    def __init__(self, budget: str, what: str, message: str, *, retry_after_s: float | None = None):
        self.budget = budget
        self.what = what
        self.retry_after_s = retry_after_s
        super().__init__(f"Budget {budget}: {message}" if budget else message)

    @property
    def message(self) -> str:
        return str(self)


class AuthenticationFailed(AgentfleetError):
    """No API key, or one the key store does not hold. The message never echoes the key."""

    reason = "AuthenticationFailed"


class DelegationRefused(AgentfleetError):
    """A valid API key sent on-behalf-of headers it may not send: a key without `delegate: true`, another tenant
    than the key's, or no user (HTTP 403). Not a failed authentication: the failed-auth throttle does not count
    it."""

    reason = "DelegationRefused"


class InvalidRequest(AgentfleetError):
    """The request body is wrong; `param` names the offending field (OpenAI's `param`)."""

    reason = "InvalidRequest"

    def __init__(self, message: str, *, param: str | None = None):
        self.param = param
        super().__init__(message)


class RequestTooLarge(InvalidRequest):
    """The body is larger than the endpoint takes (HTTP 413)."""

    reason = "RequestTooLarge"


class UnsupportedMediaType(InvalidRequest):
    """The body's Content-Type names a charset or encoding the server does not read (HTTP 415)."""

    reason = "UnsupportedMediaType"


class RequestTimeout(InvalidRequest):
    """The client did not send its body within the bound (HTTP 408)."""

    reason = "RequestTimeout"


class TooManyFailedAttempts(AgentfleetError):
    """Failed authentication from this client address (or for this key prefix) is over its limit (HTTP 429).
    The message never names the key."""

    reason = "TooManyFailedAttempts"

    def __init__(self, message: str, *, retry_after_s: float):
        self.retry_after_s = retry_after_s
        super().__init__(message)


class TooManyRequests(AgentfleetError):
    """A per-key or per-tenant limit on starting runs (concurrency or rate) is reached (HTTP 429). `by` names
    which: key_concurrency, tenant_concurrency, key_rate or tenant_rate."""

    reason = "TooManyRequests"

    def __init__(self, message: str, *, by: str, retry_after_s: float):
        self.by, self.retry_after_s = by, retry_after_s
        super().__init__(message)


class LedgerError(AgentfleetError):
    """The ledger was used wrongly (a programming error in the runtime, not the user's): maps to a 500."""

    reason = "LedgerError"


class StateUnavailable(AgentfleetError):
    """The durable state store (Redis) cannot be reached: nothing was written; the client may retry (503)."""

    reason = "StateUnavailable"


class Draining(AgentfleetError):
    """This replica is shutting down and takes no new work (503: another replica takes the retry)."""

    reason = "Draining"


class ReservationNotFound(LedgerError):
    reason = "ReservationNotFound"


class ReservationClosed(LedgerError):
    """Settling or drawing on a reservation that was already settled or released."""

    reason = "ReservationClosed"


@dataclass(frozen=True)
class HttpError:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def _body(message: str, type_: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def http_error(exc: BaseException) -> HttpError:
    """The OpenAI-style error for anything a request handler raised. Only agentfleet's own errors show their
    message; anything else is a 500 with a fixed text (its details belong in the log, not on the wire)."""
    if isinstance(exc, BudgetExhausted):
        headers = {}
        if exc.retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after_s)))
        return HttpError(429, _body(exc.message, "insufficient_quota", "budget_exhausted"), headers)
    if isinstance(exc, AuthenticationFailed):
        return HttpError(401, _body(str(exc), "invalid_request_error", "invalid_api_key"),
                         {"WWW-Authenticate": "Bearer"})
    if isinstance(exc, DelegationRefused):
        return HttpError(403, _body(str(exc), "invalid_request_error", "delegation_refused"))
    if isinstance(exc, TooManyFailedAttempts):
        return HttpError(429, _body(str(exc), "invalid_request_error", "too_many_failed_attempts"),
                         {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})
    if isinstance(exc, TooManyRequests):
        code = "rate_limit_exceeded" if exc.by.endswith("_rate") else "concurrency_limit_exceeded"
        return HttpError(429, _body(str(exc), "requests", code),
                         {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))})
    if isinstance(exc, RequestTooLarge):
        return HttpError(413, _body(str(exc), "invalid_request_error", "request_too_large", exc.param))
    if isinstance(exc, UnsupportedMediaType):
        return HttpError(415, _body(str(exc), "invalid_request_error", "unsupported_media_type", exc.param))
    if isinstance(exc, RequestTimeout):
        return HttpError(408, _body(str(exc), "invalid_request_error", "request_timeout", exc.param),
                         {"Connection": "close"})
    if isinstance(exc, InvalidRequest):
        return HttpError(400, _body(str(exc), "invalid_request_error", "invalid_request", exc.param))
    if isinstance(exc, UpstreamTimeout):
        return HttpError(504, _body(str(exc), "server_error", "upstream_timeout"))
    if isinstance(exc, UpstreamError):
        return HttpError(502, _body(str(exc), "server_error", "upstream_error"))
    if isinstance(exc, Draining):
        return HttpError(503, _body(str(exc), "server_error", "draining"), {"Retry-After": "1"})
    if isinstance(exc, StateUnavailable):
        return HttpError(503, _body(str(exc), "server_error", "state_unavailable"), {"Retry-After": "2"})
    if isinstance(exc, DependencyMissing):
        return HttpError(503, _body(str(exc), "server_error", "dependency_missing"), {"Retry-After": "5"})
    return HttpError(500, _body("internal error; the server log has the details", "server_error",
                                "internal_error"))
