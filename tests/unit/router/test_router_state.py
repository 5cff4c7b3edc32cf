"""FleetState: membership, health, session moves, metrics parsing in both vLLM spellings, /metrics output."""

from __future__ import annotations

import pytest

from agentfleet.router.keys import RequestKey
from agentfleet.router.state import FleetState, parse_load, parse_prometheus_text, parse_served

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


def test_sessions_spread_evenly_when_placed_together():
    # 32 tasks start at once on 4 replicas: placement counts live sessions, not only in-flight requests.
    f = FleetState(policy="session", load_bound_factor=1.25)
    f.set_endpoints({n: f"http://{n}" for n in ("a", "b", "c", "d")})
    for i in range(32):
        f.started(f.pick(RequestKey(session=f"task-{i}"), now=0.0).replica)
    assert max(f.live_keys().values()) <= 10 and sum(f.live_keys().values()) == 32


def test_session_stays_home_when_load_drops_at_the_end_of_a_run():
    # The bug measured on the routing bench: with few requests in flight the load bound is tiny, and a long task
    # was moved off its home (re-prefilling its whole history) though the home queued nothing.
    f = fleet("session")
    key = RequestKey(session="long")
    home = f.pick(key, now=0.0).replica
    f.started(home)
    f.set_load(home, 0.0, 1.0, 0.5)
    for t in range(1, 20):
        assert f.pick(key, now=float(t)).replica == home
    assert (f.session_moves, f.load_bound_passes) == (0, 0)


@pytest.mark.parametrize(("idle_s", "live_after"), [
    pytest.param(5.0, {"x": 1}, id="within-key-idle-still-live"),
    pytest.param(121.0, {}, id="after-key-idle-no-longer-counts"),
])
def test_live_keys_expire(idle_s, live_after):
    f = fleet("session")
    home = f.pick(RequestKey(session="s"), now=0.0).replica
    f.pick(RequestKey(), now=idle_s)  # any request expires what is idle
    assert f.live_keys() == {home: v for v in live_after.values()}
    # The home is remembered past key_idle_s: the session still goes back to its history.
    assert f.pick(RequestKey(session="s"), now=idle_s + 100).replica == home


def test_load_bound_pass_counted():
    f = fleet("session")
    key = RequestKey(session="s")
    home = f.pick(key, now=0.0).replica
    for _ in range(10):
        f.started(home)
    f.set_load(home, 8.0, 2.0, 0.9)
    moved = f.pick(key, now=1.0)
    assert moved.replica != home and moved.is_load_bound_pass
    assert (f.session_moves, f.load_bound_passes) == (1, 1)
    assert "agentfleet_router_load_bound_passes_total 1" in f.render_metrics()


@pytest.mark.parametrize(("gap_s", "silent_s", "is_live"), [
    pytest.param(0.5, 0.9, True, id="fast-session-within-the-minimum"),
    pytest.param(0.5, 1.6, False, id="fast-session-ended-after-a-second"),
    pytest.param(20.0, 50.0, True, id="slow-tool-calls-keep-it-live"),
    pytest.param(20.0, 61.0, False, id="slow-session-ended-after-three-gaps"),
    pytest.param(100.0, 119.0, True, id="capped-at-key-idle"),
    pytest.param(100.0, 121.0, False, id="past-key-idle"),
])
def test_live_keys_follow_their_own_pace(gap_s, silent_s, is_live):
    # Ended sessions counted for long placed new ones by stale counts (routing bench, 64 tasks: p95 51 s vs 23 s).
    f = fleet("session")
    home = f.pick(RequestKey(session="s"), now=0.0).replica
    f.pick(RequestKey(session="s"), now=gap_s)
    f.pick(RequestKey(), now=gap_s + silent_s)
    assert f.live_keys() == ({home: 1} if is_live else {})


def test_a_key_waiting_for_its_answer_stays_live_and_its_time_counts_from_the_answer():
    """A request that waits (in the engine's queue or the fair queue) is not silence: its key keeps counting on its
    replica until the answer is done, then for its time to live (3x its pace) after that, so new sessions are not
    placed on a replica whose sessions only look silent because their requests wait."""
    f = fleet("session")
    key = RequestKey(session="s")
    home = f.pick(key, now=0.0).replica
    f.pick(key, now=0.5)  # a pace of 0.5 s: live for 1.5 s after a call
    f.started(home, key)
    f.pick(RequestKey(), now=10.0)  # still unanswered 9.5 s later: waiting, so live
    assert f.live_keys() == {home: 1}
    f.finished(home, key, now=10.0)
    f.pick(RequestKey(), now=11.0)
    assert f.live_keys() == {home: 1}  # 1 s after its answer
    f.pick(RequestKey(), now=11.6)
    assert f.live_keys() == {}  # 1.6 s after it: silent past its time to live
    assert f._busy == {}


