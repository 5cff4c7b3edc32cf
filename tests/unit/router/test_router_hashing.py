"""Consistent hashing with bounded loads: the bound holds, keys spread, and membership changes move only the
keys they must."""

from __future__ import annotations

import pytest

from agentfleet.router.hashing import Ring, load_bound

NAMES = [f"r{i}" for i in range(8)]
KEYS = [f"session-{i}" for i in range(4000)]


@pytest.mark.parametrize(("total", "members", "factor", "expected"), [
    pytest.param(0, 4, 1.25, 1, id="empty-fleet-still-takes-one"),
    pytest.param(7, 4, 1.25, 3, id="ceil-of-factor-times-mean-with-the-newcomer"),
    pytest.param(100, 4, 1.0, 26, id="factor-1-is-the-mean-rounded-up"),
    pytest.param(10, 0, 1.25, 0, id="no-members"),
])
def test_load_bound(total, members, factor, expected):
    assert load_bound(total, members, factor) == expected


@pytest.mark.parametrize("factor", [pytest.param(f, id=f"c={f}") for f in (1.0, 1.25, 2.0)])
def test_bounded_load_holds_when_every_key_is_hot(factor):
    # Every request carries the same key (one hot session): the bound must still spread it.
    ring = Ring(NAMES[:4])
    loads = {n: 0 for n in NAMES[:4]}
    for _ in range(200):
        total = sum(loads.values())
        bound = load_bound(total, 4, factor)
        chosen = ring.lookup("hot", loads=loads, eligible=set(loads), factor=factor)
        assert loads[chosen] + 1 <= bound
        loads[chosen] += 1
    assert max(loads.values()) <= load_bound(199, 4, factor)


def test_keys_spread_over_members():
    ring = Ring(NAMES)
    counts = {n: 0 for n in NAMES}
    for k in KEYS:
        counts[next(iter(ring.walk(k)))] += 1
    mean = len(KEYS) / len(NAMES)
    assert all(0.6 * mean <= c <= 1.4 * mean for c in counts.values()), counts


@pytest.mark.parametrize(("before", "after"), [
    pytest.param(NAMES, NAMES[:-1], id="remove-one-of-8"),
    pytest.param(NAMES[:-1], NAMES, id="add-one-to-7"),
    pytest.param(NAMES[:4], NAMES[:5], id="add-one-to-4"),
])
def test_membership_change_moves_only_its_share(before, after):
    a, b = Ring(before), Ring(after)
    unloaded: dict[str, int] = {}
    moved = 0
    for k in KEYS:
        x = a.lookup(k, loads=unloaded, eligible=set(before), factor=1.25)
        y = b.lookup(k, loads=unloaded, eligible=set(after), factor=1.25)
        if x != y:
            moved += 1
            # Only keys of the removed replica move away, only to the added replica do keys move.
            assert x not in after or y not in before
    share = 1 / max(len(before), len(after))
    assert moved / len(KEYS) <= 1.5 * share


def test_ineligible_replica_is_skipped_like_removed():
    ring, smaller = Ring(NAMES), Ring(NAMES[1:])
    for k in KEYS[:500]:
        assert ring.lookup(k, loads={}, eligible=set(NAMES[1:]), factor=1.25) == \
            smaller.lookup(k, loads={}, eligible=set(NAMES[1:]), factor=1.25)


def test_no_eligible_replica():
    assert Ring(NAMES).lookup("k", loads={}, eligible=set(), factor=1.25) is None
    assert Ring(()).lookup("k", loads={}, eligible={"r0"}, factor=1.25) is None


def test_ring_is_stable_across_instances():
    assert [Ring(NAMES).lookup(k, loads={}, eligible=set(NAMES), factor=1.25) for k in KEYS[:50]] == \
        [Ring(list(reversed(NAMES))).lookup(k, loads={}, eligible=set(NAMES), factor=1.25) for k in KEYS[:50]]
