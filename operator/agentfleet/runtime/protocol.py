"""The wire models of the runtime's HTTP API: OpenAI chat completions (request, response, SSE chunks) with an
`agentfleet` extension object, and runs. Unknown request fields are ignored (OpenAI clients send many); a wrong
one is an InvalidRequest naming its path (OpenAI's `param`). Nothing in a request names an identity: the caller is
the API key, and a body's `user` is only echoed into logs, never into a permission."""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..errors import InvalidRequest

__all__ = ["ChatMessage", "ChatRequest", "RunRequest", "ResponseRequest", "ResponseInputMessage", "ErrorBody",
           "ErrorDetail", "parse_body", "history_of", "completion_body", "chunk", "MAX_INPUT_CHARS"]

MAX_INPUT_CHARS = 32_000


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Wire):
    type: Literal["text"]
    text: str


class ChatMessage(_Wire):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class StreamOptions(_Wire):
    include_usage: bool = False


class ChatRequest(_Wire):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1, max_length=200)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, max_length=256)
    n: int = Field(default=1, ge=1, le=1)

    @field_validator("messages")
    @classmethod
    def _has_user_turn(cls, v: list[ChatMessage]) -> list[ChatMessage]:
        if not any(m.role == "user" and m.text().strip() for m in v):
            raise ValueError("at least one non-empty user message is required")
        if sum(len(m.text()) for m in v) > MAX_INPUT_CHARS:
            raise ValueError(f"the messages are longer than {MAX_INPUT_CHARS} characters in total")
        return v


class RunRequest(_Wire):
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS)


class ResponseInputPart(_Wire):
    type: Literal["input_text", "output_text", "text"]
    text: str


class ResponseInputMessage(_Wire):
    """An input item of the Responses API: a message (EasyInputMessage or `type: message`). Other item types
    (function_call_output, images, files) are refused: this agent's tools run on the server."""

    type: Literal["message"] | None = None
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ResponseInputPart] = Field(max_length=100)

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content


class ResponseRequest(_Wire):
    """`POST /v1/responses` (https://platform.openai.com/docs/api-reference/responses/create), the parts an agent
    app can honour: `input` (text or messages), `instructions` (this turn only, as OpenAI does),
    `previous_response_id` (the caller's own stored response), `stream`, `store`, `max_output_tokens`."""

    model: str | None = None
    input: str | list[ResponseInputMessage] = Field(max_length=200)
    instructions: str | None = Field(default=None, max_length=MAX_INPUT_CHARS)
    previous_response_id: str | None = Field(default=None, max_length=128)
    stream: bool = False
    store: bool = True
    max_output_tokens: int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, max_length=256)
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=0,
                                               description="Client-side tools are not supported: the AgentApp's "
                                                           "tools are declared in its spec.")

    @field_validator("input", mode="before")
    @classmethod
    def _messages_only(cls, v: Any) -> Any:
        if isinstance(v, list):
            for i, item in enumerate(v):
                kind = item.get("type", "message") if isinstance(item, dict) else None
                if kind != "message":
                    raise ValueError(f"item {i} is a {str(kind)[:40]!r} item; only messages are taken (this "
                                     "AgentApp's tools run on the server)")
        return v

    @field_validator("input")
    @classmethod
    def _has_text(cls, v: str | list[ResponseInputMessage]) -> str | list[ResponseInputMessage]:
        texts = [v] if isinstance(v, str) else [m.text() for m in v if m.role == "user"]
        if not any(t.strip() for t in texts):
            raise ValueError("at least one non-empty user input is required")
        total = len(v) if isinstance(v, str) else sum(len(m.text()) for m in v)
        if total > MAX_INPUT_CHARS:
            raise ValueError(f"the input is longer than {MAX_INPUT_CHARS} characters in total")
        return v

    def turns(self) -> list[dict[str, Any]]:
        """This request's input as history turns (without the instructions)."""
        if isinstance(self.input, str):
            return [{"role": "user", "content": self.input}]
        return history_of([ChatMessage(role=m.role, content=m.text()) for m in self.input])


class ErrorDetail(BaseModel):
    """OpenAI's error object; `code` is always a string (`budget_exhausted`), never a traceback."""

    message: str
    type: str
    param: str | None = None
    code: str


class ErrorBody(BaseModel):
    """Every 4xx and 5xx of the runtime and the router has this body."""

    error: ErrorDetail


def parse_body(model: type[_Wire], body: Any) -> Any:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        # Pydantic's message only: its `input` echo could be anything the caller sent.
        raise InvalidRequest(f"{param + ': ' if param else ''}{err['msg']}", param=param) from None


def history_of(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """The caller's conversation as the agent's history. A caller's system message is their instruction, not
    ours: it joins the history as a user turn after the app's own system prompt."""
    out = []
    for m in messages:
        text = m.text()
        if not text.strip():
            continue
        if m.role in ("system", "developer"):
            out.append({"role": "user", "content": f"(instructions from the caller) {text}"})
        else:
            out.append({"role": m.role, "content": text})
    return out


def _finish(stop_reason: str) -> str:
    return "stop" if stop_reason == "answered" else "length"


def completion_body(*, completion_id: str, model: str, answer: str, summary: dict[str, Any],
                    created: int | None = None) -> dict[str, Any]:
    return {"id": completion_id, "object": "chat.completion", "created": created or int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer},
                         "finish_reason": _finish(summary["stop_reason"])}],
            "usage": summary["usage"], "agentfleet": summary}


def chunk(*, completion_id: str, model: str, created: int, delta: dict[str, Any] | None = None,
          finish: str | None = None, extra: dict[str, Any] | None = None, usage: dict[str, Any] | None = None,
          no_choices: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": [] if no_choices else [{"index": 0, "delta": delta or {},
                                                              "finish_reason": finish}]}
    if usage is not None:
        out["usage"] = usage
    if extra is not None:
        out["agentfleet"] = extra
    return out


def finish_reason(stop_reason: str) -> str:
    return _finish(stop_reason)
