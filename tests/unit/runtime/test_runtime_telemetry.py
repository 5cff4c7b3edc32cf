"""OpenTelemetry (GenAI semantic conventions): a real runtime exports its span tree to a real Jaeger v2 (built from
Go modules by e2e/jaeger/build.sh) and the test reads it back from Jaeger's query API; with telemetry off nothing
is propagated and the SDK is never imported."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from runtime_kit import ALICE, KEYS, action, final, last_user_or_tool, make_config, scripted, serve

from agentfleet.bench.simulator import free_port
from agentfleet.runtime.serving import Runtime

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
