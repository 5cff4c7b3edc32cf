"""Serving: one request's path from an authenticated Principal to an answer — budget admission (a root
reservation on the ledger), the agent loop, settling or releasing, usage and cost, citations, metrics. The HTTP
glue (server.py) and the CLI call `Runtime.run_task`; nothing here knows about HTTP.

Budget model: a task takes one root reservation at admission, sized for the whole task (maxTokens at the dearer
model's price, capped by the Budget's per-task caps); each model call reserves a child of it before the call and
settles its actual cost after; a sub-agent takes its budgetShare of its parent's free room. When the task ends the
root settles (its unspent rest returns to the window); when it is cancelled (client gone, run cancelled) or fails,
it is released. The ledger is synchronous (SQLite or Redis), so every ledger call runs in a worker thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import functools
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Sequence

from ..api.agentapp import ModelRole
from ..api.runtime_config import RuntimeConfig
from ..errors import BudgetExhausted, ReservationClosed, StateUnavailable, UpstreamError
from ..ledger import Account, Amount, Ledger, Reservation, budget_applies, open_ledger
from ..retrieval.filters import Principal
from ..telemetry import DISABLED, Telemetry, TelemetrySettings, start as start_telemetry
from .agent import (
    AgentResult, AgentSpec, CallBudget, ExternalTools, ModelCall, RemoteAgents, Resume, TaskContext, ToolTimes,
    run_agent,
)
from .identity import Identity
from .metrics import RuntimeMetrics
from .pricing import ModelPrice, call_cost, call_estimate, price_for
from .routing import endpoint_for
from .runs import IDEMPOTENT_TOOLS, MCP_SEPARATOR
from .sources import document_url, linked

__all__ = ["Runtime", "TaskBudget", "TaskOutcome", "new_task_id", "Retrieval", "until_available"]

log = logging.getLogger("agentfleet.runtime")


def new_task_id() -> str:
    return "task-" + uuid.uuid4().hex


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# A task's ledger writes wait out a state store outage this long (a Redis restart) instead of losing a settle:
# tokens the engine produced are charged once the store is back. Admission does not wait (503 + Retry-After).
STATE_OUTAGE_WAIT_S = 60.0


async def until_available(pool: concurrent.futures.Executor | None, call: Callable[[], Any], *,
                          wait_s: float = STATE_OUTAGE_WAIT_S) -> Any:
    """Run a blocking state-store call in `pool`, retrying while the store is unreachable (StateUnavailable)."""
    loop = asyncio.get_running_loop()
    give_up, pause = time.monotonic() + wait_s, 0.1
    while True:
        try:
            return await loop.run_in_executor(pool, call)
        except StateUnavailable:
            if time.monotonic() + pause > give_up:
                raise
            log.warning("state store unreachable; retrying in %.1fs", pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)  # a store back from an outage is used within half a second


class TaskBudget:
    """An agent's slice of the task's reservation (or no ledger at all when no Budget covers the caller: costs are
    still computed and reported)."""

    def __init__(self, *, ledger: Ledger | None, account: Account | None, prices: Mapping[str, ModelPrice],
                 task_id: str, hold: Reservation | str | None, is_degraded: bool = False,
                 pool: concurrent.futures.Executor | None = None, degrade_by: str = "small-model"):
        self.ledger, self.account, self.prices, self.task_id = ledger, account, prices, task_id
        self.hold, self.is_degraded, self.pool = hold, is_degraded, pool
        self.degrade_by = degrade_by  # the Budget's degradeBy: what a degraded task gives up
        self.is_handed_off = False  # set when the run moves to another replica: abandon() keeps the reservation
        # Whether the Budget's per-task caps (not the app's maxTokens) bound the task's reservation: running out of
        # it is then the Budget's stop (budget_exhausted), else the task's own cap (max_tokens).
        self.is_budget_capped = False

    @property
    def on_small_model(self) -> bool:
        """Every step runs on the small model (a degraded task, unless its Budget degrades by priority alone)."""
        return self.is_degraded and self.degrade_by != "low-priority"

    @property
    def is_low_priority(self) -> bool:
        """Its calls go in the fleet router's low priority band (a degraded task of a Budget with degradeBy
        low-priority or both)."""
        return self.is_degraded and self.degrade_by != "small-model"

    @property
    def degraded_reason(self) -> str:
        near = self.account.limits.degrade_at_percent if self.account is not None else None
        if near is not None:
            return f"budget near or past its limit (degradeAtPercent {near}%): degraded to the small model"
        return "budget exhausted: degraded to the small model"

    @property
    def hold_id(self) -> str | None:
        return self.hold if isinstance(self.hold, str) or self.hold is None else self.hold.id

    async def _ledger(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await until_available(self.pool, functools.partial(fn, *args, **kwargs))

    def _price(self, role: ModelRole) -> ModelPrice:
        return self.prices.get(role) or self.prices["large"]

    async def reserve(self, role: ModelRole, *, prompt_tokens: int, max_tokens: int) -> Reservation | None:
        if self.ledger is None or self.hold is None:
            return None
        est = call_estimate(self._price(role), prompt_tokens=prompt_tokens, max_tokens=max_tokens)
        return await self._ledger(self.ledger.reserve, self.account, est, task_id=self.task_id, now=_now(),
                                       parent=self.hold)

    async def task_spent(self) -> Amount | None:
        """The ledger's spend of the whole task so far (None without a ledger)."""
        if self.ledger is None or self.account is None:
            return None
        return await self._ledger(self.ledger.task_spent, self.account, self.task_id, now=_now())  # type: ignore[no-any-return]

    async def settle(self, hold: Reservation | None, role: ModelRole, *, prompt_tokens: int,
                     completion_tokens: int) -> int:
        cost = call_cost(self._price(role), prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
        if self.ledger is not None and hold is not None:
            try:
                await self._ledger(self.ledger.settle, hold, cost, now=_now())
            except ReservationClosed:  # the task was released meanwhile: nothing left to settle into
                pass
        return cost.micro_usd

    async def release(self, hold: Reservation | None) -> None:
        if self.ledger is not None and hold is not None:
            await self._ledger(self.ledger.release, hold, now=_now())

    async def child(self, share: float) -> CallBudget:
        if self.ledger is None or self.hold is None:
            return TaskBudget(ledger=None, account=None, prices=self.prices, task_id=self.task_id, hold=None,
                              is_degraded=self.is_degraded, degrade_by=self.degrade_by)
        hold = await self._ledger(self.ledger.reserve, self.account, None, task_id=self.task_id, now=_now(),
                                  parent=self.hold, share=share)
        return TaskBudget(ledger=self.ledger, account=self.account, prices=self.prices, task_id=self.task_id,
                          hold=hold, is_degraded=self.is_degraded, pool=self.pool, degrade_by=self.degrade_by)

    async def close(self) -> None:
        """Settle this slice with no spend of its own (its calls settled already): the rest returns upward."""
        if self.ledger is not None and self.hold is not None:
            try:
                await self._ledger(self.ledger.settle, self.hold, Amount(), now=_now())
            except ReservationClosed:
                pass

    async def abandon(self) -> None:
        # A run handed to another replica keeps its reservation: the new owner draws on it and closes it.
        if self.ledger is not None and self.hold is not None and not self.is_handed_off:
            await self._ledger(self.ledger.release, self.hold, now=_now())


class Retrieval:
    """The retrieve tool's edge: the Retriever (pymilvus + embedder, both blocking) on one dedicated thread, so
    the store client and the cache are never used from two threads at once and the event loop never blocks."""

    def __init__(self, retriever: Any, *, top_k: int, metrics: RuntimeMetrics, timeout_s: float = 30.0,
                 telemetry: Telemetry = DISABLED):
        self.retriever, self.top_k, self.metrics, self.timeout_s = retriever, top_k, metrics, timeout_s
        self.telemetry = telemetry
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrieval")

    def _search(self, query: str, principal: Principal) -> list[Any]:
        cache = getattr(self.retriever, "cache", None)
        before = cache.hits if cache is not None else 0
        hits = self.retriever.search(query, principal, k=self.top_k)
        if cache is not None:
            self.metrics.retrieval_cache.labels("hit" if cache.hits > before else "miss").inc()
        return hits

    async def __call__(self, query: str, principal: Principal) -> list[Any]:
        if not self.telemetry.is_enabled:
            return await self._timed(query, principal)
        # The span names the collection and counts; the query, the passages and the principal's groups (the
        # filter) stay out of it.
        collection = str(getattr(getattr(self.retriever, "store", None), "collection", "") or "index")
        with self.telemetry.span(f"retrieval {collection}", {
                "gen_ai.operation.name": "retrieval", "gen_ai.data_source.id": collection,
                "gen_ai.retrieval.top_k": self.top_k, "agentfleet.retrieval.k": self.top_k}, kind="client") as span:
            hits = await self._timed(query, principal)
            span.set_attribute("agentfleet.retrieval.hits", len(hits))
            return hits

    async def _timed(self, query: str, principal: Principal) -> list[Any]:
        started = time.monotonic()
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, self._search, query, principal)
        except Exception as e:  # the store's own errors carry URIs and expressions: log them, say less
            log.warning("retrieve failed: %s", e)
            raise UpstreamError("the document index did not answer") from None
        finally:
            self.metrics.retrieval_seconds.observe(time.monotonic() - started)

    async def document(self, doc_id: str, principal: Principal, *, limit: int) -> list[Any]:
        """The chunks of one document that `principal` may read (the cited-source route), on the retrieval
        thread; none when the retriever has no store to read documents from."""
        read = getattr(getattr(self.retriever, "store", None), "document_chunks", None)
        if read is None:
            return []
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.pool, functools.partial(read, doc_id, principal, limit=limit))
        except Exception as e:  # the store's own errors carry URIs and expressions: log them, say less
            log.warning("reading a source failed: %s", e)
            raise UpstreamError("the document index did not answer") from None

    def is_ready(self) -> str | None:
        try:
            ok = self.pool.submit(lambda: self.retriever.store.exists()).result(timeout=5)
        except Exception as e:  # noqa: BLE001 - readiness reports, never raises
            return f"index unreachable: {type(e).__name__}"
        return None if ok else "index collection missing"

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


