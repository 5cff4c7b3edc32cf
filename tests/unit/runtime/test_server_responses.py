"""The runtime's OpenAI surface beyond chat completions, against a scripted model server and the real runtime:
`GET /v1/models`, the Responses API (plain, SSE, retrieve, `previous_response_id` chaining over the durable run
store, `store: false`) with the official `openai` client unchanged, and the Budget headers."""

import asyncio
import json

import aiohttp
import pytest

from runtime_kit import ALICE, GINA, action, final, make_config, scripted, serve

openai = pytest.importorskip("openai")

EVENT_ORDER = ["response.created", "response.in_progress",
               "response.output_item.added", "response.output_item.done",  # the calculator step
               "response.output_item.added", "response.content_part.added", "response.output_text.delta",
               "response.output_text.done", "response.content_part.done", "response.output_item.done",
               "response.completed"]


ANSWER = "The sum is 4, as computed by the calculator tool."


def calculator_then_answer(body, headers):
    """Plan: one calculator step, then final; the answer step (free text, streamed) quotes the result."""
    if body.get("response_format") is None:
        return ANSWER
    if any(m["role"] == "tool" for m in body["messages"]):
        return final("4")
    return action("calculator", expression="2+2")


def _client(s, key=ALICE):
    return openai.AsyncOpenAI(base_url=s.url + "/v1", api_key=key, max_retries=0)


def test_models_lists_the_app_in_openais_shape(tmp_path):
    async def go():
        async with scripted(lambda b, h: final("x")) as m:
            async with serve(make_config(tmp_path, large_url=m.url), tmp_path) as s:
                raw = await s.get("/v1/models")
                anonymous = await s.get("/v1/models", key=None)
                client = _client(s)
                listed = [x.id async for x in client.models.list()]
                one = await client.models.retrieve("assistant")
                with pytest.raises(openai.NotFoundError):
                    await client.models.retrieve("gpt-4o")
                await client.close()
                return raw, anonymous, listed, one

    (status, body), (anon_status, anon_body), listed, one = asyncio.run(go())
    assert status == 200 and body["object"] == "list"
    assert [(d["id"], d["object"], d["owned_by"]) for d in body["data"]] == [("assistant", "model", "team-a")]
    assert isinstance(body["data"][0]["created"], int)
    assert anon_status == 401 and anon_body["error"]["code"] == "invalid_api_key"
    assert listed == ["assistant"] and one.id == "assistant"


def test_openai_client_creates_retrieves_and_chains_responses(tmp_path):
    async def go():
        async with scripted(calculator_then_answer) as m:
            async with serve(make_config(tmp_path, large_url=m.url), tmp_path) as s:
                client = _client(s)
                first = await client.responses.create(model="assistant", input="What is 2+2?",
                                                      instructions="Answer in one sentence.")
                again = await client.responses.retrieve(first.id)
                sent_before = len(m.requests)
                second = await client.responses.create(model="assistant", input="And doubled?",
                                                       previous_response_id=first.id)
                chained_messages = m.requests[sent_before][0]["messages"]
                gina = _client(s, GINA)
                with pytest.raises(openai.NotFoundError):
                    await gina.responses.retrieve(first.id)
                with pytest.raises(openai.NotFoundError):
                    await gina.responses.create(model="assistant", input="hi", previous_response_id=first.id)
                with pytest.raises(openai.NotFoundError):
                    await client.responses.retrieve("resp_0123456789abcdef")
                await client.close()
                await gina.close()
                return first, again, second, chained_messages

    first, again, second, chained = asyncio.run(go())
    answer = ANSWER
    assert first.object == "response" and first.status == "completed" and first.model == "assistant"
    assert first.id.startswith("resp_") and first.output_text == answer
    assert [o.type for o in first.output] == ["mcp_call", "message"]
    call = first.output[0]
    assert (call.name, json.loads(call.arguments), call.output, call.status) == \
        ("calculator", {"expression": "2+2"}, "4", "completed")
    assert first.output[1].content[0].type == "output_text" and first.output[1].content[0].text == answer
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0
    assert first.usage.total_tokens == first.usage.input_tokens + first.usage.output_tokens
    assert first.instructions == "Answer in one sentence."
    assert again.model_dump() == first.model_dump()
    assert second.status == "completed" and second.previous_response_id == first.id and second.id != first.id
    turns = [(m["role"], m["content"]) for m in chained if m["role"] in ("user", "assistant")]
    assert ("user", "What is 2+2?") in turns and ("assistant", answer) in turns
    assert turns[-1] == ("user", "And doubled?")
    assert not any("Answer in one sentence." in (m["content"] or "") for m in chained)  # one response only


