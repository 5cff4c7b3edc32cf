"""`agentfleet bench autoscale`'s discrete-event model at small scale: structure and sanity, never timings."""

from __future__ import annotations

import argparse

from agentfleet.bench import autoscale


def test_bench_shape_and_sanity():
    parser = argparse.ArgumentParser()
    autoscale.add_bench_parsers(parser.add_subparsers())
    args = parser.parse_args(["autoscale", "--no-calibrate", "--seeds", "1", "--trace-scale", "0.2"])
    out = autoscale.run(args)
    assert set(out["scalers"]) == {"agentfleet", "request_count", "cpu_proxy"}
    for result in out["scalers"].values():
        assert 0.0 <= result["goodput_fraction"] <= 1.0
        assert result["replica_seconds"] > 0
    assert set(out["targets"]) == {"goodput_at_least_best_baseline", "replica_seconds_at_most_request_count"}


def test_more_capacity_never_hurts_goodput():
    model = autoscale.Model()
    trace = ((60, 10.0),)
    one = autoscale.simulate(model, lambda m, c, r, t: 1, trace=trace)
    four = autoscale.simulate(model, lambda m, c, r, t: 4, trace=trace)
    assert four["goodput_fraction"] >= one["goodput_fraction"]
    assert four["replica_seconds"] > one["replica_seconds"]
