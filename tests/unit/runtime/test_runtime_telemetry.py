"""OpenTelemetry (GenAI semantic conventions): a real runtime exports its span tree to a real Jaeger v2 (built from
Go modules by e2e/jaeger/build.sh) and the test reads it back from Jaeger's query API: one run, one run taken over by
a second replica (the same trace), and a run whose model calls go through the ModelFleet router (its span between
the runtime's chat span and the engine). With telemetry off nothing is propagated and the SDK is never imported."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest
from aiohttp import web

from runtime_kit import ALICE, KEYS, action, final, last_user_or_tool, make_config, scripted, serve
from runtime_kit import until as _until

from agentfleet.bench.simulator import free_port
from agentfleet.router.proxy import ProxySettings, build_app as build_router
from agentfleet.router.state import FleetState
from agentfleet.runtime.runs import RunStore
from agentfleet.runtime.server import RUNS_KEY
from agentfleet.runtime.serving import Runtime
from agentfleet.state.sqlite import SqliteStore
from agentfleet.telemetry import TelemetrySettings, start as start_telemetry

ROOT = Path(__file__).resolve().parents[3]
BUILD = ROOT / "e2e" / "jaeger" / "build.sh"
QUESTION = "What is 6 times 7? Please double-check it."
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def _jaeger_binary() -> tuple[Path | None, str]:
    if not BUILD.exists():
        return None, f"{BUILD} is missing"
    path = Path(subprocess.run([str(BUILD), "--print-binary"], capture_output=True, text=True,
                               check=True).stdout.strip())
    if path.exists():
        return path, ""
    if shutil.which("go") is None:
        return None, "Jaeger is not built and Go is not installed (e2e/jaeger/build.sh)"
    return path, ""


JAEGER, WHY_NOT = _jaeger_binary()


def _config(ports: dict[str, int]) -> str:
    """Jaeger v2 (a Collector distribution): OTLP/HTTP in, traces to in-memory storage behind the query API,
    metrics to the debug exporter (its detailed output is the test's view of the metrics)."""
    return f"""
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
    metrics:
      receivers: [otlp]
      exporters: [debug]
  telemetry:
    metrics:
      level: none
extensions:
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:{ports['health']}
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{ports['query']}
    grpc:
      endpoint: 127.0.0.1:{ports['query_grpc']}
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 1000
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{ports['otlp']}
processors:
  batch:
    timeout: 200ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
  debug:
    verbosity: detailed
"""


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    if JAEGER is None:
        pytest.skip(WHY_NOT)
    if not JAEGER.exists():  # build once (minutes, cold), like the simulator
        subprocess.run([str(BUILD)], check=True, stdout=subprocess.DEVNULL)
    tmp = tmp_path_factory.mktemp("jaeger")
    ports = {k: free_port() for k in ("health", "query", "query_grpc", "otlp")}
    (tmp / "config.yaml").write_text(_config(ports))
    log = (tmp / "jaeger.log").open("w")
    proc = subprocess.Popen([str(JAEGER), "--config", str(tmp / "config.yaml")], stdout=log,
                            stderr=subprocess.STDOUT)
    query = f"http://127.0.0.1:{ports['query']}"
    try:
        deadline = time.monotonic() + 60
        while True:  # a poll of a condition with a deadline
            if proc.poll() is not None:
                raise AssertionError(f"jaeger exited {proc.returncode}:\n{(tmp / 'jaeger.log').read_text()[-3000:]}")
            try:
                _get_json(query + "/api/services")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("jaeger's query API did not answer within 60s") from None
                time.sleep(0.2)
        yield {"otlp": f"http://127.0.0.1:{ports['otlp']}", "query": query, "log": tmp / "jaeger.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _reply(body: dict[str, Any], _: dict[str, str]) -> str:
    """The root agent: calculator, then a delegation to `checker`, then the answer; the checker answers at once.
    The answer step (free text, no response_format) writes the answer."""
    last = last_user_or_tool(body)
    if body.get("response_format") is None:
        return "Confirmed: 42." if "Check that 6*7 is 42" in last else "6 times 7 is 42."
    if last.startswith("Check that 6*7 is 42"):
        return final("Confirmed: 42.")
    if body["messages"][-1]["role"] == "user":
        return action("calculator", expression="6*7")
    if "checker:" in last:
        return final("6 times 7 is 42.")
    return action("delegate", calls=[{"agent": "checker", "task": "Check that 6*7 is 42"}])


def _tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span["tags"]}


def _parent(span: dict[str, Any]) -> str | None:
    return next((r["spanID"] for r in span.get("references", []) if r["refType"] == "CHILD_OF"), None)


@pytest.mark.slow
def test_a_run_exports_the_genai_span_tree_to_jaeger(jaeger: dict[str, Any], tmp_path: Path) -> None:
    service = f"telemetry-test-{os.getpid()}-{time.monotonic_ns()}"
    app = {"tools": {"builtin": ["calculator", "delegate"]},
           "subAgents": [{"name": "checker", "description": "checks arithmetic", "systemPrompt": "Check it.",
                          "tools": ["calculator"]}],
           "telemetry": {"otlpEndpoint": jaeger["otlp"], "serviceName": service}}

    async def main() -> tuple[int, Any, list[tuple[dict[str, Any], dict[str, str]]]]:
        async with scripted(_reply) as model:
            config = make_config(tmp_path, large_url=model.url, app=app)
            assert config.telemetry is not None and config.telemetry.otlp_endpoint == jaeger["otlp"]
            async with serve(config, tmp_path, telemetry=Runtime.open_telemetry(config)) as s:
                status, body = await s.post(
                    "/v1/chat/completions", {"messages": [{"role": "user", "content": QUESTION}]}, ALICE,
                    headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
            # serve's exit closed the runtime, which flushed the spans and the metrics to the collector.
            return status, body, list(model.requests)

    status, body, requests = asyncio.run(main())
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == "6 times 7 is 42."

    deadline, spans = time.monotonic() + 20, []
    while time.monotonic() < deadline:  # the collector batches: poll until the whole tree is stored
        try:
            got = _get_json(f"{jaeger['query']}/api/traces/{CALLER_TRACE}")
            spans = got["data"][0]["spans"] if got.get("data") else []
        except OSError:
            spans = []
        if len(spans) >= 4 + len(requests):  # the agents, the tools and one chat span per model request
            break
        time.sleep(0.2)
    by_id = {s["spanID"]: s for s in spans}
    names = sorted(s["operationName"] for s in spans)
    assert sorted(n for n in names if not n.startswith("chat ")) == [
        "execute_tool calculator", "execute_tool delegate", "invoke_agent assistant", "invoke_agent checker"], names
    assert names.count("chat sim-model") == len(requests), names

    def only(name: str) -> dict[str, Any]:
        found = [s for s in spans if s["operationName"] == name]
        assert len(found) == 1, (name, names)
        return found[0]

    root, sub = only("invoke_agent assistant"), only("invoke_agent checker")
    calc, delegate = only("execute_tool calculator"), only("execute_tool delegate")
    # The caller's trace is kept: its span is the run's parent.
    assert all(s["traceID"] == CALLER_TRACE for s in spans)
    assert _parent(root) == CALLER_SPAN
    assert _parent(calc) == _parent(delegate) == root["spanID"]
    assert _parent(sub) == delegate["spanID"]  # the sub-agent's run is a child of the delegating tool call
    chats = [s for s in spans if s["operationName"] == "chat sim-model"]
    parents = [by_id[_parent(c)]["operationName"] for c in chats]  # every model call is its agent's child
    assert set(parents) == {"invoke_agent assistant", "invoke_agent checker"}
    assert parents.count("invoke_agent assistant") >= 3  # calculator, delegate, answer

    rt = _tags(root)
    assert rt["gen_ai.operation.name"] == "invoke_agent" and rt["gen_ai.agent.name"] == "assistant"
    assert rt["agentfleet.stop_reason"] == "answered" and rt["agentfleet.tenant"] == "acme"
    assert rt["agentfleet.task.cost_usd"] >= rt["agentfleet.cost_usd"] >= 0
    assert rt["gen_ai.usage.input_tokens"] > 0 and rt["gen_ai.usage.output_tokens"] > 0
    assert _tags(sub)["gen_ai.agent.name"] == "checker" and _tags(sub)["agentfleet.agent.depth"] == 1
    for c in chats:
        t = _tags(c)
        assert t["gen_ai.operation.name"] == "chat" and t["gen_ai.request.model"] == "sim-model"
        assert t["gen_ai.response.model"] == "sim-model"
        assert t["gen_ai.usage.input_tokens"] > 0 and t["gen_ai.usage.output_tokens"] > 0
        assert json.loads(t["gen_ai.response.finish_reasons"]) == ["stop"]
        assert t["server.address"] == "127.0.0.1" and "agentfleet.cost_usd" in t
        assert t["span.kind"] == "client"
    for tool, span in (("calculator", calc), ("delegate", delegate)):
        t = _tags(span)
        assert (t["gen_ai.operation.name"], t["gen_ai.tool.name"], t["gen_ai.tool.type"]) == (
            "execute_tool", tool, "function")
        assert t["gen_ai.tool.call.id"]

    # Privacy: no user, no groups, no prompt, tool result or answer text in any attribute.
    user = KEYS[ALICE]
    for s in spans:
        for key, value in _tags(s).items():
            assert "group" not in key and "user" not in key, key
            text = json.dumps(value)
            for secret in (user["user"], QUESTION, "Confirmed: 42.", "6 times 7 is 42.", json.dumps(user["groups"])):
                assert secret not in text, (s["operationName"], key, value)

    # W3C traceparent went out on every model call, parented by that call's chat span.
    chat_ids = {c["spanID"] for c in chats}
    sent = [h.get("traceparent", "") for _, h in requests]
    assert all(p.startswith(f"00-{CALLER_TRACE}-") for p in sent), sent
    assert {p.split("-")[2] for p in sent} == chat_ids

    # The GenAI client metrics reached the collector (its debug exporter prints them).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        out = jaeger["log"].read_text()
        if "gen_ai.client.token.usage" in out and "gen_ai.client.operation.duration" in out:
            break
        time.sleep(0.2)
    assert "gen_ai.client.token.usage" in out and "gen_ai.client.operation.duration" in out, out[-2000:]


def _spans_until(jaeger: dict[str, Any], trace_id: str, is_complete: Any, deadline_s: float = 20
                 ) -> tuple[list[Any], dict[str, str]]:
    """The trace's spans once `is_complete(spans)` holds (the collector batches), else what is there at the
    deadline; and the service name of each span's processID (ids are per answer: read from the same one)."""
    deadline, spans, services = time.monotonic() + deadline_s, [], {}
    while time.monotonic() < deadline:
        try:
            got = _get_json(f"{jaeger['query']}/api/traces/{trace_id}")
            trace = got["data"][0] if got.get("data") else {"spans": [], "processes": {}}
        except OSError:
            trace = {"spans": [], "processes": {}}
        spans, services = trace["spans"], {k: v["serviceName"] for k, v in trace["processes"].items()}
        if is_complete(spans):
            break
        time.sleep(0.2)
    return spans, services


def _new_traceparent() -> tuple[str, str, str]:
    """(traceparent, trace id, span id) of a caller: a trace of this test's own (Jaeger keeps the module's)."""
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def _trace_of(headers: dict[str, str]) -> tuple[str, str]:
    """(trace id, parent span id) of a W3C traceparent header."""
    _, trace_id, span_id, _ = headers["traceparent"].split("-")
    return trace_id, span_id


async def _finished(served: Any, run_id: str) -> Any:
    status, got = await served.get(f"/v1/runs/{run_id}")
    return got if status == 200 and got["status"] not in ("queued", "running") else None


@pytest.mark.slow
@pytest.mark.parametrize("caller", [True, False], ids=["caller-traceparent", "runtime-started-trace"])
def test_a_run_taken_over_by_another_replica_continues_its_trace(jaeger: dict[str, Any], tmp_path: Path,
                                                                 caller: bool) -> None:
    """Replica A runs a step (a calculator call) and dies in its next model call; replica B takes the run over when
    A's lease lapses. B's segment is an `invoke_agent` span marked resumed, a child of A's root span, in A's trace,
    with its own chat and execute_tool children; the engine sees that trace on B's calls too."""
    service = f"takeover-{os.getpid()}-{time.monotonic_ns()}"
    traceparent, caller_trace, caller_span = _new_traceparent()
    app = {"telemetry": {"otlpEndpoint": jaeger["otlp"], "serviceName": service}}
    hang = asyncio.Event()
    calls: list[int] = []

    async def reply(body: dict[str, Any], _: dict[str, str]) -> str:
        calls.append(1)
        if body.get("response_format") is None:
            return "6 times 7 is 42."
        tools = [m for m in body["messages"] if m["role"] == "tool"]
        if not tools:
            return action("calculator", expression="6*7")
        if len(calls) == 2:  # replica A's second call: A dies while it waits
            await hang.wait()
        return action("calculator", expression="7*6") if len(tools) == 1 else final("42")

    async def main() -> tuple[dict[str, Any], list[dict[str, str]]]:
        async with scripted(reply) as model:
            async with contextlib.AsyncExitStack() as stack:
                config = make_config(tmp_path, large_url=model.url, app=app)
                served = []
                for name in ("a", "b"):
                    store = RunStore(SqliteStore(tmp_path / "runs.db"), lease_s=1.0)
                    served.append(await stack.enter_async_context(serve(
                        config, tmp_path, run_store=store, replica=name, telemetry=Runtime.open_telemetry(config))))
                a, b = served
                headers = {"traceparent": traceparent} if caller else {}
                status, run = await a.post("/v1/runs", {"input": "six times seven"}, headers=headers)
                assert status == 202, run
                await _until(lambda: len(calls) >= 2)  # A waits in its second model call
                for timer in a.runner.app[RUNS_KEY]._timers:  # A "dies": its leases lapse
                    timer.cancel()
                done = await _until(lambda: _finished(b, run["id"]))
                # A's call returns now and A finds the run is B's at its next write (a draining replica waits for
                # the runs it still holds, and A does not know yet that it lost this one).
                hang.set()
            # Leaving the stack closed both runtimes, which flushed their spans to the collector.
        return done, [h for _, h in model.requests]

    done, sent = asyncio.run(main())
    assert done["status"] == "completed" and done["replica"] == "b" and done["takeovers"] == 1, done
    trace_id = caller_trace if caller else _trace_of(sent[0])[0]
    # The engine saw one trace: A's calls and B's alike.
    assert len(sent) == 5 and [_trace_of(h)[0] for h in sent] == [trace_id] * len(sent)

    def is_complete(spans: list[Any]) -> bool:
        names = [x["operationName"] for x in spans]
        return names.count("invoke_agent assistant") == 2 and names.count("chat sim-model") == len(sent)

    spans, _ = _spans_until(jaeger, trace_id, is_complete)
    assert is_complete(spans), sorted(x["operationName"] for x in spans)
    assert all(x["traceID"] == trace_id for x in spans)
    first, resumed = sorted((x for x in spans if x["operationName"] == "invoke_agent assistant"),
                            key=lambda x: _tags(x).get("agentfleet.run.resumed", False))
    assert "agentfleet.run.resumed" not in _tags(first)
    assert _tags(resumed)["agentfleet.run.resumed"] is True and _tags(resumed)["agentfleet.run.takeovers"] == 1
    assert _tags(resumed)["gen_ai.conversation.id"] == _tags(first)["gen_ai.conversation.id"]
    assert _parent(first) == (caller_span if caller else None)
    assert _parent(resumed) == first["spanID"]  # every segment of the run hangs under its first
    children = {x["operationName"] for x in spans if _parent(x) == resumed["spanID"]}
    assert children == {"chat sim-model", "execute_tool calculator"}, children
    # B's model calls went out under B's own chat spans.
    b_chats = {x["spanID"] for x in spans if _parent(x) == resumed["spanID"] and x["operationName"].startswith("chat")}
    assert {_trace_of(h)[1] for h in sent[2:]} == b_chats


@pytest.mark.slow
def test_one_trace_runs_from_the_runtime_through_the_router_to_the_engine(jaeger: dict[str, Any],
                                                                          tmp_path: Path) -> None:
    """runtime invoke_agent > chat > the router's SERVER span > the engine: the router's span is a child of the chat
    span that called it, and the engine is sent the router span's traceparent (not the chat span's)."""
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    traceparent, trace_id, _ = _new_traceparent()
    app = {"telemetry": {"otlpEndpoint": jaeger["otlp"], "serviceName": f"chain-runtime-{tag}"}}

    def reply(body: dict[str, Any], _: dict[str, str]) -> str:
        if body.get("response_format") is None:
            return "4"
        return final("4") if body["messages"][-1]["role"] == "tool" else action("calculator", expression="2+2")

    async def main() -> tuple[int, Any, list[dict[str, str]], str]:
        router_telemetry = start_telemetry(TelemetrySettings(otlp_endpoint=jaeger["otlp"],
                                                             service_name=f"chain-router-{tag}"))
        async with scripted(reply) as engine:
            fleet = FleetState(policy="session")
            fleet.set_endpoints({"engine-0": engine.url.removesuffix("/v1")})
            router = web.AppRunner(build_router(fleet, ProxySettings(health_interval_s=1e12, metrics_interval_s=3600),
                                                telemetry=router_telemetry), access_log=None, shutdown_timeout=1)
            await router.setup()
            port = free_port()
            await web.TCPSite(router, "127.0.0.1", port).start()
            try:
                config = make_config(tmp_path, large_url=f"http://127.0.0.1:{port}/v1", app=app)
                async with serve(config, tmp_path, telemetry=Runtime.open_telemetry(config)) as s:
                    status, body = await s.post(
                        "/v1/chat/completions", {"messages": [{"role": "user", "content": "2+2?"}]}, ALICE,
                        headers={"traceparent": traceparent})
            finally:
                await router.cleanup()
                router_telemetry.shutdown()
        return status, body, [h for _, h in engine.requests], f"chain-router-{tag}"

    status, body, sent, router_service = asyncio.run(main())
    assert status == 200 and body["choices"][0]["message"]["content"] == "4", body
    assert len(sent) == 3  # the calculator step, the final step, the answer

    def is_complete(spans: list[Any]) -> bool:
        names = [x["operationName"] for x in spans]
        return names.count("POST /v1/chat/completions") == names.count("chat sim-model") == len(sent)

    spans, services = _spans_until(jaeger, trace_id, is_complete)
    assert is_complete(spans), sorted(x["operationName"] for x in spans)
    by_id = {x["spanID"]: x for x in spans}
    routed = [x for x in spans if x["operationName"] == "POST /v1/chat/completions"]
    for r in routed:
        chat = by_id[_parent(r)]
        assert chat["operationName"] == "chat sim-model"
        assert by_id[_parent(chat)]["operationName"] == "invoke_agent assistant"
        assert services[r["processID"]] == router_service
        t = _tags(r)
        assert t["span.kind"] == "server" and t["http.request.method"] == "POST"
        assert t["http.route"] == "/v1/chat/completions" and t["http.response.status_code"] == 200
        assert t["agentfleet.router.replica"] == "engine-0" and t["agentfleet.router.route_reason"] == "session"
        assert t["agentfleet.router.attempts"] == 1 and t["agentfleet.router.has_session"] is True
        assert t["agentfleet.router.policy"] == "session"
        for value in t.values():  # never the prompt, never the session id
            assert "2+2?" not in json.dumps(value) and "task-" not in json.dumps(value)
    # The engine was sent the router span's own context: one router span per engine request.
    assert [_trace_of(h)[0] for h in sent] == [trace_id] * len(sent)
    assert {_trace_of(h)[1] for h in sent} == {r["spanID"] for r in routed}


@pytest.mark.slow
def test_the_router_span_counts_a_retry_and_fails_when_no_replica_answers(jaeger: dict[str, Any]) -> None:
    """A replica that refuses the connection: the request is retried on the other one (attempts 2, the replica that
    answered); with no other replica the client gets 503 and the span is failed."""
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    body = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]}

    async def main() -> list[tuple[int, str]]:
        telemetry = start_telemetry(TelemetrySettings(otlp_endpoint=jaeger["otlp"], service_name=f"retry-{tag}"))
        dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        out = []
        async with scripted(lambda *_: "hello") as engine, aiohttp.ClientSession() as client:
            for endpoints, requests in (({"dead": dead, "live": engine.url.removesuffix("/v1")}, 2),
                                        ({"dead": dead}, 1)):
                fleet = FleetState(policy="round-robin")
                fleet.set_endpoints(endpoints)
                router = web.AppRunner(build_router(fleet, ProxySettings(health_interval_s=1e12,
                                                                         metrics_interval_s=3600),
                                                    telemetry=telemetry), access_log=None, shutdown_timeout=1)
                await router.setup()
                port = free_port()
                await web.TCPSite(router, "127.0.0.1", port).start()
                try:
                    for _ in range(requests):
                        traceparent, trace_id, _ = _new_traceparent()
                        async with client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body,
                                               headers={"traceparent": traceparent}) as r:
                            await r.read()
                            out.append((r.status, trace_id))
                finally:
                    await router.cleanup()
        telemetry.shutdown()
        return out

    answered = asyncio.run(main())
    assert [status for status, _ in answered] == [200, 200, 503]
    tags = []
    for _, trace_id in answered:
        spans, _ = _spans_until(jaeger, trace_id, lambda spans: len(spans) == 1)
        assert [x["operationName"] for x in spans] == ["POST /v1/chat/completions"]
        tags.append(_tags(spans[0]))
    ok = sorted((t["agentfleet.router.attempts"], t["agentfleet.router.replica"]) for t in tags[:2])
    assert ok == [(1, "live"), (2, "live")]  # round-robin: one of the two started on the dead replica
    assert all(t["http.response.status_code"] == 200 and "error" not in t for t in tags[:2])
    failed = tags[2]
    assert failed["http.response.status_code"] == 503 and failed["error.type"] == "503" and failed["error"] is True
    assert (failed["agentfleet.router.attempts"], failed["agentfleet.router.replica"]) == (1, "dead")


