"""runtime/budget_status: the spend a runtime reads from its ledger reaches the Budget's status (the patch it sends,
to whom, with which token; what happens when the API server refuses or is gone; nothing outside a cluster), and the
ledger facts it publishes: a Budget edit keeps the spend, two AgentApps on one Budget draw on one counter."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from aiohttp import web

from agentfleet.api import RuntimeConfig, parse
from agentfleet.api.agentapp import LedgerSpec
from agentfleet.errors import BudgetExhausted
from agentfleet.ledger import Account, Amount, Limits, Usage, usd_to_micro
from agentfleet.render.agentapp import runtime_config
from agentfleet.runtime import budget_status as bs
from agentfleet.runtime.serving import Runtime

NOW = dt.datetime(2025, 3, 14, 10, 0, tzinfo=dt.timezone.utc)


def _res(kind: str, name: str, spec: dict[str, Any], ns: str) -> Any:
    return parse({"apiVersion": "agentfleet.io/v1alpha1", "kind": kind,
                  "metadata": {"name": name, "namespace": ns}, "spec": spec})


def _config(app: str, *, ns: str = "team-a", limits: dict[str, Any] | None = None,
            ledger: dict[str, Any] | None = None, keys: str = "/dev/null") -> RuntimeConfig:
    """The runtime.yaml the operator renders for `app` referencing Budget `shared`."""
    fleets = {n: _res("ModelFleet", n, {"model": {"uri": "hf://acme/m"}}, ns) for n in ("large", "small")}
    budget = _res("Budget", "shared", {"limits": limits or {"costUsd": 5, "tokens": 100000}, "prices": [
        {"model": "large", "inputPerMTokensUsd": 1, "outputPerMTokensUsd": 2}]}, ns)
    spec = {"fleets": {"large": "large", "small": "small"}, "budgetRef": {"name": "shared"},
            "auth": {"apiKeysSecretRef": {"name": "keys", "key": "keys.yaml"}}, "tools": {"builtin": ["calculator"]},
            "ledger": ledger or {}}
    return runtime_config(_res("AgentApp", app, spec, ns), fleets=fleets, index=None, budget=budget,
                          keys_file=keys)


def _runtime(cfg: RuntimeConfig, state_dir: Path) -> Runtime:
    async def no_model(*_: Any, **__: Any) -> Any:
        raise AssertionError("no model call in these tests")

    return Runtime(cfg, model=no_model, identity=None, ledger=Runtime.open_ledger(cfg, state_dir=state_dir))


def _usage(window_start: str | None, window_end: str | None, tokens: int, micro_usd: int) -> Usage:
    return Usage("team-a/shared", window_start, window_end, Amount(tokens, micro_usd), Amount(), Limits())


# --- the patch ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "usage, expected",
    [
        pytest.param(_usage("2025-03-14T00:00:00Z", "2025-03-15T00:00:00Z", 1234, 2_500_000),
                     {"spentTokens": 1234, "spentUsd": 2.5, "windowStart": "2025-03-14T00:00:00Z",
                      "windowEnd": "2025-03-15T00:00:00Z"}, id="day-window"),
        pytest.param(_usage(None, None, 7, 1), {"spentTokens": 7, "spentUsd": 0.000001, "windowStart": None,
                                                "windowEnd": None}, id="total-window-removes-bounds"),
        pytest.param(_usage("2025-03-14T10:00:00Z", "2025-03-14T11:00:00Z", 0, 0),
                     {"spentTokens": 0, "spentUsd": 0.0, "windowStart": "2025-03-14T10:00:00Z",
                      "windowEnd": "2025-03-14T11:00:00Z"}, id="new-window-nothing-spent"),
    ],
)
def test_status_patch_carries_only_the_runtimes_fields(usage, expected):
    from agentfleet.status import RUNTIME_BUDGET_FIELDS

    patch = bs.status_patch(usage)

    assert patch == {"status": expected}
    assert set(patch["status"]) == set(RUNTIME_BUDGET_FIELDS)  # one writer per field: nothing the operator writes


@pytest.mark.parametrize(
    "env, files, expected",
    [
        pytest.param({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"}, ("token", "ca.crt"),
                     ("https://10.0.0.1:6443", True), id="in-cluster"),
        pytest.param({"KUBERNETES_SERVICE_HOST": "fd00::1"}, ("token",), ("https://[fd00::1]:443", False),
                     id="ipv6-default-port-no-ca"),
        pytest.param({}, ("token", "ca.crt"), None, id="no-service-host"),
        pytest.param({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, ("ca.crt",), None, id="no-token-mounted"),
    ],
)
def test_in_cluster_api_from_env_and_mounted_token(tmp_path, env, files, expected):
    for name in files:
        (tmp_path / name).write_text(f"{name}-content\n")
    api = bs.KubeAPI.in_cluster(env, sa_dir=tmp_path)

    if expected is None:
        assert api is None
        return
    assert (api.base_url, api.ca_file is not None) == expected
    assert api.bearer() == "token-content"


# --- against an HTTP server that records what it is sent -----------------------------------------------------------

class FakeAPIServer:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append({"method": request.method, "path": request.path,
                              "auth": request.headers.get("Authorization"),
                              "type": request.headers.get("Content-Type"), "body": await request.json()})
        return web.json_response({"kind": "Status"} if self.status >= 300 else {}, status=self.status)


@contextlib.asynccontextmanager
async def serving(server: FakeAPIServer) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _spend(rt: Runtime, *, tokens: int, usd: float) -> None:
    account = Account.for_budget(rt.config.namespace, rt.config.budget.name, rt.config.budget.spec)
    hold = rt.ledger.reserve(account, Amount(tokens, usd_to_micro(usd)), task_id="t", now=NOW)
    rt.ledger.settle(hold, Amount(tokens, usd_to_micro(usd)), now=NOW)


def test_publisher_patches_its_budgets_status_with_the_current_token(tmp_path):
    async def main() -> None:
        rt = _runtime(_config("assistant"), tmp_path)
        _spend(rt, tokens=1500, usd=0.75)
        token = tmp_path / "token"
        token.write_text("first-token\n")
        server = FakeAPIServer()
        t = [0.0]
        async with serving(server) as url:
            import aiohttp

            async with aiohttp.ClientSession() as session:
                pub = bs.BudgetStatusPublisher(rt, bs.KubeAPI(url, token_file=str(token)), session,
                                               clock=lambda: t[0])
                assert await pub.publish(now=NOW) is None
                assert await pub.publish(now=NOW) is None  # unchanged: not sent again
                token.write_text("rotated-token\n")  # the kubelet rotates a projected token
                _spend(rt, tokens=500, usd=0.25)
                assert await pub.publish(now=NOW) is None
                t[0] = bs.RESEND_S  # unchanged, but a minute passed: sent again
                assert await pub.publish(now=NOW) is None
                server.status = 403
                t[0] = 2 * bs.RESEND_S
                problem = await pub.publish(now=NOW)
        rt.close()
        rt.ledger.close()

        assert [r["method"] for r in server.requests] == ["PATCH"] * 4
        assert {r["path"] for r in server.requests} == {
            "/apis/agentfleet.io/v1alpha1/namespaces/team-a/budgets/shared/status"}
        assert {r["type"] for r in server.requests} == {"application/merge-patch+json"}
        assert [r["auth"] for r in server.requests] == [
            "Bearer first-token", "Bearer rotated-token", "Bearer rotated-token", "Bearer rotated-token"]
        day = {"windowStart": "2025-03-14T00:00:00Z", "windowEnd": "2025-03-15T00:00:00Z"}
        assert [r["body"] for r in server.requests] == [
            {"status": {"spentTokens": 1500, "spentUsd": 0.75, **day}},
            {"status": {"spentTokens": 2000, "spentUsd": 1.0, **day}},
            {"status": {"spentTokens": 2000, "spentUsd": 1.0, **day}},
            {"status": {"spentTokens": 2000, "spentUsd": 1.0, **day}},
        ]
        assert problem is not None and problem.startswith("HTTP 403")

    asyncio.run(main())


def test_the_loop_never_raises_and_logs_a_failure_once_a_minute(tmp_path, caplog):
    async def main() -> None:
        rt = _runtime(_config("assistant"), tmp_path)
        server = FakeAPIServer()
        server.status = 403
        t = [0.0]
        async with serving(server) as url:
            task = asyncio.create_task(bs.publish_budget_status(rt, every_s=0, api=bs.KubeAPI(url, token="x"),
                                                                clock=lambda: t[0]))

            async def requests_reach(n: int) -> None:
                while len(server.requests) < n:  # a poll of a real server, bounded by wait_for
                    assert not task.done(), task
                    await asyncio.sleep(0.005)

            await asyncio.wait_for(requests_reach(5), 20)
            t[0] = bs.LOG_EVERY_S
            await asyncio.wait_for(requests_reach(len(server.requests) + 5), 20)
            server.status = 200
            await asyncio.wait_for(requests_reach(len(server.requests) + 1), 20)
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        rt.close()
        rt.ledger.close()

    with caplog.at_level(logging.INFO, logger="agentfleet.runtime.budget_status"):
        asyncio.run(main())
    messages = [r.getMessage() for r in caplog.records if r.name == "agentfleet.runtime.budget_status"]
    assert len([m for m in messages if "not published" in m]) == 2, messages
    assert all("Budget team-a/shared" in m and "HTTP 403" in m for m in messages if "not published" in m)
    assert any("published to its status again" in m for m in messages)


def test_outside_a_cluster_the_loop_does_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    rt = _runtime(_config("assistant"), tmp_path)
    # Returns at once (no cluster) instead of looping forever.
    asyncio.run(asyncio.wait_for(bs.publish_budget_status(rt, every_s=0), 5))
    no_budget = Runtime(_config("assistant").model_copy(update={"budget": None}), model=None,  # type: ignore[arg-type]
                        identity=None)
    asyncio.run(asyncio.wait_for(bs.publish_budget_status(no_budget, api=bs.KubeAPI("http://127.0.0.1:9")), 5))
    rt.close()
    rt.ledger.close()


# --- the ledger facts behind the published numbers -----------------------------------------------------------------

def _ledger_spec(backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    if backend == "sqlite":
        return {}
    return {"backend": "redis", "redisUrl": request.getfixturevalue("redis_url")}


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_two_apps_on_one_budget_draw_on_one_counter(tmp_path, request, backend):
    ns = f"share-{uuid.uuid4().hex[:8]}"  # a fresh account in the session's Redis
    ledger = _ledger_spec(backend, request)
    a = _runtime(_config("support", ns=ns, ledger=ledger, limits={"costUsd": 1}), tmp_path)
    b = _runtime(_config("sales", ns=ns, ledger=ledger, limits={"costUsd": 1}), tmp_path)
    try:
        account_a = Account.for_budget(ns, "shared", a.config.budget.spec)
        account_b = Account.for_budget(ns, "shared", b.config.budget.spec)
        assert account_a.key == account_b.key == f"{ns}/shared"
        _spend(a, tokens=100, usd=0.6)
        _spend(b, tokens=50, usd=0.3)

        seen_a = a.ledger.usage(account_a, now=NOW)
        seen_b = b.ledger.usage(account_b, now=NOW)
        assert (seen_a.spent, seen_b.spent) == (Amount(150, 900_000), Amount(150, 900_000))
        # What one app spent is gone for the other: 0.2 more does not fit in 1.0 - 0.9.
        with pytest.raises(BudgetExhausted):
            b.ledger.reserve(account_b, Amount(1, usd_to_micro(0.2)), task_id="t2", now=NOW)
    finally:
        for rt in (a, b):
            rt.close()
            rt.ledger.close()


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_a_budget_edit_keeps_the_spend_and_changes_the_limit(tmp_path, request, backend):
    """Raising limits.costUsd re-renders the runtime config (a rollout): the new pods open the same ledger (the
    claim, or Redis) and find the day's spend there; limits travel with each call."""
    ns = f"edit-{uuid.uuid4().hex[:8]}"
    ledger = _ledger_spec(backend, request)
    old = _runtime(_config("assistant", ns=ns, ledger=ledger, limits={"costUsd": 5}), tmp_path)
    _spend(old, tokens=1000, usd=4.9)
    account = Account.for_budget(ns, "shared", old.config.budget.spec)
    with pytest.raises(BudgetExhausted):
        old.ledger.reserve(account, Amount(1, usd_to_micro(0.5)), task_id="t2", now=NOW)
    old.close()
    old.ledger.close()

    new = _runtime(_config("assistant", ns=ns, ledger=ledger, limits={"costUsd": 6}), tmp_path)
    try:
        raised = Account.for_budget(ns, "shared", new.config.budget.spec)
        usage = new.ledger.usage(raised, now=NOW + dt.timedelta(minutes=5))
        assert usage.spent == Amount(1000, usd_to_micro(4.9))
        assert usage.remaining.micro_usd == usd_to_micro(1.1)
        hold = new.ledger.reserve(raised, Amount(1, usd_to_micro(0.5)), task_id="t3", now=NOW)
        assert hold.amount.micro_usd == usd_to_micro(0.5)
        assert bs.status_patch(usage)["status"]["spentUsd"] == 4.9
    finally:
        new.close()
        new.ledger.close()
