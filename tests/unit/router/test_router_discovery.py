"""EndpointSlice conditions -> the router's membership: ready takes requests, serving+terminating drains,
anything else is gone. And the static --endpoints list."""

from __future__ import annotations

import pytest

from agentfleet.router.discovery import parse_static, slices_to_endpoints


def ep(name, ip, **cond):
    return {"addresses": [ip], "conditions": cond, "targetRef": {"kind": "Pod", "name": name}}


@pytest.mark.parametrize(("endpoints", "urls", "draining"), [
    pytest.param([ep("f-engine-0", "10.0.0.1", ready=True)], {"f-engine-0": "http://10.0.0.1:8000"}, set(),
                 id="ready"),
    pytest.param([ep("f-engine-1", "10.0.0.2", ready=False, serving=True, terminating=True)],
                 {"f-engine-1": "http://10.0.0.2:8000"}, {"f-engine-1"}, id="terminating-drains"),
    pytest.param([ep("f-engine-2", "10.0.0.3", ready=False, serving=False)], {}, set(), id="not-ready-gone"),
    pytest.param([ep("f-engine-3", "fd00::3", ready=True)], {"f-engine-3": "http://[fd00::3]:8000"}, set(),
                 id="ipv6"),
    pytest.param([{"addresses": [], "conditions": {"ready": True}}], {}, set(), id="no-address"),
])
def test_slices_to_endpoints(endpoints, urls, draining):
    slices = {"s1": {"ports": [{"name": "http", "port": 8000}], "endpoints": endpoints}}
    assert slices_to_endpoints(slices, default_port=9999) == (urls, draining)


@pytest.mark.parametrize(("spec", "expected"), [
    pytest.param("http://a:1,http://b:2/", {"replica-0": "http://a:1", "replica-1": "http://b:2"}, id="bare"),
    pytest.param("x=http://a:1, y=http://b:2", {"x": "http://a:1", "y": "http://b:2"}, id="named"),
])
def test_parse_static(spec, expected):
    assert parse_static(spec) == expected
