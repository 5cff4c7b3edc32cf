"""The runtime's HTTP glue (aiohttp): routes -> serving. `POST /v1/chat/completions` (JSON or SSE),
`GET /v1/models`, `POST /v1/responses` (JSON or SSE) and `GET /v1/responses/{id}` (shapes in responses.py),
`POST /v1/runs`, `GET|DELETE /v1/runs/{id}`, `GET /v1/sources/{doc_id}` (a cited document, as far as the caller
may read it: sources.py), `GET /healthz`, `GET /readyz`, `GET /metrics`, `GET /openapi.json` and the chat page at
`/`. Every failure is an OpenAI error body (errors.http_error), never a traceback; bodies are parsed only through
request_body (bounded size, charset and depth) and read within a deadline. Failed
authentication is throttled per client address and key prefix (throttle.py). A client that disconnects cancels its
handler (handler_cancellation), which cancels the agent and releases the task's reservation; one that stops
reading a stream is cut off after WRITE_TIMEOUT_S, with the same effect."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from ..api.runtime_config import RuntimeConfig
from ..errors import (
    AgentfleetError, AuthenticationFailed, DelegationRefused, InvalidRequest, RequestTimeout, RequestTooLarge,
    TooManyFailedAttempts, UpstreamError, http_error,
)
from .. import http_edge
from ..request_body import MAX_JSON_BYTES, check_content_encoding, parse_json
from ..names import RUNTIME_METRICS_PORT_ENV, RUNTIME_SHUTDOWN_TIMEOUT_S
from ..retrieval.filters import Principal
from ..retrieval.store import MAX_DOCUMENT_CHUNKS
from ..state import open_store
from .budget_status import publish_budget_status
from .caller_limits import caller_digest
from .identity import Identity
from .keystore import bearer_key
from .llm import ModelClient
from .metrics import CONTENT_TYPE_LATEST, RuntimeMetrics
from .protocol import (
    ChatMessage, ChatRequest, ResponseRequest, RunRequest, chunk, completion_body, finish_reason, history_of,
    parse_body,
)
from .responses import RESPONSE_KIND, StreamEvents, chained_history, response_body, run_id_of
from .runs import RunRecord, RunStore
from .serving import Retrieval, Runtime, TaskOutcome
from .sources import SOURCES_PATH, is_document_id, prefers_text, source_text, source_view
from .tasks import CLIENT_EVENTS, RunManager, lease_seconds
from .throttle import FailedAuthThrottle, client_address, key_prefix_digest

__all__ = ["build_app", "build_runtime", "serve", "runner_options", "RUNTIME_KEY"]

log = logging.getLogger("agentfleet.runtime")
RUNTIME_KEY: web.AppKey[Runtime] = web.AppKey("runtime", Runtime)
CLIENT_KEY: web.AppKey[ModelClient] = web.AppKey("client", ModelClient)
RUNS_KEY: web.AppKey[RunManager] = web.AppKey("runs", RunManager)
MAX_RUNS_KEY: web.AppKey[int] = web.AppKey("max_runs", int)
THROTTLE_KEY: web.AppKey[FailedAuthThrottle] = web.AppKey("throttle", FailedAuthThrottle)
LIMITS_KEY: web.AppKey["EdgeLimits"] = web.AppKey("edge_limits")
STARTED_KEY: web.AppKey[float] = web.AppKey("started", float)
CALLER_KEY: web.RequestKey[str] = web.RequestKey("caller", str)  # the authenticated key's digest
EVENTS_POLL_S = 0.25
SHUTDOWN_TIMEOUT_S = float(RUNTIME_SHUTDOWN_TIMEOUT_S)
WEB_DIR = Path(__file__).with_name("web")
KEY_RELOAD_S = 5.0
BUDGET_REFRESH_S = 5.0
ANSWER_CHUNK_CHARS = 24
MAX_BODY_BYTES = MAX_JSON_BYTES  # a chat request is at most MAX_INPUT_CHARS of text plus its JSON framing
# A body sent a byte at a time holds a socket and a handler, never a model slot or a reservation (those come after
# the body): it gets this long in all. Headers sent slowly are bounded by the keep-alive timeout, which aiohttp
# starts when the connection opens (runner_options).
BODY_TIMEOUT_S = 30.0
WRITE_TIMEOUT_S = 30.0  # a stream's client that reads nothing for this long is cut off (its run is cancelled)
KEEPALIVE_TIMEOUT_S = 75.0  # above the 60 s idle timeout of common load balancers, so they close first
LINGERING_S = 2.0  # after an early answer (408, 413) the rest of a body is drained this long, then the socket closes


class EdgeLimits:
    def __init__(self, *, body_timeout_s: float = BODY_TIMEOUT_S, write_timeout_s: float = WRITE_TIMEOUT_S):
        self.body_timeout_s = body_timeout_s
        self.write_timeout_s = write_timeout_s


def runner_options(*, keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S) -> dict[str, Any]:
    """What `web.run_app` / `web.AppRunner` need for the edge's bounds (the tests' runners use the same)."""
    return {"handler_cancellation": True, "access_log": None, "keepalive_timeout": keepalive_timeout_s,
            "max_line_size": 8190, "max_field_size": 8190, "auto_decompress": False,
            "lingering_time": LINGERING_S}


def _error_response(exc: BaseException) -> web.Response:
    err = http_error(exc)
    return web.json_response(err.body, status=err.status, headers=err.headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large", 408: "request_timeout"}


def _plain_error(status: int, message: str, code: str, headers: Any = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                        "code": code}}, status=status, headers=headers)


def _http_exception_response(e: web.HTTPException) -> web.Response:
    """aiohttp's own 4xx (no route, wrong method, body too large) as an OpenAI error body; its headers (Allow)
    kept, its body (plain text) not."""
    keep = {k: v for k, v in e.headers.items() if k.lower() in ("allow", "retry-after", "www-authenticate")}
    return _plain_error(e.status, e.reason or "error", _HTTP_CODES.get(e.status, "http_error"), keep)


async def _security_headers(_: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if response.status >= 400:
        response.headers.setdefault("Cache-Control", "no-store")


BUDGET_REMAINING_USD_HEADER = "X-Agentfleet-Budget-Remaining-Usd"
BUDGET_REMAINING_TOKENS_HEADER = "X-Agentfleet-Budget-Remaining-Tokens"


async def _budget_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The AgentApp's Budget as last read from the ledger (refreshed every few seconds), on the authenticated
    answers of the /v1 API only: a refused or unauthenticated request learns nothing about the app's spending."""
    if response.status >= 400 or not request.path.startswith("/v1/"):
        return
    seen = request.app[RUNTIME_KEY].budget_seen
    if seen.get("remaining_usd") is not None:
        response.headers[BUDGET_REMAINING_USD_HEADER] = f"{seen['remaining_usd']:.6f}"
    if seen.get("remaining_tokens") is not None:
        response.headers[BUDGET_REMAINING_TOKENS_HEADER] = str(seen["remaining_tokens"])


