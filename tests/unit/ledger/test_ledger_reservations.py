"""The ledger's behaviour, the same suite on SQLite and on a real Redis (the `ledger` fixture is parametrized)."""

from __future__ import annotations

import datetime as dt

import pytest

from agentfleet.errors import BudgetExhausted, ReservationClosed, ReservationNotFound
from agentfleet.ledger import Account, Amount, Ledger, Limits

H = dt.timedelta(hours=1)


def acct(*, tokens: int | None = None, micro: int | None = None, window: str = "day", task_tokens: int | None = None,
         task_micro: int | None = None, key: str = "team-a/spend") -> Account:
    return Account(key, Limits(window=window, tokens=tokens, micro_usd=micro,  # type: ignore[arg-type]
                               task_tokens=task_tokens, task_micro_usd=task_micro))


def test_settle_charges_actual_and_refunds_the_rest(ledger: Ledger, t0: dt.datetime) -> None:
    a = acct(tokens=1000, micro=5_000)
    r = ledger.reserve(a, Amount(400, 2_000), task_id="t1", now=t0)
    u = ledger.usage(a, now=t0)
    assert (u.spent, u.reserved, u.remaining) == (Amount(), Amount(400, 2_000), Amount(600, 3_000))
    s = ledger.settle(r, Amount(150, 700), now=t0)
    assert (s.charged, s.refunded, s.overrun, s.is_late) == (Amount(150, 700), Amount(250, 1_300), Amount(), False)
    u = ledger.usage(a, now=t0)
    assert (u.spent, u.reserved, u.remaining) == (Amount(150, 700), Amount(), Amount(850, 4_300))
    assert u.status_patch() == {"spentTokens": 150, "spentUsd": 0.0007}
    assert (u.window_start, u.window_end) == ("2025-03-10T00:00:00Z", "2025-03-11T00:00:00Z")


@pytest.mark.parametrize("limits, estimate, what, retry_after_s", [
    ({"tokens": 100}, Amount(101, 0), "window_tokens", 12 * 3600),
    ({"micro": 1_000}, Amount(1, 1_001), "window_cost", 12 * 3600),
    ({"tokens": 100, "window": "total"}, Amount(101, 0), "window_tokens", None),
    ({"tokens": 10_000, "task_tokens": 50}, Amount(51, 0), "task_tokens", None),
    ({"micro": 10_000, "task_micro": 500}, Amount(1, 501), "task_cost", None),
], ids=["window-tokens", "window-cost", "total-window-never-resets", "task-tokens", "task-cost"])
def test_reservation_past_a_limit_is_refused_with_its_reason(ledger: Ledger, t0: dt.datetime, limits: dict,
                                                            estimate: Amount, what: str,
                                                            retry_after_s: float | None) -> None:
    a = acct(**limits)
    with pytest.raises(BudgetExhausted) as err:
        ledger.reserve(a, estimate, task_id="t1", now=t0)
    assert (err.value.what, err.value.budget, err.value.retry_after_s) == (what, "team-a/spend", retry_after_s)
    assert str(err.value).startswith("Budget team-a/spend: ")
    assert ledger.usage(a, now=t0).reserved == Amount()


def test_exhausted_message_names_spent_reserved_and_reset(ledger: Ledger, t0: dt.datetime) -> None:
    a = acct(micro=5_000_000)
    r = ledger.reserve(a, Amount(10, 4_000_000), task_id="t1", now=t0)
    ledger.settle(r, Amount(10, 3_000_000), now=t0)
    ledger.reserve(a, Amount(10, 1_500_000), task_id="t2", now=t0)
    with pytest.raises(BudgetExhausted) as err:
        ledger.reserve(a, Amount(10, 600_000), task_id="t3", now=t0)
    assert str(err.value) == ("Budget team-a/spend: cost limit $5.0000 reached this day ($3.0000 spent, $1.5000 "
                              "reserved; this call needs up to $0.6000); resets at 2025-03-11T00:00:00Z")


def test_exactly_the_limit_fits(ledger: Ledger, t0: dt.datetime) -> None:
    a = acct(tokens=100)
    ledger.reserve(a, Amount(60, 0), task_id="t1", now=t0)
    ledger.reserve(a, Amount(40, 0), task_id="t2", now=t0)
    with pytest.raises(BudgetExhausted):
        ledger.reserve(a, Amount(1, 0), task_id="t3", now=t0)


