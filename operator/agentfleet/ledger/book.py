"""The reservation rules over a whole task tree, written once for every backend. A backend (agentfleet.state) only supplies an
atomic transaction over JSON records (`Store.transact`); everything here reads records, decides and writes them
back inside that transaction, so SQLite and Redis behave identically by construction.

The model: a *hold* is a reservation. A root hold draws on two buckets, the Budget's current window and the task
(per-task caps); a child hold (a model call of a task, a sub-agent's slice) draws only on its parent's free room,
so a sub-agent can never spend more than its parent reserved. Every bucket and hold keeps integers:

    bucket: spent (settled actual spend), out (the unspent remainder of its open root holds)
    hold:   amount (reserved), used (actual spend settled in its subtree), kids (unspent remainder of open children)
    remainder(h) = max(amount - used, 0)      free(h) = amount - used - kids

Admission: spent + out + estimate <= limit. Settling charges the actual spend up the chain to the buckets and
closes the hold; its unspent remainder returns to its parent (or the buckets). Closing a hold ends its open
descendants with it: later settles of those still record their spend (money spent is never forgotten) but draw
on nothing. An open root past its expiry (a replica that died mid-task) is reaped by the next reservation on its
account. A reservation belongs to the window it was taken in, so spend that straddles a roll-over is counted in
the window that admitted it."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from ..errors import AgentfleetError, BudgetExhausted, ReservationClosed, ReservationNotFound
from ..status import window_bounds
from ..state.txn import Store, Txn
from .accounts import Account, Limits
from .money import Amount, micro_to_usd

__all__ = ["Txn", "Store", "Reservation", "Settlement", "Usage", "Ledger", "OPEN", "SETTLED", "RELEASED",
           "EXPIRED", "DEFAULT_HOLD_TTL_S", "RETAIN_S"]

T = TypeVar("T")

OPEN, SETTLED, RELEASED, EXPIRED = "open", "settled", "released", "expired"
# A root hold outlives its task only when its replica died; the runtime passes the task's deadline plus a margin.
DEFAULT_HOLD_TTL_S = 900.0
# Closed holds and finished tasks' counters are kept this long (for late settles and audit), then dropped.
RETAIN_S = 7 * 86400.0


@dataclass(frozen=True)
class Reservation:
    id: str
    account: str
    task_id: str
    parent_id: str | None
    depth: int
    amount: Amount
    window_start: str | None
    is_degraded: bool = False


@dataclass(frozen=True)
class Settlement:
    """`charged`: this settle's own spend; `refunded`: the hold's unspent rest (after its subtree's spend), now
    free again; `overrun`: how far the subtree spent past the hold (an estimate that was too low)."""

    charged: Amount
    refunded: Amount
    overrun: Amount
    is_late: bool = False
    """True when the hold had already been closed with an ancestor or reaped: spend recorded, nothing refunded."""


@dataclass(frozen=True)
class Usage:
    """An account's current window. The runtime writes `status_patch()` into its Budget's status: it alone owns
    status.spentTokens and status.spentUsd; the operator derives windowStart/End, remaining* and Exhausted."""

    account: str
    window_start: str | None
    window_end: str | None
    spent: Amount
    reserved: Amount
    limits: Limits

    @property
    def remaining(self) -> Amount:
        """What a new reservation may still take; an unlimited axis reports -1."""
        used = self.spent + self.reserved
        return Amount(-1 if self.limits.tokens is None else max(self.limits.tokens - used.tokens, 0),
                      -1 if self.limits.micro_usd is None else max(self.limits.micro_usd - used.micro_usd, 0))

    def status_patch(self) -> dict[str, Any]:
        return {"spentTokens": self.spent.tokens, "spentUsd": micro_to_usd(self.spent.micro_usd)}


# --- records ------------------------------------------------------------------------------------------------

@dataclass
class _Hold:
    id: str
    account: str
    window: str
    window_end: str | None
    task: str
    parent: str | None
    root: str
    depth: int
    amount: Amount
    used: Amount = Amount()
    kids: Amount = Amount()
    state: str = OPEN
    expires_s: float | None = None
    degraded: bool = False

    def remainder(self) -> Amount:
        return (self.amount - self.used).floor0()

    def free(self) -> Amount:
        return (self.amount - self.used - self.kids).floor0()

    def wire(self) -> dict[str, Any]:
        return {"id": self.id, "account": self.account, "window": self.window, "window_end": self.window_end,
                "task": self.task, "parent": self.parent, "root": self.root, "depth": self.depth,
                "amount": self.amount.wire(), "used": self.used.wire(), "kids": self.kids.wire(),
                "state": self.state, "expires_s": self.expires_s, "degraded": self.degraded}

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> _Hold:
        return cls(id=d["id"], account=d["account"], window=d["window"], window_end=d.get("window_end"),
                   task=d["task"], parent=d.get("parent"), root=d["root"], depth=int(d["depth"]),
                   amount=Amount.from_wire(d["amount"]), used=Amount.from_wire(d["used"]),
                   kids=Amount.from_wire(d["kids"]), state=d["state"], expires_s=d.get("expires_s"),
                   degraded=bool(d.get("degraded")))

    def reservation(self) -> Reservation:
        return Reservation(id=self.id, account=self.account, task_id=self.task, parent_id=self.parent,
                           depth=self.depth, amount=self.amount,
                           window_start=None if self.window == "total" else self.window,
                           is_degraded=self.degraded)


@dataclass
class _Bucket:
    spent: Amount = Amount()
    out: Amount = Amount()
    ttl_s: float | None = None

    def wire(self) -> dict[str, Any]:
        return {"spent": self.spent.wire(), "out": self.out.wire()}


def _hold_key(hold_id: str) -> str:
    return f"hold:{hold_id}"


def _window_key(account: str, window: str) -> str:
    return f"win:{account}:{window}"


def _open_index(account: str) -> str:
    """The account's open root holds by expiry: the reaper's index."""
    return f"open:{account}"


def _task_key(account: str, task: str) -> str:
    return f"task:{account}:{task}"


def _iso(t: dt.datetime | None) -> str | None:
    return None if t is None else t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _utc(now: dt.datetime) -> dt.datetime:
    return now.replace(tzinfo=dt.timezone.utc) if now.tzinfo is None else now.astimezone(dt.timezone.utc)


class _Session:
    """Read-your-writes over one Txn: records are loaded once, changed in memory and flushed at the end."""

    def __init__(self, txn: Txn, now_s: float):
        self.txn = txn
        self.now_s = now_s
        self.holds: dict[str, _Hold] = {}
        self.buckets: dict[str, _Bucket] = {}
        self.dirty: set[str] = set()

    def hold(self, hold_id: str) -> _Hold:
        if hold_id not in self.holds:
            raw = self.txn.get(_hold_key(hold_id))
            if raw is None:
                raise ReservationNotFound(f"reservation {hold_id} not found (settled long ago, or never taken)")
            self.holds[hold_id] = _Hold.from_wire(raw)
        return self.holds[hold_id]

    def bucket(self, key: str, *, ttl_s: float | None) -> _Bucket:
        if key not in self.buckets:
            raw = self.txn.get(key) or {"spent": [0, 0], "out": [0, 0]}
            self.buckets[key] = _Bucket(Amount.from_wire(raw["spent"]), Amount.from_wire(raw["out"]))
        self.buckets[key].ttl_s = ttl_s
        return self.buckets[key]

    def hold_buckets(self, h: _Hold) -> tuple[_Bucket, _Bucket]:
        return (self.bucket(_window_key(h.account, h.window), ttl_s=self._window_ttl(h.window_end)),
                self.bucket(_task_key(h.account, h.task), ttl_s=RETAIN_S))

    def _window_ttl(self, window_end: str | None) -> float | None:
        if window_end is None:
            return None
        end = dt.datetime.strptime(window_end, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)
        return max(end.timestamp() - self.now_s, 0.0) + RETAIN_S

    def ancestors(self, h: _Hold) -> list[_Hold]:
        chain, cur = [], h
        while cur.parent is not None:
            cur = self.hold(cur.parent)
            chain.append(cur)
        return chain

    def touch(self, *holds: _Hold) -> None:
        for h in holds:
            self.holds[h.id] = h
            self.dirty.add(h.id)

    def flush(self) -> None:
        for hold_id in sorted(self.dirty):
            h = self.holds[hold_id]
            self.txn.put(_hold_key(hold_id), h.wire(), ttl_s=None if h.state == OPEN else RETAIN_S)
        for key, b in sorted(self.buckets.items()):
            self.txn.put(key, b.wire(), ttl_s=b.ttl_s)


# --- the rules ----------------------------------------------------------------------------------------------

def _close(s: _Session, h: _Hold, actual: Amount, state: str) -> Settlement:
    chain = s.ancestors(h)
    live = h.state == OPEN and all(a.state == OPEN for a in chain)
    win, task = s.hold_buckets(h)
    old = h.remainder()
    if live:
        if not chain:
            win.out = (win.out - old).floor0()
            task.out = (task.out - old).floor0()
            s.txn.unschedule(_open_index(h.account), h.id)
        else:
            chain[0].kids = (chain[0].kids - old).floor0()
            for i, anc in enumerate(chain):
                before = anc.remainder()
                anc.used += actual
                delta = anc.remainder() - before
                if i + 1 < len(chain):
                    chain[i + 1].kids = (chain[i + 1].kids + delta).floor0()
                else:
                    win.out = (win.out + delta).floor0()
                    task.out = (task.out + delta).floor0()
            s.touch(*chain)
    h.used += actual
    win.spent += actual
    task.spent += actual
    h.state = state
    s.touch(h)
    if not live:
        return Settlement(charged=actual, refunded=Amount(), overrun=Amount(), is_late=True)
    # Measured on the whole subtree: what its settled children spent counts against this hold too.
    return Settlement(charged=actual, refunded=h.remainder(), overrun=(h.used - h.amount).floor0())


def _reap(s: _Session, account: str) -> None:
    for hold_id in s.txn.due(_open_index(account), s.now_s):
        try:
            h = s.hold(hold_id)
        except ReservationNotFound:
            s.txn.unschedule(_open_index(account), hold_id)
            continue
        if h.state == OPEN:
            _close(s, h, Amount(), EXPIRED)
        else:
            s.txn.unschedule(_open_index(account), hold_id)


def _money(micro: int) -> str:
    return f"${micro_to_usd(micro):.4f}"


def _exhausted_window(account: Account, b: _Bucket, estimate: Amount, *, start: str | None, end: str | None,
                      now_s: float) -> BudgetExhausted | None:
    lim = account.limits
    committed = b.spent + b.out
    period = "in total" if lim.window == "total" else f"this {lim.window}"
    resets = "" if end is None else f"; resets at {end}"
    retry = None
    if end is not None:
        retry = max(dt.datetime.strptime(end, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc).timestamp()
                    - now_s, 0.0)
    if lim.micro_usd is not None and committed.micro_usd + estimate.micro_usd > lim.micro_usd:
        return BudgetExhausted(account.key, "window_cost",
                               f"cost limit {_money(lim.micro_usd)} reached {period} "
                               f"({_money(b.spent.micro_usd)} spent, {_money(b.out.micro_usd)} reserved; this call "
                               f"needs up to {_money(estimate.micro_usd)}){resets}", retry_after_s=retry)
    if lim.tokens is not None and committed.tokens + estimate.tokens > lim.tokens:
        return BudgetExhausted(account.key, "window_tokens",
                               f"token limit {lim.tokens} reached {period} ({b.spent.tokens} spent, "
                               f"{b.out.tokens} reserved; this call needs up to {estimate.tokens}){resets}",
                               retry_after_s=retry)
    return None


def _near_limit(account: Account, b: _Bucket, estimate: Amount) -> bool:
    """Whether this reservation takes the window past the Budget's degradeAtPercent of a limit."""
    lim = account.limits
    if lim.degrade_at_percent is None:
        return False
    after = b.spent + b.out + estimate
    return any(limit is not None and used * 100 > limit * lim.degrade_at_percent
               for used, limit in ((after.micro_usd, lim.micro_usd), (after.tokens, lim.tokens)))


def _exhausted_task(account: Account, b: _Bucket, estimate: Amount, task: str) -> BudgetExhausted | None:
    lim = account.limits
    committed = b.spent + b.out
    if lim.task_micro_usd is not None and committed.micro_usd + estimate.micro_usd > lim.task_micro_usd:
        return BudgetExhausted(account.key, "task_cost",
                               f"task {task} would exceed spec.perTask.maxCostUsd ({_money(lim.task_micro_usd)}): "
                               f"{_money(committed.micro_usd)} spent or reserved, this call needs up to "
                               f"{_money(estimate.micro_usd)}")
    if lim.task_tokens is not None and committed.tokens + estimate.tokens > lim.task_tokens:
        return BudgetExhausted(account.key, "task_tokens",
                               f"task {task} would exceed spec.perTask.maxTokens ({lim.task_tokens}): "
                               f"{committed.tokens} spent or reserved, this call needs up to {estimate.tokens}")
    return None


def _reserve_root(s: _Session, account: Account, estimate: Amount, *, task_id: str, now: dt.datetime,
                  ttl_s: float, degraded: bool, hold_id: str, degraded_estimate: Amount | None = None
                  ) -> Reservation:
    start, end = window_bounds(account.limits.window, now)
    window, window_end = _iso(start) or "total", _iso(end)
    _reap(s, account.key)
    h = _Hold(id=hold_id, account=account.key, window=window, window_end=window_end, task=task_id, parent=None,
              root=hold_id, depth=0, amount=estimate, expires_s=s.now_s + ttl_s, degraded=degraded)
    win, task = s.hold_buckets(h)
    err = _exhausted_task(account, task, estimate, task_id)
    if err is None and not degraded:
        # Past the line a task runs on the small model: the window must hold that model's bound, not the large
        # one's, so the 429 comes when the small bound no longer fits.
        near = _near_limit(account, win, estimate)
        bound = degraded_estimate if near and degraded_estimate is not None else estimate
        err = _exhausted_window(account, win, bound, start=_iso(start), end=window_end, now_s=s.now_s)
        h.degraded = err is None and near
    if err is not None:
        raise err
    if h.degraded and degraded_estimate is not None:
        h.amount = degraded_estimate  # a degraded task runs on the small model: it holds that model's bound
    win.out += h.amount
    task.out += h.amount
    s.txn.schedule(_open_index(account.key), hold_id, s.now_s + ttl_s)
    s.touch(h)
    return h.reservation()


def _reserve_child(s: _Session, account: Account, estimate: Amount | None, *, parent_id: str,
                   share: float | None, hold_id: str) -> Reservation:
    parent = s.hold(parent_id)
    if parent.account != account.key:
        raise ReservationClosed(f"reservation {parent_id} belongs to account {parent.account}, not {account.key}")
    chain = [parent, *s.ancestors(parent)]
    root = chain[-1]
    if root.state == OPEN and root.expires_s is not None and root.expires_s <= s.now_s:
        _close(s, root, Amount(), EXPIRED)
    closed = next((a for a in chain if a.state != OPEN), None)
    if closed is not None:
        raise ReservationClosed(f"reservation {parent_id} can no longer be drawn on: {closed.id} is {closed.state}")
    free = parent.free()
    amount = estimate
    if share is not None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        slice_ = free.share(share)
        amount = slice_ if estimate is None else Amount(min(estimate.tokens, slice_.tokens),
                                                       min(estimate.micro_usd, slice_.micro_usd))
        if amount.tokens <= 0 or (parent.amount.micro_usd > 0 and amount.micro_usd <= 0):
            raise BudgetExhausted(account.key, "parent",
                                  f"reservation {parent_id} has nothing left to share ({free.tokens} tokens, "
                                  f"{_money(free.micro_usd)} free)")
    if amount is None:
        raise ValueError("a child reservation needs an estimate, a share or both")
    if not amount.fits_in(free):
        raise BudgetExhausted(account.key, "parent",
                              f"this call needs up to {amount.tokens} tokens / {_money(amount.micro_usd)} but "
                              f"reservation {parent_id} has {free.tokens} tokens / {_money(free.micro_usd)} free")
    h = _Hold(id=hold_id, account=account.key, window=parent.window, window_end=parent.window_end,
              task=parent.task, parent=parent.id, root=root.id, depth=parent.depth + 1, amount=amount,
              degraded=parent.degraded)
    parent.kids += amount
    s.touch(parent, h)
    return h.reservation()


def _new_id() -> str:
    return "r" + uuid.uuid4().hex


class Ledger:
    """Budget reservations: reserve before a model call, settle (or release) after. Every method is one atomic
    transaction of the store and takes `now` (tests move time instead of sleeping). The methods block on the
    store: call them from `asyncio.to_thread` in async code."""

    def __init__(self, store: Store, *, hold_ttl_s: float = DEFAULT_HOLD_TTL_S):
        self.store = store
        self.hold_ttl_s = hold_ttl_s

    def _run(self, op: Callable[[_Session], T], now: dt.datetime) -> T:
        now_s = _utc(now).timestamp()

        def fn(txn: Txn) -> Any:
            s = _Session(txn, now_s)
            try:
                out: Any = op(s)
            except AgentfleetError as e:  # commit what was decided (reaped holds) and raise after
                out = e
            s.flush()
            return out

        result = self.store.transact(fn, now_s=now_s)
        if isinstance(result, BaseException):
            raise result
        return result  # type: ignore[no-any-return]

    def reserve(self, account: Account, estimate: Amount | None, *, task_id: str, now: dt.datetime,
                parent: Reservation | str | None = None, share: float | None = None, degraded: bool = False,
                ttl_s: float | None = None, degraded_estimate: Amount | None = None) -> Reservation:
        """Hold `estimate` for one call or one task. Without `parent` it draws on the account's window and the
        task's caps (raises BudgetExhausted naming which); `degraded` admits it past the window limit (onExhausted:
        degrade) but never past a per-task cap; a root that is degraded (so, or past the limits' degradeAtPercent)
        holds `degraded_estimate` (the small model's bound) when given. With `parent` it draws on the parent's free
        room instead: `share` takes that fraction of it (a sub-agent's budgetShare), capped by `estimate` when both
        are given."""
        hold_id = _new_id()
        if parent is None:
            if estimate is None or share is not None:
                raise ValueError("a root reservation takes an estimate and no share")
            est = estimate.floor0()
            small = None if degraded_estimate is None else Amount(min(degraded_estimate.tokens, est.tokens),
                                                                  min(degraded_estimate.micro_usd, est.micro_usd))
            ttl = self.hold_ttl_s if ttl_s is None else ttl_s
            return self._run(lambda s: _reserve_root(s, account, est, task_id=task_id, now=now, ttl_s=ttl,
                                                     degraded=degraded, hold_id=hold_id,
                                                     degraded_estimate=small), now)
        parent_id = parent if isinstance(parent, str) else parent.id
        est_child = None if estimate is None else estimate.floor0()
        return self._run(lambda s: _reserve_child(s, account, est_child, parent_id=parent_id, share=share,
                                                  hold_id=hold_id), now)

    def settle(self, reservation: Reservation | str, actual: Amount, *, now: dt.datetime) -> Settlement:
        """Charge the actual spend and close the hold; the unspent rest returns to its parent or the window."""
        hold_id = reservation if isinstance(reservation, str) else reservation.id

        def op(s: _Session) -> Settlement:
            h = s.hold(hold_id)
            if h.state in (SETTLED, RELEASED):
                raise ReservationClosed(f"reservation {hold_id} is already {h.state}")
            return _close(s, h, actual.floor0(), SETTLED)

        return self._run(op, now)

    def release(self, reservation: Reservation | str, *, now: dt.datetime) -> None:
        """Give the whole hold back (the call failed before spending, or the client went away). Releasing a
        closed hold does nothing, so a cancellation path may call it unconditionally."""
        hold_id = reservation if isinstance(reservation, str) else reservation.id

        def op(s: _Session) -> None:
            try:
                h = s.hold(hold_id)
            except ReservationNotFound:
                return None
            if h.state == OPEN:
                _close(s, h, Amount(), RELEASED)
            return None

        self._run(op, now)

    def task_spent(self, account: Account, task_id: str, *, now: dt.datetime) -> Amount:
        """What the task's settled calls have spent so far (every attempt, a lost one's included)."""
        def op(s: _Session) -> Amount:
            return s.bucket(_task_key(account.key, task_id), ttl_s=RETAIN_S).spent

        return self._run(op, now)

    def usage(self, account: Account, *, now: dt.datetime) -> Usage:
        """The account's current window: settled spend and open holds (expired ones reaped first)."""
        start, end = window_bounds(account.limits.window, now)

        def op(s: _Session) -> Usage:
            _reap(s, account.key)
            b = s.bucket(_window_key(account.key, _iso(start) or "total"),
                         ttl_s=None if end is None else s._window_ttl(_iso(end)))
            return Usage(account.key, _iso(start), _iso(end), b.spent, b.out, account.limits)

        return self._run(op, now)

    def close(self) -> None:
        self.store.close()
