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
- Retrieve first: an agent that has the `retrieve` tool (and the app an index) starts by searching for the user's
  question itself, with no model call: a recorded step, ACL-filtered by the task's principal like every search,
  so the passages are in the (append-only) prompt before the model plans. A weak model then only has to answer.
- A stuck model does not spin to maxSteps: the same tool call twice in a row, `max_tool_errors` tool errors in a
  row, or as many searches in a row that find no new passage, ends tool use, and the answer step (the large role)
  writes the answer from what was gathered; the reason is the step's error, the answer step's route and the
  result's detail.
- The answer step (free text, streamed) is the one prompt not built by appending: the action steps' transcript is a
  run of "Answer: {json}" turns under a base model's transcript template, and such a model answers the user by
  writing one more JSON action (measured with Gemma 3 270M). Its prompt is the app's system prompt with the best
  passages gathered (ANSWER_PASSAGES, numbered as cited) and the other tools' results, the earlier conversation,
  then the user's question last, right before the model's answer; it stops at ANSWER_STOP. It is the task's last
  call, so no later step loses a cached prefix, and its prompt is shorter than the transcript.
- Caps: steps per agent, tokens and wall-clock deadline over the whole task tree, a timeout per tool call,
  delegation depth and parallel sub-agents. A cap ends the task with its reason and the partial answer. maxSteps
  counts model calls: the retrieve-first step makes none.
- Budget: reserve before each model call, settle after, release when the call fails or is cancelled; a
  sub-agent draws on a slice of its parent's reservation.
- A remote sub-agent (`subAgents[].a2a`) is one A2A `message/send` through the TaskContext's `remote` (the edge is
  a2a_client.py), as the task's principal, bounded by the tool timeout and the deadline. It spends the remote
  app's Budget, not this one's: its step records the remote task id and cost, and charges nothing here. Its
  messageId is derived from the task, the step and the call, so a replica that repeats an interrupted delegation
  gets the remote task already started (A2A's messageId is the remote's idempotency key). Any failure is the
  sub-agent's result (stop reason `remote_error`), never an exception out of the loop."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Literal, Mapping, Protocol, Sequence

from ..api.agentapp import A2AAgent, LoopLimits, ModelRole, SubAgent, WarmSpec
from ..api.budget import RoutingSpec
from ..errors import BudgetExhausted, UpstreamError, UpstreamTimeout
from ..retrieval.filters import Principal
from ..telemetry import DISABLED, PROVIDER, Telemetry
from .actions import FINAL, Action, Malformed, ToolSchema, action_schema, parse_action, response_format
from .pricing import prompt_token_bound
from .routing import StepKind, choose_role
from .runs import MCP_SEPARATOR, is_idempotent
from .sources import REMOTE_PREFIX, is_http_url
from .tools import CALCULATOR, RETRIEVE, CalculatorError, Citation, CitationBook, calculate, format_hits

__all__ = ["StopReason", "Completion", "Meter", "ModelCall", "CallBudget", "ExternalTools", "ToolFailed",
           "RemoteAgents", "RemoteAnswer", "TaskContext", "AgentSpec", "Step", "Resume",
           "AgentResult", "run_agent", "build_tools", "answer_messages", "DELEGATE_NAME", "ACTION_MAX_TOKENS",
           "ANSWER_MAX_TOKENS", "ANSWER_STOP", "ANSWER_PASSAGES", "NO_MODEL", "MAX_TOOL_ERRORS"]

StopReason = Literal["answered", "max_steps", "max_tokens", "deadline", "malformed_action", "budget_exhausted",
                     "model_error", "cancelled", "remote_error"]
log = logging.getLogger(__name__)

DELEGATE_NAME = "delegate"
ACTION_MAX_TOKENS = 384
ANSWER_MAX_TOKENS = 768
OBSERVATION_MAX_CHARS = 6000
# The local engine's transcript template (local/engine.py TRANSCRIPT_STOP and its chat_template.transcript.jinja)
# renders turns as "Question:", "Answer:", "Observation:"; a base model writes the next turn after its answer. A
# chat model's answer does not contain these lines, so the stops cost it nothing.
ANSWER_STOP = ("\nQuestion:", "\nAnswer:", "\nObservation:")
# Passages in the answer prompt, best (first retrieved) first. Measured with Gemma 3 270M base on the example
# corpus ("How many vacation days do I get?"): from the top 2 passages it answers "25 days"; from 3 or more it
# answers "10" (the sick-leave passage) or "100". A stronger model answering from the plan step sees them all.
ANSWER_PASSAGES = 2
ANSWER_RESULTS_MAX_CHARS = 2000
MAX_TOOL_ERRORS = 2
NO_MODEL = "none"  # the role of a step that made no model call (retrieve-first)

PROTOCOL = (
    "Reply with exactly one JSON object and nothing else. To call a tool, set action to the tool's name and "
    "arguments to its parameters. When you can answer, set action to final_answer and answer to your answer, "
    "citing the passages you used as [n].")
ANSWER_NOW = "Write the final answer for the user now, in plain text, citing the passages you used as [n]."


PASSAGES_HEADER = "Passages to answer from (cite the ones you use as [n]):"


def answer_messages(system_prompt: str, conversation: Sequence[Mapping[str, Any]], question: str,
                    passages: Sequence[str], results: Sequence[str] = (), *,
                    max_passages: int = ANSWER_PASSAGES) -> list[dict[str, Any]]:
    """The answer step's prompt: the app's system prompt followed by the best passages (as numbered in the
    citations) and the other tools' results, then the earlier conversation, then the user's question as the last
    turn, right before the model's answer (RAG's usual layout; any chat template accepts it)."""
    parts = [system_prompt]
    if passages and max_passages > 0:
        parts.append(PASSAGES_HEADER + "\n" + "\n".join(passages[:max_passages]))
    if results:
        parts.append("Results of the tools you called:\n" + "\n".join(results)[-ANSWER_RESULTS_MAX_CHARS:])
    if len(parts) == 1:
        parts.append(ANSWER_NOW)
    return [{"role": "system", "content": "\n\n".join(parts)}, *map(dict, conversation),
            {"role": "user", "content": question or ANSWER_NOW}]


