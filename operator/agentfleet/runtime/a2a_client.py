"""Remote A2A sub-agents, the calling side (subAgents[].a2a): one A2A 0.3 JSON-RPC `message/send` (blocking) per
delegated task, with this app's API key for the remote app as the bearer (the Secret of `keySecretRef`, mounted by
render as A2A_KEYS_DIR/<sub-agent>/key and read per call, so a rotated key applies) and the task's end user in the
on-behalf-of headers (delegation.py: the remote app accepts them only from a key it marks
`delegate: true`, narrowed to that key's tenant and groups). Bounded by the caller's timeout; the answer is the
Task's text artifact, with its citations, task id and cost when its data part carries them. Every failure (no key,
401/403/429, a JSON-RPC error, a failed or unfinished Task, a timeout, a malformed reply) is a RemoteAgentFailed
whose text the parent model reads, never a traceback; no message or log line holds a key."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

import aiohttp

from ..api.agentapp import A2AAgent
from ..names import A2A_KEY_FILE, A2A_KEYS_DIR, A2A_KEYS_DIR_ENV
from ..retrieval.filters import Principal
from ..telemetry import DISABLED, Telemetry
from .agent import RemoteAnswer, ToolFailed
from .delegation import on_behalf_of_headers

__all__ = ["A2AClient", "RemoteAgentFailed", "send_request", "answer_of", "MAX_RESPONSE_BYTES"]

log = logging.getLogger("agentfleet.runtime.a2a_client")
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
CONNECT_TIMEOUT_S = 5.0
_TERMINAL_FAILED = {"failed", "canceled", "rejected"}


class RemoteAgentFailed(ToolFailed):
    """Its message becomes the sub-agent's failure; `task_id` names the remote task when there was one."""

    def __init__(self, message: str, *, task_id: str | None = None):
        super().__init__(message)
        self.task_id = task_id


def send_request(text: str, *, message_id: str, context_id: str) -> dict[str, Any]:
    """The JSON-RPC body of a blocking `message/send` of `text`."""
    return {"jsonrpc": "2.0", "id": message_id, "method": "message/send", "params": {
        "message": {"kind": "message", "role": "user", "messageId": message_id, "contextId": context_id,
                    "parts": [{"kind": "text", "text": text}]},
        "configuration": {"blocking": True, "acceptedOutputModes": ["text/plain", "application/json"]}}}


def _texts(parts: Any) -> list[str]:
    return [p["text"] for p in parts or () if isinstance(p, dict) and p.get("kind", "text") == "text"
            and isinstance(p.get("text"), str)]


def _data(parts: Any) -> dict[str, Any]:
    for p in parts or ():
        if isinstance(p, dict) and p.get("kind") == "data" and isinstance(p.get("data"), dict):
            return p["data"]
    return {}


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def answer_of(name: str, body: Any) -> RemoteAnswer:
    """The sub-agent's answer from a JSON-RPC response body (a Task or a Message), or RemoteAgentFailed."""
    if not isinstance(body, dict) or body.get("jsonrpc") != "2.0":
        raise RemoteAgentFailed(f"{name}: the remote agent did not answer JSON-RPC")
    if isinstance(body.get("error"), dict):
        err = body["error"]
        data = err.get("data") if isinstance(err.get("data"), dict) else {}
        code = f" ({data['code']})" if isinstance(data.get("code"), str) else ""
        raise RemoteAgentFailed(f"{name}: the remote agent refused the task: {str(err.get('message'))[:300]}"
                                f"{code} [JSON-RPC {err.get('code')}]")
    result = body.get("result")
    if not isinstance(result, dict):
        raise RemoteAgentFailed(f"{name}: the remote agent's reply has no result")
    if result.get("kind") == "message":
        text = "\n".join(_texts(result.get("parts")))
        if not text:
            raise RemoteAgentFailed(f"{name}: the remote agent answered without text")
        return RemoteAnswer(text, task_id=result.get("taskId"), state="completed")
    task_id = result.get("id") if isinstance(result.get("id"), str) else None
    status = result.get("status") if isinstance(result.get("status"), dict) else {}
    state = str(status.get("state") or "unknown")
    if state != "completed":
        said = " ".join(_texts((status.get("message") or {}).get("parts") if isinstance(status.get("message"),
                                                                                        dict) else ()))
        what = f"the remote task {state}" if state in _TERMINAL_FAILED else \
            f"the remote task is {state}, not completed (this runtime waits only for a finished task)"
        raise RemoteAgentFailed(f"{name}: {what}" + (f": {said[:300]}" if said else ""), task_id=task_id)
    texts: list[str] = []
    data: dict[str, Any] = {}
    for artifact in result.get("artifacts") or ():
        if isinstance(artifact, dict):
            texts += _texts(artifact.get("parts"))
            data = data or _data(artifact.get("parts"))
    if not texts:
        raise RemoteAgentFailed(f"{name}: the remote task completed without a text answer", task_id=task_id)
    meta = result.get("metadata") if isinstance(result.get("metadata"), dict) else {}
    summary = meta.get("agentfleet") if isinstance(meta.get("agentfleet"), dict) else {}
    citations = data.get("citations") if isinstance(data.get("citations"), list) else summary.get("citations")
    cost = _number(data.get("cost_usd")) if "cost_usd" in data else _number(summary.get("cost_usd"))
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else summary.get("usage")
    return RemoteAnswer("\n".join(texts), task_id=task_id, state=state,
                        citations=tuple(c for c in citations or () if isinstance(c, dict)), cost_usd=cost,
                        usage=usage if isinstance(usage, dict) else None)


