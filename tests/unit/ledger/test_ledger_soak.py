"""The ledger's size stays bounded: thousands of tasks across simulated days (time is a parameter), each a task
reservation with one model call settled inside it. SQLite keeps expired records until `prune` (which the runtime
calls hourly) deletes them, so its record count after a month must be what the retention window holds, not what the
month wrote; Redis expires keys itself, so every key it holds must carry an expiry (or be an index that empties)."""

from __future__ import annotations

import datetime as dt

from agentfleet.ledger import Account, Amount, Ledger, Limits
from agentfleet.ledger.book import RETAIN_S

T0 = dt.datetime(2025, 3, 1, 0, 0, tzinfo=dt.timezone.utc)
DAYS = 30
ACCOUNTS = [Account(f"team-{i}/app", Limits(window="day", tokens=10**9, micro_usd=10**12)) for i in range(3)]


def _task(ledger: Ledger, account: Account, n: int, now: dt.datetime) -> None:
    root = ledger.reserve(account, Amount(4000, 40_000), task_id=f"task-{n}", now=now)
    call = ledger.reserve(account, Amount(1000, 10_000), task_id=f"task-{n}", now=now, parent=root)
    ledger.settle(call, Amount(600, 6_000), now=now)
    ledger.settle(root, Amount(), now=now)


def _soak(ledger: Ledger, tasks: int, on_day_end) -> None:  # type: ignore[no-untyped-def]
    per_day = tasks // DAYS
    n = 0
    for day in range(DAYS):
        for i in range(per_day):
            now = T0 + dt.timedelta(days=day, seconds=i * 86400 / per_day)
            _task(ledger, ACCOUNTS[n % len(ACCOUNTS)], n, now)
            n += 1
        on_day_end(day, T0 + dt.timedelta(days=day + 1))


def test_sqlite_ledger_stays_bounded_over_a_month_of_tasks(tmp_path) -> None:
    from agentfleet.state.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "ledger.db")
    ledger = Ledger(store, hold_ttl_s=600)
    counts: dict[int, int] = {}

    def day_end(day: int, now: dt.datetime) -> None:
        store.prune(now_s=now.timestamp())  # the runtime's hourly prune, once a simulated day here
        counts[day] = store._conn().execute("SELECT count(*) FROM records").fetchone()[0]

    tasks = 10_020
    _soak(ledger, tasks, day_end)
    per_day = tasks // DAYS
    retained_days = RETAIN_S / 86400 + 2  # a window's bucket lives its day plus retention; a day's slack
    per_task = 3  # the two holds and the task's bucket
    bound = int(retained_days * per_day * per_task + retained_days * len(ACCOUNTS) * 2)
    assert counts[DAYS - 1] <= bound, counts
    # Flat once the retention window is full: the last day holds no more than the tenth did.
    assert counts[DAYS - 1] <= counts[9] * 1.05, counts
    # And far less than what was written (the unpruned store kept ~3 records per task: 1,501 of 1,507 expired).
    assert counts[DAYS - 1] < tasks * per_task / 3
    # Nothing the month settled is lost from what the retention keeps: the last day's spend is all there.
    usage = ledger.usage(ACCOUNTS[0], now=T0 + dt.timedelta(days=DAYS - 1, hours=23, minutes=59))
    last_day = sum(1 for n in range((DAYS - 1) * per_day, DAYS * per_day) if n % len(ACCOUNTS) == 0)
    assert usage.spent == Amount(600 * last_day, 6_000 * last_day)
    store.close()


def test_redis_ledger_keys_all_expire(redis_url) -> None:  # type: ignore[no-untyped-def]
    import uuid

    import redis

    from agentfleet.state.redis import RedisStore

    prefix = f"soak:{uuid.uuid4().hex}:"
    ledger = Ledger(RedisStore(redis_url, prefix=prefix), hold_ttl_s=600)
    _soak(ledger, 1_500, lambda day, now: None)
    r = redis.Redis.from_url(redis_url)
    keys = list(r.scan_iter(match=prefix + "*", count=1000))
    assert keys
    no_expiry = []
    for k in keys:
        if r.type(k) == b"zset":  # an index of open holds: every task closed, so it must be empty (or gone)
            assert r.zcard(k) == 0, k
            continue
        ttl = r.pttl(k)
        if ttl < 0 or ttl > (RETAIN_S + 2 * 86400) * 1000:
            no_expiry.append((k, ttl))
    assert no_expiry == []
    r.close()
    ledger.close()
