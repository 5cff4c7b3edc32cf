"""What the HTTP parser answers before any application code runs. aiohttp refuses a request whose framing it cannot
parse (a bad request line, an unregistered method, broken chunking, an Expect other than 100-continue) with a short
plain-text body of its own (and an Expect other than 100-continue with a plain-text 417); both servers (the runtime and the router) promise an OpenAI error body for every 4xx,
so `install()` makes aiohttp's request handler answer those in that shape too. A 5xx from the handler's own failure
paths keeps aiohttp's answer (no request causes one: the fuzzer checks)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import hdrs, web, web_protocol, web_urldispatcher
from aiohttp.http import HttpVersion11

__all__ = ["install"]

_original = web_protocol.RequestHandler.handle_error


def _error(message: str, code: str) -> str:
    return json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}})


async def _expect(request: web.Request) -> None:
    """aiohttp's Expect handling (100-continue, else 417), with the OpenAI body."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version != HttpVersion11:
        return
    if expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not started
        return
    raise web.HTTPExpectationFailed(text=_error(f"unknown Expect: {expect[:100]}", "expectation_failed"),
                                    content_type="application/json")


def _handle_error(self: web_protocol.RequestHandler, request: Any, status: int = 500,
                  exc: BaseException | None = None, message: str | None = None) -> web.StreamResponse:
    if not 400 <= status < 500:
        return _original(self, request, status, exc, message)
    if request.writer.output_size > 0:  # the answer had started: the connection is all that can close
        raise ConnectionError("response already started; cannot answer the protocol error")
    reason = " ".join(str(message or exc or "the request could not be parsed").split())[:300]
    resp = web.Response(status=status, text=_error(f"malformed HTTP request: {reason}", "bad_http_request"),
                        content_type="application/json")
    resp.force_close()
    return resp


def install() -> None:
    """Idempotent; called by each server's app factory before it adds its routes (a route takes the Expect
    handler current when it is added)."""
    web_protocol.RequestHandler.handle_error = _handle_error  # type: ignore[method-assign]
    web_urldispatcher._default_expect_handler = _expect  # type: ignore[attr-defined]
