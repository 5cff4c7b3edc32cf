"""Per-key and per-tenant limits on starting runs: the pure limiter (time as a parameter) and the runtime's 429s
on every way to start a run, with slots given back on every way a run stops."""

from __future__ import annotations

import asyncio

import pytest

from agentfleet.errors import TooManyRequests, http_error
from agentfleet.runtime.caller_limits import CallerLimits, caller_digest
from runtime_kit import ALICE, FRANK, GINA, final, make_config, scripted, serve


def _limits(**kw: int) -> CallerLimits:
    args = {"key_concurrent_runs": 0, "tenant_concurrent_runs": 0, "key_runs_per_minute": 0,
            "tenant_runs_per_minute": 0}
    return CallerLimits(**{**args, **kw})


def _by(fn) -> str | None:  # type: ignore[no-untyped-def]
    try:
        fn()
    except TooManyRequests as e:
        return e.by
    return None


def test_key_concurrency_counts_slots_and_release_is_once_only() -> None:
    lim = _limits(key_concurrent_runs=2)
    a, b = lim.acquire("k1", "acme", 0), lim.acquire("k1", "acme", 0)
    assert _by(lambda: lim.acquire("k1", "acme", 0)) == "key_concurrency"
    lim.acquire("k2", "acme", 0)  # another key of the same tenant is not held back
    lim.release(a)
    lim.release(a)  # twice: still one slot given back, not two
    lim.acquire("k1", "acme", 0)
    assert _by(lambda: lim.acquire("k1", "acme", 0)) == "key_concurrency"
    lim.release(b)
    assert lim.by_key["k1"] == 1


def test_tenant_concurrency_spans_its_keys_and_idle_callers_leave_no_entry() -> None:
    lim = _limits(tenant_concurrent_runs=2)
    s1, s2 = lim.acquire("k1", "acme", 0), lim.acquire("k2", "acme", 0)
    assert _by(lambda: lim.acquire("k3", "acme", 0)) == "tenant_concurrency"
    lim.acquire("k4", "globex", 0)
    lim.release(s1)
    lim.release(s2)
    assert "acme" not in lim.by_tenant and "k1" not in lim.by_key


@pytest.mark.parametrize("per_minute, starts, expect_refused_at", [
    (3, [0, 0, 0, 0], 3),          # the burst is one minute's worth
    (3, [0, 0, 0, 20.1], None),    # 20 s refills one (3 per 60 s)
    (60, [0] * 60 + [0.5], 60),    # 0.5 s refills half a run: still refused
    (60, [0] * 60 + [1.01], None),
])
def test_key_rate_token_bucket(per_minute: int, starts: list[float], expect_refused_at: int | None) -> None:
    lim = _limits(key_runs_per_minute=per_minute)
    refused = None
    for i, t in enumerate(starts):
        if _by(lambda: lim.release(lim.acquire("k", "acme", t))) is not None:
            refused = i
            break
    assert refused == expect_refused_at


