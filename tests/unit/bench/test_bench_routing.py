"""bench routing, the pure parts: router names, the KV-pressure sizing, py-spy's folded stacks, the ratios."""

from __future__ import annotations

import argparse

import pytest

from agentfleet.bench.routing import ALL_TARGETS, Target, _ratios, aggregate_folded, kv_pressure_blocks, parse_targets


@pytest.mark.parametrize(("spec", "expected"), [
    pytest.param("agentfleet:session,vllm-router:consistent_hash",
                 [Target("agentfleet", "session"), Target("vllm-router", "consistent_hash")], id="both-families"),
    pytest.param("agentfleet,round_robin", [Target("agentfleet", "prefix-aware"), Target("agentfleet", "round-robin")],
                 id="old-short-names"),
    pytest.param("all", [parse_targets(t)[0] for t in ALL_TARGETS], id="all-eight"),
    pytest.param("agentfleet:prefix-aware+shared", [Target("agentfleet", "prefix-aware+shared")],
                 id="shared-placement"),
    pytest.param("agentfleet:session+shared+hints", [Target("agentfleet", "session+shared+hints")],
                 id="two-options"),
    pytest.param("agentfleet:prefix-aware+hints+warm", [Target("agentfleet", "prefix-aware+hints+warm")],
                 id="warm-before-a-tool-ends"),
])
def test_parse_targets(spec, expected):
    assert parse_targets(spec) == expected


@pytest.mark.parametrize("spec", [pytest.param("vllm-router:session", id="our-policy-on-theirs"),
                                  pytest.param("vllm-router:consistent_hash+shared", id="placement-on-theirs"),
                                  pytest.param("agentfleet:prefix-aware+everywhere", id="unknown-option"),
                                  pytest.param("agentfleet:prefix-aware+hints+hints", id="option-twice"),
                                  pytest.param("nginx:round_robin", id="unknown-family")])
def test_parse_targets_refuses(spec):
    with pytest.raises(SystemExit, match="unknown router"):
        parse_targets(spec)


def test_kv_pressure_fits_one_batch_but_not_the_history():
    args = argparse.Namespace(step_words=120, max_tokens=16, system_words=600, task_words=150, steps_min=10,
                              steps_max=30, max_num_seqs=8, replicas=4)
    blocks, pressure = kv_pressure_blocks(args, 64)
    longest_blocks = (600 + 150 + 30 * 136 + 64) / 16
    assert blocks >= 8 * longest_blocks and pressure > 1.0


def test_aggregate_folded():
    lines = ["main (cli.py:1);_proxy (agentfleet/router/proxy.py:170);write (selector_events.py:9) 6\n",
             "main (cli.py:1);_proxy (agentfleet/router/proxy.py:170) 2\n", "garbage\n",
             "main (cli.py:1);select (selectors.py:3) 2\n"]
    out = aggregate_folded(lines, top=2)
    assert out["samples"] == 10
    assert out["self"] == [["write (selector_events.py)", 0.6], ["_proxy (proxy.py)", 0.2]]
    assert out["inclusive"][0] == ["main (cli.py)", 1.0]
    assert out["inclusive"][1] == ["_proxy (proxy.py)", 0.8]


def _res(p95, p50, thr, ttft99=500.0, ttft50=300.0, timed_out=0):
    return {"task_p95_s": p95, "task_p50_s": p50, "throughput_tok_s": thr, "ttft_p99_ms": ttft99,
            "ttft_p50_ms": ttft50, "timed_out_tasks": timed_out}


def test_ratios_against_the_best_peer():
    results = {"agentfleet:session": _res(10.0, 8.0, 600.0), "vllm-router:consistent_hash": _res(13.0, 8.8, 500.0),
               "vllm-router:round_robin": _res(20.0, 12.0, 300.0),
               # cut off at the deadline: its percentiles count the unfinished tasks' time so far, a lower bound
               "vllm-router:cache_aware": _res(90.0, 30.0, 120.0, timed_out=30)}
    r = _ratios(results, "agentfleet:session")
    assert (r["best_peer"], r["task_p95_peer_over_ours"], r["task_p50_peer_over_ours"],
            r["throughput_ours_over_peer"]) == ("vllm-router:consistent_hash", 1.3, 1.1, 1.2)
    assert r["peer_cut_off_tasks"] == r["ours_cut_off_tasks"] == 0
    assert _ratios({"agentfleet:session": _res(1, 1, 1)}, "agentfleet:session") is None


def test_a_peer_cut_off_at_the_deadline_is_still_compared_and_says_so():
    """Former bug: a peer that left tasks unfinished was dropped from the comparison, so at KV pressure, where
    consistent_hash left 34 of 128 tasks unfinished after 90 s (ours finished in 30 s), the bench printed no ratio."""
    r = _ratios({"agentfleet:prefix-aware": _res(20.5, 12.4, 659.0),
                 "vllm-router:consistent_hash": _res(90.0, 9.5, 202.0, timed_out=34)}, "agentfleet:prefix-aware")
    assert r["best_peer"] == "vllm-router:consistent_hash" and r["peer_cut_off_tasks"] == 34
    assert r["task_p95_peer_over_ours"] == 4.39 and r["throughput_ours_over_peer"] == 3.26


