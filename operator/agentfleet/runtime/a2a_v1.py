"""A2A 1.0's spelling of the runtime's A2A shapes (https://a2a-protocol.org/v1.0.0/specification/, as a2a-sdk's
protobuf types `a2a.types.a2a_pb2` define it), pure: each translates a shape a2a.py builds in 0.3's spelling, so a
task is one durable run whichever version started or reads it. What changed in 1.0 and is translated here: the
PascalCase method names (a2a_server's tables), enums as SCREAMING_SNAKE_CASE (`ROLE_USER`,
`TASK_STATE_COMPLETED`), no `kind` discriminators (a part is `{"text"}` / `{"data"}` / `{"url"}` / `{"raw"}`, a
stream event is wrapped as `{"task"}` / `{"statusUpdate"}` / `{"artifactUpdate"}`, a sent message's result as
`{"task"}`), no `final` flag (the stream's end says it), `returnImmediately` instead of `blocking: false`,
millisecond timestamps, and error details as a list of google.rpc objects (an `ErrorInfo` with the reason, and a
`BadRequest` naming the invalid fields). Also ListTasks (new in 1.0): its params, and one page of the caller's
tasks newest first with an opaque cursor."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime, timezone
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .a2a import (
    CONTENT_TYPE_NOT_SUPPORTED, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR,
    PUSH_NOT_SUPPORTED, SERVER_ERROR, TASK_NOT_CANCELABLE, TASK_NOT_FOUND, UNSUPPORTED_OPERATION, V10,
    VERSION_NOT_SUPPORTED, Dialect, RpcError, status_time_s, task_of, task_state,
)
from .runs import RunRecord

__all__ = ["V10_DIALECT", "ListParams", "list_params", "list_page", "MAX_PAGE_SIZE", "DEFAULT_PAGE_SIZE",
           "task_v1", "message_v1", "event_v1", "error_details"]

ROLE_V1 = {"user": "ROLE_USER", "agent": "ROLE_AGENT"}
_ROLE_IN = {"ROLE_USER": "user", 1: "user", "ROLE_AGENT": "agent", 2: "agent"}
STATE_V1 = {"submitted": "TASK_STATE_SUBMITTED", "working": "TASK_STATE_WORKING",
            "completed": "TASK_STATE_COMPLETED", "failed": "TASK_STATE_FAILED", "canceled": "TASK_STATE_CANCELED",
            "rejected": "TASK_STATE_REJECTED", "input-required": "TASK_STATE_INPUT_REQUIRED",
            "auth-required": "TASK_STATE_AUTH_REQUIRED"}
_STATE_IN = {v: k for k, v in STATE_V1.items()}
UNSPECIFIED = "TASK_STATE_UNSPECIFIED"

# google.rpc error details, as a2a-sdk writes them (a2a.utils.error_handlers) and its client reads them.
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
A2A_DOMAIN = "a2a-protocol.org"
AGENTFLEET_DOMAIN = "agentfleet.io"  # our -32000 errors: the reason is the OpenAI-style code (budget_exhausted)
_REASONS = {TASK_NOT_FOUND: "TASK_NOT_FOUND", TASK_NOT_CANCELABLE: "TASK_NOT_CANCELABLE",
            PUSH_NOT_SUPPORTED: "PUSH_NOTIFICATION_NOT_SUPPORTED", UNSUPPORTED_OPERATION: "UNSUPPORTED_OPERATION",
            CONTENT_TYPE_NOT_SUPPORTED: "CONTENT_TYPE_NOT_SUPPORTED", VERSION_NOT_SUPPORTED: "VERSION_NOT_SUPPORTED",
            INVALID_PARAMS: "INVALID_PARAMS", INVALID_REQUEST: "INVALID_REQUEST",
            METHOD_NOT_FOUND: "METHOD_NOT_FOUND", INTERNAL_ERROR: "INTERNAL_ERROR", PARSE_ERROR: "PARSE_ERROR"}

DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 50, 100  # a2a-sdk's defaults for ListTasks


# --- what a 1.0 caller sends -------------------------------------------------------------------------------

def _part_in(part: Any) -> Any:
    """A 1.0 part (one of text, data, url, raw) as 0.3's; a part with none is left for validation to name."""
    if not isinstance(part, dict):
        return part
    meta = {"metadata": part["metadata"]} if "metadata" in part else {}
    if "text" in part:
        return {"kind": "text", "text": part["text"], **meta}
    if "data" in part:
        return {"kind": "data", "data": part["data"], **meta}
    if "url" in part or "raw" in part:
        return {"kind": "file", **meta}  # refused with -32005, as a 0.3 file part
    raise RpcError(INVALID_PARAMS, "invalid params: a message part holds one of text, data, url or raw")


