"""FairGate: at most `limit` in flight per replica; waiters admitted least-served-first, or most-served-first
(--fair-queue-order), ties by arrival; a waiter of the low priority band only when no normal one waits; a waiter
whose client left is skipped; a slot handed to a request cancelled at that moment is passed on, never lost."""

from __future__ import annotations

import asyncio

import pytest

from agentfleet.router.fairness import LOW, NORMAL, FairGate
from agentfleet.router.keys import priority_band


@pytest.mark.parametrize(("order", "expected"), [("least-served", ["new", "short", "long", "long"]),
                                                ("most-served", ["long", "long", "short", "new"])])
def test_waiters_go_in_the_gates_order(order, expected):
    async def go():
        gate = FairGate(limit=1, order=order)
        for _ in range(5):
            gate.note_served("long")
        gate.note_served("short")
        await gate.acquire("r", "x")  # the one slot
        seen = []

        async def call(run):
            await gate.acquire("r", run)
            seen.append(run)
            await asyncio.sleep(0)
            gate.release("r")

        tasks = [asyncio.create_task(call(r)) for r in ("long", "short", "new", "long")]
        await asyncio.sleep(0.01)
        assert gate.waiting("r") == 4 and gate.waited == 4
        gate.release("r")
        await asyncio.gather(*tasks)
        return seen, gate

    got, gate = asyncio.run(go())
    assert got == expected  # served 0, 1, 5 and 5 (arrival breaks the tie either way)
    assert gate.waiting("r") == 0 and gate._in_flight["r"] == 0


def test_replicas_have_their_own_slots_and_nothing_waits_below_the_limit():
    async def go():
        gate = FairGate(limit=2)
        for name in ("a", "a", "b"):
            await asyncio.wait_for(gate.acquire(name, "run"), 0.1)
        return gate

    gate = asyncio.run(go())
    assert gate.waited == 0 and gate._in_flight == {"a": 2, "b": 1}


@pytest.mark.parametrize("when", ["while-waiting", "as-the-slot-is-handed-over"])
def test_a_client_that_leaves_loses_no_slot(when):
    async def go():
        gate = FairGate(limit=1)
        await gate.acquire("r", "x")
        leaver = asyncio.create_task(gate.acquire("r", "a"))
        stayer = asyncio.create_task(gate.acquire("r", "b"))
        await asyncio.sleep(0.01)
        if when == "while-waiting":
            leaver.cancel()
            await asyncio.sleep(0)
            gate.release("r")
        else:
            gate.release("r")  # the slot is handed to the leaver...
            leaver.cancel()  # ...which is cancelled before it runs: it must pass the slot on
        await asyncio.wait_for(stayer, 1.0)
        assert leaver.cancelled()
        gate.release("r")
        return gate

    gate = asyncio.run(go())
    assert gate._in_flight["r"] == 0 and gate.waiting("r") == 0


def _held_gate():
    """A gate of one slot on replica "r", held, with a clock the test moves."""
    now = [0.0]

    async def make(busy_run: str) -> FairGate:
        gate = FairGate(limit=1, max_wait_s=2.0, clock=lambda: now[0])
        for _ in range(9):
            gate.note_served(busy_run)
        await gate.acquire("r", "x")
        return gate

    return now, make


def test_the_low_band_waits_behind_every_normal_waiter_even_an_overdue_one():
    """A low-band waiter that arrived first, has been served least and is past max_wait_s still yields to normal
    waiters; among low-band waiters the fair order holds."""
    now, make = _held_gate()

    async def go():
        gate = await make("busy")  # a run 9 calls in
        order = []

        async def call(run, band):
            await gate.acquire("r", run, band)
            order.append(run)
            await asyncio.sleep(0)
            gate.release("r")

        calls = [asyncio.create_task(call("low-busy", LOW))]
        await asyncio.sleep(0)
        calls.append(asyncio.create_task(call("low-new", LOW)))
        await asyncio.sleep(0)
        now[0] = 5.0  # both low waiters are long overdue
        calls += [asyncio.create_task(call(r, NORMAL)) for r in ("busy", "new")]
        await asyncio.sleep(0.01)
        assert gate.waiting("r") == 4
        gate.release("r")
        await asyncio.gather(*calls)
        return order, gate

    order, gate = asyncio.run(go())
    assert order == ["new", "busy", "low-busy", "low-new"]  # low-busy waited longest: overdue goes first in its band
    assert gate.low_band == 2 and gate._in_flight["r"] == 0
    with pytest.raises(ValueError, match="band"):
        asyncio.run(FairGate(1).acquire("r", "x", 7))