def _text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return ""


def _last_question(messages: Sequence[Mapping[str, Any]]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return " ".join(_text(m.get("content")).split())
    return ""


@dataclass(frozen=True)
class Completion:
    """One model call's answer. The token counts are what the engine reported over all the call's attempts (a
    call retried after a mid-stream failure counts both); `note` says what a retry changed, when one did."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    model: str
    tool_calls: tuple[Mapping[str, Any], ...] = ()
    attempts: int = 1
    note: str = ""
    finish_reason: str = ""  # as the engine reported it ("stop", "length", "tool_calls"); "" when it did not


@dataclass
class Meter:
    """What the engine reported so far for one model call, across attempts, kept current by the ModelCall while
    the call runs, so that a call that ends any way (answer, exception, cancellation, deadline) is charged what
    was produced. Where the engine reports no running usage (llm-d-inference-sim reports it only at the end of
    a stream) each content delta counts one completion token and an attempt's prompt is taken from the first
    usage the engine reports for the same prompt; an attempt that produced output while no prompt count is known
    is counted in `unreported_prompts`, and the caller charges its own prompt bound for each."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    attempts: int = 0  # requests sent to the engine for this call
    unreported_prompts: int = 0
    model: str = ""  # the model that answered, once known

    @property
    def has_output(self) -> bool:
        """True once the engine is known to have produced something (a reported count or a streamed delta)."""
        return self.prompt_tokens > 0 or self.completion_tokens > 0 or self.unreported_prompts > 0

    def charge(self, prompt_bound: int) -> tuple[int, int]:
        """(prompt, completion) tokens to charge: each attempt whose prompt count is unknown at `prompt_bound`."""
        return self.prompt_tokens + self.unreported_prompts * prompt_bound, self.completion_tokens


class ModelCall(Protocol):
    def __call__(self, role: ModelRole, messages: Sequence[Mapping[str, Any]], *,
                 response_format: Mapping[str, Any] | None, max_tokens: int, session_id: str, timeout_s: float,
                 on_delta: Callable[[str], Awaitable[None]] | None = None,
                 stop: Sequence[str] = (), meter: Meter | None = None) -> Awaitable[Completion]: ...


class CallBudget(Protocol):
    """One agent's slice of the task's budget (serving.TaskBudget over the ledger)."""

    is_degraded: bool
    on_small_model: bool  # a degraded task whose Budget degrades to the small model (degradeBy)
    is_budget_capped: bool  # the Budget's per-task caps bound the task (else its own maxTokens does)
    degraded_reason: str  # why every step runs on the small model (when is_degraded)

    async def reserve(self, role: ModelRole, *, prompt_tokens: int, max_tokens: int) -> Any: ...
    async def settle(self, hold: Any, role: ModelRole, *, prompt_tokens: int, completion_tokens: int) -> int: ...
    async def release(self, hold: Any) -> None: ...
    async def child(self, share: float) -> CallBudget: ...
    async def close(self) -> None: ...


class ExternalTools(Protocol):
    """Tools served elsewhere (MCP servers): schemas by the names an agent lists, and calls that raise ToolFailed."""

    def schemas_for(self, names: Sequence[str]) -> list[ToolSchema]: ...
    # `principal` is the task's (from authentication): the tool learns who asked, never from the model.
    async def call(self, name: str, arguments: Mapping[str, Any], principal: Principal) -> str: ...


@dataclass(frozen=True)
class RemoteAnswer:
    """What a remote A2A agent answered: its text, and what its Task said about itself (when it did)."""

    answer: str
    task_id: str | None = None
    state: str = "completed"
    citations: tuple[Mapping[str, Any], ...] = ()
    cost_usd: float | None = None
    usage: Mapping[str, Any] | None = None


class RemoteAgents(Protocol):
    """Remote A2A sub-agents (a2a_client.A2AClient). `principal` is the task's: sent as on-behalf-of, never taken
    from the model. A failure raises ToolFailed, whose message the parent model reads."""

    async def send(self, name: str, agent: A2AAgent, task: str, principal: Principal, *, message_id: str,
                   context_id: str, timeout_s: float) -> RemoteAnswer: ...


Retrieve = Callable[[str, Principal], Awaitable[list[Any]]]
Emit = Callable[[dict[str, Any]], Awaitable[None]]


class ToolTimes:
    """Each tool's typical duration on this replica, for the warm-before-tool-end switch: exponentially weighted
    means of its calls' durations and of their distance from that mean (the most recently used `size` tools are
    kept). A duration is only typical once `min_calls` calls were seen and their spread is at most `max_spread`
    of the mean: on the routing bench, tools of exponentially drawn durations (their mean distance from the mean is
    0.74 of it) warmed at their mean made task p95 7 % longer, most of them warmed too early or not at all."""

    def __init__(self, *, alpha: float = 0.3, size: int = 1024, min_calls: int = 3, max_spread: float = 0.35):
        self.alpha, self.size, self.min_calls, self.max_spread = alpha, size, min_calls, max_spread
        self._stats: OrderedDict[str, tuple[float, float, int]] = OrderedDict()  # tool -> (mean, spread, calls)

    def typical(self, tool: str) -> float | None:
        got = self._stats.get(tool)
        if got is None:
            return None
        mean, spread, calls = got
        return mean if calls >= self.min_calls and spread <= self.max_spread * mean else None

    def record(self, tool: str, seconds: float) -> None:
        was = self._stats.pop(tool, None)
        if was is None:
            self._stats[tool] = (seconds, 0.0, 1)
        else:
            mean, spread, calls = was
            mean += self.alpha * (seconds - mean)
            spread += self.alpha * (abs(seconds - mean) - spread)
            self._stats[tool] = (mean, spread, calls + 1)
        while len(self._stats) > self.size:
            self._stats.popitem(last=False)


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
    emit: Emit | None = None  # the run's record: step and checkpoint events, and the root span's trace_context
    citations: CitationBook = field(default_factory=CitationBook)
    tokens_used: int = 0
    cost_micro_usd: int = 0
    models_used: dict[str, dict[str, int]] = field(default_factory=dict)
    answer_max_tokens: int | None = None  # the caller's max_tokens: caps the written answer
    external: ExternalTools | None = None
    retrieve_first: bool = True  # search for the question before the first model call (when retrieve is a tool)
    answer_passages: int = ANSWER_PASSAGES  # passages restated in the answer step's prompt
    max_tool_errors: int = MAX_TOOL_ERRORS  # tool errors (or searches finding nothing new) in a row: tool use ends
    resume: Resume | None = None  # the recorded state of a run another replica started (the root agent resumes it)
    idempotent_tools: frozenset[str] = frozenset({"retrieve", "calculator"})  # an interrupted call may run again
    telemetry: Telemetry = DISABLED  # spans of the task tree (telemetry.py); off by default
    request_models: Mapping[str, str] = field(default_factory=dict)  # role -> the served model name requested
    span_attributes: Mapping[str, Any] = field(default_factory=dict)  # more agentfleet.* attributes of the root span
    remote: RemoteAgents | None = None  # the A2A client of subAgents[].a2a
    warm: WarmSpec | None = None  # tools.warm: re-send the transcript just before a long tool ends (off: None)
    tool_times: ToolTimes | None = None  # the replica's typical tool durations (shared by its tasks)

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
    kind: str  # retrieve (retrieve-first, no model call) | plan | tool_format | repair | answer
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
    remote: dict[str, Any] | None = None  # a remote A2A call: url, task_id, state, cost_usd, usage (remote spend)

    def wire(self) -> dict[str, Any]:
        out = {"n": self.n, "agent": self.agent, "kind": self.kind, "role": self.role, "model": self.model,
               "action": self.action, "arguments": dict(self.arguments) if self.arguments is not None else None,
               "observation": self.observation, "error": self.error, "prompt_tokens": self.prompt_tokens,
               "completion_tokens": self.completion_tokens, "cost_usd": self.cost_micro_usd / 1e6,
               "seconds": round(self.seconds, 4), "route": self.route_reason}
        if self.sub_agents:
            out["sub_agents"] = self.sub_agents
        if self.remote is not None:
            out["remote"] = self.remote
        return out


    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Step:
        return cls(n=int(d["n"]), agent=d["agent"], kind=d["kind"], role=d["role"], model=d.get("model") or "",
                   action=d.get("action"), arguments=d.get("arguments"), observation=d.get("observation"),
                   error=d.get("error"), prompt_tokens=int(d.get("prompt_tokens") or 0),
                   completion_tokens=int(d.get("completion_tokens") or 0),
                   cost_micro_usd=round(float(d.get("cost_usd") or 0) * 1e6), seconds=float(d.get("seconds") or 0),
                   route_reason=d.get("route") or "", sub_agents=list(d.get("sub_agents") or []),
                   remote=d.get("remote"))


@dataclass(frozen=True)
class Resume:
    """What a replica taking a run over rebuilds the root agent from: its checkpoints in order (each carries the
    messages and steps appended since the one before, and the loop's state at that point) and a tool call that
    was started after the last checkpoint and never recorded as done (the replica died while it ran)."""

    checkpoints: tuple[Mapping[str, Any], ...]
    pending_tool: Mapping[str, Any] | None = None
    # What the ledger charged the task beyond its last checkpoint: model calls the dead replica settled but never
    # recorded (it died between the two). The calls are done again; their first attempt shows as a `lost` step so
    # that the run's cost is what the Budget was charged. {"cost_micro_usd": int, "tokens": int}
    lost: Mapping[str, int] | None = None


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
        self.question = _last_question(self.messages)
        last_user = max((i for i, m in enumerate(history) if m.get("role") == "user"), default=len(history))
        self.conversation = [dict(m) for m in history[:last_user]]  # the turns before the question
        self.passages: dict[int, str] = {}  # citation number -> the passage as the prompt showed it
        self.results: list[str] = []  # what the other tools returned (calculator, sub-agents, MCP)
        self.last_call: tuple[str, str, int] | None = None  # tool, canonical arguments, step number
        self.tool_errors = 0  # in a row
        self.idle = 0  # retrieve calls in a row that found no passage this agent had not seen
        self.detail = ""  # why tool use was stopped, when it was
        self.repairs = 0  # malformed replies in a row
        self.failed_role: ModelRole | None = None  # the role that failed and was escalated from
        self.answering: str | None = None  # once the answer step is next: why tool use ended ("" cheap-first)
        self.fallback: str | None = None  # the small model's answer, standing if the answer step fails
        self.final: str | None = None  # the answer, once written
        self.pending: dict[str, Any] | None = None  # the tool call running now (recorded before it runs)
        # Checkpoints (root agent of a recorded run only): what was appended since the last one, and its signature.
        self.mark_messages, self.mark_steps, self.mark_sig = len(self.messages), 0, None
        self.is_resumed = False
        if spec.depth == 0 and ctx.resume is not None and (ctx.resume.checkpoints or ctx.resume.lost):
            self._restore(ctx.resume)
            self.message_bytes = system_bytes + sum(_message_bytes(m) for m in self.messages[1:])
            self.counted = len(self.messages)

    # --- checkpoints: the root agent's state, recorded so another replica can continue the run ---------------
    def _state(self) -> dict[str, Any]:
        ctx = self.ctx
        return {"calls": self.calls, "partial": self.partial, "observed": self.observed,
                "passages": {str(k): v for k, v in self.passages.items()}, "results": list(self.results),
                "last_call": list(self.last_call) if self.last_call else None, "tool_errors": self.tool_errors,
                "idle": self.idle, "detail": self.detail, "repairs": self.repairs, "failed_role": self.failed_role,
                "answering": self.answering, "fallback": self.fallback, "final": self.final,
                "pending": self.pending,
                "ctx": {"tokens_used": ctx.tokens_used, "cost_micro_usd": ctx.cost_micro_usd,
                        "models_used": ctx.models_used, "citations": ctx.citations.wire()}}

    async def _checkpoint(self) -> None:
        """Record what changed since the last checkpoint (append-only deltas: the prompt is rebuilt exactly)."""
        if self.spec.depth != 0 or self.ctx.emit is None:
            return
        state = self._state()
        sig = json.dumps([len(self.messages), len(self.steps), state], sort_keys=True, default=str)
        if sig == self.mark_sig:
            return
        await self.ctx.emit({"type": "checkpoint", "messages": self.messages[self.mark_messages:],
                             "steps": [st.wire() for st in self.steps[self.mark_steps:]], "state": state})
        self.mark_messages, self.mark_steps, self.mark_sig = len(self.messages), len(self.steps), sig

    def _restore(self, resume: Resume) -> None:
        if resume.checkpoints:
            self._restore_checkpoints(resume)
        self.mark_messages, self.mark_steps = len(self.messages), len(self.steps)
        self.is_resumed = True
        lost = resume.lost or {}
        if lost.get("cost_micro_usd", 0) > 0 or lost.get("tokens", 0) > 0:
            # After the marks: the next checkpoint carries this step, so a second takeover keeps it.
            self.steps.append(Step(len(self.steps) + 1, self.spec.name, "lost", "", error=(
                "the replica running this run stopped after the model answered and before the step was recorded: "
                "charged once, then done again"), prompt_tokens=int(lost.get("tokens", 0)),
                cost_micro_usd=int(lost.get("cost_micro_usd", 0))))
            self.ctx.tokens_used += int(lost.get("tokens", 0))
            self.ctx.cost_micro_usd += int(lost.get("cost_micro_usd", 0))

    def _restore_checkpoints(self, resume: Resume) -> None:
        for cp in resume.checkpoints:
            self.messages.extend(dict(m) for m in cp["messages"])
            self.steps.extend(Step.from_wire(w) for w in cp["steps"])
        st, ctx = resume.checkpoints[-1]["state"], self.ctx
        self.calls, self.partial, self.observed = int(st["calls"]), st["partial"], bool(st["observed"])
        self.passages = {int(k): v for k, v in st["passages"].items()}
        self.results = list(st["results"])
        self.last_call = tuple(st["last_call"]) if st.get("last_call") else None  # type: ignore[assignment]
        self.tool_errors, self.idle, self.detail = int(st["tool_errors"]), int(st["idle"]), st["detail"]
        self.repairs, self.failed_role = int(st["repairs"]), st.get("failed_role")
        self.answering, self.final, self.pending = st.get("answering"), st.get("final"), st.get("pending")
        self.fallback = st.get("fallback")
        c = st["ctx"]
        ctx.tokens_used, ctx.cost_micro_usd = int(c["tokens_used"]), int(c["cost_micro_usd"])
        ctx.models_used = {k: dict(v) for k, v in c["models_used"].items()}
        ctx.citations = CitationBook({w["id"]: Citation(int(w["n"]), w["id"], w["source"], w["title"],
                                                        tuple(w["headings"]), float(w["score"]), w.get("url"))
                                      for w in c["citations"]})

    def _is_idempotent(self, tool: str) -> bool:
        """Whether an interrupted call of `tool` may run again: delegation is, when every sub-agent's tools are (a
        remote one has none here: its repeated messageId is answered with the task it already started)."""
        safe = self.ctx.idempotent_tools
        if tool == DELEGATE_NAME:
            return all(is_idempotent(t, safe) for a in self.ctx.sub_agents.values() for t in a.local_tools)
        return is_idempotent(tool, safe)

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
                    stream: bool = False, stop: Sequence[str] = (),
                    messages: list[dict[str, Any]] | None = None) -> Completion:
        """`messages`: a prompt of its own (the answer step); by default the agent's append-only transcript."""
        ctx, limits = self.ctx, self.ctx.limits
        self._check_caps()
        left_tokens = limits.max_tokens - ctx.tokens_used
        timeout_s = ctx.remaining_s()
        if messages is None:
            for m in self.messages[self.counted:]:  # append-only: only what was appended since is new
                self.message_bytes += _message_bytes(m)
            self.counted = len(self.messages)
            messages, prompt_bytes = self.messages, self.message_bytes
        else:
            prompt_bytes = sum(_message_bytes(m) for m in messages)
        prompt_bound = prompt_bytes + prompt_token_bound((), messages=len(messages))
        max_tokens = max(1, min(max_tokens, left_tokens))
        self.calls += 1
        if not ctx.telemetry.is_enabled:
            return await self._reserve_and_call(step, messages, fmt=fmt, max_tokens=max_tokens, stream=stream,
                                                stop=stop, prompt_bound=prompt_bound, timeout_s=timeout_s)
        model = ctx.request_models.get(step.role, step.role)
        attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": PROVIDER, "gen_ai.request.model": model,
                 "gen_ai.request.max_tokens": max_tokens, "gen_ai.request.temperature": 0.0,
                 "gen_ai.conversation.id": ctx.task_id, "gen_ai.agent.name": self.spec.name,
                 "agentfleet.step": step.n, "agentfleet.step.kind": step.kind, "agentfleet.model_role": step.role,
                 "agentfleet.route_reason": step.route_reason}
        started, error_type = ctx.clock(), None
        with ctx.telemetry.span(f"chat {model}", attrs, kind="client") as span:
            try:
                c = await self._reserve_and_call(step, messages, fmt=fmt, max_tokens=max_tokens, stream=stream,
                                                 stop=stop, prompt_bound=prompt_bound, timeout_s=timeout_s)
            except BaseException as e:
                error_type = getattr(e, "reason", None) or type(e).__name__
                raise
            finally:
                span.set_attributes({"gen_ai.usage.input_tokens": step.prompt_tokens,
                                     "gen_ai.usage.output_tokens": step.completion_tokens,
                                     "agentfleet.cost_usd": step.cost_micro_usd / 1e6})
                if step.model:
                    span.set_attribute("gen_ai.response.model", step.model)
                ctx.telemetry.record_chat(model=model, response_model=step.model, input_tokens=step.prompt_tokens,
                                          output_tokens=step.completion_tokens, duration_s=ctx.clock() - started,
                                          error_type=error_type)
            if c.finish_reason:
                span.set_attribute("gen_ai.response.finish_reasons", [c.finish_reason])
            if c.attempts > 1:
                span.set_attribute("agentfleet.attempts", c.attempts)
            return c

    async def _reserve_and_call(self, step: Step, messages: list[dict[str, Any]], *, fmt: Mapping[str, Any] | None,
                                max_tokens: int, stream: bool, stop: Sequence[str], prompt_bound: int,
                                timeout_s: float) -> Completion:
        ctx, limits = self.ctx, self.ctx.limits
        started = ctx.clock()
        try:
            hold = await self.budget.reserve(step.role, prompt_tokens=prompt_bound, max_tokens=max_tokens)  # type: ignore[arg-type]
        except BudgetExhausted as e:
            if e.what == "parent" and self.spec.depth == 0 and not self.budget.is_budget_capped:
                # The task's own reservation is its maxTokens bound: running out of it is that cap, not the Budget.
                raise _Stop("max_tokens", f"reached maxTokens ({limits.max_tokens}): the next call could need "
                                          f"more than the task has left") from None
            raise _Stop("budget_exhausted", str(e)) from None
        # Every exit path settles: the call is charged what the engine reported producing (the meter, kept current
        # by the ModelCall as the answer streams, over all its attempts), the rest of the hold goes back; a call
        # that produced nothing is released. Ledger writes are shielded so a cancellation cannot cut them off.
        meter = Meter()
        try:
            async with asyncio.timeout(timeout_s):
                c = await ctx.model(step.role, list(messages), response_format=fmt,  # type: ignore[arg-type]
                                    max_tokens=max_tokens, session_id=self.session_id, timeout_s=timeout_s,
                                    on_delta=self.on_delta if stream else None, meter=meter,
                                    **({"stop": tuple(stop)} if stop else {}))
        except BaseException as e:
            try:
                if meter.has_output:  # client gone, deadline, cancel or failure after the engine produced tokens
                    prompt, completion = meter.charge(prompt_bound)
                    await self._settle(step, hold, Completion("", prompt, completion, meter.model or step.role,
                                                              attempts=meter.attempts), started)
                else:
                    await asyncio.shield(self.budget.release(hold))
            except Exception as ledger_error:  # noqa: BLE001 - the call's own exit stands; the hold expires
                e.add_note(f"closing the call's budget hold failed: {ledger_error!r}")
            # The call's timeout is the task's remaining time, so a timed-out call is the deadline.
            if isinstance(e, (asyncio.TimeoutError, TimeoutError, UpstreamTimeout)):
                raise _Stop("deadline", f"reached the deadline ({limits.deadline_seconds}s)") from None
            raise
        if meter.attempts:
            prompt, completion = meter.charge(prompt_bound)
        elif c.prompt_tokens > 0:  # a ModelCall that keeps no meter: its own counts
            prompt, completion = c.prompt_tokens, c.completion_tokens
        else:  # ... and one that reports no usage is charged the bound, never nothing
            prompt, completion = prompt_bound, c.completion_tokens or max_tokens
        c = Completion(c.text, prompt, completion, c.model, c.tool_calls, c.attempts, c.note, c.finish_reason)
        if c.attempts > 1 or c.note:
            step.route_reason = "; ".join(x for x in (step.route_reason, f"{c.attempts} attempts", c.note) if x)
        await self._settle(step, hold, c, started)
        return c

    async def _settle(self, step: Step, hold: Any, c: Completion, started: float) -> None:
        """Charge a call's hold with what `c` says the engine produced, and record it on the task and the step."""
        cost = await asyncio.shield(self.budget.settle(hold, step.role,  # type: ignore[arg-type]
                                                       prompt_tokens=c.prompt_tokens,
                                                       completion_tokens=c.completion_tokens))
        self.ctx.record(c, cost)
        step.model, step.prompt_tokens, step.completion_tokens = c.model, c.prompt_tokens, c.completion_tokens
        step.cost_micro_usd, step.seconds = cost, self.ctx.clock() - started

    def _route(self, kind: StepKind, failed_role: ModelRole | None) -> tuple[ModelRole, str]:
        if self.budget.on_small_model:
            return "small", self.budget.degraded_reason
        r = choose_role(kind, routing=self.ctx.routing, failed_role=failed_role, pinned=self.spec.pinned)
        return r.role, r.reason

    async def _emit(self, step: Step) -> None:
        if self.ctx.emit is not None:
            await self.ctx.emit({"type": "step", "step": step.wire()})

    # --- the loop --------------------------------------------------------------------------------------------
    async def run(self) -> AgentResult:
        ctx = self.ctx
        attrs: dict[str, Any] = {"gen_ai.operation.name": "invoke_agent", "gen_ai.provider.name": PROVIDER,
                                 "gen_ai.agent.name": self.spec.name, "gen_ai.conversation.id": ctx.task_id,
                                 "agentfleet.agent.depth": self.spec.depth}
        if self.spec.depth == 0:
            attrs.update(ctx.span_attributes)
        with ctx.telemetry.span(f"invoke_agent {self.spec.name}", attrs) as span:
            if self.spec.depth == 0 and ctx.emit is not None and ctx.telemetry.is_enabled:
                # For the run's record: a replica that takes the run over parents its segment here.
                await ctx.emit({"type": "trace_context", "headers": ctx.telemetry.inject({})})
            try:
                answer = await self._loop()
                result = AgentResult(self.spec.name, answer, "answered", self.detail, self.steps)
            except _Stop as stop:
                result = AgentResult(self.spec.name, self.partial, stop.reason, stop.detail, self.steps)
            if ctx.telemetry.is_enabled:
                span.set_attributes(self._span_totals(result))
            return result

    def _span_totals(self, result: AgentResult) -> dict[str, Any]:
        """The invoke_agent span's closing attributes: this agent's own model calls (a sub-agent's are on its own
        span); the root adds the whole task tree's cost."""
        own = [s for s in self.steps if s.role != NO_MODEL]
        out: dict[str, Any] = {
            "gen_ai.usage.input_tokens": sum(s.prompt_tokens for s in own),
            "gen_ai.usage.output_tokens": sum(s.completion_tokens for s in own),
            "agentfleet.cost_usd": sum(s.cost_micro_usd for s in own) / 1e6,
            "agentfleet.stop_reason": result.stop_reason, "agentfleet.steps": len(self.steps)}
        if self.spec.depth == 0:
            out["agentfleet.task.cost_usd"] = self.ctx.cost_micro_usd / 1e6
            out["agentfleet.task.tokens"] = self.ctx.tokens_used
        return out

    async def _loop(self) -> str:
        if self.final is not None:  # resumed after the answer was written: nothing left to do
            return self.final
        if not self.is_resumed:
            await self._retrieve_first()
        elif self.pending is not None:  # resumed while a tool ran: run it again only if that is safe
            step, pending = self.steps[-1], self.pending
            action = Action(pending["tool"], pending["arguments"])
            await self._complete_tool(step, action, pending["call_id"],
                                      interrupted=not self._is_idempotent(action.tool))
        if self.answering == "":
            return await self._write_answer(fallback=self.fallback)
        if self.answering is not None:
            return await self._answer_now(self.answering)
        if self.is_resumed and (why := self._tool_use_over()):
            return await self._answer_now(why)
        while True:
            await self._checkpoint()
            self._check_caps()
            kind: StepKind = "plan" if not self.calls else "tool_format"
            role, why = self._route(kind, self.failed_role)
            step = Step(len(self.steps) + 1, self.spec.name, "repair" if self.repairs else kind, role,
                        route_reason=why)
            self.steps.append(step)
            try:
                c = await self._call(step, fmt=self.schema, max_tokens=ACTION_MAX_TOKENS)
            except UpstreamError as e:
                step.error = f"{type(e).__name__}: {e}"
                await self._emit(step)
                if role == "small" and self.failed_role is None and self._escalates():
                    self.failed_role = "small"
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
                self.repairs += 1
                if self.repairs == 1:
                    continue
                if role == "small" and self.failed_role is None and self._escalates():
                    self.failed_role, self.repairs = "small", 1
                    continue
                raise _Stop("malformed_action", f"no valid action after a repair attempt: {action.reason}")
            self.repairs = 0
            step.action = action.tool
            if action.is_final:
                return await self._finish(step, role, action, c)
            key = (action.tool, json.dumps(action.arguments, sort_keys=True, ensure_ascii=False))
            if self.last_call is not None and self.last_call[:2] == key:
                # The same call again gets the same result: the model is stuck, and has all this tool gives.
                step.arguments = action.arguments
                step.error = f"repeated call: {action.tool} with the same arguments as step {self.last_call[2]}"
                await self._emit(step)
                return await self._answer_now(f"the model repeated its {action.tool} call (step {step.n})")
            await self._act(step, action, c.text)
            if why := self._tool_use_over():
                return await self._answer_now(why)

    def _tool_use_over(self) -> str | None:
        if self.tool_errors >= self.ctx.max_tool_errors:
            last = next((s.error for s in reversed(self.steps) if s.error), None)
            return f"{self.tool_errors} tool errors in a row (last: {last})"
        if self.idle >= self.ctx.max_tool_errors:
            return f"{self.idle} searches in a row found no new passages"
        return None

    def _escalates(self) -> bool:
        routing = self.ctx.routing or RoutingSpec()
        return routing.policy == "cheap-first" and routing.escalate_on_failure and not self.budget.on_small_model

    async def _retrieve_first(self) -> None:
        """Search for the user's question before the model plans (no model call, the task's principal)."""
        ctx = self.ctx
        if not (ctx.retrieve_first and ctx.retrieve is not None and self.question
                and any(t.name == RETRIEVE.name for t in self.tools)):
            return
        self._check_caps()
        query = self.question[:int(RETRIEVE.parameters["properties"]["query"]["maxLength"])]
        action = Action(RETRIEVE.name, {"query": query})
        step = Step(len(self.steps) + 1, self.spec.name, "retrieve", NO_MODEL, action=action.tool,
                    route_reason="retrieve-first: the question is searched before the model plans")
        self.steps.append(step)
        # Recorded as the call the model would have made, so the transcript shows the protocol by example.
        await self._act(step, action, json.dumps({"action": action.tool, "arguments": action.arguments},
                                                 ensure_ascii=False))

    async def _act(self, step: Step, action: Action, content: str) -> None:
        call_id = "call_" + uuid.uuid4().hex[:12]
        step.arguments = action.arguments
        self.messages.append({"role": "assistant", "content": content, "tool_calls": [
            {"id": call_id, "type": "function",
             "function": {"name": action.tool, "arguments": json.dumps(action.arguments, ensure_ascii=False)}}]})
        # Recorded before the tool runs: a replica that takes the run over knows the call may have happened.
        self.pending = {"tool": action.tool, "arguments": dict(action.arguments), "call_id": call_id, "n": step.n}
        await self._checkpoint()
        await self._complete_tool(step, action, call_id)

    async def _complete_tool(self, step: Step, action: Action, call_id: str, *, interrupted: bool = False) -> None:
        if not self.ctx.telemetry.is_enabled:
            return await self._run_tool(step, action, call_id, interrupted=interrupted)
        server, is_mcp, _ = action.tool.partition(MCP_SEPARATOR)  # an MCP server's tools: "<server>__<tool>"
        kind = "datastore" if action.tool == RETRIEVE.name else "extension" if is_mcp else "function"
        attrs = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": action.tool,
                 "gen_ai.tool.call.id": call_id, "gen_ai.tool.type": kind, "gen_ai.agent.name": self.spec.name,
                 "gen_ai.conversation.id": self.ctx.task_id, "agentfleet.step": step.n}
        if is_mcp:
            attrs["agentfleet.mcp.server"] = server
        with self.ctx.telemetry.span(f"execute_tool {action.tool}", attrs) as span:
            await self._run_tool(step, action, call_id, interrupted=interrupted)
            if step.error:  # low cardinality: the observation (the model's to read) may hold the tool's own text
                span.set_attribute("error.type", "tool_timeout" if step.error == "tool_timeout" else "tool_error")

    async def _run_tool(self, step: Step, action: Action, call_id: str, *, interrupted: bool = False) -> None:
        """Run the tool (or, for a call interrupted by a replica's death that is not safe to repeat, record that it
        was interrupted for the model to handle) and append its result."""
        timeout_s = min(float(self.ctx.limits.tool_timeout_seconds), max(self.ctx.remaining_s(), 0.0))
        try:
            if interrupted:
                raise ToolFailed(f"interrupted: the replica running {action.tool} stopped before it returned, so it "
                                 f"may or may not have taken effect; it was not run again")
            if action.tool == DELEGATE_NAME:  # sub-agents run under the task's deadline, not the tool timeout
                observation = await asyncio.wait_for(self._delegate(step, action), max(self.ctx.remaining_s(), 0))
            else:
                observation = await self._timed_tool(action, timeout_s)
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
        self.last_call = (action.tool, json.dumps(action.arguments, sort_keys=True, ensure_ascii=False), step.n)
        self.tool_errors = self.tool_errors + 1 if step.error else 0
        if not step.error and action.tool != RETRIEVE.name:
            args = ", ".join(f"{k}={v}" for k, v in action.arguments.items()) if action.tool != DELEGATE_NAME else ""
            self.results.append(f"{action.tool}({args}): {observation}" if args else f"{action.tool}: {observation}")
        self.messages.append({"role": "tool", "tool_call_id": call_id, "name": action.tool, "content": observation})
        self.pending = None
        await self._checkpoint()
        await self._emit(step)

    async def _timed_tool(self, action: Action, timeout_s: float) -> str:
        """Run a tool under its timeout, learn its duration, and (tools.warm) warm the model's cache for the next
        step shortly before the tool is expected to end."""
        ctx = self.ctx
        warm = self._warm_for(action.tool)
        started = ctx.clock()
        try:
            return await asyncio.wait_for(self._tool(action), timeout_s)
        finally:
            if ctx.tool_times is not None:
                ctx.tool_times.record(action.tool, ctx.clock() - started)
            if warm is not None and not warm.done():
                warm.cancel()  # the tool ended first: the next step's own call prefills

    def _warm_for(self, tool: str) -> asyncio.Task[None] | None:
        ctx, spec = self.ctx, self.ctx.warm
        if spec is None or not spec.enabled or ctx.tool_times is None:
            return None
        typical = ctx.tool_times.typical(tool)
        if typical is None or typical < spec.min_tool_seconds:
            return None
        return asyncio.create_task(self._warm(max(0.0, typical - spec.lead_seconds), list(self.messages)))

    async def _warm(self, delay_s: float, messages: list[dict[str, Any]]) -> None:
        """One 1-token request with the transcript so far, on the run's session and the role the next step will
        use: the engine holding the session prefills it again if it was evicted. Charged like any call; a warm that
        fails, or that the task cannot afford twice over (itself and the real call after it), is skipped."""
        await asyncio.sleep(delay_s)
        ctx = self.ctx
        for m in self.messages[self.counted:]:
            self.message_bytes += _message_bytes(m)
        self.counted = len(self.messages)
        bound = self.message_bytes + prompt_token_bound((), messages=len(messages))
        if ctx.limits.max_tokens - ctx.tokens_used < 2 * bound + ACTION_MAX_TOKENS or ctx.remaining_s() < 1:
            return
        role, _ = self._route("tool_format", self.failed_role)
        step = Step(0, self.spec.name, "warm", role, route_reason="warm before the tool ends")  # type: ignore[arg-type]
        try:
            await self._reserve_and_call(step, messages, fmt=None, max_tokens=1, stream=False, stop=(),
                                         prompt_bound=bound, timeout_s=min(ctx.remaining_s(), 60.0))
        except Exception as e:  # noqa: BLE001 - a warm is an optimisation: the run goes on without it
            log.debug("warm request skipped: %r", e)

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
            text, cites = format_hits(hits, self.ctx.citations)
            fresh = [c for c in cites if c.n not in self.passages]
            for c, line in zip(cites, text.split("\n")):
                self.passages.setdefault(c.n, line)
            self.idle = 0 if fresh else self.idle + 1
            return text
        if self.ctx.external is not None:
            return await self.ctx.external.call(action.tool, action.arguments, self.ctx.principal)
        raise ToolFailed(f"unknown tool {action.tool}")

    async def _delegate(self, step: Step, action: Action) -> str:
        calls = list(action.arguments["calls"])
        # Bounded per delegating agent, not by one semaphore over the tree: a sub-agent holding a slot while it
        # waits for its own sub-agents would otherwise deadlock (until the deadline) at maxParallelSubAgents 1.
        slots = asyncio.Semaphore(self.ctx.limits.max_parallel_sub_agents)

        async def one(i: int, call: Mapping[str, Any]) -> AgentResult:
            sub = self.ctx.sub_agents[call["agent"]]
            async with slots:
                if sub.a2a is not None:
                    return await self._remote(step, i, sub.name, sub.a2a, str(call["task"]))
                try:
                    budget = await self.budget.child(sub.budget_share)
                except BudgetExhausted as e:
                    return AgentResult(sub.name, "", "budget_exhausted", str(e), [])
                try:
                    spec = AgentSpec(sub.name, sub.system_prompt or "", sub.local_tools, sub.role, self.spec.depth + 1)
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

    async def _remote(self, step: Step, i: int, name: str, agent: A2AAgent, task: str) -> AgentResult:
        """One remote A2A sub-agent: its answer (citation markers renumbered into this task's book) or its failure,
        as a one-step AgentResult. Nothing is charged here: the remote app's Budget pays for its run."""
        ctx = self.ctx
        timeout_s = min(float(ctx.limits.tool_timeout_seconds), max(ctx.remaining_s(), 0.0))
        rstep = Step(1, name, "a2a", NO_MODEL, action="message/send", arguments={"task": task},
                     route_reason="remote A2A agent")
        rstep.remote = {"url": agent.url}
        started = ctx.clock()
        attrs = {"gen_ai.operation.name": "invoke_agent", "gen_ai.provider.name": PROVIDER, "gen_ai.agent.name": name,
                 "gen_ai.conversation.id": ctx.task_id, "agentfleet.agent.depth": self.spec.depth + 1,
                 "agentfleet.agent.remote": True}
        with ctx.telemetry.span(f"invoke_agent {name}", attrs, kind="client") as span:
            try:
                if ctx.remote is None:
                    raise ToolFailed(f"{name}: this runtime has no A2A client")
                got = await ctx.remote.send(name, agent, task, ctx.principal,
                                            message_id=f"{ctx.task_id}-{step.n}-{i}-{name}", context_id=ctx.task_id,
                                            timeout_s=timeout_s)
            except ToolFailed as e:
                rstep.error, rstep.seconds = str(e), ctx.clock() - started
                task_id = getattr(e, "task_id", None)
                if task_id:
                    rstep.remote["task_id"] = task_id
                span.set_attribute("error.type", "remote_error")
                return AgentResult(name, "", "remote_error", str(e), [rstep])
            answer = _renumber(got, name, ctx.citations)
            rstep.observation, rstep.seconds = answer[:OBSERVATION_MAX_CHARS], ctx.clock() - started
            rstep.remote.update({"task_id": got.task_id, "state": got.state, "cost_usd": got.cost_usd,
                                 "usage": dict(got.usage) if got.usage is not None else None})
            if got.task_id:
                span.set_attribute("agentfleet.a2a.task_id", got.task_id)
            if got.cost_usd is not None:
                span.set_attribute("agentfleet.a2a.cost_usd", float(got.cost_usd))
        return AgentResult(name, answer, "answered", "", [rstep])

    async def _finish(self, step: Step, role: ModelRole, action: Action, c: Completion) -> str:
        answer_role, _ = self._route("answer", None)
        self.partial = action.answer
        if answer_role == role:
            self.final = action.answer
            await self._checkpoint()
            await self._emit(step)
            if self.on_delta is not None:
                await self.on_delta(action.answer)
            return action.answer
        # Cheap-first: the small model decided it can answer; the large one writes the answer (streamed).
        self.answering, self.fallback = "", action.answer
        await self._checkpoint()
        await self._emit(step)
        return await self._write_answer(fallback=action.answer)

    async def _answer_now(self, why: str) -> str:
        """Tool use is over (a stuck model): the answer step writes the answer from what was gathered."""
        self.answering, self.detail = why, f"tool use stopped: {why}"
        await self._checkpoint()
        return await self._write_answer(fallback=None)

    async def _write_answer(self, *, fallback: str | None) -> str:
        """The answer step: free text (no schema), streamed, from the passages gathered, stopped at ANSWER_STOP.
        If it fails, `fallback` (the small model's answer) stands; without one the task ends model_error."""
        answer_role, why = self._route("answer", None)
        if self.detail:
            why = f"{why}; {self.detail}"
        self._check_caps()
        passages = [self.passages[n] for n in sorted(self.passages)]
        prompt = answer_messages(self.spec.system_prompt, self.conversation, self.question, passages, self.results,
                                 max_passages=self.ctx.answer_passages)
        final = Step(len(self.steps) + 1, self.spec.name, "answer", answer_role, route_reason=why, action=FINAL)
        self.steps.append(final)
        try:
            c = await self._call(final, fmt=None, max_tokens=min(ANSWER_MAX_TOKENS, self.ctx.answer_max_tokens
                                                                 or ANSWER_MAX_TOKENS), stream=True,
                                 stop=ANSWER_STOP, messages=prompt)
        except UpstreamError as e:
            final.error = f"{type(e).__name__}: {e}"
            await self._emit(final)
            if fallback is None:
                raise _Stop("model_error", f"the {answer_role} model failed to write the answer: {e}") from None
            self.partial = self.final = fallback  # the small model's answer stands
            await self._checkpoint()
            if self.on_delta is not None:
                await self.on_delta(fallback)
            return fallback
        text = c.text.strip() or fallback or ""
        self.partial = self.final = text
        await self._checkpoint()
        await self._emit(final)
        if not c.text.strip() and fallback and self.on_delta is not None:
            await self.on_delta(fallback)
        return text