def test_release_returns_everything_and_is_idempotent(ledger: Ledger, t0: dt.datetime) -> None:
    a = acct(tokens=100)
    r = ledger.reserve(a, Amount(100, 0), task_id="t1", now=t0)
    ledger.release(r, now=t0)
    ledger.release(r, now=t0)
    ledger.release("r-never-taken", now=t0)
    assert ledger.usage(a, now=t0).reserved == Amount()
    ledger.reserve(a, Amount(100, 0), task_id="t2", now=t0)
    with pytest.raises(ReservationClosed):
        ledger.settle(r, Amount(1, 0), now=t0)


def test_settling_twice_or_an_unknown_reservation_is_an_error(ledger: Ledger, t0: dt.datetime) -> None:
    a = acct(tokens=100)
    r = ledger.reserve(a, Amount(50, 0), task_id="t1", now=t0)
    ledger.settle(r, Amount(10, 0), now=t0)
    with pytest.raises(ReservationClosed):
        ledger.settle(r, Amount(10, 0), now=t0)
    with pytest.raises(ReservationNotFound):
        ledger.settle("r-missing", Amount(1, 0), now=t0)
    assert ledger.usage(a, now=t0).spent == Amount(10, 0)


def test_overrun_is_recorded_not_hidden(ledger: Ledger, t0: dt.datetime) -> None:
    a = acct(tokens=100)
    r = ledger.reserve(a, Amount(50, 0), task_id="t1", now=t0)
    s = ledger.settle(r, Amount(70, 0), now=t0)
    assert (s.refunded, s.overrun) == (Amount(), Amount(20, 0))
    assert ledger.usage(a, now=t0).spent == Amount(70, 0)
    with pytest.raises(BudgetExhausted):
        ledger.reserve(a, Amount(31, 0), task_id="t2", now=t0)


def test_per_task_cap_spans_every_reservation_of_the_task(ledger: Ledger, t0: dt.datetime) -> None:
    a = acct(tokens=10_000, task_tokens=100)
    r1 = ledger.reserve(a, Amount(60, 0), task_id="t1", now=t0)
    ledger.settle(r1, Amount(60, 0), now=t0)
    with pytest.raises(BudgetExhausted) as err:
        ledger.reserve(a, Amount(41, 0), task_id="t1", now=t0)
    assert err.value.what == "task_tokens"
    assert "spec.perTask.maxTokens (100)" in str(err.value)
    ledger.reserve(a, Amount(40, 0), task_id="t1", now=t0)
    ledger.reserve(a, Amount(100, 0), task_id="t2", now=t0)


def test_child_draws_on_its_parent_not_the_window(ledger: Ledger, t0: dt.datetime) -> None:
    a = acct(tokens=1000)
    task = ledger.reserve(a, Amount(300, 0), task_id="t1", now=t0)
    call = ledger.reserve(a, Amount(200, 0), task_id="t1", now=t0, parent=task)
    assert (call.parent_id, call.depth, call.task_id) == (task.id, 1, "t1")
    assert ledger.usage(a, now=t0).reserved == Amount(300, 0)
    with pytest.raises(BudgetExhausted) as err:
        ledger.reserve(a, Amount(101, 0), task_id="t1", now=t0, parent=task)
    assert err.value.what == "parent"
    ledger.settle(call, Amount(120, 0), now=t0)
    u = ledger.usage(a, now=t0)
    assert (u.spent, u.reserved) == (Amount(120, 0), Amount(180, 0))
    ledger.reserve(a, Amount(180, 0), task_id="t1", now=t0, parent=task)
    s = ledger.settle(task, Amount(), now=t0)
    assert (s.charged, s.refunded) == (Amount(), Amount(180, 0))
    u = ledger.usage(a, now=t0)
    assert (u.spent, u.reserved) == (Amount(120, 0), Amount())


def test_sub_agent_gets_its_share_of_the_parents_free_room(ledger: Ledger, t0: dt.datetime) -> None:
    a = acct(tokens=10_000, micro=10_000)
    task = ledger.reserve(a, Amount(1000, 4000), task_id="t1", now=t0)
    call = ledger.reserve(a, Amount(200, 800), task_id="t1", now=t0, parent=task)
    sub = ledger.reserve(a, None, task_id="t1", now=t0, parent=task, share=0.25)
    assert sub.amount == Amount(200, 800)  # a quarter of (1000-200, 4000-800)
    capped = ledger.reserve(a, Amount(50, 10_000), task_id="t1", now=t0, parent=task, share=0.5)
    assert capped.amount == Amount(50, 1200)
    sub_call = ledger.reserve(a, Amount(200, 800), task_id="t1", now=t0, parent=sub)
    assert sub_call.depth == 2
    with pytest.raises(BudgetExhausted):
        ledger.reserve(a, Amount(1, 1), task_id="t1", now=t0, parent=sub)
    ledger.settle(sub_call, Amount(150, 500), now=t0)
    ledger.settle(sub, Amount(), now=t0)
    ledger.settle(call, Amount(100, 300), now=t0)
    ledger.settle(capped, Amount(), now=t0)
    ledger.settle(task, Amount(), now=t0)
    u = ledger.usage(a, now=t0)
    assert (u.spent, u.reserved) == (Amount(250, 800), Amount())


