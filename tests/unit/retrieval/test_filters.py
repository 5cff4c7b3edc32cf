"""The permission filter is the security boundary: its expression never contains a caller-controlled character,
encodes tenant AND any-of groups, and differs whenever the permissions differ."""

import re

import pytest
from hypothesis import given, settings, strategies as st

from agentfleet.retrieval.filters import (
    MAX_GROUPS, MAX_NAME_BYTES, Principal, decode_name, encode_name, for_principal, groups_signature, stored_access,
)

NASTY = ['"', "'", "\\", '" or tenant != "', "%", "_", "|", "||", "*", "[", "]", "a) or (1==1", "\n", "\x00",
         "é", "😀", "tenant == 'x'", "%|616263|%", "  spaced  ", "", "\u202e", "like", "or", "&&"]
names = st.one_of(st.sampled_from(NASTY), st.text(max_size=20))
SAFE = re.compile(r'^tenant in \["[0-9a-f]*", "\*"\] and \((groups like "%\|([0-9a-f]*|\*)\|%"( or )?)+\)$')


@settings(max_examples=300, deadline=None)
@given(tenant=names, groups=st.lists(names, max_size=6))
def test_expression_alphabet_is_fixed(tenant, groups):
    f = for_principal(Principal(tenant, tuple(groups)))
    assert SAFE.match(f.expr), f.expr
    assert f.params == {}


@settings(max_examples=300, deadline=None)
@given(name=names)
def test_encoding_round_trips(name):
    assert decode_name(encode_name(name)) == name
    assert re.fullmatch(r"[0-9a-f]*", encode_name(name))


@pytest.mark.parametrize("principal,expr", [
    (Principal("acme", ("eng",)), 'tenant in ["61636d65", "*"] and (groups like "%|656e67|%" or groups like "%|*|%")'),
    (Principal("acme"), 'tenant in ["61636d65", "*"] and (groups like "%|*|%")'),
    (Principal('a"b', ("b", "a", "a")),
     'tenant in ["612262", "*"] and (groups like "%|61|%" or groups like "%|62|%" or groups like "%|*|%")'),
], ids=["one-group", "no-groups", "quote-dedup-sorted"])
def test_for_principal_table(principal, expr):
    assert for_principal(principal).expr == expr


@pytest.mark.parametrize("tenant,groups,public,want", [
    ("acme", ["eng", "all"], False, ("61636d65", "|616c6c|656e67|")),
    ("acme", [], False, ("61636d65", "|*|")),
    (None, [], True, ("*", "|*|")),
    ("", [""], False, ("", "||")),
], ids=["groups", "tenant-wide", "public", "empty-names"])
def test_stored_access_table(tenant, groups, public, want):
    a = stored_access(tenant, groups, public=public)
    assert (a.tenant, a.groups) == want


@pytest.mark.parametrize("kwargs", [{"tenant": None, "groups": []}, {"tenant": "a", "groups": [], "public": True}],
                         ids=["no-tenant", "public-with-tenant"])
def test_stored_access_rejects(kwargs):
    with pytest.raises(ValueError):
        stored_access(**kwargs)


@pytest.mark.parametrize("make", [
    lambda: Principal("x" * (MAX_NAME_BYTES + 1)),
    lambda: Principal("t", tuple(str(i) for i in range(MAX_GROUPS + 1))),
    lambda: Principal("t", "eng"),
    lambda: Principal(1),
], ids=["long-name", "too-many-groups", "groups-as-string", "tenant-not-str"])
def test_principal_rejects(make):
    with pytest.raises((ValueError, TypeError)):
        make()


def test_for_principal_requires_a_principal():
    with pytest.raises(TypeError):
        for_principal(("acme", ("eng",)))  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(a=st.tuples(names, st.lists(names, max_size=4)), b=st.tuples(names, st.lists(names, max_size=4)))
def test_signature_differs_when_permissions_differ(a, b):
    pa, pb = Principal(a[0], tuple(a[1])), Principal(b[0], tuple(b[1]))
    same = (pa.tenant, pa.groups) == (pb.tenant, pb.groups)
    assert (groups_signature(pa) == groups_signature(pb)) is same
    assert (for_principal(pa) == for_principal(pb)) is same
