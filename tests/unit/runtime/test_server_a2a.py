"""The runtime's A2A surface, with the A2A project's own Python SDK (`a2a-sdk`) as the client against the real
runtime and a scripted model server, in both protocol versions the card lists (1.0 with its PascalCase methods and
the A2A-Version header, 0.3 through the SDK's compat transport): the agent card validates as the SDK's 0.3 model and
its 1.0 protobuf, `SendMessage` / `message/send` answers a completed Task, the streaming methods yield the task, a
status update per step, the answer artifact and the final status, tasks stay their owner's, a bad key is HTTP 401
and malformed JSON-RPC, unknown methods and a method of the other version get their JSON-RPC error codes."""

import asyncio
import json
import re
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


VERSIONS = ["1.0", "0.3"]
METHODS = {"1.0": {"send": "SendMessage", "stream": "SendStreamingMessage", "get": "GetTask", "cancel": "CancelTask"},
           "0.3": {"send": "message/send", "stream": "message/stream", "get": "tasks/get", "cancel": "tasks/cancel"}}


async def _client(url: str, key: str = ALICE, *, streaming: bool, version: str | None = None,
                  seen: list | None = None):
    """The SDK's client for the agent at `url`; `version` keeps only that interface of the card (the SDK then
    picks its 1.0 transport or its 0.3 compat one); `seen` records each request's (method, A2A-Version)."""
    async def record(request):
        if seen is not None and request.method == "POST":
            seen.append((json.loads(request.content)["method"], request.headers.get("A2A-Version")))

    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30,
                             event_hooks={"request": [record]})
    config = a2a_client.ClientConfig(httpx_client=http, streaming=streaming)
    card = await a2a_client.A2ACardResolver(http, url).get_agent_card()
    if version is not None:
        keep = [i for i in card.supported_interfaces if ".".join(i.protocol_version.split(".")[:2]) == version]
        del card.supported_interfaces[:]
        card.supported_interfaces.extend(keep)
    return a2a_client.ClientFactory(config).create(card), http


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
    # 0.3's fields, read by the SDK's 0.3 model
    card = v03.AgentCard.model_validate(body)
    assert card.name == "assistant" and card.url == url + "/a2a" and card.protocol_version == "0.3.0"
    assert card.capabilities.streaming is True and card.supports_authenticated_extended_card is False
    assert [s.id for s in card.skills] == ["assistant", "sub-agent:researcher", "tool:calculator"]
    assert card.skills[1].description == "Looks things up."
    bearer = "An API key of the AgentApp's key store"
    assert card.security_schemes["bearer"].root.scheme == "bearer" and body["security"] == [{"bearer": []}]
    assert "Research." not in str(body)  # the system prompts stay private
    # 1.0's, read by the SDK's resolver into its protobuf AgentCard: the one endpoint once per version, 1.0 first
    assert resolved.name == "assistant" and resolved.capabilities.streaming
    assert not resolved.capabilities.push_notifications and not resolved.capabilities.extended_agent_card
    assert [(i.url, i.protocol_binding, i.protocol_version) for i in resolved.supported_interfaces] == [
        (url + "/a2a", "JSONRPC", "1.0"), (url + "/a2a", "JSONRPC", "0.3")]
    scheme = resolved.security_schemes["bearer"].http_auth_security_scheme
    assert (scheme.scheme, scheme.description) == ("bearer", bearer)
    assert [dict(r.schemes) for r in resolved.security_requirements] == [{"bearer": pb.StringList()}]
    assert body["securityRequirements"] == [{"schemes": {"bearer": {"list": []}}}]


