"""The A2A protocol's shapes of an AgentApp, pure, in A2A 0.3's spelling
(https://a2a-protocol.org/v0.3.0/specification/): the agent card (its skills from the app's sub-agents and tools,
bearer-key auth, and one JSON-RPC interface per protocol version it speaks), the version a request asks for (the
A2A-Version header), JSON-RPC 2.0 requests and errors, the params of `message/send` / `message/stream` /
`tasks/get` / `tasks/cancel`, a run as a `Task` (id = run id, the answer as one artifact: a text part and a data part
with citations, usage and cost), and the events of a stream (the task, a `working` status update per agent step, the
answer artifact, the final status update). A2A 1.0's spellings are translations of these (a2a_v1.py); 0.3's is
the identity translation (`V03_DIALECT`). The HTTP edge is a2a_server.py; a remote A2A sub-agent is called by
a2a_client.py."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..api.runtime_config import RuntimeConfig
from .actions import FINAL
from .runs import RunRecord

__all__ = ["PROTOCOL_VERSION", "A2A_KIND", "JSONRPC_PATH", "CARD_PATHS", "VERSION_HEADER", "V03", "V10", "VERSIONS",
           "agent_card", "requested_version", "RpcError", "parse_rpc", "Dialect", "V03_DIALECT", "SendParams",
           "TaskIdParams", "send_params", "task_id_params", "message_text", "task_of", "task_state", "status_time_s",
           "StreamEvents", "rpc_result", "rpc_error", "idempotency_key", "PARSE_ERROR", "INVALID_REQUEST",
           "METHOD_NOT_FOUND", "INVALID_PARAMS", "INTERNAL_ERROR", "TASK_NOT_FOUND", "TASK_NOT_CANCELABLE",
           "PUSH_NOT_SUPPORTED", "UNSUPPORTED_OPERATION", "CONTENT_TYPE_NOT_SUPPORTED", "VERSION_NOT_SUPPORTED",
           "SERVER_ERROR"]

PROTOCOL_VERSION = "0.3.0"  # the 0.3 card's own field (a 1.0 card names its versions per interface)
# A2A 1.0 spec 3.6: the request names its version (Major.Minor) in this header; none (or empty) means 0.3.
VERSION_HEADER = "A2A-Version"
V03, V10 = "0.3", "1.0"
VERSIONS = (V10, V03)  # the card's interfaces, the preferred first
A2A_KIND = "a2a"  # the RunRecord.kind of a task started over A2A
JSONRPC_PATH = "/a2a"
# The card's well-known path since A2A 0.3, and the 0.2 name that older clients still ask for.
CARD_PATHS = ("/.well-known/agent-card.json", "/.well-known/agent.json")

# JSON-RPC 2.0 (https://www.jsonrpc.org/specification#error_object) and A2A's own codes (spec section 8.2).
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = -32700, -32600, -32601, -32602, -32603
TASK_NOT_FOUND, TASK_NOT_CANCELABLE, CONTENT_TYPE_NOT_SUPPORTED = -32001, -32002, -32005
PUSH_NOT_SUPPORTED, UNSUPPORTED_OPERATION, VERSION_NOT_SUPPORTED = -32003, -32004, -32009  # the last new in 1.0
SERVER_ERROR = -32000  # budget exhausted, rate or concurrency limits, upstream failures: data.code names which

_BUILTIN_SKILLS = {
    "retrieve": ("Search the app's document index, filtered to what the caller may read.", ["retrieval", "search"]),
    "calculator": ("Evaluate arithmetic expressions exactly.", ["math"]),
}


def _skill(id_: str, name: str, description: str, tags: list[str]) -> dict[str, Any]:
    return {"id": id_, "name": name, "description": description, "tags": tags,
            "inputModes": ["text/plain"], "outputModes": ["text/plain", "application/json"]}


def agent_card(config: RuntimeConfig, *, base_url: str, version: str) -> dict[str, Any]:
    """The public card. The system prompt and the MCP servers' URLs are not on it: a card is served to anyone.

    One document for both protocol versions, as a2a-sdk's own server writes it: A2A 1.0's `supportedInterfaces`
    lists the one JSON-RPC endpoint once per version (1.0 spec 3.6.2: an agent may expose one transport at several
    versions, under the same URL), and the 0.3 fields (`url`, `protocolVersion`, `preferredTransport`, `security`,
    `supportsAuthenticatedExtendedCard`) stay for 0.3 clients; each side ignores the other's fields. The security
    scheme carries both spellings (0.3's `type`/`scheme`, 1.0's `httpAuthSecurityScheme`)."""
    skills = [_skill(config.app, config.app, f"Answer questions as the AgentApp {config.namespace}/{config.app}, "
                     "with citations, tokens and cost.", ["agent", "question-answering"])]
    skills += [_skill(f"sub-agent:{s.name}", s.name, s.description, ["sub-agent"]) for s in config.sub_agents]
    for tool in config.tools.builtin:
        description, tags = _BUILTIN_SKILLS.get(tool, (f"The built-in {tool} tool.", []))
        skills.append(_skill(f"tool:{tool}", tool, description, ["tool", *tags]))
    skills += [_skill(f"mcp:{m.name}", m.name, f"The tools of the MCP server {m.name}.", ["tool", "mcp"])
               for m in config.tools.mcp_servers]
    url = base_url.rstrip("/") + JSONRPC_PATH
    bearer = "An API key of the AgentApp's key store"
    return {
        "supportedInterfaces": [{"url": url, "protocolBinding": "JSONRPC", "protocolVersion": v} for v in VERSIONS],
        "protocolVersion": PROTOCOL_VERSION, "name": config.app,
        "description": f"agentfleet AgentApp {config.namespace}/{config.app}",
        "url": url, "preferredTransport": "JSONRPC", "version": version,
        "provider": {"organization": config.namespace or "agentfleet", "url": base_url},
        "capabilities": {"streaming": True, "pushNotifications": False, "extendedAgentCard": False,
                         "stateTransitionHistory": False},
        "defaultInputModes": ["text/plain", "application/json"],
        "defaultOutputModes": ["text/plain", "application/json"],
        "skills": skills,
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": bearer,
                                       "httpAuthSecurityScheme": {"scheme": "bearer", "description": bearer}}},
        "security": [{"bearer": []}],
        "securityRequirements": [{"schemes": {"bearer": {"list": []}}}],
        "supportsAuthenticatedExtendedCard": False,
    }


_VERSION = re.compile(r"(\d{1,4})\.(\d{1,4})(?:\.\d{1,4})?")


def requested_version(value: str | None) -> str:
    """The protocol version a request asks for (1.0 spec 3.6): the A2A-Version header's Major.Minor, the patch
    ignored; absent or empty is 0.3. Anything else is VersionNotSupportedError (-32009)."""
    raw = (value or "").strip()
    if not raw:
        return V03
    m = _VERSION.fullmatch(raw)
    got = f"{int(m[1])}.{int(m[2])}" if m else None
    if got not in VERSIONS:
        raise RpcError(VERSION_NOT_SUPPORTED, f"A2A version {raw[:40]!r} is not supported: this agent speaks "
                       f"A2A {' and '.join(VERSIONS)} (send the header {VERSION_HEADER}: {V10}, or none for "
                       f"{V03})", {"supportedVersions": list(VERSIONS)})
    return got


# --- JSON-RPC ---------------------------------------------------------------------------------------------------

class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None):
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


def rpc_result(rpc_id: Any, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rpc_id, "result": result}


def rpc_error(rpc_id: Any, err: RpcError, dialect: Dialect | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": err.code, "message": err.message}
    data = (dialect or V03_DIALECT).error_data(err)
    if data is not None:
        body["data"] = data
    return {"jsonrpc": "2.0", "id": rpc_id, "error": body}


def parse_rpc(body: Any) -> tuple[Any, str, dict[str, Any]]:
    """(id, method, params) of one JSON-RPC 2.0 request; RpcError(-32600) for anything else (a batch included:
    A2A sends none). The id is returned as soon as it is known, on the error too (`err.data` stays free)."""
    if not isinstance(body, dict):
        raise RpcError(INVALID_REQUEST, "a JSON-RPC request must be one JSON object (batches are not supported)")
    rpc_id = body.get("id")
    if rpc_id is not None and (isinstance(rpc_id, bool) or not isinstance(rpc_id, (str, int))):
        raise RpcError(INVALID_REQUEST, "id must be a string, a number or null")
    if body.get("jsonrpc") != "2.0":
        raise _with_id(RpcError(INVALID_REQUEST, 'jsonrpc must be "2.0"'), rpc_id)
    method = body.get("method")
    if not isinstance(method, str) or not method:
        raise _with_id(RpcError(INVALID_REQUEST, "method must be a non-empty string"), rpc_id)
    params = body.get("params", {})
    if not isinstance(params, dict):
        raise _with_id(RpcError(INVALID_PARAMS, "params must be an object"), rpc_id)
    return rpc_id, method, params


def _with_id(err: RpcError, rpc_id: Any) -> RpcError:
    err.rpc_id = rpc_id  # type: ignore[attr-defined]
    return err


# --- params -----------------------------------------------------------------------------------------------------

class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Part(_Wire):
    kind: Literal["text", "data", "file"]
    text: str | None = Field(default=None, max_length=200_000)
    data: Any = None  # an object in 0.3; any JSON value in 1.0 (a protobuf Value)
    metadata: dict[str, Any] | None = None


class Message(_Wire):
    role: Literal["user", "agent"]
    parts: list[Part] = Field(min_length=1, max_length=64)
    message_id: str = Field(alias="messageId", min_length=1, max_length=256)
    context_id: str | None = Field(default=None, alias="contextId", min_length=1, max_length=256)
    task_id: str | None = Field(default=None, alias="taskId", max_length=256)
    kind: Literal["message"] = "message"
    metadata: dict[str, Any] | None = None


class SendConfiguration(_Wire):
    blocking: bool | None = None
    history_length: int | None = Field(default=None, alias="historyLength", ge=0)
    accepted_output_modes: list[str] | None = Field(default=None, alias="acceptedOutputModes")


class SendParams(_Wire):
    message: Message
    configuration: SendConfiguration | None = None
    metadata: dict[str, Any] | None = None

    @property
    def is_blocking(self) -> bool:
        return self.configuration is None or self.configuration.blocking is not False


class TaskIdParams(_Wire):
    id: str = Field(min_length=1, max_length=256)
    history_length: int | None = Field(default=None, alias="historyLength", ge=0)


def _invalid(e: ValidationError) -> RpcError:
    errors = [{"loc": ".".join(str(x) for x in err["loc"]), "msg": err["msg"]} for err in e.errors()[:10]]
    return RpcError(INVALID_PARAMS, "invalid params: " + "; ".join(f"{x['loc']}: {x['msg']}" for x in errors),
                    {"errors": errors})


def send_params(params: dict[str, Any], *, continue_code: int = TASK_NOT_FOUND) -> SendParams:
    """`continue_code`: the error for a message naming a task (0.3 answers task-not-found, 1.0 unsupported
    operation: a message to a task in a terminal state, spec 3.1.1)."""
    try:
        got = SendParams.model_validate(params)
    except ValidationError as e:
        raise _invalid(e) from None
    if got.message.role != "user":
        raise RpcError(INVALID_PARAMS, "invalid params: message.role must be user")
    if any(p.kind == "file" for p in got.message.parts):
        raise RpcError(CONTENT_TYPE_NOT_SUPPORTED, "file parts are not supported: send text or data parts")
    if got.message.task_id:  # every message starts a task; a finished one cannot be continued (spec 7.1)
        raise RpcError(continue_code, "this agent does not continue tasks: send the message without taskId "
                       "(use contextId to group tasks)")
    if not message_text(got.message).strip():
        raise RpcError(INVALID_PARAMS, "invalid params: message has no text")
    return got


def task_id_params(params: dict[str, Any]) -> TaskIdParams:
    try:
        return TaskIdParams.model_validate(params)
    except ValidationError as e:
        raise _invalid(e) from None


def message_text(message: Message) -> str:
    """The question: text parts as they are, data parts as JSON, in order."""
    out = []
    for p in message.parts:
        if p.kind == "text" and p.text:
            out.append(p.text)
        elif p.kind == "data" and p.data is not None:
            out.append(json.dumps(p.data, ensure_ascii=False, sort_keys=True))
    return "\n".join(out)


_IDEMPOTENT_ID = re.compile(r"^[\x21-\x7e]{1,200}$")


def idempotency_key(message: Message) -> str:
    """A message resent with the same messageId (a client's retry) is the same task, not a second bill."""
    mid = message.message_id
    return "a2a:" + (mid if _IDEMPOTENT_ID.match(mid) else uuid.uuid5(uuid.NAMESPACE_URL, mid).hex)


# --- tasks ------------------------------------------------------------------------------------------------------

def _iso(t_s: float) -> str:
    return datetime.fromtimestamp(t_s, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def status_time_s(run: RunRecord) -> float:
    """When a run's status last changed, as its Task's status timestamp says."""
    return run.finished_s or run.created_s


def task_state(run: RunRecord) -> str:
    """A run's status as an A2A TaskState. An incomplete run (a cap reached) that has an answer completed with
    it (metadata says which cap); without one it failed."""
    if run.status == "incomplete":
        return "completed" if (run.result or {}).get("answer") else "failed"
    return {"running": "working", "queued": "submitted", "completed": "completed", "cancelled": "canceled",
            "failed": "failed"}.get(run.status, "unknown")


def _agent_message(run: RunRecord, parts: list[dict[str, Any]], suffix: str) -> dict[str, Any]:
    return {"kind": "message", "role": "agent", "parts": parts, "messageId": f"{run.id}-{suffix}",
            "taskId": run.id, "contextId": context_id(run)}


def context_id(run: RunRecord) -> str:
    return str((run.extra or {}).get("context_id") or run.id)


def _answer_artifact(run: RunRecord, answer: str, summary: dict[str, Any]) -> dict[str, Any]:
    data = {"citations": summary.get("citations") or [], "stop_reason": summary.get("stop_reason"),
            "usage": summary.get("usage") or {}, "cost_usd": summary.get("cost_usd")}
    return {"artifactId": f"{run.id}-answer", "name": "answer",
            "parts": [{"kind": "text", "text": answer}, {"kind": "data", "data": data}]}


def _status(run: RunRecord, state: str) -> dict[str, Any]:
    status: dict[str, Any] = {"state": state, "timestamp": _iso(status_time_s(run))}
    if state == "failed":
        err = run.error or {}
        summary = (run.result or {}).get("agentfleet") or {}
        text = err.get("message") or f"no answer ({summary.get('stop_reason') or 'failed'})"
        status["message"] = _agent_message(run, [{"kind": "text", "text": str(text)}], "error")
    return status


def _user_message(run: RunRecord) -> dict[str, Any]:
    sent = (run.extra or {}).get("message")
    if isinstance(sent, dict):
        return {**sent, "taskId": run.id, "contextId": context_id(run)}
    history = run.request.get("history") or [{}]
    return {"kind": "message", "role": "user", "parts": [{"kind": "text", "text": str(history[-1].get("content"))}],
            "messageId": f"{run.id}-input", "taskId": run.id, "contextId": context_id(run)}


def task_of(run: RunRecord, *, history_length: int | None = None, state: str | None = None) -> dict[str, Any]:
    """A run as an A2A Task: from its finished record, or (`state`) as it is now."""
    state = state or task_state(run)
    result = run.result or {}
    answer, summary = result.get("answer"), result.get("agentfleet") or {}
    task: dict[str, Any] = {"kind": "task", "id": run.id, "contextId": context_id(run), "status": _status(run, state)}
    if answer and state in ("completed", "failed", "canceled"):
        task["artifacts"] = [_answer_artifact(run, answer, summary)]
    history = [_user_message(run)]
    if history_length is not None:
        history = history[len(history) - history_length:] if history_length else []
    task["history"] = history
    if summary:
        task["metadata"] = {"agentfleet": summary}
    return task


class StreamEvents:
    """The results of one `message/stream`, in order: the task (submitted), a `working` status update per agent
    step (its text says which tool; a data part carries the step), then the answer artifact (lastChunk) and the
    final status update (`final: true`)."""

    def __init__(self, run: RunRecord):
        self.run = run

    def start(self) -> list[dict[str, Any]]:
        return [task_of(self.run, state="submitted")]

    def _update(self, state: str, *, final: bool, message: dict[str, Any] | None = None,
                metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        status: dict[str, Any] = {"state": state, "timestamp": _iso(datetime.now(timezone.utc).timestamp())}
        if message is not None:
            status["message"] = message
        ev = {"kind": "status-update", "taskId": self.run.id, "contextId": context_id(self.run), "status": status,
              "final": final}
        if metadata:
            ev["metadata"] = metadata
        return ev

    def step(self, step: dict[str, Any]) -> list[dict[str, Any]]:
        action = str(step.get("action") or "")
        n = step.get("n", 0)
        text = f"step {n}: answering" if action in ("", FINAL) else f"step {n}: {action}"
        msg = _agent_message(self.run, [{"kind": "text", "text": text}, {"kind": "data", "data": step}],
                             f"step-{n}")
        return [self._update("working", final=False, message=msg)]

    def finish(self, done: RunRecord) -> list[dict[str, Any]]:
        final = task_of(done)
        out = [{"kind": "artifact-update", "taskId": done.id, "contextId": context_id(done), "artifact": a,
                "append": False, "lastChunk": True} for a in final.get("artifacts", [])]
        status = final["status"]
        ev = self._update(status["state"], final=True, message=status.get("message"),
                          metadata=final.get("metadata"))
        ev["status"]["timestamp"] = status["timestamp"]
        return out + [ev]


# --- protocol versions ------------------------------------------------------------------------------------------

def _same(obj: Any) -> Any:
    return obj


@dataclass(frozen=True)
class Dialect:
    """How one protocol version spells what this module builds in 0.3's spelling: its SendMessage params read as
    0.3's, and the answers (a sent message's result, a Task, a stream event, an error's data) written in its own."""

    version: str
    send_params: Callable[[Any], Any]  # the request's params -> 0.3's (validated by send_params)
    sent: Callable[[dict[str, Any]], Any]  # a Task -> the result of SendMessage
    task: Callable[[dict[str, Any]], Any]  # a Task -> the result of GetTask / CancelTask
    event: Callable[[dict[str, Any]], Any]  # a stream event -> the result of one SSE event
    error_data: Callable[[RpcError], Any]  # an error -> its `data` (None: none)
    continue_code: int  # the error for a message that names a task


V03_DIALECT = Dialect(V03, send_params=_same, sent=_same, task=_same, event=_same,
                      error_data=lambda e: e.data, continue_code=TASK_NOT_FOUND)
