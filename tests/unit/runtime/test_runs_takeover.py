"""Runs that outlive their replica, through the real server: two replicas of one app share a run store and a ledger
(SQLite files, as two processes on one machine would; the chaos test in tests/slow does the same with real
processes, Redis and kill -9). Replica A stops renewing its leases in the middle of a run (it died, or hangs);
replica B takes the run over when the lease lapses and continues from the last completed step. A real MCP server
(the official `mcp` package, its own process) records every tool call it receives, so a tool that ran twice shows.
The tests check the three things a takeover must keep: the prompt is rebuilt exactly (append-only, so the prefix
cache still hits), a completed tool call is not run again (an interrupted one only if it is declared idempotent),
and the budget is charged once for what the engine produced, with nothing left reserved."""

import asyncio
import contextlib
import json

import pytest

from agentfleet.ledger import Account
from agentfleet.runtime.mcp_tools import McpTools
from agentfleet.runtime.runs import RunStore
from agentfleet.runtime.server import RUNS_KEY
from agentfleet.runtime.serving import Runtime
from agentfleet.state.sqlite import SqliteStore
from runtime_kit import action, final, make_config, mcp_server, scripted, serve
from runtime_kit import until as _until

pytest.importorskip("mcp")

SERVER = '''
import asyncio, sys
from mcp.server.mcpserver import MCPServer

app = MCPServer("ops")
LOG = sys.argv[2]


@app.tool()
async def record(key: str, hang: bool = False) -> str:
    """Record a key (a side effect). With hang, the server's first call then hangs: its caller dies meanwhile."""
    with open(LOG) as f:
        first = not f.read()
    with open(LOG, "a") as f:
        f.write(key + "\\n")
    if hang and first:
        await asyncio.sleep(3600)
    return "recorded " + key


app.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
'''

LEASE_S = 1.0
BUDGET = {"window": "day", "limits": {"costUsd": 10}}


@pytest.fixture
def mcp(tmp_path):
    log = tmp_path / "calls.log"
    log.write_text("")
    with mcp_server(SERVER, tmp_path, str(log)) as url:
        yield url, log


def _calls(log):
    return log.read_text().split()


def _stop_renewing(served):
    """Replica A 'dies': its lease timers stop (its task, if any, hangs where it is)."""
    for timer in served.app_runs._timers:
        timer.cancel()


@contextlib.asynccontextmanager
async def _replicas(cfg, tmp_path):
    """Two replicas of one app, each with its own connections to the shared run store and ledger files."""
    async with contextlib.AsyncExitStack() as stack:
        served = []
        for name in ("a", "b"):
            store = RunStore(SqliteStore(tmp_path / "runs.db"), lease_s=LEASE_S)
            s = await stack.enter_async_context(serve(
                cfg, tmp_path, ledger=Runtime.open_ledger(cfg, state_dir=tmp_path), run_store=store, replica=name,
                external=McpTools(cfg.tools.mcp_servers) if cfg.tools.mcp_servers else None))
            s.app_runs = s.runner.app[RUNS_KEY]
            served.append(s)
        yield served


def _spend(rt):
    b = rt.config.budget
    import datetime as dt

    usage = rt.ledger.usage(Account.for_budget(rt.config.namespace, b.name, b.spec),
                            now=dt.datetime.now(dt.timezone.utc))
    return usage.spent, usage.reserved


