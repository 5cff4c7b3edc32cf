"""A ModelFleet with spec.baseUrl is served elsewhere: no engine, no router, Ready as External, and every AgentApp
that uses it calls that URL."""

from __future__ import annotations

import pytest
import yaml

from agentfleet import render, status
from agentfleet.api import parse

API = "agentfleet.io/v1alpha1"
URL = "http://gpu-box.internal:8000/v1"


def fleet(name, **spec):
    return parse({"apiVersion": API, "kind": "ModelFleet", "metadata": {"name": name, "uid": f"uid-{name}"},
                  "spec": {"model": {"uri": "hf://org/m"}, **spec}})


def test_an_external_fleet_renders_nothing_and_is_ready_as_external():
    f = fleet("gpu", baseUrl=URL)
    assert render.modelfleet(f, render.Defaults()) == []
    st = status.modelfleet(f, statefulset=None, router=None, now="2026-01-01T00:00:00Z")
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"], ready["message"]) == ("True", "External", f"served by {URL}")
    assert st["endpoint"] == URL
    assert (st["replicas"], st["readyReplicas"]) == (0, 0)


@pytest.mark.parametrize(("large_spec", "small_spec", "large_url", "small_url"), [
    pytest.param({"baseUrl": URL}, {}, URL, "http://small-router.default.svc:8000/v1", id="large-external"),
    pytest.param({}, {"baseUrl": URL}, "http://large-router.default.svc:8000/v1", URL, id="small-external"),
])
def test_apps_call_the_external_url(large_spec, small_spec, large_url, small_url):
    app = parse({"apiVersion": API, "kind": "AgentApp", "metadata": {"name": "a", "uid": "u"},
                 "spec": {"fleets": {"large": "large", "small": "small"}, "tools": {"builtin": []},
                          "auth": {"apiKeysSecretRef": {"name": "k", "key": "keys.yaml"}}}})
    fleets = {"large": fleet("large", **large_spec), "small": fleet("small", **small_spec)}
    children = render.agentapp(app, render.Defaults(), fleets=fleets, index=None, budget=None)
    cfg = yaml.safe_load(next(c for c in children if c["kind"] == "ConfigMap")["data"]["runtime.yaml"])
    assert cfg["models"]["large"]["url"] == large_url
    assert cfg["models"]["small"]["url"] == small_url


def test_base_url_must_be_http():
    from agentfleet.errors import SpecError

    with pytest.raises(SpecError) as info:
        fleet("gpu", baseUrl="gpu-box:8000")
    assert info.value.problems[0].path == "spec.baseUrl"


def test_the_autoscaler_leaves_an_external_fleet_alone():
    import datetime as dt

    from agentfleet.control.autoscaler import evaluate

    body = {"apiVersion": API, "kind": "ModelFleet", "metadata": {"name": "gpu", "uid": "u1"},
            "spec": {"model": {"uri": "hf://org/m"}, "baseUrl": URL}}
    # Neither the cluster nor Prometheus is touched: None stands in for both and would fail if used.
    assert evaluate(None, None, body, now=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)) is None
