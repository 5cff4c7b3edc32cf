"""The model edge: OpenAI chat completions over aiohttp (the hot-path client `agentfleet bench httpclient`
picked). One pooled session per runtime and one timeout policy: a connect timeout here and the caller's
remaining deadline per call. Every call carries the task's session id as `x-session-id` and `user`, so the fleet
router keeps a task on the replica that holds its prefix cache. A failure is an UpstreamError (a timeout an
UpstreamTimeout) whose message names the role and status, never the prompt."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable, Mapping, Sequence

import aiohttp

from ..api.agentapp import ModelRole
from ..api.runtime_config import ModelEndpoint
from ..errors import UpstreamError, UpstreamTimeout
from .agent import Completion

__all__ = ["ModelClient", "SESSION_HEADER", "CONNECT_TIMEOUT_S"]

SESSION_HEADER = "x-session-id"
CONNECT_TIMEOUT_S = 3.0
MAX_ERROR_CHARS = 300


def _short(text: str) -> str:
    return " ".join(text.split())[:MAX_ERROR_CHARS]


class ModelClient:
    """Callable as the agent's ModelCall. `start()` inside the event loop, `close()` on shutdown."""

    def __init__(self, endpoints: Mapping[str, ModelEndpoint], *, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 pool_size: int = 256):
        self.endpoints = dict(endpoints)
        self.connect_timeout_s = connect_timeout_s
        self.pool_size = pool_size
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.pool_size, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s))

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None

    def endpoint(self, role: ModelRole) -> ModelEndpoint:
        return self.endpoints.get(role) or self.endpoints["large"]

    async def __call__(self, role: ModelRole, messages: Sequence[Mapping[str, Any]], *,
                       response_format: Mapping[str, Any] | None, max_tokens: int, session_id: str,
                       timeout_s: float, on_delta: Callable[[str], Awaitable[None]] | None = None,
                       stop: Sequence[str] = ()) -> Completion:
        assert self.session is not None, "ModelClient.start() was not awaited"
        ep = self.endpoint(role)
        body: dict[str, Any] = {"model": ep.model, "messages": list(messages), "max_tokens": max_tokens,
                                "user": session_id, "temperature": 0}
        if response_format is not None:
            body["response_format"] = dict(response_format)
        if stop:
            body["stop"] = list(stop)
        stream = on_delta is not None
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        url = ep.url.rstrip("/") + "/chat/completions"
        try:
            async with self.session.post(url, json=body, headers={SESSION_HEADER: session_id},
                                         timeout=aiohttp.ClientTimeout(total=timeout_s,
                                                                       sock_connect=self.connect_timeout_s)) as r:
                if r.status != 200:
                    text = await r.text()
                    raise UpstreamError(f"{role} model {ep.model} answered HTTP {r.status}: {_short(text)}")
                if stream:
                    assert on_delta is not None
                    return await self._read_stream(r, ep, role, on_delta)
                data = await r.json(content_type=None)
        except aiohttp.ConnectionTimeoutError:  # before the timeout below: it is a TimeoutError too
            raise UpstreamError(f"{role} model {ep.model} unreachable: connect timeout") from None
        except (asyncio.TimeoutError, TimeoutError):
            raise UpstreamTimeout(f"{role} model {ep.model} did not answer within {timeout_s:.1f}s") from None
        except aiohttp.ClientError as e:
            raise UpstreamError(f"{role} model {ep.model} unreachable: {type(e).__name__}") from None
        return self._parse(data, ep, role)

    @staticmethod
    def _parse(data: Any, ep: ModelEndpoint, role: str) -> Completion:
        try:
            if "error" in data and not data.get("choices"):
                raise UpstreamError(f"{role} model {ep.model} returned an error: "
                                    f"{_short(json.dumps(data['error']))}")
            msg = data["choices"][0]["message"]
            usage = data.get("usage") or {}
            text = msg.get("content") or ""
            return Completion(text=text, prompt_tokens=int(usage.get("prompt_tokens", 0)),
                              completion_tokens=int(usage.get("completion_tokens", 0)),
                              model=str(data.get("model") or ep.model),
                              tool_calls=tuple(msg.get("tool_calls") or ()))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            raise UpstreamError(f"{role} model {ep.model} returned a malformed completion") from None

    @staticmethod
    async def _read_stream(r: aiohttp.ClientResponse, ep: ModelEndpoint, role: str,
                           on_delta: Callable[[str], Awaitable[None]]) -> Completion:
        parts: list[str] = []
        usage: dict[str, Any] = {}
        model = ep.model
        deltas = 0
        async for raw in r.content:
            line = raw.decode("utf-8", errors="replace").strip()
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            try:
                chunk = json.loads(payload)
            except json.JSONDecodeError:
                raise UpstreamError(f"{role} model {ep.model} streamed a malformed chunk") from None
            if "error" in chunk and not chunk.get("choices"):
                raise UpstreamError(f"{role} model {ep.model} streamed an error: {_short(json.dumps(chunk['error']))}")
            model = chunk.get("model") or model
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    parts.append(text)
                    deltas += 1
                    await on_delta(text)
        return Completion(text="".join(parts), prompt_tokens=int(usage.get("prompt_tokens", 0)),
                          completion_tokens=int(usage.get("completion_tokens", deltas)), model=str(model))

    async def probe(self, role: ModelRole, *, timeout_s: float = 2.0) -> str | None:
        """None when the role's server lists its models; else why not."""
        assert self.session is not None
        ep = self.endpoint(role)
        try:
            async with self.session.get(ep.url.rstrip("/") + "/models",
                                        timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
                return None if r.status == 200 else f"{role} model answered HTTP {r.status}"
        except (asyncio.TimeoutError, TimeoutError, aiohttp.ClientError) as e:
            return f"{role} model unreachable: {type(e).__name__}"