def _refusal(name: str, status: int, body: bytes) -> RemoteAgentFailed:
    try:
        message = str(json.loads(body)["error"]["message"])[:300]
    except (ValueError, KeyError, TypeError):
        message = ""
    why = {401: "refused this app's API key (401): check subAgents[].a2a.keySecretRef",
           403: "refused to act for this user (403): the key needs delegate: true in the remote key store, in this "
                "user's tenant",
           429: "is over a limit (429); retry later"}.get(status, f"answered HTTP {status}")
    return RemoteAgentFailed(f"{name}: the remote agent {why}" + (f": {message}" if message else ""))


class A2AClient:
    """The runtime's remote sub-agents. A session per call: a remote agent runs for seconds, so the connection
    set-up is noise, and nothing is left open when the remote app restarts."""

    def __init__(self, *, keys_dir: Path | None = None, telemetry: Telemetry = DISABLED,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S):
        self.keys_dir, self.telemetry, self.connect_timeout_s = keys_dir, telemetry, connect_timeout_s

    def _key(self, name: str) -> str:
        root = self.keys_dir or Path(os.environ.get(A2A_KEYS_DIR_ENV) or A2A_KEYS_DIR)
        path = root / name / A2A_KEY_FILE
        try:
            key = path.read_text("utf-8").strip()
        except (OSError, UnicodeDecodeError):
            raise RemoteAgentFailed(f"{name}: no API key for the remote agent (the Secret of "
                                    f"subAgents[].a2a.keySecretRef is not mounted at {path})") from None
        if not key or any(c.isspace() or ord(c) < 0x20 for c in key):
            raise RemoteAgentFailed(f"{name}: the API key file {path} is empty or not one token")
        return key

    async def send(self, name: str, agent: A2AAgent, task: str, principal: Principal, *, message_id: str,
                   context_id: str, timeout_s: float) -> RemoteAnswer:
        """Ask the remote agent `task` as `principal` (on-behalf-of); RemoteAgentFailed for anything but an
        answer within `timeout_s`."""
        headers = {"Authorization": f"Bearer {self._key(name)}", "Content-Type": "application/json",
                   "Accept": "application/json", **on_behalf_of_headers(principal)}
        self.telemetry.inject(headers)
        if timeout_s <= 0:
            raise RemoteAgentFailed(f"{name}: no time left to ask the remote agent")
        timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(self.connect_timeout_s, timeout_s))
        try:
            async with aiohttp.ClientSession(timeout=timeout) as http, \
                    http.post(agent.url, json=send_request(task, message_id=message_id, context_id=context_id),
                              headers=headers, allow_redirects=False) as r:
                raw = bytearray()
                async for chunk in r.content.iter_chunked(65536):
                    raw += chunk
                    if len(raw) > MAX_RESPONSE_BYTES:
                        raise RemoteAgentFailed(f"{name}: the remote agent's reply is over "
                                                f"{MAX_RESPONSE_BYTES // (1024 * 1024)} MiB")
                status = r.status
        except (asyncio.TimeoutError, TimeoutError):
            raise RemoteAgentFailed(f"{name}: the remote agent did not answer within {timeout_s:g}s") from None
        except aiohttp.ClientError as e:
            log.warning("a2a sub-agent %s (%s): %s", name, agent.url, type(e).__name__)
            raise RemoteAgentFailed(f"{name}: the remote agent is unreachable ({type(e).__name__})") from None
        if status != 200:
            raise _refusal(name, status, bytes(raw))
        try:
            body = json.loads(bytes(raw))
        except ValueError:
            raise RemoteAgentFailed(f"{name}: the remote agent's reply is not JSON") from None
        return answer_of(name, body)
