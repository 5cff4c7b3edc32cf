"""Shared parts for the runtime server tests (imported by name; not a conftest, so the other runtime rooms'
tests keep theirs): a runtime configuration rendered by the operator's own render.agentapp.runtime_config, a
key store file, the real llm-d-inference-sim (bench.simulator) or a scripted OpenAI-compatible model server that
records what it was sent, and the runtime served on 127.0.0.1 by a real aiohttp runner."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

import aiohttp
import pytest
import yaml
from aiohttp import web

from agentfleet.api import parse
from agentfleet.api.runtime_config import RuntimeConfig
from agentfleet.bench import simulator
from agentfleet.bench.simulator import free_port
from agentfleet.render.agentapp import runtime_config
from agentfleet.runtime.llm import ModelClient
from agentfleet.runtime.server import build_app
from agentfleet.runtime.serving import Retrieval, Runtime
from agentfleet.runtime.identity import Identity
from agentfleet.runtime.metrics import RuntimeMetrics
from agentfleet.telemetry import DISABLED


def _sim_missing() -> str | None:
    """Why the llm-d simulator cannot run here (None when it can: cached, or buildable with Go)."""
    import os
    import shutil

    if simulator.binary(build=False).exists():
        return None
    if os.environ.get("AGENTFLEET_SIM_BIN"):
        return f"$AGENTFLEET_SIM_BIN names no file: {os.environ['AGENTFLEET_SIM_BIN']}"
    if shutil.which("go") and simulator.BUILD_SCRIPT.exists():
        return None  # running_fleet builds it once (e2e/sim/build.sh)
    return f"llm-d-inference-sim {simulator.SIM_VERSION} is not built and Go is not installed (e2e/sim/build.sh)"


SIM_MISSING = _sim_missing()
needs_sim = pytest.mark.skipif(SIM_MISSING is not None, reason=SIM_MISSING or "")

NS = "team-a"
KEYS = {
    "key-alice-eng-0001": {"user": "alice", "tenant": "acme", "groups": ["eng", "all"]},
    "key-frank-fin-0002": {"user": "frank", "tenant": "acme", "groups": ["finance", "all"]},
    "key-gina-globex-03": {"user": "gina", "tenant": "globex", "groups": ["all"]},
}
ALICE, FRANK, GINA = "key-alice-eng-0001", "key-frank-fin-0002", "key-gina-globex-03"


def _res(kind: str, name: str, spec: dict[str, Any]) -> Any:
    return parse({"apiVersion": "agentfleet.io/v1alpha1", "kind": kind,
                  "metadata": {"name": name, "namespace": NS}, "spec": spec})


def make_config(tmp: Path, *, large_url: str, small_url: str | None = None, served: str = "sim-model",
                app: dict[str, Any] | None = None, budget: dict[str, Any] | None = None,
                index_uri: str | None = None) -> RuntimeConfig:
    """The runtime.yaml the operator would render for this app, pointed at local model servers."""
    spec = {"fleets": {"large": "large", "small": "small"},
            "auth": {"apiKeysSecretRef": {"name": "keys", "key": "keys.yaml"}},
            "tools": {"builtin": ["calculator"]},
            "limits": {"maxSteps": 6, "maxTokens": 4000, "deadlineSeconds": 20, "toolTimeoutSeconds": 5}}
    if index_uri:
        spec["index"] = {"name": "docs", "topK": 3}
        spec["tools"] = {"builtin": ["retrieve", "calculator"]}
    for k, v in (app or {}).items():
        spec[k] = v
    fleets = {n: _res("ModelFleet", n, {"model": {"uri": "hf://acme/m", "servedModelName": served}})
              for n in ("large", "small")}
    index = _res("VectorIndex", "docs", {"source": {"configMap": {"name": "corpus"}}}) if index_uri else None
    bud = _res("Budget", "spend", budget) if budget else None
    keys_file = tmp / "keys.yaml"
    keys_file.write_text(yaml.safe_dump(KEYS))
    cfg = runtime_config(_res("AgentApp", "assistant", spec), fleets=fleets, index=index, budget=bud,
                         fleet_urls={"large": large_url, "small": small_url or large_url}, keys_file=str(keys_file))
    if index_uri and cfg.index is not None:
        cfg = cfg.model_copy(update={"index": cfg.index.model_copy(update={"uri": index_uri,
                                                                          "collection": "documents"})})
    # What the operator writes into the ConfigMap must read back as the same model.
    return RuntimeConfig.model_validate(yaml.safe_load(yaml.safe_dump(cfg.wire())))


@dataclass
class Served:
    url: str
    runtime: Runtime
    runner: web.AppRunner
    session: aiohttp.ClientSession

    async def post(self, path: str, body: Any, key: str | None = ALICE, *, headers: dict[str, str] | None = None,
                   **kw: Any) -> tuple[int, Any]:
        headers = {**({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
        async with self.session.post(self.url + path, json=body, headers=headers, **kw) as r:
            return r.status, await r.json(content_type=None)

    async def get(self, path: str, key: str | None = ALICE) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with self.session.get(self.url + path, headers=headers) as r:
            text = await r.text()
            try:
                return r.status, json.loads(text)
            except json.JSONDecodeError:
                return r.status, text

    async def chat(self, content: str, key: str = ALICE, **extra: Any) -> tuple[int, Any]:
        return await self.post("/v1/chat/completions", {"messages": [{"role": "user", "content": content}],
                                                        **extra}, key)

    async def stream(self, content: str, key: str = ALICE, **extra: Any) -> tuple[int, list[Any]]:
        body = {"messages": [{"role": "user", "content": content}], "stream": True, **extra}
        async with self.session.post(self.url + "/v1/chat/completions", json=body,
                                     headers={"Authorization": f"Bearer {key}"}) as r:
            if r.status != 200:
                return r.status, [await r.json(content_type=None)]
            events = []
            async for raw in r.content:
                line = raw.decode().strip()
                if line.startswith("data:"):
                    data = line[5:].strip()
                    events.append(data if data == "[DONE]" else json.loads(data))
            return r.status, events

    async def run_to_end(self, text: str, key: str = ALICE, deadline_s: float = 30) -> dict[str, Any]:
        status, run = await self.post("/v1/runs", {"input": text}, key)
        assert status == 202, run
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:  # a poll of a condition with a deadline
            status, got = await self.get(f"/v1/runs/{run['id']}", key)
            assert status == 200, got
            if got["status"] not in ("queued", "running"):
                return got
            await asyncio.sleep(0.05)
        raise AssertionError(f"run {run['id']} did not finish within {deadline_s}s")


@contextlib.asynccontextmanager
async def serve(config: RuntimeConfig, tmp: Path, *, retriever: Any = None, ledger: Any = None,
                with_ledger: bool = True, key_reload_s: float = 5.0,
                external: Any = None, run_store: Any = None, replica: str | None = None,
                max_runs: int = 1000, telemetry: Any = None) -> AsyncIterator[Served]:
    """`run_store` and `ledger` shared by several `serve`s make them replicas of one app. `telemetry`: what
    Runtime.open_telemetry made of the config (None: off)."""
    metrics = RuntimeMetrics()
    telemetry = telemetry or DISABLED
    client = ModelClient(config.models, telemetry=telemetry)
    if ledger is None and with_ledger:
        ledger = Runtime.open_ledger(config, state_dir=tmp)
    retrieval = Retrieval(retriever, top_k=config.index.top_k if config.index else 3,
                          metrics=metrics, telemetry=telemetry) if retriever is not None else None
    rt = Runtime(config, model=client, identity=Identity(config.api_keys_file), ledger=ledger,
                 retrieval=retrieval, metrics=metrics, external=external, telemetry=telemetry)
    app = build_app(rt, client, key_reload_s=key_reload_s, run_store=run_store, replica=replica, max_runs=max_runs)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=2)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
    try:
        yield Served(f"http://127.0.0.1:{port}", rt, runner, session)
    finally:
        await session.close()
        await runner.cleanup()
        if retrieval is not None:
            retrieval.pool.shutdown(wait=True)


# --- a scripted OpenAI-compatible model server -------------------------------------------------------------

Reply = Callable[[dict[str, Any], dict[str, str]], Any]


@dataclass
class Scripted:
    """Answers each chat completion with `reply(body, headers)`: a string (the content), a dict (the message),
    an int (that HTTP status), or an awaitable of one of these. Records every request."""

    reply: Reply
    requests: list[tuple[dict[str, Any], dict[str, str]]] = field(default_factory=list)
    url: str = ""


@contextlib.asynccontextmanager
async def scripted(reply: Reply) -> AsyncIterator[Scripted]:
    s = Scripted(reply)

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        headers = {k.lower(): v for k, v in request.headers.items()}
        s.requests.append((body, headers))
        out = s.reply(body, headers)
        if asyncio.iscoroutine(out):
            out = await out
        if isinstance(out, int):
            return web.json_response({"error": {"message": "injected", "code": str(out)}}, status=out)
        message = {"role": "assistant", "content": out} if isinstance(out, str) else out
        prompt = sum(len(json.dumps(m)) for m in body["messages"]) // 4
        completion = max(1, len(message.get("content") or "") // 4)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
        if body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            text = message.get("content") or ""
            for i in range(0, len(text), 5):
                chunk = {"model": body["model"], "choices": [{"index": 0, "delta": {"content": text[i:i + 5]}}]}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            end = {"model": body["model"], "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
            await resp.write(f"data: {json.dumps(end)}\n\n".encode())  # as vLLM ends a choice
            await resp.write(f"data: {json.dumps({'model': body['model'], 'choices': [], 'usage': usage})}\n\n"
                             .encode())
            await resp.write(b"data: [DONE]\n\n")
            return resp
        return web.json_response({"id": "x", "object": "chat.completion", "model": body["model"],
                                  "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                                  "usage": usage})

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "sim-model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    s.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield s
    finally:
        await runner.cleanup()


async def until(pred: Any, deadline_s: float = 20.0, every_s: float = 0.05) -> Any:
    """Poll `pred` (a value or a coroutine) until it is truthy, failing the test after `deadline_s`."""
    end = time.monotonic() + deadline_s
    while True:  # a poll of a condition with a deadline
        got = pred()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(every_s)


def action(tool: str, **arguments: Any) -> str:
    return json.dumps({"action": tool, "arguments": arguments})


def final(answer: str) -> str:
    return json.dumps({"action": "final_answer", "answer": answer})


def last_user_or_tool(body: dict[str, Any]) -> str:
    return body["messages"][-1]["content"] or ""


@contextlib.contextmanager
def mcp_server(source: str, workdir: Path, *args: str) -> Iterator[str]:
    """A real MCP server (the `mcp` package, streamable HTTP) from `source` in its own process, called with its port
    and `args`; yields its URL once the port answers."""
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    script = workdir / "mcp_server.py"
    script.write_text(source)
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(script), str(port), *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/mcp"
    deadline = time.monotonic() + 30
    try:
        while True:  # poll until the port answers, with a deadline
            assert proc.poll() is None, "the MCP server exited"
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except urllib.error.HTTPError:
                break  # it answers (a plain GET is not an MCP request)
            except OSError:
                assert time.monotonic() < deadline, "the MCP server did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