def _message_in(msg: Any) -> Any:
    if not isinstance(msg, dict):
        return msg
    role = msg.get("role")
    if role not in _ROLE_IN:
        raise RpcError(INVALID_PARAMS, f"invalid params: message.role must be ROLE_USER, not {str(role)[:40]!r}")
    out = {k: v for k, v in msg.items() if k not in ("role", "parts")}
    out["role"] = _ROLE_IN[role]
    parts = msg.get("parts")
    out["parts"] = [_part_in(p) for p in parts] if isinstance(parts, list) else parts
    return out


def send_params_in(params: Any) -> Any:
    """SendMessageRequest's params as 0.3's `message/send` params: `returnImmediately: true` is 0.3's
    `blocking: false` (1.0 waits by default, as 0.3 did)."""
    if not isinstance(params, dict):
        return params
    out: dict[str, Any] = {"message": _message_in(params.get("message"))}
    if isinstance(params.get("metadata"), dict):
        out["metadata"] = params["metadata"]
    config = params.get("configuration")
    if isinstance(config, dict):
        out["configuration"] = {"blocking": not bool(config.get("returnImmediately")),
                                **{k: config[k] for k in ("historyLength", "acceptedOutputModes") if k in config}}
    return out


# --- what a 1.0 caller gets --------------------------------------------------------------------------------

def _timestamp(value: Any) -> Any:
    """ISO 8601 UTC with milliseconds (1.0 spec: YYYY-MM-DDTHH:mm:ss.sssZ)."""
    try:
        t = datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(timezone.utc)
    except ValueError:
        return value
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _part_v1(part: dict[str, Any]) -> dict[str, Any]:
    kind = part.get("kind")
    out: dict[str, Any] = {}
    if kind == "text":
        out = {"text": part.get("text") or "", "mediaType": "text/plain"}
    elif kind == "data":
        out = {"data": part.get("data"), "mediaType": "application/json"}
    elif kind == "file":
        f = part.get("file") or {}
        out = {"url": f["uri"]} if "uri" in f else {"raw": f.get("bytes", "")}
        out.update({k2: f[k] for k, k2 in (("mimeType", "mediaType"), ("name", "filename")) if k in f})
    if part.get("metadata"):
        out["metadata"] = part["metadata"]
    return out


def message_v1(msg: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in msg.items() if k not in ("kind", "role", "parts")}
    out["role"] = ROLE_V1.get(str(msg.get("role")), "ROLE_UNSPECIFIED")
    out["parts"] = [_part_v1(p) for p in msg.get("parts") or ()]
    return out


def _status_v1(status: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"state": STATE_V1.get(str(status.get("state")), UNSPECIFIED)}
    if "timestamp" in status:
        out["timestamp"] = _timestamp(status["timestamp"])
    if isinstance(status.get("message"), dict):
        out["message"] = message_v1(status["message"])
    return out


def _artifact_v1(artifact: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in artifact.items() if k != "parts"}
    out["parts"] = [_part_v1(p) for p in artifact.get("parts") or ()]
    return out


def task_v1(task: dict[str, Any]) -> dict[str, Any]:
    """A Task; an empty history is left out (1.0 spec 3.2.4: historyLength 0 returns none)."""
    out: dict[str, Any] = {"id": task["id"], "contextId": task["contextId"], "status": _status_v1(task["status"])}
    if "artifacts" in task:
        out["artifacts"] = [_artifact_v1(a) for a in task["artifacts"]]
    if task.get("history"):
        out["history"] = [message_v1(m) for m in task["history"]]
    if task.get("metadata"):
        out["metadata"] = task["metadata"]
    return out


def event_v1(event: dict[str, Any]) -> dict[str, Any]:
    """A stream event as 1.0's StreamResponse: a member named for its kind, no `kind` and no `final`."""
    kind = event.get("kind")
    if kind == "task":
        return {"task": task_v1(event)}
    if kind == "message":
        return {"message": message_v1(event)}
    body = {k: v for k, v in event.items() if k not in ("kind", "final")}
    if kind == "status-update":
        body["status"] = _status_v1(event["status"])
        return {"statusUpdate": body}
    body["artifact"] = _artifact_v1(event["artifact"])
    return {"artifactUpdate": body}