@pytest.mark.parametrize(("headers", "body", "band"), [
    ({"X-Agentfleet-Priority": "low"}, None, LOW), ({"x-agentfleet-priority": " LOW "}, {}, LOW),
    ({}, {"priority": 3}, LOW),  # vLLM's field: lower is earlier, 0 the default
    ({}, {"priority": 0}, NORMAL), ({}, {"priority": -5}, NORMAL),  # nothing is raised above normal
    ({}, {"priority": True}, NORMAL), ({}, {"priority": "9"}, NORMAL),
    ({"x-agentfleet-priority": "high"}, None, NORMAL), ({}, None, NORMAL)])
def test_priority_band_from_the_header_or_vllms_priority_field(headers, body, band):
    assert priority_band(headers, body) == band


def test_limit_must_be_positive_and_the_order_known():
    with pytest.raises(ValueError):
        FairGate(0)
    with pytest.raises(ValueError, match="least-served, most-served"):
        FairGate(1, order="random")


def test_the_proxy_holds_requests_past_the_limit_and_serves_the_least_served_run_first():
    """Through the router's own edge: one engine slot (--fair-queue 1), a low-priority run, a run 4 calls in and a
    new run waiting behind a call in progress, in that order; the new run's call is sent to the engine first, the
    low-priority one last."""
    import aiohttp
    from aiohttp import web

    from agentfleet.bench.simulator import free_port
    from agentfleet.router.proxy import ProxySettings, build_app
    from agentfleet.router.state import FleetState

    async def go():
        seen: list[str] = []
        release = asyncio.Event()

        async def completions(request: web.Request) -> web.Response:
            seen.append(request.headers["x-session-id"])
            if request.headers["x-session-id"] == "other":
                await release.wait()  # this call holds the one slot
            return web.json_response({"choices": [{"message": {"content": "ok"}}]})

        engine = web.Application()
        engine.router.add_post("/v1/chat/completions", completions)
        runners = [web.AppRunner(engine, access_log=None, shutdown_timeout=1)]
        await runners[0].setup()
        eport = free_port()
        await web.TCPSite(runners[0], "127.0.0.1", eport).start()
        fleet = FleetState(policy="session")
        fleet.set_endpoints({"only": f"http://127.0.0.1:{eport}"})
        app = build_app(fleet, ProxySettings(health_interval_s=1e12, metrics_interval_s=3600, fair_queue=1))
        runners.append(web.AppRunner(app, access_log=None, shutdown_timeout=1))
        await runners[1].setup()
        port = free_port()
        await web.TCPSite(runners[1], "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        try:
            async with aiohttp.ClientSession() as s:
                async def call(session_id: str, extra: dict[str, str] | None = None) -> int:
                    async with s.post(url, json=body, headers={"x-session-id": session_id, **(extra or {})}) as r:
                        await r.read()
                        return r.status

                for _ in range(3):  # the long run's history: 3 calls served
                    assert await call("long") == 200
                seen.clear()
                first = asyncio.create_task(call("other"))  # takes the slot and holds it
                await asyncio.sleep(0.1)
                queued = [asyncio.create_task(call("low", {"x-agentfleet-priority": "low"})),
                          asyncio.create_task(call("long")), asyncio.create_task(call("new"))]
                await asyncio.sleep(0.2)
                async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                    metrics = await r.text()
                release.set()
                statuses = await asyncio.gather(first, *queued)
        finally:
            for r in reversed(runners):
                await r.cleanup()
        return seen, statuses, metrics

    seen, statuses, metrics = asyncio.run(go())
    assert statuses == [200, 200, 200, 200]
    # without the gate the engine would see them in arrival order; the low-priority run came first and goes last
    assert seen == ["other", "new", "long", "low"]
    assert 'agentfleet_router_fair_queue_waiting{replica="only"} 3' in metrics
    assert "agentfleet_router_fair_queue_low_band_total 1" in metrics


def test_a_waiter_past_max_wait_goes_first():
    """Least-served-first would keep a long run waiting as long as new runs arrive; past max_wait_s the longest
    waiting goes first."""
    now, make = _held_gate()

    async def go():
        gate = await make("long")
        order = []

        async def call(run):
            await gate.acquire("r", run)
            order.append(run)

        long_ = asyncio.create_task(call("long"))
        await asyncio.sleep(0)
        now[0] = 1.0
        new1 = asyncio.create_task(call("new-1"))
        await asyncio.sleep(0)
        gate.release("r")  # 1 s of waiting: not due yet, the least-served goes
        await new1
        now[0] = 2.5
        new2 = asyncio.create_task(call("new-2"))
        await asyncio.sleep(0)
        gate.release("r")  # the long run has waited 2.5 s: it goes before the new one
        await long_
        gate.release("r")
        await new2
        return order

    assert asyncio.run(go()) == ["new-1", "long", "new-2"]
