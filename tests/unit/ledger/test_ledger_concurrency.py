"""Racing reservations never overspend one small budget: threads in one process and separate processes (each
opening its own store, as replicas do), on both backends. Every reservation settles at its estimate, so the
arithmetic is exact: floor(limit / cost) reservations succeed, and the rest are refused."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import threading


import pytest

from agentfleet.errors import BudgetExhausted
from agentfleet.ledger import Account, Amount, Ledger, Limits
from agentfleet.state.redis import RedisStore
from agentfleet.state.sqlite import SqliteStore

T0 = dt.datetime(2025, 3, 10, 12, 0, tzinfo=dt.timezone.utc)
LIMIT_TOKENS, LIMIT_MICRO = 1000, 10_000
COST = Amount(30, 290)  # tokens bind first: floor(1000/30) = 33 < floor(10000/290) = 34
ACCOUNT = Account("team-a/race", Limits(window="day", tokens=LIMIT_TOKENS, micro_usd=LIMIT_MICRO))
WORKERS, ATTEMPTS = 4, 15  # 60 attempts for room of 33


def _race(ledger: Ledger, worker: int) -> tuple[int, int]:
    ok = refused = 0
    for i in range(ATTEMPTS):
        try:
            r = ledger.reserve(ACCOUNT, COST, task_id=f"w{worker}-{i}", now=T0)
        except BudgetExhausted:
            refused += 1
            continue
        ledger.settle(r, COST, now=T0)
        ok += 1
    return ok, refused


def _open(spec: object) -> Ledger:
    if isinstance(spec, str):
        return Ledger(SqliteStore(spec))
    url, prefix = spec  # type: ignore[misc]
    return Ledger(RedisStore(url, prefix=prefix))


def _process_worker(spec: object, worker: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    ledger = _open(spec)
    try:
        out.put(_race(ledger, worker))
    finally:
        ledger.close()


def _check(results: list[tuple[int, int]], ledger: Ledger) -> None:
    ok = sum(r[0] for r in results)
    refused = sum(r[1] for r in results)
    usage = ledger.usage(ACCOUNT, now=T0)
    assert usage.spent.tokens <= LIMIT_TOKENS and usage.spent.micro_usd <= LIMIT_MICRO
    assert (ok, refused) == (LIMIT_TOKENS // COST.tokens, WORKERS * ATTEMPTS - LIMIT_TOKENS // COST.tokens)
    assert usage.spent == Amount(ok * COST.tokens, ok * COST.micro_usd)
    assert usage.reserved == Amount()


def test_threads_racing_never_overspend(store_factory) -> None:  # type: ignore[no-untyped-def]
    results: list[tuple[int, int]] = []
    lock = threading.Lock()
    ledger = Ledger(store_factory())

    def run(worker: int) -> None:
        res = _race(ledger, worker)
        with lock:
            results.append(res)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == WORKERS
    _check(results, ledger)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_processes_racing_never_overspend(store_factory) -> None:  # type: ignore[no-untyped-def]
    ledger = Ledger(store_factory())  # creates the schema / checks the server before the race
    spec = store_factory.spec
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(spec, w, out)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    _check(results, ledger)




def test_sqlite_threads_of_one_process_take_turns_without_the_busy_handler(tmp_path):
    """Writers of one process queue on the store's own lock, not in SQLite's busy handler (which sleeps 1–100 ms
    per retry and put 100 ms on the runtime's p99): with no busy timeout at all, no thread ever sees a locked
    database."""
    store = SqliteStore(tmp_path / "turns.db", busy_timeout_s=0)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        def fn(txn):  # type: ignore[no-untyped-def]
            seen = txn.get("counter") or {"n": 0}
            txn.put(f"w{n}-{seen['n']}", {"v": n}, ttl_s=None)
            txn.put("counter", {"n": seen["n"] + 1}, ttl_s=None)

        try:
            for _ in range(200):
                store.transact(fn, now_s=0.0)
        except BaseException as e:  # sqlite3.OperationalError: database is locked
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.transact(lambda txn: txn.get("counter"), now_s=0.0) == {"n": 8 * 200}
    store.close()
