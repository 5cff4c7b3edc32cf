"""Budgets through the real server and the real ledger (SQLite): many parallel tasks against one small Budget
never overspend it and the ledger's spend equals what the answers report; an exhausted Budget rejects with 429
or degrades to the small model as it says; per-task caps end a task; sub-agents draw on the task's reservation;
a client that disconnects releases its reservation."""

import asyncio
import datetime as dt

import aiohttp
import pytest

from agentfleet.bench.simulator import SimSettings, running_fleet
from agentfleet.ledger import Account, Amount
from runtime_kit import ALICE, GINA, final, make_config, scripted, serve, SIM_MISSING

PRICES = [{"model": "large", "inputPerMTokensUsd": 2.0, "outputPerMTokensUsd": 6.0},
          {"model": "small", "inputPerMTokensUsd": 0.5, "outputPerMTokensUsd": 1.0}]


def _usage(rt):
    b = rt.config.budget
    return rt.ledger.usage(Account.for_budget(rt.config.namespace, b.name, b.spec), now=dt.datetime.now(dt.timezone.utc))


@pytest.fixture(scope="module")
def echo_sim():
    if SIM_MISSING:
        pytest.skip(SIM_MISSING)
    with running_fleet(1, SimSettings(extra=("--mode", "echo"), max_num_seqs=64)) as fleet:
        yield fleet.urls[0] + "/v1"


def test_parallel_tasks_never_overspend_a_small_budget(echo_sim, tmp_path):
    limit = 6000
    cfg = make_config(tmp_path, large_url=echo_sim, budget={"window": "day", "limits": {"tokens": limit},
                                                            "prices": PRICES},
                      app={"limits": {"maxSteps": 4, "maxTokens": 2000, "deadlineSeconds": 30}})

    async def go():
        async with serve(cfg, tmp_path) as s:
            results = await asyncio.gather(*(s.chat(final(f"answer {i}")) for i in range(48)))
            await s.runtime.refresh_budget()  # what the timer does every few seconds
            return results, await asyncio.to_thread(_usage, s.runtime), (await s.get("/metrics", key=None))[1]

    results, usage, metrics = asyncio.run(go())
    ok = [b for st, b in results if st == 200]
    rejected = [b for st, b in results if st == 429]
    assert len(ok) + len(rejected) == 48 and ok and rejected
    assert {b["error"]["code"] for b in rejected} == {"budget_exhausted"}
    assert usage.spent.tokens <= limit
    assert usage.reserved == Amount()  # every reservation closed
    assert usage.spent.tokens == sum(b["usage"]["total_tokens"] for b in ok)
    assert f'agentfleet_runtime_budget_remaining_tokens{{budget="spend"}} {float(limit - usage.spent.tokens)}' \
        in metrics
    spent_usd = sum(b["agentfleet"]["cost_usd"] for b in ok)
    assert usage.spent.micro_usd == round(spent_usd * 1e6)
    one = ok[0]["agentfleet"]
    u = ok[0]["usage"]
    assert one["cost_usd"] == pytest.approx((u["prompt_tokens"] * 2.0 + u["completion_tokens"] * 6.0) / 1e6, abs=2e-6)
    assert one["budget"]["name"] == "spend" and one["budget"]["remaining_tokens"] == limit  # read at start-up


def test_exhausted_budget_rejects_with_429_and_retry_after(echo_sim, tmp_path):
    cfg = make_config(tmp_path, large_url=echo_sim, budget={"window": "day", "limits": {"tokens": 100}})

    async def go():
        async with serve(cfg, tmp_path) as s:
            async with s.session.post(s.url + "/v1/chat/completions", json={"messages": [
                    {"role": "user", "content": final("x")}]}, headers={"Authorization": f"Bearer {ALICE}"}) as r:
                return r.status, dict(r.headers), await r.json()

    status, headers, body = asyncio.run(go())
    assert status == 429 and body["error"]["code"] == "budget_exhausted"
    assert body["error"]["type"] == "insufficient_quota"
    assert body["error"]["message"].startswith("Budget team-a/spend: token limit 100 reached this day")
    assert int(headers["Retry-After"]) >= 1


