"""The model edge: OpenAI chat completions over aiohttp (the hot-path client `agentfleet bench httpclient`
picked). One pooled session per runtime and one timeout policy: a connect timeout here and the caller's
remaining deadline per call. Every call carries the task's session id as `x-session-id` and `user`, so the fleet
router keeps a task on the replica that holds its prefix cache. A failure is an UpstreamError (a timeout an
UpstreamTimeout) whose message names the role and status, never the prompt.

Every call is streamed from the engine, also the JSON-schema action steps whose text is not forwarded, so the
caller's Meter knows at any moment what the engine produced: `stream_options.continuous_usage_stats` makes vLLM
report usage on every chunk; llm-d-inference-sim v0.10.2 reports it only in the last chunk (measured), so there
each content delta counts one completion token until the engine's own count arrives. A server that refuses
continuous_usage_stats (HTTP 400 naming it) is asked for the final usage only from then on. Streaming costs this
client about 6 µs of CPU per token (measured 2026-12-06 on the 2-vCPU machine against llm-d-inference-sim at
near-zero latency: 0.74–0.99 ms per 116-token call against 0.14–0.27 ms for the same answer as one JSON body),
which is invisible next to an engine's decode time; `agentfleet bench runtime` showed no difference beyond noise.

A call that fails after the engine started answering (HTTP 200 then a reset connection, a truncated stream, an
error chunk) is retried once through the same endpoint: the fleet router takes the failed replica out
(router/proxy.py) and re-hashes the session to a live one. The partial output is discarded, the Meter keeps both
attempts' usage. Of a streamed answer (`on_delta`), the retry forwards only what goes beyond the text already
delivered; temperature is 0, so the retry normally repeats it, and when it does not the stream stops at what was
delivered (nothing is spliced or sent twice) and the Completion's `note` says so — its `text` is the retry's.
A failure before the first byte (connect error, non-200 status) is not retried here: the router already retried
it once on another replica, and a runtime retry on top would double that.

To a fleet's own router (never a hosted API) every call also names its run (`x-agentfleet-run`: the root task
id), which tells the router this session will say when it ends: it keeps the session's claim on its replica
through tools of any length, and each call sends back the replica that served the session's previous one
(`x-agentfleet-home`, from the router's `x-agentfleet-replica`), so whichever router replica the Service picks keeps
the session with its history; `end_run` (when the run has ended, not when it moved to another replica) sends the
run's sessions, its sub-agents' included, to `POST /v1/sessions/end` so their claims go at once."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, Sequence
from urllib.parse import urlsplit

import aiohttp

from ..api.agentapp import ModelRole
from ..api.runtime_config import ModelEndpoint
from ..errors import UpstreamError, UpstreamTimeout
from ..telemetry import DISABLED, Telemetry
from .agent import Completion, Meter

__all__ = ["ModelClient", "SESSION_HEADER", "RUN_HEADER", "CONNECT_TIMEOUT_S", "MAX_ATTEMPTS"]

SESSION_HEADER = "x-session-id"
RUN_HEADER = "x-agentfleet-run"  # router/keys.py
HOME_HEADER = "x-agentfleet-home"  # router/keys.py: the replica that served the session's last call
REPLICA_HEADER = "x-agentfleet-replica"  # what the router answers with
PRIORITY_HEADER = "x-agentfleet-priority"  # router/keys.py: "low" for a run its Budget degraded by priority
MAX_TRACKED_RUNS = 10_000  # runs whose sessions are remembered for end_run (oldest forgotten first)
END_RUN_TIMEOUT_S = 2.0
log = logging.getLogger("agentfleet.runtime.llm")
CONNECT_TIMEOUT_S = 3.0
MAX_ERROR_CHARS = 300
MAX_ATTEMPTS = 2  # the first try and one retry after a failure mid-stream
STREAM_OPTIONS = {"include_usage": True, "continuous_usage_stats": True}


def _short(text: str) -> str:
    return " ".join(text.split())[:MAX_ERROR_CHARS]


class _MidStream(Exception):
    """The engine started answering (HTTP 200), then the answer broke off: retryable once."""


class _Downstream(Exception):
    """`on_delta` failed (the caller's client went away while a delta was written): the caller's error, raised
    as it is, never taken for the engine's (a reset connection looks the same on both sides)."""

    def __init__(self, error: Exception):
        super().__init__(str(error))
        self.error = error


@dataclass
class _Attempt:
    prompt: int = 0  # as reported by the engine (0: not yet)
    completion: int = 0  # as last reported by the engine
    deltas_since_report: int = 0  # content deltas after the last report: one token each until the next report
    has_output: bool = False  # a delta arrived or the engine reported completion tokens: the prompt was processed
    is_complete: bool = False


@dataclass
class _Usage:
    """Per-attempt counts behind a Meter (which shows their sum)."""

    meter: Meter
    attempts: list[_Attempt] = field(default_factory=list)

    def start(self) -> _Attempt:
        a = _Attempt()
        self.attempts.append(a)
        self.meter.attempts += 1
        return a

    def publish(self) -> None:
        # Every attempt sends the same prompt, so a prompt count reported by one attempt stands for the others.
        known = next((a.prompt for a in self.attempts if a.prompt > 0), 0)
        prompt = completion = unreported = 0
        for a in self.attempts:
            completion += a.completion + a.deltas_since_report
            if a.prompt > 0:
                prompt += a.prompt
            elif a.has_output or a.is_complete:
                if known:
                    prompt += known
                else:
                    unreported += 1
        m = self.meter
        m.prompt_tokens, m.completion_tokens, m.unreported_prompts = prompt, completion, unreported


class _Forward:
    """What of each attempt's streamed text reaches `on_delta`: everything on the first attempt; on a retry only
    the text beyond what was delivered, and nothing more once the retry's text departs from it."""

    def __init__(self, on_delta: Callable[[str], Awaitable[None]] | None):
        self.on_delta = on_delta
        self.delivered = ""
        self.retry_text = ""
        self.is_retry = False
        self.diverged_at: int | None = None

    def retry(self) -> None:
        self.is_retry, self.retry_text = True, ""

    async def __call__(self, text: str) -> None:
        if self.on_delta is None or self.diverged_at is not None:
            return
        if not self.is_retry:
            self.delivered += text
            await self.on_delta(text)
            return
        before = len(self.retry_text)
        self.retry_text += text
        n = len(self.delivered)
        if before >= n:  # past the delivered text: forward as it comes
            await self.on_delta(text)
            return
        if not (self.retry_text.startswith(self.delivered) if len(self.retry_text) >= n
                else self.delivered.startswith(self.retry_text)):
            self.diverged_at = n
            return
        if len(self.retry_text) > n:
            await self.on_delta(self.retry_text[n:])

    def finish(self, text: str) -> str:
        """The note for the Completion: empty unless a retry's answer and the delivered text disagree."""
        if not self.is_retry or not self.delivered:
            return ""
        if self.diverged_at is None and len(text) < len(self.delivered):
            self.diverged_at = len(self.delivered)
        if self.diverged_at is None:
            return ""
        return (f"the retry's answer differs from the {self.diverged_at} characters streamed before the failure: "
                "the stream stops there; the answer text is the retry's")


class ModelClient:
    """Callable as the agent's ModelCall. `start()` inside the event loop, `close()` on shutdown."""

    def __init__(self, endpoints: Mapping[str, ModelEndpoint], *, connect_timeout_s: float = CONNECT_TIMEOUT_S,
                 pool_size: int = 256, telemetry: Telemetry = DISABLED):
        self.endpoints = dict(endpoints)
        # The caller's chat span goes out as `traceparent` on every request (the router passes it on to the engine).
        self.telemetry = telemetry
        self.connect_timeout_s = connect_timeout_s
        self.pool_size = pool_size
        self.session: aiohttp.ClientSession | None = None
        self.plain_usage: set[str] = set()  # endpoint URLs that refused continuous_usage_stats (HTTP 400)
        # run (root task id) -> ({session id: the replica that served its last call}, the router URLs called)
        self._runs: OrderedDict[str, tuple[dict[str, str | None], set[str]]] = OrderedDict()
        self._background: set[asyncio.Task] = set()
        self._low: set[str] = set()  # runs whose calls go in the routers' low priority band

    async def start(self) -> None:
        if self.session is None:
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.pool_size, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s))

    def _track(self, ep: ModelEndpoint, session_id: str, headers: dict[str, str]) -> None:
        """Name the run, and send back where its session's last call was served (any router replica then keeps
        the session with its history)."""
        run = session_id.split("/", 1)[0]  # a sub-agent's session is `<task id>/<sub-agent>-<step>-<i>`
        entry = self._runs.pop(run, None) or ({}, set())
        home = entry[0].setdefault(session_id, None)
        entry[1].add(ep.url.rstrip("/"))
        self._runs[run] = entry
        if len(self._runs) > MAX_TRACKED_RUNS:
            self._runs.popitem(last=False)
        headers[RUN_HEADER] = run
        if home:
            headers[HOME_HEADER] = home
        if run in self._low:
            headers[PRIORITY_HEADER] = "low"

    def set_low_priority(self, run: str, low: bool) -> None:
        """While `low`, the run's calls (its sub-agents' too) ask our routers for the low priority band."""
        if low:
            self._low.add(run)
        else:
            self._low.discard(run)

    def _served_by(self, session_id: str, replica: str | None) -> None:
        entry = self._runs.get(session_id.split("/", 1)[0])
        if entry is not None and replica:
            entry[0][session_id] = replica

    def end_run(self, task_id: str) -> None:
        """The run ended here (answered, failed or cancelled; not handed to another replica): tell the routers it
        called, in the background; a router that cannot be reached lets the claims idle out instead."""
        entry = self._runs.pop(task_id, None)
        if entry is None or self.session is None:
            return
        sessions, urls = sorted(entry[0]), entry[1]
        for url in urls:
            task = asyncio.get_running_loop().create_task(self._end(url, sessions))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _end(self, url: str, sessions: list[str]) -> None:
        assert self.session is not None
        try:
            async with self.session.post(url + "/sessions/end", json={"sessions": sessions},
                                         timeout=aiohttp.ClientTimeout(total=END_RUN_TIMEOUT_S)) as r:
                await r.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            log.debug("could not tell the router a run ended", extra={"error": repr(err)})

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self.session is not None:
            await self.session.close()
            self.session = None

    def endpoint(self, role: ModelRole) -> ModelEndpoint:
        return self.endpoints.get(role) or self.endpoints["large"]

    async def __call__(self, role: ModelRole, messages: Sequence[Mapping[str, Any]], *,
                       response_format: Mapping[str, Any] | None, max_tokens: int, session_id: str,
                       timeout_s: float, on_delta: Callable[[str], Awaitable[None]] | None = None,
                       stop: Sequence[str] = (), meter: Meter | None = None) -> Completion:
        assert self.session is not None, "ModelClient.start() was not awaited"
        ep = self.endpoint(role)
        body: dict[str, Any] = {"model": ep.model, "messages": list(messages), "max_tokens": max_tokens,
                                "user": session_id, "temperature": 0, "stream": True}
        if response_format is not None:
            body["response_format"] = dict(response_format)
        if stop:
            body["stop"] = list(stop)
        if self.telemetry.is_enabled:
            where = urlsplit(ep.url)
            self.telemetry.current_span().set_attributes({
                "server.address": where.hostname or "", "server.port": where.port or (443 if where.scheme == "https"
                                                                                      else 80)})
        usage = _Usage(meter if meter is not None else Meter(model=ep.model))
        usage.meter.model = usage.meter.model or ep.model
        forward = _Forward(on_delta)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        failures: list[str] = []
        while True:
            attempt = usage.start()
            try:
                c = await self._attempt(role, ep, body, session_id, deadline - loop.time(), timeout_s, usage,
                                        attempt, forward)
            except _Downstream as d:
                raise d.error from None
            except _MidStream as e:
                failures.append(str(e))
                usage.publish()
                if len(failures) >= MAX_ATTEMPTS:
                    raise UpstreamError(f"{role} model {ep.model} failed mid-stream {len(failures)} times: "
                                        f"{'; '.join(failures)}") from None
                forward.retry()  # the partial output is discarded; its usage stays on the meter
                continue
            notes = [f"retried after {'; '.join(failures)}"] if failures else []
            if diverged := forward.finish(c.text):
                notes.append(diverged)
            m = usage.meter
            return Completion(text=c.text, prompt_tokens=m.prompt_tokens, completion_tokens=m.completion_tokens,
                              model=m.model or ep.model, tool_calls=c.tool_calls, attempts=m.attempts,
                              note="; ".join(notes), finish_reason=c.finish_reason)

    async def _attempt(self, role: str, ep: ModelEndpoint, body: dict[str, Any], session_id: str, left_s: float,
                       timeout_s: float, usage: _Usage, attempt: _Attempt, forward: _Forward) -> Completion:
        assert self.session is not None
        url = ep.url.rstrip("/") + "/chat/completions"
        if left_s <= 0:
            raise UpstreamTimeout(f"{role} model {ep.model} did not answer within {timeout_s:.1f}s")
        body["stream_options"] = {"include_usage": True} if ep.url in self.plain_usage else STREAM_OPTIONS
        try:
            headers = self.telemetry.inject({SESSION_HEADER: session_id})
            if ep.is_router:
                self._track(ep, session_id, headers)
            async with self.session.post(url, json=body, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=left_s,
                                                                       sock_connect=self.connect_timeout_s)) as r:
                if ep.is_router and r.status == 200:
                    self._served_by(session_id, r.headers.get(REPLICA_HEADER))
                if r.status != 200:
                    text = await r.text()
                    if (r.status == 400 and "continuous_usage_stats" in text and ep.url not in self.plain_usage):
                        # An OpenAI-compatible server without running usage: ask it for the final usage only.
                        self.plain_usage.add(ep.url)
                        usage.meter.attempts -= 1
                        usage.attempts.remove(attempt)
                        return await self._attempt(role, ep, body, session_id, left_s, timeout_s, usage,
                                                   usage.start(), forward)
                    raise UpstreamError(f"{role} model {ep.model} answered HTTP {r.status}: {_short(text)}")
                # The engine is answering: from here a broken answer is a mid-stream failure (_MidStream).
                if "json" in (r.content_type or ""):  # a server that ignored `stream`
                    try:
                        data = await r.json(content_type=None)
                    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionResetError,
                            aiohttp.ClientOSError) as e:
                        raise _MidStream(f"{type(e).__name__} after the first byte") from None
                    c = self._parse(data, ep, role, usage, attempt)
                    if c.text and forward.on_delta is not None:
                        try:
                            await forward(c.text)
                        except Exception as e:  # noqa: BLE001 - wrapped, raised as it is by __call__
                            raise _Downstream(e) from e
                    return c
                return await self._read_stream(r, ep, role, usage, attempt, forward)
        except (_MidStream, _Downstream):
            raise
        except aiohttp.ConnectionTimeoutError:  # before the timeout below: it is a TimeoutError too
            raise UpstreamError(f"{role} model {ep.model} unreachable: connect timeout") from None
        except (asyncio.TimeoutError, TimeoutError):
            raise UpstreamTimeout(f"{role} model {ep.model} did not answer within {timeout_s:.1f}s") from None
        except aiohttp.ClientError as e:
            raise UpstreamError(f"{role} model {ep.model} unreachable: {type(e).__name__}") from None
        finally:
            usage.publish()

    @staticmethod
    def _parse(data: Any, ep: ModelEndpoint, role: str, usage: _Usage, attempt: _Attempt) -> Completion:
        try:
            if "error" in data and not data.get("choices"):
                raise _MidStream(f"error: {_short(json.dumps(data['error']))}")
            choice = data["choices"][0]
            msg = choice["message"]
            reported = data.get("usage") or {}
            text = msg.get("content") or ""
            attempt.prompt = int(reported.get("prompt_tokens") or 0)
            attempt.completion = int(reported.get("completion_tokens") or 0)
            attempt.is_complete = attempt.has_output = True
            usage.meter.model = str(data.get("model") or ep.model)
            return Completion(text=text, prompt_tokens=attempt.prompt, completion_tokens=attempt.completion,
                              model=usage.meter.model, tool_calls=tuple(msg.get("tool_calls") or ()),
                              finish_reason=str(choice.get("finish_reason") or ""))
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            raise UpstreamError(f"{role} model {ep.model} returned a malformed completion") from None

    @staticmethod
    async def _read_stream(r: aiohttp.ClientResponse, ep: ModelEndpoint, role: str, usage: _Usage,
                           attempt: _Attempt, forward: _Forward) -> Completion:
        parts: list[str] = []
        calls: dict[int, dict[str, Any]] = {}  # streamed tool calls by index
        meter = usage.meter
        finished = done = False  # finished: a finish_reason or [DONE] arrived, the answer is whole
        finish_reason = ""
        rest = b""
        try:
            # Whatever arrived, at once, then its lines: one await per read instead of one per line (measured:
            # 25-30 % less CPU per streamed token than iterating the lines).
            async for data in r.content.iter_any():
                lines = (rest + data).split(b"\n")
                rest = lines.pop()
                out: list[str] = []
                for raw in lines:
                    if not raw.startswith(b"data:"):
                        continue
                    payload = raw[5:].strip()
                    if payload == b"[DONE]":
                        finished = done = True
                        break
                    try:
                        chunk = json.loads(payload)
                    except ValueError:
                        raise _MidStream("a malformed chunk") from None
                    if "error" in chunk and not chunk.get("choices"):
                        raise _MidStream(f"an error chunk: {_short(json.dumps(chunk['error']))}")
                    if chunk.get("model"):
                        meter.model = chunk["model"]
                    reported = chunk.get("usage")
                    if reported:  # cumulative for this request (vLLM's continuous usage, or the final chunk)
                        attempt.prompt = int(reported.get("prompt_tokens") or 0) or attempt.prompt
                        attempt.completion = int(reported.get("completion_tokens") or 0)
                        attempt.deltas_since_report = 0
                        attempt.has_output = attempt.has_output or attempt.completion > 0
                    for choice in chunk.get("choices") or ():
                        delta = choice.get("delta") or {}
                        text = delta.get("content")
                        if text:
                            parts.append(text)
                            out.append(text)
                            if not reported:
                                attempt.deltas_since_report += 1
                            attempt.has_output = True
                        for tc in delta.get("tool_calls") or ():
                            call = calls.setdefault(int(tc.get("index", len(calls))), {
                                "id": "", "type": "function", "function": {"name": "", "arguments": ""}})
                            call["id"] = tc.get("id") or call["id"]
                            fn = tc.get("function") or {}
                            call["function"]["name"] += fn.get("name") or ""
                            call["function"]["arguments"] += fn.get("arguments") or ""
                            attempt.has_output = True
                        if choice.get("finish_reason"):
                            finished, finish_reason = True, str(choice["finish_reason"])
                usage.publish()  # before the deltas go out: a cancellation while one is written sees them counted
                if forward.on_delta is not None:
                    for text in out:  # each as the engine sent it
                        try:
                            await forward(text)
                        except Exception as e:  # noqa: BLE001 - wrapped, raised as it is by __call__
                            raise _Downstream(e) from e
                if done:
                    break
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionResetError,
                aiohttp.ClientOSError) as e:
            if not finished:
                raise _MidStream(f"{type(e).__name__} after the first byte") from None
        if not finished:
            raise _MidStream("the stream ended before its last chunk")
        attempt.is_complete = True
        usage.publish()
        return Completion(text="".join(parts), prompt_tokens=attempt.prompt,
                          completion_tokens=attempt.completion + attempt.deltas_since_report, model=meter.model,
                          tool_calls=tuple(calls[i] for i in sorted(calls)), finish_reason=finish_reason)

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
