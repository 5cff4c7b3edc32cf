"""What a request is routed by: its session (task) id when the client sends one, else a prompt prefix that
discriminates between conversations. An agent's prompt is a shared system prompt followed by a task's own
first message and then a history that only grows; hashing the system prompt alone would send every task to one
replica, hashing the whole prompt would send each step of a task somewhere new. So the key is the system prompt
plus the first `prefix_tokens` tokens of the first non-system message: stable for the whole task, different
between tasks. Tokens are approximated by whitespace-separated words (no tokenizer on the hot path)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["RequestKey", "request_key", "priority_band", "SESSION_HEADERS", "RUN_HEADER", "HOME_HEADER",
           "PRIORITY_HEADER"]

# Checked in order, case-insensitively. x-session-id is what llm-d, KubeAI and vllm-router users already send;
# x-session-affinity and NVIDIA Dynamo's x-dynamo-session-id are accepted too, so those clients keep their affinity.
SESSION_HEADERS = ("x-session-id", "x-agentfleet-session", "x-task-id", "x-session-affinity",
                   "x-dynamo-session-id")
# Sent by the AgentApp runtime with the session: "this session is a run that will tell you when it ends" (POST
# /v1/sessions/end), so the router holds its claim through tool calls of any length instead of guessing from pace.
RUN_HEADER = "x-agentfleet-run"
# The replica a run's previous call was served by (the x-agentfleet-replica the router answered with), sent back by
# the runtime: like a load balancer's sticky cookie, it lets any router replica find the session's history, even
# one that never saw the session.
HOME_HEADER = "x-agentfleet-home"
# "low": the request yields a freed engine slot to every normal one waiting for it (router/fairness.py). Sent by the
# runtime for a task its Budget degraded near the limit (degradeBy: low-priority). vLLM's own body field `priority`
# (lower is earlier, default 0) above 0 means the same. Nothing raises a request above normal.
PRIORITY_HEADER = "x-agentfleet-priority"
_SYSTEM_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True)
class RequestKey:
    session: str | None = None
    prefix: str | None = None
    is_cacheable: bool = True  # False for embeddings and models: no KV cache to be near
    is_run: bool = False  # a runtime's run: it releases the session itself when the run ends
    home: str | None = None  # the replica the client says served its previous call (HOME_HEADER)
    model: str | None = None  # the body's model: a LoRA adapter goes only where it is loaded


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _digest(*parts: str) -> str:
    h = hashlib.blake2b(digest_size=12)
    for p in parts:
        h.update(p.encode())
        h.update(b"\x00")
    return h.hexdigest()


def _first_words(text: str, n: int) -> str:
    return " ".join(text.split(maxsplit=n)[:n])


def request_key(path: str, headers: Mapping[str, str], body: Mapping[str, Any] | None, *,
                prefix_tokens: int) -> RequestKey:
    lower = {k.lower(): v for k, v in headers.items()}
    session = next((lower[h] for h in SESSION_HEADERS if lower.get(h)), None)
    if session is None and body is not None and isinstance(body.get("session_id"), str):
        session = body["session_id"]
    key = _key(path, session, body, prefix_tokens)
    if body is not None and isinstance(body.get("model"), str):
        key = replace(key, model=body["model"])
    if session is not None and lower.get(RUN_HEADER):
        return replace(key, is_run=True, home=lower.get(HOME_HEADER) or None)
    return key


def _key(path: str, session: str | None, body: Mapping[str, Any] | None, prefix_tokens: int) -> RequestKey:
    if path.endswith("/embeddings") or path.endswith("/models") or body is None:
        return RequestKey(session=session, is_cacheable=False)
    messages = body.get("messages")
    if isinstance(messages, list):
        system: list[str] = []
        first = ""
        for m in messages:
            if not isinstance(m, dict):
                continue
            role = m.get("role")  # anything a client sent: a list here is unhashable
            if not first and isinstance(role, str) and role in _SYSTEM_ROLES:
                system.append(_text(m.get("content")))
            else:
                first = _text(m.get("content"))
                break
        prefix = _digest("chat", *system, _first_words(first, prefix_tokens))
        return RequestKey(session=session, prefix=prefix)
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        prompt = prompt[0] if prompt else ""
    if isinstance(prompt, list):  # token ids
        return RequestKey(session=session, prefix=_digest("ids", *map(str, prompt[:prefix_tokens])))
    if isinstance(prompt, str):
        # A raw prompt has no message boundaries: hash its first prefix_tokens words (set prefix_tokens past the
        # shared system prompt's length for completions traffic).
        return RequestKey(session=session, prefix=_digest("prompt", _first_words(prompt, prefix_tokens)))
    return RequestKey(session=session)


def priority_band(headers: Mapping[str, str], body: Mapping[str, Any] | None) -> int:
    """0 (normal) or 1 (low): low when PRIORITY_HEADER says `low` or the body's vLLM `priority` is above 0."""
    said = next((v for k, v in headers.items() if k.lower() == PRIORITY_HEADER), "")
    if said.strip().lower() == "low":
        return 1
    p = body.get("priority") if body is not None else None
    return 1 if isinstance(p, int) and not isinstance(p, bool) and p > 0 else 0
