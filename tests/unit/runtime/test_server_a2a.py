"""The runtime's A2A surface, with the A2A project's own Python SDK (`a2a-sdk`) as the client against the real
runtime and a scripted model server: the agent card validates as the SDK's AgentCard and resolves to a client,
`message/send` answers a completed Task, `message/stream` yields the task, a status update per step, the answer
artifact and the final status, tasks stay their owner's, a bad key is HTTP 401 and malformed JSON-RPC gets the
JSON-RPC error codes."""

import asyncio
import uuid

import pytest

from runtime_kit import ALICE, GINA, action, final, make_config, scripted, serve

a2a_client = pytest.importorskip("a2a.client")
httpx = pytest.importorskip("httpx")
from a2a.compat.v0_3 import types as v03  # noqa: E402
from a2a.types import a2a_pb2 as pb  # noqa: E402
from a2a.utils.errors import TaskNotFoundError  # noqa: E402

ANSWER = "The sum is 4, as computed by the calculator tool."


def calculator_then_answer(body, headers):
    if body.get("response_format") is None:
        return ANSWER
    if any(m["role"] == "tool" for m in body["messages"]):
        return final("4")
    return action("calculator", expression="2+2")


async def _client(url: str, key: str = ALICE, *, streaming: bool):
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30)
    config = a2a_client.ClientConfig(httpx_client=http, streaming=streaming)
    return await a2a_client.ClientFactory(config).create_from_url(url), http


def _message(text: str) -> pb.SendMessageRequest:
    return pb.SendMessageRequest(message=pb.Message(role=pb.ROLE_USER, message_id=str(uuid.uuid4()),
                                                    parts=[pb.Part(text=text)]))


def test_agent_card_validates_with_the_sdks_types(tmp_path):
    app = {"subAgents": [{"name": "researcher", "description": "Looks things up.", "systemPrompt": "Research.",
                          "tools": ["calculator"]}]}

    async def go():
        async with scripted(lambda b, h: final("x")) as m:
            async with serve(make_config(tmp_path, large_url=m.url, app=app), tmp_path) as s:
                status, body = await s.get("/.well-known/agent-card.json", key=None)
                legacy_status, _ = await s.get("/.well-known/agent.json", key=None)
                resolved = await a2a_client.A2ACardResolver(httpx.AsyncClient(), s.url).get_agent_card()
                return s.url, status, body, legacy_status, resolved

    url, status, body, legacy_status, resolved = asyncio.run(go())
    assert status == 200 and legacy_status == 200
    card = v03.AgentCard.model_validate(body)
    assert card.name == "assistant" and card.url == url + "/a2a" and card.protocol_version == "0.3.0"
    assert card.capabilities.streaming is True
    assert [s.id for s in card.skills] == ["assistant", "sub-agent:researcher", "tool:calculator"]
    assert card.skills[1].description == "Looks things up."
    assert body["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer",
                                                  "description": "An API key of the AgentApp's key store"}}
    assert body["security"] == [{"bearer": []}]
    assert "Research." not in str(body)  # the system prompts stay private
    assert resolved.name == "assistant" and resolved.capabilities.streaming
    assert [(i.url, i.protocol_binding) for i in resolved.supported_interfaces] == [(url + "/a2a", "JSONRPC")]


def test_message_send_answers_a_completed_task_and_only_its_owner_reads_it(tmp_path):
    async def go():
        async with scripted(calculator_then_answer) as m:
            async with serve(make_config(tmp_path, large_url=m.url), tmp_path) as s:
                client, http = await _client(s.url, streaming=False)
                got = [r async for r in client.send_message(_message("What is 2+2?"))]
                task = got[0].task
                again = await client.get_task(pb.GetTaskRequest(id=task.id))
                gina, gina_http = await _client(s.url, GINA, streaming=False)
                with pytest.raises(TaskNotFoundError):
                    await gina.get_task(pb.GetTaskRequest(id=task.id))
                with pytest.raises(Exception) as not_cancelable:
                    await client.cancel_task(pb.CancelTaskRequest(id=task.id))
                run_status, run = await s.get(f"/v1/runs/{task.id}")
                await http.aclose()
                await gina_http.aclose()
                return got, task, again, not_cancelable.value, run_status, run

    got, task, again, not_cancelable, run_status, run = asyncio.run(go())
    assert len(got) == 1
    assert task.status.state == pb.TASK_STATE_COMPLETED
    assert [p.text for p in task.artifacts[0].parts if p.text] == [ANSWER]
    data = [p.data for p in task.artifacts[0].parts if p.HasField("data")][0]
    assert set(data.struct_value.fields) >= {"citations", "usage", "cost_usd", "stop_reason"}
    assert task.history[0].parts[0].text == "What is 2+2?" and task.context_id
    assert again.id == task.id and again.status.state == pb.TASK_STATE_COMPLETED
    assert type(not_cancelable).__name__ == "TaskNotCancelableError"
    assert run_status == 200 and run["status"] == "completed"  # the same durable run


