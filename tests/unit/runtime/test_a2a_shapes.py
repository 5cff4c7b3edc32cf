"""A2A's wire shapes, pure (runtime/a2a.py, a2a_v1.py): the version a request asks for, a 1.0 SendMessage read as
0.3's params, 0.3's Task and stream events spelled in 1.0, and 1.0's error details."""

from __future__ import annotations

import pytest

from agentfleet.runtime.a2a import RpcError, requested_version, send_params
from agentfleet.runtime.a2a_v1 import error_details, event_v1, send_params_in, task_v1


@pytest.mark.parametrize("header, version", [
    (None, "0.3"), ("", "0.3"), ("  ", "0.3"), ("0.3", "0.3"), ("0.3.0", "0.3"), ("1.0", "1.0"),
    ("1.0.1", "1.0"), (" 1.0 ", "1.0"), ("01.0", "1.0"),
], ids=["absent", "empty", "blank", "0.3", "0.3-patch", "1.0", "1.0-patch", "spaces", "leading-zero"])
def test_the_requested_version_is_major_minor_and_none_is_0_3(header, version):
    assert requested_version(header) == version


@pytest.mark.parametrize("header", ["2.0", "1.1", "0.2", "1", "v1.0", "1.0-rc1", "latest"],
                         ids=["2.0", "1.1", "0.2", "major-only", "prefixed", "pre-release", "word"])
def test_any_other_version_is_version_not_supported(header):
    with pytest.raises(RpcError) as err:
        requested_version(header)
    assert err.value.code == -32009 and "A2A-Version: 1.0" in err.value.message
    assert err.value.data == {"supportedVersions": ["1.0", "0.3"]}


def test_a_1_0_send_message_reads_as_0_3s_params():
    params = {"message": {"role": "ROLE_USER", "messageId": "m1", "contextId": "c1",
                          "parts": [{"text": "hi", "metadata": {"k": 1}}, {"data": {"a": 1}}]},
              "configuration": {"returnImmediately": True, "historyLength": 2, "acceptedOutputModes": ["text/plain"]},
              "metadata": {"x": "y"}, "tenant": "ignored"}
    got = send_params(send_params_in(params))
    assert got.message.role == "user" and got.message.message_id == "m1" and got.message.context_id == "c1"
    assert [(p.kind, p.text, p.data, p.metadata) for p in got.message.parts] == [
        ("text", "hi", None, {"k": 1}), ("data", None, {"a": 1}, None)]
    assert got.is_blocking is False and got.configuration.history_length == 2
    assert got.configuration.accepted_output_modes == ["text/plain"] and got.metadata == {"x": "y"}
    assert send_params(send_params_in({"message": params["message"]})).is_blocking is True


@pytest.mark.parametrize("message, code", [
    ({"role": "ROLE_AGENT", "messageId": "m", "parts": [{"text": "x"}]}, -32602),
    ({"role": "user", "messageId": "m", "parts": [{"text": "x"}]}, -32602),
    ({"role": "ROLE_USER", "messageId": "m", "parts": [{"mediaType": "text/plain"}]}, -32602),
    ({"role": "ROLE_USER", "messageId": "m", "parts": [{"raw": "aGk="}]}, -32005),
    ({"role": "ROLE_USER", "parts": [{"text": "x"}]}, -32602),
], ids=["agent-role", "0.3-role", "empty-part", "raw-part", "no-message-id"])
def test_a_1_0_message_that_cannot_start_a_task_gets_its_code(message, code):
    with pytest.raises(RpcError) as err:
        send_params(send_params_in({"message": message}))
    assert err.value.code == code


TASK = {"kind": "task", "id": "run-1", "contextId": "c1",
        "status": {"state": "failed", "timestamp": "2026-01-02T03:04:05.678901Z",
                   "message": {"kind": "message", "role": "agent", "messageId": "run-1-error", "taskId": "run-1",
                               "contextId": "c1", "parts": [{"kind": "text", "text": "no answer"}]}},
        "artifacts": [{"artifactId": "run-1-answer", "name": "answer",
                       "parts": [{"kind": "text", "text": "partial"}, {"kind": "data", "data": {"cost_usd": 0.1}}]}],
        "history": [], "metadata": {"agentfleet": {"steps": 1}}}
TASK_V1 = {"id": "run-1", "contextId": "c1",
           "status": {"state": "TASK_STATE_FAILED", "timestamp": "2026-01-02T03:04:05.678Z",
                      "message": {"messageId": "run-1-error", "taskId": "run-1", "contextId": "c1",
                                  "role": "ROLE_AGENT", "parts": [{"text": "no answer", "mediaType": "text/plain"}]}},
           "artifacts": [{"artifactId": "run-1-answer", "name": "answer",
                          "parts": [{"text": "partial", "mediaType": "text/plain"},
                                    {"data": {"cost_usd": 0.1}, "mediaType": "application/json"}]}],
           "metadata": {"agentfleet": {"steps": 1}}}


def test_a_task_in_1_0_has_enums_parts_by_member_millisecond_times_and_no_empty_history():
    assert task_v1(TASK) == TASK_V1


@pytest.mark.parametrize("event, expected", [
    (TASK, {"task": TASK_V1}),
    ({"kind": "status-update", "taskId": "run-1", "contextId": "c1", "final": True,
      "status": {"state": "completed", "timestamp": "2026-01-02T03:04:05Z"}, "metadata": {"m": 1}},
     {"statusUpdate": {"taskId": "run-1", "contextId": "c1", "metadata": {"m": 1},
                       "status": {"state": "TASK_STATE_COMPLETED", "timestamp": "2026-01-02T03:04:05.000Z"}}}),
    ({"kind": "artifact-update", "taskId": "run-1", "contextId": "c1", "append": False, "lastChunk": True,
      "artifact": {"artifactId": "a", "parts": [{"kind": "text", "text": "x"}]}},
     {"artifactUpdate": {"taskId": "run-1", "contextId": "c1", "append": False, "lastChunk": True,
                         "artifact": {"artifactId": "a", "parts": [{"text": "x", "mediaType": "text/plain"}]}}}),
], ids=["task", "status-update-without-final", "artifact-update"])
def test_a_stream_event_in_1_0_is_wrapped_by_its_kind(event, expected):
    assert event_v1(event) == expected


@pytest.mark.parametrize("err, details", [
    (RpcError(-32001, "task not found"),
     [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "TASK_NOT_FOUND",
       "domain": "a2a-protocol.org", "metadata": {}}]),
    (RpcError(-32000, "over budget", {"code": "budget_exhausted", "httpStatus": 429, "retryAfterSeconds": 60}),
     [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "BUDGET_EXHAUSTED", "domain": "agentfleet.io",
       "metadata": {"code": "budget_exhausted", "httpStatus": "429", "retryAfterSeconds": "60"}}]),
    (RpcError(-32602, "invalid params", {"errors": [{"loc": "message.messageId", "msg": "Field required"}]}),
     [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "INVALID_PARAMS",
       "domain": "a2a-protocol.org", "metadata": {}},
      {"@type": "type.googleapis.com/google.rpc.BadRequest",
       "fieldViolations": [{"field": "message.messageId", "description": "Field required"}]}]),
], ids=["a2a-error", "agentfleet-error", "invalid-fields"])
def test_1_0_error_details_are_google_rpc_objects(err, details):
    assert error_details(err) == details
