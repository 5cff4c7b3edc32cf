"""`agentfleet up`'s plan: what one machine runs for a YAML file, the errors that stop it before anything
starts, and the run directory and environment it gives the runtime (a remote A2A sub-agent's key included)."""

from __future__ import annotations

import base64
import copy
import stat
from pathlib import Path

import pytest
import yaml

from agentfleet.errors import SpecError
from agentfleet.local.plan import plan_up
from agentfleet.local.up import runtime_env, write_run_dir
from agentfleet.names import A2A_KEY_FILE, A2A_KEYS_DIR_ENV
from agentfleet.runtime.a2a_client import A2AClient

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = [d for d in yaml.safe_load_all((ROOT / "examples" / "agentapp.yaml").read_text()) if d]
RUN = Path("/run/agentfleet-test")


def doc(docs, kind, name=None):
    return next(d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name))


def test_the_example_runs_on_one_engine_with_every_fleet_name():
    plan = plan_up(EXAMPLE, run_dir=RUN)
    fleets = [d for d in EXAMPLE if d["kind"] == "ModelFleet"]
    served = {d["spec"]["model"].get("servedModelName", d["metadata"]["name"]) for d in fleets}
    assert plan.engine is not None
    assert set(plan.engine.served_names) == served
    assert set(plan.engine.fleets) == {d["metadata"]["name"] for d in fleets}
    assert plan.external == {}
    for role in ("large", "small"):
        assert plan.runtime.models[role].url == "http://127.0.0.1:8001/v1"
    assert plan.index is not None
    assert plan.runtime.index.uri == str(RUN / "index" / f"{plan.index.collection}.db")
    assert plan.runtime.api_keys_file == str(RUN / "keys.yaml")
    keys = yaml.safe_load(plan.keys_yaml)
    assert len(keys) >= 2
    assert plan.runtime.ledger.backend == "sqlite"
    assert plan.runtime.budget is not None
    lines = plan.describe()
    assert any(line.startswith("model server") for line in lines)
    assert any("http://127.0.0.1:8080/v1" in line for line in lines)


def test_a_fleet_with_a_base_url_starts_no_engine_for_it():
    docs = copy.deepcopy(EXAMPLE)
    doc(docs, "ModelFleet", "large")["spec"]["baseUrl"] = "http://gpu.example:8000/v1"
    plan = plan_up(docs, run_dir=RUN)
    assert plan.external == {"large": "http://gpu.example:8000/v1"}
    assert plan.engine.fleets == ("small",)
    assert plan.runtime.models["large"].url == "http://gpu.example:8000/v1"
    assert plan.runtime.models["small"].url == plan.engine.base_url


def test_every_fleet_external_means_no_local_engine():
    docs = copy.deepcopy(EXAMPLE)
    for d in docs:
        if d["kind"] == "ModelFleet":
            d["spec"]["baseUrl"] = "http://gpu.example:8000/v1"
    assert plan_up(docs, run_dir=RUN).engine is None


def _without(kind, name):
    return [d for d in copy.deepcopy(EXAMPLE) if not (d["kind"] == kind and d["metadata"]["name"] == name)]


def _pvc_source():
    docs = copy.deepcopy(EXAMPLE)
    doc(docs, "VectorIndex")["spec"]["source"] = {"persistentVolumeClaim": {"claimName": "corpus"}}
    return docs


ERRORS = [
    ("no-app", [d for d in EXAMPLE if d["kind"] != "AgentApp"], "kind", "expected one AgentApp, found none"),
    ("missing-fleet", _without("ModelFleet", "small"), "spec", "ModelFleet/small"),
    ("missing-keys", _without("Secret", "agentfleet-demo-keys"), "spec.auth.apiKeysSecretRef",
     "must be in the file"),
    ("missing-corpus", _without("ConfigMap", "agentfleet-demo-corpus"), "spec.source.configMap.name",
     "is not in the file"),
    ("pvc-source", _pvc_source(), "spec.source", "need a cluster"),
]


@pytest.mark.parametrize(("docs", "path", "message"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_what_cannot_run_here_is_refused_before_anything_starts(docs, path, message):
    with pytest.raises(SpecError) as info:
        plan_up(docs, run_dir=RUN)
    assert any(p.path == path and message in p.message for p in info.value.problems), info.value


def test_choosing_an_app_by_name():
    with pytest.raises(SpecError) as info:
        plan_up(EXAMPLE, run_dir=RUN, app_name="nope")
    assert "no AgentApp named 'nope'" in str(info.value)
    app = doc(EXAMPLE, "AgentApp")["metadata"]["name"]
    assert plan_up(EXAMPLE, run_dir=RUN, app_name=app).app.name == app


# --- remote A2A sub-agents: this app's key at the remote agent ---------------------------------------------------

KEY_ENV = "AGENTFLEET_A2A_KEY_TEAM_B"


def _with_remote(secret: dict | None = None) -> list:
    """The example plus a remote sub-agent `team-b` whose key is the Secret team-b-key/key (`secret`: its fields,
    None: the Secret is not in the file)."""
    docs = copy.deepcopy(EXAMPLE)
    doc(docs, "AgentApp")["spec"]["subAgents"].append(
        {"name": "team-b", "description": "Team B's agent.",
         "a2a": {"url": "http://team-b.apps:8080/a2a", "keySecretRef": {"name": "team-b-key", "key": "key"}}})
    if secret is not None:
        docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "team-b-key"}, **secret})
    return docs


