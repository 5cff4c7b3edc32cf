"""Every exit path of a model call settles with what the engine produced, through the real server and the real
ledger (SQLite). First a real fault: two llm-d-inference-sim engines behind the fleet router, one killed while it
streams the answer; the task answers through the retry on the other and the ledger charges both attempts. Then a
table over the exit paths: a client that disconnects while the answer streams, the deadline mid-call, a cancelled task, an
engine that dies or sends an error chunk after the first byte (retried once: both attempts are charged, the
client sees the answer once), and a client that disconnects while admission runs. A scripted OpenAI-compatible
engine streams the answer step and then stalls, dies or errs as a row says, and reports usage on every chunk as
vLLM does with continuous_usage_stats (or only at the end, as llm-d-inference-sim does). The expected charge is
what that engine sent: the sum over its calls of prompt tokens and the completion tokens it streamed."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agentfleet.bench.simulator import SimSettings, free_port, running_fleet
from agentfleet.ledger import Account, Amount
from agentfleet.router.proxy import ProxySettings
from agentfleet.router.proxy import build_app as router_app
from agentfleet.router.state import FleetState
from agentfleet.api.runtime_config import ModelEndpoint
from agentfleet.runtime.agent import Meter
from agentfleet.runtime.llm import ModelClient
from agentfleet.runtime.serving import new_task_id
from runtime_kit import ALICE, action, final, make_config, needs_sim, scripted, serve

BUDGET = {"window": "day", "limits": {"tokens": 10**7}}
ANSWER = [f"word{i} " for i in range(12)]


@dataclass(frozen=True)
class Attempt:
    """What the engine does with one attempt of the answer step: stream `chunks` deltas, then `then`."""

    chunks: int
    then: str  # finish | stall | die | error
    words: tuple[str, ...] = tuple(ANSWER)


@dataclass
class Engine:
    answer: list[Attempt]
    running_usage: bool = True
    sent: list[tuple[int, int]] = field(default_factory=list)  # per call: (prompt tokens, completion tokens sent)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt = sum(len(json.dumps(m)) for m in body["messages"]) // 4
        if body.get("response_format") is not None:  # an action step: plan a tool call, then say final
            words = [final("4") if body["messages"][-1]["role"] == "tool" else action("calculator",
                                                                                    expression="2+2")]
            script = Attempt(1, "finish", tuple(words))
        else:
            script = self.answer.pop(0)
        i = len(self.sent)
        self.sent.append((prompt, 0))
        if not body.get("stream"):  # (the runtime streams every call; kept so the table runs on older clients)
            self.sent[i] = (prompt, len(script.words))
            return web.json_response({"model": body["model"], "choices": [{"index": 0, "message": {
                "role": "assistant", "content": "".join(script.words)}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": len(script.words)}})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(obj: Any) -> None:
            await resp.write(f"data: {json.dumps(obj)}\n\n".encode())

        n = script.chunks if script.then != "finish" else len(script.words)
        for k, w in enumerate(script.words[:n], 1):
            usage = {"prompt_tokens": prompt, "completion_tokens": k} if self.running_usage else None
            await send({"model": body["model"], "choices": [{"index": 0, "delta": {"content": w}}], "usage": usage})
            self.sent[i] = (prompt, k)
        if script.then == "stall":
            await asyncio.Event().wait()
        if script.then == "die":
            assert request.transport is not None
            request.transport.close()  # flushed, then the connection ends inside the chunked body
            return resp
        if script.then == "error":
            await send({"error": {"message": "engine failure", "type": "InternalServerError", "code": 500}})
        else:
            await send({"model": body["model"], "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                        "usage": None})
            await send({"model": body["model"], "choices": [],
                        "usage": {"prompt_tokens": prompt, "completion_tokens": n}})
        await resp.write(b"data: [DONE]\n\n")
        return resp

    @property
    def expected_tokens(self) -> int:
        return sum(p + c for p, c in self.sent)


@contextlib.asynccontextmanager
async def engine(e: Engine):
    app = web.Application()
    app.router.add_post("/v1/chat/completions", e.handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    e.url = f"http://127.0.0.1:{port}/v1"
    try:
        yield e
    finally:
        await runner.cleanup()


def _usage(rt):
    b = rt.config.budget
    return rt.ledger.usage(Account.for_budget(rt.config.namespace, b.name, b.spec),
                           now=dt.datetime.now(dt.timezone.utc))


async def _settled(rt, deadline_s: float = 10.0):
    """The ledger once nothing is reserved (polled: a cancelled handler settles after the client has gone; the
    task's root reservation is closed last, so nothing reserved means every call of the task has settled), or
    as it is at the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        u = await asyncio.to_thread(_usage, rt)
        if u.reserved == Amount() or time.monotonic() > end:
            return u
        await asyncio.sleep(0.05)


async def _stream_until(s, content: str, deltas: int) -> list[str]:
    """Stream a chat completion and disconnect after `deltas` content deltas."""
    seen: list[str] = []
    async with s.session.post(s.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {ALICE}"},
                              json={"messages": [{"role": "user", "content": content}], "stream": True}) as r:
        assert r.status == 200
        async for raw in r.content:
            line = raw.decode().strip()
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                chunk = json.loads(line[5:])
                text = chunk["choices"][0]["delta"].get("content") if chunk.get("choices") else None
                if text:
                    seen.append(text)
                    if len(seen) >= deltas:
                        r.close()  # the client goes away mid-answer
                        break
    return seen


def _stream_text(events: list[Any]) -> str:
    return "".join(e["choices"][0]["delta"].get("content") or "" for e in events
                   if isinstance(e, dict) and e.get("choices"))


def _steps(events: list[Any]) -> list[dict[str, Any]]:
    return [e["agentfleet"]["step"] for e in events
            if isinstance(e, dict) and e.get("agentfleet", {}).get("type") == "step"]


# --- the table: how the answer step ends -> what the client sees, what the ledger holds ------------------------

@pytest.mark.parametrize(("attempts", "running_usage", "how", "want"), [
    pytest.param([Attempt(3, "stall")], True, "disconnect", {"stream": "".join(ANSWER[:3])},
                 id="client-disconnects-while-the-answer-streams"),
    pytest.param([Attempt(3, "stall")], False, "disconnect", {"stream": "".join(ANSWER[:3]), "bound": True},
                 id="client-disconnects-engine-without-running-usage"),
    pytest.param([Attempt(4, "stall")], True, "deadline", {"stop_reason": "deadline"},
                 id="deadline-mid-call"),
    pytest.param([Attempt(4, "stall")], True, "cancel", {"delivered": "".join(ANSWER[:4])},
                 id="task-cancelled-mid-call"),
    pytest.param([Attempt(5, "die"), Attempt(0, "finish")], True, "stream",
                 {"stream": "".join(ANSWER), "stop_reason": "answered", "attempts": 2},
                 id="engine-dies-after-first-byte-retry-answers"),
    pytest.param([Attempt(5, "die"), Attempt(0, "finish")], False, "stream",
                 {"stream": "".join(ANSWER), "stop_reason": "answered", "attempts": 2},
                 id="engine-dies-retry-answers-usage-only-at-the-end"),
    pytest.param([Attempt(2, "error"), Attempt(0, "finish")], True, "stream",
                 {"stream": "".join(ANSWER), "stop_reason": "answered", "attempts": 2},
                 id="error-chunk-mid-stream-retry-answers"),
    pytest.param([Attempt(5, "die"), Attempt(3, "die")], True, "stream",
                 # The answer step failed: the small model's answer stands (the loop's fallback) after the text
                 # the first attempt delivered.
                 {"stream": "".join(ANSWER[:5]) + "4", "stop_reason": "answered", "error": True},
                 id="exception-after-first-byte-on-both-attempts"),
    pytest.param([Attempt(3, "die"), Attempt(0, "finish", tuple(f"other{i} " for i in range(12)))], True,
                 "stream", {"stream": "".join(ANSWER[:3]), "stop_reason": "answered", "attempts": 2,
                            "diverged": True},
                 id="retry-text-differs-stream-stops-at-what-was-delivered"),
])
def test_every_exit_path_charges_what_the_engine_produced(tmp_path, attempts, running_usage, how, want):
    limits = {"maxSteps": 6, "maxTokens": 4000, "deadlineSeconds": 2 if how == "deadline" else 20}

    async def go():
        e = Engine(list(attempts), running_usage=running_usage)
        async with engine(e):
            cfg = make_config(tmp_path, large_url=e.url, budget=BUDGET, app={"limits": limits})
            async with serve(cfg, tmp_path) as s:
                out: dict[str, Any] = {}
                if how == "disconnect":
                    out["stream"] = "".join(await _stream_until(s, "2+2?", len(want["stream"].split())))
                elif how == "deadline":
                    status, body = await s.chat("2+2?")
                    out["stop_reason"] = body["agentfleet"]["stop_reason"]
                elif how == "cancel":
                    rt = s.runtime
                    principal = rt.identity.authenticate(f"Bearer {ALICE}")
                    task_id = new_task_id()
                    budget = await rt.admit(principal, task_id)
                    delivered: list[str] = []
                    enough = asyncio.Event()

                    async def on_delta(text: str) -> None:
                        delivered.append(text)
                        if len(delivered) >= 4:
                            enough.set()

                    task = asyncio.create_task(rt.run_task(principal, [{"role": "user", "content": "2+2?"}],
                                                           task_id=task_id, budget=budget, on_delta=on_delta))
                    await enough.wait()
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    out["delivered"] = "".join(delivered)
                else:
                    status, events = await s.stream("2+2?")
                    assert status == 200
                    out["stream"] = _stream_text(events)
                    out["stop_reason"] = events[-2]["agentfleet"]["stop_reason"]
                    out["answer_step"] = _steps(events)[-1]
                    out["usage"] = events[-2]["agentfleet"]["usage"]
                usage = await _settled(s.runtime)
                return out, usage, e

    out, usage, e = asyncio.run(go())
    for k in ("stream", "stop_reason", "delivered"):
        if k in want:
            assert out[k] == want[k], k
    assert usage.reserved == Amount(), "a reservation was left open"
    if want.get("bound"):
        # No running usage and no final report: the engine's prompt count is unknown, so the runtime charges its
        # prompt bound (bytes of the prompt, more than its tokens) for it and one token per streamed delta.
        answer_prompt, answer_sent = e.sent[-1]
        assert usage.spent.tokens - (e.expected_tokens - answer_prompt) > answer_sent
    else:
        assert usage.spent.tokens == e.expected_tokens  # what the engine reported: no more, no less
    if "answer_step" in out:
        step = out["answer_step"]
        assert usage.spent.tokens == out["usage"]["total_tokens"]  # the task reports what was charged
        assert (step["prompt_tokens"], step["completion_tokens"]) == tuple(
            map(sum, zip(*e.sent[2:]))), "the answer step's charge is both attempts' usage"
        if "attempts" in want:
            assert f"{want['attempts']} attempts" in step["route"]
        assert ("differs from the" in step["route"]) == bool(want.get("diverged"))
        assert (step["error"] is not None) == bool(want.get("error"))


def test_client_disconnecting_during_admission_leaves_nothing_reserved(tmp_path):
    """The reservation is taken in the ledger's worker thread; the client leaves while it runs."""

    class SlowReserve:
        """The real ledger, whose root reservation waits for `gate` after it has been taken."""

        def __init__(self, ledger):
            self.ledger, self.taken, self.gate = ledger, threading.Event(), threading.Event()

        def __getattr__(self, name):
            return getattr(self.ledger, name)

        def reserve(self, *args, **kwargs):
            hold = self.ledger.reserve(*args, **kwargs)
            if kwargs.get("parent") is None:
                self.taken.set()
                self.gate.wait(10)
            return hold

    async def go():
        e = Engine([Attempt(0, "finish")])
        async with engine(e):
            cfg = make_config(tmp_path, large_url=e.url, budget=BUDGET)
            from agentfleet.runtime.serving import Runtime

            slow = SlowReserve(Runtime.open_ledger(cfg, state_dir=tmp_path))
            async with serve(cfg, tmp_path, ledger=slow) as s:
                client = asyncio.create_task(s.chat("2+2?"))
                await asyncio.to_thread(slow.taken.wait, 10)
                client.cancel()  # the client's connection closes while admit() waits on the ledger
                await asyncio.gather(client, return_exceptions=True)
                slow.gate.set()
                u = await _settled(s.runtime)
                return slow.taken.is_set(), u, len(e.sent)

    taken, usage, calls = asyncio.run(go())
    assert taken and calls == 0
    assert usage.reserved == Amount() and usage.spent == Amount()


# --- a real engine killed mid-stream ----------------------------------------------------------------------------

@needs_sim
def test_engine_killed_mid_stream_the_task_answers_via_the_retry_and_both_attempts_are_charged(tmp_path):
    # Echo mode: the plan step repeats the question (a calculator call), the answer step repeats it as the answer
    # (one word a token with the simulator's dummy tokenizer, 20 ms apart: the kill lands mid-answer).
    question = action("calculator", expression=" + ".join(["1"] * 30))
    settings = SimSettings(extra=("--mode", "echo"), inter_token_ms=20)

    class Recorder:
        """The runtime's model client, recording what each call was sent."""

        def __init__(self, inner):
            self.inner, self.calls = inner, []

        async def __call__(self, role, messages, **kw):
            self.calls.append((role, list(messages), dict(kw)))
            return await self.inner(role, messages, **kw)

    async def go(sims):
        fleet = FleetState(policy="session")
        fleet.set_endpoints({f"sim-{i}": u for i, u in enumerate(sims.urls)})
        # The router's health probe is off: only the proxy's mid-stream ejection keeps the retry off the dead one.
        router = web.AppRunner(router_app(fleet, ProxySettings(health_interval_s=1e12, metrics_interval_s=3600)),
                               access_log=None, shutdown_timeout=1)
        await router.setup()
        port = free_port()
        await web.TCPSite(router, "127.0.0.1", port).start()
        try:
            async with scripted(lambda b, h: final("30")) as small:
                cfg = make_config(tmp_path, large_url=f"http://127.0.0.1:{port}/v1", small_url=small.url,
                                  budget=BUDGET)
                async with serve(cfg, tmp_path) as s:
                    rec = s.runtime.model = Recorder(s.runtime.model)
                    events, killed = [], None
                    async with s.session.post(s.url + "/v1/chat/completions",
                                              headers={"Authorization": f"Bearer {ALICE}"},
                                              json={"messages": [{"role": "user", "content": question}],
                                                    "stream": True}) as r:
                        async for raw in r.content:
                            line = raw.decode().strip()
                            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                                continue
                            events.append(json.loads(line[5:]))
                            if killed is None and _stream_text(events[-1:]):  # the first answer delta
                                killed = next(n for n, ep in fleet.endpoints.items() if ep.in_flight)
                                proc = sims.procs[int(killed.split("-")[1])]
                                proc.kill()
                                await asyncio.to_thread(proc.wait)
                    usage = await _settled(s.runtime)
                    live = sims.urls[1 - int(killed.split("-")[1])]
                    role, messages, kw = next(c for c in rec.calls if c[2].get("on_delta") is not None)
                    async with s.session.post(live + "/v1/chat/completions", headers={"Accept-Encoding": "identity"},
                                              json={"model": "sim-model", "messages": messages,
                                                    "max_tokens": kw["max_tokens"]}) as r:
                        engine = json.loads(await r.read())["usage"]
                    return events, killed, usage, engine, fleet.endpoints[killed]
        finally:
            await router.cleanup()

    with running_fleet(2, settings) as sims:
        events, killed, usage, engine, dead = asyncio.run(go(sims))
    summary = events[-1]["agentfleet"] if "agentfleet" in events[-1] else events[-2]["agentfleet"]
    answer = _steps(events)[-1]
    assert summary["stop_reason"] == "answered"
    assert _stream_text(events) == question  # the whole answer, once: the retry sent only what was not delivered
    assert answer["kind"] == "answer" and "2 attempts" in answer["route"] and answer["error"] is None
    assert not dead.is_healthy and dead.mid_stream_failures == 1
    # Both attempts charged: the prompt twice (the dead engine never reported it; the same prompt's count from the
    # retry stands for it), the retry's completion tokens as reported and the dead attempt's streamed ones.
    assert answer["prompt_tokens"] == 2 * engine["prompt_tokens"]
    assert engine["completion_tokens"] < answer["completion_tokens"] <= 2 * engine["completion_tokens"]
    assert usage.reserved == Amount()
    assert usage.spent.tokens == summary["usage"]["total_tokens"] == sum(
        st["prompt_tokens"] + st["completion_tokens"] for st in _steps(events))


def test_a_client_gone_while_a_delta_is_written_is_the_callers_error_not_a_retry():
    """A reset connection on the client's side (on_delta raises) is not the engine failing mid-stream."""

    async def go():
        e = Engine([Attempt(0, "finish")])
        async with engine(e):
            client = ModelClient({"large": ModelEndpoint(role="large", fleet="f", url=e.url, model="sim-model")})
            await client.start()
            meter, got = Meter(), []

            async def on_delta(text):
                got.append(text)
                if len(got) == 2:
                    raise ConnectionResetError("the client went away")

            try:
                with pytest.raises(ConnectionResetError):
                    await client("large", [{"role": "user", "content": "hi"}], response_format=None, max_tokens=50,
                                 session_id="s", timeout_s=10, on_delta=on_delta, meter=meter)
            finally:
                await client.close()
            return meter, e.sent, got

    meter, sent, got = asyncio.run(go())
    assert len(sent) == 1 and meter.attempts == 1 and got == ANSWER[:2]
    assert meter.prompt_tokens == sent[0][0] and 2 <= meter.completion_tokens <= len(ANSWER)
