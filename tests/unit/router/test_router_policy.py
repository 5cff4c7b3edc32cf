"""choose(): affinity by session then prefix with bounded load, least-loaded fallback, round-robin, health and
drain."""

from __future__ import annotations

import pytest

from agentfleet.router.hashing import Ring
from agentfleet.router.keys import RequestKey
from agentfleet.router.policy import ReplicaView, choose, load_score

NAMES = ("a", "b", "c")
RING = Ring(NAMES)


def views(**over):
    """Replicas a, b, c, idle and healthy; keyword `b={"in_flight": 3}` overrides one."""
    return [ReplicaView(n, **over.get(n, {})) for n in NAMES]


def home(key: str) -> str:
    return RING.lookup(key, loads={}, eligible=set(NAMES), factor=1.25)


S = RequestKey(session="task-1", prefix="p1")
P = RequestKey(prefix="p1")
NONE = RequestKey()
EMB = RequestKey(prefix=None, is_cacheable=False)


@pytest.mark.parametrize(("key", "policy", "replicas", "expected", "reason"), [
    pytest.param(S, "prefix-aware", views(), home("s:task-1"), "session", id="session-goes-home"),
    pytest.param(P, "prefix-aware", views(), home("p:p1"), "prefix", id="prefix-goes-home"),
    pytest.param(P, "session", views(), "a", "least-loaded", id="session-policy-ignores-prefix"),
    pytest.param(NONE, "prefix-aware", views(a={"in_flight": 2}, c={"in_flight": 1}), "b", "least-loaded",
                 id="no-key-least-loaded"),
    pytest.param(EMB, "prefix-aware", views(a={"waiting": 3.0}), "b", "least-loaded",
                 id="embeddings-least-loaded"),
    pytest.param(P, "least-load", views(a={"running": 5.0}, b={"kv_cache_usage": 0.9}), "c", "least-loaded",
                 id="least-load-uses-metrics"),
    pytest.param(P, "round-robin", views(), "a", "round-robin", id="round-robin-first"),
])
def test_choose(key, policy, replicas, expected, reason):
    choice = choose(key, replicas, policy=policy, ring=RING, load_bound_factor=1.25, rr_index=0)
    assert (choice.replica, choice.reason) == (expected, reason)


def test_round_robin_cycles():
    picks = [choose(NONE, views(), policy="round-robin", ring=RING, load_bound_factor=1.25, rr_index=i).replica
             for i in range(6)]
    assert picks == ["a", "b", "c", "a", "b", "c"]


@pytest.mark.parametrize("flag", [pytest.param({"is_healthy": False}, id="unhealthy"),
                                  pytest.param({"is_draining": True}, id="draining")])
def test_out_of_service_home_moves_session(flag):
    h = home("s:task-1")
    choice = choose(S, views(**{h: flag}), policy="prefix-aware", ring=RING, load_bound_factor=1.25)
    assert choice.replica != h and choice.reason == "session"


def test_overloaded_home_passes_on():
    h = home("s:task-1")
    choice = choose(S, views(**{h: {"in_flight": 10}}), policy="prefix-aware", ring=RING, load_bound_factor=1.25)
    assert choice.replica != h


def test_retry_excludes_tried():
    h = home("s:task-1")
    choice = choose(S, views(), policy="prefix-aware", ring=RING, load_bound_factor=1.25, exclude={h})
    assert choice.replica != h


def test_nothing_live_is_none():
    assert choose(S, views(a={"is_healthy": False}, b={"is_draining": True}), policy="prefix-aware", ring=RING,
                  load_bound_factor=1.25, exclude={"c"}) is None


@pytest.mark.parametrize(("replica", "score"), [
    pytest.param(ReplicaView("x"), 0.0, id="idle"),
    pytest.param(ReplicaView("x", in_flight=3), 3.0, id="own-in-flight"),
    pytest.param(ReplicaView("x", in_flight=1, running=4.0, waiting=2.0, kv_cache_usage=0.5), 8.5,
                 id="metrics-dominate-and-queue-weighs-double"),
])
def test_load_score(replica, score):
    assert load_score(replica) == score


# -- placed keys: a session keeps the replica holding its history; new keys are spread by live keys ---------------
OTHER = next(n for n in NAMES if n != home("s:task-1"))