@pytest.mark.parametrize(("docs", "env", "key"), [
    (_with_remote({"stringData": {"key": "key-of-a-at-b-0001\n"}}), {}, "key-of-a-at-b-0001"),
    (_with_remote({"data": {"key": base64.b64encode(b"key-of-a-at-b-0002").decode()}}), {}, "key-of-a-at-b-0002"),
    (_with_remote(None), {KEY_ENV: "key-of-a-at-b-0003"}, "key-of-a-at-b-0003"),
    (_with_remote({"stringData": {"key": "key-in-the-file"}}), {KEY_ENV: "key-from-env-0004"}, "key-from-env-0004"),
], ids=["secret-stringData", "secret-data-base64", "environment", "environment-over-file"])
def test_a_remote_sub_agents_key_comes_from_its_secret_or_the_environment(docs, env, key):
    plan = plan_up(docs, run_dir=RUN, env=env)
    assert plan.a2a_keys == {"team-b": key}
    assert plan.a2a_keys_dir == RUN / "a2a-keys"
    assert key not in repr(plan)  # a key is never printed with the plan


@pytest.mark.parametrize(("docs", "env", "message"), [
    (_with_remote(None), {}, [
        "sub-agent team-b calls http://team-b.apps:8080/a2a with this app's API key there, the Secret team-b-key "
        "key 'key', which `agentfleet up` cannot find: set the environment variable AGENTFLEET_A2A_KEY_TEAM_B to "
        "the key, or add the Secret team-b-key with stringData.key to the file"]),
    (_with_remote({"stringData": {"other": "x"}}), {}, ["cannot find"]),
    (_with_remote({"data": {"key": "not base64!"}}), {}, ["cannot find"]),
    (_with_remote({"stringData": {"key": "two words"}}), {},
     ["sub-agent team-b: the key in Secret team-b-key key 'key' is empty or not one token"]),
    (_with_remote(None), {KEY_ENV: "  "},
     ["sub-agent team-b: the key in $AGENTFLEET_A2A_KEY_TEAM_B is empty or not one token"]),
], ids=["nowhere", "other-key-of-the-secret", "data-not-base64", "not-one-token", "empty-environment"])
def test_a_missing_remote_key_names_the_secret_and_both_ways_to_give_it(docs, env, message):
    with pytest.raises(SpecError) as info:
        plan_up(docs, run_dir=RUN, env=env)
    [problem] = info.value.problems
    assert problem.path == "spec.subAgents[2].a2a.keySecretRef"
    assert all(m in problem.message for m in message), problem.message


def test_up_writes_each_remote_key_where_the_runtime_reads_it(tmp_path):
    plan = plan_up(_with_remote(None), run_dir=tmp_path / "run", env={KEY_ENV: "key-of-a-at-b-0005"})
    stale = plan.a2a_keys_dir / "removed-agent" / "key"
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    write_run_dir(plan)
    key_file = plan.a2a_keys_dir / "team-b" / A2A_KEY_FILE
    assert key_file.read_text() == "key-of-a-at-b-0005\n"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(plan.a2a_keys_dir.stat().st_mode) == 0o700
    assert not stale.exists()  # a sub-agent no longer in the file leaves no key behind
    env = runtime_env(plan, {"PATH": "/bin"})
    assert env == {"PATH": "/bin", "AGENTFLEET_STATE_DIR": str(plan.run_dir / "state"),
                   A2A_KEYS_DIR_ENV: str(plan.a2a_keys_dir)}
    # The runtime's A2A client finds the key there, as it finds a mounted Secret in a cluster
    assert A2AClient(keys_dir=Path(env[A2A_KEYS_DIR_ENV]))._key("team-b") == "key-of-a-at-b-0005"


def test_an_app_without_remote_sub_agents_gets_no_key_directory(tmp_path):
    plan = plan_up(EXAMPLE, run_dir=tmp_path / "run")
    write_run_dir(plan)
    assert plan.a2a_keys == {} and not plan.a2a_keys_dir.exists()
    assert A2A_KEYS_DIR_ENV not in runtime_env(plan, {})
