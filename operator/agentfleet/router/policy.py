"""The routing decision, pure: (request key, the replicas as the router sees them, policy) -> Choice. Affinity
(session, then prompt prefix) uses consistent hashing with bounded loads over the router's own in-flight counts,
which are exact and current; the least-loaded fallback adds the replicas' own vLLM metrics (queue, running,
KV-cache use), which also count other routers' traffic but are a scrape old."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal

from .hashing import Ring
from .keys import RequestKey

__all__ = ["Policy", "POLICIES", "ReplicaView", "Choice", "choose", "load_score"]

Policy = Literal["prefix-aware", "session", "least-load", "round-robin"]
POLICIES: tuple[Policy, ...] = ("prefix-aware", "session", "least-load", "round-robin")


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


def load_score(r: ReplicaView) -> float:
    """Lower is better. Queued requests weigh double (they wait for a slot); KV-cache use breaks ties."""
    busy = max(float(r.in_flight), (r.running or 0.0) + (r.waiting or 0.0))
    return busy + (r.waiting or 0.0) + (r.kv_cache_usage or 0.0)


def choose(key: RequestKey, replicas: Sequence[ReplicaView], *, policy: Policy, ring: Ring,
           load_bound_factor: float, rr_index: int = 0, exclude: Collection[str] = ()) -> Choice | None:
    """None when no replica can take the request (all unhealthy, draining or excluded)."""
    live = [r for r in replicas if r.is_healthy and not r.is_draining and r.name not in exclude]
    if not live:
        return None
    if policy == "round-robin":
        ordered = sorted(live, key=lambda r: r.name)
        return Choice(ordered[rr_index % len(ordered)].name, "round-robin")
    if policy in ("prefix-aware", "session") and key.is_cacheable:
        loads = {r.name: r.in_flight for r in live}
        eligible = set(loads)
        if key.session is not None:
            hit = ring.lookup("s:" + key.session, loads=loads, eligible=eligible, factor=load_bound_factor)
            if hit is not None:
                return Choice(hit, "session")
        if policy == "prefix-aware" and key.prefix is not None:
            hit = ring.lookup("p:" + key.prefix, loads=loads, eligible=eligible, factor=load_bound_factor)
            if hit is not None:
                return Choice(hit, "prefix")
    # Rotate the starting point so that ties do not all land on the first name.
    n = len(live)
    ordered = sorted(live, key=lambda r: r.name)
    rotated = ordered[rr_index % n:] + ordered[:rr_index % n]
    best = min(rotated, key=load_score)
    return Choice(best.name, "least-loaded")