async def _rate_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`x-ratelimit-limit-requests` / `-remaining-requests` for the authenticated key, when its rate is limited."""
    caller = request.get(CALLER_KEY)
    if caller is not None:
        response.headers.update(request.app[RUNS_KEY].limits.headers(caller, time.monotonic()))


@web.middleware
async def _errors_and_metrics(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                              ) -> web.StreamResponse:
    rt = request.app[RUNTIME_KEY]
    started = time.monotonic()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    status = 500
    try:
        resp = await handler(request)
        status = resp.status
        return resp
    except AgentfleetError as e:
        resp = _error_response(e)
        status = resp.status
        rt.metrics.errors.labels(str(resp.status)).inc()
        return resp
    except web.HTTPException as e:
        status = e.status
        if e.status >= 400:
            return _http_exception_response(e)
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        status = 499  # the client went away; nobody reads a response
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, route)
        rt.metrics.errors.labels("500").inc()
        return _error_response(RuntimeError())
    finally:
        rt.metrics.request_seconds.labels(route, str(status)).observe(time.monotonic() - started)


@web.middleware
async def _trace_context(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                         ) -> web.StreamResponse:
    """Installed only with telemetry on: the caller's W3C traceparent parents the spans of its request, and of a
    run it starts (the run's task copies this context)."""
    with request.app[RUNTIME_KEY].telemetry.incoming(request.headers):
        return await handler(request)


def _principal(request: web.Request) -> Principal:
    """The caller, behind the failed-authentication throttle: a client (or a key prefix) over its limit gets 429
    before its key is looked at, so a throttled client learns nothing more about the keys it tries."""
    rt = request.app[RUNTIME_KEY]
    if rt.identity is None:
        raise InvalidRequest("this runtime has no key store")
    throttle = request.app[THROTTLE_KEY]
    authorization = request.headers.get("Authorization")
    address = client_address(request.remote, request.headers.get("X-Forwarded-For"), rt.config.trusted_proxies)
    try:
        key: str | None = bearer_key(authorization)
    except AuthenticationFailed:
        key = None
    prefix = key_prefix_digest(key) if key else None
    now_s = time.monotonic()
    refused = throttle.check(address, prefix, now_s)
    if refused is not None:
        rt.metrics.auth_throttled.labels(refused.by).inc()
        if refused.is_first_in_window:  # once per window; the key itself is never logged
            log.warning("failed authentication over the limit: refusing for %.0f s (by %s, address %s, key prefix "
                        "digest %s)", refused.retry_after_s, refused.by, address, prefix or "-")
        raise TooManyFailedAttempts("too many failed authentication attempts; retry later",
                                    retry_after_s=refused.retry_after_s)
    try:
        # The key first (AuthenticationFailed), then its on-behalf-of headers, if any (delegation.py):
        # every authenticated endpoint gets the same effective principal from here.
        principal = rt.identity.authenticate(authorization, request.headers)
    except AuthenticationFailed:
        throttle.failed(address, prefix, now_s)
        reason = "invalid" if key else ("missing" if not (authorization or "").strip() else "malformed")
        rt.metrics.auth_failures.labels(reason).inc()
        raise
    except (DelegationRefused, InvalidRequest):
        # A valid key asking for more than it holds: refused (403/400) but not a guess at keys, so the failed-auth
        # throttle does not count it (it would lock a misconfigured peer app's key out for everyone).
        rt.metrics.auth_failures.labels("delegation_refused").inc()
        raise
    request[CALLER_KEY] = caller_digest(key or "")
    return principal


def _caller(request: web.Request) -> str | None:
    """The authenticated API key's digest (set by _principal): what the per-key limits count."""
    return request.get(CALLER_KEY)


async def _json(request: web.Request) -> Any:
    """The request's JSON body: declared or actual size over MAX_BODY_BYTES is 413, a body not complete within
    the body timeout 408, and everything request_body.parse_json refuses a 4xx, all before any other work."""
    limits = request.app[LIMITS_KEY]
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise RequestTooLarge(f"the request body is larger than {MAX_BODY_BYTES} bytes")
    check_content_encoding(request.headers.get("Content-Encoding"))
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            raw = await request.read()
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {limits.body_timeout_s:g} s") from None
    except web.HTTPRequestEntityTooLarge:
        raise RequestTooLarge(f"the request body is larger than {MAX_BODY_BYTES} bytes") from None
    except web.RequestPayloadError:  # bad chunked framing, a Content-Encoding that does not decode
        raise InvalidRequest("the request body could not be read (its framing or Content-Encoding is broken)"
                             ) from None
    return parse_json(raw, request.headers.get("Content-Type"), max_bytes=MAX_BODY_BYTES)


async def _write(request: web.Request, resp: web.StreamResponse, data: bytes) -> None:
    """Write to a stream, giving up on a client that has read nothing for the write timeout: its connection is
    aborted (which cancels the handler, and with it the run and its reservation) rather than held open."""
    timeout_s = request.app[LIMITS_KEY].write_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            await resp.write(data)
    except TimeoutError:
        log.info("client stopped reading a stream for %.0f s: closing it", timeout_s)
        if request.transport is not None:
            request.transport.abort()
        raise ConnectionResetError("the client stopped reading") from None


def _pieces(text: str) -> list[str]:
    """An answer that arrived whole (structured output) goes out in word-aligned pieces that join back to it."""
    out, cur = [], ""
    for word in re.findall(r"\s*\S+\s*|\s+", text):
        cur += word
        if len(cur) >= ANSWER_CHUNK_CHARS:
            out.append(cur)
            cur = ""
    if cur:
        out.append(cur)
    return out


# --- chat completions -------------------------------------------------------------------------------------------

IDEMPOTENCY_HEADER = "Idempotency-Key"
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not _IDEMPOTENCY_KEY.match(key):
        raise InvalidRequest(f"{IDEMPOTENCY_HEADER} must be 1 to 255 printable ASCII characters without spaces",
                             param=IDEMPOTENCY_HEADER)
    return key


async def _chat(request: web.Request) -> web.StreamResponse:
    rt, runs = request.app[RUNTIME_KEY], request.app[RUNS_KEY]
    principal = _principal(request)
    req: ChatRequest = parse_body(ChatRequest, await _json(request))
    history = history_of(req.messages)
    # A chat completion is a run too: recorded step by step, and a retry with the same Idempotency-Key gets the
    # answer of the first request instead of paying for a second one. 429 here, before any stream starts.
    run, budget = await runs.admit(principal, history, kind="chat", idempotency_key=_idempotency_key(request),
                                   caller=_caller(request),
                                   answer_max_tokens=req.max_completion_tokens or req.max_tokens)
    model_name = rt.config.app
    completion_id = "chatcmpl-" + run.id.removeprefix("run-")
    if budget is None:  # a retry: answer from the first request's run once it is done
        return await _chat_replay(request, runs, run, principal, req, completion_id, model_name)
    if not req.stream:
        outcome = await runs.execute(run, budget)
        _raise_if_empty_failure(outcome)
        return web.json_response(completion_body(completion_id=completion_id, model=model_name,
                                                 answer=outcome.result.answer, summary=outcome.summary()))
    return await _chat_stream(request, runs, req, run, budget, completion_id, model_name)


async def _chat_replay(request: web.Request, runs: RunManager, run: RunRecord, principal: Principal,
                       req: ChatRequest, completion_id: str, model_name: str) -> web.StreamResponse:
    deadline_s = max(run.deadline_s - time.time(), 0.0) + 5.0
    done = await runs.wait(run.id, principal, wait_s=deadline_s)
    if done is None or not done.is_done:
        raise UpstreamError("the first request with this Idempotency-Key is still running; retry later")
    if done.result is None:
        err = done.error or {}
        raise UpstreamError(f"the first request with this Idempotency-Key ended {done.status}: "
                            f"{err.get('message', 'no answer')}")
    answer, summary = done.result.get("answer", ""), done.result.get("agentfleet", {})
    if not req.stream:
        return web.json_response(completion_body(completion_id=completion_id, model=model_name, answer=answer,
                                                 summary=summary))
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    created = int(done.created_s)
    for piece in [{"role": "assistant", "content": ""}] + [{"content": p} for p in _pieces(answer)]:
        await _write(request, resp, _sse(chunk(completion_id=completion_id, model=model_name, created=created,
                                               delta=piece)))
    await _write(request, resp, _sse(chunk(completion_id=completion_id, model=model_name, created=created,
                                           finish=finish_reason(summary.get("stop_reason", "answered")),
                                           extra=summary)))
    await _write(request, resp, _sse("[DONE]"))
    return resp


async def open_stream(request: web.Request, resp: web.StreamResponse, first: Callable[[], Awaitable[None]],
                      runs: RunManager, run: RunRecord, budget: Any) -> None:
    """Start an event stream and send its first event. A client that left before the task started gets the run's
    reservation back now and the run is recorded as cancelled (`budget` None: a replay, nothing was reserved)."""
    try:
        await resp.prepare(request)
        await first()
    except BaseException:
        if budget is not None:
            await asyncio.shield(budget.abandon())
            await asyncio.shield(runs.abandon(run))
        raise


def _sse(obj: dict[str, Any] | str) -> bytes:
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _raise_if_empty_failure(outcome: TaskOutcome) -> None:
    """A task that produced nothing because the model failed is an upstream error, not an empty answer."""
    r = outcome.result
    if r.stop_reason == "model_error" and not r.answer:
        raise UpstreamError(f"the model failed before any answer: {r.detail}")


async def _chat_stream(request: web.Request, runs: RunManager, req: ChatRequest, run: RunRecord, budget: Any,
                       completion_id: str, model_name: str) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    created = int(time.time())
    streamed: list[str] = []

    async def send(obj: dict[str, Any] | str) -> None:
        await _write(request, resp, _sse(obj))

    async def forward(event: dict[str, Any]) -> None:
        if event.get("type") == "step":
            await send(chunk(completion_id=completion_id, model=model_name, created=created, extra=event))

    async def on_delta(text: str) -> None:
        for piece in _pieces(text) if len(text) > ANSWER_CHUNK_CHARS else [text]:
            streamed.append(piece)
            await send(chunk(completion_id=completion_id, model=model_name, created=created,
                             delta={"content": piece}))

    await open_stream(request, resp, lambda: send(chunk(completion_id=completion_id, model=model_name,
                                                        created=created, delta={"role": "assistant", "content": ""})),
                      runs, run, budget)
    try:
        outcome = await runs.execute(run, budget, forward=forward, on_delta=on_delta)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as e:  # the stream is open: report in-band, as OpenAI does
        if not isinstance(e, AgentfleetError):
            log.exception("task %s failed", run.id)
        await send({"error": http_error(e).body["error"]})
        await send("[DONE]")
        return resp
    r = outcome.result
    if r.stop_reason == "model_error" and not r.answer and not streamed:
        await send({"error": http_error(UpstreamError(f"the model failed before any answer: {r.detail}"))
                    .body["error"]})
        await send("[DONE]")
        return resp
    if not streamed and r.answer:  # a partial answer at a cap
        for piece in _pieces(r.answer):
            await send(chunk(completion_id=completion_id, model=model_name, created=created,
                             delta={"content": piece}))
    summary = outcome.summary()
    await send(chunk(completion_id=completion_id, model=model_name, created=created,
                     finish=finish_reason(r.stop_reason), extra=summary))
    if req.stream_options is not None and req.stream_options.include_usage:
        await send(chunk(completion_id=completion_id, model=model_name, created=created, usage=summary["usage"],
                         no_choices=True))
    await send("[DONE]")
    return resp


# --- models and responses --------------------------------------------------------------------------------------

MAX_CONVERSATION_CHARS = 128_000  # a chain of responses replays its whole conversation to the agent


def _model_card(request: web.Request) -> dict[str, Any]:
    rt = request.app[RUNTIME_KEY]
    return {"id": rt.config.app, "object": "model", "created": int(request.app[STARTED_KEY]),
            "owned_by": rt.config.namespace or "agentfleet"}


async def _models(request: web.Request) -> web.Response:
    """OpenAI's model list: the AgentApp is the one model (sub-agents are not addressable on their own)."""
    _principal(request)
    return web.json_response({"object": "list", "data": [_model_card(request)]})


async def _model(request: web.Request) -> web.Response:
    _principal(request)
    card = _model_card(request)
    if request.match_info["model"] != card["id"]:
        return _plain_error(404, f"no model {request.match_info['model'][:100]!r} here; GET /v1/models lists it",
                            "model_not_found")
    return web.json_response(card)


def _no_response(param: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": "no such response", "type": "invalid_request_error",
                                        "param": param, "code": "not_found"}}, status=404)