@pytest.mark.slow
def test_agentfleet_router_with_otlp_endpoint_exports_a_span_per_request(jaeger: dict[str, Any]) -> None:
    """The flags the operator renders from router.telemetry, on the real command: its spans reach the collector
    (flushed when it stops on SIGTERM), under the service name it was given."""
    service = f"cli-router-{os.getpid()}-{time.monotonic_ns()}"
    traceparent, trace_id, caller_span = _new_traceparent()

    sent: list[dict[str, str]] = []

    async def completions(request: web.Request) -> web.Response:
        sent.append(dict(request.headers))
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}}]})

    async def health(_: web.Request) -> web.Response:  # the router's probe takes a replica without it out
        return web.Response(text="ok")

    async def main() -> int:
        engine = web.Application()
        engine.router.add_post("/v1/chat/completions", completions)
        engine.router.add_get("/health", health)
        runner = web.AppRunner(engine, access_log=None, shutdown_timeout=1)
        await runner.setup()
        engine_port = free_port()
        await web.TCPSite(runner, "127.0.0.1", engine_port).start()
        async with aiohttp.ClientSession() as client:
            port = free_port()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agentfleet.cli", "router", "--endpoints", f"http://127.0.0.1:{engine_port}",
                "--host", "127.0.0.1", "--port", str(port), "--policy", "session", "--fleet", "llm",
                "--otlp-endpoint", jaeger["otlp"], "--service-name", service, "--trace-sample-ratio", "1")
            try:
                async def is_ready() -> bool:
                    try:
                        async with client.get(f"http://127.0.0.1:{port}/readyz") as r:
                            return r.status == 200
                    except aiohttp.ClientError:
                        return False

                await _until(is_ready)
                async with client.post(f"http://127.0.0.1:{port}/v1/chat/completions", headers={
                        "traceparent": traceparent, "x-session-id": "s-1"},
                        json={"model": "sim-model", "messages": [{"role": "user", "content": "hi"}]}) as r:
                    status = r.status
            finally:
                proc.terminate()
                assert await asyncio.wait_for(proc.wait(), 20) == 0
                await runner.cleanup()
        return status

    assert asyncio.run(main()) == 200
    spans, services = _spans_until(jaeger, trace_id, lambda spans: len(spans) == 1)
    assert [(x["operationName"], services[x["processID"]]) for x in spans] == [
        ("POST /v1/chat/completions", service)]
    assert _parent(spans[0]) == caller_span
    (headers,) = sent
    assert _trace_of({k.lower(): v for k, v in headers.items()}) == (trace_id, spans[0]["spanID"])


