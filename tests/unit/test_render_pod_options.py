"""`spec.pod` on AgentApp and VectorIndex: what platform teams set on every pod (a private registry's pull secret,
a node pool, a priority class, a proxy in the environment, an extra volume) reaches each pod the operator renders
for them — the runtime, the evaluation Jobs, the ingestion and drop Jobs and the embedded Milvus — without
breaking what the operator relies on (its labels, which selectors use, and its restricted securityContext)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from agentfleet import render
from agentfleet.api import parse
from agentfleet.render.vectorindex import drop_job

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agentapp.yaml"

POD = {
    "nodeSelector": {"pool": "cpu"},
    "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}},
    "priorityClassName": "agents-high",
    "imagePullSecrets": [{"name": "regcred"}],
    "labels": {"team": "search", "app.kubernetes.io/name": "not-ours"},
    "annotations": {"sidecar.example/inject": "false"},
    "env": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}, {"name": "HOME", "value": "/work"}],
    "envFrom": [{"configMapRef": {"name": "proxy-env"}}],
    "volumes": [{"name": "ca", "configMap": {"name": "corp-ca"}}],
    "volumeMounts": [{"name": "ca", "mountPath": "/etc/corp-ca", "readOnly": True}],
    "securityContext": {"runAsUser": 20000},
}


def _docs(pod: dict | None) -> list[dict]:
    docs = [d for d in yaml.safe_load_all(open(EXAMPLE)) if d and str(d["apiVersion"]).startswith("agentfleet.io/")]
    for d in docs:
        d["metadata"]["namespace"] = "demo"
        if pod is not None and d["kind"] in ("AgentApp", "VectorIndex"):
            d["spec"]["pod"] = copy.deepcopy(pod)
    return docs


def _templates(pod: dict | None) -> dict[str, dict]:
    objs = [parse(d) for d in _docs(pod)]
    related = {(o.kind, o.name): o for o in objs}
    out = {}
    suite = {"data": {"suite.yaml": "cases: []\n"}}  # the suite ConfigMap exists: the evaluation Job renders
    for o in objs:
        if o.kind not in ("AgentApp", "VectorIndex"):
            continue
        for c in render.render(o, related=related, defaults=render.Defaults(), suite=suite):
            if c["kind"] in ("Deployment", "StatefulSet", "Job"):
                out[f"{c['kind']}/{c['metadata']['name']}"] = c["spec"]["template"]
        if o.kind == "VectorIndex":
            out["Job/drop"] = drop_job(o, render.Defaults())["spec"]["template"]
    return out


def test_every_pod_of_an_app_and_an_index_gets_the_options():
    plain, set_ = _templates(None), _templates(POD)
    kinds = sorted(k.split("/")[0] + ("/eval" if "eval" in k else "") for k in set_)
    assert kinds == ["Deployment", "Job", "Job", "Job/eval", "StatefulSet"], sorted(set_)
    for name, t in set_.items():
        spec, meta = t["spec"], t["metadata"]
        before = next(v for k, v in plain.items() if k.split("-")[0] == name.split("-")[0]) if name not in plain \
            else plain[name]
        assert spec["nodeSelector"]["pool"] == "cpu", name
        assert spec["tolerations"][-1]["key"] == "dedicated", name
        assert spec["affinity"] == POD["affinity"], name
        assert spec["priorityClassName"] == "agents-high", name
        assert {"name": "regcred"} in spec["imagePullSecrets"], name
        assert meta["annotations"]["sidecar.example/inject"] == "false", name
        # ours win on a label: the Deployment's and Service's selectors match the pods whatever the user adds
        assert meta["labels"]["team"] == "search", name
        assert meta["labels"]["app.kubernetes.io/name"] == before["metadata"]["labels"]["app.kubernetes.io/name"]
        assert spec["volumes"][-1] == POD["volumes"][0], name
        assert spec["securityContext"]["runAsUser"] == 20000, name
        for c in spec["containers"]:
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert env["HTTPS_PROXY"] == "http://proxy:3128", name
            assert [e["name"] for e in c["env"]].count("HOME") <= 1, name  # the user's value replaces ours
            if "HOME" in {e["name"] for e in before["spec"]["containers"][0].get("env", [])}:
                assert env["HOME"] == "/work", name
            assert {"configMapRef": {"name": "proxy-env"}} in c["envFrom"], name
            assert c["volumeMounts"][-1] == POD["volumeMounts"][0], name
            # the container's restricted securityContext is not touched by the pod-level overlay
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name


def test_no_options_render_exactly_what_they_did():
    assert _templates(None) == _templates({})


@pytest.mark.parametrize("kind", ["AgentApp", "VectorIndex"])
def test_the_crd_carries_pod_options(kind):
    from agentfleet.api import KINDS
    from agentfleet.crdgen import crd

    schema = crd(KINDS[kind])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    pod = schema["properties"]["spec"]["properties"]["pod"]["properties"]
    assert {"nodeSelector", "tolerations", "imagePullSecrets", "env", "volumes", "securityContext"} <= set(pod)
