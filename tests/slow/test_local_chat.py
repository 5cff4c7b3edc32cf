"""The real local model answers through the OpenAI chat route with the engine's default (transcript) chat
template, and its tokenizer adds <bos> (without it the 270M base model answers nonsense: facts.md)."""

from __future__ import annotations

import time

import pytest

from agentfleet.local import engine as eng

pytestmark = pytest.mark.slow


def test_tokenizer_adds_bos_to_raw_prompts(local_engine: eng.EngineProcess) -> None:
    out = eng.post_json(local_engine.base_url, "/tokenize",
                        {"model": local_engine.served_model_name, "prompt": "What is the capital of France?"})
    assert out["tokens"][0] == 2, f"expected <bos> (id 2) first, got {out['tokens'][:4]}"


def test_chat_answers_the_capital_of_france(local_engine: eng.EngineProcess) -> None:
    body = {"model": local_engine.served_model_name, "temperature": 0, "max_tokens": 16,
            "stop": list(eng.TRANSCRIPT_STOP),
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    t0 = time.monotonic()
    out = eng.post_json(local_engine.base_url, "/v1/chat/completions", body)
    latency_s = time.monotonic() - t0
    answer = out["choices"][0]["message"]["content"]
    print(f"\nchat: {answer!r} in {latency_s:.2f}s, usage {out['usage']}")
    assert "Paris" in answer
