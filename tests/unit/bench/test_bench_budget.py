"""`agentfleet bench budget` end to end at a small size (the real runtime process, two llm-d-inference-sim
engines, a fresh SQLite ledger per phase): with `degradeAtPercent` the same money limit answers more tasks before
its first 429, the tasks past the line ran on the small model, and neither phase spends past the limit. What it
measures is counts, never time."""

from __future__ import annotations

import argparse
import shutil

import pytest

from agentfleet.bench import budget, simulator

pytestmark = pytest.mark.skipif(not simulator.binary(build=False).exists() and not shutil.which("go"),
                                reason="llm-d-inference-sim is not built and Go is not installed (e2e/sim/build.sh)")


def test_degrade_at_percent_stretches_the_window_before_any_429() -> None:
    args = argparse.Namespace(limit_usd=0.3, degrade_at=80, max_tasks=2500, concurrency=2)
    out = budget.run(args)
    off, on = out["phases"]["off"], out["phases"]["on"]
    # Off: every task on the large model until a 429 names the cost limit.
    assert off["on_small"] == 0 and off["on_large"] == off["answered"] > 0, off
    assert off["first_429_after"] is not None and "cost limit $0.3000 reached" in off["first_429"], off
    # On: the large model first, then the small one, and a 429 only once even the small bound no longer fits.
    assert on["on_large"] > 0 and on["on_small"] > 0, on
    assert on["first_429_after"] is not None and on["first_429_after"] > off["first_429_after"], on
    assert out["answered_before_first_429_ratio"] > 1 and not out["ratio_is_lower_bound"]
    assert out["never_over_limit"] and on["errors"] == off["errors"] == 0
    # The ledger charged what the answers reported, in both phases.
    for p in (off, on):
        assert abs(p["spent_usd"] - p["reported_cost_usd"]) < 1e-6, p