def test_budget_scoped_to_a_tenant_leaves_others_alone(echo_sim, tmp_path):
    cfg = make_config(tmp_path, large_url=echo_sim, budget={"scope": {"tenant": "acme"}, "window": "day",
                                                            "limits": {"tokens": 100}})

    async def go():
        async with serve(cfg, tmp_path) as s:
            return await s.chat(final("x"), key=ALICE), await s.chat(final("y"), key=GINA)

    (sa, _), (sg, bg) = asyncio.run(go())
    assert sa == 429 and sg == 200 and bg["agentfleet"]["budget"] is None


def _tagged(log):
    """A scripted model that answers "from <tag>" and logs which one was called."""
    def model(tag):
        def reply(body, headers):
            log.append(tag)
            return final(f"from {tag}")
        return reply
    return model


def test_degrade_routes_every_step_to_the_small_model(tmp_path):
    log = []
    model = _tagged(log)

    async def go():
        async with scripted(model("large")) as L, scripted(model("small")) as S:
            cfg = make_config(tmp_path, large_url=L.url, small_url=S.url, budget={
                "window": "day", "limits": {"tokens": 100}, "onExhausted": "degrade"})
            async with serve(cfg, tmp_path) as s:
                return await s.chat("hi")

    status, body = asyncio.run(go())
    assert status == 200 and log == ["small"]
    assert body["agentfleet"]["degraded"] is True and body["choices"][0]["message"]["content"] == "from small"


def test_near_exhausted_budget_routes_to_the_small_model_before_any_429(tmp_path):
    """degradeAtPercent: tasks admitted below the line follow the routing policy; once a task's reservation takes the
    window past it, every step of that task runs on the small model, and a 429 comes only at the limit itself."""
    log = []
    model = _tagged(log)

    async def go():
        async with scripted(model("large")) as L, scripted(model("small")) as S:
            cfg = make_config(tmp_path, large_url=L.url, small_url=S.url, budget={
                "window": "day", "limits": {"tokens": 20000}, "degradeAtPercent": 50,
                "routing": {"policy": "large-only"}})
            async with serve(cfg, tmp_path) as s:
                rt = s.runtime
                account = Account.for_budget(rt.config.namespace, rt.config.budget.name, rt.config.budget.spec)
                first = await s.chat("hi")
                # Another app on the same Budget spent 7,000 tokens: this task's reservation (maxTokens 4,000)
                # takes the window to ~55 %, past the line and under the limit.
                spend = Amount(7000, 0)
                now = dt.datetime.now(dt.timezone.utc)
                await asyncio.to_thread(lambda: rt.ledger.settle(
                    rt.ledger.reserve(account, spend, task_id="other-app", now=now), spend, now=now))
                second = await s.chat("hi")
                # And past the limit: spent + a task's reservation > 20,000 tokens.
                spend = Amount(9500, 0)
                await asyncio.to_thread(lambda: rt.ledger.settle(
                    rt.ledger.reserve(account, spend, task_id="other-app-2", now=now), spend, now=now))
                third = await s.chat("hi")
                return first, second, third

    (s1, b1), (s2, b2), (s3, b3) = asyncio.run(go())
    assert s1 == 200 and b1["agentfleet"]["degraded"] is False and b1["choices"][0]["message"]["content"] == "from large"
    assert s2 == 200 and b2["agentfleet"]["degraded"] is True and b2["choices"][0]["message"]["content"] == "from small"
    assert s3 == 429 and "token limit 20000 reached" in b3["error"]["message"], b3
    assert log == ["large", "small"]


@pytest.mark.parametrize(("degrade_by", "model", "band"), [("low-priority", "large", "low"), ("both", "small", "low"),
                                                        ("small-model", "small", None)])
