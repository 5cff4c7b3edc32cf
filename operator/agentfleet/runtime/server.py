"""The runtime's HTTP glue (aiohttp): routes -> serving. `POST /v1/chat/completions` (JSON or SSE),
`POST /v1/runs`, `GET|DELETE /v1/runs/{id}`, `GET /healthz`, `GET /readyz`, `GET /metrics`, and the chat page
at `/`. Every failure is an OpenAI error body (errors.http_error), never a traceback. A client that disconnects
cancels its handler (handler_cancellation), which cancels the agent and releases the task's reservation."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from aiohttp import web

from ..api.runtime_config import RuntimeConfig
from ..errors import AgentfleetError, InvalidRequest, UpstreamError, http_error
from ..retrieval.filters import Principal
from .identity import Identity
from .llm import ModelClient
from .metrics import CONTENT_TYPE_LATEST, RuntimeMetrics
from .protocol import ChatRequest, RunRequest, chunk, completion_body, finish_reason, history_of, parse_body
from .runs import RegistryFull, RunRegistry
from .serving import Retrieval, Runtime, TaskOutcome, new_task_id

__all__ = ["build_app", "build_runtime", "serve", "RUNTIME_KEY"]

log = logging.getLogger("agentfleet.runtime")
RUNTIME_KEY: web.AppKey[Runtime] = web.AppKey("runtime", Runtime)
CLIENT_KEY: web.AppKey[ModelClient] = web.AppKey("client", ModelClient)
RUNS_KEY: web.AppKey[RunRegistry] = web.AppKey("runs", RunRegistry)
WEB_DIR = Path(__file__).with_name("web")
KEY_RELOAD_S = 5.0
BUDGET_REFRESH_S = 5.0
ANSWER_CHUNK_CHARS = 24


def _error_response(exc: BaseException) -> web.Response:
    err = http_error(exc)
    return web.json_response(err.body, status=err.status, headers=err.headers)


def _plain_error(status: int, message: str, code: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                        "code": code}}, status=status)


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
            return _plain_error(e.status, e.reason or "error", "not_found" if e.status == 404 else "http_error")
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


def _principal(request: web.Request) -> Principal:
    rt = request.app[RUNTIME_KEY]
    if rt.identity is None:
        raise InvalidRequest("this runtime has no key store")
    return rt.identity.authenticate(request.headers.get("Authorization"))


async def _json(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequest("the request body is not valid JSON") from None


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

async def _chat(request: web.Request) -> web.StreamResponse:
    rt = request.app[RUNTIME_KEY]
    principal = _principal(request)
    req: ChatRequest = parse_body(ChatRequest, await _json(request))
    history = history_of(req.messages)
    task_id = new_task_id()
    budget = await rt.admit(principal, task_id)  # 429 here, before any stream starts
    model_name = rt.config.app
    completion_id = "chatcmpl-" + task_id.removeprefix("task-")
    if not req.stream:
        try:
            outcome = await rt.run_task(principal, history, task_id=task_id, budget=budget,
                                        answer_max_tokens=req.max_completion_tokens or req.max_tokens)
        except asyncio.CancelledError:
            raise
        _raise_if_empty_failure(outcome)
        return web.json_response(completion_body(completion_id=completion_id, model=model_name,
                                                 answer=outcome.result.answer, summary=outcome.summary()))
    return await _chat_stream(request, rt, req, principal, history, task_id, budget, completion_id, model_name)


def _raise_if_empty_failure(outcome: TaskOutcome) -> None:
    """A task that produced nothing because the model failed is an upstream error, not an empty answer."""
    r = outcome.result
    if r.stop_reason == "model_error" and not r.answer:
        raise UpstreamError(f"the model failed before any answer: {r.detail}")


async def _chat_stream(request: web.Request, rt: Runtime, req: ChatRequest, principal: Principal,
                       history: list[dict[str, Any]], task_id: str, budget: Any, completion_id: str,
                       model_name: str) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    try:
        await resp.prepare(request)
    except BaseException:  # the client left before the task started: give its reservation back now
        await asyncio.shield(budget.abandon())
        raise
    created = int(time.time())
    streamed: list[str] = []

    async def send(obj: dict[str, Any] | str) -> None:
        data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        await resp.write(f"data: {data}\n\n".encode())

    async def emit(event: dict[str, Any]) -> None:
        await send(chunk(completion_id=completion_id, model=model_name, created=created, extra=event))

    async def on_delta(text: str) -> None:
        for piece in _pieces(text) if len(text) > ANSWER_CHUNK_CHARS else [text]:
            streamed.append(piece)
            await send(chunk(completion_id=completion_id, model=model_name, created=created,
                             delta={"content": piece}))

    try:
        await send(chunk(completion_id=completion_id, model=model_name, created=created,
                         delta={"role": "assistant", "content": ""}))
    except BaseException:
        await asyncio.shield(budget.abandon())
        raise
    try:
        outcome = await rt.run_task(principal, history, task_id=task_id, budget=budget, emit=emit,
                                    on_delta=on_delta, answer_max_tokens=req.max_completion_tokens or req.max_tokens)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as e:  # the stream is open: report in-band, as OpenAI does
        if not isinstance(e, AgentfleetError):
            log.exception("task %s failed", task_id)
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


# --- runs -------------------------------------------------------------------------------------------------------

async def _run_create(request: web.Request) -> web.Response:
    rt, runs = request.app[RUNTIME_KEY], request.app[RUNS_KEY]
    principal = _principal(request)
    req: RunRequest = parse_body(RunRequest, await _json(request))
    task_id = new_task_id()
    budget = await rt.admit(principal, task_id)
    try:
        run = runs.add("run-" + task_id.removeprefix("task-"), principal)
    except RegistryFull as e:
        await budget.abandon()
        return web.json_response({"error": {"message": str(e), "type": "server_error", "param": None,
                                            "code": "too_many_runs"}}, status=429, headers={"Retry-After": "5"})

    async def emit(event: dict[str, Any]) -> None:
        if event.get("type") == "step":
            run.steps.append(event["step"])

    async def work() -> None:
        run.status = "running"
        try:
            outcome = await rt.run_task(principal, [{"role": "user", "content": req.input}], task_id=task_id,
                                        budget=budget, emit=emit)
        except asyncio.CancelledError:
            run.status = "cancelled"
            raise
        except Exception as e:  # noqa: BLE001 - recorded on the run, never raised into the loop
            if not isinstance(e, AgentfleetError):
                log.exception("run %s failed", run.id)
            run.status, run.error = "failed", http_error(e).body["error"]
            return
        run.steps = outcome.steps
        run.result = {"answer": outcome.result.answer, "agentfleet": outcome.summary()}
        run.status = "completed" if outcome.result.is_complete else "incomplete"

    run.task = asyncio.get_running_loop().create_task(work(), name=run.id)
    return web.json_response(run.wire(), status=202)


def _own_run(request: web.Request) -> Any:
    run = request.app[RUNS_KEY].get(request.match_info["run_id"], _principal(request))
    if run is None:  # unknown and someone else's look the same
        raise web.HTTPNotFound(reason="no such run")
    return run


async def _run_get(request: web.Request) -> web.Response:
    return web.json_response(_own_run(request).wire())


async def _run_cancel(request: web.Request) -> web.Response:
    run = _own_run(request)
    if run.task is not None and not run.task.done():
        run.task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(run.task), 5)
        except (asyncio.CancelledError, asyncio.TimeoutError):
            pass
    return web.json_response(run.wire())


# --- probes -------------------------------------------------------------------------------------------------

async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    rt, client = request.app[RUNTIME_KEY], request.app[CLIENT_KEY]
    checks = await rt.readiness(client.probe)
    ready = all(v is None for v in checks.values())
    return web.json_response({"ready": ready, "checks": {k: v or "ok" for k, v in checks.items()}},
                             status=200 if ready else 503)


async def _metrics(request: web.Request) -> web.Response:
    body = request.app[RUNTIME_KEY].metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _index(_: web.Request) -> web.Response:
    return web.Response(body=(WEB_DIR / "index.html").read_bytes(), content_type="text/html")


# --- assembly -------------------------------------------------------------------------------------------------

def build_app(runtime: Runtime, client: ModelClient, *, max_runs: int = 1000,
              key_reload_s: float = KEY_RELOAD_S, budget_refresh_s: float = BUDGET_REFRESH_S) -> web.Application:
    """The aiohttp application. The client starts and closes with it; so do the key reload timer and the runs."""
    app = web.Application(middlewares=[_errors_and_metrics], client_max_size=1 << 20)
    app[RUNTIME_KEY] = runtime
    app[CLIENT_KEY] = client
    app[RUNS_KEY] = RunRegistry(max_runs=max_runs)
    app.router.add_post("/v1/chat/completions", _chat)
    app.router.add_post("/v1/runs", _run_create)
    app.router.add_get("/v1/runs/{run_id}", _run_get)
    app.router.add_delete("/v1/runs/{run_id}", _run_cancel)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/", _index)

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        await client.start()
        refresh = getattr(runtime.external, "refresh", None)
        if refresh is not None:  # a server that is down now is listed again by the next /readyz
            await refresh()
        reload = asyncio.get_running_loop().create_task(_reload_keys(runtime.identity, key_reload_s))
        budget = asyncio.get_running_loop().create_task(_refresh_budget(runtime, budget_refresh_s))
        yield
        reload.cancel()
        budget.cancel()
        for run in app[RUNS_KEY].running():
            if run.task is not None:
                run.task.cancel()
        await asyncio.gather(*(r.task for r in app[RUNS_KEY].running() if r.task), return_exceptions=True)
        await client.close()
        runtime.close()

    app.cleanup_ctx.append(lifecycle)
    return app


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
    client = ModelClient(config.models)
    identity = Identity(config.api_keys_file)
    retrieval = open_retrieval(config, metrics) if with_retrieval else None
    ledger = Runtime.open_ledger(config, state_dir=state_dir)
    external = None
    if config.tools.mcp_servers:
        from .mcp_tools import McpTools

        external = McpTools(config.tools.mcp_servers)
    return Runtime(config, model=client, identity=identity, ledger=ledger, retrieval=retrieval,
                   metrics=metrics, external=external), client


def serve(config: RuntimeConfig, *, host: str, port: int, state_dir: str | None = None) -> None:
    runtime, client = build_runtime(config, state_dir=state_dir)
    app = build_app(runtime, client)
    loop = _event_loop()
    log.info("agentfleet runtime %s/%s on http://%s:%d (%s)", config.namespace, config.app, host, port,
             type(loop).__module__.split(".")[0])
    web.run_app(app, host=host, port=port, handler_cancellation=True, access_log=None, print=None, loop=loop)


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (`agentfleet bench runtime` measured it), else asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()