@pytest.mark.parametrize("idempotent", [False, True], ids=["mcp-not-idempotent", "mcp-declared-idempotent"])
def test_a_run_taken_over_mid_tool_reruns_the_tool_only_if_idempotent(mcp, tmp_path, idempotent):
    url, log = mcp
    seen = []

    def reply(body, headers):
        seen.append((headers["x-session-id"], body["messages"]))
        if body.get("response_format") is None:  # the answer step: the tools' results are in its system prompt
            return "answer with the record" if "recorded k1" in body["messages"][0]["content"] else "answer without"
        tools = [m for m in body["messages"] if m["role"] == "tool"]
        if not tools:  # replica A's call hangs in the tool (the server's first call); a re-run returns at once
            return action("ops__record", key="k1", hang=True)
        return final("done")

    async def go():
        async with scripted(reply) as m:
            cfg = make_config(tmp_path, large_url=m.url, budget=BUDGET, app={
                "tools": {"builtin": ["calculator"], "mcpServers": [{"name": "ops", "url": url,
                                                                      "idempotent": idempotent}]}})
            async with _replicas(cfg, tmp_path) as (a, b):
                status, run = await a.post("/v1/runs", {"input": "record k1"})
                assert status == 202
                await _until(lambda: _calls(log))  # A is inside the tool now
                _stop_renewing(a)
                done = await _until(lambda: _finished(b, run["id"]))
                return done, _spend(b.runtime), _calls(log)

    done, (spent, reserved), calls = asyncio.run(go())
    assert done["status"] == "completed" and done["replica"] == "b" and done["takeovers"] == 1
    tool_steps = [s for s in done["steps"] if s["action"] == "ops__record"]
    assert len(tool_steps) == 1
    if idempotent:
        assert calls == ["k1", "k1"] and tool_steps[0]["observation"] == "recorded k1"
        assert done["answer"] == "answer with the record"
    else:
        assert calls == ["k1"], "a non-idempotent tool call was run again after the takeover"
        assert tool_steps[0]["error"].startswith("interrupted")
        # The model is told, in the tool's result, that the call may or may not have happened.
        told = [m["content"] for _, msgs in seen for m in msgs if m["role"] == "tool"]
        assert told and told[-1].startswith("error: interrupted: the replica running ops__record stopped")
        assert done["answer"] == "answer without"
    # Charged once: the run's cost (A's steps + B's) is what the ledger holds, and nothing stays reserved.
    assert reserved.micro_usd == 0 and reserved.tokens == 0
    assert spent.micro_usd == round(done["agentfleet"]["cost_usd"] * 1e6)
    assert spent.tokens == done["agentfleet"]["usage"]["total_tokens"]


async def _finished(served, run_id):
    status, got = await served.get(f"/v1/runs/{run_id}")
    return got if status == 200 and got["status"] not in ("queued", "running") else None


def test_a_takeover_after_a_completed_tool_rebuilds_the_exact_prompt_and_never_reruns_it(mcp, tmp_path):
    url, log = mcp
    requests = []
    hang = asyncio.Event()

    async def reply(body, headers):
        requests.append(body["messages"])
        tools = [m for m in body["messages"] if m["role"] == "tool"]
        if body.get("response_format") is None:
            return "the answer"
        if not tools:
            return action("ops__record", key="k2")
        if len(requests) == 2:  # replica A's second step: it dies while the model answers
            await hang.wait()
        return final("done")

    async def go():
        async with scripted(reply) as m:
            cfg = make_config(tmp_path, large_url=m.url, budget=BUDGET, app={
                "tools": {"builtin": ["calculator"], "mcpServers": [{"name": "ops", "url": url}]}})
            async with _replicas(cfg, tmp_path) as (a, b):
                status, run = await a.post("/v1/runs", {"input": "record k2"})
                await _until(lambda: len(requests) >= 2)
                _stop_renewing(a)
                done = await _until(lambda: _finished(b, run["id"]))
                events = await _events(a, run["id"])  # any replica streams any run's events
                hang.set()
                return done, _spend(b.runtime), _calls(log), events

    done, (spent, reserved), calls, events = asyncio.run(go())
    assert done["status"] == "completed" and done["replica"] == "b" and calls == ["k2"]
    # B's first request is A's interrupted one, byte for byte: the transcript was rebuilt append-only.
    assert requests[2] == requests[1]
    assert [s["kind"] for s in done["steps"]] == ["plan", "tool_format", "answer"]
    assert reserved.micro_usd == 0 and spent.micro_usd == round(done["agentfleet"]["cost_usd"] * 1e6)
    kinds = [e["type"] for e in events]
    assert kinds[0] == "status" and "taken_over" in kinds and kinds[-1] == "status"
    assert "checkpoint" not in kinds  # the runtime's own records stay internal