def test_openai_client_streams_a_response_with_the_documented_events(tmp_path):
    async def go():
        async with scripted(calculator_then_answer) as m:
            async with serve(make_config(tmp_path, large_url=m.url), tmp_path) as s:
                client = _client(s)
                async with client.responses.stream(model="assistant", input="What is 2+2?") as stream:
                    types, deltas = [], []
                    async for ev in stream:
                        types.append(ev.type)
                        if ev.type == "response.output_text.delta":
                            deltas.append(ev.delta)
                    final_response = await stream.get_final_response()
                raw = await client.responses.create(model="assistant", input="What is 2+2?", stream=True)
                raw_events = [ev async for ev in raw]
                stored = await client.responses.retrieve(final_response.id)
                await client.close()
                return types, deltas, final_response, raw_events, stored

    types, deltas, final_response, raw_events, stored = asyncio.run(go())
    collapsed = [t for i, t in enumerate(types) if t != "response.output_text.delta"
                 or types[i - 1] != "response.output_text.delta"]
    assert collapsed == EVENT_ORDER
    assert len(deltas) > 1 and "".join(deltas) == final_response.output_text
    assert final_response.status == "completed" and [o.type for o in final_response.output] == ["mcp_call", "message"]
    assert [e.sequence_number for e in raw_events] == list(range(len(raw_events)))
    assert raw_events[-1].type == "response.completed" and raw_events[-1].response.usage.total_tokens > 0
    assert [o.id for o in stored.output] == [o.id for o in final_response.output]


def test_store_false_is_neither_retrievable_nor_chainable(tmp_path):
    async def go():
        async with scripted(lambda b, h: final("not kept")) as m:
            async with serve(make_config(tmp_path, large_url=m.url), tmp_path) as s:
                client = _client(s)
                r = await client.responses.create(model="assistant", input="hi", store=False)
                with pytest.raises(openai.NotFoundError):
                    await client.responses.retrieve(r.id)
                with pytest.raises(openai.NotFoundError):
                    await client.responses.create(model="assistant", input="again", previous_response_id=r.id)
                await client.close()
                return r

    r = asyncio.run(go())
    assert r.status == "completed" and r.output_text == "not kept" and r.store is False


