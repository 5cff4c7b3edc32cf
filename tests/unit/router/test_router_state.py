"""FleetState: membership, health, session moves, metrics parsing in both vLLM spellings, /metrics output."""

from __future__ import annotations

import pytest

from agentfleet.router.keys import RequestKey
from agentfleet.router.state import FleetState, parse_load, parse_prometheus_text

NEW = """# HELP vllm:num_requests_waiting x
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 3
vllm:num_requests_running{model_name="m",engine="0"} 2
vllm:num_requests_running{model_name="m",engine="1"} 1
vllm:kv_cache_usage_perc{model_name="m"} 0.25
"""
OLD = """vllm:num_requests_waiting 1
vllm:num_requests_running 4
vllm:gpu_cache_usage_perc{model_name="m"} 0.5
vllm:prefix_cache_hits_total 7
"""


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param(NEW, (3.0, 3.0, 0.25), id="new-spelling-summed-over-labels"),
    pytest.param(OLD, (1.0, 4.0, 0.5), id="old-gpu-cache-spelling"),
    pytest.param("", (None, None, None), id="empty"),
    pytest.param("vllm:num_requests_waiting NaN\n", (None, None, None), id="nan-dropped"),
])
def test_parse_load(text, expected):
    assert parse_load(text) == expected


def test_parse_labels_with_spaces():
    assert parse_prometheus_text('m{a="x y"} 2\nm{a="z"} 3 1700000000\n') == {"m": 5.0}


def fleet(policy="prefix-aware"):
    f = FleetState(policy=policy)
    f.set_endpoints({n: f"http://{n}" for n in ("a", "b", "c")})
    return f


def test_session_move_counted_when_home_fails():
    f = fleet()
    key = RequestKey(session="s")
    home = f.pick(key).replica
    assert f.pick(key).replica == home and f.session_moves == 0
    f.failed_before_first_byte(home, is_connection_error=True)
    assert not f.endpoints[home].is_healthy and f.endpoints[home].retries == 1
    assert f.pick(key).replica != home and f.session_moves == 1


def test_membership_keeps_counters_and_rebuilds_ring():
    f = fleet()
    f.started("a")
    ring = f.ring
    f.set_endpoints({"a": "http://a2", "b": "http://b", "c": "http://c"}, draining={"c"})
    assert f.ring is ring and f.endpoints["a"].requests == 1 and f.endpoints["a"].url == "http://a2"
    assert f.endpoints["c"].is_draining
    f.set_endpoints({"a": "http://a2", "d": "http://d"})
    assert set(f.ring.members) == {"a", "d"} and "b" not in f.endpoints


def test_in_flight_and_readiness():
    f = fleet()
    f.started("a")
    f.started("a")
    f.finished("a")
    assert f.endpoints["a"].in_flight == 1
    for n in ("a", "b", "c"):
        f.set_health(n, False)
    assert not f.is_ready() and f.pick(RequestKey()) is None and f.no_replica == 1


def test_metrics_text():
    f = fleet()
    f.started("b")
    f.pick(RequestKey(session="x"))
    text = f.render_metrics()
    assert 'agentfleet_router_requests_total{replica="b"} 1' in text
    assert "agentfleet_router_session_moves_total 0" in text
    assert 'agentfleet_router_choices_total{reason="session"} 1' in text
    assert parse_prometheus_text(text)["agentfleet_router_replica_healthy"] == 3.0
