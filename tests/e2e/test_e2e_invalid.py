"""Invalid resources are refused by the API server at `kubectl apply`, naming the field, and never reach the
operator: it cannot see what was never stored, and its log never mentions them."""

from __future__ import annotations

import uuid

import pytest

from e2e_kit import API, wait_for

pytestmark = pytest.mark.e2e

TAG = uuid.uuid4().hex[:6]  # every name below is unique to this run, so a grep of the operator log is exact


def fleet(name: str, **spec) -> dict:
    return {"apiVersion": API, "kind": "ModelFleet", "metadata": {"name": name},
            "spec": {"model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"}, **spec}}


def budget(name: str, **spec) -> dict:
    return {"apiVersion": API, "kind": "Budget", "metadata": {"name": name},
            "spec": {"limits": {"costUsd": 5}, **spec}}


def app(name: str, **spec) -> dict:
    return {"apiVersion": API, "kind": "AgentApp", "metadata": {"name": name},
            "spec": {"fleets": {"large": "big"}, "auth": {"apiKeysSecretRef": {"name": "k", "key": "k"}},
                     **spec}}


INVALID = [
    # id, document, field named in the error, words of the message
    ("bad-enum", fleet(f"bad-enum-{TAG}", router={"policy": "random"}), "spec.router.policy",
     'Unsupported value: "random"'),
    ("bad-enum-budget-window", budget(f"bad-window-{TAG}", window="fortnight"), "spec.window",
     "Unsupported value"),
    ("min-gt-max", fleet(f"min-gt-max-{TAG}", autoscaling={"minReplicas": 5, "maxReplicas": 3}),
     "spec.autoscaling.minReplicas", "minReplicas must be less than or equal to maxReplicas"),
    ("missing-required", {**fleet(f"no-model-{TAG}"), "spec": {"replicas": 1}}, "spec.model", "Required value"),
    ("missing-required-app", {**app(f"no-fleets-{TAG}"), "spec": {"auth": {
        "apiKeysSecretRef": {"name": "k", "key": "k"}}}}, "spec.fleets", "Required value"),
    ("negative-budget", budget(f"negative-{TAG}", limits={"costUsd": -1}), "spec.limits.costUsd",
     "should be greater than or equal to 0"),
    ("negative-tokens", budget(f"neg-tokens-{TAG}", limits={"tokens": -5}), "spec.limits.tokens",
     "should be greater than or equal to 0"),
    ("degrade-by-priority-alone", budget(f"degrade-by-{TAG}", onExhausted="degrade", degradeBy="low-priority"),
     "spec", "set degradeBy to small-model or both"),
]


@pytest.mark.parametrize(("doc", "field", "message"), [r[1:] for r in INVALID], ids=[r[0] for r in INVALID])
def test_kubectl_apply_rejects_invalid_resources_naming_the_field(ns, operator, doc, field, message):
    out = ns.apply(doc, check=False)
    assert out.returncode != 0, out.stdout
    assert field in out.stderr and message in out.stderr, out.stderr
    assert ns.get(doc["kind"], doc["metadata"]["name"]) is None
    # A valid resource applied after it does reach the operator: once its name shows in the log, the operator
    # has seen everything stored before it, and the rejected one is nowhere in it.
    control = fleet(f"control-{uuid.uuid4().hex[:8]}")
    ns.apply(control)
    wait_for(f"the operator to log {control['metadata']['name']}",
             lambda: operator.mentions(control["metadata"]["name"]), timeout=60)
    assert operator.mentions(doc["metadata"]["name"]) == []
