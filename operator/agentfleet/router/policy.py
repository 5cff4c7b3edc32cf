"""The routing decision, pure: (request key, the replicas as the router sees them, policy) -> Choice. Affinity
(session, then prompt prefix) has two steps. A key the router has not placed yet has no KV cache anywhere, so it
is placed by consistent hashing with bounded loads over the replicas' live affinity keys (or in-flight requests,
whichever is larger): its first request costs the same everywhere, and spreading the keys evenly keeps any one
replica's queue at max_num_seqs short. A key that has a home (the replica that holds its history) stays there
unless the home is out of service, or queues a full batch (by its last scrape: waiting >= running) while it
carries more than `move_bound_factor` times the mean in-flight load: moving
re-prefills the whole history on the new replica, which on the routing bench cost seconds per move where waiting
for a slot cost tens of milliseconds (README, routing). The least-loaded fallback adds the replicas' own vLLM
metrics (queue, running, KV-cache use), which also count other routers' traffic but are a scrape old.

All of that weighs loads only this router sees (its in-flight requests, the keys it placed, the homes it
remembers), so two router replicas in front of one fleet disagree on where a session lives as soon as their
traffic differs: with one replica carrying in-flight requests, half of 1,000 session keys were placed apart.
`placement="shared"` decides from what every router sees alike, so router replicas agree without talking to each
other: a key goes to the first replica in its ring order that is in service. Nothing else: no load enters it. A
first version also passed keys off replicas the engines' scraped numbers showed overloaded; on the routing bench
(64 tasks, two routers) that rule fired 266 times, moved 170 sessions back and forth as replicas crossed it, and
lost more to re-prefills (hit rate 0.895, task p95 52 s) than it gained: consistent hashing, as vllm-router's, did
better (23 s). The AgentApp runtime's calls do not need this: each carries the replica of its session's last call
(router/keys.py, HOME_HEADER), so they are placed by the local counts with any number of routers."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from .hashing import Ring, load_bound
from .keys import RequestKey

__all__ = ["Policy", "POLICIES", "Placement", "PLACEMENTS", "ReplicaView", "Choice", "choose", "load_score",
           "DEFAULT_MOVE_BOUND_FACTOR"]

Policy = Literal["prefix-aware", "session", "least-load", "round-robin"]
POLICIES: tuple[Policy, ...] = ("prefix-aware", "session", "least-load", "round-robin")
Placement = Literal["local", "shared"]
PLACEMENTS: tuple[Placement, ...] = ("local", "shared")
# A placed key leaves its home only above twice the mean in-flight load: a move costs a prefill of its history.
DEFAULT_MOVE_BOUND_FACTOR = 2.0


@dataclass(frozen=True)
class ReplicaView:
    name: str
    in_flight: int = 0
    waiting: float | None = None
    running: float | None = None
    kv_cache_usage: float | None = None
    is_healthy: bool = True
    is_draining: bool = False  # terminating (scale-down): finishes what it has, takes nothing new


@dataclass(frozen=True)
class Choice:
    replica: str
    reason: Literal["session", "prefix", "least-loaded", "round-robin"]
    # The key left the replica it hashed to (at placement) or its home (afterwards) because of the load bound;
    # not set when the replica was out of service or excluded.
    is_load_bound_pass: bool = False


def load_score(r: ReplicaView) -> float:
    """Lower is better. Queued requests weigh double (they wait for a slot); KV-cache use breaks ties."""
    busy = max(float(r.in_flight), (r.running or 0.0) + (r.waiting or 0.0))
    return busy + (r.waiting or 0.0) + (r.kv_cache_usage or 0.0)


def _shared_choice(ring: Ring, ring_key: str, live: Sequence[ReplicaView], reason: Literal["session", "prefix"]
                   ) -> Choice:
    names = {r.name for r in live}
    first = next(n for n in ring.walk(ring_key) if n in names)  # live is never empty here
    return Choice(first, reason)


def choose(key: RequestKey, replicas: Sequence[ReplicaView], *, policy: Policy, ring: Ring,
           load_bound_factor: float, rr_index: int = 0, exclude: Collection[str] = (),
           home: str | None = None, placed: Mapping[str, int] | None = None,
           move_bound_factor: float = DEFAULT_MOVE_BOUND_FACTOR, placement: Placement = "local") -> Choice | None:
    """None when no replica can take the request (all unhealthy, draining or excluded). `home` is where the
    request's affinity key was last served (None when not placed yet); `placed` counts the live affinity keys
    per replica (None: place by in-flight requests alone, as a router without a key table does). With
    `placement="shared"` neither is read: the choice depends on the key, the ring and the scraped loads only."""
    live = [r for r in replicas if r.is_healthy and not r.is_draining and r.name not in exclude]
    if not live:
        return None
    if policy == "round-robin":
        ordered = sorted(live, key=lambda r: r.name)
        return Choice(ordered[rr_index % len(ordered)].name, "round-robin")
    if policy in ("prefix-aware", "session") and key.is_cacheable:
        ring_key, reason = None, None
        if key.session is not None:
            ring_key, reason = "s:" + key.session, "session"
        elif policy == "prefix-aware" and key.prefix is not None:
            ring_key, reason = "p:" + key.prefix, "prefix"
        if ring_key is not None and placement == "shared":
            return _shared_choice(ring, ring_key, live, reason)
        if ring_key is not None:
            in_flight = {r.name: r.in_flight for r in live}
            passed = False
            if home is not None and home in in_flight:
                bound = load_bound(sum(in_flight.values()), len(in_flight), move_bound_factor)
                # A home whose queue is shorter than one full batch keeps its key whatever the bound says: with
                # few requests in flight (the end of a run) the bound is tiny, and on the routing bench each such
                # move re-prefilled a long history and made that task the run's straggler.
                view = next(r for r in live if r.name == home)
                is_queue_deep = view.waiting is None or view.waiting >= max(1.0, view.running or 0.0)
                if in_flight[home] + 1 <= bound or not is_queue_deep:
                    return Choice(home, reason)
                passed = True
            loads = in_flight if placed is None else {n: max(placed.get(n, 0), f) for n, f in in_flight.items()}
            eligible = set(loads) - ({home} if passed and len(loads) > 1 else set())
            hit = ring.lookup(ring_key, loads=loads, eligible=eligible, factor=load_bound_factor)
            if hit is not None:
                first = next(iter(ring.walk(ring_key)), None) if home is None else home
                return Choice(hit, reason, is_load_bound_pass=passed or (hit != first and first in loads))
    # Rotate the starting point so that ties do not all land on the first name.
    n = len(live)
    ordered = sorted(live, key=lambda r: r.name)
    rotated = ordered[rr_index % n:] + ordered[:rr_index % n]
    best = min(rotated, key=load_score)
    return Choice(best.name, "least-loaded")
