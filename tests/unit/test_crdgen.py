"""CRD generation: structural schemas, CEL from the models' rules, subresources, columns, and crds/ is fresh."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from agentfleet import crdgen
from agentfleet.api import KINDS

ROOT = Path(__file__).resolve().parents[2]


def walk(node, path="$"):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


@pytest.mark.parametrize("kind", list(KINDS))
def test_committed_crds_match_the_models(kind):
    name = crdgen.file_name(KINDS[kind])
    committed = (ROOT / "crds" / name).read_text()
    assert committed == crdgen.dump(crdgen.crd(KINDS[kind])), \
        f"crds/{name} is stale: run `agentfleet crds --out crds` and commit"


@pytest.mark.parametrize("kind", list(KINDS))
def test_schema_is_structural(kind):
    schema = crdgen.crd(KINDS[kind])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        if not isinstance(node, dict):
            continue
        assert "$ref" not in node, path
        assert "anyOf" not in node, path
        assert "allOf" not in node, path
        assert node.get("additionalProperties") is not False, path
        assert not ("properties" in node and "additionalProperties" in node), path
        if "properties" in node or "items" in node or "additionalProperties" in node:
            assert "type" in node, f"{path} has no type"
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            if key in node:
                assert isinstance(node[key], bool), path
        if "default" in node:
            assert node["default"] is not None, path


def test_no_titles_and_json_serialisable():
    for model in KINDS.values():
        schema = crdgen.crd(model)
        assert '"title"' not in json.dumps(schema)


def rules(kind):
    schema = crdgen.crd(KINDS[kind])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return [r for _, n in walk(schema) if isinstance(n, dict) for r in n.get("x-kubernetes-validations", [])]


@pytest.mark.parametrize(("kind", "rule", "field_path"), [
    ("ModelFleet", "self.minReplicas <= self.maxReplicas", ".minReplicas"),
    ("ModelFleet", "!has(self.gpu.count) || self.gpu.count >= (has(self.parallelism.tensor) ? "
                   "self.parallelism.tensor : self.tensorParallelSize) * self.parallelism.pipeline", ".gpu.count"),
    ("ModelFleet", "self.metadata.name.size() <= 40", None),
    ("VectorIndex", "self.overlapTokens < self.sizeTokens", ".overlapTokens"),
    ("AgentApp", "self.replicas <= 1 || self.ledger.backend == 'redis'", ".replicas"),
    ("AgentApp", "self.backend != 'redis' || has(self.redisUrlSecretRef) || has(self.redisUrl)",
     ".redisUrlSecretRef"),
    ("Budget", "has(self.tokens) || has(self.costUsd)", None),
    ("AgentApp", "has(self.a2a) || has(self.systemPrompt)", ".systemPrompt"),
    ("AgentApp", "!has(self.a2a) || (!has(self.systemPrompt) && !has(self.tools) && !has(self.modelRole))",
     ".a2a"),
], ids=["fleet-min-max", "fleet-gpu-tp", "name-length", "index-overlap", "app-ledger", "app-redis-url",
        "budget-limits", "sub-agent-prompt", "sub-agent-a2a-exclusive"])
def test_cel_rules_come_from_the_models(kind, rule, field_path):
    found = [r for r in rules(kind) if r["rule"] == rule]
    assert found, rules(kind)
    assert found[0]["message"]
    assert found[0].get("fieldPath") == field_path


def test_defaults_reach_nested_objects():
    spec = crdgen.crd(KINDS["ModelFleet"])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    engine = spec["properties"]["engine"]
    # The fully defaulted object: the API server validates a default against CEL without defaulting inside it.
    assert engine["default"]["enablePrefixCaching"] is True
    assert engine["default"]["tensorParallelSize"] == 1
    assert engine["default"]["gpu"] == {"resourceName": "nvidia.com/gpu"}
    assert engine["properties"]["enablePrefixCaching"]["default"] is True
    assert engine["properties"]["tensorParallelSize"]["minimum"] == 1
    assert spec["properties"]["router"]["properties"]["policy"]["enum"] == [
        "prefix-aware", "session", "least-load", "round-robin"]
    assert "default" not in spec["properties"]["model"]  # required, no default
    assert spec["required"] == ["model"]


def test_conditions_are_a_map_keyed_by_type():
    for model in KINDS.values():
        status = crdgen.crd(model)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        conds = status["properties"]["conditions"]
        assert conds["x-kubernetes-list-type"] == "map"
        assert conds["x-kubernetes-list-map-keys"] == ["type"]
        assert set(conds["items"]["required"]) >= {"type", "status", "reason"}


def test_names_subresources_and_columns():
    fleet = crdgen.crd(KINDS["ModelFleet"])
    names = fleet["spec"]["names"]
    assert names["shortNames"] == ["fleet", "mf"]
    assert names["categories"] == ["agentfleet"]
    version = fleet["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector"}
    cols = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert {"Ready", "Desired", "Model", "TP", "Queue", "Goodput", "Age"} <= set(cols)
    assert cols["Age"]["type"] == "date"
    for kind, short in (("VectorIndex", "vidx"), ("AgentApp", "app"), ("Budget", "bgt")):
        crd = crdgen.crd(KINDS[kind])
        assert short in crd["spec"]["names"]["shortNames"]
        assert crd["spec"]["names"]["categories"] == ["agentfleet"]
        assert "scale" not in crd["spec"]["versions"][0]["subresources"]
        assert crd["spec"]["versions"][0]["subresources"]["status"] == {}


def test_status_fields_written_by_the_operator_are_declared():
    """Undeclared status fields are pruned by the API server; everything status.py writes must be in the schema."""
    import datetime as dt

    from agentfleet import status
    from agentfleet.api import parse

    fleet = parse({"apiVersion": "agentfleet.io/v1alpha1", "kind": "ModelFleet", "metadata": {"name": "f"},
                   "spec": {"model": {"uri": "hf://a/b"}}})
    budget = parse({"apiVersion": "agentfleet.io/v1alpha1", "kind": "Budget", "metadata": {"name": "b"},
                    "spec": {"limits": {"tokens": 10}}})
    written = {
        "ModelFleet": status.modelfleet(fleet, statefulset=None, router=None, now="2026-01-01T00:00:00Z"),
        "Budget": status.budget(budget, now=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)),
    }
    for kind, patch in written.items():
        props = crdgen.crd(KINDS[kind])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
        declared = set(props["status"]["properties"])
        assert set(patch) <= declared, set(patch) - declared


def test_dump_is_yaml_with_a_do_not_edit_header():
    text = crdgen.dump(crdgen.crd(KINDS["Budget"]))
    assert text.startswith("# Generated by `agentfleet crds`")
    assert yaml.safe_load(text)["kind"] == "CustomResourceDefinition"