def error_details(err: RpcError) -> list[dict[str, Any]]:
    """`error.data` in 1.0: an ErrorInfo (A2A's reason, or agentfleet's code for a -32000), its metadata the
    scalar details as strings, then a BadRequest naming each invalid field when there are some."""
    data = err.data if isinstance(err.data, dict) else {}
    if err.code == SERVER_ERROR:
        reason, domain = str(data.get("code") or "server_error").upper(), AGENTFLEET_DOMAIN
    else:
        reason, domain = _REASONS.get(err.code, "UNKNOWN_ERROR"), A2A_DOMAIN
    metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in data.items() if k != "errors"}
    out: list[dict[str, Any]] = [{"@type": ERROR_INFO, "reason": reason, "domain": domain, "metadata": metadata}]
    violations = [{"field": str(e.get("loc", "")), "description": str(e.get("msg", ""))}
                  for e in data.get("errors") or () if isinstance(e, dict)]
    if violations:
        out.append({"@type": BAD_REQUEST, "fieldViolations": violations})
    return out


V10_DIALECT = Dialect(V10, send_params=send_params_in, sent=lambda task: {"task": task_v1(task)}, task=task_v1,
                      event=event_v1, error_data=error_details, continue_code=UNSUPPORTED_OPERATION)


# --- ListTasks ---------------------------------------------------------------------------------------------

class ListParams(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)  # 1.0: unknown fields are ignored

    context_id: str | None = Field(default=None, alias="contextId", max_length=256)
    status: str | None = None  # a 1.0 TaskState; unset or UNSPECIFIED: any
    page_size: int | None = Field(default=None, alias="pageSize", ge=0, le=MAX_PAGE_SIZE)
    page_token: str | None = Field(default=None, alias="pageToken", max_length=1024)
    history_length: int | None = Field(default=None, alias="historyLength", ge=0)
    status_timestamp_after: datetime | None = Field(default=None, alias="statusTimestampAfter")
    include_artifacts: bool = Field(default=False, alias="includeArtifacts")

    @field_validator("status")
    @classmethod
    def _known_state(cls, v: str | None) -> str | None:
        if v is not None and v != UNSPECIFIED and v not in _STATE_IN:
            raise ValueError(f"unknown task state; one of {', '.join(STATE_V1.values())}")
        return v


def list_params(params: dict[str, Any]) -> ListParams:
    try:
        got = ListParams.model_validate(params)
    except ValidationError as e:
        errors = [{"loc": ".".join(str(x) for x in err["loc"]), "msg": err["msg"]} for err in e.errors()[:10]]
        raise RpcError(INVALID_PARAMS, "invalid params: " + "; ".join(f"{x['loc']}: {x['msg']}" for x in errors),
                       {"errors": errors}) from None
    if got.page_token:
        _cursor(got.page_token)  # a token that is not ours is an error now, not an empty page
    return got


def _token(run: RunRecord) -> str:
    raw = json.dumps([status_time_s(run), run.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _cursor(token: str) -> tuple[float, str]:
    try:
        t, run_id = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return float(t), str(run_id)
    except (ValueError, TypeError, binascii.Error):
        raise RpcError(INVALID_PARAMS, "invalid params: pageToken is not a token this agent gave "
                       "(use nextPageToken of the previous page)", {"errors": [
                           {"loc": "pageToken", "msg": "not a cursor of this agent"}]}) from None


def list_page(runs: Iterable[RunRecord], p: ListParams) -> dict[str, Any]:
    """One page of ListTasks from the caller's A2A runs: filtered, newest status first (spec 3.1.4: by status
    timestamp, descending; ties by id), after the cursor. `nextPageToken` is always present, empty on the last
    page; artifacts only with includeArtifacts (the field left out otherwise)."""
    want = _STATE_IN.get(p.status or "")
    after = p.status_timestamp_after.timestamp() if p.status_timestamp_after is not None else None
    picked = [r for r in runs if (p.context_id is None or str((r.extra or {}).get("context_id") or r.id) ==
                                  p.context_id)
              and (want is None or task_state(r) == want) and (after is None or status_time_s(r) > after)]
    picked.sort(key=lambda r: (status_time_s(r), r.id), reverse=True)
    total = len(picked)
    if p.page_token:
        cursor = _cursor(p.page_token)
        picked = [r for r in picked if (status_time_s(r), r.id) < cursor]
    size = p.page_size or DEFAULT_PAGE_SIZE
    page, more = picked[:size], len(picked) > size
    tasks = []
    for r in page:
        task = task_v1(task_of(r, history_length=p.history_length))
        if not p.include_artifacts:
            task.pop("artifacts", None)
        tasks.append(task)
    return {"tasks": tasks, "nextPageToken": _token(page[-1]) if more else "", "pageSize": size,
            "totalSize": total}
