"""Loop mechanics through the real server: append-only prompts with one session id per task, structured output
on every action step, cheap-first routing, repair and escalation, caps (steps, deadline, tool errors), model
failures from the real simulator (failure injection, slow first token), and sub-agents (parallel, bounded,
depth-capped). A scripted OpenAI-compatible model server stands in where a test needs exact replies and a
record of what the runtime sent; the llm-d simulator where its own behaviour is the point."""

import asyncio
import json
import time

import pytest

from agentfleet.bench.simulator import SimSettings, running_fleet
from runtime_kit import action, final, make_config, needs_sim, scripted, serve


def _two_models(large_reply, small_reply):
    """Two scripted servers (large, small) sharing one request log, in call order."""
    log = []

    def tagged(tag, fn):
        def reply(body, headers):
            log.append((tag, body, headers))
            return fn(body, headers)
        return reply

    return log, scripted(tagged("large", large_reply)), scripted(tagged("small", small_reply))


def test_prompts_are_append_only_and_carry_one_session_id(tmp_path):
    def large(body, headers):
        if body.get("response_format") is None:  # the answer step: free text
            return "The answer is 4 [calc]."
        return action("calculator", expression="2+2")

    def small(body, headers):
        return final("4")

    log, lg, sm = _two_models(large, small)

    async def go():
        async with lg as L, sm as S:
            cfg = make_config(tmp_path, large_url=L.url, small_url=S.url)
            async with serve(cfg, tmp_path) as s:
                return await s.chat("What is 2+2?")

    status, body = asyncio.run(go())
    assert status == 200 and body["choices"][0]["message"]["content"] == "The answer is 4 [calc]."
    assert [tag for tag, _, _ in log] == ["large", "small", "large"]  # plan, tool_format, answer
    msgs = [b["messages"] for _, b, _ in log]
    before, after = msgs[0], msgs[1]  # the action steps: one growing transcript
    assert after[:len(before)] == before, "a later step rewrote an earlier part of the prompt"
    assert len(after) > len(before)
    # The answer step has a prompt of its own: the system prompt with the results, then the question last.
    assert msgs[2][0]["role"] == "system" and "calculator(expression=2+2): 4" in msgs[2][0]["content"]
    assert msgs[2][-1] == {"role": "user", "content": "What is 2+2?"} and len(msgs[2]) == 2
    assert log[2][1]["stop"] == ["\nQuestion:", "\nAnswer:", "\nObservation:"]
    task = body["agentfleet"]["task_id"]
    assert {h["x-session-id"] for _, _, h in log} == {task}
    assert {b["user"] for _, b, _ in log} == {task}
    fmts = [b.get("response_format") for _, b, _ in log]
    assert fmts[0]["type"] == fmts[1]["type"] == "json_schema" and fmts[2] is None
    assert msgs[0][0]["role"] == "system" and '"name":"calculator"' in msgs[0][0]["content"]
    # The exact reply is kept in the transcript, and the tool result is an OpenAI tool message.
    assert msgs[1][2]["content"] == action("calculator", expression="2+2")
    assert msgs[1][2]["tool_calls"][0]["function"]["name"] == "calculator"
    assert msgs[1][3]["role"] == "tool" and msgs[1][3]["content"] == "4"
    assert msgs[1][3]["tool_call_id"] == msgs[1][2]["tool_calls"][0]["id"]
    assert body["agentfleet"]["steps"] == 3


def test_malformed_reply_gets_one_repair_then_succeeds(tmp_path):
    replies = iter(["Sure! Let me think.", final("fixed")])

    async def go():
        async with scripted(lambda b, h: next(replies)) as m:
            cfg = make_config(tmp_path, large_url=m.url, budget=None,
                              app={"limits": {"maxSteps": 6, "maxTokens": 4000, "deadlineSeconds": 20}})
            async with serve(cfg, tmp_path) as s:
                status, body = await s.chat("hi")
            return status, body, m.requests

    status, body, reqs = asyncio.run(go())
    assert body["choices"][0]["message"]["content"] == "fixed" and body["agentfleet"]["stop_reason"] == "answered"
    repair = reqs[1][0]["messages"]
    assert repair[-2] == {"role": "assistant", "content": "Sure! Let me think."}
    assert repair[-1]["role"] == "user" and repair[-1]["content"].startswith(
        "That reply was not a valid action: the reply is not a JSON object.")