def test_churn_report_times_the_hit_rate_recovery():
    from agentfleet.bench.routing import churn_report

    # 0.9 hit rate until the restart at t=10, 0.3 for 4 s after it is back (t=11), then 0.9 again.
    series, h, q = [], 0.0, 0.0
    for i in range(80):
        t = i * 0.5
        rate = 0.3 if 11.0 <= t < 15.0 else 0.9
        h, q = h + 100 * rate, q + 100
        series.append((t, h, q))
    out = churn_report(series, {"restart": {"replica": "sim-0", "at_s": 10.0, "back_at_s": 11.0},
                                "unfinished": "the run ended first"})
    r = out["restart"]
    assert r["hit_rate_before"] == 0.9 and r["hit_rate_60s_after"] < 0.9
    assert 8.0 <= r["hit_rate_recovered_after_s"] <= 9.5  # the 5 s window is clear of the dip from t=19.5 on
    assert out["unfinished"] == "the run ended first"


def test_tool_time_is_the_same_draw_for_every_router_and_bounded():
    from agentfleet.bench.routing import tool_seconds

    draws = [tool_seconds(i, j, 2.0) for i in range(40) for j in range(1, 25)]
    assert draws == [tool_seconds(i, j, 2.0) for i in range(40) for j in range(1, 25)]
    assert all(0 <= d <= 8.0 for d in draws) and max(draws) == 8.0  # the cap binds on a long tail
    assert 1.6 < sum(draws) / len(draws) < 2.2  # an exponential of mean 2 s, less the capped tail
    assert len(set(draws)) > len(draws) * 0.9  # per (task, step), not one value for all
    steady = [tool_seconds(i, j, 2.0, "steady") for i in range(40) for j in range(1, 25)]
    assert all(1.8 <= d <= 2.2 for d in steady) and len(set(steady)) > len(steady) * 0.9


def test_low_band_tasks_are_the_same_for_every_router_and_about_the_share():
    from agentfleet.bench.routing import is_low_band

    low = [i for i in range(400) if is_low_band(i, 0.25)]
    assert low == [i for i in range(400) if is_low_band(i, 0.25)] and 70 < len(low) < 130
    assert not any(is_low_band(i, 0.0) for i in range(400))
    assert parse_targets("agentfleet:session+fair+band") == [Target("agentfleet", "session+fair+band")]


def _bench_args(*extra: str) -> argparse.Namespace:
    from agentfleet.cli import build_parser

    return build_parser().parse_args(["bench", "routing", "--json", *extra])


def test_band_needs_a_low_share_and_the_run_timeout_covers_the_tools():
    from agentfleet.bench.routing import run

    with pytest.raises(SystemExit, match="needs --low-share"):
        run(_bench_args("--routers", "agentfleet:session+band"))
    with pytest.raises(SystemExit, match=r"\[0, 1\)"):
        run(_bench_args("--routers", "agentfleet:session+band", "--low-share", "1.5"))


def test_a_band_router_is_told_which_tasks_are_low_and_every_router_reports_both_bands():
    """The bench end to end on two simulators: +band turns the fair queue on and its router counts the low-band
    slots the driver asked for; the +fair router, not told, counts none; both split their tasks the same way."""
    import shutil

    from agentfleet.bench import simulator
    from agentfleet.bench.routing import is_low_band, run

    if not simulator.binary(build=False).exists() and not shutil.which("go"):
        pytest.skip("llm-d-inference-sim is not built and Go is not installed (e2e/sim/build.sh)")
    out = run(_bench_args("--routers", "agentfleet:session+fair,agentfleet:session+band", "--low-share", "0.5",
                          "--replicas", "2", "--tasks", "4", "--tasks-per-worker", "1", "--steps-min", "2",
                          "--steps-max", "3", "--system-words", "40", "--task-words", "10", "--step-words", "10",
                          "--max-tokens", "2", "--max-num-seqs", "2"))
    routers = out["points"][0]["routers"]
    low = sum(is_low_band(i, 0.5) for i in range(4))
    assert 0 < low < 4  # the seed splits the four tasks (else the test proves nothing)
    for name in ("agentfleet:session+fair", "agentfleet:session+band"):
        r = routers[name]
        assert r["errors"] == 0 and r["timed_out_tasks"] == 0, r
        assert r["buckets"]["band_low"]["tasks"] == low and r["buckets"]["band_normal"]["tasks"] == 4 - low
    assert routers["agentfleet:session+fair"]["low_band_slots"] == 0
    assert routers["agentfleet:session+band"]["low_band_slots"] >= 2 * low  # every call of every low task
    assert out["config"]["run_timeout"] == 90.0 and out["config"]["low_share"] == 0.5


def test_tasks_cut_off_at_the_deadline_count_in_the_percentiles_with_the_time_they_ran():
    import shutil

    from agentfleet.bench import simulator
    from agentfleet.bench.routing import run

    if not simulator.binary(build=False).exists() and not shutil.which("go"):
        pytest.skip("llm-d-inference-sim is not built and Go is not installed (e2e/sim/build.sh)")
    # Three tasks at a time, each with 2 s tools between its 3 calls: none can finish in the 1.5 s allowed.
    out = run(_bench_args("--routers", "agentfleet:session", "--replicas", "1", "--tasks", "3",
                          "--tasks-per-worker", "1", "--steps-min", "3", "--steps-max", "3", "--system-words", "20",
                          "--task-words", "5", "--step-words", "5", "--max-tokens", "2", "--tool-s", "2",
                          "--tool-dist", "steady", "--run-timeout", "1.5"))
    r = out["points"][0]["routers"]["agentfleet:session"]
    assert r["timed_out_tasks"] == 3 and r["cut_off_tasks_in_percentiles"] == 3, r
    assert 1.4 <= r["task_p50_s"] <= r["task_p99_s"] < 5, r  # the time each had run, not nothing
