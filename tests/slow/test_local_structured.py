"""Structured output turns the small base model into a reliable tool caller: the JSON schema is enforced by the
engine's grammar (response_format on the chat route, `structured_outputs` on the completions route). facts.md: the
old `guided_json` field is silently ignored, so it must not be what we rely on."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from agentfleet.local import engine as eng

pytestmark = pytest.mark.slow

TOOL_CALL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "tool": {"type": "string", "enum": ["weather", "calculator"]},
        "arguments": {
            "type": "object",
            "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 40}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
    "required": ["tool", "arguments"],
    "additionalProperties": False,
}
SYSTEM = ('You call tools by answering with JSON only: {"tool": NAME, "arguments": {...}}. Tools: "weather" '
          '(arguments: {"city": string}) gives the weather in a city; "calculator" evaluates arithmetic.')
QUESTION = "What is the weather in Paris today?"
# What the transcript chat template renders for the chat case; the tokenizer adds <bos> to a raw prompt.
TRANSCRIPT_PROMPT = f"{SYSTEM}\n\nQuestion: {QUESTION}\nAnswer:"


def _assert_valid_tool_call(text: str) -> dict[str, Any]:
    call = json.loads(text)
    assert set(call) == {"tool", "arguments"}
    assert call["tool"] in ("weather", "calculator")
    assert set(call["arguments"]) == {"city"}
    assert isinstance(call["arguments"]["city"], str) and 1 <= len(call["arguments"]["city"]) <= 40
    return call


@pytest.mark.parametrize("route", ["chat_response_format", "completions_structured_outputs"])
def test_structured_output_makes_a_valid_tool_call(local_engine: eng.EngineProcess, route: str) -> None:
    model = local_engine.served_model_name
    t0 = time.monotonic()
    if route == "chat_response_format":
        out = eng.post_json(local_engine.base_url, "/v1/chat/completions", {
            "model": model, "temperature": 0, "max_tokens": 64,
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "tool_call", "schema": TOOL_CALL_SCHEMA, "strict": True}},
        })
        text = out["choices"][0]["message"]["content"]
    else:
        out = eng.post_json(local_engine.base_url, "/v1/completions", {
            "model": model, "temperature": 0, "max_tokens": 64, "prompt": TRANSCRIPT_PROMPT,
            "structured_outputs": {"json": TOOL_CALL_SCHEMA},
        })
        text = out["choices"][0]["text"]
    latency_s = time.monotonic() - t0
    print(f"\n{route}: {text!r} in {latency_s:.2f}s")
    assert out["choices"][0]["finish_reason"] == "stop", "the JSON was cut off by max_tokens"
    call = _assert_valid_tool_call(text)
    assert call["tool"] == "weather"