@pytest.mark.parametrize("version", VERSIONS)
def test_message_send_answers_a_completed_task_and_only_its_owner_reads_it(tmp_path, version):
    seen = []

    async def go():
        async with scripted(calculator_then_answer) as m:
            async with serve(make_config(tmp_path, large_url=m.url), tmp_path) as s:
                client, http = await _client(s.url, streaming=False, version=version, seen=seen)
                got = [r async for r in client.send_message(_message("What is 2+2?"))]
                task = got[0].task
                again = await client.get_task(pb.GetTaskRequest(id=task.id))
                gina, gina_http = await _client(s.url, GINA, streaming=False, version=version)
                with pytest.raises(TaskNotFoundError):
                    await gina.get_task(pb.GetTaskRequest(id=task.id))
                with pytest.raises(Exception) as not_cancelable:
                    await client.cancel_task(pb.CancelTaskRequest(id=task.id))
                run_status, run = await s.get(f"/v1/runs/{task.id}")
                await http.aclose()
                await gina_http.aclose()
                return got, task, again, not_cancelable.value, run_status, run

    got, task, again, not_cancelable, run_status, run = asyncio.run(go())
    names = METHODS[version]
    assert seen == [(names["send"], version), (names["get"], version), (names["cancel"], version)]
    assert len(got) == 1
    assert task.status.state == pb.TASK_STATE_COMPLETED
    assert [p.text for p in task.artifacts[0].parts if p.text] == [ANSWER]
    data = [p.data for p in task.artifacts[0].parts if p.HasField("data")][0]
    assert set(data.struct_value.fields) >= {"citations", "usage", "cost_usd", "stop_reason"}
    assert task.history[0].parts[0].text == "What is 2+2?" and task.context_id
    assert again.id == task.id and again.status.state == pb.TASK_STATE_COMPLETED
    assert type(not_cancelable).__name__ == "TaskNotCancelableError"
    assert run_status == 200 and run["status"] == "completed"  # the same durable run


@pytest.mark.parametrize("version", VERSIONS)
def test_message_stream_yields_task_steps_artifact_and_final_status(tmp_path, version):
    seen = []

    async def go():
        async with scripted(calculator_then_answer) as m:
            async with serve(make_config(tmp_path, large_url=m.url), tmp_path) as s:
                client, http = await _client(s.url, streaming=True, version=version, seen=seen)
                events = [r async for r in client.send_message(_message("What is 2+2?"))]
                await http.aclose()
                return events

    events = asyncio.run(go())
    assert seen == [(METHODS[version]["stream"], version)]
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


V1 = {"A2A-Version": "1.0"}
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


