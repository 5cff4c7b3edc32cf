"""Runs on a replica: the event-loop side of the durable run rules (runs.py). The RunManager records every run and
chat completion in the state store as it goes (status, each step, the root agent's checkpoints), renews the leases
of the runs this replica executes, takes over runs whose replica died (their lease lapsed) and continues them from
their last checkpoint, and on shutdown hands its runs back so another replica continues them at once. A run keeps
its trace: the record holds the context its first segment ran under (the caller's, then its root invoke_agent
span's), and a replica that takes the run over parents its own segment there, so one trace shows the whole run.

Cancellation is a flag in the store: whichever replica is asked, the owner sees it at its next renewal (at once
when the owner is the replica asked). A replica whose run was taken over elsewhere (it was paused past its lease)
finds out at its next write (LeaseLost) and stops without touching the run's reservation, which the new owner
carries."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import random
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

from ..errors import AgentfleetError, Draining, StateUnavailable, TooManyRequests, http_error
from ..names import RUNTIME_REPLICA_ENV
from ..retrieval.filters import Principal
from .agent import Resume
from .caller_limits import CallerLimits, Slot
from .runs import LeaseLost, RunRecord, RunStore
from .serving import Runtime, TaskBudget, TaskOutcome, until_available

__all__ = ["RunManager", "replica_id", "LEASE_ENV", "REPLICA_ENV", "CLIENT_EVENTS"]

log = logging.getLogger("agentfleet.runtime")

REPLICA_ENV = RUNTIME_REPLICA_ENV
LEASE_ENV = "AGENTFLEET_RUN_LEASE_S"
DEFAULT_LEASE_S = 15.0
PRUNE_EVERY_S = 3600.0
FLUSH_S = 0.5
# The events a client sees (checkpoints are the runtime's own: the transcript and loop state).
CLIENT_EVENTS = frozenset({"status", "step", "taken_over", "handed_back"})


def replica_id() -> str:
    """The pod's name in a cluster (the Deployment sets it), else host and process."""
    return os.environ.get(REPLICA_ENV) or f"{socket.gethostname()}-{os.getpid()}"


def lease_seconds() -> float:
    try:
        return max(float(os.environ.get(LEASE_ENV, DEFAULT_LEASE_S)), 0.5)
    except ValueError:
        return DEFAULT_LEASE_S


class _EventLog:
    """A run's events on their way to the store. A checkpoint taken before a tool runs is written at once (a
    replica taking the run over must know the call may have happened); the others are written together, at most
    FLUSH_S later or with the run's final status, so a one-step chat completion costs two store transactions
    (create, finish), not six. A replica that dies loses at most FLUSH_S of steps, which the next owner redoes."""

    def __init__(self, manager: RunManager, run: RunRecord, budget: TaskBudget):
        self.manager, self.run, self.budget = manager, run, budget
        self.pending: list[dict[str, Any]] = []
        self.trace_context: dict[str, str] | None = None  # the root span's, on its way to the run record
        self.lock = asyncio.Lock()
        self.timer: asyncio.TimerHandle | None = None
        self.task = asyncio.current_task()

    async def add(self, event: dict[str, Any]) -> None:
        if event.get("type") == "trace_context":
            # The first segment's root span: the record keeps it (with the next write) for a continuation to join.
            # A continuation's own segment is not recorded, so every segment is a child of the first.
            if self.run.takeovers == 0:
                self.trace_context = dict(event["headers"])
            return
        self.pending.append(event)
        if event.get("type") == "checkpoint" and event["state"].get("pending") is not None:
            await self.flush()
        elif self.timer is None:
            self.timer = asyncio.get_running_loop().call_later(FLUSH_S, self._flush_later)

    def _flush_later(self) -> None:
        self.timer = None
        flusher = asyncio.get_running_loop().create_task(self.flush())
        flusher.add_done_callback(self._flushed)

    def _flushed(self, t: asyncio.Task[None]) -> None:
        if not t.cancelled() and isinstance(t.exception(), LeaseLost) and self.task is not None:
            self.task.cancel()  # the run is someone else's now; flush() marked the reservation handed off

    async def flush(self) -> None:
        async with self.lock:
            if not self.pending:
                return
            events, self.pending = self.pending, []
            trace, self.trace_context = self.trace_context, None
            try:
                await self.manager._db_wait(self.manager.store.append, self.run.id, self.manager.replica, events,
                                            now_s=self.manager.wall(), trace_context=trace)
            except LeaseLost:
                self.budget.is_handed_off = True  # the run is someone else's now: so is its reservation
                raise

    def take(self) -> list[dict[str, Any]]:
        """The events not yet written (they go with the final status)."""
        self.close()
        events, self.pending = self.pending, []
        return events

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