def test_message_stream_yields_task_steps_artifact_and_final_status(tmp_path):
    async def go():
        async with scripted(calculator_then_answer) as m:
            async with serve(make_config(tmp_path, large_url=m.url), tmp_path) as s:
                client, http = await _client(s.url, streaming=True)
                events = [r async for r in client.send_message(_message("What is 2+2?"))]
                await http.aclose()
                return events

    events = asyncio.run(go())
    kinds = [e.WhichOneof("payload") for e in events]
    assert kinds[0] == "task" and events[0].task.status.state == pb.TASK_STATE_SUBMITTED
    assert kinds[-2:] == ["artifact_update", "status_update"]
    steps = events[1:-2]
    assert steps and all(k == "status_update" for k in kinds[1:-2])
    assert all(e.status_update.status.state == pb.TASK_STATE_WORKING for e in steps)
    assert any("calculator" in e.status_update.status.message.parts[0].text for e in steps)
    artifact = events[-2].artifact_update
    assert artifact.last_chunk and [p.text for p in artifact.artifact.parts if p.text] == [ANSWER]
    assert events[-1].status_update.status.state == pb.TASK_STATE_COMPLETED
    assert {e.task.id if k == "task" else getattr(e, k).task_id for e, k in zip(events, kinds)} == \
        {events[0].task.id}


def _rpc(method, params, rpc_id=1):
    return {"jsonrpc": "2.0", "id": rpc_id, "method": method, "params": params}


@pytest.mark.parametrize("body,code,rpc_id", [
    ({"jsonrpc": "1.0", "id": 7, "method": "tasks/get", "params": {"id": "x"}}, -32600, 7),
    ([_rpc("tasks/get", {"id": "x"})], -32600, None),
    ({"jsonrpc": "2.0", "id": 8, "params": {}}, -32600, 8),
    (_rpc("tasks/list", {}, 9), -32601, 9),
    (_rpc("message/send", {"message": {"role": "user"}}, "a"), -32602, "a"),
    (_rpc("message/send", {"message": {"role": "user", "messageId": "m1", "parts": [
        {"kind": "file", "file": {"uri": "https://x/y.pdf"}}]}}, "b"), -32005, "b"),
    (_rpc("tasks/get", {"id": "run-0123456789abcdef"}, 10), -32001, 10),
    (_rpc("tasks/get", "not-an-object", 11), -32602, 11),
], ids=["wrong-version", "batch", "no-method", "unknown-method", "params-missing", "file-part", "unknown-task",
        "params-not-object"])
def test_malformed_json_rpc_gets_its_error_code(tmp_path, body, code, rpc_id):
    async def go():
        async with scripted(lambda b, h: final("x")) as m:
            async with serve(make_config(tmp_path, large_url=m.url), tmp_path) as s:
                return await s.post("/a2a", body)

    status, answer = asyncio.run(go())
    assert status == 200
    assert answer["jsonrpc"] == "2.0" and answer["id"] == rpc_id
    assert answer["error"]["code"] == code and "Traceback" not in answer["error"]["message"]


def test_parse_error_and_bad_key(tmp_path):
    async def go():
        async with scripted(lambda b, h: final("x")) as m:
            async with serve(make_config(tmp_path, large_url=m.url), tmp_path) as s:
                async with s.session.post(s.url + "/a2a", data=b"{not json",
                                          headers={"Authorization": f"Bearer {ALICE}",
                                                   "Content-Type": "application/json"}) as r:
                    parse = r.status, await r.json()
                bad = await s.post("/a2a", _rpc("tasks/get", {"id": "x"}), key="key-nobody-0000")
                missing = await s.post("/a2a", _rpc("tasks/get", {"id": "x"}), key=None)
                client, http = await _client(s.url, "key-nobody-0000", streaming=False)
                with pytest.raises(Exception) as sdk_refused:
                    await client.get_task(pb.GetTaskRequest(id="x"))
                await http.aclose()
                return parse, bad, missing, sdk_refused.value

    (pstatus, pbody), (bstatus, bbody), (mstatus, _), sdk_refused = asyncio.run(go())
    assert pstatus == 200 and pbody["error"]["code"] == -32700 and pbody["id"] is None
    assert bstatus == 401 and bbody["error"]["code"] == "invalid_api_key"
    assert mstatus == 401
    assert "401" in str(sdk_refused)


def test_a_resent_message_is_the_same_task_and_non_blocking_returns_it_working(tmp_path):
    message = {"role": "user", "messageId": "m-resent-1", "parts": [{"kind": "text", "text": "What is 2+2?"}]}

    async def go():
        async with scripted(calculator_then_answer) as m:
            async with serve(make_config(tmp_path, large_url=m.url), tmp_path) as s:
                first = await s.post("/a2a", _rpc("message/send", {"message": message}))
                calls = len(m.requests)
                again = await s.post("/a2a", _rpc("message/send", {"message": message}))
                calls_again = len(m.requests)
                later = await s.post("/a2a", _rpc("message/send", {
                    "message": {**message, "messageId": "m-later-2", "contextId": "ctx-1"},
                    "configuration": {"blocking": False}}))
                task_id = later[1]["result"]["id"]
                for _ in range(400):  # a poll of a condition with a deadline
                    got = await s.post("/a2a", _rpc("tasks/get", {"id": task_id, "historyLength": 0}))
                    if got[1]["result"]["status"]["state"] != "working":
                        break
                    await asyncio.sleep(0.05)
                return first, calls, again, calls_again, later, got

    (_, first), calls, (_, again), calls_again, (_, later), (_, got) = asyncio.run(go())
    assert first["result"]["status"]["state"] == "completed"
    assert again["result"]["id"] == first["result"]["id"] and calls_again == calls  # nothing paid twice
    assert again["result"]["artifacts"] == first["result"]["artifacts"]
    assert later["result"]["status"]["state"] == "working" and later["result"]["contextId"] == "ctx-1"
    assert got["result"]["status"]["state"] == "completed" and got["result"]["history"] == []
    assert got["result"]["artifacts"][0]["parts"][0] == {"kind": "text", "text": ANSWER}