async def _stored_response(request: web.Request, resp_id: str, principal: Principal) -> RunRecord | None:
    """A response of the caller's that was stored; someone else's, an unknown one and `store: false` look alike."""
    run_id = run_id_of(resp_id)
    run = None if run_id is None else await request.app[RUNS_KEY].get(run_id, principal)
    if run is None or run.kind != RESPONSE_KIND or not run.extra.get("store", True):
        return None
    return run


async def _response_create(request: web.Request) -> web.StreamResponse:
    rt, runs = request.app[RUNTIME_KEY], request.app[RUNS_KEY]
    principal = _principal(request)
    req: ResponseRequest = parse_body(ResponseRequest, await _json(request))
    history: list[dict[str, Any]] = []
    if req.previous_response_id is not None:
        previous = await _stored_response(request, req.previous_response_id, principal)
        if previous is None:
            return _no_response("previous_response_id")
        if not previous.is_done:
            raise InvalidRequest("the previous response is still in progress", param="previous_response_id")
        history = chained_history(previous)
    # Instructions hold for this response only (OpenAI's rule): first in its history, left out when chained.
    instructions = history_of([ChatMessage(role="developer", content=req.instructions or "")])
    history = instructions + history + req.turns()
    if sum(len(str(t.get("content") or "")) for t in history) > MAX_CONVERSATION_CHARS:
        raise InvalidRequest(f"the conversation is longer than {MAX_CONVERSATION_CHARS} characters; start a new "
                             "one (without previous_response_id)", param="previous_response_id")
    extra = {"store": req.store, "instructions": req.instructions if instructions else None,
             "previous_response_id": req.previous_response_id, "metadata": req.metadata or {}, "user": req.user}
    run, budget = await runs.admit(principal, history, kind=RESPONSE_KIND,
                                   idempotency_key=_idempotency_key(request), caller=_caller(request),
                                   answer_max_tokens=req.max_output_tokens, extra=extra)
    model_name = rt.config.app
    if budget is None:  # a retry with the same Idempotency-Key: the first request's response, once it is done
        deadline_s = max(run.deadline_s - time.time(), 0.0) + 5.0
        done = await runs.wait(run.id, principal, wait_s=deadline_s)
        if done is None or not done.is_done:
            raise UpstreamError("the first request with this Idempotency-Key is still running; retry later")
        if not req.stream:
            return web.json_response(response_body(done, model=model_name))
        return await _response_stream(request, runs, done, None, model_name)
    if not req.stream:
        outcome = await runs.execute(run, budget)
        _raise_if_empty_failure(outcome)
        done = await runs.get(run.id, principal) or run
        return web.json_response(response_body(done, model=model_name))
    return await _response_stream(request, runs, run, budget, model_name)


