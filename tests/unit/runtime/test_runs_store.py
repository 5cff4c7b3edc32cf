"""The durable run rules (runtime/runs.py) on both state backends (`store_factory`: SQLite and a real Redis), with
time as a parameter: ownership, Idempotency-Keys, leases and takeover, fencing of a replica that lost its lease,
cancellation with and without a live owner, hand-back on drain, and the event cursor."""

from __future__ import annotations

from typing import Any

import pytest

from agentfleet.retrieval.filters import Principal
from agentfleet.runtime.runs import LeaseLost, RunRecord, RunStore

ALICE = Principal("acme", ("eng",), "alice")
FRANK = Principal("acme", ("finance",), "frank")
T0 = 1_800_000_000.0
LEASE = 10.0


def _run(run_id: str, *, owner: str = "a", principal: Principal = ALICE, kind: str = "run",
         resumable: bool = True, deadline_s: float = T0 + 300) -> RunRecord:
    return RunRecord(id=run_id, principal=principal, kind=kind, created_s=T0, deadline_s=deadline_s,
                     request={"history": [{"role": "user", "content": "hi"}]}, owner=owner, hold="r1",
                     resumable=resumable)


@pytest.fixture
def stores(store_factory: Any) -> tuple[RunStore, RunStore]:
    """Two replicas' views of one run store."""
    return RunStore(store_factory(), lease_s=LEASE), RunStore(store_factory(), lease_s=LEASE)


def test_a_run_belongs_to_its_principal_and_any_replica_reads_it(stores):
    a, b = stores
    run, created = a.create(_run("run-1"), idempotency_key=None, now_s=T0)
    assert created and run.lease_until == T0 + LEASE
    assert b.get("run-1", ALICE, now_s=T0 + 1).owner == "a"
    assert b.get("run-1", FRANK, now_s=T0 + 1) is None  # someone else's run reads as no run
    assert b.get("run-nope", ALICE, now_s=T0 + 1) is None


@pytest.mark.parametrize(("second_principal", "second_key", "same"), [
    (ALICE, "key-1", True),
    (ALICE, "key-2", False),
    (FRANK, "key-1", False),  # a key is the principal's own: another caller's equal key is another run
], ids=["same-key", "other-key", "other-principal"])
def test_idempotency_key_returns_the_same_run(stores, second_principal, second_key, same):
    a, b = stores
    first, created = a.create(_run("run-1"), idempotency_key="key-1", now_s=T0)
    again, created2 = b.create(_run("run-2", owner="b", principal=second_principal), idempotency_key=second_key,
                               now_s=T0 + 1)
    assert created
    assert (again.id == "run-1") is same and created2 is not same
    assert (b.find(second_principal, second_key, now_s=T0 + 2).id == "run-1") is same


def test_a_lapsed_lease_is_claimed_once_and_fences_the_old_owner(stores):
    a, b = stores
    a.create(_run("run-1"), idempotency_key=None, now_s=T0)
    a.append("run-1", "a", [{"type": "checkpoint", "n": 1}], now_s=T0 + 1)
    assert b.claim("b", now_s=T0 + LEASE - 1) == []  # the owner's lease still holds
    assert a.renew(["run-1"], "a", now_s=T0 + 5) == {"run-1": "ok"}
    assert b.claim("b", now_s=T0 + 5 + LEASE - 1) == []  # renewed
    claimed = b.claim("b", now_s=T0 + 5 + LEASE + 1)
    assert [(r.id, r.owner, r.takeovers, r.status) for r in claimed] == [("run-1", "b", 1, "running")]
    assert a.claim("a", now_s=T0 + 5 + LEASE + 2) == []  # nobody claims it twice
    with pytest.raises(LeaseLost):
        a.append("run-1", "a", [{"type": "step"}], now_s=T0 + 17)
    with pytest.raises(LeaseLost):
        a.finish("run-1", "a", status="completed", now_s=T0 + 17)
    assert a.renew(["run-1"], "a", now_s=T0 + 17) == {"run-1": "lost"}
    kinds = [e["type"] for e in b.events("run-1", after=0, now_s=T0 + 18)]
    assert kinds == ["status", "checkpoint", "taken_over"]


@pytest.mark.parametrize(("run", "at", "status", "code"), [
    (_run("run-1", kind="chat", resumable=False), T0 + LEASE + 1, "incomplete", "replica_lost"),
    (_run("run-1", deadline_s=T0 + 5), T0 + LEASE + 1, "incomplete", "deadline"),
], ids=["chat-without-key", "past-deadline"])
def test_a_run_that_cannot_continue_is_ended_with_its_reason_instead_of_claimed(stores, run, at, status, code):
    a, b = stores
    a.create(run, idempotency_key=None, now_s=T0)
    assert b.claim("b", now_s=at) == []
    got = b.get("run-1", ALICE, now_s=at)
    assert (got.status, got.error["code"]) == (status, code)
    assert b.claim("b", now_s=at + 100) == []