OFF_SCRIPT = r"""
import asyncio, json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from runtime_kit import ALICE, action, final, make_config, scripted, serve

def reply(body, _):
    return action("calculator", expression="2+2") if body["messages"][-1]["role"] == "user" else final("4")

async def main():
    async with scripted(reply) as model:
        config = make_config(Path(sys.argv[1]), large_url=model.url)
        async with serve(config, Path(sys.argv[1])) as s:
            status, body = await s.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "2+2?"}]},
                                        ALICE, headers={"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"})
            assert status == 200, body
        return [h for _, h in model.requests]

headers = asyncio.run(main())
print(json.dumps({"sdk": sorted(m for m in sys.modules if m.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))),
                  "traceparent": [h.get("traceparent") for h in headers]}))
"""


def test_telemetry_off_makes_no_spans_and_imports_no_sdk(tmp_path: Path) -> None:
    """Off (the default): the caller's traceparent is not followed or passed on (no span exists to carry it), and
    neither the SDK nor an exporter is imported. In a fresh interpreter: this one may have imported them."""
    out = subprocess.run([sys.executable, "-c", OFF_SCRIPT, str(tmp_path), str(Path(__file__).parent)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["sdk"] == []
    assert len(got["traceparent"]) >= 2 and set(got["traceparent"]) == {None}