def test_malformed_small_step_escalates_to_large(tmp_path):
    log, lg, sm = _two_models(
        lambda b, h: action("calculator", expression="1+1") if len(b["messages"]) == 2 else final("large fixed it"),
        lambda b, h: "garbage from the small model")

    async def go():
        async with lg as L, sm as S:
            cfg = make_config(tmp_path, large_url=L.url, small_url=S.url)
            async with serve(cfg, tmp_path) as s:
                return await s.chat("hi")

    status, body = asyncio.run(go())
    assert [tag for tag, _, _ in log] == ["large", "small", "small", "large"]
    assert body["choices"][0]["message"]["content"] == "large fixed it"
    assert body["agentfleet"]["stop_reason"] == "answered"


def test_max_steps_ends_with_reason_and_partial_answer(tmp_path):
    n = iter(range(100))

    async def go():
        async with scripted(lambda b, h: action("calculator", expression=f"{next(n)} + 1")) as m:
            cfg = make_config(tmp_path, large_url=m.url)
            async with serve(cfg, tmp_path) as s:
                status, body = await s.chat("loop forever")
            return status, body, len(m.requests)

    status, body, calls = asyncio.run(go())
    assert status == 200 and calls == 6  # maxSteps
    ext = body["agentfleet"]
    assert (ext["stop_reason"], ext["detail"]) == ("max_steps", "reached maxSteps (6)")
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["content"] == "6"  # the last observation (5 + 1)


def test_max_tokens_ends_the_task(tmp_path):
    n = iter(range(100))  # a different call each time: the repetition guard stays out of it

    async def go():
        async with scripted(lambda b, h: action("calculator", expression=f"{next(n)}+1")) as m:
            cfg = make_config(tmp_path, large_url=m.url,
                              app={"limits": {"maxSteps": 50, "maxTokens": 600, "deadlineSeconds": 20}})
            async with serve(cfg, tmp_path) as s:
                return await s.chat("spend")

    _, body = asyncio.run(go())
    assert body["agentfleet"]["stop_reason"] == "max_tokens"
    assert body["agentfleet"]["detail"] == "reached maxTokens (600)"


def test_tool_errors_become_observations_not_failures(tmp_path):
    replies = iter([action("calculator", expression="__import__('os')"), final("could not compute")])

    async def go():
        async with scripted(lambda b, h: next(replies)) as m:
            cfg = make_config(tmp_path, large_url=m.url)
            async with serve(cfg, tmp_path) as s:
                return await s.run_to_end("compute")

    run = asyncio.run(go())
    assert run["status"] == "completed" and run["answer"] == "could not compute"
    assert run["steps"][0]["observation"] == "error: calculator: unsupported syntax: Call"


@needs_sim
def test_deadline_ends_a_slow_task_without_hanging(tmp_path):
    # ~250 prompt tokens at 12 ms each: the first token would come after ~3 s, past the 1 s deadline.
    with running_fleet(1, SimSettings(prefill_ms_per_token=12, extra=("--mode", "echo"))) as fleet:
        cfg = make_config(tmp_path, large_url=fleet.urls[0] + "/v1",
                          app={"limits": {"maxSteps": 6, "maxTokens": 4000, "deadlineSeconds": 1}})

        async def go():
            async with serve(cfg, tmp_path) as s:
                t0 = time.monotonic()
                status, body = await s.chat(final("too late"))
                return status, body, time.monotonic() - t0

        status, body, elapsed = asyncio.run(go())
    assert elapsed < 3.0
    assert status == 200 and body["agentfleet"]["stop_reason"] == "deadline"
    assert body["agentfleet"]["detail"] == "reached the deadline (1s)"