@pytest.mark.parametrize("body,headers,code,rpc_id,reason", [
    ({"jsonrpc": "1.0", "id": 7, "method": "tasks/get", "params": {"id": "x"}}, {}, -32600, 7, None),
    ([_rpc("tasks/get", {"id": "x"})], {}, -32600, None, None),
    ({"jsonrpc": "2.0", "id": 8, "params": {}}, {}, -32600, 8, None),
    (_rpc("tasks/list", {}, 9), {}, -32601, 9, None),
    (_rpc("message/send", {"message": {"role": "user"}}, "a"), {}, -32602, "a", None),
    (_rpc("message/send", {"message": {"role": "user", "messageId": "m1", "parts": [
        {"kind": "file", "file": {"uri": "https://x/y.pdf"}}]}}, "b"), {}, -32005, "b", None),
    (_rpc("tasks/get", {"id": "run-0123456789abcdef"}, 10), {}, -32001, 10, None),
    (_rpc("tasks/get", "not-an-object", 11), {}, -32602, 11, None),
    # A2A 1.0: its own unknown method, a method of the other version either way, a version nobody speaks
    (_rpc("Frobnicate", {}, 12), V1, -32601, 12, "METHOD_NOT_FOUND"),
    (_rpc("tasks/get", {"id": "x"}, 13), V1, -32009, 13, "VERSION_NOT_SUPPORTED"),
    (_rpc("GetTask", {"id": "x"}, 14), {}, -32009, 14, None),
    (_rpc("GetTask", {"id": "x"}, 15), {"A2A-Version": "2.0"}, -32009, 15, "VERSION_NOT_SUPPORTED"),
    (_rpc("GetTask", {"id": "run-0123456789abcdef"}, 16), {"A2A-Version": "1.0.3"}, -32001, 16, "TASK_NOT_FOUND"),
    (_rpc("SendMessage", {"message": {"role": "ROLE_USER", "messageId": "m1", "parts": [
        {"url": "https://x/y.pdf", "mediaType": "application/pdf"}]}}, 17), V1, -32005, 17,
     "CONTENT_TYPE_NOT_SUPPORTED"),
    (_rpc("SendMessage", {"message": {"role": "ROLE_USER", "parts": [{"text": "hi"}]}}, 18), V1, -32602, 18,
     "INVALID_PARAMS"),
    (_rpc("SendMessage", {"message": {"role": "ROLE_USER", "messageId": "m2", "taskId": "run-1", "parts": [
        {"text": "hi"}]}}, 19), V1, -32004, 19, "UNSUPPORTED_OPERATION"),
    (_rpc("CreateTaskPushNotificationConfig", {"taskId": "x", "url": "https://hook"}, 20), V1, -32003, 20,
     "PUSH_NOTIFICATION_NOT_SUPPORTED"),
    (_rpc("GetExtendedAgentCard", {}, 21), V1, -32004, 21, "UNSUPPORTED_OPERATION"),
    (_rpc("ListTasks", {"status": "done"}, 22), V1, -32602, 22, "INVALID_PARAMS"),
    (_rpc("ListTasks", {"pageToken": "not-ours"}, 23), V1, -32602, 23, "INVALID_PARAMS"),
    (_rpc("SubscribeToTask", {"id": "run-0123456789abcdef"}, 24), V1, -32001, 24, "TASK_NOT_FOUND"),
], ids=["wrong-version", "batch", "no-method", "unknown-method", "params-missing", "file-part", "unknown-task",
        "params-not-object", "v1-unknown-method", "v03-method-as-v1", "v1-method-without-header", "version-2.0",
        "patch-version-ignored", "v1-url-part", "v1-no-message-id", "v1-continue-task", "v1-push", "v1-extended-card",
        "v1-list-bad-state", "v1-list-bad-token", "v1-subscribe-unknown"])
def test_malformed_json_rpc_gets_its_error_code(tmp_path, body, headers, code, rpc_id, reason):
    async def go():
        async with scripted(lambda b, h: final("x")) as m:
            async with serve(make_config(tmp_path, large_url=m.url), tmp_path) as s:
                return await s.post("/a2a", body, headers=headers)

    status, answer = asyncio.run(go())
    assert status == 200
    assert answer["jsonrpc"] == "2.0" and answer["id"] == rpc_id
    assert answer["error"]["code"] == code and "Traceback" not in answer["error"]["message"]
    data = answer["error"].get("data")
    if reason is None:  # 0.3's spelling: data, when there is any, is an object
        assert data is None or isinstance(data, dict)
    else:  # 1.0's: google.rpc details, an ErrorInfo first (as a2a-sdk reads them)
        assert data[0]["@type"] == ERROR_INFO and data[0]["reason"] == reason
        assert data[0]["domain"] == "a2a-protocol.org"


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