@pytest.mark.parametrize(("home_view", "expected_home", "is_pass"), [
    pytest.param({}, True, False, id="idle-home-keeps-its-session"),
    pytest.param({"in_flight": 10, "waiting": 0.0, "running": 10.0}, True, False,
                 id="overloaded-home-that-queues-nothing-keeps-it"),
    pytest.param({"in_flight": 10, "waiting": 3.0, "running": 8.0}, True, False,
                 id="overloaded-home-with-less-than-a-batch-queued-keeps-it"),
    pytest.param({"in_flight": 16, "waiting": 8.0, "running": 8.0}, False, True,
                 id="overloaded-home-with-a-full-batch-queued-passes-it-on"),
    pytest.param({"in_flight": 10}, False, True, id="overloaded-home-without-metrics-passes-it-on"),
    pytest.param({"in_flight": 1, "waiting": 9.0, "running": 1.0}, True, False, id="home-under-the-bound-keeps-it"),
    pytest.param({"is_healthy": False}, False, False, id="unhealthy-home-moves-it"),
])
def test_placed_key_stays_home_unless_queue_is_deep(home_view, expected_home, is_pass):
    # The session's home is not where it hashes: stickiness follows the table, not the ring.
    choice = choose(S, views(**{OTHER: home_view}), policy="session", ring=RING, load_bound_factor=1.25,
                    home=OTHER)
    assert (choice.replica == OTHER, choice.reason, choice.is_load_bound_pass) == (expected_home, "session", is_pass)


def test_new_key_is_placed_by_live_keys():
    h = home("s:task-1")
    placed = {n: 0 for n in NAMES} | {h: 5}
    choice = choose(S, views(), policy="session", ring=RING, load_bound_factor=1.25, placed=placed)
    assert choice.replica != h and choice.is_load_bound_pass
    assert choose(S, views(), policy="session", ring=RING, load_bound_factor=1.25,
                  placed={n: 0 for n in NAMES}) == choose(S, views(), policy="session", ring=RING,
                                                          load_bound_factor=1.25)


def test_home_gone_from_the_fleet_is_placed_again():
    choice = choose(S, views(), policy="session", ring=RING, load_bound_factor=1.25, home="removed")
    assert (choice.replica, choice.is_load_bound_pass) == (home("s:task-1"), False)


# -- placement="shared": the key, the ring and the engines' scraped load, nothing one router keeps -------------

def _shared(key, replicas, **kw):
    return choose(key, replicas, policy="prefix-aware", ring=RING, load_bound_factor=1.25, placement="shared", **kw)


def test_shared_placement_ignores_what_one_router_keeps():
    """Two routers: one carries in-flight requests and remembers another home and a full key table, the other
    knows nothing. Local placement sends the session to different engines; shared sends both to the same one."""
    first = home("s:task-1")
    other = next(n for n in NAMES if n != first)
    busy = views(**{first: {"in_flight": 9}})
    local_busy = choose(S, busy, policy="prefix-aware", ring=RING, load_bound_factor=1.25,
                        placed={first: 9}, home=None)
    local_idle = choose(S, views(), policy="prefix-aware", ring=RING, load_bound_factor=1.25, placed={})
    assert local_busy.replica != local_idle.replica  # the disagreement the shared placement removes
    a = _shared(S, busy, placed={first: 9}, home=other)
    b = _shared(S, views())
    assert a == b == choose(S, views(), policy="prefix-aware", ring=RING, load_bound_factor=1.25,
                            placement="shared")
    assert a.replica == first and not a.is_load_bound_pass


@pytest.mark.parametrize("load", [
    pytest.param({"running": 8.0, "waiting": 8.0}, id="full-batch-queued"),
    pytest.param({"running": 8.0, "waiting": 2.0, "in_flight": 30}, id="busy-here"),
])
def test_shared_placement_never_moves_for_load(load):
    """No load enters it: a replica crossing a load threshold back and forth would move its sessions with it
    (each move a re-prefill of the history), and two routers reading it a scrape apart would disagree."""
    first = home("s:task-1")
    c = _shared(S, views(**{first: load}))
    assert c.replica == first and not c.is_load_bound_pass


def test_shared_placement_skips_out_of_service_in_ring_order():
    order = list(RING.walk("s:task-1"))
    c = _shared(S, views(**{order[0]: {"is_draining": True}}))
    assert c.replica == order[1]
    assert _shared(S, views(), exclude={order[0], order[1]}).replica == order[2]