@needs_sim
def test_injected_model_failures_are_upstream_errors(tmp_path):
    with running_fleet(1, SimSettings(extra=("--failure-injection-rate", "100", "--failure-types",
                                             "server_error"))) as fleet:
        cfg = make_config(tmp_path, large_url=fleet.urls[0] + "/v1")

        async def go():
            async with serve(cfg, tmp_path) as s:
                return await s.chat(final("x")), await s.stream(final("x")), await s.run_to_end("x")

        (s1, b1), (s2, events), run = asyncio.run(go())
    assert s1 == 502 and b1["error"]["code"] == "upstream_error"
    assert b1["error"]["message"].startswith("the model failed before any answer: the large model failed: "
                                             "large model sim-model answered HTTP 5")
    assert s2 == 200 and events[-1] == "[DONE]" and events[-2]["error"]["code"] == "upstream_error"
    assert run["status"] == "incomplete" and run["agentfleet"]["stop_reason"] == "model_error"


def test_failed_small_call_is_retried_on_large(tmp_path):
    log, lg, sm = _two_models(
        lambda b, h: action("calculator", expression="3*3") if len(b["messages"]) == 2 else final("nine"),
        lambda b, h: 503)

    async def go():
        async with lg as L, sm as S:
            cfg = make_config(tmp_path, large_url=L.url, small_url=S.url)
            async with serve(cfg, tmp_path) as s:
                return await s.chat("3*3?")

    _, body = asyncio.run(go())
    assert [tag for tag, _, _ in log] == ["large", "small", "large"]
    assert body["choices"][0]["message"]["content"] == "nine"


SUBS = [{"name": "hr", "description": "answers HR questions", "systemPrompt": "You are the HR helper.",
         "tools": ["calculator"], "modelRole": "small", "budgetShare": 0.4}]


def test_sub_agents_run_in_parallel_with_their_own_prompt_and_session(tmp_path):
    in_flight, peak = 0, 0

    async def reply(body, headers):
        nonlocal in_flight, peak
        msgs = body["messages"]
        if msgs[0]["content"].startswith("You are the HR helper."):
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.3)
            in_flight -= 1
            return final(f"HR says: {msgs[1]['content']}")
        tool = [m for m in msgs if m["role"] == "tool"]
        if body.get("response_format") is None:  # the large model writes the answer (cheap-first)
            results = msgs[0]["content"].split("Results of the tools you called:\n", 1)[1]
            return "combined: " + results.removeprefix("delegate: ").replace("\n", " | ")
        if tool and msgs[-1]["role"] == "tool":
            return final("small thinks it is done")
        return json.dumps({"action": "delegate", "arguments": {"calls": [
            {"agent": "hr", "task": "vacation days"}, {"agent": "hr", "task": "parental leave"}]}})

    async def go():
        async with scripted(reply) as m:
            cfg = make_config(tmp_path, large_url=m.url, app={"subAgents": SUBS, "tools": {"builtin": [
                "calculator", "delegate"]}})
            async with serve(cfg, tmp_path) as s:
                status, run = 0, await s.run_to_end("ask HR twice")
            return run, m.requests

    run, reqs = asyncio.run(go())
    assert run["status"] == "completed"
    assert run["answer"] == "combined: hr: HR says: vacation days | hr: HR says: parental leave"
    assert peak == 2
    sessions = {h["x-session-id"] for b, h in reqs if b["messages"][0]["content"].startswith("You are the HR")}
    task = run["agentfleet"]["task_id"]
    assert sessions == {f"{task}/hr-1-0", f"{task}/hr-1-1"}
    subs = run["steps"][0]["sub_agents"]
    assert [(s["agent"], s["stop_reason"], s["answer"]) for s in subs] == [
        ("hr", "answered", "HR says: vacation days"), ("hr", "answered", "HR says: parental leave")]
    assert run["agentfleet"]["steps"] == 5  # plan, tool_format, answer + one per sub-agent


