"""`agentfleet bench chaos` at the issue's task length: a run is a chain of record() calls, one key per step, and the
invariants are checked per step. Pure tables over `chaos.check` (no processes): a step the MCP server recorded twice,
a step a run shows completed twice, and a recorded step the run does not show each name their run; an honest
multi-step run raises nothing."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

import pytest

from agentfleet.bench import chaos


def test_a_run_is_a_chain_of_steps_ending_in_an_answer() -> None:
    key = chaos.step_key("chaos-007", 1, 3)
    chain = [key]
    while (nxt := chaos.next_step(chain[-1])) is not None:
        chain.append(nxt)
    assert chain == ["chaos-007#1/3", "chaos-007#2/3", "chaos-007#3/3"]
    assert {chaos.run_key(k) for k in chain} == {"chaos-007"}
    first = json.loads(chaos.RunTrace("chaos-007", "chaos", tool_calls=3).input)
    assert first == {"action": chaos.TOOL, "arguments": {"key": "chaos-007#1/3"}}


@pytest.mark.parametrize(("text", "expected"), [("10-30", (10, 30)), ("4", (4, 4)), ("2-2", (2, 2))])
def test_calls_range(text: str, expected: tuple[int, int]) -> None:
    assert chaos.calls_range(text) == expected


@pytest.mark.parametrize("text", ["1", "30-10", "x", "5-", "2-500"])
def test_calls_range_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="--calls"):
        chaos.calls_range(text)


def test_loop_limits_leave_room_for_the_longest_run() -> None:
    limits = chaos.run_limits(30)
    assert limits["maxSteps"] > 30 and limits["deadlineSeconds"] >= 4 * 30
    assert chaos.cost_limit_usd(30) > chaos.cost_limit_usd(4)


def _step(n: int, key: str, *, error: str | None = None, cost: float = 0.001) -> dict[str, Any]:
    return {"n": n, "kind": "tool_format", "action": chaos.TOOL, "arguments": {"key": key}, "cost_usd": cost,
            **({"error": error} if error else {})}


def _phases(steps: list[dict[str, Any]], *, key: str = "chaos-001") -> dict[str, Any]:
    answer = {"n": len(steps) + 1, "kind": "tool_format", "action": "final_answer", "cost_usd": 0.001}
    cost = round(0.001 * (len(steps) + 1), 6)
    run = {"id": "run-1", "status": "completed", "replica": "rt-0", "takeovers": 0, "steps": [*steps, answer],
           "agentfleet": {"task_id": "task-1", "cost_usd": cost, "stop_reason": "answered"}}
    trace = chaos.RunTrace(key, "chaos", tool_calls=3, ids=["run-1"], last=run)
    return {"faults": {"traces": [trace]}}


def _usage(cost_usd: float) -> dict[str, Any]:
    micro = round(cost_usd * 1e6)
    return {"spent_micro_usd": micro, "spent_tokens": 0, "reserved_micro_usd": 0, "reserved_tokens": 0,
            "limit_micro_usd": 5_000_000, "task_spent_micro_usd": {}}


KEYS = [chaos.step_key("chaos-001", n, 3) for n in (1, 2, 3)]


def _invariants(steps: list[dict[str, Any]], records: Counter[str]) -> list[str]:
    out = chaos.check(_phases(steps), records, _usage(0.001 * (len(steps) + 1)))
    return sorted({p["invariant"] for p in out["problems"]})


def test_an_honest_multi_step_run_raises_nothing() -> None:
    steps = [_step(i + 1, k) for i, k in enumerate(KEYS)]
    assert _invariants(steps, Counter(KEYS)) == []


def test_a_step_recorded_twice_is_a_duplicated_tool_call() -> None:
    steps = [_step(i + 1, k) for i, k in enumerate(KEYS)]
    out = chaos.check(_phases(steps), Counter({**Counter(KEYS), KEYS[1]: 2}), _usage(0.004))
    assert out["duplicated_tool_calls"] == 1
    assert [p["key"] for p in out["problems"] if p["invariant"] == "duplicated_tool_call"] == [KEYS[1]]
    assert [p["run_ids"] for p in out["problems"] if p["invariant"] == "duplicated_tool_call"] == [["run-1"]]


def test_a_step_completed_twice_in_the_run() -> None:
    steps = [_step(1, KEYS[0]), _step(2, KEYS[1]), _step(3, KEYS[1]), _step(4, KEYS[2])]
    assert "tool_step_twice" in _invariants(steps, Counter(KEYS))


def test_a_recorded_step_the_run_does_not_show_is_unaccounted() -> None:
    # The takeover lost the step that was in flight: the server ran #2, the run went on from #1 to #3.
    steps = [_step(1, KEYS[0]), _step(2, KEYS[2])]
    assert _invariants(steps, Counter(KEYS)) == ["tool_call_unaccounted"]


def test_an_interrupted_step_is_accounted_for() -> None:
    steps = [_step(1, KEYS[0]), _step(2, KEYS[1], error="interrupted: the replica running rec__record stopped"),
             _step(3, KEYS[2])]
    out = chaos.check(_phases(steps), Counter(KEYS), _usage(0.004))
    assert out["problems"] == [] and out["interrupted_tool_calls"] == 1