@pytest.mark.parametrize("body, param", [
    pytest.param({"input": ""}, "input", id="empty-input"),
    pytest.param({"input": [{"role": "assistant", "content": "only me"}]}, "input", id="no-user-turn"),
    pytest.param({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input",
                 id="client-tool-output"),
    pytest.param({"input": "hi", "tools": [{"type": "function", "name": "f"}]}, "tools", id="client-tools"),
    pytest.param({"input": "hi", "max_output_tokens": 0}, "max_output_tokens", id="zero-max-tokens"),
])
def test_responses_refuses_what_it_cannot_honour(tmp_path, body, param):
    async def go():
        async with scripted(lambda b, h: final("x")) as m:
            async with serve(make_config(tmp_path, large_url=m.url), tmp_path) as s:
                return await s.post("/v1/responses", body), len(m.requests)

    (status, err), model_calls = asyncio.run(go())
    assert status == 400 and err["error"]["code"] == "invalid_request" and err["error"]["param"] == param
    assert model_calls == 0


def test_model_failure_ends_a_stream_with_response_failed(tmp_path):
    async def go():
        async with scripted(lambda b, h: 400) as m:
            async with serve(make_config(tmp_path, large_url=m.url), tmp_path) as s:
                plain = await s.post("/v1/responses", {"input": "hi"})
                events = []
                async with s.session.post(s.url + "/v1/responses", json={"input": "hi", "stream": True},
                                          headers={"Authorization": f"Bearer {ALICE}"}) as r:
                    async for raw in r.content:
                        line = raw.decode().strip()
                        if line.startswith("data:"):
                            events.append(json.loads(line[5:]))
                return plain, r.status, events

    (status, body), stream_status, events = asyncio.run(go())
    assert status == 502 and body["error"]["code"] == "upstream_error"
    assert stream_status == 200 and [e["type"] for e in events] == ["response.created", "response.in_progress",
                                                                    "response.failed"]
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "upstream_error"


def test_budget_remaining_is_on_authenticated_answers(tmp_path):
    async def go():
        async with scripted(lambda b, h: final("x")) as m:
            cfg = make_config(tmp_path, large_url=m.url, budget={"window": "day",
                                                                 "limits": {"tokens": 100000, "costUsd": 5}})
            async with serve(cfg, tmp_path) as s:
                await s.runtime.refresh_budget()  # what the timer does every few seconds
                headers = {"Authorization": f"Bearer {ALICE}"}
                async with s.session.get(s.url + "/v1/models", headers=headers) as ok:
                    good = dict(ok.headers)
                async with s.session.get(s.url + "/v1/models") as refused:
                    bad = dict(refused.headers)
                return good, bad

    good, bad = asyncio.run(go())
    assert float(good["X-Agentfleet-Budget-Remaining-Usd"]) == pytest.approx(5.0)
    assert int(good["X-Agentfleet-Budget-Remaining-Tokens"]) == 100000
    assert "X-Agentfleet-Budget-Remaining-Usd" not in bad


def test_retry_with_the_same_idempotency_key_gets_the_same_response(tmp_path):
    async def go():
        async with scripted(lambda b, h: final("paid once")) as m:
            async with serve(make_config(tmp_path, large_url=m.url), tmp_path) as s:
                key = {"Idempotency-Key": "retry-1"}
                first = await s.post("/v1/responses", {"input": "hi"}, headers=key)
                calls = len(m.requests)
                again = await s.post("/v1/responses", {"input": "hi"}, headers=key)
                events = []
                async with s.session.post(s.url + "/v1/responses", json={"input": "hi", "stream": True},
                                          headers={"Authorization": f"Bearer {ALICE}", **key}) as r:
                    async for raw in r.content:
                        line = raw.decode().strip()
                        if line.startswith("data:"):
                            events.append(json.loads(line[5:]))
                return first, again, events, calls, len(m.requests)

    (s1, first), (s2, again), events, calls, calls_after = asyncio.run(go())
    assert s1 == s2 == 200 and calls_after == calls
    assert again["id"] == first["id"] and again["output"] == first["output"]
    assert [e["type"] for e in events][0] == "response.created" and events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["id"] == first["id"]
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "paid once"


def test_a_cap_ends_the_response_incomplete_with_its_reason(tmp_path):
    async def go():
        async with scripted(lambda b, h: action("calculator", expression="1+1")) as m:
            cfg = make_config(tmp_path, large_url=m.url, app={"limits": {"maxSteps": 2, "maxTokens": 4000,
                                                                        "deadlineSeconds": 20,
                                                                        "toolTimeoutSeconds": 5}})
            async with serve(cfg, tmp_path) as s:
                client = _client(s)
                plain = await client.responses.create(model="assistant", input="loop forever")
                events = [ev async for ev in await client.responses.create(model="assistant", input="loop",
                                                                           stream=True)]
                await client.close()
                return plain, events

    plain, events = asyncio.run(go())
    assert plain.status == "incomplete" and plain.incomplete_details.reason == "max_steps"
    assert [o.type for o in plain.output][:2] == ["mcp_call", "mcp_call"]
    assert events[-1].type == "response.incomplete" and events[-1].response.status == "incomplete"
