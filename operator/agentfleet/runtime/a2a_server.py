"""The runtime's A2A edge (aiohttp): the public agent card at `/.well-known/agent-card.json` and one JSON-RPC
endpoint, `POST /a2a`, for both protocol versions the card lists. The request's A2A-Version header picks the
version (none: 0.3, as the 1.0 spec says) and with it the method names and the spelling of every answer: 0.3's
`message/send`, `message/stream` (SSE), `tasks/get` and `tasks/cancel`; 1.0's `SendMessage`,
`SendStreamingMessage`, `GetTask`, `ListTasks`, `CancelTask` and `SubscribeToTask`, and its push-notification and
extended-card methods refused as the card's capabilities say. A method of the other version is
VersionNotSupported (-32009, naming the header to send), one of neither -32601. Every task is a durable run (kind
`a2a`) through the same RunManager, authentication, principal, per-key limits and Budget as `/v1/runs`, so either
version reads a task the other started. Failed authentication stays HTTP 401 (and a throttled client 429), as
bearer auth over HTTP expects; everything after it is a JSON-RPC answer: a run that fails is a `failed` Task, a
request that cannot start one a JSON-RPC error (shapes in a2a.py and a2a_v1.py), never a traceback."""

from __future__ import annotations

import asyncio
import concurrent.futures
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
    PUSH_NOT_SUPPORTED, SERVER_ERROR, TASK_NOT_CANCELABLE, TASK_NOT_FOUND, UNSUPPORTED_OPERATION, V03, V03_DIALECT,
    V10, VERSION_HEADER, VERSION_NOT_SUPPORTED, Dialect, RpcError, StreamEvents, agent_card, idempotency_key,
    message_text, parse_rpc, requested_version, rpc_error, rpc_result, send_params, task_id_params, task_of,
)
from .a2a_index import A2ATaskIndex
from .a2a_v1 import V10_DIALECT, list_page, list_params
from .runs import RunRecord
from .server import (
    EVENTS_POLL_S, MAX_CONVERSATION_CHARS, MAX_RUNS_KEY, RUNS_KEY, RUNTIME_KEY, _caller, _json, _principal, _write,
    open_stream,
)

__all__ = ["add_routes", "METHODS"]

log = logging.getLogger("agentfleet.runtime.a2a")
Handler = Callable[[web.Request, Principal, Any, dict[str, Any], Dialect], Awaitable[web.StreamResponse]]
DIALECTS = {V03: V03_DIALECT, V10: V10_DIALECT}


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


def _answer(rpc_id: Any, result: Any = None, *, err: RpcError | None = None,
            dialect: Dialect = V03_DIALECT) -> web.Response:
    return web.json_response(rpc_error(rpc_id, err, dialect) if err is not None else rpc_result(rpc_id, result))


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
    # The version first: it decides how every answer below is spelled (1.0 spec 3.6.1 lets a client send it as
    # a query parameter instead of the header).
    try:
        version, version_err = requested_version(request.headers.get(VERSION_HEADER)
                                                 or request.query.get(VERSION_HEADER)), None
    except RpcError as e:
        version, version_err = V10, e
    dialect = DIALECTS[version]
    try:
        body = await _json(request)
    except InvalidRequest as e:
        if type(e) is not InvalidRequest:  # too large, too slow, wrong media type: the HTTP answer
            raise
        return _answer(None, err=RpcError(PARSE_ERROR, f"parse error: {e}"), dialect=dialect)
    try:
        rpc_id, method, params = parse_rpc(body)
    except RpcError as e:
        return _answer(getattr(e, "rpc_id", None), err=e, dialect=dialect)
    if version_err is not None:
        return _answer(rpc_id, err=version_err, dialect=dialect)
    handler = METHODS[version].get(method)
    if handler is None:
        return _answer(rpc_id, err=_no_method(method, version), dialect=dialect)
    try:
        return await handler(request, principal, rpc_id, params, dialect)
    except RpcError as e:
        return _answer(rpc_id, err=e, dialect=dialect)
    except AgentfleetError as e:
        return _answer(rpc_id, err=_rpc_error_of(e), dialect=dialect)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:  # noqa: BLE001 - a fixed text on the wire, the details in the log
        log.exception("a2a %s failed", method)
        return _answer(rpc_id, err=RpcError(INTERNAL_ERROR, "internal error"), dialect=dialect)


