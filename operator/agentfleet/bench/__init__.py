"""Benchmarks behind `agentfleet bench NAME`: each measures its baseline in the same run and prints one JSON
object with --json."""