async def _response_stream(request: web.Request, runs: RunManager, run: RunRecord, budget: Any,
                           model_name: str) -> web.StreamResponse:
    """The Responses API's SSE: `event: <type>` and `data: <event>` per event, no `[DONE]`. A run that fails
    after the stream started ends with response.failed (its error in the response), as OpenAI's does."""
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    events = StreamEvents(run, model=model_name)

    async def send(evs: list[dict[str, Any]]) -> None:
        for ev in evs:
            data = json.dumps(ev, ensure_ascii=False, separators=(",", ":"))
            await _write(request, resp, f"event: {ev['type']}\ndata: {data}\n\n".encode())

    async def forward(event: dict[str, Any]) -> None:
        if event.get("type") == "step":
            await send(events.step(event["step"]))

    async def on_delta(text: str) -> None:
        for piece in _pieces(text) if len(text) > ANSWER_CHUNK_CHARS else [text]:
            await send(events.delta(piece))

    await open_stream(request, resp, lambda: send(events.start()), runs, run, budget)
    if budget is None:  # a replay of a finished response
        for step in (run.result or {}).get("steps") or []:
            await send(events.step(step))
        await send(events.finish(response_body(run, model=model_name)))
        return resp
    try:
        await runs.execute(run, budget, forward=forward, on_delta=on_delta)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as e:  # the stream is open: report in-band
        if not isinstance(e, AgentfleetError):
            log.exception("response %s failed", run.id)
        err = http_error(e).body["error"]
        done = await runs.get(run.id, run.principal) or run
        await send(events.finish(response_body(done, model=model_name, status="failed", error=err)))
        return resp
    # The finished record, as GET /v1/responses/{id} answers from it.
    done = await runs.get(run.id, run.principal) or run
    await send(events.finish(response_body(done, model=model_name)))
    return resp


