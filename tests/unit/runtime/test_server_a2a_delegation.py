"""A sub-agent that is a remote A2A agent, through two real runtimes on real sockets: app A delegates to app B's
`/a2a` with its own (delegating) key and the end user in on-behalf-of headers; B runs the task as that user, in
the key's tenant, with the groups both grant; A's answer carries B's, and A's step records B's task id and cost.
On B, on-behalf-of headers from a key without `delegate: true`, or naming another tenant, are refused (403) on
every authenticated endpoint, without feeding the failed-authentication throttle; on A, every failure of the
remote agent (a refused key, a refused delegation, a timeout) is a sub-agent failure the model reads."""

import asyncio
import json
import time

import pytest
import yaml

from agentfleet.names import A2A_KEYS_DIR_ENV
from agentfleet.retrieval.filters import Principal
from agentfleet.runtime.server import RUNS_KEY
from runtime_kit import ALICE, FRANK, KEYS, action, final, make_config, scripted, serve

A_AT_B = "key-app-a-delegates"  # app A's key in B's key store
PLAIN_AT_B = "key-app-c-plain-001"  # a key of B's store that may not delegate
B_KEYS = {**KEYS, A_AT_B: {"user": "app-a", "tenant": "acme", "groups": ["eng", "all"], "delegate": True},
          PLAIN_AT_B: {"user": "app-c", "tenant": "acme", "groups": ["eng", "all"]}}
B_ANSWER = "Team B found that the answer is 42."
TASK = "What is the answer, according to team B?"


def obo(user: str, tenant: str, groups: str) -> dict[str, str]:
    return {"X-Agentfleet-On-Behalf-Of-User": user, "X-Agentfleet-On-Behalf-Of-Tenant": tenant,
            "X-Agentfleet-On-Behalf-Of-Groups": groups}


def b_model(delay_s: float = 0.0):
    async def reply(body, headers):
        if delay_s:
            await asyncio.sleep(delay_s)
        return B_ANSWER if body.get("response_format") is None else final(B_ANSWER)
    return reply


def a_model(body, headers):
    msgs = body["messages"]
    if body.get("response_format") is None:  # the answer step: relay what the tools returned
        return "A relays: " + msgs[0]["content"].split("Results of the tools you called:\n", 1)[1]
    if any(m["role"] == "tool" for m in msgs):
        return final("done")
    return action("delegate", calls=[{"agent": "team_b", "task": TASK}])


def a2a_app(b_url: str, **limits) -> dict:
    return {"subAgents": [{"name": "team_b", "description": "Team B's agent.",
                           "a2a": {"url": b_url + "/a2a", "keySecretRef": {"name": "b-key", "key": "key"}}}],
            "limits": {"maxSteps": 6, "maxTokens": 4000, "deadlineSeconds": 20, "toolTimeoutSeconds": 5, **limits}}


def b_config(tmp_path, url):
    (tmp_path / "b").mkdir()
    cfg = make_config(tmp_path / "b", large_url=url)
    (tmp_path / "b" / "keys.yaml").write_text(yaml.safe_dump(B_KEYS))  # read when B starts
    return cfg


@pytest.fixture
def a_key(tmp_path, monkeypatch):
    """Where A's runtime finds its key for team_b (the Secret render mounts), set to `key`."""
    def put(key: str) -> None:
        path = tmp_path / "a2a-keys" / "team_b" / "key"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(key + "\n")
    monkeypatch.setenv(A2A_KEYS_DIR_ENV, str(tmp_path / "a2a-keys"))
    return put


def test_a_delegates_to_b_as_the_end_user_narrowed_to_the_keys_grant(tmp_path, a_key):
    a_key(A_AT_B)

    async def go():
        async with scripted(b_model()) as mb, serve(b_config(tmp_path, mb.url), tmp_path / "b") as b:
            (tmp_path / "a").mkdir()
            async with scripted(a_model) as ma, \
                    serve(make_config(tmp_path / "a", large_url=ma.url, app=a2a_app(b.url)), tmp_path / "a") as a:
                run = await a.run_to_end("Ask team B.", key=FRANK)
                remote = run["steps"][0]["sub_agents"][0]["steps"][0]["remote"]
                record = await asyncio.to_thread(b.runner.app[RUNS_KEY].store.get, remote["task_id"], None,
                                                 now_s=time.time())
                # B's /v1 answers the same principal, whichever endpoint: A's key acting for frank reads it ...
                async with b.session.get(f"{b.url}/v1/runs/{remote['task_id']}", headers={
                        "Authorization": f"Bearer {A_AT_B}", **obo("frank", "acme", "finance,all")}) as r:
                    as_delegate = r.status, await r.json()
                # ... frank's own key at B is a wider principal (finance too): not the owner of that run
                frank_direct, _ = await b.get(f"/v1/runs/{remote['task_id']}", key=FRANK)
                return run, remote, record, as_delegate, frank_direct, mb.requests

    run, remote, record, as_delegate, frank_direct, b_requests = asyncio.run(go())
    assert run["status"] == "completed"
    assert B_ANSWER in run["answer"] and run["answer"].startswith("A relays: delegate: team_b: ")
    sub = run["steps"][0]["sub_agents"][0]
    assert (sub["agent"], sub["stop_reason"], sub["answer"]) == ("team_b", "answered", B_ANSWER)
    step = sub["steps"][0]
    assert (step["kind"], step["role"], step["error"], step["cost_usd"]) == ("a2a", "none", None, 0.0)
    assert remote["state"] == "completed" and remote["url"].endswith("/a2a")
    assert isinstance(remote["cost_usd"], float) and remote["usage"]["total_tokens"] > 0
    # B ran it as frank, in the key's tenant, with frank's groups that the key also holds ({finance, all} ∩
    # {eng, all}), and was asked the delegated task
    assert record.principal == Principal("acme", ("all",), user="frank") and record.kind == "a2a"
    assert record.extra["message"]["messageId"] == f"{run['agentfleet']['task_id']}-1-0-team_b"
    assert any(TASK in json.dumps(body["messages"]) for body, _ in b_requests)
    assert as_delegate[0] == 200 and as_delegate[1]["answer"] == B_ANSWER
    assert frank_direct == 404


