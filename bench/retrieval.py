"""Retrieval benchmark: `agentfleet bench retrieval [--chunks N] [--json]` (operator/agentfleet/retrieval/bench.py).
This file runs the same thing from a checkout: `python bench/retrieval.py --chunks 20000 --json`."""

import sys

from agentfleet.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "retrieval", *sys.argv[1:]]))