class ToolFailed(Exception):
    """A tool call failed in a way the model may recover from: its message becomes the observation."""


_MARKER = re.compile(r"\[(\d{1,4})\]")


@dataclass(frozen=True)
class _RemoteHit:
    id: str
    source: str
    title: str
    trail: tuple[str, ...]
    score: float
    url: str | None = None


def _renumber(got: RemoteAnswer, agent: str, book: CitationBook) -> str:
    """The remote answer with its citations added to this task's book (ids prefixed by the sub-agent, so they never
    merge with a local chunk) and its [n] markers rewritten to the numbers this task uses; the sources are listed
    after it, so the parent model can cite them."""
    local: dict[int, int] = {}
    listed = []
    for c in got.citations:
        try:
            n, cid = int(c["n"]), str(c["id"])
        except (KeyError, TypeError, ValueError):
            continue
        headings, url = c.get("headings") or (), c.get("url")
        hit = _RemoteHit(f"{REMOTE_PREFIX}{agent}:{cid}", str(c.get("source") or ""), str(c.get("title") or ""),
                         tuple(str(h) for h in headings) if isinstance(headings, (list, tuple)) else (),
                         float(c.get("score") or 0.0), url if is_http_url(url) else None)
        mine = book.add(hit)
        local[n] = mine.n
        listed.append(f"[{mine.n}] {mine.title or mine.source} ({mine.source})")
    text = _MARKER.sub(lambda m: f"[{local[int(m.group(1))]}]" if int(m.group(1)) in local else m.group(0),
                       got.answer) if local else got.answer
    return f"{text}\nSources: " + "; ".join(listed) if listed else text


async def run_agent(ctx: TaskContext, spec: AgentSpec, budget: CallBudget, history: Sequence[Mapping[str, Any]],
                    *, on_delta: Callable[[str], Awaitable[None]] | None = None) -> AgentResult:
    """Run one agent (the task's root agent) to an answer or a cap. Cancellation propagates (the caller releases
    the task's reservation)."""
    agent = _Agent(ctx, spec, budget, history, ctx.task_id, on_delta)
    return await agent.run()

