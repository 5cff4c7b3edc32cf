"""The router's view of its fleet, in memory and without I/O: endpoints and their health, draining flags,
in-flight counts, the last scraped vLLM load, the hash ring, a bounded table of affinity keys (session or prefix)
and the replica that holds each one's history, the live keys per replica (seen within `key_idle_s`), and the
counters `/metrics` exposes. The proxy edge mutates it from one event loop, so it needs no locks."""

from __future__ import annotations

import heapq
import math
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

from .. import metrics_names as mn
from .hashing import Ring
from .keys import RequestKey
from .policy import DEFAULT_MOVE_BOUND_FACTOR, Choice, Placement, Policy, ReplicaView, choose

__all__ = ["Endpoint", "FleetState", "parse_load", "parse_served", "parse_prometheus_text", "KEY_IDLE_S"]

SESSION_TABLE_SIZE = 100_000
# How long a key counts as live on its replica when new keys are placed (its home is remembered longer): until it
# has been silent for KEY_IDLE_PACE times its own pace (the gap between its last two requests), at least
# KEY_IDLE_MIN_S and at most KEY_IDLE_S. A fixed 120 s counted ended sessions and placed new ones by stale counts:
# on the routing bench (closed loop, 64 tasks) task p95 was 51 s with 120 s and 23 s with 5 s. An agent whose tool
# runs 20 s between calls stays live for a minute.
KEY_IDLE_S = 120.0
KEY_IDLE_PACE = 3.0
KEY_IDLE_MIN_S = 1.0


_NONE: frozenset[str] = frozenset()

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
    served: float | None = None  # the engine's own cumulative request count at the last scrape (restart marker)
    restarts: int = 0  # engine restarts seen (a counter that went back, or a new address)
    models: frozenset[str] | None = None  # what its /v1/models lists (base model and loaded adapters); None: unread


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


def parse_load(text: str | Mapping[str, float]) -> tuple[float | None, float | None, float | None]:
    """(waiting, running, KV-cache use) from a vLLM /metrics page (or its parse), in either spelling."""
    s = parse_prometheus_text(text) if isinstance(text, str) else text
    return mn.first_present(s, mn.WAITING), mn.first_present(s, mn.RUNNING), mn.first_present(s, mn.KV_CACHE_USAGE)


def parse_served(text: str | Mapping[str, float]) -> float | None:
    """The engine's cumulative count of finished requests (from its page or its parse): it only grows while the
    process lives, so a smaller value (or none after some) means the engine restarted with an empty cache."""
    return mn.first_present(parse_prometheus_text(text) if isinstance(text, str) else text, mn.REQUEST_SUCCESS)


