"""The API models: what parses, what is rejected, and how the rejection names the field."""

from __future__ import annotations

import copy

import pytest

from agentfleet.api import KINDS, AgentApp, Budget, ModelFleet, VectorIndex, parse
from agentfleet.errors import SpecError

FLEET = {"apiVersion": "agentfleet.io/v1alpha1", "kind": "ModelFleet", "metadata": {"name": "llama"},
         "spec": {"model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct"}}}
INDEX = {"apiVersion": "agentfleet.io/v1alpha1", "kind": "VectorIndex", "metadata": {"name": "docs"},
         "spec": {"source": {"configMap": {"name": "corpus"}}}}
APP = {"apiVersion": "agentfleet.io/v1alpha1", "kind": "AgentApp", "metadata": {"name": "assistant"},
       "spec": {"fleets": {"large": "llama"}, "index": {"name": "docs"},
                "auth": {"apiKeysSecretRef": {"name": "keys", "key": "keys.yaml"}}}}
BUDGET = {"apiVersion": "agentfleet.io/v1alpha1", "kind": "Budget", "metadata": {"name": "b"},
          "spec": {"limits": {"costUsd": 5}}}


def with_(doc, path: str, value):
    """A copy of doc with the dotted path set (value None deletes it)."""
    out = copy.deepcopy(doc)
    cur = out
    parts = path.split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    if value is None:
        cur.pop(parts[-1], None)
    else:
        cur[parts[-1]] = value
    return out


def test_minimal_documents_parse_with_defaults():
    fleet = parse(FLEET)
    assert isinstance(fleet, ModelFleet)
    assert fleet.spec.engine.tensor_parallel_size == 1
    assert fleet.spec.engine.enable_prefix_caching is True
    assert fleet.spec.router.policy == "prefix-aware"
    assert fleet.served_model_name == "llama"
    assert fleet.gpus_per_replica == 1
    assert fleet.namespace == "default"
    index = parse(INDEX)
    assert isinstance(index, VectorIndex)
    assert index.collection == "docs"
    assert index.spec.milvus.mode == "embedded"
    assert index.spec.access.allow_public is False
    app = parse(APP)
    assert isinstance(app, AgentApp)
    assert app.fleet_names == ["llama"]
    assert app.spec.ledger.backend == "sqlite"
    budget = parse(BUDGET)
    assert isinstance(budget, Budget)
    assert budget.spec.on_exhausted == "reject"


def test_every_kind_is_registered():
    assert set(KINDS) == {"ModelFleet", "VectorIndex", "AgentApp", "Budget"}


INVALID = [
    ("bad-enum", with_(FLEET, "spec.router.policy", "random"), "spec.router.policy", "Input should be"),
    ("min-gt-max", with_(FLEET, "spec.autoscaling", {"minReplicas": 5, "maxReplicas": 3}),
     "spec.autoscaling.minReplicas", "minReplicas must be less than or equal to maxReplicas"),
    ("gpu-below-tp", with_(FLEET, "spec.engine", {"tensorParallelSize": 4, "gpu": {"count": 2}}),
     "spec.engine.gpu.count", "at least tensorParallelSize"),
    ("tp-too-large", with_(FLEET, "spec.engine.tensorParallelSize", 32), "spec.engine.tensorParallelSize",
     "less than or equal to 16"),
    ("missing-model", with_(FLEET, "spec.model", None), "spec.model", "required field is missing"),
    ("bad-uri", with_(FLEET, "spec.model.uri", "ftp://x"), "spec.model.uri", "should match pattern"),
    ("unknown-field", with_(FLEET, "spec.replicaz", 3), "spec.replicaz", "unknown field"),
    ("bad-name", with_(FLEET, "metadata.name", "Llama_3"), "metadata.name", "should match pattern"),
    ("long-name", with_(FLEET, "metadata.name", "a" * 41), "metadata.name", "at most 40 characters"),
    ("two-sources", with_(INDEX, "spec.source.url", "s3://bucket/docs"), "spec.source",
     "exactly one of configMap, persistentVolumeClaim or url"),
    ("no-source", with_(INDEX, "spec.source", {}), "spec.source", "exactly one of"),
    ("overlap-ge-size", with_(INDEX, "spec.chunking", {"sizeTokens": 64, "overlapTokens": 64}),
     "spec.chunking.overlapTokens", "smaller than sizeTokens"),
    ("external-without-uri", with_(INDEX, "spec.milvus", {"mode": "external"}), "spec.milvus.uri",
     "uri is required"),
    ("replicas-on-sqlite", with_(APP, "spec.replicas", 3), "spec.replicas", "ledger.backend redis"),
    ("redis-without-url", with_(APP, "spec.ledger", {"backend": "redis"}), "spec.ledger.redisUrlSecretRef",
     "backend redis needs redisUrlSecretRef"),
    ("redis-url-twice", with_(APP, "spec.ledger", {"backend": "redis", "redisUrl": "redis://r:6379",
                                                   "redisUrlSecretRef": {"name": "redis", "key": "url"}}),
     "spec.ledger.redisUrl", "set one of redisUrl and redisUrlSecretRef"),
    ("ledger-size-not-a-quantity", with_(APP, "spec.ledger", {"storage": {"size": "lots"}}),
     "spec.ledger.storage.size", "should match pattern"),
    ("retrieve-without-index", with_(APP, "spec.index", None), "spec.index", "the retrieve tool needs an index"),
    ("sub-agent-without-prompt", with_(APP, "spec.subAgents", [{"name": "r", "description": "d"}]),
     "spec.subAgents[0].systemPrompt", "a local sub-agent needs systemPrompt"),
    *[(f"a2a-sub-agent-with-{field}", with_(APP, "spec.subAgents", [{
        "name": "r", "description": "d", field: value,
        "a2a": {"url": "http://b.team-b:8080/a2a", "keySecretRef": {"name": "b-key", "key": "key"}}}]),
       "spec.subAgents[0].a2a", "an a2a sub-agent runs remotely") for field, value in (
        ("systemPrompt", "x"), ("tools", []), ("modelRole", "small"))],
    ("a2a-url-not-http", with_(APP, "spec.subAgents", [{"name": "r", "description": "d", "a2a": {
        "url": "grpc://b:50051", "keySecretRef": {"name": "b-key", "key": "key"}}}]),
     "spec.subAgents[0].a2a.url", "should match pattern"),
    ("missing-auth", with_(APP, "spec.auth", None), "spec.auth", "required field is missing"),
    ("bad-tool", with_(APP, "spec.tools", {"builtin": ["shell"]}), "spec.tools.builtin[0]", "'shell'"),
    ("negative-budget", with_(BUDGET, "spec.limits.costUsd", -1), "spec.limits.costUsd",
     "greater than or equal to 0"),
    ("empty-limits", with_(BUDGET, "spec.limits", {}), "spec.limits", "at least one of tokens and costUsd"),
    ("bad-window", with_(BUDGET, "spec.window", "fortnight"), "spec.window", "'fortnight'"),
    ("degrade-by-priority-alone-past-the-limit", with_(with_(BUDGET, "spec.onExhausted", "degrade"),
                                                      "spec.degradeBy", "low-priority"),
     "spec", "set degradeBy to small-model or both"),
    ("unknown-kind", with_(BUDGET, "kind", "Bogus"), "kind", "unknown kind"),
]