def test_degrade_by_chooses_the_small_model_the_routers_low_band_or_both(tmp_path, degrade_by, model, band):
    """degradeBy: a task admitted past degradeAtPercent runs on the small model (small-model), keeps its routing but
    sends every call to the fleet's router in the low priority band (low-priority), or both; a task below the line
    does neither."""
    seen = []

    def reply(tag):
        def answer(body, headers):
            seen.append((tag, headers.get("x-agentfleet-priority"), headers.get("x-agentfleet-run")))
            return final(f"from {tag}")
        return answer

    async def go():
        async with scripted(reply("large")) as L, scripted(reply("small")) as S:
            cfg = make_config(tmp_path, large_url=L.url, small_url=S.url, budget={
                "window": "day", "limits": {"tokens": 20000}, "degradeAtPercent": 50, "degradeBy": degrade_by,
                "routing": {"policy": "large-only"}})
            # the operator marks an endpoint that is the fleet's own router (the header goes only there)
            cfg = cfg.model_copy(update={"models": {r: e.model_copy(update={"is_router": True})
                                                    for r, e in cfg.models.items()}})
            async with serve(cfg, tmp_path) as s:
                rt = s.runtime
                account = Account.for_budget(rt.config.namespace, rt.config.budget.name, rt.config.budget.spec)
                first = await s.chat("hi")
                spend = Amount(7000, 0)  # past the 50 % line with this task's 4,000-token bound, under the limit
                now = dt.datetime.now(dt.timezone.utc)
                await asyncio.to_thread(lambda: rt.ledger.settle(
                    rt.ledger.reserve(account, spend, task_id="other-app", now=now), spend, now=now))
                second = await s.chat("hi")
                third_low = rt.model._low  # the run left the set when it ended
                return first, second, await asyncio.to_thread(_usage, rt), third_low

    (s1, b1), (s2, b2), usage, low_after = asyncio.run(go())
    assert s1 == 200 and b1["agentfleet"]["degraded"] is False
    assert s2 == 200 and b2["agentfleet"]["degraded"] is True
    assert b2["choices"][0]["message"]["content"] == f"from {model}"
    assert seen[0][:2] == ("large", None), seen  # below the line: full routing, normal band
    assert seen[1][:2] == (model, band), seen
    assert seen[1][2] and seen[1][2] != seen[0][2]  # each call names its run
    assert usage.reserved == Amount() and low_after == set()


def test_degrade_by_low_priority_is_refused_with_on_exhausted_degrade():
    from agentfleet.api.budget import BudgetSpec

    with pytest.raises(ValueError, match="set degradeBy to small-model or both"):
        BudgetSpec.model_validate({"limits": {"tokens": 10}, "onExhausted": "degrade", "degradeBy": "low-priority"})
    assert BudgetSpec.model_validate({"limits": {"tokens": 10}, "onExhausted": "degrade",
                                      "degradeBy": "both"}).degrade_by == "both"


def test_per_task_cap_ends_the_task_with_its_reason(echo_sim, tmp_path):
    cfg = make_config(tmp_path, large_url=echo_sim, budget={"window": "day", "limits": {"tokens": 100000},
                                                            "perTask": {"maxTokens": 300}})

    async def go():
        async with serve(cfg, tmp_path) as s:
            return await s.chat(final("x")), await asyncio.to_thread(_usage, s.runtime)

    (status, body), usage = asyncio.run(go())
    assert status == 200 and body["agentfleet"]["stop_reason"] == "budget_exhausted"
    assert "has 300 tokens" in body["agentfleet"]["detail"]
    assert usage.spent == Amount() and usage.reserved == Amount()


def test_the_apps_own_max_tokens_ends_the_task_as_max_tokens_not_as_the_budget(echo_sim, tmp_path):
    """The task's reservation is its maxTokens bound when no per-task cap of the Budget is smaller: running out of it
    is the task's cap (found by the chaos bench, which reported a roomy Budget as exhausted)."""
    cfg = make_config(tmp_path, large_url=echo_sim, budget={"window": "day", "limits": {"tokens": 100000}},
                      app={"limits": {"maxSteps": 6, "maxTokens": 300, "deadlineSeconds": 20}})

    async def go():
        async with serve(cfg, tmp_path) as s:
            return await s.chat(final("x")), await asyncio.to_thread(_usage, s.runtime)

    (status, body), usage = asyncio.run(go())
    assert status == 200 and body["agentfleet"]["stop_reason"] == "max_tokens"
    assert body["agentfleet"]["detail"].startswith("reached maxTokens (300)")
    assert usage.reserved == Amount()


