"""The error tree as OpenAI-style HTTP errors (pure)."""

from __future__ import annotations

import pytest

from agentfleet.errors import (
    AuthenticationFailed, BudgetExhausted, DependencyMissing, InvalidRequest, ReservationClosed, SpecError,
    UpstreamError, UpstreamTimeout, http_error,
)

INTERNAL = "internal error; the server log has the details"


@pytest.mark.parametrize("exc, status, message, type_, param, code, headers", [
    (BudgetExhausted("team-a/spend", "window_cost", "cost limit $5.0000 reached this day", retry_after_s=3599.2),
     429, "Budget team-a/spend: cost limit $5.0000 reached this day", "insufficient_quota", None, "budget_exhausted",
     {"Retry-After": "3600"}),
    (BudgetExhausted("team-a/spend", "task_tokens", "task t1 would exceed spec.perTask.maxTokens (100)"),
     429, "Budget team-a/spend: task t1 would exceed spec.perTask.maxTokens (100)", "insufficient_quota", None,
     "budget_exhausted", {}),
    (AuthenticationFailed("invalid API key"), 401, "invalid API key", "invalid_request_error", None,
     "invalid_api_key", {"WWW-Authenticate": "Bearer"}),
    (InvalidRequest("messages must not be empty", param="messages"), 400, "messages must not be empty",
     "invalid_request_error", "messages", "invalid_request", {}),
    (UpstreamError("model server large returned 500"), 502, "model server large returned 500", "server_error", None,
     "upstream_error", {}),
    (UpstreamTimeout("model server large did not answer in 30 s"), 504, "model server large did not answer in 30 s",
     "server_error", None, "upstream_timeout", {}),
    (DependencyMissing("AgentApp a/b", ["index docs"]), 503, "AgentApp a/b: waiting for index docs", "server_error",
     None, "dependency_missing", {"Retry-After": "5"}),
    (ReservationClosed("reservation r1 is already settled"), 500, INTERNAL, "server_error", None, "internal_error",
     {}),
    (SpecError("key store", []), 500, INTERNAL, "server_error", None, "internal_error", {}),
    (KeyError("secret-api-key"), 500, INTERNAL, "server_error", None, "internal_error", {}),
    (RuntimeError("Traceback (most recent call last): ..."), 500, INTERNAL, "server_error", None,
     "internal_error", {}),
], ids=["budget-window", "budget-task", "bad-key", "bad-request", "upstream", "upstream-timeout", "dependency",
        "ledger-misuse", "config", "foreign-keyerror", "foreign-traceback"])
def test_http_error(exc: BaseException, status: int, message: str, type_: str, param: str | None, code: str,
                    headers: dict[str, str]) -> None:
    err = http_error(exc)
    assert err.status == status
    assert err.body == {"error": {"message": message, "type": type_, "param": param, "code": code}}
    assert err.headers == headers
    assert isinstance(err.body["error"]["code"], str)