def test_delegation_depth_zero_offers_no_delegate_tool(tmp_path):
    async def go():
        async with scripted(lambda b, h: json.dumps({"action": "delegate", "arguments": {"calls": [
                {"agent": "hr", "task": "x"}]}})) as m:
            cfg = make_config(tmp_path, large_url=m.url, app={
                "subAgents": SUBS, "tools": {"builtin": ["calculator", "delegate"]},
                "limits": {"maxSteps": 6, "maxTokens": 4000, "deadlineSeconds": 20, "maxDelegationDepth": 0}})
            async with serve(cfg, tmp_path) as s:
                status, body = await s.chat("delegate please")
            return body, m.requests

    body, reqs = asyncio.run(go())
    assert '"name":"delegate"' not in reqs[0][0]["messages"][0]["content"]
    assert body["agentfleet"]["stop_reason"] == "malformed_action"
    assert "must be one of: calculator, final_answer" in body["agentfleet"]["detail"]


def test_nested_delegation_with_one_slot_does_not_deadlock(tmp_path):
    subs = [{"name": "a", "description": "middle", "systemPrompt": "You are A.", "tools": ["delegate"],
             "modelRole": "large", "budgetShare": 0.5},
            {"name": "b", "description": "leaf", "systemPrompt": "You are B.", "tools": ["calculator"],
             "modelRole": "large", "budgetShare": 0.5}]

    def reply(body, headers):
        msgs = body["messages"]
        me = msgs[0]["content"][:10]
        tools = [m for m in msgs if m["role"] == "tool"]
        if tools:
            return final(f"{me[:9]} got: {tools[-1]['content']}")
        if me.startswith("You are A."):
            return json.dumps({"action": "delegate", "arguments": {"calls": [{"agent": "b", "task": "leaf work"}]}})
        if me.startswith("You are B."):
            return final("leaf done")
        return json.dumps({"action": "delegate", "arguments": {"calls": [{"agent": "a", "task": "middle work"}]}})

    async def go():
        async with scripted(reply) as m:
            cfg = make_config(tmp_path, large_url=m.url, budget={"window": "day", "limits": {"tokens": 10**6},
                                                                 "routing": {"policy": "large-only"}},
                              app={"subAgents": subs, "tools": {"builtin": ["delegate"]},
                                   "limits": {"maxSteps": 6, "maxTokens": 40000, "deadlineSeconds": 10,
                                              "maxParallelSubAgents": 1, "maxDelegationDepth": 2}})
            async with serve(cfg, tmp_path) as s:
                t0 = time.monotonic()
                status, body = await s.chat("go deep")
                return body, time.monotonic() - t0

    body, elapsed = asyncio.run(go())
    assert elapsed < 5 and body["agentfleet"]["stop_reason"] == "answered"
    assert body["choices"][0]["message"]["content"] == "You are a got: a: You are A got: b: leaf done"
    assert body["agentfleet"]["steps"] == 5  # root 2 + a 2 + b 1


def test_streamed_answer_step_passes_the_models_deltas_through(tmp_path):
    def large(body, headers):
        # Every call streams from the engine (the runtime meters usage as it arrives), also the action steps.
        assert body.get("stream") is True
        assert body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
        if body.get("response_format") is None:
            return "The answer is four, as computed."
        return action("calculator", expression="2+2")

    log, lg, sm = _two_models(large, lambda b, h: final("4"))

    async def go():
        async with lg as L, sm as S:
            cfg = make_config(tmp_path, large_url=L.url, small_url=S.url)
            async with serve(cfg, tmp_path) as s:
                return await s.stream("2+2?")

    status, events = asyncio.run(go())
    deltas = [e["choices"][0]["delta"]["content"] for e in events[:-1]
              if e["choices"] and e["choices"][0]["delta"].get("content")]
    assert "".join(deltas) == "The answer is four, as computed."
    assert deltas[:2] == ["The a", "nswer"]  # the model's own 5-character chunks, not re-split
    last = events[-2]["agentfleet"]
    assert last["stop_reason"] == "answered" and last["steps"] == 3
    steps = [e["agentfleet"]["step"] for e in events[:-1] if e.get("agentfleet", {}).get("type") == "step"]
    assert [s["kind"] for s in steps] == ["plan", "tool_format", "answer"]
