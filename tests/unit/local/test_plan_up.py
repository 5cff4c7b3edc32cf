"""`agentfleet up`'s plan: what one machine runs for a YAML file, and the errors that stop it before anything
starts."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from agentfleet.errors import SpecError
from agentfleet.local.plan import plan_up

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
