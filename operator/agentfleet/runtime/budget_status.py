"""The runtime's only call to the Kubernetes API: publish the Budget's spend, read from the ledger, into the
Budget's status so `kubectl get budget` shows it. One writer per field: the runtime owns status.spentTokens,
spentUsd, windowStart and windowEnd (status.RUNTIME_BUDGET_FIELDS: the ledger's current window); the operator
derives remaining* and the conditions (Exhausted, Degraded) from them and the spec. The runtime's ServiceAccount may
only get and patch `budgets/status` of its own Budget (render.agentapp.budget_access), so this speaks plain HTTP
with aiohttp and a bearer token: the runtime never imports the kubernetes client. Outside a cluster it does nothing;
a failure is logged at most once a minute and never ends the loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import os
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import aiohttp

from ..ledger import Account, Usage
from ..names import GROUP, SERVICE_ACCOUNT_DIR, VERSION

__all__ = ["KubeAPI", "BudgetStatusPublisher", "publish_budget_status", "status_patch", "budget_status_path",
           "LOG_EVERY_S", "RESEND_S"]

log = logging.getLogger("agentfleet.runtime.budget_status")

LOG_EVERY_S = 60.0
# An unchanged status is sent again this often anyway: a Budget deleted and re-created, or a status edited by hand,
# shows the spend again within a minute. The API server skips writes that change nothing.
RESEND_S = 60.0
REQUEST_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class KubeAPI:
    """Where the API server is and how to authenticate: a token (or a file holding it: the kubelet rotates a
    projected token, so it is read for every request) and the CA that signed the server's certificate."""

    base_url: str
    token: str | None = None
    token_file: str | None = None
    ca_file: str | None = None

    @classmethod
    def in_cluster(cls, env: Mapping[str, str] | None = None,
                   sa_dir: str | os.PathLike[str] = SERVICE_ACCOUNT_DIR) -> KubeAPI | None:
        """The pod's API server and service-account token, None when not in a cluster (or no token is mounted)."""
        env = os.environ if env is None else env
        host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
        token = Path(sa_dir) / "token"
        if not host or not token.is_file():
            return None
        ca = Path(sa_dir) / "ca.crt"
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", token_file=str(token), ca_file=str(ca) if ca.is_file() else None)

    def bearer(self) -> str:
        if self.token_file is not None:
            return Path(self.token_file).read_text().strip()
        return self.token or ""

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.base_url.startswith("https://"):
            return None
        return ssl.create_default_context(cafile=self.ca_file)


def budget_status_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/budgets/{name}/status"


def status_patch(usage: Usage) -> dict[str, Any]:
    """The JSON merge patch of the runtime's fields: spent in the ledger's current window and that window (null
    bounds for a `total` window remove them)."""
    return {"status": {**usage.status_patch(), "windowStart": usage.window_start, "windowEnd": usage.window_end}}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class BudgetStatusPublisher:
    """Reads the Budget's usage from the runtime's ledger and patches it into the Budget's status when it changed
    (or RESEND_S passed). `publish()` reports a failure as a string instead of raising."""

    def __init__(self, runtime: Any, api: KubeAPI, session: aiohttp.ClientSession, *,
                 clock: Callable[[], float] = time.monotonic):
        budget = runtime.config.budget
        self.runtime, self.api, self.session, self.clock = runtime, api, session, clock
        self.account = Account.for_budget(runtime.config.namespace, budget.name, budget.spec)
        self.ref = f"Budget {runtime.config.namespace}/{budget.name}"
        self.url = api.base_url.rstrip("/") + budget_status_path(runtime.config.namespace, budget.name)
        self.sent: dict[str, Any] | None = None
        self.sent_at = -float("inf")

    async def usage(self, now: dt.datetime) -> Usage:
        ledger = self.runtime.ledger
        pool = getattr(self.runtime, "ledger_pool", None)  # the ledger's own threads (SQLite: one writer)
        return await asyncio.get_running_loop().run_in_executor(
            pool, functools.partial(ledger.usage, self.account, now=now))

    async def publish(self, *, now: dt.datetime | None = None) -> str | None:
        """One round: None when the status holds the spend (sent now or unchanged), else why not."""
        try:
            body = status_patch(await self.usage(now or _now()))
        except Exception as e:  # noqa: BLE001 - a ledger outage is reported, the loop goes on
            return f"cannot read the ledger: {type(e).__name__}: {e}"
        if body == self.sent and self.clock() - self.sent_at < RESEND_S:
            return None
        try:
            token = await asyncio.to_thread(self.api.bearer)
            async with self.session.patch(
                    self.url, json=body, headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "application/merge-patch+json"},
                    timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as r:
                if r.status >= 300:
                    detail = (await r.text())[:300]
                    return f"HTTP {r.status} from the API server: {detail}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            return f"{type(e).__name__}: {e}"
        self.sent, self.sent_at = body, self.clock()
        return None


async def publish_budget_status(runtime: Any, *, every_s: float = 10.0, api: KubeAPI | None = None,
                                clock: Callable[[], float] = time.monotonic) -> None:
    """Publish the spend every `every_s` seconds, forever (cancel to stop). Returns at once when the app has no
    Budget or ledger, or (without `api`) when not running in a cluster."""
    if runtime.config.budget is None or runtime.ledger is None:
        return
    api = api or KubeAPI.in_cluster()
    if api is None:
        log.debug("not in a cluster: the Budget's status is not published")
        return
    ctx = await asyncio.to_thread(api.ssl_context)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx if ctx is not None else True)) as s:
        publisher = BudgetStatusPublisher(runtime, api, s, clock=clock)
        logged_at = -float("inf")
        failing = False
        while True:
            problem = await publisher.publish()
            if problem is not None:
                if clock() - logged_at >= LOG_EVERY_S:
                    log.warning("%s: spend not published to its status: %s", publisher.ref, problem)
                    logged_at = clock()
                failing = True
            elif failing:
                log.info("%s: spend published to its status again", publisher.ref)
                failing = False
            await asyncio.sleep(every_s)
