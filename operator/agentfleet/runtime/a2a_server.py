"""The runtime's A2A edge (aiohttp): the public agent card at `/.well-known/agent-card.json` and the JSON-RPC
endpoint `POST /a2a` for `message/send`, `message/stream` (SSE), `tasks/get` and `tasks/cancel`, each mapped onto
a durable run (kind `a2a`) through the same RunManager, authentication, principal, per-key limits and Budget as
`/v1/runs`. Failed authentication stays HTTP 401 (and a throttled client 429), as bearer auth over HTTP expects;
everything after it is a JSON-RPC answer: a run that fails is a `failed` Task, a request that cannot start one a
JSON-RPC error (shapes in a2a.py), never a traceback."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from importlib import metadata
from typing import Any, Awaitable, Callable

from aiohttp import web

from ..errors import AgentfleetError, InvalidRequest, http_error
from ..retrieval.filters import Principal
from .a2a import (
    A2A_KIND, CARD_PATHS, INTERNAL_ERROR, INVALID_PARAMS, JSONRPC_PATH, METHOD_NOT_FOUND, PARSE_ERROR,
    SERVER_ERROR, TASK_NOT_CANCELABLE, TASK_NOT_FOUND, RpcError, StreamEvents, agent_card, idempotency_key,
    message_text, parse_rpc, rpc_error, rpc_result, send_params, task_id_params, task_of,
)
from .runs import RunRecord
from .server import (
    MAX_CONVERSATION_CHARS, MAX_RUNS_KEY, RUNS_KEY, RUNTIME_KEY, _caller, _json, _principal, _write, open_stream,
)

__all__ = ["add_routes"]

log = logging.getLogger("agentfleet.runtime.a2a")
Handler = Callable[[web.Request, Principal, Any, dict[str, Any]], Awaitable[web.StreamResponse]]


def _version() -> str:
    try:
        return metadata.version("agentfleet")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def add_routes(app: web.Application) -> None:
    for path in CARD_PATHS:
        app.router.add_get(path, _card)
    app.router.add_post(JSONRPC_PATH, _rpc)


async def _card(request: web.Request) -> web.Response:
    # The card names the endpoint by the address the client used (an ingress' Host), as the SDK's resolver
    # then calls that URL.
    base = f"{request.scheme}://{request.host}"
    return web.json_response(agent_card(request.app[RUNTIME_KEY].config, base_url=base, version=_version()),
                             headers={"Cache-Control": "public, max-age=300"})


def _answer(rpc_id: Any, result: Any = None, *, err: RpcError | None = None) -> web.Response:
    return web.json_response(rpc_error(rpc_id, err) if err is not None else rpc_result(rpc_id, result))


def _rpc_error_of(e: AgentfleetError) -> RpcError:
    """An agentfleet error (budget, limits, a bad request, the model) as a JSON-RPC error: data carries the code
    and HTTP status the OpenAI surface would have answered, and Retry-After when there is one."""
    err = http_error(e)
    body = err.body["error"]
    data: dict[str, Any] = {"code": body.get("code"), "type": body.get("type"), "httpStatus": err.status}
    if "Retry-After" in err.headers:
        data["retryAfterSeconds"] = int(err.headers["Retry-After"])
    return RpcError(INVALID_PARAMS if err.status == 400 else SERVER_ERROR, str(body.get("message")), data)


async def _rpc(request: web.Request) -> web.StreamResponse:
    principal = _principal(request)  # 401 / 429 as HTTP, before the body is read
    try:
        body = await _json(request)
    except InvalidRequest as e:
        if type(e) is not InvalidRequest:  # too large, too slow, wrong media type: the HTTP answer
            raise
        return _answer(None, err=RpcError(PARSE_ERROR, f"parse error: {e}"))
    try:
        rpc_id, method, params = parse_rpc(body)
    except RpcError as e:
        return _answer(getattr(e, "rpc_id", None), err=e)
    handler = _METHODS.get(method)
    if handler is None:
        return _answer(rpc_id, err=RpcError(METHOD_NOT_FOUND, f"method not found: {method[:100]}"))
    try:
        return await handler(request, principal, rpc_id, params)
    except RpcError as e:
        return _answer(rpc_id, err=e)
    except AgentfleetError as e:
        return _answer(rpc_id, err=_rpc_error_of(e))
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:  # noqa: BLE001 - a fixed text on the wire, the details in the log
        log.exception("a2a %s failed", method)
        return _answer(rpc_id, err=RpcError(INTERNAL_ERROR, "internal error"))


async def _admit(request: web.Request, principal: Principal, params: dict[str, Any]) -> tuple[Any, RunRecord, Any]:
    p = send_params(params)
    text = message_text(p.message)
    if len(text) > MAX_CONVERSATION_CHARS:
        raise RpcError(INVALID_PARAMS, f"invalid params: the message is longer than {MAX_CONVERSATION_CHARS} "
                       "characters")
    extra = {"context_id": p.message.context_id or str(uuid.uuid4()),
             "message": p.message.model_dump(by_alias=True, exclude_none=True)}
    run, budget = await request.app[RUNS_KEY].admit(
        principal, [{"role": "user", "content": text}], kind=A2A_KIND, idempotency_key=idempotency_key(p.message),
        caller=_caller(request), extra=extra)
    if budget is None and run.kind != A2A_KIND:  # an Idempotency-Key of /v1 spelled like our keys
        raise RpcError(INVALID_PARAMS, "invalid params: this messageId was already used; send a new one")
    return p, run, budget


async def _wait_done(request: web.Request, run: RunRecord) -> RunRecord:
    deadline_s = max(run.deadline_s - time.time(), 0.0) + 5.0
    return await request.app[RUNS_KEY].wait(run.id, run.principal, wait_s=deadline_s) or run


async def _send(request: web.Request, principal: Principal, rpc_id: Any, params: dict[str, Any]
                ) -> web.StreamResponse:
    runs = request.app[RUNS_KEY]
    if not send_params(params).is_blocking:
        busy = len(runs.local) + runs.starting
        if busy >= request.app[MAX_RUNS_KEY]:
            raise RpcError(SERVER_ERROR, f"{busy} tasks are in progress on this replica; retry later",
                           {"code": "too_many_runs", "httpStatus": 429, "retryAfterSeconds": 5})
    p, run, budget = await _admit(request, principal, params)
    history_length = p.configuration.history_length if p.configuration else None
    if budget is None:  # the same messageId again: the task it started
        done = await _wait_done(request, run) if p.is_blocking else run
        return _answer(rpc_id, task_of(done, history_length=history_length))
    if not p.is_blocking:
        runs.spawn(run, budget)
        return _answer(rpc_id, task_of(run, history_length=history_length))
    try:
        await runs.execute(run, budget)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:  # noqa: BLE001 - recorded on the run as failed: answered as a failed Task
        pass
    done = await runs.get(run.id, principal) or run
    return _answer(rpc_id, task_of(done, history_length=history_length))


async def _stream(request: web.Request, principal: Principal, rpc_id: Any, params: dict[str, Any]
                  ) -> web.StreamResponse:
    runs = request.app[RUNS_KEY]
    _, run, budget = await _admit(request, principal, params)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    events = StreamEvents(run)

    async def send(evs: list[dict[str, Any]]) -> None:
        for ev in evs:
            data = json.dumps(rpc_result(rpc_id, ev), ensure_ascii=False, separators=(",", ":"))
            await _write(request, resp, f"data: {data}\n\n".encode())

    async def forward(event: dict[str, Any]) -> None:
        if event.get("type") == "step":
            await send(events.step(event["step"]))

    await open_stream(request, resp, lambda: send(events.start()), runs, run, budget)
    if budget is None:  # the same messageId again: replay the task it started, once it is done
        done = await _wait_done(request, run)
        for step in (done.result or {}).get("steps") or []:
            await send(events.step(step))
        await send(events.finish(done))
        return resp
    try:
        await runs.execute(run, budget, forward=forward)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as e:  # noqa: BLE001 - recorded on the run as failed: the stream ends with that status
        if not isinstance(e, AgentfleetError):
            log.exception("a2a task %s failed", run.id)
    await send(events.finish(await runs.get(run.id, principal) or run))
    return resp


async def _own_task(request: web.Request, principal: Principal, task_id: str) -> RunRecord:
    run = await request.app[RUNS_KEY].get(task_id, principal)
    if run is None or run.kind != A2A_KIND:  # unknown and someone else's look the same
        raise RpcError(TASK_NOT_FOUND, "task not found")
    return run


async def _get(request: web.Request, principal: Principal, rpc_id: Any, params: dict[str, Any]
               ) -> web.StreamResponse:
    p = task_id_params(params)
    run = await _own_task(request, principal, p.id)
    return _answer(rpc_id, task_of(run, history_length=p.history_length))


async def _cancel(request: web.Request, principal: Principal, rpc_id: Any, params: dict[str, Any]
                  ) -> web.StreamResponse:
    p = task_id_params(params)
    run = await _own_task(request, principal, p.id)
    if run.is_done:
        raise RpcError(TASK_NOT_CANCELABLE, f"task is {run.status}: it cannot be canceled")
    run = await request.app[RUNS_KEY].cancel(run.id, principal) or run
    return _answer(rpc_id, task_of(run))


_METHODS: dict[str, Handler] = {"message/send": _send, "message/stream": _stream, "tasks/get": _get,
                                "tasks/cancel": _cancel}