@dataclass
class FleetState:
    policy: Policy
    load_bound_factor: float = 1.25
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    ring: Ring = field(default_factory=lambda: Ring(()))
    move_bound_factor: float = DEFAULT_MOVE_BOUND_FACTOR
    key_idle_s: float = KEY_IDLE_S
    placement: Placement = "local"
    rr_index: int = 0
    session_moves: int = 0
    load_bound_passes: int = 0
    choices: dict[str, int] = field(default_factory=dict)
    no_replica: int = 0
    synced: bool = False  # the membership has been set once (static list, or the first EndpointSlice listing)
    forgotten_keys: int = 0
    released_keys: int = 0
    _sessions: OrderedDict[str, str] = field(default_factory=OrderedDict)  # affinity key -> home, LRU
    # affinity key -> (last seen, live until, replica), least recently seen first; a heap of (live until, key)
    _live: OrderedDict[str, tuple[float, float, str]] = field(default_factory=OrderedDict)
    _expiry: list[tuple[float, str]] = field(default_factory=list)
    _placed: dict[str, int] = field(default_factory=dict)  # replica -> live affinity keys
    _busy: dict[str, int] = field(default_factory=dict)  # affinity key -> its requests not yet answered
    _model_gaps: dict[str, frozenset[str]] = field(default_factory=dict)  # model -> replicas lacking it

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
            elif ep.url != url:  # a new pod under the old name (a StatefulSet replaced it): nothing is cached there
                ep.url, ep.served, ep.models = url, None, None
                self.restarted(name)
            self.endpoints[name].is_draining = name in draining
        if set(self.ring.members) != set(self.endpoints):
            self.ring = Ring(self.endpoints)
        self._index_models()
        self.synced = True

    def set_models(self, name: str, models: frozenset[str] | None) -> None:
        ep = self.endpoints.get(name)
        if ep is not None and ep.models != models:
            ep.models = models
            self._index_models()

    def _index_models(self) -> None:
        """Per model that some replicas list and others do not (a LoRA adapter loaded on some of them): the
        replicas without it. Rebuilt when a listing or the membership changes, so a request pays one lookup."""
        listed = [e for e in self.endpoints.values() if e.models is not None]
        every = set().union(*(e.models for e in listed)) if listed else set()  # type: ignore[misc]
        gaps = {m: frozenset(e.name for e in listed if m not in e.models) for m in every}  # type: ignore[operator]
        self._model_gaps = {m: g for m, g in gaps.items() if g}

    def without_model(self, model: str | None) -> frozenset[str]:
        """The replicas known not to serve `model` when some replica does: its requests go where it is loaded.
        A name no replica lists excludes nothing (the engine answers for it)."""
        return self._model_gaps.get(model, _NONE) if model is not None else _NONE

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

    def set_served(self, name: str, served: float | None) -> None:
        """The engine's cumulative request count from its scrape; a value that went back means it restarted."""
        ep = self.endpoints.get(name)
        if ep is None:
            return
        if ep.served is not None and ep.served > 0 and (served is None or served < ep.served):
            self.restarted(name)
        ep.served = served

    def restarted(self, name: str) -> None:
        """The engine lost its KV cache (restarted, or replaced): drop every claim that it holds a key's history,
        so new keys are placed as if it were empty (it is) and nobody is kept there for a cache that is gone."""
        ep = self.endpoints.get(name)
        if ep is not None:
            ep.restarts += 1
        gone = [k for k, home in self._sessions.items() if home == name]
        for k in gone:
            del self._sessions[k]
        live = [k for k, (_, _, replica) in self._live.items() if replica == name]
        for k in live:
            del self._live[k]  # their entries left in the expiry heap are skipped (lazy deletion)
        self._placed[name] = 0
        self.forgotten_keys += len(gone)

    def is_ready(self) -> bool:
        return any(e.is_healthy and not e.is_draining for e in self.endpoints.values())

    # -- the hot path -----------------------------------------------------------------------------------
    def views(self) -> list[ReplicaView]:
        return [ReplicaView(e.name, e.in_flight, e.waiting, e.running, e.kv_cache_usage, e.is_healthy,
                            e.is_draining) for e in self.endpoints.values()]

    def pick(self, key: RequestKey, exclude: frozenset[str] = frozenset(), *, now: float | None = None
             ) -> Choice | None:
        now = time.monotonic() if now is None else now
        affinity = self.affinity(key)
        if key.model is not None and key.model in self._model_gaps:
            exclude = exclude | self._model_gaps[key.model]
        self._expire(now)
        home = self._sessions.get(affinity) if affinity is not None else None
        if key.home is not None and key.session is not None and key.home in self.endpoints:
            home = key.home  # the client saw where its last call went, maybe through another router replica
        # A run carries its home from call to call, so router replicas agree on it whatever their own counts:
        # it is placed by this router's counts (the best spread), not by the shared rule that plain clients need.
        placement = "local" if key.is_run and key.session is not None else self.placement
        choice = choose(key, self.views(), policy=self.policy, ring=self.ring,
                        load_bound_factor=self.load_bound_factor, rr_index=self.rr_index, exclude=exclude,
                        home=home, placed=self._placed, move_bound_factor=self.move_bound_factor,
                        placement=placement)
        self.rr_index += 1
        if choice is None:
            self.no_replica += 1
            return None
        self.choices[choice.reason] = self.choices.get(choice.reason, 0) + 1
        if choice.is_load_bound_pass:
            self.load_bound_passes += 1
        if affinity is not None:
            if home is not None and home != choice.replica:
                self.session_moves += 1
            self._sessions.pop(affinity, None)
            self._sessions[affinity] = choice.replica
            if len(self._sessions) > SESSION_TABLE_SIZE:
                self._sessions.popitem(last=False)
            self._touch(affinity, choice.replica, now, hold=key.is_run)
        return choice

    def release(self, sessions: list[str]) -> int:
        """The runs behind these sessions ended (the runtime says so): their claims go now, not when they idle
        out, so the next sessions are placed by the load that is really there. Returns how many were held."""
        n = 0
        for s in sessions:
            entry = self._live.pop(s, None)
            if entry is not None:
                self._placed[entry[2]] -= 1
                n += 1
            self._sessions.pop(s, None)
        self.released_keys += n
        return n

    def _touch(self, affinity: str, replica: str, now: float, *, hold: bool = False) -> None:
        was = self._live.pop(affinity, None)
        if was is not None:
            self._placed[was[2]] -= 1
        # Live until silent for KEY_IDLE_PACE times the key's own pace (the gap between its last two requests),
        # within [KEY_IDLE_MIN_S, key_idle_s]; a key seen once has no pace yet and gets key_idle_s. A run that
        # will say when it ends is held for key_idle_s after each call, through a tool of any length.
        ttl = self.key_idle_s if was is None or hold else min(
            self.key_idle_s, max(KEY_IDLE_MIN_S, KEY_IDLE_PACE * (now - was[0])))
        self._placed[replica] = self._placed.get(replica, 0) + 1
        self._live[affinity] = (now, now + ttl, replica)
        heapq.heappush(self._expiry, (now + ttl, affinity))

    def _expire(self, now: float) -> None:
        """Keys silent past their time to live, or past the table's size, stop counting as live on their
        replica. The heap may hold an older expiry of a key touched since: it is skipped (lazy deletion)."""
        while self._expiry and self._expiry[0][0] <= now:
            expires, affinity = heapq.heappop(self._expiry)
            entry = self._live.get(affinity)
            if entry is not None and entry[1] == expires:
                if affinity in self._busy:  # a request of it is still unanswered: live until it is, and after
                    continue
                del self._live[affinity]
                self._placed[entry[2]] -= 1
        while len(self._live) > SESSION_TABLE_SIZE:  # the least recently seen go first
            _, (_, _, replica) = self._live.popitem(last=False)
            self._placed[replica] -= 1

    def live_keys(self) -> dict[str, int]:
        return {n: c for n, c in self._placed.items() if c}

    @staticmethod
    def affinity(key: RequestKey) -> str | None:
        return (key.session or key.prefix) if key.is_cacheable else None

    def started(self, name: str, key: RequestKey | None = None) -> str:
        ep = self.endpoints[name]
        ep.in_flight += 1
        ep.requests += 1
        affinity = self.affinity(key) if key is not None else None
        if affinity is not None:
            self._busy[affinity] = self._busy.get(affinity, 0) + 1
        return ep.url

    def finished(self, name: str, key: RequestKey | None = None, *, now: float | None = None) -> None:
        """The answer is done. A key stays live while a request of it is unanswered (waiting in the engine's or
        the fair queue counts: a wait is not silence), and its time to live counts from this moment."""
        ep = self.endpoints.get(name)
        if ep is not None:
            ep.in_flight = max(0, ep.in_flight - 1)
        affinity = self.affinity(key) if key is not None else None
        if affinity is None or affinity not in self._busy:
            return
        self._busy[affinity] -= 1
        if self._busy[affinity] <= 0:
            del self._busy[affinity]
        entry = self._live.get(affinity)
        if entry is not None:
            now = time.monotonic() if now is None else now
            seen, until, replica = entry
            if now + (until - seen) > until:
                self._live[affinity] = (seen, now + (until - seen), replica)
                heapq.heappush(self._expiry, (now + (until - seen), affinity))

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
        family("agentfleet_router_load_bound_passes_total", "counter",
               "Requests sent past their key's hashed replica (new keys) or home (placed keys) by the load bound.",
               [("", self.load_bound_passes)])
        family("agentfleet_router_live_keys", "gauge",
               "Session or prefix keys seen in the last key_idle_s, by the replica that holds their history.",
               [(f'{{replica="{e.name}"}}', self._placed.get(e.name, 0)) for e in eps])
        family("agentfleet_router_replica_restarts_total", "counter",
               "Engine restarts seen (its request counter went back, or a new address): its keys were forgotten.",
               [(f'{{replica="{e.name}"}}', e.restarts) for e in eps])
        family("agentfleet_router_released_keys_total", "counter",
               "Sessions whose run ended and was released by the runtime (POST /v1/sessions/end).",
               [("", self.released_keys)])
        family("agentfleet_router_choices_total", "counter", "Routing decisions by reason.",
               [(f'{{reason="{r}"}}', n) for r, n in sorted(self.choices.items())])
        family("agentfleet_router_unroutable_total", "counter", "Requests no replica could take (503).",
               [("", self.no_replica)])
        return "\n".join(lines) + "\n"