def test_a_sub_agent_tree_never_spends_past_its_parents_reservation(ledger: Ledger, t0: dt.datetime) -> None:
    a = acct(tokens=100_000)
    task = ledger.reserve(a, Amount(1000, 0), task_id="t1", now=t0)
    granted = 0
    for _ in range(50):
        try:
            sub = ledger.reserve(a, None, task_id="t1", now=t0, parent=task, share=0.5)
        except BudgetExhausted:
            break
        c = ledger.reserve(a, sub.amount, task_id="t1", now=t0, parent=sub)
        granted += c.amount.tokens
        ledger.settle(c, c.amount, now=t0)
    assert granted <= 1000
    assert granted == 999  # 500 + 250 + ... halving down to 1: the integer arithmetic of the shares
    with pytest.raises(BudgetExhausted):
        ledger.reserve(a, Amount(2, 0), task_id="t1", now=t0, parent=task)
    assert ledger.reserve(a, None, task_id="t1", now=t0, parent=task, share=1.0).amount == Amount(1, 0)


def test_closing_a_parent_ends_its_open_children(ledger: Ledger, t0: dt.datetime) -> None:
    a = acct(tokens=1000)
    task = ledger.reserve(a, Amount(500, 0), task_id="t1", now=t0)
    sub = ledger.reserve(a, None, task_id="t1", now=t0, parent=task, share=0.5)
    call = ledger.reserve(a, Amount(100, 0), task_id="t1", now=t0, parent=sub)
    ledger.release(task, now=t0)  # the client went away
    assert ledger.usage(a, now=t0).reserved == Amount()
    with pytest.raises(ReservationClosed):
        ledger.reserve(a, Amount(1, 0), task_id="t1", now=t0, parent=sub)
    late = ledger.settle(call, Amount(80, 0), now=t0)  # the in-flight call still cost money
    assert (late.is_late, late.charged, late.refunded) == (True, Amount(80, 0), Amount())
    u = ledger.usage(a, now=t0)
    assert (u.spent, u.reserved) == (Amount(80, 0), Amount())


def test_child_must_use_its_parents_account(ledger: Ledger, t0: dt.datetime) -> None:
    task = ledger.reserve(acct(tokens=100), Amount(50, 0), task_id="t1", now=t0)
    with pytest.raises(ReservationClosed):
        ledger.reserve(acct(tokens=100, key="team-b/other"), Amount(1, 0), task_id="t1", now=t0, parent=task)


@pytest.mark.parametrize("window, later, same_window", [
    ("day", dt.timedelta(hours=11, minutes=59), True),
    ("day", dt.timedelta(hours=12), False),
    ("hour", dt.timedelta(minutes=59, seconds=59), True),
    ("hour", H, False),
    ("week", dt.timedelta(days=6, hours=11), True),
    ("week", dt.timedelta(days=6, hours=12), False),
    ("month", dt.timedelta(days=21, hours=11), True),
    ("month", dt.timedelta(days=22), False),
    ("total", dt.timedelta(days=400), True),
], ids=["day-same", "day-next", "hour-same", "hour-next", "week-same", "week-next", "month-same", "month-next",
        "total"])
def test_window_roll_over(ledger: Ledger, t0: dt.datetime, window: str, later: dt.timedelta,
                          same_window: bool) -> None:
    a = acct(tokens=100, window=window)
    ledger.settle(ledger.reserve(a, Amount(100, 0), task_id="t1", now=t0), Amount(100, 0), now=t0)
    u = ledger.usage(a, now=t0 + later)
    assert u.spent == (Amount(100, 0) if same_window else Amount())
    if same_window:
        with pytest.raises(BudgetExhausted):
            ledger.reserve(a, Amount(1, 0), task_id="t2", now=t0 + later)
    else:
        ledger.reserve(a, Amount(100, 0), task_id="t2", now=t0 + later)
    assert ledger.usage(a, now=t0).spent == Amount(100, 0)  # the old window keeps its record