def test_finishing_a_request_of_a_released_key_does_not_bring_it_back():
    f = fleet("session")
    key = RequestKey(session="s")
    home = f.pick(key, now=0.0).replica
    f.started(home, key)
    assert f.release(["s"]) == 1
    f.finished(home, key, now=1.0)
    assert f.live_keys() == {} and f._busy == {}


def test_retouched_key_is_not_expired_by_its_older_deadline():
    f = fleet("session")
    home = f.pick(RequestKey(session="s"), now=0.0).replica  # first deadline: 120 s
    for t in range(1, 200, 2):  # every 2 s: live for 6 s after each
        f.pick(RequestKey(session="s"), now=float(t))
    assert f.live_keys() == {home: 1}


def _served(n: float) -> str:
    return f'vllm:request_success_total{{finish_reason="stop"}} {n}\nvllm:request_success_total{{finish_reason="length"}} 1\n'


@pytest.mark.parametrize("how", ["counter-went-back", "counter-gone", "new-address"])
def test_engine_restart_forgets_its_keys(how):
    """An engine that restarted has an empty KV cache: its sessions lose their home (placed again as new keys)
    and it stops counting as full of live keys, at once, not when those keys idle out."""
    f = fleet()
    keys = [RequestKey(session=f"s{i}") for i in range(30)]
    homes = {k.session: f.pick(k, now=0.0).replica for k in keys}
    victim = max(set(homes.values()), key=list(homes.values()).count)
    on_victim = [s for s, h in homes.items() if h == victim]
    f.set_served(victim, parse_served(_served(40)))
    assert f.endpoints[victim].restarts == 0 and f.live_keys()[victim] == len(on_victim)
    if how == "counter-went-back":
        f.set_served(victim, parse_served(_served(2)))
    elif how == "counter-gone":
        f.set_served(victim, parse_served("vllm:num_requests_running 0\n"))
    else:
        f.set_endpoints({n: (f"http://{n}-new" if n == victim else f"http://{n}") for n in ("a", "b", "c")})
    assert f.endpoints[victim].restarts == 1 and f.forgotten_keys == len(on_victim)
    assert f.live_keys().get(victim, 0) == 0
    assert all(f._sessions.get(s) != victim for s in homes)
    assert 'agentfleet_router_replica_restarts_total{replica="%s"} 1' % victim in f.render_metrics()
    # Keys elsewhere keep their homes; a forgotten key is placed again (no move is counted: it had no home).
    moves = f.session_moves
    for k in keys:
        f.pick(k, now=1.0)
    assert f.session_moves == moves
    assert all(f._sessions[s] == h for s, h in homes.items() if h != victim)


def test_a_growing_counter_is_no_restart():
    f = fleet()
    f.pick(RequestKey(session="x"), now=0.0)
    for n in (0, 5, 5, 9):
        f.set_served("a", parse_served(_served(n)))
    assert f.endpoints["a"].restarts == 0 and f.forgotten_keys == 0


def test_a_run_is_held_through_its_tools_and_released_when_it_ends():
    """A session the runtime marks as a run keeps its claim between calls however long its tool runs (pace does
    not apply), and loses claim and home the moment the runtime says the run ended."""
    f = fleet()
    run, plain = RequestKey(session="run-1", is_run=True), RequestKey(session="plain-1")
    for t in (0.0, 0.5, 1.0):  # calls half a second apart: a pace of 0.5 s
        r_home = f.pick(run, now=t).replica
        p_home = f.pick(plain, now=t).replica
    f._expire(30.0)  # a 29 s tool: the plain session (3x its pace) has lapsed, the run has not
    live = f.live_keys()
    assert live.get(r_home, 0) >= 1 and sum(live.values()) == 1
    assert f.release(["run-1", "never-seen"]) == 1 and f.released_keys == 1
    assert f.live_keys() == {} and "run-1" not in f._sessions and f._sessions["plain-1"] == p_home
    assert "agentfleet_router_released_keys_total 1" in f.render_metrics()