def test_refusal_takes_nothing_and_says_when_to_retry() -> None:
    lim = _limits(key_runs_per_minute=10, tenant_runs_per_minute=2)
    lim.acquire("k1", "acme", 0)
    lim.acquire("k2", "acme", 0)
    with pytest.raises(TooManyRequests) as e:
        lim.acquire("k1", "acme", 0)
    assert e.value.by == "tenant_rate" and e.value.retry_after_s == pytest.approx(30.0)
    err = http_error(e.value)
    assert err.status == 429 and err.headers["Retry-After"] == "30"
    assert err.body["error"]["code"] == "rate_limit_exceeded" and "tenant" in err.body["error"]["message"]
    # The refused start took no token of the key: k1 started once, so 9 of 10 are left.
    assert lim.key_rate.remaining("k1", 0) == 9
    assert lim.headers("k1", 0) == {"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "9"}
    assert _limits().headers("k1", 0) == {}


def test_rate_tables_are_bounded() -> None:
    lim = CallerLimits(key_concurrent_runs=0, tenant_concurrent_runs=0, key_runs_per_minute=5,
                       tenant_runs_per_minute=0, max_tracked=100)
    for i in range(1000):
        lim.release(lim.acquire(f"k{i}", "t", float(i)))
    assert len(lim.key_rate.buckets) == 100


def test_caller_digest_hides_the_key() -> None:
    assert ALICE not in caller_digest(ALICE) and caller_digest(ALICE) != caller_digest(FRANK)


def test_runtime_limits_per_key_and_tenant_on_every_start_and_gives_slots_back(tmp_path) -> None:
    """Alice and Frank share tenant acme (limit 2 runs at once), each key may hold 1; Gina is in globex. A held
    model call keeps runs in progress; each way to start a run is refused past the limit with 429, and every way a
    run stops (answered, failed, stream abandoned) gives its slot back."""
    auth = {"apiKeysSecretRef": {"name": "keys", "key": "keys.yaml"},
            "perKey": {"concurrentRuns": 1}, "perTenant": {"concurrentRuns": 2, "runsPerMinute": 50}}
    gate = asyncio.Event()

    async def reply(body, headers):  # type: ignore[no-untyped-def]
        if "hold" in str(body["messages"][-1].get("content")):
            await gate.wait()
        return final("ok")

    async def go():  # type: ignore[no-untyped-def]
        async with scripted(reply) as m:
            cfg = make_config(tmp_path, large_url=m.url, app={"auth": auth})
            async with serve(cfg, tmp_path) as s:
                held = asyncio.ensure_future(s.chat("hold please", ALICE))
                while len(m.requests) < 1:
                    await asyncio.sleep(0.02)
                out = {"alice_chat": await s.chat("hi", ALICE),
                       "alice_run": await s.post("/v1/runs", {"input": "hi"}, ALICE),
                       "alice_responses": await s.post("/v1/responses", {"input": "hi"}, ALICE)}
                frank_held = asyncio.ensure_future(s.chat("hold too", FRANK))
                while len(m.requests) < 2:
                    await asyncio.sleep(0.02)
                # acme has 2 in progress: a third acme key would be refused by the tenant limit; Frank's own
                # second one by his key limit first.
                out["frank_second"] = await s.chat("hi", FRANK)
                out["gina"] = await s.chat("hi", GINA)
                async with s.session.post(s.url + "/v1/chat/completions",
                                          json={"messages": [{"role": "user", "content": "hi"}]},
                                          headers={"Authorization": f"Bearer {ALICE}"}) as r:
                    out["retry_after"] = r.headers.get("Retry-After")
                    out["rate_headers"] = (r.headers.get("x-ratelimit-limit-requests"),
                                           r.headers.get("x-ratelimit-remaining-requests"))
                gate.set()
                out["held"] = await held
                await frank_held
                # Slots came back: answered chat, and a streamed one whose client leaves at once.
                out["alice_after"] = await s.chat("hi", ALICE)
                async with s.session.post(s.url + "/v1/chat/completions",
                                          json={"messages": [{"role": "user", "content": "hi"}], "stream": True},
                                          headers={"Authorization": f"Bearer {ALICE}"}) as r:
                    assert r.status == 200
                for _ in range(100):  # the abandoned stream's run is cancelled with its handler
                    status, _ = await s.chat("again", ALICE)
                    if status == 200:
                        out["alice_after_stream"] = status
                        break
                    await asyncio.sleep(0.05)
                out["run_end"] = await s.run_to_end("hi", ALICE)
                out["after_run"] = await s.chat("hi", ALICE)
                out["metrics"] = (await s.get("/metrics", key=None))[1]
                return out

    out = asyncio.run(go())
    for k in ("alice_chat", "alice_run", "alice_responses"):
        status, body = out[k]
        assert status == 429, (k, body)
        assert body["error"]["code"] == "concurrency_limit_exceeded" and "API key" in body["error"]["message"]
    assert out["retry_after"] == "1"
    assert out["rate_headers"][0] is None  # the key's rate is unlimited: no x-ratelimit headers
    assert out["frank_second"][0] == 429
    assert out["gina"][0] == 200
    assert out["held"][0] == 200 and out["alice_after"][0] == 200
    assert out.get("alice_after_stream") == 200
    assert out["run_end"]["status"] == "completed" and out["after_run"][0] == 200
    # 5 refusals above, plus any "again" refused while the abandoned stream's run was still being cancelled
    line = next(x for x in out["metrics"].splitlines()
                if x.startswith('agentfleet_runtime_caller_limited_total{by="key_concurrency"}'))
    assert float(line.split()[-1]) >= 5