def test_spend_is_counted_in_the_window_that_admitted_it(ledger: Ledger, t0: dt.datetime) -> None:
    a = acct(tokens=100, window="hour")
    before = t0 + dt.timedelta(minutes=59)
    r = ledger.reserve(a, Amount(80, 0), task_id="t1", now=before)
    after = t0 + dt.timedelta(minutes=61)
    assert ledger.usage(a, now=after).reserved == Amount()
    ledger.settle(r, Amount(70, 0), now=after)
    assert ledger.usage(a, now=before).spent == Amount(70, 0)
    assert ledger.usage(a, now=after).spent == Amount()


def test_an_abandoned_reservation_expires(ledger: Ledger, t0: dt.datetime) -> None:
    a = acct(tokens=100)
    r = ledger.reserve(a, Amount(100, 0), task_id="t1", now=t0, ttl_s=60)
    child = ledger.reserve(a, Amount(10, 0), task_id="t1", now=t0, parent=r)
    with pytest.raises(BudgetExhausted):
        ledger.reserve(a, Amount(1, 0), task_id="t2", now=t0 + dt.timedelta(seconds=59))
    assert ledger.usage(a, now=t0 + dt.timedelta(seconds=60)).reserved == Amount()
    ledger.reserve(a, Amount(100, 0), task_id="t2", now=t0 + dt.timedelta(seconds=61))
    with pytest.raises(ReservationClosed):
        ledger.reserve(a, Amount(1, 0), task_id="t1", now=t0 + dt.timedelta(seconds=61), parent=r)
    late = ledger.settle(child, Amount(5, 0), now=t0 + dt.timedelta(seconds=62))
    assert late.is_late
    assert ledger.usage(a, now=t0).spent == Amount(5, 0)


def test_an_expired_task_reservation_refuses_new_children(ledger: Ledger, t0: dt.datetime) -> None:
    a = acct(tokens=100)
    r = ledger.reserve(a, Amount(50, 0), task_id="t1", now=t0, ttl_s=30)
    with pytest.raises(ReservationClosed):
        ledger.reserve(a, Amount(1, 0), task_id="t1", now=t0 + dt.timedelta(seconds=30), parent=r)
    assert ledger.usage(a, now=t0).reserved == Amount()


def test_degraded_reservation_passes_the_window_but_not_the_task_cap(ledger: Ledger, t0: dt.datetime) -> None:
    a = acct(tokens=100, task_tokens=150)
    ledger.settle(ledger.reserve(a, Amount(100, 0), task_id="t0", now=t0), Amount(100, 0), now=t0)
    with pytest.raises(BudgetExhausted):
        ledger.reserve(a, Amount(50, 0), task_id="t1", now=t0)
    r = ledger.reserve(a, Amount(50, 0), task_id="t1", now=t0, degraded=True)
    assert r.is_degraded
    ledger.settle(r, Amount(40, 0), now=t0)
    with pytest.raises(BudgetExhausted) as err:
        ledger.reserve(a, Amount(111, 0), task_id="t1", now=t0, degraded=True)
    assert err.value.what == "task_tokens"
    u = ledger.usage(a, now=t0)
    assert (u.spent, u.remaining) == (Amount(140, 0), Amount(0, -1))


def test_accounts_are_independent(ledger: Ledger, t0: dt.datetime) -> None:
    a, b = acct(tokens=100), acct(tokens=100, key="team-b/spend")
    ledger.reserve(a, Amount(100, 0), task_id="t1", now=t0)
    ledger.reserve(b, Amount(100, 0), task_id="t1", now=t0)
    assert ledger.usage(b, now=t0).reserved == Amount(100, 0)


def test_replicas_sharing_a_store_see_one_ledger(store_factory, t0: dt.datetime) -> None:  # type: ignore[no-untyped-def]
    one, two = Ledger(store_factory()), Ledger(store_factory())
    a = acct(tokens=100)
    r = one.reserve(a, Amount(70, 0), task_id="t1", now=t0)
    with pytest.raises(BudgetExhausted):
        two.reserve(a, Amount(31, 0), task_id="t2", now=t0)
    two.settle(r, Amount(20, 0), now=t0)
    assert one.usage(a, now=t0).spent == Amount(20, 0)
    two.reserve(a, Amount(80, 0), task_id="t2", now=t0)


