"""The agent loop: plan -> tool calls -> observe -> repeat -> answer, in OpenAI tool-calling format. It owns the
rules and no I/O: the model, the budget, retrieval and the clock come in through the TaskContext (serving.py
wires the real ones), so the same loop runs a task, every sub-agent and the tests.

Rules kept here:
- The prompt is append-only: system prompt and tool schemas first, then the history; a step only ever appends
  (the model's exact reply, the tool result, a repair note), so vLLM's prefix cache reuses every earlier step.
  Every call carries the task's session id (the fleet router keeps it on one replica).
- The next action is asked for with a JSON schema (actions.py); a malformed reply gets one repair attempt on the
  same model, then one escalation to the large model (cheap-first with escalateOnFailure), then the task ends
  with reason `malformed_action`.
- Routing per step through the Budget's policy (routing.choose_role): the first step plans (large), later steps
  format tool calls (small); a final answer chosen by the small model is written by the large one.
- Caps: steps per agent, tokens and wall-clock deadline over the whole task tree, a timeout per tool call,
  delegation depth and parallel sub-agents. A cap ends the task with its reason and the partial answer.
- Budget: reserve before each model call, settle after, release when the call fails or is cancelled; a
  sub-agent draws on a slice of its parent's reservation."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal, Mapping, Protocol, Sequence

from ..api.agentapp import LoopLimits, ModelRole, SubAgent
from ..api.budget import RoutingSpec
from ..errors import BudgetExhausted, UpstreamError, UpstreamTimeout
from ..retrieval.filters import Principal
from .actions import FINAL, Action, Malformed, ToolSchema, action_schema, parse_action, response_format
from .pricing import prompt_token_bound
from .routing import StepKind, choose_role
from .tools import CALCULATOR, RETRIEVE, CalculatorError, CitationBook, calculate, format_hits

__all__ = ["StopReason", "Completion", "ModelCall", "CallBudget", "ExternalTools", "ToolFailed", "TaskContext",
           "AgentSpec", "Step",
           "AgentResult", "run_agent", "build_tools", "DELEGATE_NAME", "ACTION_MAX_TOKENS", "ANSWER_MAX_TOKENS"]

StopReason = Literal["answered", "max_steps", "max_tokens", "deadline", "malformed_action", "budget_exhausted",
                     "model_error", "cancelled"]
DELEGATE_NAME = "delegate"
ACTION_MAX_TOKENS = 384
ANSWER_MAX_TOKENS = 768
OBSERVATION_MAX_CHARS = 6000

PROTOCOL = (
    "Reply with exactly one JSON object and nothing else. To call a tool, set action to the tool's name and "
    "arguments to its parameters. When you can answer, set action to final_answer and answer to your answer, "
    "citing the passages you used as [n].")
ANSWER_NOW = "Write the final answer for the user now, in plain text, citing the passages you used as [n]."


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    tool_calls: tuple[Mapping[str, Any], ...] = ()


class ModelCall(Protocol):
    def __call__(self, role: ModelRole, messages: Sequence[Mapping[str, Any]], *,
                 response_format: Mapping[str, Any] | None, max_tokens: int, session_id: str, timeout_s: float,
                 on_delta: Callable[[str], Awaitable[None]] | None = None) -> Awaitable[Completion]: ...


class CallBudget(Protocol):
    """One agent's slice of the task's budget (serving.TaskBudget over the ledger)."""

    is_degraded: bool

    async def reserve(self, role: ModelRole, *, prompt_tokens: int, max_tokens: int) -> Any: ...
    async def settle(self, hold: Any, role: ModelRole, *, prompt_tokens: int, completion_tokens: int) -> int: ...
    async def release(self, hold: Any) -> None: ...
    async def child(self, share: float) -> CallBudget: ...
    async def close(self) -> None: ...


class ExternalTools(Protocol):
    """Tools served elsewhere (MCP servers): schemas by the names an agent lists, and calls that raise ToolFailed."""

    def schemas_for(self, names: Sequence[str]) -> list[ToolSchema]: ...
    async def call(self, name: str, arguments: Mapping[str, Any]) -> str: ...


Retrieve = Callable[[str, Principal], Awaitable[list[Any]]]
Emit = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class TaskContext:
    """What every agent of one task tree shares. `principal` comes only from authentication."""

    principal: Principal
    task_id: str
    limits: LoopLimits
    model: ModelCall
    deadline_s: float  # on `clock`
    routing: RoutingSpec | None = None
    retrieve: Retrieve | None = None
    sub_agents: Mapping[str, SubAgent] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    emit: Emit | None = None
    citations: CitationBook = field(default_factory=CitationBook)
    tokens_used: int = 0
    cost_micro_usd: int = 0
    models_used: dict[str, dict[str, int]] = field(default_factory=dict)
    answer_max_tokens: int | None = None  # the caller's max_tokens: caps the written answer
    external: ExternalTools | None = None

    def remaining_s(self) -> float:
        return self.deadline_s - self.clock()

    def record(self, c: Completion, cost_micro: int) -> None:
        self.tokens_used += c.prompt_tokens + c.completion_tokens
        self.cost_micro_usd += cost_micro
        m = self.models_used.setdefault(c.model, {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                                  "cost_micro_usd": 0})
        m["calls"] += 1
        m["prompt_tokens"] += c.prompt_tokens
        m["completion_tokens"] += c.completion_tokens
        m["cost_micro_usd"] += cost_micro


@dataclass(frozen=True)
class AgentSpec:
    name: str
    system_prompt: str
    tools: tuple[str, ...]
    pinned: ModelRole | None = None
    depth: int = 0


@dataclass
class Step:
    n: int
    agent: str
    kind: str  # plan | tool_format | repair | answer
    role: str
    model: str = ""
    action: str | None = None
    arguments: Mapping[str, Any] | None = None
    observation: str | None = None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micro_usd: int = 0
    seconds: float = 0.0
    route_reason: str = ""
    sub_agents: list[dict[str, Any]] = field(default_factory=list)

    def wire(self) -> dict[str, Any]:
        out = {"n": self.n, "agent": self.agent, "kind": self.kind, "role": self.role, "model": self.model,
               "action": self.action, "arguments": dict(self.arguments) if self.arguments is not None else None,
               "observation": self.observation, "error": self.error, "prompt_tokens": self.prompt_tokens,
               "completion_tokens": self.completion_tokens, "cost_usd": self.cost_micro_usd / 1e6,
               "seconds": round(self.seconds, 4), "route": self.route_reason}
        if self.sub_agents:
            out["sub_agents"] = self.sub_agents
        return out


@dataclass
class AgentResult:
    agent: str
    answer: str
    stop_reason: StopReason
    detail: str
    steps: list[Step]

    @property
    def is_complete(self) -> bool:
        return self.stop_reason == "answered"

    def wire(self) -> dict[str, Any]:
        return {"agent": self.agent, "answer": self.answer, "stop_reason": self.stop_reason, "detail": self.detail,
                "steps": [s.wire() for s in self.steps]}


def delegate_schema(agents: Mapping[str, SubAgent], max_parallel: int) -> ToolSchema:
    desc = "; ".join(f"{a.name}: {a.description}" for a in agents.values())
    return ToolSchema(
        DELEGATE_NAME, f"Hand sub-tasks to sub-agents (they run in parallel). Sub-agents: {desc}",
        {"type": "object", "properties": {"calls": {
            "type": "array", "minItems": 1, "maxItems": max_parallel,
            "items": {"type": "object", "properties": {"agent": {"type": "string", "enum": sorted(agents)},
                                                       "task": {"type": "string", "minLength": 1}},
                      "required": ["agent", "task"], "additionalProperties": False}}},
         "required": ["calls"], "additionalProperties": False})


def build_tools(names: Sequence[str], ctx: TaskContext, depth: int) -> list[ToolSchema]:
    """The tools an agent at `depth` may use: retrieve only with an index, delegate only below the depth cap and
    with sub-agents configured."""
    out: list[ToolSchema] = []
    for name in dict.fromkeys(names):
        if name == "retrieve" and ctx.retrieve is not None:
            out.append(RETRIEVE)
        elif name == "calculator":
            out.append(CALCULATOR)
        elif name == DELEGATE_NAME and ctx.sub_agents and depth < ctx.limits.max_delegation_depth:
            out.append(delegate_schema(ctx.sub_agents, ctx.limits.max_parallel_sub_agents))
    if ctx.external is not None:
        builtin = {t.name for t in out}
        out.extend(t for t in ctx.external.schemas_for(list(names)) if t.name not in builtin)
    return out


def system_message(spec: AgentSpec, tools: Sequence[ToolSchema]) -> dict[str, Any]:
    listing = json.dumps([t.openai() for t in tools], separators=(",", ":"), sort_keys=True)
    return {"role": "system", "content": f"{spec.system_prompt}\n\nTools (OpenAI function format): {listing}\n\n"
                                         f"{PROTOCOL}"}


def _message_bytes(m: Mapping[str, Any]) -> int:
    """UTF-8 bytes of what a chat template can render of a message: its content and its tool calls."""
    n = len((m.get("content") or "").encode("utf-8", errors="surrogatepass")) + len(m.get("name") or "")
    for call in m.get("tool_calls") or ():
        fn = call["function"]
        n += len(fn["name"]) + len(fn["arguments"].encode("utf-8", errors="surrogatepass")) + len(call["id"]) + 32
    return n


_PREFIX_CACHE: dict[tuple[Any, ...], tuple[dict[str, Any], dict[str, Any], int]] = {}
_PREFIX_CACHE_MAX = 256


def _prefix(spec: AgentSpec, tools: Sequence[ToolSchema]) -> tuple[dict[str, Any], dict[str, Any], int]:
    """The system message, the action response_format and the system message's size, built once per (prompt,
    tools): every task of an app starts with the same prefix, so it is computed once, not per request."""
    key = (spec.system_prompt, tuple((t.name, t.description, id(t.parameters)) for t in tools))
    hit = _PREFIX_CACHE.get(key)
    if hit is None:
        system = system_message(spec, tools)
        hit = (system, response_format(action_schema(tools)), _message_bytes(system))
        if len(_PREFIX_CACHE) >= _PREFIX_CACHE_MAX:
            _PREFIX_CACHE.clear()
        _PREFIX_CACHE[key] = hit
    return hit


class _Stop(Exception):
    def __init__(self, reason: StopReason, detail: str):
        self.reason, self.detail = reason, detail
        super().__init__(detail)


class _Agent:
    def __init__(self, ctx: TaskContext, spec: AgentSpec, budget: CallBudget, history: Sequence[Mapping[str, Any]],
                 session_id: str, on_delta: Callable[[str], Awaitable[None]] | None):
        self.ctx, self.spec, self.budget, self.session_id, self.on_delta = ctx, spec, budget, session_id, on_delta
        self.tools = build_tools(spec.tools, ctx, spec.depth)
        system, self.schema, system_bytes = _prefix(spec, self.tools)
        self.messages: list[dict[str, Any]] = [system, *map(dict, history)]
        self.message_bytes = system_bytes + sum(_message_bytes(m) for m in self.messages[1:])
        self.counted = len(self.messages)
        self.steps: list[Step] = []
        self.partial = ""
        self.observed = False
        self.calls = 0

    # --- one model call under the caps and the budget ----------------------------------------------------
    def _check_caps(self) -> None:
        """Before a step is taken: a cap ends the agent here, with nothing half-recorded."""
        ctx, limits = self.ctx, self.ctx.limits
        if self.calls >= limits.max_steps:
            raise _Stop("max_steps", f"reached maxSteps ({limits.max_steps})")
        if limits.max_tokens - ctx.tokens_used <= 0:
            raise _Stop("max_tokens", f"reached maxTokens ({limits.max_tokens})")
        if ctx.remaining_s() <= 0:
            raise _Stop("deadline", f"reached the deadline ({limits.deadline_seconds}s)")

    async def _call(self, step: Step, *, fmt: Mapping[str, Any] | None, max_tokens: int,
                    stream: bool = False) -> Completion:
        ctx, limits = self.ctx, self.ctx.limits
        self._check_caps()
        left_tokens = limits.max_tokens - ctx.tokens_used
        timeout_s = ctx.remaining_s()
        for m in self.messages[self.counted:]:  # append-only: only what was appended since is new
            self.message_bytes += _message_bytes(m)
        self.counted = len(self.messages)
        prompt_bound = self.message_bytes + prompt_token_bound((), messages=len(self.messages))
        max_tokens = max(1, min(max_tokens, left_tokens))
        self.calls += 1
        started = ctx.clock()
        try:
            hold = await self.budget.reserve(step.role, prompt_tokens=prompt_bound, max_tokens=max_tokens)  # type: ignore[arg-type]
        except BudgetExhausted as e:
            raise _Stop("budget_exhausted", str(e)) from None
        try:
            async with asyncio.timeout(timeout_s):
                c = await ctx.model(step.role, list(self.messages), response_format=fmt,  # type: ignore[arg-type]
                                    max_tokens=max_tokens, session_id=self.session_id, timeout_s=timeout_s,
                                    on_delta=self.on_delta if stream else None)
        except BaseException as e:
            await asyncio.shield(self.budget.release(hold))
            # The call's timeout is the task's remaining time, so a timed-out call is the deadline.
            if isinstance(e, (asyncio.TimeoutError, TimeoutError, UpstreamTimeout)):
                raise _Stop("deadline", f"reached the deadline ({limits.deadline_seconds}s)") from None
            raise
        if c.prompt_tokens <= 0:  # a server that reports no usage is charged the bound, never nothing
            c = Completion(c.text, prompt_bound, c.completion_tokens or max_tokens, c.model, c.tool_calls)
        cost = await self.budget.settle(hold, step.role, prompt_tokens=c.prompt_tokens,  # type: ignore[arg-type]
                                        completion_tokens=c.completion_tokens)
        ctx.record(c, cost)
        step.model, step.prompt_tokens, step.completion_tokens = c.model, c.prompt_tokens, c.completion_tokens
        step.cost_micro_usd, step.seconds = cost, ctx.clock() - started
        return c

    def _route(self, kind: StepKind, failed_role: ModelRole | None) -> tuple[ModelRole, str]:
        if self.budget.is_degraded:
            return "small", "budget exhausted: degraded to the small model"
        r = choose_role(kind, routing=self.ctx.routing, failed_role=failed_role, pinned=self.spec.pinned)
        return r.role, r.reason

    async def _emit(self, step: Step) -> None:
        if self.ctx.emit is not None:
            await self.ctx.emit({"type": "step", "step": step.wire()})

    # --- the loop --------------------------------------------------------------------------------------------
    async def run(self) -> AgentResult:
        try:
            answer = await self._loop()
            return AgentResult(self.spec.name, answer, "answered", "", self.steps)
        except _Stop as stop:
            return AgentResult(self.spec.name, self.partial, stop.reason, stop.detail, self.steps)

    async def _loop(self) -> str:
        failed_role: ModelRole | None = None
        repairs = 0
        while True:
            self._check_caps()
            kind: StepKind = "plan" if not self.steps else "tool_format"
            role, why = self._route(kind, failed_role)
            step = Step(len(self.steps) + 1, self.spec.name, "repair" if repairs else kind, role, route_reason=why)
            self.steps.append(step)
            try:
                c = await self._call(step, fmt=self.schema, max_tokens=ACTION_MAX_TOKENS)
            except UpstreamError as e:
                step.error = f"{type(e).__name__}: {e}"
                await self._emit(step)
                if role == "small" and failed_role is None and self._escalates():
                    failed_role = "small"
                    continue
                raise _Stop("model_error", f"the {role} model failed: {e}") from None
            action = parse_action(c.text, self.tools, c.tool_calls)
            if isinstance(action, Malformed):
                step.error = f"malformed action: {action.reason}"
                if c.text.strip() and not self.observed:  # an observation says more than a garbled reply
                    self.partial = c.text.strip()[:OBSERVATION_MAX_CHARS]
                await self._emit(step)
                self.messages.append({"role": "assistant", "content": c.text})
                self.messages.append({"role": "user", "content": f"That reply was not a valid action: "
                                                                 f"{action.reason}. {PROTOCOL}"})
                repairs += 1
                if repairs == 1:
                    continue
                if role == "small" and failed_role is None and self._escalates():
                    failed_role, repairs = "small", 1
                    continue
                raise _Stop("malformed_action", f"no valid action after a repair attempt: {action.reason}")
            repairs = 0
            step.action = action.tool
            if action.is_final:
                return await self._finish(step, role, action, c)
            await self._act(step, action, c)

    def _escalates(self) -> bool:
        routing = self.ctx.routing or RoutingSpec()
        return routing.policy == "cheap-first" and routing.escalate_on_failure and not self.budget.is_degraded

    async def _act(self, step: Step, action: Action, c: Completion) -> None:
        call_id = "call_" + uuid.uuid4().hex[:12]
        step.arguments = action.arguments
        self.messages.append({"role": "assistant", "content": c.text, "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": action.tool, "arguments": json.dumps(action.arguments, ensure_ascii=False)}}]})
        timeout_s = min(float(self.ctx.limits.tool_timeout_seconds), max(self.ctx.remaining_s(), 0.0))
        try:
            if action.tool == DELEGATE_NAME:  # sub-agents run under the task's deadline, not the tool timeout
                observation = await asyncio.wait_for(self._delegate(step, action), max(self.ctx.remaining_s(), 0))
            else:
                observation = await asyncio.wait_for(self._tool(action), timeout_s)
        except (asyncio.TimeoutError, TimeoutError):
            if self.ctx.remaining_s() <= 0:
                step.error = "deadline"
                await self._emit(step)
                raise _Stop("deadline", f"reached the deadline ({self.ctx.limits.deadline_seconds}s)") from None
            observation = f"error: the tool {action.tool} did not answer within {timeout_s:g}s"
            step.error = "tool_timeout"
        except ToolFailed as e:
            observation = f"error: {e}"
            step.error = str(e)
        observation = observation[:OBSERVATION_MAX_CHARS]
        step.observation = observation
        self.partial, self.observed = observation, True
        self.messages.append({"role": "tool", "tool_call_id": call_id, "name": action.tool, "content": observation})
        await self._emit(step)

    async def _tool(self, action: Action) -> str:
        if action.tool == "calculator":
            try:
                return str(calculate(str(action.arguments["expression"])))
            except CalculatorError as e:
                raise ToolFailed(f"calculator: {e}") from None
        if action.tool == "retrieve" and self.ctx.retrieve is not None:
            # The principal is the task's, set by authentication; the model supplies only the query.
            try:
                hits = await self.ctx.retrieve(str(action.arguments["query"]), self.ctx.principal)
            except UpstreamError as e:
                raise ToolFailed(f"retrieve: {e}") from None
            text, _ = format_hits(hits, self.ctx.citations)
            return text
        if self.ctx.external is not None:
            return await self.ctx.external.call(action.tool, action.arguments)
        raise ToolFailed(f"unknown tool {action.tool}")

    async def _delegate(self, step: Step, action: Action) -> str:
        calls = list(action.arguments["calls"])
        # Bounded per delegating agent, not by one semaphore over the tree: a sub-agent holding a slot while it
        # waits for its own sub-agents would otherwise deadlock (until the deadline) at maxParallelSubAgents 1.
        slots = asyncio.Semaphore(self.ctx.limits.max_parallel_sub_agents)

        async def one(i: int, call: Mapping[str, Any]) -> AgentResult:
            sub = self.ctx.sub_agents[call["agent"]]
            async with slots:
                try:
                    budget = await self.budget.child(sub.budget_share)
                except BudgetExhausted as e:
                    return AgentResult(sub.name, "", "budget_exhausted", str(e), [])
                try:
                    spec = AgentSpec(sub.name, sub.system_prompt, tuple(sub.tools), sub.model_role, self.spec.depth + 1)
                    return await _Agent(self.ctx, spec, budget, [{"role": "user", "content": str(call["task"])}],
                                        f"{self.session_id}/{sub.name}-{step.n}-{i}", None).run()
                finally:
                    await asyncio.shield(budget.close())

        results = await asyncio.gather(*(one(i, c) for i, c in enumerate(calls)))
        step.sub_agents = [r.wire() for r in results]
        parts = []
        for r in results:
            tail = "" if r.is_complete else f" (stopped early: {r.stop_reason}: {r.detail})"
            parts.append(f"{r.agent}: {r.answer or '(no answer)'}{tail}")
        return "\n".join(parts)

    async def _finish(self, step: Step, role: ModelRole, action: Action, c: Completion) -> str:
        answer_role, why = self._route("answer", None)
        if answer_role == role:
            self.partial = action.answer
            await self._emit(step)
            if self.on_delta is not None:
                await self.on_delta(action.answer)
            return action.answer
        # Cheap-first: the small model decided it can answer; the large one writes the answer (streamed).
        self.partial = action.answer
        await self._emit(step)
        self._check_caps()
        self.messages.append({"role": "assistant", "content": c.text})
        self.messages.append({"role": "user", "content": ANSWER_NOW})
        final = Step(len(self.steps) + 1, self.spec.name, "answer", answer_role, route_reason=why, action=FINAL)
        self.steps.append(final)
        try:
            c = await self._call(final, fmt=None, max_tokens=min(ANSWER_MAX_TOKENS, self.ctx.answer_max_tokens
                                                                 or ANSWER_MAX_TOKENS), stream=True)
        except UpstreamError as e:
            final.error = f"{type(e).__name__}: {e}"
            await self._emit(final)
            self.partial = action.answer  # the small model's answer stands
            if self.on_delta is not None:
                await self.on_delta(action.answer)
            return action.answer
        await self._emit(final)
        self.partial = c.text.strip()
        return self.partial


class ToolFailed(Exception):
    """A tool call failed in a way the model may recover from: its message becomes the observation."""


async def run_agent(ctx: TaskContext, spec: AgentSpec, budget: CallBudget, history: Sequence[Mapping[str, Any]],
                    *, on_delta: Callable[[str], Awaitable[None]] | None = None) -> AgentResult:
    """Run one agent (the task's root agent) to an answer or a cap. Cancellation propagates (the caller releases
    the task's reservation)."""
    agent = _Agent(ctx, spec, budget, history, ctx.task_id, on_delta)
    return await agent.run()

