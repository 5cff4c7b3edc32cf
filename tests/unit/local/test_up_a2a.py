"""`agentfleet up` with a remote A2A sub-agent, end to end on this machine: app A is planned from YAML whose
sub-agent `team_b` is app B's `/a2a`, its key given only in the environment (AGENTFLEET_A2A_KEY_TEAM_B), and runs
exactly as `agentfleet up` runs it (local.up.run_up in a thread: the run directory, then `agentfleet serve` as a
process); app B is a real runtime on a real socket (runtime_kit). A's run delegates to B with that key, as the end
user, and carries B's answer; with a key B does not know, the same run reports the refused key instead."""

from __future__ import annotations

import asyncio
import copy
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))

from agentfleet.evaluation.target import free_port, local_app  # noqa: E402
from agentfleet.local.plan import plan_up  # noqa: E402
from runtime_kit import KEYS, action, final, make_config, scripted, serve  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = [d for d in yaml.safe_load_all((ROOT / "examples" / "agentapp.yaml").read_text()) if d]
A_AT_B = "key-app-a-delegates"  # app A's key in B's key store
B_KEYS = {**KEYS, A_AT_B: {"user": "app-a", "tenant": "acme", "groups": ["eng", "all"], "delegate": True}}
B_ANSWER = "Team B found that the answer is 42."
A_KEY = "demo-key-alice"  # an end user of A (the example's key store)


def a_model(body, headers):
    if body.get("response_format") is None:
        return "A relays team B."
    if any(m["role"] == "tool" for m in body["messages"]):
        return final("done")
    return action("delegate", calls=[{"agent": "team_b", "task": "What is the answer, according to team B?"}])


def b_model(body, headers):
    return B_ANSWER if body.get("response_format") is None else final(B_ANSWER)


def app_a(model_url: str, b_url: str) -> list:
    """The example app on A's model server, without its index, with one sub-agent: B over A2A (its key's Secret
    is not in the file)."""
    docs = [d for d in copy.deepcopy(EXAMPLE) if d["kind"] not in ("VectorIndex", "ConfigMap")]
    for d in docs:
        if d["kind"] == "ModelFleet":
            d["spec"]["baseUrl"] = model_url
        if d["kind"] == "AgentApp":
            spec = d["spec"]
            spec.pop("index")
            spec["tools"] = {"builtin": ["calculator", "delegate"]}
            spec["subAgents"] = [{"name": "team_b", "description": "Team B's agent.",
                                  "a2a": {"url": b_url + "/a2a", "keySecretRef": {"name": "b-key", "key": "key"}}}]
            spec["limits"] = {"maxSteps": 6, "maxTokens": 4000, "deadlineSeconds": 30, "toolTimeoutSeconds": 20}
    return docs


async def _run(url: str, key: str, deadline_s: float = 60) -> dict:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as http:
        async with http.post(url + "/v1/runs", json={"input": "Ask team B."}) as r:
            assert r.status == 202, await r.text()
            run = await r.json()
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:  # a poll of a condition with a deadline
            async with http.get(f"{url}/v1/runs/{run['id']}") as r:
                got = await r.json()
            if got["status"] not in ("queued", "running"):
                return got
            await asyncio.sleep(0.1)
    raise AssertionError(f"run {run['id']} did not finish within {deadline_s}s")


@pytest.mark.parametrize("key_at_b, answered", [(A_AT_B, True), ("key-b-does-not-know", False)],
                         ids=["known-key", "unknown-key"])
def test_up_gives_a_remote_sub_agent_its_key_from_the_environment(tmp_path, key_at_b, answered):
    async def go():
        async with scripted(b_model) as mb, scripted(a_model) as ma:
            (tmp_path / "b").mkdir()
            cfg = make_config(tmp_path / "b", large_url=mb.url)
            (tmp_path / "b" / "keys.yaml").write_text(yaml.safe_dump(B_KEYS))
            async with serve(cfg, tmp_path / "b") as b:
                plan = plan_up(app_a(ma.url, b.url), run_dir=tmp_path / "a", engine_port=free_port(),
                               runtime_port=free_port(), env={"AGENTFLEET_A2A_KEY_TEAM_B": key_at_b})
                app = local_app(plan, say=lambda line: None)
                a = await asyncio.to_thread(app.__enter__)
                try:
                    return await _run(a.base_url, A_KEY), mb.requests
                finally:
                    await asyncio.to_thread(app.__exit__, None, None, None)

    run, b_requests = asyncio.run(go())
    assert run["status"] == "completed", run
    sub = run["steps"][0]["sub_agents"][0]
    assert sub["agent"] == "team_b"
    if answered:  # B answered A's task, run as alice through A's delegating key
        assert (sub["stop_reason"], sub["answer"]) == ("answered", B_ANSWER)
        assert sub["steps"][0]["remote"]["state"] == "completed" and b_requests
    else:  # B refused the key: a sub-agent failure naming the Secret, and B's model never called
        assert "refused this app's API key (401): check subAgents[].a2a.keySecretRef" in sub["steps"][0]["error"]
        assert b_requests == []
