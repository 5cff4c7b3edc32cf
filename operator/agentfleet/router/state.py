"""The router's view of its fleet, in memory and without I/O: endpoints and their health, draining flags,
in-flight counts, the last scraped vLLM load, the hash ring, a bounded session table (to count session moves)
and the counters `/metrics` exposes. The proxy edge mutates it from one event loop, so it needs no locks."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from .. import metrics_names as mn
from .hashing import Ring
from .keys import RequestKey
from .policy import Choice, Policy, ReplicaView, choose

__all__ = ["Endpoint", "FleetState", "parse_load", "parse_prometheus_text"]

SESSION_TABLE_SIZE = 100_000


@dataclass
class Endpoint:
    name: str
    url: str
    is_healthy: bool = True
    is_draining: bool = False
    in_flight: int = 0
    waiting: float | None = None
    running: float | None = None
    kv_cache_usage: float | None = None
    requests: int = 0
    retries: int = 0  # requests that failed here before their first byte and were retried elsewhere
    failures: int = 0
    mid_stream_failures: int = 0  # answers that broke off after the first byte (not retried here: the client's)


def parse_prometheus_text(text: str) -> dict[str, float]:
    """Sum of each metric's samples over its label sets (one vLLM server may label by model or engine)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace, space = line.find("{"), line.find(" ")
        if brace != -1 and (space == -1 or brace < space):
            name, rest = line[:brace], line[line.rfind("}") + 1:]
        elif space > 0:
            name, rest = line[:space], line[space:]
        else:
            continue
        fields = rest.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        if math.isnan(value):
            continue
        out[name] = out.get(name, 0.0) + value
    return out


def parse_load(text: str) -> tuple[float | None, float | None, float | None]:
    """(waiting, running, KV-cache use) from a vLLM /metrics page, in either spelling."""
    s = parse_prometheus_text(text)
    return mn.first_present(s, mn.WAITING), mn.first_present(s, mn.RUNNING), mn.first_present(s, mn.KV_CACHE_USAGE)