def test_cancel_reaches_a_live_owner_at_renewal_and_ends_an_ownerless_run_at_once(stores):
    a, b = stores
    a.create(_run("run-1"), idempotency_key=None, now_s=T0)
    a.create(_run("run-2"), idempotency_key=None, now_s=T0)
    assert b.request_cancel("run-1", FRANK, now_s=T0 + 1) is None  # not Frank's
    flagged = b.request_cancel("run-1", ALICE, now_s=T0 + 1)
    assert flagged.status == "running" and flagged.cancel
    assert a.renew(["run-1"], "a", now_s=T0 + 2) == {"run-1": "cancel"}
    lapsed = b.request_cancel("run-2", ALICE, now_s=T0 + LEASE + 1)  # its replica is gone
    assert (lapsed.status, lapsed.error["code"]) == ("cancelled", "cancelled")
    assert b.claim("b", now_s=T0 + LEASE + 2) == []


def test_hand_back_lets_another_replica_claim_at_once(stores):
    a, b = stores
    a.create(_run("run-1"), idempotency_key=None, now_s=T0)
    assert a.hand_back(["run-1", "run-unknown"], "a", now_s=T0 + 1) == ["run-1"]
    claimed = b.claim("b", now_s=T0 + 1)
    assert [(r.id, r.owner) for r in claimed] == [("run-1", "b")]


def test_finish_ends_the_lease_and_events_stream_from_a_cursor(stores):
    a, b = stores
    a.create(_run("run-1"), idempotency_key=None, now_s=T0)
    a.append("run-1", "a", [{"type": "step", "step": {"n": 1}}, {"type": "step", "step": {"n": 2}}], now_s=T0)
    done = a.finish("run-1", "a", status="completed", now_s=T0 + 4, result={"answer": "42"},
                    events=[{"type": "step", "step": {"n": 3}}])
    assert done.is_done and b.claim("b", now_s=T0 + 1000) == []
    seqs = [(e["seq"], e["type"]) for e in b.events("run-1", after=2, now_s=T0 + 5)]
    assert seqs == [(3, "step"), (4, "step"), (5, "status")]
    assert b.get("run-1", ALICE, now_s=T0 + 5).wire()["answer"] == "42"
    with pytest.raises(ValueError):
        a.finish("run-1", "a", status="running", now_s=T0 + 6)


def test_a_lapsed_lease_of_a_run_still_executing_here_is_renewed_not_claimed(stores):
    """After a store outage longer than the lease, the owner's own takeover pass must not start a second execution
    of a run it is still executing (found by the chaos bench: the tool ran twice and was charged twice)."""
    a, b = stores
    a.create(_run("run-1"), idempotency_key=None, now_s=T0)
    assert a.claim("a", now_s=T0 + LEASE + 5, running_here=["run-1"]) == []
    got = b.get("run-1", ALICE, now_s=T0 + LEASE + 5)
    assert (got.owner, got.takeovers, got.lease_until) == ("a", 0, T0 + LEASE + 5 + LEASE)
    assert b.claim("b", now_s=T0 + LEASE + 6) == []  # renewed: nobody else takes it either


CALLER = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
ROOT_SPAN = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-01", "tracestate": "k=v"}


@pytest.mark.parametrize(("created_with", "written", "claimed_with"), [
    pytest.param(CALLER, ROOT_SPAN, ROOT_SPAN, id="caller-then-root-span"),
    pytest.param(CALLER, None, CALLER, id="caller-only"),
    pytest.param(None, ROOT_SPAN, ROOT_SPAN, id="root-span-only"),
    pytest.param(None, None, None, id="untraced"),
])
def test_a_claimed_run_carries_the_trace_context_its_first_owner_recorded(stores, created_with, written,
                                                                          claimed_with):
    """The context rides the create and the first owner's event write; the replica taking over reads it back."""
    a, b = stores
    run = _run("run-1")
    run.trace_context = created_with
    a.create(run, idempotency_key=None, now_s=T0)
    a.append("run-1", "a", [{"type": "checkpoint", "n": 1}], now_s=T0 + 1, trace_context=written)
    a.append("run-1", "a", [{"type": "step"}], now_s=T0 + 2)  # a write without one keeps what is there
    (claimed,) = b.claim("b", now_s=T0 + LEASE + 3)
    assert (claimed.owner, claimed.takeovers, claimed.trace_context) == ("b", 1, claimed_with)
    assert b.get("run-1", None, now_s=T0 + LEASE + 4).trace_context == claimed_with


def test_a_run_recorded_before_trace_context_existed_loads_and_is_taken_over(stores):
    """A record an older runtime wrote (no trace_context key) reads as untraced, and continues."""
    a, b = stores
    a.create(_run("run-1"), idempotency_key=None, now_s=T0)

    def drop_field(txn):  # the record as an older runtime wrote it
        raw = txn.get("run:run-1")
        del raw["trace_context"]
        txn.put("run:run-1", raw, ttl_s=None)

    a.store.transact(drop_field, now_s=T0)
    assert "trace_context" not in a.store.transact(lambda txn: txn.get("run:run-1"), now_s=T0)
    assert b.get("run-1", ALICE, now_s=T0 + 1).trace_context is None
    (claimed,) = b.claim("b", now_s=T0 + LEASE + 1)
    assert (claimed.owner, claimed.trace_context) == ("b", None)
