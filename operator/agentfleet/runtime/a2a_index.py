"""Which A2A tasks each principal started, for ListTasks (A2A 1.0): one sorted set per principal in the run store's
state store (`a2a-tasks:<digest of tenant, groups and user>`, run id scored by its creation time), written when
a2a_server admits a new task. The run records stay the truth: listing reads each indexed run as that principal
(RunStore.get: someone else's or an expired one reads as none) and drops what no longer exists, and adding drops
entries older than the runs' retention, so the set holds at most a retention window of tasks. Blocking (one
store transaction per call, plus a read per run listed): call from a worker thread."""

from __future__ import annotations

import hashlib
import json

from ..retrieval.filters import Principal
from ..state.txn import Txn
from .runs import RETAIN_S, RunRecord, RunStore, principal_wire

__all__ = ["A2ATaskIndex", "MAX_LISTED"]

MAX_LISTED = 1000  # the newest this many tasks of a principal are listed; older ones are still GetTask-able


def _index(principal: Principal) -> str:
    wire = json.dumps(principal_wire(principal), sort_keys=True, separators=(",", ":"))
    return "a2a-tasks:" + hashlib.sha256(wire.encode()).hexdigest()[:32]


class A2ATaskIndex:
    def __init__(self, runs: RunStore):
        self.runs = runs

    def add(self, principal: Principal, run_id: str, *, created_s: float, now_s: float) -> None:
        index = _index(principal)

        def fn(txn: Txn) -> None:
            for old in txn.due(index, now_s - RETAIN_S):
                txn.unschedule(index, old)
            txn.schedule(index, run_id, created_s)

        self.runs.store.transact(fn, now_s=now_s)

    def runs_of(self, principal: Principal, *, kind: str, now_s: float) -> list[RunRecord]:
        """The principal's indexed runs of `kind` that still exist, newest created first."""
        index = _index(principal)
        # Another replica's clock may run a little ahead of this one: read past now.
        ids = self.runs.store.transact(lambda txn: txn.due(index, now_s + RETAIN_S), now_s=now_s)[-MAX_LISTED:]
        found, gone = [], []
        for run_id in reversed(ids):
            run = self.runs.get(run_id, principal, now_s=now_s)
            if run is None:
                gone.append(run_id)
            elif run.kind == kind:
                found.append(run)
        if gone:
            def drop(txn: Txn) -> None:
                for run_id in gone:
                    txn.unschedule(index, run_id)

            self.runs.store.transact(drop, now_s=now_s)
        return found
