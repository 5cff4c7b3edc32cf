"""`agentfleet bench routing --engine vllm-cpu`: the routing bench's driver, our router and the runtime's warm rule
against a real vLLM engine on CPU (its own, started fresh per router, with a KV cache the flag sizes). A small run
whose numbers are counts, never times: every call answered, the warm requests sent (+warm) and the engine's own
prefix-cache counters read back."""

from __future__ import annotations

import pytest

from agentfleet.cli import build_parser
from agentfleet.local.install import is_engine_installed
from agentfleet.local.layout import Layout

pytestmark = pytest.mark.slow


def test_the_routing_bench_drives_a_real_vllm_engine_with_warming():
    if not is_engine_installed(Layout.default()):
        pytest.skip("the local model server is not installed: run scripts/install-local-model")
    from agentfleet.bench.routing import run

    args = build_parser().parse_args([
        "bench", "routing", "--json", "--engine", "vllm-cpu", "--replicas", "1", "--routers",
        "agentfleet:prefix-aware+warm", "--tasks", "1", "--tasks-per-worker", "1", "--steps-min", "3",
        "--steps-max", "3", "--system-words", "60", "--task-words", "10", "--step-words", "10", "--max-tokens", "2",
        "--tool-s", "2", "--tool-dist", "steady", "--warm-lead-s", "1", "--kv-blocks", "135", "--max-model-len",
        "2560", "--max-num-seqs", "2"])
    out = run(args)
    r = out["points"][0]["routers"]["agentfleet:prefix-aware+warm"]
    assert r["errors"] == 0 and r["timed_out_tasks"] == 0 and r["requests"] == 3, r
    assert r["warm_requests"] == 2 and r["warm_failed"] == 0, r  # before each of the two tools' ends
    assert r["requests_per_replica"] == [5]  # the engine's own count: 3 calls and 2 warms
    assert 0 < r["prefix_hit_rate"] < 1, r  # the task's history was cached by the engine itself
    assert out["config"]["engine"] == "vllm-cpu"