def _no_method(method: str, version: str) -> RpcError:
    """A method of the other version is the caller's version mismatch (a2a-sdk's server answers it the same);
    one of neither is not found."""
    other = next((v for v, table in METHODS.items() if v != version and method in table), None)
    if other is None:
        return RpcError(METHOD_NOT_FOUND, f"method not found: {method[:100]} (A2A {version} methods: "
                        f"{', '.join(METHODS[version])})")
    asked = f"{VERSION_HEADER}: {version}" if version != V03 else f"no {VERSION_HEADER} header, which means {V03}"
    return RpcError(VERSION_NOT_SUPPORTED, f"{method[:100]} is an A2A {other} method, but the request asks for A2A "
                    f"{version} ({asked}): send the header {VERSION_HEADER}: {other}",
                    {"method": method[:100], "requestedVersion": version, "methodVersion": other})


async def _admit(request: web.Request, principal: Principal, params: dict[str, Any], dialect: Dialect
                 ) -> tuple[Any, RunRecord, Any]:
    p = send_params(dialect.send_params(params), continue_code=dialect.continue_code)
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
    if budget is not None:
        _list_later(request, principal, run)
    return p, run, budget


def _list_later(request: web.Request, principal: Principal, run: RunRecord) -> None:
    """Index a new task for ListTasks, in the store's pool and not awaited: the run is admitted (its reservation
    taken), so nothing may stand between here and its execution, and a failed write loses only the listing."""
    runs = request.app[RUNS_KEY]
    index = A2ATaskIndex(runs.store)
    def failed(f: concurrent.futures.Future[None]) -> None:
        if not f.cancelled() and f.exception() is not None:
            log.warning("a2a task %s is not listed by ListTasks: %s", run.id, f.exception())

    runs.pool.submit(index.add, principal, run.id, created_s=run.created_s, now_s=time.time()).add_done_callback(
        failed)


async def _wait_done(request: web.Request, run: RunRecord) -> RunRecord:
    deadline_s = max(run.deadline_s - time.time(), 0.0) + 5.0
    return await request.app[RUNS_KEY].wait(run.id, run.principal, wait_s=deadline_s) or run


async def _send(request: web.Request, principal: Principal, rpc_id: Any, params: dict[str, Any],
                dialect: Dialect) -> web.StreamResponse:
    runs = request.app[RUNS_KEY]
    if not send_params(dialect.send_params(params), continue_code=dialect.continue_code).is_blocking:
        busy = len(runs.local) + runs.starting
        if busy >= request.app[MAX_RUNS_KEY]:
            raise RpcError(SERVER_ERROR, f"{busy} tasks are in progress on this replica; retry later",
                           {"code": "too_many_runs", "httpStatus": 429, "retryAfterSeconds": 5})
    p, run, budget = await _admit(request, principal, params, dialect)
    history_length = p.configuration.history_length if p.configuration else None
    if budget is None:  # the same messageId again: the task it started
        done = await _wait_done(request, run) if p.is_blocking else run
        return _answer(rpc_id, dialect.sent(task_of(done, history_length=history_length)))
    if not p.is_blocking:
        runs.spawn(run, budget)
        return _answer(rpc_id, dialect.sent(task_of(run, history_length=history_length)))
    try:
        await runs.execute(run, budget)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:  # noqa: BLE001 - recorded on the run as failed: answered as a failed Task
        pass
    done = await runs.get(run.id, principal) or run
    return _answer(rpc_id, dialect.sent(task_of(done, history_length=history_length)))


def _event_stream() -> web.StreamResponse:
    return web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})


def _sender(request: web.Request, resp: web.StreamResponse, rpc_id: Any, dialect: Dialect
            ) -> Callable[[list[dict[str, Any]]], Awaitable[None]]:
    async def send(evs: list[dict[str, Any]]) -> None:
        for ev in evs:
            data = json.dumps(rpc_result(rpc_id, dialect.event(ev)), ensure_ascii=False, separators=(",", ":"))
            await _write(request, resp, f"data: {data}\n\n".encode())
    return send


async def _stream(request: web.Request, principal: Principal, rpc_id: Any, params: dict[str, Any],
                  dialect: Dialect) -> web.StreamResponse:
    runs = request.app[RUNS_KEY]
    _, run, budget = await _admit(request, principal, params, dialect)
    resp = _event_stream()
    events = StreamEvents(run)
    send = _sender(request, resp, rpc_id, dialect)

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