@dataclass
class _Local:
    run: RunRecord
    budget: TaskBudget
    task: asyncio.Task[Any] | None = None


class RunManager:
    def __init__(self, runtime: Runtime, store: RunStore, *, replica: str | None = None,
                 wall: Callable[[], float] = time.time, pool_size: int = 4):
        self.runtime, self.store = runtime, store
        self.replica = replica or replica_id()
        self.wall = wall
        self.local: dict[str, _Local] = {}
        self.starting = 0  # runs being admitted (not yet in `local`)
        cfg = runtime.config
        self.limits = CallerLimits(key_concurrent_runs=cfg.per_key.concurrent_runs,
                                   tenant_concurrent_runs=cfg.per_tenant.concurrent_runs,
                                   key_runs_per_minute=cfg.per_key.runs_per_minute,
                                   tenant_runs_per_minute=cfg.per_tenant.runs_per_minute)
        self._slots: dict[str, Slot] = {}  # runs admitted here: their places in the per-key/tenant counts
        self.is_draining = False
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="runs")
        self._timers: list[asyncio.Task[None]] = []
        # When this replica last failed to reach the store. After an outage every lease has lapsed, live owners'
        # included: claims wait one lease period of a reachable store, so the owners renew first.
        self.store_failed_at: float | None = None

    # --- store calls (blocking: in the pool) -----------------------------------------------------------------
    async def _db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))

    async def _db_wait(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A write the run cannot go on without: waits out a store outage (bounded), like the ledger's."""
        return await until_available(self.pool, functools.partial(fn, *args, **kwargs))

    # --- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        lease = self.store.lease_s
        loop = asyncio.get_running_loop()
        self._timers = [loop.create_task(self._every(lease / 3, self._renew), name="run-leases"),
                        loop.create_task(self._every(lease / 3, self._take_over, jitter=True), name="run-takeover"),
                        loop.create_task(self._every(PRUNE_EVERY_S, self._prune, jitter=True), name="state-prune")]

    async def _every(self, period_s: float, fn: Callable[[], Awaitable[None]], *, jitter: bool = False) -> None:
        while True:
            await asyncio.sleep(period_s * (random.uniform(0.5, 1.0) if jitter else 1.0))
            try:
                await fn()
            except StateUnavailable as e:
                self.store_failed_at = time.monotonic()
                log.warning("run store: %s", e)
            except Exception:  # noqa: BLE001 - a timer must survive any one failure
                log.exception("run timer %s", getattr(fn, "__name__", fn))

    async def drain(self) -> None:
        """Stop taking runs and hand the ones running here back (their reservations go with them)."""
        self.is_draining = True
        for t in self._timers:
            t.cancel()
        movable = [rid for rid, loc in self.local.items() if loc.run.resumable]
        if movable:
            try:
                handed = await self._db(self.store.hand_back, movable, self.replica, now_s=self.wall())
            except Exception as e:  # noqa: BLE001 - the leases lapse on their own; others take over then
                log.warning("hand back failed (%s): the runs move when their leases lapse", e)
                handed = movable
            for rid in handed:
                loc = self.local.get(rid)
                if loc is not None and loc.task is not None:
                    loc.budget.is_handed_off = True
                    loc.task.cancel()
            log.info("drain: handed %d run(s) back", len(handed))
        await asyncio.gather(*(loc.task for loc in list(self.local.values()) if loc.task is not None
                               and loc.run.resumable), return_exceptions=True)

    async def close(self) -> None:
        for t in self._timers:
            t.cancel()
        for loc in list(self.local.values()):
            if loc.task is not None:
                loc.budget.is_handed_off = loc.run.resumable  # another replica continues it when its lease lapses
                loc.task.cancel()
        await asyncio.gather(*(loc.task for loc in list(self.local.values()) if loc.task is not None),
                             return_exceptions=True)
        self.pool.shutdown(wait=False, cancel_futures=True)

    # --- starting work ---------------------------------------------------------------------------------------
    async def existing(self, principal: Principal, idempotency_key: str | None) -> RunRecord | None:
        """The run this principal already started with this Idempotency-Key (a retried request), if any."""
        if idempotency_key is None:
            return None
        return await self._db(self.store.find, principal, idempotency_key, now_s=self.wall())

    async def admit(self, principal: Principal, history: Sequence[dict[str, Any]], *, kind: str,
                    idempotency_key: str | None, answer_max_tokens: int | None = None,
                    extra: dict[str, Any] | None = None, caller: str | None = None
                    ) -> tuple[RunRecord, TaskBudget | None]:
        """A new run, admitted (its root reservation taken) and recorded — or the run an earlier request with the
        same Idempotency-Key started, with no budget (nothing new is reserved for a retry). `caller` (the API
        key's digest) and the principal's tenant take a slot of the per-key and per-tenant limits (429 past them),
        held until the run stops on this replica."""
        if self.is_draining:
            raise Draining("this replica is shutting down; retry (another replica takes the request)")
        seen = await self.existing(principal, idempotency_key)
        if seen is not None:
            return seen, None
        try:
            slot = self.limits.acquire(caller or f"user:{principal.user}", principal.tenant, time.monotonic())
        except TooManyRequests as e:
            self.runtime.metrics.caller_limited.labels(e.by).inc()
            raise
        try:
            run, budget = await self._admit(principal, history, kind=kind, idempotency_key=idempotency_key,
                                            answer_max_tokens=answer_max_tokens, extra=extra)
        except BaseException:
            self.limits.release(slot)
            raise
        if budget is None:
            self.limits.release(slot)
        else:
            self._slots[run.id] = slot
        return run, budget

    def _release_slot(self, run_id: str) -> None:
        self.limits.release(self._slots.pop(run_id, None))

    async def _admit(self, principal: Principal, history: Sequence[dict[str, Any]], *, kind: str,
                     idempotency_key: str | None, answer_max_tokens: int | None,
                     extra: dict[str, Any] | None) -> tuple[RunRecord, TaskBudget | None]:
        hexid = uuid.uuid4().hex
        task_id = "task-" + hexid
        budget = await self.runtime.admit(principal, task_id)
        now = self.wall()
        run = RunRecord(id="run-" + hexid, principal=principal, kind=kind, created_s=now,
                        deadline_s=now + self.runtime.config.limits.deadline_seconds,
                        request={"history": list(history), "answer_max_tokens": answer_max_tokens},
                        status="running", owner=self.replica, hold=budget.hold_id, degraded=budget.is_degraded,
                        resumable=kind == "run" or idempotency_key is not None, extra=dict(extra or {}),
                        trace_context=self.runtime.telemetry.inject({}) or None)  # the caller's, if it sent one
        try:
            got, created = await asyncio.shield(self._db(self.store.create, run, idempotency_key=idempotency_key,
                                                         now_s=now))
        except BaseException:
            await asyncio.shield(budget.abandon())
            raise
        if not created:  # a concurrent retry with the same key won the race: give this reservation back
            await asyncio.shield(budget.abandon())
            return got, None
        return got, budget

    def spawn(self, run: RunRecord, budget: TaskBudget, *, resume: Resume | None = None) -> asyncio.Task[Any]:
        """Execute a run in the background (POST /v1/runs, or a run taken over)."""
        loc = _Local(run, budget)
        self.local[run.id] = loc

        async def background() -> None:
            try:
                await self._execute(loc, resume=resume)
            except Exception:  # noqa: BLE001 - already recorded on the run (failed)
                pass

        loc.task = asyncio.get_running_loop().create_task(background(), name=run.id)
        return loc.task

    async def execute(self, run: RunRecord, budget: TaskBudget, *,
                      forward: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
                      on_delta: Callable[[str], Awaitable[None]] | None = None) -> TaskOutcome:
        """Execute a run in this (request) task: a chat completion, whose client waits for it."""
        loc = _Local(run, budget, asyncio.current_task())
        self.local[run.id] = loc
        return await self._execute(loc, forward=forward, on_delta=on_delta)

    async def _execute(self, loc: _Local, *, resume: Resume | None = None,
                       forward: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
                       on_delta: Callable[[str], Awaitable[None]] | None = None) -> TaskOutcome:
        run, budget, rt = loc.run, loc.budget, self.runtime
        task_id = "task-" + run.id.removeprefix("run-")
        log_ = _EventLog(self, run, budget)

        async def record(event: dict[str, Any]) -> None:
            await log_.add(event)
            if forward is not None and event.get("type") in CLIENT_EVENTS:
                await forward(event)

        # A run taken over continues its trace (a fresh run is already in its caller's context).
        trace = run.trace_context if run.takeovers and run.trace_context else {}
        try:
            try:
                with rt.telemetry.incoming(trace):
                    outcome = await rt.run_task(run.principal, run.request["history"], task_id=task_id,
                                                budget=budget, emit=record, on_delta=on_delta,
                                                answer_max_tokens=run.request.get("answer_max_tokens"),
                                                resume=resume, deadline_in_s=run.deadline_s - self.wall(),
                                                takeovers=run.takeovers)
            except LeaseLost:
                log.info("run %s continues on another replica", run.id)
                raise asyncio.CancelledError() from None
            except asyncio.CancelledError:
                if not budget.is_handed_off:
                    await asyncio.shield(self._finish(run, "cancelled", error={
                        "message": "cancelled", "type": "cancelled", "param": None, "code": "cancelled"},
                        events=log_.take()))
                raise
            except Exception as e:  # noqa: BLE001 - recorded on the run, never raised into the loop
                if not isinstance(e, AgentfleetError):
                    log.exception("run %s failed", run.id)
                await asyncio.shield(budget.abandon())  # closed already unless it failed before the task ran
                await self._finish(run, "failed", error=http_error(e).body["error"], events=log_.take())
                raise
            status = "completed" if outcome.result.is_complete else "incomplete"
            await self._finish(run, status, result={"answer": outcome.result.answer, "agentfleet": outcome.summary(),
                                                    "steps": outcome.steps}, events=log_.take())
            return outcome
        finally:
            log_.close()
            self.local.pop(run.id, None)
            self._release_slot(run.id)

    async def _finish(self, run: RunRecord, status: str, *, result: dict[str, Any] | None = None,
                      error: dict[str, Any] | None = None, events: list[dict[str, Any]] | None = None) -> None:
        try:
            await self._db_wait(self.store.finish, run.id, self.replica, status=status, now_s=self.wall(),
                                result=result, error=error, events=events or [])
        except LeaseLost:
            pass  # taken over meanwhile: the new owner records how it ends

    async def abandon(self, run: RunRecord) -> None:
        """A run whose client left before it started: recorded as cancelled."""
        self._release_slot(run.id)
        await self._finish(run, "cancelled", error={"message": "the client went away", "type": "cancelled",
                                                    "param": None, "code": "cancelled"})

    # --- timers ----------------------------------------------------------------------------------------------
    async def _renew(self) -> None:
        if not self.local:
            return
        try:
            verdicts = await self._db(self.store.renew, list(self.local), self.replica, now_s=self.wall())
        except StateUnavailable:
            self.store_failed_at = time.monotonic()
            raise
        for rid, verdict in verdicts.items():
            loc = self.local.get(rid)
            if loc is None or loc.task is None or verdict == "ok":
                continue
            if verdict == "lost":
                loc.budget.is_handed_off = True
            loc.task.cancel()

    async def _take_over(self) -> None:
        if self.is_draining:
            return
        if self.store_failed_at is not None and time.monotonic() - self.store_failed_at < self.store.lease_s:
            return
        for run in await self._db(self.store.claim, self.replica, now_s=self.wall(), running_here=list(self.local)):
            events = await self._db(self.store.events, run.id, after=0, now_s=self.wall())
            checkpoints = tuple(e for e in events if e.get("type") == "checkpoint")
            budget = self.runtime.resumed_budget(run.principal, "task-" + run.id.removeprefix("run-"), run.hold,
                                                 is_degraded=run.degraded)
            lost = await self._lost_spend(budget, checkpoints)
            log.info("run %s taken over from a lapsed lease (%d checkpoint(s))", run.id, len(checkpoints))
            self.runtime.metrics.errors.labels("run_taken_over").inc()
            self.spawn(run, budget, resume=Resume(checkpoints, lost=lost) if checkpoints or lost else None)

    @staticmethod
    async def _lost_spend(budget: TaskBudget, checkpoints: tuple[dict[str, Any], ...]) -> dict[str, int] | None:
        """What the ledger charged the task beyond what its last checkpoint accounts for: calls the dead replica
        settled but never recorded. None when nothing (or no ledger)."""
        spent = await budget.task_spent()
        if spent is None:
            return None
        ctx = checkpoints[-1]["state"]["ctx"] if checkpoints else {}
        cost = spent.micro_usd - int(ctx.get("cost_micro_usd", 0))
        tokens = spent.tokens - int(ctx.get("tokens_used", 0))
        return {"cost_micro_usd": max(cost, 0), "tokens": max(tokens, 0)} if cost > 0 or tokens > 0 else None

    async def _prune(self) -> None:
        """SQLite keeps expired records until they are deleted (Redis expires its own keys)."""
        ledger = self.runtime.ledger
        for store in (self.store.store, ledger.store if ledger is not None else None):
            prune = getattr(store, "prune", None)
            if prune is not None:
                await self._db(prune, now_s=self.wall())

    # --- reads and cancellation ------------------------------------------------------------------------------
    async def get(self, run_id: str, principal: Principal) -> RunRecord | None:
        return await self._db(self.store.get, run_id, principal, now_s=self.wall())

    async def steps(self, run: RunRecord) -> list[dict[str, Any]]:
        """The steps recorded so far (a finished run carries its own in the result)."""
        if run.result is not None and "steps" in run.result:
            return list(run.result["steps"])
        events = await self._db(self.store.events, run.id, after=0, now_s=self.wall())
        return [e["step"] for e in events if e.get("type") == "step"]

    async def events(self, run_id: str, *, after: int) -> list[dict[str, Any]]:
        return await self._db(self.store.events, run_id, after=after, now_s=self.wall())

    async def cancel(self, run_id: str, principal: Principal, *, wait_s: float = 5.0) -> RunRecord | None:
        run = await self._db(self.store.request_cancel, run_id, principal, now_s=self.wall())
        if run is None or run.is_done:
            return run
        loc = self.local.get(run_id)
        if loc is not None and loc.task is not None:
            loc.task.cancel()
        return await self.wait(run_id, principal, wait_s=wait_s) or run

    async def wait(self, run_id: str, principal: Principal, *, wait_s: float, every_s: float = 0.25
                   ) -> RunRecord | None:
        """The run once it is done (polling the store), or as it is when `wait_s` runs out."""
        give_up = time.monotonic() + wait_s
        while True:
            run = await self.get(run_id, principal)
            if run is None or run.is_done or time.monotonic() >= give_up:
                return run
            await asyncio.sleep(every_s)
