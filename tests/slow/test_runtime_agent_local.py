"""The runtime's agent loop on the real local model (vLLM on CPU, Gemma 3 270M base, the slow tier's engine):
the action schema the runtime sends as response_format is accepted by vLLM's structured output and turns every
reply of a 270M base model into a valid action; a multi-step task's append-only prompt hits the prefix cache on
every step after the first (read from the engine's own /metrics)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from agentfleet.local import engine as eng

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "runtime"))
from runtime_kit import make_config, serve  # noqa: E402

pytestmark = pytest.mark.slow
BLOCK_TOKENS = 128  # vLLM's KV block on CPU: hits are counted in whole blocks (measured: 256 = 2 x 128)


def test_agent_steps_are_valid_actions_and_hit_the_prefix_cache(local_engine: eng.EngineProcess,
                                                                 tmp_path: Path) -> None:
    cfg = make_config(tmp_path, large_url=local_engine.base_url + "/v1", served=local_engine.served_model_name,
                      app={"limits": {"maxSteps": 3, "maxTokens": 20000, "deadlineSeconds": 600,
                                      "toolTimeoutSeconds": 5},
                           "systemPrompt": "You are a careful assistant. Always call the calculator tool first for any "
                                           "arithmetic; never compute in your head."},
                      budget={"window": "day", "limits": {"tokens": 10**9}, "routing": {"policy": "large-only"}})
    before = eng.prefix_cache_counters(eng.read_metrics(local_engine.base_url))

    async def go():
        async with serve(cfg, tmp_path) as s:
            return await s.run_to_end("What is 12 * 7?", deadline_s=600)

    run = asyncio.run(go())
    delta = eng.prefix_cache_counters(eng.read_metrics(local_engine.base_url)) - before
    steps = run["steps"]
    print(f"\nstop: {run['agentfleet']['stop_reason']}; steps: "
          f"{[(s['action'], s['arguments'], s['observation'], s['error']) for s in steps]}; "
          f"answer: {run.get('answer')!r}; prefix cache {delta.hits:.0f}/{delta.queries:.0f} tokens")
    assert steps, run
    assert all(s["error"] is None or not s["error"].startswith("malformed action") for s in steps), steps
    assert steps[0]["action"] in ("calculator", "final_answer")
    assert run["agentfleet"]["stop_reason"] in ("answered", "max_steps")
    calls = [s for s in steps if s["prompt_tokens"]]
    assert len(calls) == len(steps)  # a cap never leaves a half-recorded step
    # The answer step is deliberately rebuilt (passages + question, for base models), so it is not counted.
    appended = [s for s in calls[1:] if s["kind"] != "answer"]
    if appended and calls[0]["prompt_tokens"] >= BLOCK_TOKENS:
        # Every appended step after the first re-reads at least the first step's whole KV blocks from the cache.
        full_blocks = calls[0]["prompt_tokens"] // BLOCK_TOKENS * BLOCK_TOKENS
        assert delta.hits >= full_blocks * len(appended), delta
