"""The retrieval cache never serves one principal's hits to a principal with other permissions."""

import pytest

from agentfleet.retrieval import Principal, RetrievalCache, cache_key, normalise_query


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.mark.parametrize("a,b,same", [
    (("  How  many DAYS? ", Principal("acme", ("eng",))), ("how many days?", Principal("acme", ("eng",))), True),
    (("q", Principal("acme", ("eng", "all"))), ("q", Principal("acme", ("all", "eng"))), True),
    (("q", Principal("acme", ("eng",))), ("q", Principal("acme", ("hr",))), False),
    (("q", Principal("acme", ("eng",))), ("q", Principal("globex", ("eng",))), False),
    (("q", Principal("acme", ("eng",))), ("q", Principal("acme", ("eng", "hr"))), False),
    (("q", Principal("a|b", ())), ("q", Principal("a", ("b",))), False),
], ids=["normalised", "group-order", "other-group", "other-tenant", "superset", "delimiter-confusion"])
def test_cache_key(a, b, same):
    assert (cache_key("ix", a[0], 5, a[1]) == cache_key("ix", b[0], 5, b[1])) is same


def test_normalise_query():
    assert normalise_query("Ｆｕｌｌ\twidth  Query ") == "full width query"


def test_ttl_and_lru():
    clock = Clock()
    cache = RetrievalCache(max_entries=2, ttl_s=10, clock=clock)
    cache.put(("a",), 1)
    cache.put(("b",), 2)
    assert cache.get(("a",)) == 1
    cache.put(("c",), 3)  # evicts b, the least recently used
    assert cache.get(("b",)) is None and cache.get(("a",)) == 1
    clock.now = 10.0
    assert cache.get(("a",)) is None and len(cache) == 1
    assert (cache.hits, cache.misses) == (2, 2)