def test_a_call_settled_but_never_recorded_shows_as_a_lost_step_and_the_run_costs_what_was_charged(tmp_path):
    """Replica A's model call is answered and charged, then A dies before the step reaches the store (its events
    are batched): B redoes the call, and the run reports the first attempt as a `lost` step, so the run's cost is
    what the Budget was charged, no less (the chaos bench caught the run under-reporting this)."""
    requests = []
    hang = asyncio.Event()

    async def reply(body, headers):
        requests.append(body["messages"])
        if body.get("response_format") is None:
            return "the answer"
        tools = [m for m in body["messages"] if m["role"] == "tool"]
        if len(requests) == 2:  # replica A's second call: it dies while the model answers
            await hang.wait()
        return final("done") if tools else action("calculator", expression="6*7")

    async def go():
        async with scripted(reply) as m:
            cfg = make_config(tmp_path, large_url=m.url, budget=BUDGET)
            async with _replicas(cfg, tmp_path) as (a, b):
                a.app_runs.store.append = lambda *args, **kw: 0  # A's step events never reach the store
                status, run = await a.post("/v1/runs", {"input": "six times seven"})
                await _until(lambda: len(requests) >= 2)  # A's first call is answered and settled
                _stop_renewing(a)
                done = await _until(lambda: _finished(b, run["id"]))
                spent_now = _spend(b.runtime)
                hang.set()
                return done, spent_now

    done, (spent, reserved) = asyncio.run(go())
    assert done["status"] == "completed" and done["replica"] == "b"
    kinds = [s["kind"] for s in done["steps"]]
    assert kinds[0] == "lost" and kinds[1:] == ["plan", "tool_format", "answer"], kinds
    lost, redone = done["steps"][0], done["steps"][1]
    # The same call, charged twice (BUDGET prices nothing: the tokens are what the ledger counts here).
    assert lost["prompt_tokens"] == redone["prompt_tokens"] + redone["completion_tokens"] > 0
    steps_tokens = sum(st["prompt_tokens"] + st["completion_tokens"] for st in done["steps"])
    assert spent.tokens == steps_tokens
    assert spent.micro_usd == round(done["agentfleet"]["cost_usd"] * 1e6)
    assert reserved.micro_usd == 0 and reserved.tokens == 0


async def _events(served, run_id):
    out = []
    async with served.session.get(f"{served.url}/v1/runs/{run_id}/events?after=0",
                                  headers={"Authorization": "Bearer key-alice-eng-0001"}) as r:
        assert r.status == 200
        async for raw in r.content:
            line = raw.decode().strip()
            if line.startswith("data:") and line != "data: [DONE]":
                out.append(json.loads(line[5:]))
    return out


def test_drain_hands_runs_back_at_once_and_idempotency_keys_hold_across_replicas(mcp, tmp_path):
    url, log = mcp
    release = asyncio.Event()

    async def reply(body, headers):
        if body.get("response_format") is None:
            return "drained answer"
        if not [m for m in body["messages"] if m["role"] == "tool"]:
            return action("calculator", expression="6*7")
        await release.wait()
        return final("done")

    async def go():
        async with scripted(reply) as m:
            cfg = make_config(tmp_path, large_url=m.url, budget=BUDGET)
            async with _replicas(cfg, tmp_path) as (a, b):
                headers = {"Idempotency-Key": "job-7"}
                status, run = await a.post("/v1/runs", {"input": "compute"}, headers=headers)
                again = await b.post("/v1/runs", {"input": "compute"}, headers=headers)
                release_soon = asyncio.get_running_loop().call_later(0.3, release.set)
                await a.app_runs.drain()  # SIGTERM: A hands its run back
                after_drain = await a.post("/v1/runs", {"input": "more"})
                done = await _until(lambda: _finished(b, run["id"]))
                release_soon.cancel()
                events = await _events(b, run["id"])
                return status, run, again, done, events, after_drain, _spend(b.runtime)

    status, run, again, done, events, after_drain, (spent, reserved) = asyncio.run(go())
    assert status == 202 and again[0] == 200 and again[1]["id"] == run["id"]  # the retry is the same run
    assert done["status"] == "completed" and done["replica"] == "b" and done["answer"] == "drained answer"
    # A gave the run back (no lease had to lapse) and B took it from there.
    moves = [(e["type"], e.get("replica")) for e in events if e["type"] in ("handed_back", "taken_over")]
    assert moves == [("handed_back", "a"), ("taken_over", "b")]
    assert after_drain[0] == 503 and after_drain[1]["error"]["code"] == "draining"
    assert reserved.micro_usd == 0 and spent.micro_usd == round(done["agentfleet"]["cost_usd"] * 1e6)