@dataclass
class FleetState:
    policy: Policy
    load_bound_factor: float = 1.25
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    ring: Ring = field(default_factory=lambda: Ring(()))
    rr_index: int = 0
    session_moves: int = 0
    choices: dict[str, int] = field(default_factory=dict)
    no_replica: int = 0
    _sessions: OrderedDict[str, str] = field(default_factory=OrderedDict)

    # -- membership -------------------------------------------------------------------------------------
    def set_endpoints(self, urls: Mapping[str, str], draining: frozenset[str] | set[str] = frozenset()) -> None:
        """The whole membership, from EndpointSlices or the static list. Known replicas keep their health and
        counters; the ring is rebuilt only when the set of names changes."""
        for name in list(self.endpoints):
            if name not in urls:
                del self.endpoints[name]
        for name, url in urls.items():
            ep = self.endpoints.get(name)
            if ep is None:
                self.endpoints[name] = Endpoint(name, url)
            else:
                ep.url = url
            self.endpoints[name].is_draining = name in draining
        if set(self.ring.members) != set(self.endpoints):
            self.ring = Ring(self.endpoints)

    def set_health(self, name: str, is_healthy: bool) -> None:
        ep = self.endpoints.get(name)
        if ep is not None:
            ep.is_healthy = is_healthy

    def set_draining(self, name: str, is_draining: bool) -> None:
        ep = self.endpoints.get(name)
        if ep is not None:
            ep.is_draining = is_draining

    def set_load(self, name: str, waiting: float | None, running: float | None, kv: float | None) -> None:
        ep = self.endpoints.get(name)
        if ep is not None:
            ep.waiting, ep.running, ep.kv_cache_usage = waiting, running, kv

    def is_ready(self) -> bool:
        return any(e.is_healthy and not e.is_draining for e in self.endpoints.values())

    # -- the hot path -----------------------------------------------------------------------------------
    def views(self) -> list[ReplicaView]:
        return [ReplicaView(e.name, e.in_flight, e.waiting, e.running, e.kv_cache_usage, e.is_healthy,
                            e.is_draining) for e in self.endpoints.values()]

    def pick(self, key: RequestKey, exclude: frozenset[str] = frozenset()) -> Choice | None:
        choice = choose(key, self.views(), policy=self.policy, ring=self.ring,
                        load_bound_factor=self.load_bound_factor, rr_index=self.rr_index, exclude=exclude)
        self.rr_index += 1
        if choice is None:
            self.no_replica += 1
            return None
        self.choices[choice.reason] = self.choices.get(choice.reason, 0) + 1
        affinity = key.session or key.prefix if key.is_cacheable else None
        if affinity is not None:
            previous = self._sessions.pop(affinity, None)
            if previous is not None and previous != choice.replica:
                self.session_moves += 1
            self._sessions[affinity] = choice.replica
            if len(self._sessions) > SESSION_TABLE_SIZE:
                self._sessions.popitem(last=False)
        return choice

    def started(self, name: str) -> str:
        ep = self.endpoints[name]
        ep.in_flight += 1
        ep.requests += 1
        return ep.url

    def finished(self, name: str) -> None:
        ep = self.endpoints.get(name)
        if ep is not None:
            ep.in_flight = max(0, ep.in_flight - 1)

    def failed_before_first_byte(self, name: str, *, is_connection_error: bool) -> None:
        """Counted as a retry; a refused connection also takes the replica out until its health check passes."""
        ep = self.endpoints.get(name)
        if ep is None:
            return
        ep.retries += 1
        ep.failures += 1
        if is_connection_error:
            ep.is_healthy = False

    def failed_mid_stream(self, name: str) -> None:
        """The replica's connection broke while it was answering (engine killed, connection reset): it is taken
        out until its health check passes again, so the client's retry of the same session re-hashes to a live
        replica instead of landing here again."""
        ep = self.endpoints.get(name)
        if ep is None:
            return
        ep.failures += 1
        ep.mid_stream_failures += 1
        ep.is_healthy = False

    # -- /metrics ---------------------------------------------------------------------------------------
    def render_metrics(self) -> str:
        lines = []

        def family(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{labels} {value:g}" for labels, value in samples)

        eps = sorted(self.endpoints.values(), key=lambda e: e.name)
        family("agentfleet_router_requests_total", "counter", "Requests sent to each replica (attempts).",
               [(f'{{replica="{e.name}"}}', e.requests) for e in eps])
        family("agentfleet_router_retries_total", "counter",
               "Requests that failed on a replica before the first byte and were retried on another.",
               [(f'{{replica="{e.name}"}}', e.retries) for e in eps])
        family("agentfleet_router_mid_stream_failures_total", "counter",
               "Answers that broke off on a replica after the first byte (the replica is taken out).",
               [(f'{{replica="{e.name}"}}', e.mid_stream_failures) for e in eps])
        family("agentfleet_router_in_flight", "gauge", "Requests in flight per replica.",
               [(f'{{replica="{e.name}"}}', e.in_flight) for e in eps])
        family("agentfleet_router_replica_healthy", "gauge", "1 when the replica takes new requests.",
               [(f'{{replica="{e.name}"}}', float(e.is_healthy and not e.is_draining)) for e in eps])
        family("agentfleet_router_session_moves_total", "counter",
               "Sessions or prefixes routed to a different replica than their previous request.",
               [("", self.session_moves)])
        family("agentfleet_router_choices_total", "counter", "Routing decisions by reason.",
               [(f'{{reason="{r}"}}', n) for r, n in sorted(self.choices.items())])
        family("agentfleet_router_unroutable_total", "counter", "Requests no replica could take (503).",
               [("", self.no_replica)])
        return "\n".join(lines) + "\n"
