"""Per-run fair queueing at saturation (`agentfleet router --fair-queue N`): at most N requests from this router in
flight on one replica (set N to the engine's max_num_seqs, divided among the router replicas); past that, requests
wait here instead of in the engine's first-come queue, and a freed slot goes to the waiter whose run (session, else
prompt prefix) has had the fewest calls served so far, ties by arrival, unless a waiter has waited `max_wait_s`:
then the longest-waiting goes first. Two bands: a request marked low priority (`x-agentfleet-priority: low`, which
the AgentApp runtime sends for a task its Budget degraded near the limit, or vLLM's own body field `priority` above
0) gets a freed slot only when no normal request waits for it, as in vLLM's priority scheduling; a caller can only
lower its own priority, never raise it. A task 25 calls in thus yields to one 3 calls in, so a long task cannot starve
short ones behind it, and the bound keeps the short ones from starving it in turn (without it, on the routing bench
at 64 tasks, short tasks' median fell from 7.8 to 5.9 s but long tasks' p99 rose from 22 to 59 s). Below
saturation nothing waits and the order is unchanged. Off (N = 0) by default. Pure asyncio, no I/O: the proxy edge
acquires before it sends and releases when the answer is done."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["FairGate", "ORDERS", "SERVED_TABLE_SIZE", "NORMAL", "LOW"]

SERVED_TABLE_SIZE = 100_000  # runs whose served calls are remembered (least recently served forgotten first)
DEFAULT_MAX_WAIT_S = 2.0
ORDERS = ("least-served", "most-served")  # who gets a freed slot: the run with the fewest calls served, or the most
NORMAL, LOW = 0, 1  # priority bands: a freed slot goes to the lowest band with a waiter


class FairGate:
    def __init__(self, limit: int, *, max_wait_s: float = DEFAULT_MAX_WAIT_S, order: str = "least-served",
                 clock: Callable[[], float] = time.monotonic):
        if limit < 1:
            raise ValueError("the fair queue needs a limit of at least 1 request in flight per replica")
        if order not in ORDERS:
            raise ValueError(f"fair queue order must be one of {', '.join(ORDERS)}, not {order!r}")
        self.limit, self.max_wait_s, self.clock = limit, max_wait_s, clock
        self._sign = 1 if order == "least-served" else -1
        self.waited = 0  # requests that had to wait for a slot (a counter for /metrics)
        self.low_band = 0  # requests that came in the low band (a counter for /metrics)
        self._in_flight: dict[str, int] = {}
        # per replica: (band, served calls of its run, arrival number, when it started waiting, its slot)
        self._waiting: dict[str, list[tuple[int, int, int, float, asyncio.Future[None]]]] = {}
        self._served: OrderedDict[str, int] = OrderedDict()
        self._arrival = itertools.count()

    def served(self, run: str | None) -> int:
        return self._served.get(run, 0) if run is not None else 0

    def waiting(self, replica: str) -> int:
        return sum(1 for *_, f in self._waiting.get(replica, ()) if not f.done())

    async def acquire(self, replica: str, run: str | None, band: int = NORMAL) -> None:
        """Returns once the request holds one of the replica's slots; call release() exactly once after."""
        if band not in (NORMAL, LOW):
            raise ValueError(f"unknown priority band {band!r}")
        self.low_band += band == LOW
        queue = self._waiting.setdefault(replica, [])
        if self._in_flight.get(replica, 0) < self.limit and not any(not f.done() for *_, f in queue):
            self._in_flight[replica] = self._in_flight.get(replica, 0) + 1
            return
        self.waited += 1
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append((band, self.served(run), next(self._arrival), self.clock(), slot))
        try:
            await slot
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled():  # handed the slot as the client left: pass it on
                self.release(replica)
            raise

    def release(self, replica: str) -> None:
        """The request is done: its slot goes to a waiter of the lowest band that has one; within the band, to the
        longest-waiting one past max_wait_s, else to the least-served one; with nobody waiting, back to the
        replica. (The queue holds at most this router's concurrent requests for one replica: a scan is cheaper
        than keeping two orders.)"""
        queue = self._waiting.get(replica)
        if queue:
            queue[:] = [w for w in queue if not w[4].done()]  # waiters whose client left are dropped
        if queue:
            band = min(w[0] for w in queue)
            due = self.clock() - self.max_wait_s
            candidates = [w for w in queue if w[0] == band]
            overdue = [w for w in candidates if w[3] <= due]
            pick = (min(overdue, key=lambda w: w[2]) if overdue
                    else min(candidates, key=lambda w: (self._sign * w[1], w[2])))
            queue.remove(pick)
            pick[4].set_result(None)
            return
        self._in_flight[replica] = max(0, self._in_flight.get(replica, 0) - 1)

    def note_served(self, run: str | None) -> None:
        if run is None:
            return
        self._served[run] = self._served.pop(run, 0) + 1
        if len(self._served) > SERVED_TABLE_SIZE:
            self._served.popitem(last=False)

    def forget(self, run: str) -> None:
        """The run ended (POST /v1/sessions/end)."""
        self._served.pop(run, None)