def test_one_task_reads_in_either_version_and_a_method_of_the_other_version_names_the_header(tmp_path):
    """A task started with 1.0's SendMessage (raw JSON-RPC, A2A-Version: 1.0) is answered in 1.0's spelling
    (enums, parts without kind, `{"task"}`), and the same durable task reads in 0.3's through tasks/get."""
    message = {"role": "ROLE_USER", "messageId": "m-v1-1", "contextId": "ctx-9",
               "parts": [{"text": "What is 2+2?"}, {"data": [1, 2]}]}

    async def go():
        async with scripted(calculator_then_answer) as m:
            async with serve(make_config(tmp_path, large_url=m.url), tmp_path) as s:
                sent = await s.post("/a2a", _rpc("SendMessage", {"message": message,
                                                                 "configuration": {"historyLength": 1}}), headers=V1)
                task_id = sent[1]["result"]["task"]["id"]
                as_v03 = await s.post("/a2a", _rpc("tasks/get", {"id": task_id}))
                as_v1 = await s.post("/a2a?A2A-Version=1.0", _rpc("GetTask", {"id": task_id, "historyLength": 0}))
                unversioned = await s.post("/a2a", _rpc("GetTask", {"id": task_id}))
                return sent, as_v03, as_v1, unversioned, m.requests

    (status, sent), (_, as_v03), (_, as_v1), (_, unversioned), requests = asyncio.run(go())
    assert status == 200 and set(sent["result"]) == {"task"}
    task = sent["result"]["task"]
    assert "kind" not in task and task["contextId"] == "ctx-9"
    assert task["status"]["state"] == "TASK_STATE_COMPLETED"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", task["status"]["timestamp"])
    text, data = task["artifacts"][0]["parts"]
    assert text == {"text": ANSWER, "mediaType": "text/plain"}
    assert data["mediaType"] == "application/json" and set(data["data"]) >= {"citations", "usage", "cost_usd"}
    assert [h["role"] for h in task["history"]] == ["ROLE_USER"]
    assert task["history"][0]["parts"] == [{"text": "What is 2+2?", "mediaType": "text/plain"},
                                           {"data": [1, 2], "mediaType": "application/json"}]
    assert '[1, 2]' in json.dumps(requests[0][0]["messages"])  # a data part reaches the model as JSON
    # The same task in 0.3's spelling, and in 1.0's again (the version as a query parameter, spec 3.6.1)
    assert as_v03["result"]["kind"] == "task" and as_v03["result"]["status"]["state"] == "completed"
    assert as_v03["result"]["history"][0]["parts"][0] == {"kind": "text", "text": "What is 2+2?"}
    assert as_v1["result"]["id"] == task["id"] and "history" not in as_v1["result"]
    assert as_v1["result"]["status"]["state"] == "TASK_STATE_COMPLETED"
    # Without the header a request is 0.3 (spec 3.6.2), where GetTask is not a method: the error names the fix
    assert unversioned["error"]["code"] == -32009
    assert "A2A-Version: 1.0" in unversioned["error"]["message"]