def test_limits_apply_as_given_at_each_reservation(ledger: Ledger, t0: dt.datetime) -> None:
    ledger.reserve(acct(tokens=100), Amount(80, 0), task_id="t1", now=t0)
    with pytest.raises(BudgetExhausted):
        ledger.reserve(acct(tokens=100), Amount(30, 0), task_id="t2", now=t0)
    ledger.reserve(acct(tokens=200), Amount(30, 0), task_id="t2", now=t0)  # the Budget was raised


@pytest.mark.parametrize("limits, spent, estimate, degraded", [
    ({"micro": 10_000}, Amount(0, 7_000), Amount(5, 1_000), False),   # 80 % after it: at the line, not past
    ({"micro": 10_000}, Amount(0, 7_000), Amount(5, 1_001), True),    # just past 80 %
    ({"tokens": 1_000}, Amount(790, 0), Amount(11, 5), True),         # the token limit counts too
    ({"tokens": 1_000, "micro": 10_000}, Amount(100, 100), Amount(10, 10), False),
], ids=["cost-at-the-line", "cost-past", "tokens-past", "far-below"])
def test_a_reservation_past_degrade_at_percent_is_degraded_not_refused(ledger: Ledger, t0: dt.datetime,
                                                                      limits: dict, spent: Amount,
                                                                      estimate: Amount, degraded: bool) -> None:
    a = Account("team-a/spend", Limits(window="day", tokens=limits.get("tokens"), micro_usd=limits.get("micro"),
                                        degrade_at_percent=80))
    ledger.settle(ledger.reserve(a, spent, task_id="t0", now=t0), spent, now=t0)
    r = ledger.reserve(a, estimate, task_id="t1", now=t0)
    assert r.is_degraded is degraded
    # A sub-call's reservation carries the task's routing; a resumed replica reads it from the hold.
    child = ledger.reserve(a, Amount(1, 1), task_id="t1", now=t0, parent=r)
    assert child.is_degraded is degraded


def test_degrade_at_percent_never_admits_past_the_limit(ledger: Ledger, t0: dt.datetime) -> None:
    a = Account("team-a/spend", Limits(window="day", micro_usd=10_000, degrade_at_percent=50))
    assert ledger.reserve(a, Amount(0, 9_000), task_id="t1", now=t0).is_degraded
    with pytest.raises(BudgetExhausted) as err:
        ledger.reserve(a, Amount(0, 1_001), task_id="t2", now=t0)
    assert err.value.what == "window_cost"


def test_a_degraded_root_holds_the_small_models_bound(ledger: Ledger, t0: dt.datetime) -> None:
    """Past the line the task runs on the small model, so it reserves that model's bound: the window's reserved
    money grows by the small estimate, and more tasks fit before the limit."""
    a = Account("team-a/spend", Limits(window="day", micro_usd=10_000, degrade_at_percent=50))
    big, small = Amount(100, 3_000), Amount(100, 150)
    first = ledger.reserve(a, big, task_id="t1", now=t0, degraded_estimate=small)
    assert not first.is_degraded and first.amount == big  # 30 % after it
    second = ledger.reserve(a, big, task_id="t2", now=t0, degraded_estimate=small)
    assert second.is_degraded and second.amount == small  # 60 % with the large bound: degraded
    assert ledger.usage(a, now=t0).reserved == big + small
    # onExhausted: degrade admits past the limit, holding the small bound too.
    past = ledger.reserve(a, Amount(100, 50_000), task_id="t3", now=t0, degraded=True, degraded_estimate=small)
    assert past.is_degraded and past.amount == small


def test_past_the_line_the_limit_is_checked_against_the_small_bound(ledger: Ledger, t0: dt.datetime) -> None:
    """The 429 comes when the small model's bound no longer fits, not the large one's."""
    a = Account("team-a/spend", Limits(window="day", micro_usd=10_000, degrade_at_percent=50))
    spent = Amount(0, 8_000)
    ledger.settle(ledger.reserve(a, spent, task_id="t0", now=t0), spent, now=t0)
    # 8,000 + 3,000 would pass the limit: without the line this is a 429; with it the task runs small.
    r = ledger.reserve(a, Amount(100, 3_000), task_id="t1", now=t0, degraded_estimate=Amount(100, 150))
    assert r.is_degraded and r.amount == Amount(100, 150)
    with pytest.raises(BudgetExhausted) as err:
        ledger.reserve(a, Amount(100, 3_000), task_id="t2", now=t0, degraded_estimate=Amount(100, 2_000))
    assert err.value.what == "window_cost"
