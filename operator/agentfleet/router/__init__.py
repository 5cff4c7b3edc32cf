"""The ModelFleet router: a pure choice (session and prompt-prefix affinity by consistent hashing with bounded
loads, least-loaded and round-robin) in hashing/keys/policy/state, and the edges that do I/O: the aiohttp proxy
(proxy.py) and EndpointSlice discovery (discovery.py). Only the pure names are exported here, so importing the
package pulls in no HTTP or Kubernetes client."""

from __future__ import annotations

from .hashing import Ring, key_hash, load_bound
from .keys import RequestKey, request_key
from .policy import POLICIES, Choice, Policy, ReplicaView, choose, load_score
from .state import Endpoint, FleetState, parse_load, parse_prometheus_text

__all__ = [
    "Ring", "key_hash", "load_bound", "RequestKey", "request_key", "POLICIES", "Choice", "Policy", "ReplicaView",
    "choose", "load_score", "Endpoint", "FleetState", "parse_load", "parse_prometheus_text",
]