def test_list_tasks_pages_through_the_callers_own_tasks_newest_first(tmp_path):
    async def go():
        async with scripted(calculator_then_answer) as m:
            async with serve(make_config(tmp_path, large_url=m.url), tmp_path) as s:
                ids = []
                for i, (method, msg, headers) in enumerate([
                        ("message/send", {"role": "user", "parts": [{"kind": "text", "text": "2+2?"}]}, {}),
                        ("SendMessage", {"role": "ROLE_USER", "contextId": "ctx-b", "parts": [{"text": "2+2?"}]},
                         V1),
                        ("SendMessage", {"role": "ROLE_USER", "parts": [{"text": "2+2?"}]}, V1)]):
                    _, got = await s.post("/a2a", _rpc(method, {"message": {**msg, "messageId": f"m-list-{i}"}}),
                                          headers=headers)
                    ids.append((got["result"].get("task") or got["result"])["id"])
                await s.chat("not an A2A task")  # other kinds of runs are not A2A tasks
                pages, token = [], None
                while True:  # every page of two, by the cursor
                    _, page = await s.post("/a2a", _rpc("ListTasks", {"pageSize": 2, **(
                        {"pageToken": token} if token else {})}), headers=V1)
                    pages.append(page["result"])
                    token = page["result"]["nextPageToken"]
                    if not token:
                        break
                _, full = await s.post("/a2a", _rpc("ListTasks", {"includeArtifacts": True, "historyLength": 0}),
                                       headers=V1)
                _, ctx = await s.post("/a2a", _rpc("ListTasks", {"contextId": "ctx-b"}), headers=V1)
                _, failed = await s.post("/a2a", _rpc("ListTasks", {"status": "TASK_STATE_FAILED"}), headers=V1)
                _, gina = await s.post("/a2a", _rpc("ListTasks", {}), key=GINA, headers=V1)
                client, http = await _client(s.url, streaming=False, version="1.0")
                sdk = await client.list_tasks(pb.ListTasksRequest(page_size=10))
                await http.aclose()
                return ids, pages, full["result"], ctx["result"], failed["result"], gina["result"], sdk

    ids, pages, full, ctx, failed, gina, sdk = asyncio.run(go())
    newest_first = list(reversed(ids))
    assert [[t["id"] for t in p["tasks"]] for p in pages] == [newest_first[:2], newest_first[2:]]
    assert [(p["pageSize"], p["totalSize"]) for p in pages] == [(2, 3), (2, 3)]
    assert pages[0]["nextPageToken"] and pages[1]["nextPageToken"] == ""
    assert all("artifacts" not in t for p in pages for t in p["tasks"])  # only with includeArtifacts
    assert [t["id"] for t in full["tasks"]] == newest_first and all("history" not in t for t in full["tasks"])
    assert all(t["artifacts"][0]["parts"][0]["text"] == ANSWER for t in full["tasks"])
    assert full["nextPageToken"] == "" and full["pageSize"] == 50
    assert [t["id"] for t in ctx["tasks"]] == [ids[1]]
    assert failed == {"tasks": [], "nextPageToken": "", "pageSize": 50, "totalSize": 0}
    assert gina["tasks"] == [] and gina["totalSize"] == 0  # someone else's tasks are not listed
    assert [t.id for t in sdk.tasks] == newest_first and sdk.next_page_token == ""
    assert all(t.status.state == pb.TASK_STATE_COMPLETED for t in sdk.tasks)


def test_subscribe_to_task_follows_a_running_task_to_its_end(tmp_path):
    """SubscribeToTask with the SDK's 1.0 client: the task as it is now, its later steps, the answer artifact and
    the final status; a finished task cannot be subscribed to."""
    gate = asyncio.Event()

    async def slow_model(body, headers):
        await gate.wait()
        return calculator_then_answer(body, headers)

    async def go():
        async with scripted(slow_model) as m:
            async with serve(make_config(tmp_path, large_url=m.url), tmp_path) as s:
                _, sent = await s.post("/a2a", _rpc("SendMessage", {
                    "message": {"role": "ROLE_USER", "messageId": "m-sub-1", "parts": [{"text": "2+2?"}]},
                    "configuration": {"returnImmediately": True}}), headers=V1)
                task_id = sent["result"]["task"]["id"]
                client, http = await _client(s.url, streaming=True, version="1.0")
                events = []

                async def follow():
                    async for ev in client.subscribe(pb.SubscribeToTaskRequest(id=task_id)):
                        events.append(ev)
                        if len(events) == 1:
                            gate.set()  # the model answers once the subscriber has the task

                await asyncio.wait_for(follow(), 30)
                with pytest.raises(Exception) as finished:
                    async for _ in client.subscribe(pb.SubscribeToTaskRequest(id=task_id)):
                        pass
                await http.aclose()
                return sent["result"]["task"], events, finished.value

    started, events, finished = asyncio.run(go())
    assert started["status"]["state"] == "TASK_STATE_WORKING"
    kinds = [e.WhichOneof("payload") for e in events]
    assert kinds[0] == "task" and events[0].task.id == started["id"]
    assert events[0].task.status.state == pb.TASK_STATE_WORKING
    assert kinds[-2:] == ["artifact_update", "status_update"] and set(kinds[1:-2]) <= {"status_update"}
    assert any("calculator" in e.status_update.status.message.parts[0].text for e in events[1:-2])
    assert [p.text for p in events[-2].artifact_update.artifact.parts if p.text] == [ANSWER]
    assert events[-1].status_update.status.state == pb.TASK_STATE_COMPLETED
    assert type(finished).__name__ == "UnsupportedOperationError"
