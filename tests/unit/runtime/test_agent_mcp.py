"""MCP servers listed in the AgentApp become tools: a real MCP server (the official `mcp` package's MCPServer,
streamable HTTP, in its own process) is listed at start-up, its tools are offered to the model by name and
schema, called with the model's arguments, and a tool error or a server that is down becomes an observation and
a readiness problem, never a failed request."""

import asyncio
import time

import pytest

from agentfleet.bench.simulator import free_port
from runtime_kit import action, final, make_config, mcp_server, scripted, serve

pytest.importorskip("mcp")

SERVER = '''
import sys
from mcp.server.mcpserver import MCPServer

app = MCPServer("math")


@app.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@app.tool()
def fail(reason: str) -> str:
    """Always fails."""
    raise ValueError(reason)


@app.tool()
async def slow(seconds: float) -> str:
    """Sleeps."""
    import asyncio

    await asyncio.sleep(seconds)
    return "woke up"


app.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
'''


@pytest.fixture(scope="module")
def mcp_url(tmp_path_factory):
    with mcp_server(SERVER, tmp_path_factory.mktemp("mcp")) as url:
        yield url


def _mcp_config(tmp_path, model_url, servers):
    return make_config(tmp_path, large_url=model_url, app={"tools": {"builtin": ["calculator"],
                                                                     "mcpServers": servers}})


def test_mcp_tools_are_offered_and_called(mcp_url, tmp_path):
    from agentfleet.runtime.mcp_tools import McpTools

    def reply(body, headers):
        tools = [m for m in body["messages"] if m["role"] == "tool"]
        if body.get("response_format") is None:  # the answer step, from the results in its system prompt
            return "sum 42" if "math__add(a=2, b=40): 42" in body["messages"][0]["content"] else "no results"
        if not tools:
            return action("math__add", a=2, b=40)
        if len(tools) == 1:
            return action("math__fail", reason="boom")
        return final("done")

    async def go():
        async with scripted(reply) as m:
            cfg = _mcp_config(tmp_path, m.url, [{"name": "math", "url": mcp_url}])
            async with serve(cfg, tmp_path, external=McpTools(cfg.tools.mcp_servers)) as s:
                run = await s.run_to_end("add 2 and 40", deadline_s=60)
                ready = await s.get("/readyz", key=None)
            return run, ready, m.requests

    run, (rstatus, ready), reqs = asyncio.run(go())
    system = reqs[0][0]["messages"][0]["content"]
    assert '"name":"math__add"' in system and '"name":"math__fail"' in system
    schema = reqs[0][0]["response_format"]["json_schema"]["schema"]
    assert ["math__add"] in [c["properties"]["action"]["enum"] for c in schema["anyOf"]]
    assert [(s["action"], s["observation"]) for s in run["steps"][:2]] == [
        ("math__add", "42"), ("math__fail", "error: math__fail: Error executing tool fail")]
    assert run["steps"][0]["arguments"] == {"a": 2, "b": 40}
    assert run["answer"] == "sum 42" and run["status"] == "completed"
    assert rstatus == 200 and ready["checks"]["mcp_math"] == "ok"


def test_mcp_server_down_is_reported_not_a_crash_nor_unready(tmp_path):
    from agentfleet.runtime.mcp_tools import McpTools

    dead = f"http://127.0.0.1:{free_port()}/mcp"

    async def go():
        async with scripted(lambda b, h: final("no tools needed")) as m:
            cfg = _mcp_config(tmp_path, m.url, [{"name": "gone", "url": dead}])
            async with serve(cfg, tmp_path, external=McpTools(cfg.tools.mcp_servers)) as s:
                return (await s.chat("hi"), await s.get("/readyz", key=None),
                        await s.get("/readyz?upstreams=1", key=None), await s.get("/metrics", key=None))

    (status, body), (rstatus, ready), (sstatus, strict), (_, metrics) = asyncio.run(go())
    assert status == 200 and body["choices"][0]["message"]["content"] == "no tools needed"
    # The replica stays in its Service (an upstream down is not this process failing) and says what is down.
    assert rstatus == 200 and ready["ready"] is True and ready["degraded"] == ["mcp_gone"]
    assert ready["checks"]["mcp_gone"].startswith("MCP server gone unreachable: ")
    assert sstatus == 503 and strict["ready"] is False
    assert 'agentfleet_runtime_upstream_ready{upstream="mcp_gone"} 0.0' in metrics


