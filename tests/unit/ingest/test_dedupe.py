"""Near-duplicate removal keeps the first of each near-identical group, and never across different access."""

import pytest

from agentfleet.ingest.dedupe import dedupe_chunks

BASE = ("The release train leaves every second Tuesday at 14:00 UTC and whatever is merged to main and green "
        "by then is released to the canary fleet for forty eight hours before it rolls out further")


@pytest.mark.parametrize("texts,groups,threshold,keep", [
    ([BASE, BASE], ["a", "a"], 0.95, [0]),
    ([BASE, BASE.upper() + "  "], ["a", "a"], 1.0, [0]),
    ([BASE, BASE], ["a", "b"], 0.95, [0, 1]),
    ([BASE, BASE.replace("forty eight", "forty-eight")], ["a", "a"], 0.8, [0]),
    ([BASE, BASE.replace("forty eight", "twelve")], ["a", "a"], 0.99, [0, 1]),
    ([BASE, "A completely different passage about vacation days and carry over rules."], ["a", "a"], 0.5, [0, 1]),
    (["short", "short", "other"], ["a", "a", "a"], 0.95, [0, 2]),
], ids=["exact", "case-and-space", "different-access-kept", "near-dup", "below-threshold", "unrelated",
        "short-texts"])
def test_dedupe(texts, groups, threshold, keep):
    assert dedupe_chunks(texts, groups, threshold=threshold) == keep