def test_b_refuses_on_behalf_of_headers_outside_a_keys_grant(tmp_path):
    send = {"jsonrpc": "2.0", "id": 1, "method": "message/send", "params": {"message": {
        "kind": "message", "role": "user", "messageId": "m-1", "parts": [{"kind": "text", "text": "hi"}]}}}

    async def go():
        async with scripted(b_model()) as mb, serve(b_config(tmp_path, mb.url), tmp_path / "b") as b:
            out = {}
            for name, key, headers in [
                ("plain-key", PLAIN_AT_B, obo("frank", "acme", "all")),
                ("user-key", ALICE, obo("frank", "acme", "all")),
                ("other-tenant", A_AT_B, obo("gina", "globex", "all")),
                ("no-user", A_AT_B, obo("", "acme", "all")),
            ]:
                out[name] = await b.post("/a2a", send, key, headers=headers)
                async with b.session.get(f"{b.url}/v1/models", headers={"Authorization": f"Bearer {key}",
                                                                         **headers}) as r:
                    out[name + "/models"] = r.status
            # Twelve refusals from this address (over the 10 per key prefix) throttle nothing: the key is valid.
            for _ in range(12):
                await b.post("/a2a", send, A_AT_B, headers=obo("gina", "globex", "all"))
            out["after"] = await b.post("/a2a", {**send, "id": 2}, A_AT_B, headers=obo("frank", "acme", "all"))
            out["metrics"] = b.runtime.metrics.exposition().decode()
            return out

    out = asyncio.run(go())
    for name in ("plain-key", "user-key", "other-tenant", "no-user"):
        status, body = out[name]
        assert status == 403 and body["error"]["code"] == "delegation_refused", (name, body)
        assert out[name + "/models"] == 403, name
        assert "globex" not in body["error"]["message"]
    assert "may not act on behalf of another user" in out["plain-key"][1]["error"]["message"]
    assert "own tenant" in out["other-tenant"][1]["error"]["message"]
    status, body = out["after"]
    assert status == 200 and body["result"]["status"]["state"] == "completed", body
    assert 'agentfleet_runtime_auth_failures_total{reason="delegation_refused"}' in out["metrics"]


@pytest.mark.parametrize("key, limits, b_delay_s, error", [
    ("key-not-in-bs-store", {}, 0.0, "team_b: the remote agent refused this app's API key (401)"),
    (PLAIN_AT_B, {}, 0.0, "team_b: the remote agent refused to act for this user (403)"),
    (A_AT_B, {"toolTimeoutSeconds": 1}, 3.0, "team_b: the remote agent did not answer within 1s"),
], ids=["unknown-key", "key-may-not-delegate", "timeout"])
def test_a_remote_failure_is_a_sub_agent_failure_the_model_reads(tmp_path, a_key, key, limits, b_delay_s, error):
    a_key(key)

    async def go():
        async with scripted(b_model(b_delay_s)) as mb, serve(b_config(tmp_path, mb.url), tmp_path / "b") as b:
            (tmp_path / "a").mkdir()
            async with scripted(a_model) as ma:
                cfg = make_config(tmp_path / "a", large_url=ma.url, app=a2a_app(b.url, **limits))
                async with serve(cfg, tmp_path / "a") as a:
                    return await a.run_to_end("Ask team B.", key=FRANK)

    run = asyncio.run(go())
    assert run["status"] == "completed"  # the task goes on: the model read the failure
    sub = run["steps"][0]["sub_agents"][0]
    assert sub["stop_reason"] == "remote_error" and sub["detail"].startswith(error), sub
    assert sub["steps"][0]["error"].startswith(error)
    assert key not in json.dumps(run)  # the key is never in a message
    assert "remote_error" in run["answer"]  # what A's model was shown