@pytest.mark.parametrize(("doc", "path", "message"), [row[1:] for row in INVALID], ids=[row[0] for row in INVALID])
def test_invalid_documents_name_the_field(doc, path, message):
    with pytest.raises(SpecError) as info:
        parse(doc)
    problems = info.value.problems
    assert any(p.path == path and message in p.message for p in problems), problems
    assert str(info.value).startswith(f"{doc['kind']} default/")


def test_a_document_with_several_problems_reports_each():
    doc = with_(with_(FLEET, "spec.router.policy", "random"), "spec.engine.tensorParallelSize", 0)
    with pytest.raises(SpecError) as info:
        parse(doc)
    assert {p.path for p in info.value.problems} == {"spec.router.policy", "spec.engine.tensorParallelSize"}


@pytest.mark.parametrize(("ledger", "replicas"), [
    pytest.param({"backend": "redis", "redisUrlSecretRef": {"name": "redis", "key": "url"}}, 3, id="redis-secret"),
    pytest.param({"backend": "redis", "redisUrl": "rediss://u:p@redis:6380/0"}, 2, id="redis-url-local-use"),
    pytest.param({"storage": {"size": "2Gi", "storageClassName": "fast"}}, 1, id="sqlite-one-replica-claim"),
])
def test_ledger_specs_that_parse(ledger, replicas):
    app = parse(with_(with_(APP, "spec.ledger", ledger), "spec.replicas", replicas))
    assert app.spec.ledger.wire() == {"backend": "sqlite", "storage": {"size": "1Gi"}, **ledger}


def test_status_tolerates_fields_it_does_not_know():
    doc = with_(FLEET, "status", {"readyReplicas": 2, "fromANewerOperator": True})
    assert parse(doc).status.ready_replicas == 2


def test_wire_form_is_camel_case_and_round_trips():
    fleet = parse(with_(FLEET, "spec.engine.maxNumSeqs", 64))
    wire = fleet.spec.wire()
    assert wire["engine"]["maxNumSeqs"] == 64
    assert "max_num_seqs" not in wire["engine"]
    assert parse({**FLEET, "spec": wire}).spec == fleet.spec


def test_a_sub_agent_is_local_or_a_remote_a2a_agent():
    remote = {"name": "research", "description": "Asks team B.",
              "a2a": {"url": "https://b.team-b:8080/a2a", "keySecretRef": {"name": "b-key", "key": "key"}}}
    local = {"name": "math", "description": "Computes.", "systemPrompt": "Compute."}
    app = parse(with_(APP, "spec.subAgents", [remote, local]))
    got_remote, got_local = app.spec.sub_agents
    assert got_remote.a2a is not None and got_remote.a2a.url == "https://b.team-b:8080/a2a"
    assert got_remote.a2a.key_secret_ref.name == "b-key" and got_remote.local_tools == ()
    assert got_remote.wire() == {**remote, "budgetShare": 0.25}  # spelled a2a on the wire, not a2A
    assert (got_local.a2a, got_local.local_tools, got_local.role) == (None, ("retrieve",), "small")
    assert got_local.wire() == {**local, "budgetShare": 0.25}