def test_sub_agents_draw_on_the_tasks_reservation(tmp_path):
    def reply(body, headers):
        msgs = body["messages"]
        if msgs[0]["content"].startswith("You are the HR helper."):
            return final("HR: 25 days")
        if msgs[-1]["role"] == "tool":
            return final("the answer: " + msgs[-1]["content"])
        return '{"action": "delegate", "arguments": {"calls": [{"agent": "hr", "task": "vacation?"}]}}'

    subs = [{"name": "hr", "description": "HR", "systemPrompt": "You are the HR helper.", "tools": ["calculator"],
             "modelRole": "small", "budgetShare": 0.5}]

    async def go():
        async with scripted(reply) as m:
            cfg = make_config(tmp_path, large_url=m.url, budget={"window": "day", "limits": {"tokens": 50000},
                                                                 "routing": {"policy": "large-only"}},
                              app={"subAgents": subs, "tools": {"builtin": ["calculator", "delegate"]}})
            async with serve(cfg, tmp_path) as s:
                status, body = await s.chat("vacation?")
                return status, body, await asyncio.to_thread(_usage, s.runtime)

    status, body, usage = asyncio.run(go())
    assert body["choices"][0]["message"]["content"] == "the answer: hr: HR: 25 days"
    assert body["agentfleet"]["steps"] == 3
    # Every call, the sub-agent's included, was charged to the one account and nothing stays reserved.
    assert usage.spent.tokens == body["usage"]["total_tokens"] and usage.reserved == Amount()


def test_client_disconnect_cancels_the_task_and_releases_its_reservation(tmp_path):
    started = asyncio.Event

    async def go():
        gate = started()

        async def slow(body, headers):
            gate.set()
            await asyncio.sleep(30)
            return final("never")

        async with scripted(slow) as m:
            cfg = make_config(tmp_path, large_url=m.url, budget={"window": "day", "limits": {"tokens": 50000}})
            async with serve(cfg, tmp_path) as s:
                async def client():
                    async with aiohttp.ClientSession() as c:
                        async with c.post(s.url + "/v1/chat/completions", json={"messages": [
                                {"role": "user", "content": "hi"}], "stream": True},
                                headers={"Authorization": f"Bearer {ALICE}"}) as r:
                            await r.content.readline()
                            await asyncio.sleep(30)

                t = asyncio.get_running_loop().create_task(client())
                await asyncio.wait_for(gate.wait(), 10)
                held = await asyncio.to_thread(_usage, s.runtime)
                t.cancel()  # the client goes away mid-task
                deadline = asyncio.get_running_loop().time() + 10
                while True:  # poll the ledger with a deadline
                    after = await asyncio.to_thread(_usage, s.runtime)
                    if after.reserved == Amount() or asyncio.get_running_loop().time() > deadline:
                        break
                    await asyncio.sleep(0.05)
                metrics = (await s.get("/metrics", key=None))[1]
                return held, after, metrics

    held, after, metrics = asyncio.run(go())
    assert held.reserved.tokens > 0
    assert after.reserved == Amount() and after.spent == Amount()
    assert 'agentfleet_runtime_errors_total{reason="cancelled"} 1.0' in metrics
    assert "agentfleet_runtime_tasks_running 0.0" in metrics


def test_cancelling_a_run_releases_its_reservation(tmp_path):
    async def go():
        gate = asyncio.Event()

        async def slow(body, headers):
            gate.set()
            await asyncio.sleep(30)
            return final("never")

        async with scripted(slow) as m:
            cfg = make_config(tmp_path, large_url=m.url, budget={"window": "day", "limits": {"tokens": 50000}})
            async with serve(cfg, tmp_path) as s:
                status, run = await s.post("/v1/runs", {"input": "take your time"})
                await asyncio.wait_for(gate.wait(), 10)
                held = await asyncio.to_thread(_usage, s.runtime)
                other = await s.session.delete(f"{s.url}/v1/runs/{run['id']}",
                                               headers={"Authorization": f"Bearer {GINA}"})
                cancel = await s.session.delete(f"{s.url}/v1/runs/{run['id']}",
                                                headers={"Authorization": f"Bearer {ALICE}"})
                body = await cancel.json()
                return status, held, other.status, cancel.status, body, await asyncio.to_thread(_usage, s.runtime)

    status, held, other, cancelled, body, after = asyncio.run(go())
    assert status == 202 and held.reserved.tokens > 0
    assert other == 404  # someone else's run cannot be cancelled (or seen)
    assert cancelled == 200 and body["status"] == "cancelled"
    assert after.reserved == Amount() and after.spent == Amount()
