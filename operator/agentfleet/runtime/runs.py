"""Durable runs: every autonomous run (`POST /v1/runs`) and every chat completion is a record in the state store
(agentfleet.state: SQLite on one machine, Redis shared by the replicas), so any replica answers for it and a run
outlives the replica that started it. This module holds the rules, pure over a store transaction; tasks.py drives
them from the event loop.

A run record: who owns it (principal), its status, the replica holding its lease and until when, a cancel flag, the
number of events, its result, and the W3C trace context its spans hang under (so a run taken over continues its
trace; a record written before the field existed reads as having none). Events (`ev:{run}:{seq}`, seq from 1) are
what a client streams from a cursor and what a replica taking the run over rebuilds the agent from: `status`,
`tool_started` (written before a tool runs) and `step` (after a step completes, with the agent's checkpoint). A
running run is in the `leases` index by lease expiry; its owner renews the lease, and a lease that expires (the
replica died) lets another replica claim the run. Every write by an owner is fenced: once a run was claimed
elsewhere, the old owner's writes raise LeaseLost.

The owner check is as strict as before: a run read by anyone but its principal is the same answer as no run."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, TypeVar

from ..retrieval.filters import Principal
from ..state.txn import Store, Txn

__all__ = ["RunRecord", "RunStore", "LeaseLost", "RunNotFound", "TERMINAL", "RETAIN_S", "principal_wire",
           "principal_of", "IDEMPOTENT_TOOLS", "MCP_SEPARATOR", "is_idempotent"]

T = TypeVar("T")

TERMINAL = ("completed", "incomplete", "failed", "cancelled")
# Finished runs (and their events) are kept a day for GET and resumed event streams, then dropped by the store.
RETAIN_S = 86400.0
LEASES = "leases"
# Tools whose interrupted call a replica taking a run over may run again (no side effects outside the task).
# MCP tools are not, unless the AgentApp declares them idempotent.
IDEMPOTENT_TOOLS = frozenset({"retrieve", "calculator"})
MCP_SEPARATOR = "__"  # an MCP tool's name is "<server>__<tool>" (mcp_tools.py); "<server>__" covers a server


def is_idempotent(tool: str, safe: frozenset[str]) -> bool:
    return tool in safe or (MCP_SEPARATOR in tool and tool.split(MCP_SEPARATOR, 1)[0] + MCP_SEPARATOR in safe)


class LeaseLost(Exception):
    """This replica no longer owns the run (it was taken over, or finished elsewhere): stop without writing."""


class RunNotFound(Exception):
    pass


def principal_wire(p: Principal) -> dict[str, Any]:
    return {"tenant": p.tenant, "groups": list(p.groups), "user": p.user}


def principal_of(d: dict[str, Any]) -> Principal:
    return Principal(d["tenant"], tuple(d.get("groups") or ()), d.get("user"))


def _principal_key(p: Principal) -> str:
    raw = json.dumps(principal_wire(p), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _run_key(run_id: str) -> str:
    return f"run:{run_id}"


def _event_key(run_id: str, seq: int) -> str:
    return f"ev:{run_id}:{seq}"


def _idem_key(p: Principal, key: str) -> str:
    return f"idem:{_principal_key(p)}:{hashlib.sha256(key.encode()).hexdigest()[:32]}"


@dataclass
class RunRecord:
    id: str
    principal: Principal
    kind: str  # run | chat | response
    created_s: float
    deadline_s: float  # wall clock: a run taken over keeps the deadline it was admitted with
    request: dict[str, Any]  # what the agent starts from: {"history": [...], "answer_max_tokens": n}
    status: str = "running"  # running | completed | incomplete | failed | cancelled (queued: none wait today)
    owner: str | None = None
    lease_until: float = 0.0
    cancel: bool = False
    events: int = 0
    takeovers: int = 0
    hold: str | None = None  # the task's root budget reservation
    degraded: bool = False
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    finished_s: float | None = None
    resumable: bool = True  # a chat completion nobody can come back for is not resumed by another replica
    extra: dict[str, Any] = field(default_factory=dict)
    # W3C headers (traceparent, tracestate) of the span a continuation's spans are children of: the caller's
    # when it sent one, then the first segment's root invoke_agent span once a write carries it. None: untraced.
    trace_context: dict[str, str] | None = None

    @property
    def is_done(self) -> bool:
        return self.status in TERMINAL

    def to_wire(self) -> dict[str, Any]:
        return {"id": self.id, "principal": principal_wire(self.principal), "kind": self.kind,
                "created_s": self.created_s, "deadline_s": self.deadline_s, "request": self.request,
                "status": self.status, "owner": self.owner, "lease_until": self.lease_until, "cancel": self.cancel,
                "events": self.events, "takeovers": self.takeovers, "hold": self.hold, "degraded": self.degraded,
                "result": self.result, "error": self.error, "finished_s": self.finished_s,
                "resumable": self.resumable, "extra": self.extra, "trace_context": self.trace_context}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> RunRecord:
        return cls(id=d["id"], principal=principal_of(d["principal"]), kind=d["kind"], created_s=d["created_s"],
                   deadline_s=d["deadline_s"], request=d["request"], status=d["status"], owner=d.get("owner"),
                   lease_until=float(d.get("lease_until") or 0), cancel=bool(d.get("cancel")),
                   events=int(d.get("events") or 0), takeovers=int(d.get("takeovers") or 0), hold=d.get("hold"),
                   degraded=bool(d.get("degraded")), result=d.get("result"), error=d.get("error"),
                   finished_s=d.get("finished_s"), resumable=bool(d.get("resumable", True)),
                   extra=dict(d.get("extra") or {}), trace_context=d.get("trace_context") or None)

    def wire(self, steps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """What a client sees: no lease internals, no principal."""
        out: dict[str, Any] = {"id": self.id, "object": "agentfleet.run", "created": int(self.created_s),
                               "status": self.status, "replica": self.owner, "takeovers": self.takeovers}
        if steps is not None:
            out["steps"] = steps
        if self.cancel and not self.is_done:
            out["cancel_requested"] = True
        if self.result is not None:
            out.update(self.result)
        if self.error is not None:
            out["error"] = self.error
        return out


def _load(txn: Txn, run_id: str) -> RunRecord:
    raw = txn.get(_run_key(run_id))
    if raw is None:
        raise RunNotFound(run_id)
    return RunRecord.from_wire(raw)


def _save(txn: Txn, run: RunRecord) -> None:
    txn.put(_run_key(run.id), run.to_wire(), ttl_s=RETAIN_S if run.is_done else None)


def _owned(txn: Txn, run_id: str, owner: str) -> RunRecord:
    run = _load(txn, run_id)
    if run.owner != owner or run.is_done:
        raise LeaseLost(f"run {run_id} is {run.status}, held by {run.owner}")
    return run


def _append(txn: Txn, run: RunRecord, event: dict[str, Any], now_s: float) -> int:
    run.events += 1
    txn.put(_event_key(run.id, run.events), {**event, "seq": run.events, "time_s": now_s},
            ttl_s=RETAIN_S + max(run.deadline_s - now_s, 0.0))
    return run.events


class RunStore:
    """The run rules over one store. Every method is one atomic transaction and takes `now_s` (wall clock), so
    tests move time instead of sleeping. Blocking: call from a worker thread in async code."""

    def __init__(self, store: Store, *, lease_s: float = 15.0):
        self.store = store
        self.lease_s = lease_s

    def _tx(self, fn: Callable[[Txn], T], now_s: float) -> T:
        return self.store.transact(fn, now_s=now_s)

    def create(self, run: RunRecord, *, idempotency_key: str | None, now_s: float) -> tuple[RunRecord, bool]:
        """Record a new run (owned by `run.owner`, leased), or return the run this principal already started with
        the same Idempotency-Key: (run, created)."""
        def fn(txn: Txn) -> tuple[RunRecord, bool]:
            if idempotency_key is not None:
                seen = txn.get(_idem_key(run.principal, idempotency_key))
                if seen is not None:
                    raw = txn.get(_run_key(seen["run"]))
                    if raw is not None:
                        return RunRecord.from_wire(raw), False
            if txn.get(_run_key(run.id)) is not None:
                raise ValueError(f"run {run.id} exists")
            run.lease_until = now_s + self.lease_s
            _append(txn, run, {"type": "status", "status": run.status}, now_s)
            _save(txn, run)
            txn.schedule(LEASES, run.id, run.lease_until)
            if idempotency_key is not None:
                txn.put(_idem_key(run.principal, idempotency_key), {"run": run.id},
                        ttl_s=RETAIN_S + max(run.deadline_s - now_s, 0.0))
            return run, True

        return self._tx(fn, now_s)

    def find(self, principal: Principal, idempotency_key: str, *, now_s: float) -> RunRecord | None:
        """The run this principal started with this Idempotency-Key, if it is still known."""
        def fn(txn: Txn) -> RunRecord | None:
            seen = txn.get(_idem_key(principal, idempotency_key))
            raw = None if seen is None else txn.get(_run_key(seen["run"]))
            return None if raw is None else RunRecord.from_wire(raw)

        return self._tx(fn, now_s)

    def get(self, run_id: str, principal: Principal | None, *, now_s: float) -> RunRecord | None:
        """The run, if `principal` (same tenant, groups and user) owns it; None for unknown and foreign alike.
        `principal=None` is the runtime's own read."""
        def fn(txn: Txn) -> RunRecord | None:
            try:
                run = _load(txn, run_id)
            except RunNotFound:
                return None
            return run if principal is None or run.principal == principal else None

        return self._tx(fn, now_s)

    def events(self, run_id: str, *, after: int, now_s: float, limit: int = 1000) -> list[dict[str, Any]]:
        def fn(txn: Txn) -> list[dict[str, Any]]:
            try:
                run = _load(txn, run_id)
            except RunNotFound:
                return []
            out = []
            for seq in range(after + 1, min(run.events, after + limit) + 1):
                ev = txn.get(_event_key(run_id, seq))
                if ev is not None:
                    out.append(ev)
            return out

        return self._tx(fn, now_s)

    def append(self, run_id: str, owner: str, events: list[dict[str, Any]], *, now_s: float,
               trace_context: dict[str, str] | None = None) -> int:
        """Append events as the run's owner (fenced), in one transaction; returns the last seq. `trace_context`
        replaces the run's (it rides a write the run makes anyway, costing no transaction of its own)."""
        def fn(txn: Txn) -> int:
            run = _owned(txn, run_id, owner)
            for event in events:
                _append(txn, run, event, now_s)
            if trace_context:
                run.trace_context = dict(trace_context)
            _save(txn, run)
            return run.events

        return self._tx(fn, now_s)

    def renew(self, run_ids: Iterable[str], owner: str, *, now_s: float) -> dict[str, str]:
        """Extend this replica's leases. Returns, per run, "ok", "cancel" (a cancel was requested) or "lost"."""
        ids = list(run_ids)

        def fn(txn: Txn) -> dict[str, str]:
            out = {}
            for run_id in ids:
                try:
                    run = _owned(txn, run_id, owner)
                except (LeaseLost, RunNotFound):
                    out[run_id] = "lost"
                    continue
                run.lease_until = now_s + self.lease_s
                _save(txn, run)
                txn.schedule(LEASES, run.id, run.lease_until)
                out[run_id] = "cancel" if run.cancel else "ok"
            return out

        return self._tx(fn, now_s) if ids else {}

    def finish(self, run_id: str, owner: str, *, status: str, now_s: float, result: dict[str, Any] | None = None,
               error: dict[str, Any] | None = None, events: list[dict[str, Any]] = ()) -> RunRecord:  # type: ignore[assignment]
        """End the run (with the events not yet written, in the same transaction)."""
        if status not in TERMINAL:
            raise ValueError(f"not a terminal status: {status}")

        def fn(txn: Txn) -> RunRecord:
            run = _owned(txn, run_id, owner)
            for event in events:
                _append(txn, run, event, now_s)
            run.status, run.result, run.error, run.finished_s = status, result, error, now_s
            _append(txn, run, {"type": "status", "status": status}, now_s)
            _save(txn, run)
            txn.unschedule(LEASES, run.id)
            return run

        return self._tx(fn, now_s)

    def request_cancel(self, run_id: str, principal: Principal, *, now_s: float) -> RunRecord | None:
        """Flag the run for its owner (who sees it at its next renewal); a run whose lease has lapsed has no live
        owner and is cancelled here at once."""
        def fn(txn: Txn) -> RunRecord | None:
            try:
                run = _load(txn, run_id)
            except RunNotFound:
                return None
            if run.principal != principal:
                return None
            if run.is_done:
                return run
            run.cancel = True
            if run.lease_until <= now_s:
                run.status, run.finished_s = "cancelled", now_s
                run.error = {"message": "cancelled by the caller", "type": "cancelled", "param": None,
                             "code": "cancelled"}
                _append(txn, run, {"type": "status", "status": "cancelled"}, now_s)
                txn.unschedule(LEASES, run.id)
            _save(txn, run)
            return run

        return self._tx(fn, now_s)

    def hand_back(self, run_ids: Iterable[str], owner: str, *, now_s: float) -> list[str]:
        """A draining replica gives its leases up now, so another replica claims the runs without waiting."""
        ids = list(run_ids)

        def fn(txn: Txn) -> list[str]:
            out = []
            for run_id in ids:
                try:
                    run = _owned(txn, run_id, owner)
                except (LeaseLost, RunNotFound):
                    continue
                run.lease_until = now_s
                _append(txn, run, {"type": "handed_back", "replica": owner}, now_s)
                _save(txn, run)
                txn.schedule(LEASES, run.id, now_s)
                out.append(run_id)
            return out

        return self._tx(fn, now_s) if ids else []

    def claim(self, owner: str, *, now_s: float, limit: int = 4, running_here: Iterable[str] = ()
              ) -> list[RunRecord]:
        """Take over runs whose lease lapsed (their replica died or handed them back). A run that cannot be resumed
        (a chat completion without an Idempotency-Key: nobody can come back for its answer) or is past its
        deadline or was asked to cancel is finished here instead, with the reason. `running_here`: runs this
        replica executes now; their leases lapsed only because the store was away, so they are renewed, not
        claimed (claiming one would start a second execution of it)."""
        mine = set(running_here)

        def fn(txn: Txn) -> list[RunRecord]:
            claimed: list[RunRecord] = []
            for run_id in txn.due(LEASES, now_s):
                if len(claimed) >= limit:
                    break
                if run_id in mine:
                    try:
                        run = _owned(txn, run_id, owner)
                    except (LeaseLost, RunNotFound):
                        continue
                    run.lease_until = now_s + self.lease_s
                    _save(txn, run)
                    txn.schedule(LEASES, run_id, run.lease_until)
                    continue
                try:
                    run = _load(txn, run_id)
                except RunNotFound:
                    txn.unschedule(LEASES, run_id)
                    continue
                if run.is_done:
                    txn.unschedule(LEASES, run_id)
                    continue
                ending = None
                if run.cancel:
                    ending = ("cancelled", "cancelled", "cancelled by the caller")
                elif not run.resumable:
                    ending = ("incomplete", "replica_lost", "the replica running this chat completion stopped; "
                              "retry it with an Idempotency-Key to make it resumable")
                elif run.deadline_s <= now_s:
                    ending = ("incomplete", "deadline", "the run's deadline passed while no replica held it")
                previous = run.owner
                if ending is not None:
                    run.status, run.finished_s = ending[0], now_s
                    run.error = {"message": ending[2], "type": "server_error" if ending[0] != "cancelled"
                                 else "cancelled", "param": None, "code": ending[1]}
                    _append(txn, run, {"type": "status", "status": run.status, "reason": ending[1]}, now_s)
                    _save(txn, run)
                    txn.unschedule(LEASES, run_id)
                    continue
                run.owner, run.lease_until = owner, now_s + self.lease_s
                run.takeovers += 1
                _append(txn, run, {"type": "taken_over", "replica": owner, "from": previous}, now_s)
                _save(txn, run)
                txn.schedule(LEASES, run_id, run.lease_until)
                claimed.append(run)
            return claimed

        return self._tx(fn, now_s)

    def close(self) -> None:
        self.store.close()