async def _get(request: web.Request, principal: Principal, rpc_id: Any, params: dict[str, Any],
               dialect: Dialect) -> web.StreamResponse:
    p = task_id_params(params)
    run = await _own_task(request, principal, p.id)
    return _answer(rpc_id, dialect.task(task_of(run, history_length=p.history_length)))


async def _cancel(request: web.Request, principal: Principal, rpc_id: Any, params: dict[str, Any],
                  dialect: Dialect) -> web.StreamResponse:
    p = task_id_params(params)
    run = await _own_task(request, principal, p.id)
    if run.is_done:
        raise RpcError(TASK_NOT_CANCELABLE, f"task is {run.status}: it cannot be canceled")
    run = await request.app[RUNS_KEY].cancel(run.id, principal) or run
    return _answer(rpc_id, dialect.task(task_of(run)))


async def _list(request: web.Request, principal: Principal, rpc_id: Any, params: dict[str, Any],
                dialect: Dialect) -> web.StreamResponse:
    """ListTasks: the caller's own A2A tasks only (the index is per principal, and each run is read as it)."""
    p = list_params(params)
    runs = request.app[RUNS_KEY]
    mine = await asyncio.get_running_loop().run_in_executor(
        runs.pool, lambda: A2ATaskIndex(runs.store).runs_of(principal, kind=A2A_KIND, now_s=time.time()))
    return _answer(rpc_id, list_page(mine, p))


async def _subscribe(request: web.Request, principal: Principal, rpc_id: Any, params: dict[str, Any],
                     dialect: Dialect) -> web.StreamResponse:
    """SubscribeToTask (1.0 spec 3.1.6): the task as it is now, then its steps as any replica records them, the
    answer artifact and the final status; the stream ends with the task. A finished task cannot be subscribed
    to (UnsupportedOperationError)."""
    runs = request.app[RUNS_KEY]
    p = task_id_params(params)
    run = await _own_task(request, principal, p.id)
    if run.is_done:
        raise RpcError(UNSUPPORTED_OPERATION, f"task is {run.status}: a finished task cannot be subscribed to "
                       "(read it with GetTask)")
    resp = _event_stream()
    send = _sender(request, resp, rpc_id, dialect)
    events = StreamEvents(run)
    await resp.prepare(request)
    await send([task_of(run, history_length=p.history_length)])
    after = run.events  # what happened before is in the task just sent
    give_up = time.monotonic() + max(run.deadline_s - time.time(), 0.0) + 60.0
    while True:
        recorded = await runs.events(run.id, after=after)
        for ev in recorded:
            after = ev["seq"]
            if ev.get("type") == "step":
                await send(events.step(ev["step"]))
        if not recorded:
            run = await runs.get(run.id, principal) or run
            if run.is_done or time.monotonic() > give_up:
                break
            await asyncio.sleep(EVENTS_POLL_S)
    if run.is_done:
        await send(events.finish(run))
    return resp


def _refuse(code: int, message: str) -> Handler:
    async def refuse(request: web.Request, principal: Principal, rpc_id: Any, params: dict[str, Any],
                     dialect: Dialect) -> web.StreamResponse:
        raise RpcError(code, message)
    return refuse


# 1.0 spec 3.3.4: what the card's capabilities leave out (pushNotifications, extendedAgentCard) is refused so.
_NO_PUSH = _refuse(PUSH_NOT_SUPPORTED, "push notifications are not supported (the agent card says "
                   "capabilities.pushNotifications: false): poll with GetTask or stream with SubscribeToTask")
METHODS: dict[str, dict[str, Handler]] = {
    V03: {"message/send": _send, "message/stream": _stream, "tasks/get": _get, "tasks/cancel": _cancel},
    V10: {"SendMessage": _send, "SendStreamingMessage": _stream, "GetTask": _get, "ListTasks": _list,
          "CancelTask": _cancel, "SubscribeToTask": _subscribe,
          "GetExtendedAgentCard": _refuse(UNSUPPORTED_OPERATION, "this agent has no extended agent card (the "
                                          "card says capabilities.extendedAgentCard: false)"),
          "CreateTaskPushNotificationConfig": _NO_PUSH, "GetTaskPushNotificationConfig": _NO_PUSH,
          "ListTaskPushNotificationConfigs": _NO_PUSH, "DeleteTaskPushNotificationConfig": _NO_PUSH},
}