@dataclass
class TaskOutcome:
    task_id: str
    result: AgentResult
    tokens: dict[str, int]
    cost_micro_usd: int
    models: dict[str, dict[str, int]]
    citations: list[dict[str, Any]]
    seconds: float
    is_degraded: bool = False
    budget: dict[str, Any] | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def step_count(self) -> int:
        def count(steps: Sequence[dict[str, Any]]) -> int:
            return sum(1 + sum(count(s["steps"]) for s in st.get("sub_agents", [])) for st in steps)
        return count(self.steps)

    def summary(self) -> dict[str, Any]:
        """The `agentfleet` extension object of a chat completion (and the body of a finished run)."""
        return {"task_id": self.task_id, "stop_reason": self.result.stop_reason, "detail": self.result.detail,
                "steps": self.step_count, "models": self.models, "citations": self.citations,
                "cost_usd": self.cost_micro_usd / 1e6, "usage": self.tokens, "degraded": self.is_degraded,
                "seconds": round(self.seconds, 3), "budget": self.budget}


class Runtime:
    """Everything one AgentApp server shares between requests. `start()`/`close()` inside the event loop."""

    def __init__(self, config: RuntimeConfig, *, model: ModelCall, identity: Identity | None,
                 ledger: Ledger | None = None, retrieval: Retrieval | None = None,
                 metrics: RuntimeMetrics | None = None, clock: Callable[[], float] = time.monotonic,
                 external: ExternalTools | None = None, telemetry: Telemetry = DISABLED,
                 remote: RemoteAgents | None = None):
        self.config, self.model, self.identity, self.ledger = config, model, identity, ledger
        self.telemetry = telemetry
        self.remote = remote  # subAgents[].a2a: server.build_app gives an app that has one the A2A client
        self.request_models = {role: endpoint_for(role, config.models).model for role in ("large", "small")}
        self.external = external
        self.retrieval = retrieval
        # Where a citation of the index links when the index is one http(s) document (sources.py)
        self.index_document_url = document_url(config.index.source_url) if config.index else None
        self.metrics = metrics or RuntimeMetrics()
        self.clock = clock
        budget_spec = config.budget.spec if config.budget else None
        table = budget_spec.prices if budget_spec else []
        self.prices = {role: price_for(endpoint_for(role, config.models), table) for role in ("large", "small")}
        self.sub_agents = {s.name: s for s in config.sub_agents}
        # An MCP server's tools are named "<server>__<tool>": a server declared idempotent covers them all.
        self.idempotent_tools = IDEMPOTENT_TOOLS | {f"{m.name}{MCP_SEPARATOR}" for m in config.tools.mcp_servers
                                                    if m.idempotent}
        self.budget_seen: dict[str, Any] = {}
        self.tool_times = ToolTimes()  # typical tool durations on this replica (tools.warm)
        # SQLite admits one writer at a time and a waiting writer sleeps in growing steps (its busy handler), so
        # threads of this process queue here instead: one thread for SQLite, a few for Redis's round trips.
        self.ledger_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=8 if config.ledger.backend == "redis" else 1, thread_name_prefix="ledger")

    @staticmethod
    def open_ledger(config: RuntimeConfig, *, state_dir: str | os.PathLike[str] | None = None) -> Ledger | None:
        if config.budget is None:
            return None
        base = Path(state_dir or os.environ.get("AGENTFLEET_STATE_DIR") or ".")
        return open_ledger(config.ledger, sqlite_path=base / "ledger.db",
                           hold_ttl_s=config.limits.deadline_seconds + 300)

    @staticmethod
    def open_telemetry(config: RuntimeConfig) -> Telemetry:
        """Live OpenTelemetry when the AgentApp sets spec.telemetry, else DISABLED (nothing imported)."""
        t = config.telemetry
        if t is None:
            return DISABLED
        return start_telemetry(TelemetrySettings(
            otlp_endpoint=t.otlp_endpoint, service_name=t.service_name or config.app, sample_ratio=t.sample_ratio,
            resource={"service.namespace": config.namespace, "agentfleet.app": config.app}))

    async def _ledger(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.ledger_pool,
                                                                functools.partial(fn, *args, **kwargs))

    def close(self) -> None:
        self.ledger_pool.shutdown(wait=True)
        self.telemetry.shutdown()

    # --- admission --------------------------------------------------------------------------------------------
    def account_for(self, principal: Principal) -> Account | None:
        b = self.config.budget
        if b is None or self.ledger is None or not budget_applies(b.spec.scope, app=self.config.app,
                                                                   tenant=principal.tenant):
            return None
        return Account.for_budget(self.config.namespace, b.name, b.spec)

    def task_estimate(self, account: Account, *, roles: Sequence[str] | None = None) -> Amount:
        """The whole task's bound: maxTokens at the dearer rate of the dearer model (of `roles`), within the
        per-task caps."""
        est = self._max_tokens_estimate(roles)
        lim = account.limits
        return Amount(min(est.tokens, lim.task_tokens or est.tokens),
                      min(est.micro_usd, lim.task_micro_usd if lim.task_micro_usd is not None else est.micro_usd))

    def degraded_estimate(self, account: Account) -> Amount:
        """A degraded task's bound: every step runs on the small model (priced as the large one when the app has
        no small fleet)."""
        return self.task_estimate(account, roles=("small",))

    def _max_tokens_estimate(self, roles: Sequence[str] | None = None) -> Amount:
        rate = max(max(p.input_micro_per_m, p.output_micro_per_m) for role, p in self.prices.items()
                   if roles is None or role in roles)
        return call_cost(ModelPrice(rate, rate), prompt_tokens=self.config.limits.max_tokens, completion_tokens=0)

    def _budget_task_bound(self, budget: TaskBudget) -> TaskBudget:
        if budget.account is not None:
            budget.is_budget_capped = self.task_estimate(budget.account) != self._max_tokens_estimate()
        return budget

    async def admit(self, principal: Principal, task_id: str) -> TaskBudget:
        """The task's root budget, or BudgetExhausted (429) when the Budget rejects; with onExhausted: degrade a
        task past the window limit is admitted and runs on the small model, and so does one admitted past the
        Budget's degradeAtPercent (before the limit, so the rest of the window lasts longer)."""
        account = self.account_for(principal)
        if account is None:
            return TaskBudget(ledger=None, account=None, prices=self.prices, task_id=task_id, hold=None)
        assert self.ledger is not None and self.config.budget is not None
        degrade_by = self.config.budget.spec.degrade_by
        # A task degraded by priority alone keeps its routing, so it holds the full bound.
        est = self.task_estimate(account)
        small = self.degraded_estimate(account) if degrade_by != "low-priority" else None
        ttl = self.config.limits.deadline_seconds + 60.0
        ledger, degrade = self.ledger, self.config.budget.spec.on_exhausted == "degrade"

        def reserve() -> tuple[Reservation, bool]:
            try:
                taken = ledger.reserve(account, est, task_id=task_id, now=_now(), ttl_s=ttl, degraded_estimate=small)
                return taken, taken.is_degraded  # past the Budget's degradeAtPercent
            except BudgetExhausted as e:
                if not degrade or not e.what.startswith("window"):
                    raise
                return ledger.reserve(account, est, task_id=task_id, now=_now(), ttl_s=ttl, degraded=True,
                                      degraded_estimate=small), True

        # The reservation is taken in a worker thread, which a cancellation (the client went away) cannot stop:
        # the reserve runs shielded, and when the awaiting task is cancelled what it took is released at once
        # instead of waiting for its TTL.
        taken = asyncio.get_running_loop().run_in_executor(self.ledger_pool, reserve)
        try:
            hold, degraded = await asyncio.shield(taken)
        except asyncio.CancelledError:
            await asyncio.shield(self._undo_admission(taken))
            raise
        except BudgetExhausted:
            self.metrics.errors.labels("budget_exhausted").inc()
            raise
        return self._budget_task_bound(TaskBudget(ledger=self.ledger, account=account, prices=self.prices,
                                                  task_id=task_id, hold=hold, is_degraded=degraded,
                                                  pool=self.ledger_pool, degrade_by=degrade_by))

    async def _undo_admission(self, taken: asyncio.Future[tuple[Reservation, bool]]) -> None:
        """Release the reservation an abandoned admission took (nothing when it took none)."""
        try:
            hold, _ = await taken
        except BaseException:  # noqa: BLE001 - it took nothing (rejected, or the ledger failed)
            return
        assert self.ledger is not None
        await self._ledger(self.ledger.release, hold, now=_now())

    # --- one task -----------------------------------------------------------------------------------------------
    def resumed_budget(self, principal: Principal, task_id: str, hold_id: str | None, *,
                       is_degraded: bool) -> TaskBudget:
        """The budget of a run taken over from another replica: its root reservation, carried over as it is."""
        account = self.account_for(principal) if hold_id is not None else None
        return self._budget_task_bound(TaskBudget(
            ledger=self.ledger if account else None, account=account, prices=self.prices, task_id=task_id,
            hold=hold_id if account else None, is_degraded=is_degraded, pool=self.ledger_pool,
            degrade_by=self.config.budget.spec.degrade_by if self.config.budget else "small-model"))

    async def run_task(self, principal: Principal, history: Sequence[Mapping[str, Any]], *, task_id: str,
                       budget: TaskBudget, emit: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
                       on_delta: Callable[[str], Awaitable[None]] | None = None,
                       answer_max_tokens: int | None = None, resume: Resume | None = None,
                       deadline_in_s: float | None = None, takeovers: int = 0) -> TaskOutcome:
        """Run the agent for an admitted task. Always closes the root reservation: settled when the task ends,
        released when it is cancelled or fails (kept when it was handed to another replica). `resume` continues a
        recorded run; `deadline_in_s` is what is left of its deadline (a run keeps the one it was admitted with);
        `takeovers`: how many replicas ran it before this one (the root span says it is a resumed segment)."""
        cfg = self.config
        started = self.clock()
        left_s = cfg.limits.deadline_seconds if deadline_in_s is None else deadline_in_s
        ctx = TaskContext(principal=principal, task_id=task_id, limits=cfg.limits, model=self.model,
                          deadline_s=started + left_s, resume=resume, idempotent_tools=self.idempotent_tools,
                          routing=cfg.budget.spec.routing if cfg.budget else None,
                          retrieve=self.retrieval if self.retrieval is not None and
                          "retrieve" in cfg.tools.builtin else None,
                          sub_agents=self.sub_agents, clock=self.clock, emit=emit,
                          answer_max_tokens=answer_max_tokens, external=self.external,
                          telemetry=self.telemetry, request_models=self.request_models, remote=self.remote,
                          warm=cfg.tools.warm if cfg.tools.warm.enabled else None, tool_times=self.tool_times,
                          span_attributes=self._span_attributes(principal, task_id, budget, takeovers)
                          if self.telemetry.is_enabled else {})
        tools = list(cfg.tools.builtin) + (["delegate"] if self.sub_agents and "delegate" not in
                                            cfg.tools.builtin else []) + [m.name for m in cfg.tools.mcp_servers]
        spec = AgentSpec(cfg.app, cfg.system_prompt, tuple(tools))
        self.metrics.tasks_running.inc()
        ok = False
        set_low = getattr(self.model, "set_low_priority", None) if budget.is_low_priority else None
        if set_low is not None:  # a Budget near its limit with degradeBy low-priority: the routers' low band
            set_low(task_id, True)
        try:
            result = await run_agent(ctx, spec, budget, history, on_delta=on_delta)
            ok = True
        finally:
            if set_low is not None:
                set_low(task_id, False)
            self.metrics.tasks_running.dec()
            if ok:
                await asyncio.shield(budget.close())
            else:
                self.metrics.errors.labels("cancelled").inc()
                await asyncio.shield(budget.abandon())
            end_run = getattr(self.model, "end_run", None)
            if end_run is not None and not getattr(budget, "is_handed_off", False):
                end_run(task_id)  # the routers drop its sessions' claims (a handed-off run keeps them)
        elapsed = self.clock() - started
        prompt = sum(m["prompt_tokens"] for m in ctx.models_used.values())
        completion = sum(m["completion_tokens"] for m in ctx.models_used.values())
        outcome = TaskOutcome(
            task_id=task_id, result=result,
            tokens={"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
            cost_micro_usd=ctx.cost_micro_usd,
            models={k: {**v, "cost_usd": v["cost_micro_usd"] / 1e6} for k, v in ctx.models_used.items()},
            citations=linked(ctx.citations.wire(), index_document_url=self.index_document_url),
            seconds=elapsed, is_degraded=budget.is_degraded,
            steps=[s.wire() for s in result.steps])
        self._observe(principal, outcome)
        if budget.account is not None and self.config.budget is not None:
            # The window's remaining is read by a timer (refresh_budget), not per task: one more ledger
            # transaction per request cost ~20 % of the ledger's throughput (`agentfleet bench runtime --budget`).
            outcome.budget = {"name": self.config.budget.name, **self.budget_seen}
        return outcome

    def _span_attributes(self, principal: Principal, task_id: str, budget: TaskBudget,
                         takeovers: int = 0) -> dict[str, Any]:
        """The root invoke_agent span's agentfleet.* attributes: the task, the tenant and the Budget as last read
        (never the user or the groups), and for a run taken over, that this span is a resumed segment."""
        out: dict[str, Any] = {"agentfleet.app": self.config.app, "agentfleet.task_id": task_id,
                               "agentfleet.tenant": principal.tenant, "agentfleet.budget.degraded": budget.is_degraded}
        if takeovers:
            out["agentfleet.run.resumed"] = True
            out["agentfleet.run.takeovers"] = takeovers
        b = self.config.budget
        if b is not None and budget.account is not None:
            out["agentfleet.budget.name"] = b.name
            for key in ("remaining_usd", "spent_usd", "remaining_tokens"):
                value = self.budget_seen.get(key)
                if value is not None:
                    out[f"agentfleet.budget.{key}"] = value
        return out

    def _observe(self, principal: Principal, o: TaskOutcome) -> None:
        m = self.metrics
        m.task_seconds.labels(o.result.stop_reason).observe(o.seconds)
        m.task_steps.observe(o.step_count)
        if o.result.stop_reason != "answered":
            m.errors.labels(o.result.stop_reason).inc()
        for model, use in o.models.items():
            m.tokens.labels(model, principal.tenant, "prompt").inc(use["prompt_tokens"])
            m.tokens.labels(model, principal.tenant, "completion").inc(use["completion_tokens"])
            m.cost_usd.labels(model, principal.tenant).inc(use["cost_micro_usd"] / 1e6)

    async def refresh_budget(self) -> None:
        """Read the Budget's window from the ledger into the gauges and `budget_seen` (answers report it)."""
        b = self.config.budget
        if self.ledger is None or b is None:
            return
        account = Account.for_budget(self.config.namespace, b.name, b.spec)
        usage = await self._ledger(self.ledger.usage, account, now=_now())
        rem = usage.remaining
        self.metrics.budget_remaining_usd.labels(b.name).set(-1 if rem.micro_usd < 0 else rem.micro_usd / 1e6)
        self.metrics.budget_remaining_tokens.labels(b.name).set(rem.tokens)
        self.budget_seen = {"window_start": usage.window_start, "spent_usd": usage.spent.micro_usd / 1e6,
                            "spent_tokens": usage.spent.tokens,
                            "remaining_usd": None if rem.micro_usd < 0 else rem.micro_usd / 1e6,
                            "remaining_tokens": None if rem.tokens < 0 else rem.tokens,
                            "as_of": _now().strftime("%Y-%m-%dT%H:%M:%SZ")}

    async def readiness(self, probe: Callable[[ModelRole], Awaitable[str | None]]) -> dict[str, str | None]:
        checks: dict[str, str | None] = {}
        urls: dict[str, str] = {}
        for role in ("large", "small"):
            url = endpoint_for(role, self.config.models).url
            if url in urls.values():
                checks[f"model_{role}"] = checks[f"model_{next(r for r, u in urls.items() if u == url)}"]
                continue
            urls[role] = url
            checks[f"model_{role}"] = await probe(role)  # type: ignore[arg-type]
        if self.retrieval is not None:
            checks["index"] = await asyncio.to_thread(self.retrieval.is_ready)
        elif self.config.index is not None and "retrieve" in self.config.tools.builtin:
            checks["index"] = "index not opened"
        refresh = getattr(self.external, "refresh", None)
        if refresh is not None:
            await refresh()
            problems = getattr(self.external, "problems", {})
            for server in self.config.tools.mcp_servers:
                checks[f"mcp_{server.name}"] = problems.get(server.name)
        if self.identity is not None and len(self.identity.store) == 0:
            checks["keys"] = "the key store holds no keys"
        return checks