async def _response_get(request: web.Request) -> web.Response:
    principal = _principal(request)
    run = await _stored_response(request, request.match_info["response_id"], principal)
    if run is None:
        return _no_response()
    return web.json_response(response_body(run, model=request.app[RUNTIME_KEY].config.app))


# --- runs -------------------------------------------------------------------------------------------------------

async def _run_create(request: web.Request) -> web.Response:
    runs = request.app[RUNS_KEY]
    principal = _principal(request)
    req: RunRequest = parse_body(RunRequest, await _json(request))
    busy = len(runs.local) + runs.starting
    if busy >= request.app[MAX_RUNS_KEY]:
        return web.json_response({"error": {"message": f"{busy} runs are in progress on this replica; retry later",
                                            "type": "server_error", "param": None, "code": "too_many_runs"}},
                                 status=429, headers={"Retry-After": "5"})
    runs.starting += 1  # counted from here: admission awaits the store, and others arrive meanwhile
    try:
        run, budget = await runs.admit(principal, [{"role": "user", "content": req.input}], kind="run",
                                       idempotency_key=_idempotency_key(request), caller=_caller(request))
        if budget is None:  # the same Idempotency-Key again: the same run
            return web.json_response(run.wire(await runs.steps(run)), status=200)
        runs.spawn(run, budget)
    finally:
        runs.starting -= 1
    return web.json_response(run.wire([]), status=202)