def test_a_tool_past_its_timeout_becomes_an_observation(mcp_url, tmp_path):
    from agentfleet.runtime.mcp_tools import McpTools

    def reply(body, headers):
        tools = [m for m in body["messages"] if m["role"] == "tool"]
        return final("gave up waiting") if tools else action("math__slow", seconds=20)

    async def go():
        async with scripted(reply) as m:
            cfg = make_config(tmp_path, large_url=m.url, app={
                "tools": {"builtin": ["calculator"], "mcpServers": [{"name": "math", "url": mcp_url}]},
                "limits": {"maxSteps": 4, "maxTokens": 4000, "deadlineSeconds": 20, "toolTimeoutSeconds": 1}})
            async with serve(cfg, tmp_path, external=McpTools(cfg.tools.mcp_servers)) as s:
                t0 = time.monotonic()
                run = await s.run_to_end("sleep", deadline_s=30)
                return run, time.monotonic() - t0

    run, elapsed = asyncio.run(go())
    assert elapsed < 5 and run["status"] == "completed"
    first = run["steps"][0]
    assert (first["action"], first["error"], first["observation"]) == (
        "math__slow", "tool_timeout", "error: the tool math__slow did not answer within 1s")


def _warm_run(tmp_path, mcp_url, warm: dict | None):
    """Four tasks, each one 1.2 s tool call then a final answer, through the real MCP server: the first three teach
    the replica the tool's duration (and that it is steady), the fourth may be warmed."""
    from agentfleet.runtime.mcp_tools import McpTools

    def reply(body, headers):
        if body["max_tokens"] == 1:  # a warm request: the answer is not read
            return "x"
        tools = [m for m in body["messages"] if m["role"] == "tool"]
        if body.get("response_format") is None:
            return "slept"
        return final("slept") if tools else action("math__slow", seconds=1.2)

    async def go():
        async with scripted(reply) as m:
            tools = {"builtin": ["calculator"], "mcpServers": [{"name": "math", "url": mcp_url}],
                     **({"warm": warm} if warm else {})}
            cfg = make_config(tmp_path, large_url=m.url, app={"tools": tools})
            async with serve(cfg, tmp_path, external=McpTools(cfg.tools.mcp_servers)) as s:
                runs = [await s.run_to_end("sleep a bit", deadline_s=30) for _ in range(4)]
            return runs, m.requests

    return asyncio.run(go())


def test_warm_before_tool_end_resends_the_transcript_once_the_tool_is_known(mcp_url, tmp_path):
    """tools.warm: a tool whose typical duration (learned on this replica) is past minToolSeconds gets, leadSeconds
    before it is expected to end, one 1-token request carrying the run's transcript so far on the run's session, so
    the engine holding the session has the history cached when the tool's result arrives; it is charged to the task.
    A tool is not warmed for before its duration is known (three calls)."""
    runs, reqs = _warm_run(tmp_path, mcp_url, {"enabled": True, "minToolSeconds": 0.5, "leadSeconds": 0.4})
    warms = [(b, h) for b, h in reqs if b["max_tokens"] == 1]
    assert len(warms) == 1, [b["max_tokens"] for b, _ in reqs]
    body, headers = warms[0]
    second = runs[3]["agentfleet"]["task_id"]
    assert headers["x-session-id"] == second and body["user"] == second
    # The transcript up to the tool call, nothing after it: a prefix of the next step's prompt.
    assert body["messages"][-1]["role"] == "assistant" and body["messages"][-1]["tool_calls"]
    after = [b for b, h in reqs if h["x-session-id"] == second and b["max_tokens"] != 1
             and any(m["role"] == "tool" for m in b["messages"])][0]
    assert after["messages"][:len(body["messages"])] == body["messages"]
    # It reached the engine while the tool ran (the tool's end cancels a warm not yet sent), before the call with
    # the tool's result.
    order = [b for b, _ in reqs]
    assert order.index(body) < order.index(after)
    assert all(r["status"] == "completed" for r in runs)
    first, then = runs[2]["agentfleet"], runs[3]["agentfleet"]  # the warm was charged to the fourth task, as a call
    assert then["models"]["sim-model"]["calls"] == first["models"]["sim-model"]["calls"] + 1
    assert then["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]


def test_warm_is_off_by_default(mcp_url, tmp_path):
    runs, reqs = _warm_run(tmp_path, mcp_url, None)
    assert [b for b, _ in reqs if b["max_tokens"] == 1] == []
    assert all(r["status"] == "completed" for r in runs)


def test_a_tool_of_unsteady_duration_has_no_typical_one():
    """Warming at the mean of durations that vary as much as an exponential draw warms too early or not at all (the
    routing bench: task p95 7 % longer), so such a tool is never warmed for; a steady one is, after three calls."""
    import random

    from agentfleet.runtime.agent import ToolTimes

    rng, times = random.Random(7), ToolTimes()
    seen = []
    for _ in range(200):
        seen.append(times.typical("search") is not None)
        times.record("search", min(4.0, rng.expovariate(1.0)))
        times.record("build", 2.0 + rng.uniform(-0.2, 0.2))
    assert sum(seen) < 0.2 * len(seen)
    assert times.typical("build") == pytest.approx(2.0, abs=0.2)
    fresh = ToolTimes()
    for _ in range(2):
        fresh.record("build", 2.0)
    assert fresh.typical("build") is None  # two calls are not yet a typical duration
