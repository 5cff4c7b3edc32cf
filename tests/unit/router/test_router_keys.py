"""What a request is routed by: a session header, else a prefix that is stable within a task and differs
between tasks that share a system prompt."""

from __future__ import annotations

import pytest

from agentfleet.router.keys import request_key

SYSTEM = {"role": "system", "content": "you are a careful agent " * 50}


def chat(*messages):
    return {"model": "m", "messages": [SYSTEM, *messages]}


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


TASK_A = user("find the refund policy for order 17 " * 10)
TASK_B = user("summarise the incident report from monday " * 10)


@pytest.mark.parametrize(("headers", "body", "session"), [
    pytest.param({"X-Session-Id": "s1"}, chat(TASK_A), "s1", id="x-session-id"),
    pytest.param({"x-task-id": "t9"}, chat(TASK_A), "t9", id="x-task-id"),
    pytest.param({"X-Session-Affinity": "aff"}, chat(TASK_A), "aff", id="x-session-affinity"),
    pytest.param({"x-dynamo-session-id": "dyn"}, chat(TASK_A), "dyn", id="dynamo"),
    pytest.param({}, {**chat(TASK_A), "session_id": "b2"}, "b2", id="body-session-id"),
    pytest.param({}, chat(TASK_A), None, id="none"),
])
def test_session_id(headers, body, session):
    assert request_key("/v1/chat/completions", headers, body, prefix_tokens=256).session == session


def test_prefix_stable_as_history_grows():
    k1 = request_key("/v1/chat/completions", {}, chat(TASK_A), prefix_tokens=16).prefix
    k2 = request_key("/v1/chat/completions", {}, chat(TASK_A, assistant("x"), user("tool out " * 300)),
                     prefix_tokens=16).prefix
    assert k1 == k2 and k1 is not None


@pytest.mark.parametrize(("a", "b", "same"), [
    pytest.param(chat(TASK_A), chat(TASK_B), False, id="same-system-different-task"),
    pytest.param(chat(user("short")), chat(user("short")), True, id="identical"),
    pytest.param({"messages": [{"role": "system", "content": "a"}, user("q")]},
                 {"messages": [{"role": "system", "content": "b"}, user("q")]}, False, id="different-system"),
    pytest.param(chat(user([{"type": "text", "text": "part one"}])), chat(user("part one")), True,
                 id="content-parts-equal-plain-text"),
])
def test_prefix_discriminates(a, b, same):
    ka = request_key("/v1/chat/completions", {}, a, prefix_tokens=256).prefix
    kb = request_key("/v1/chat/completions", {}, b, prefix_tokens=256).prefix
    assert (ka == kb) is same


@pytest.mark.parametrize(("path", "body", "has_prefix", "cacheable"), [
    pytest.param("/v1/completions", {"prompt": "hello world"}, True, True, id="completions-string"),
    pytest.param("/v1/completions", {"prompt": [[1, 2, 3]]}, True, True, id="completions-token-ids"),
    pytest.param("/v1/embeddings", {"input": "x"}, False, False, id="embeddings-not-cacheable"),
    pytest.param("/v1/models", None, False, False, id="models"),
    pytest.param("/v1/completions", {"n": 1}, False, True, id="no-prompt"),
])
def test_key_by_endpoint(path, body, has_prefix, cacheable):
    key = request_key(path, {}, body, prefix_tokens=8)
    assert (key.prefix is not None) is has_prefix
    assert key.is_cacheable is cacheable


def test_completion_prefix_cut_at_prefix_tokens():
    a = request_key("/v1/completions", {}, {"prompt": "a b c d e f"}, prefix_tokens=3).prefix
    b = request_key("/v1/completions", {}, {"prompt": "a b c x y z"}, prefix_tokens=3).prefix
    assert a == b


@pytest.mark.parametrize(("headers", "is_run"), [
    pytest.param({"x-session-id": "s1", "x-agentfleet-run": "r1"}, True, id="a-runtime-run"),
    pytest.param({"x-agentfleet-run": "r1"}, False, id="no-session-no-run"),
    pytest.param({"x-session-id": "s1"}, False, id="plain-session"),
])
def test_run_header(headers, is_run):
    key = request_key("/v1/chat/completions", headers, chat(TASK_A), prefix_tokens=256)
    assert key.is_run is is_run
    assert key.prefix == request_key("/v1/chat/completions", {}, chat(TASK_A), prefix_tokens=256).prefix