async def _own_run(request: web.Request) -> RunRecord:
    run = await request.app[RUNS_KEY].get(request.match_info["run_id"], _principal(request))
    if run is None:  # unknown and someone else's look the same
        raise web.HTTPNotFound(reason="no such run")
    return run


async def _run_get(request: web.Request) -> web.Response:
    run = await _own_run(request)
    return web.json_response(run.wire(await request.app[RUNS_KEY].steps(run)))


async def _run_cancel(request: web.Request) -> web.Response:
    runs = request.app[RUNS_KEY]
    run = await runs.cancel(request.match_info["run_id"], _principal(request))
    if run is None:
        raise web.HTTPNotFound(reason="no such run")
    return web.json_response(run.wire(await runs.steps(run)))


async def _run_events(request: web.Request) -> web.StreamResponse:
    """Server-sent events of one run from a cursor (`?after=N`, or the Last-Event-ID header): status changes and
    steps as they are recorded, by whichever replica executes the run; ends after its final status."""
    runs = request.app[RUNS_KEY]
    run = await _own_run(request)
    raw = request.query.get("after") or request.headers.get("Last-Event-ID") or "0"
    if not raw.isdigit() or len(raw) > 12:
        raise InvalidRequest("after must be a non-negative integer (an event's seq)", param="after")
    after = int(raw)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    give_up = time.monotonic() + max(run.deadline_s - time.time(), 0.0) + 60.0
    while True:
        events = await runs.events(run.id, after=after)
        for ev in events:
            after = ev["seq"]
            if ev.get("type") in CLIENT_EVENTS:
                await _write(request, resp,
                             f"id: {ev['seq']}\ndata: {json.dumps(ev, separators=(',', ':'))}\n\n".encode())
        if not events:
            run = await runs.get(run.id, run.principal) or run
            if run.is_done or time.monotonic() > give_up:
                break
            await asyncio.sleep(EVENTS_POLL_S)
    await _write(request, resp, b"data: [DONE]\n\n")
    return resp


# --- cited sources --------------------------------------------------------------------------------------------

async def _source(request: web.Request) -> web.Response:
    """A cited document's chunks that the caller may read (JSON, or text/plain when asked for). A document the
    caller may read nothing of is the same 404 as none, so its existence does not leak."""
    rt = request.app[RUNTIME_KEY]
    principal = _principal(request)
    doc_id = request.match_info["doc_id"]
    hits = await rt.retrieval.document(doc_id, principal, limit=MAX_DOCUMENT_CHUNKS) \
        if rt.retrieval is not None and is_document_id(doc_id) else []
    if not hits:
        raise web.HTTPNotFound(reason="no such source")
    # The caller's own view of a document: not for shared caches; a browser shows it as text, never as a page.
    headers = {"Cache-Control": "private, no-store", "Content-Security-Policy": "default-src 'none'; sandbox"}
    if prefers_text(request.headers.get("Accept")):
        return web.Response(text=source_text(hits), content_type="text/plain", charset="utf-8", headers=headers)
    return web.json_response(source_view(doc_id, hits, index_document_url=rt.index_document_url,
                                         truncated=len(hits) >= MAX_DOCUMENT_CHUNKS), headers=headers)


# --- probes -------------------------------------------------------------------------------------------------

async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    rt, client = request.app[RUNTIME_KEY], request.app[CLIENT_KEY]
    if request.app[RUNS_KEY].is_draining:
        return web.json_response({"ready": False, "checks": {"draining": "shutting down"}}, status=503)
    checks = await rt.readiness(client.probe)
    rt.metrics.record_upstreams({k: v is None for k, v in checks.items() if is_upstream(k)})
    # This process can serve unless something of its own is missing: an upstream that is down (a model fleet, an
    # MCP server, the index) is named in the body and in agentfleet_runtime_upstream_ready, and the request that
    # needs it gets its own error, but the replica stays in its Service. `?upstreams=1` asks for all of them too.
    strict = request.query.get("upstreams") == "1"
    failing = [k for k, v in checks.items() if v is not None and (strict or not is_upstream(k))]
    degraded = sorted(k for k, v in checks.items() if v is not None and is_upstream(k))
    body = {"ready": not failing, "checks": {k: v or "ok" for k, v in checks.items()}}
    if degraded:
        body["degraded"] = degraded
    return web.json_response(body, status=200 if not failing else 503)


def is_upstream(check: str) -> bool:
    """A readiness check of something outside this process (see _readyz)."""
    return check.startswith(("model_", "mcp_")) or check == "index"


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[RUNTIME_KEY].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _index(_: web.Request) -> web.Response:
    return web.Response(body=(WEB_DIR / "index.html").read_bytes(), content_type="text/html")


async def _openapi(_: web.Request) -> web.Response:
    from .openapi import runtime_openapi

    return web.json_response(runtime_openapi())


# --- assembly -------------------------------------------------------------------------------------------------

def open_run_store(config: RuntimeConfig, *, state_dir: str | os.PathLike[str] | None = None,
                   lease_s: float | None = None) -> RunStore:
    """The runs' store: the ledger's backend (SQLite file `runs.db` beside `ledger.db`, or the same Redis)."""
    base = Path(state_dir or os.environ.get("AGENTFLEET_STATE_DIR") or ".")
    store = open_store(config.ledger.backend, sqlite_path=base / "runs.db", redis_url=config.ledger.redis_url,
                       prefix=f"agentfleet:runs:{config.namespace}/{config.app}:")
    return RunStore(store, lease_s=lease_seconds() if lease_s is None else lease_s)


def build_app(runtime: Runtime, client: ModelClient, *, max_runs: int = 1000, run_store: RunStore | None = None,
              replica: str | None = None, key_reload_s: float = KEY_RELOAD_S,
              budget_refresh_s: float = BUDGET_REFRESH_S, body_timeout_s: float = BODY_TIMEOUT_S,
              write_timeout_s: float = WRITE_TIMEOUT_S,
              metrics_listen: tuple[str, int] | None = None) -> web.Application:
    """The aiohttp application. The client starts and closes with it; so do the key reload timer and the runs.
    Without `run_store` the runs go to a SQLite file in a new temporary directory (tests; `serve` passes the
    durable one). With `metrics_listen` (host, port), /metrics is served there alone and not on the serving port:
    its per-tenant token and cost series and Budget gauges are for Prometheus, not for every API caller."""
    http_edge.install()  # protocol errors answer in the OpenAI shape too
    middlewares = [_trace_context, _errors_and_metrics] if runtime.telemetry.is_enabled else [_errors_and_metrics]
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY_BYTES)
    app.on_response_prepare.append(_security_headers)
    app.on_response_prepare.append(_budget_headers)
    app.on_response_prepare.append(_rate_headers)
    app[RUNTIME_KEY] = runtime
    if runtime.remote is None and any(s.a2a is not None for s in runtime.config.sub_agents):
        from .a2a_client import A2AClient  # only an app with a remote (subAgents[].a2a) sub-agent needs one

        runtime.remote = A2AClient(telemetry=runtime.telemetry)
    limits = runtime.config.failed_attempts
    app[THROTTLE_KEY] = FailedAuthThrottle(per_address_per_minute=limits.per_address_per_minute,
                                           per_key_prefix_per_minute=limits.per_key_prefix_per_minute)
    app[LIMITS_KEY] = EdgeLimits(body_timeout_s=body_timeout_s, write_timeout_s=write_timeout_s)
    app[CLIENT_KEY] = client
    if run_store is None:
        run_store = open_run_store(runtime.config, state_dir=tempfile.mkdtemp(prefix="agentfleet-runs-"))
    runs = RunManager(runtime, run_store, replica=replica)
    app[RUNS_KEY] = runs
    app[MAX_RUNS_KEY] = max_runs
    app[STARTED_KEY] = time.time()
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/v1/models/{model}", _model)
    app.router.add_post("/v1/responses", _response_create)
    app.router.add_get("/v1/responses/{response_id}", _response_get)
    app.router.add_post("/v1/runs", _run_create)
    app.router.add_get("/v1/runs/{run_id}", _run_get)
    app.router.add_get("/v1/runs/{run_id}/events", _run_events)
    app.router.add_post("/v1/runs/{run_id}/cancel", _run_cancel)
    app.router.add_get(SOURCES_PATH + "/{doc_id}", _source)
    app.router.add_delete("/v1/runs/{run_id}", _run_cancel)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    if metrics_listen is None:
        app.router.add_get("/metrics", _metrics)
    app.router.add_get("/openapi.json", _openapi)
    app.router.add_get("/", _index)
    from .a2a_server import add_routes as add_a2a_routes  # here: a2a_server imports this module

    add_a2a_routes(app)  # the agent card and POST /a2a (A2A JSON-RPC)

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        await client.start()
        refresh = getattr(runtime.external, "refresh", None)
        if refresh is not None:  # a server that is down now is listed again by the next /readyz
            await refresh()
        reload = asyncio.get_running_loop().create_task(_reload_keys(runtime.identity, key_reload_s))
        budget = asyncio.get_running_loop().create_task(_refresh_budget(runtime, budget_refresh_s))
        spend = asyncio.get_running_loop().create_task(publish_budget_status(runtime))
        runs.start()
        metrics_runner = None
        if metrics_listen is not None:
            metrics_runner = await _serve_metrics(runtime, *metrics_listen)
        yield
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        reload.cancel()
        budget.cancel()
        spend.cancel()
        await runs.close()
        run_store.close()
        await client.close()
        runtime.close()

    async def drain(app: web.Application) -> None:
        # SIGTERM: the listener is closed; runs move to another replica now, chat completions in flight finish.
        await runs.drain()

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(drain)
    return app


async def _serve_metrics(runtime: Runtime, host: str, port: int) -> web.AppRunner:
    app = web.Application(client_max_size=1024)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=runtime.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, **runner_options())
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def _reload_keys(identity: Identity | None, every_s: float) -> None:
    if identity is None:
        return
    while True:
        await asyncio.sleep(every_s)
        try:
            if await asyncio.to_thread(identity.reload_if_changed):
                log.info("key store reloaded: %d keys", len(identity.store))
            elif identity.last_error is not None:
                log.warning("key store reload failed, keeping the last good one: %s", identity.last_error)
        except Exception:  # noqa: BLE001 - a reload problem must not end the timer
            log.exception("key store reload")


async def _refresh_budget(runtime: Runtime, every_s: float) -> None:
    while True:
        try:
            await runtime.refresh_budget()
        except Exception:  # noqa: BLE001 - a ledger hiccup must not end the timer
            log.exception("budget refresh")
        await asyncio.sleep(every_s)


def open_retrieval(config: RuntimeConfig, metrics: RuntimeMetrics) -> Retrieval | None:
    """The retrieve tool's store and embedder (blocking: opening milvus-lite takes its file lock)."""
    import os

    from ..retrieval.cache import RetrievalCache
    from ..retrieval.embedders import make_embedder
    from ..retrieval.search import Retriever
    from ..retrieval.store import MilvusStore

    conn = config.index
    if conn is None or "retrieve" not in config.tools.builtin:
        return None
    token = os.environ.get(conn.token_env) if conn.token_env else None
    store = MilvusStore(conn.uri, conn.collection, token=token, lock_timeout_s=60)
    embedder = make_embedder(conn.embedding_url or "all-minilm-l6-v2", batch_size=conn.embedding.batch_size)
    return Retrieval(Retriever(store, embedder, cache=RetrievalCache(), mode=conn.mode), top_k=conn.top_k,
                     metrics=metrics)


def build_runtime(config: RuntimeConfig, *, state_dir: str | None = None,
                  with_retrieval: bool = True) -> tuple[Runtime, ModelClient]:
    metrics = RuntimeMetrics()
    telemetry = Runtime.open_telemetry(config)
    client = ModelClient(config.models, telemetry=telemetry)
    identity = Identity(config.api_keys_file)
    retrieval = open_retrieval(config, metrics) if with_retrieval else None
    if retrieval is not None:
        retrieval.telemetry = telemetry
    ledger = Runtime.open_ledger(config, state_dir=state_dir)
    external = None
    if config.tools.mcp_servers:
        from .mcp_tools import McpTools

        external = McpTools(config.tools.mcp_servers, telemetry=telemetry)
    return Runtime(config, model=client, identity=identity, ledger=ledger, retrieval=retrieval,
                   metrics=metrics, external=external, telemetry=telemetry), client


def serve(config: RuntimeConfig, *, host: str, port: int, state_dir: str | None = None) -> None:
    runtime, client = build_runtime(config, state_dir=state_dir)
    # AGENTFLEET_METRICS_PORT moves /metrics off the serving port (the port a NetworkPolicy opens to Prometheus).
    metrics_port = os.environ.get(RUNTIME_METRICS_PORT_ENV)
    app = build_app(runtime, client, run_store=open_run_store(config, state_dir=state_dir),
                    metrics_listen=(host, int(metrics_port)) if metrics_port else None)
    loop = _event_loop()
    log.info("agentfleet runtime %s/%s on http://%s:%d (%s, replica %s)", config.namespace, config.app, host, port,
             type(loop).__module__.split(".")[0], app[RUNS_KEY].replica)
    # On SIGTERM, runs are handed to another replica at once; a chat completion in flight gets this long to finish
    # (the pod's terminationGracePeriodSeconds is longer).
    shutdown_s = float(os.environ.get("AGENTFLEET_SHUTDOWN_TIMEOUT_S", SHUTDOWN_TIMEOUT_S))
    web.run_app(app, host=host, port=port, print=None, loop=loop, shutdown_timeout=shutdown_s,
                **runner_options())


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (`agentfleet bench runtime` measured it), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()

