"""API key -> Principal: the key store's validation, lookup and reload (pure parsing; the file edge on tmp_path)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agentfleet.errors import AuthenticationFailed, SpecError
from agentfleet.retrieval.filters import Principal, for_principal
from agentfleet.runtime.identity import Identity, load_keystore
from agentfleet.runtime.delegation import delegated_principal
from agentfleet.runtime.keystore import bearer_key, parse_keystore

DEMO = """\
demo-key-alice: {user: alice, tenant: acme, groups: [eng, all]}
demo-key-gina: {user: gina, tenant: globex, groups: [all]}
"demo-key-nogroups": {user: nobody, tenant: acme}
"""


@pytest.mark.parametrize("header, principal", [
    ("Bearer demo-key-alice", Principal("acme", ("all", "eng"), user="alice")),
    ("bearer   demo-key-gina  ", Principal("globex", ("all",), user="gina")),
    ("BEARER demo-key-nogroups", Principal("acme", (), user="nobody")),
], ids=["alice", "scheme-case-and-spaces", "no-groups"])
def test_a_known_key_is_its_principal(header: str, principal: Principal) -> None:
    got = parse_keystore(DEMO).authenticate(header)
    assert got == principal
    assert (got.user, got.tenant, got.groups) == (principal.user, principal.tenant, principal.groups)


@pytest.mark.parametrize("header, message", [
    (None, "missing API key: send the header `Authorization: Bearer <key>`"),
    ("", "missing API key: send the header `Authorization: Bearer <key>`"),
    ("Basic ZGVtbzprZXk=", "malformed Authorization header: expected `Bearer <key>`"),
    ("Bearer", "malformed Authorization header: expected `Bearer <key>`"),
    ("Bearer demo-key-mallory", "invalid API key"),
    ("Bearer demo-key-alic", "invalid API key"),
    ("Bearer demo-key-alice2", "invalid API key"),
    ("Bearer DEMO-KEY-ALICE", "invalid API key"),
], ids=["absent", "empty", "basic-scheme", "no-key", "unknown", "prefix", "extension", "case"])
def test_unknown_or_missing_key_fails_without_echoing_it(header: str | None, message: str) -> None:
    with pytest.raises(AuthenticationFailed) as err:
        parse_keystore(DEMO).authenticate(header)
    assert str(err.value) == message


@pytest.mark.parametrize("text, problems", [
    ("short: {user: a, tenant: t}\n",
     ["entry 1 (user a): the API key must be at least 8 characters without whitespace"]),
    ("'key with space': {user: a, tenant: t}\n",
     ["entry 1 (user a): the API key must be at least 8 characters without whitespace"]),
    ("12345678: {user: a, tenant: t}\n", ["entry 1 (user a): the API key must be a string (quote it in YAML)"]),
    ("good-key-1: {user: a, tenant: t, groups: eng}\n", ["entry 1 (user a).groups: Input should be a valid list"]),
    ("good-key-1: {user: a, tenant: t, group: [eng]}\n", ["entry 1 (user a).group: Extra inputs are not permitted"]),
    ("good-key-1: {user: a}\ngood-key-2: {tenant: t, user: 7}\n",
     ["entry 1 (user a).tenant: Field required", "entry 2.user: Input should be a valid string"]),
    ("good-key-1: {user: a, tenant: ''}\n", ["entry 1 (user a).tenant: String should have at least 1 character"]),
    ("good-key-1: [a, b]\n", ["entry 1: Input should be a valid dictionary or instance of KeyEntry"]),
    ("good-key-1: {user: a, tenant: t}\ngood-key-1: {user: b, tenant: t}\n",
     ["entry 2 (line 2): the same API key is listed twice"]),
    ("- a\n- b\n", ["expected a mapping of API key -> {user, tenant, groups}"]),
    ("good-key-1: {user: a, tenant: t\n", ["line 2: not valid YAML: expected ',' or '}', but got '<stream end>'"]),
    ("good-key-1: {user: a, tenant: " + "x" * 256 + "}\n",
     ["entry 1 (user a): access name longer than 255 bytes: '" + "x" * 40 + "'..."]),
], ids=["too-short", "whitespace", "not-a-string", "groups-not-list", "typo-field", "every-bad-entry",
        "empty-tenant", "entry-not-mapping", "duplicate-key", "not-a-mapping", "bad-yaml", "tenant-too-long"])
def test_bad_entries_are_each_named_and_keys_never_shown(text: str, problems: list[str]) -> None:
    with pytest.raises(SpecError) as err:
        parse_keystore(text, source="keys.yaml")
    assert err.value.ref == "keys.yaml"
    assert [str(p) for p in err.value.problems] == problems
    for secret in ("good-key-1", "good-key-2", "short", "key with space"):
        assert secret not in str(err.value)


def test_empty_store_admits_nobody() -> None:
    store = parse_keystore("")
    assert len(store) == 0
    with pytest.raises(AuthenticationFailed):
        store.authenticate("Bearer anything-at-all")


def test_the_principal_is_the_one_retrieval_filters_on() -> None:
    p = parse_keystore(DEMO).authenticate("Bearer demo-key-gina")
    assert for_principal(p) == for_principal(Principal("globex", ("all",)))


def test_bearer_key() -> None:
    assert bearer_key("Bearer  abc.def-ghi ") == "abc.def-ghi"


def test_identity_loads_and_reloads_the_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(DEMO)
    ident = Identity(path)
    assert ident.authenticate("Bearer demo-key-alice").user == "alice"
    assert ident.reload_if_changed() is False
    path.write_text("rotated-key-1: {user: alice, tenant: acme, groups: [eng]}\n")
    os.utime(path, ns=(1, 1))  # a distinct mtime even on coarse clocks
    assert ident.reload_if_changed() is True
    assert ident.authenticate("Bearer rotated-key-1").groups == ("eng",)
    with pytest.raises(AuthenticationFailed):
        ident.authenticate("Bearer demo-key-alice")
    path.write_text("rotated-key-1: {user: alice}\n")
    os.utime(path, ns=(2, 2))
    assert ident.reload_if_changed() is False  # a bad file keeps the last good store
    assert ident.last_error is not None and "tenant: Field required" in str(ident.last_error)
    assert ident.authenticate("Bearer rotated-key-1").user == "alice"


def test_load_keystore_names_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        load_keystore(tmp_path / "missing.yaml")
    assert str(err.value).startswith(f"{tmp_path / 'missing.yaml'}: cannot read the key store: ")


def test_the_example_apps_demo_keys_are_a_valid_store() -> None:
    import yaml

    repo = Path(__file__).resolve().parents[3]
    docs = list(yaml.safe_load_all((repo / "examples" / "agentapp.yaml").read_text()))
    secret = next(d for d in docs if d and d.get("kind") == "Secret" and d["metadata"]["name"] == "agentfleet-demo-keys")
    store = parse_keystore(secret["stringData"]["keys.yaml"])
    assert store.authenticate("Bearer demo-key-gina") == Principal("globex", ("all",), user="gina")


# --- delegation: a delegating key acting on behalf of its app's end user ----------------------------------------

DELEGATING = """\
key-app-a-delegates: {user: app-a, tenant: acme, groups: [eng, all], delegate: true}
key-app-c-plain-01: {user: app-c, tenant: acme, groups: [eng, all]}
"""
OBO_USER, OBO_TENANT, OBO_GROUPS = ("X-Agentfleet-On-Behalf-Of-User", "X-Agentfleet-On-Behalf-Of-Tenant",
                                    "X-Agentfleet-On-Behalf-Of-Groups")


def _effective(key: str, headers) -> Principal:
    """What the runtime's server derives: the key's caller, then the on-behalf-of rules."""
    return delegated_principal(parse_keystore(DELEGATING).caller(f"Bearer {key}"), headers)


def _obo(user: str | None = "alice", tenant: str | None = "acme", groups: str | None = "eng,finance") -> dict:
    return {k: v for k, v in ((OBO_USER, user), (OBO_TENANT, tenant), (OBO_GROUPS, groups)) if v is not None}


@pytest.mark.parametrize("key, headers, principal", [
    ("key-app-a-delegates", {}, Principal("acme", ("all", "eng"), user="app-a")),
    ("key-app-a-delegates", {"X-Other": "1"}, Principal("acme", ("all", "eng"), user="app-a")),
    ("key-app-c-plain-01", {}, Principal("acme", ("all", "eng"), user="app-c")),
    ("key-app-a-delegates", _obo(), Principal("acme", ("eng",), user="alice")),
    ("key-app-a-delegates", _obo(groups="all,eng,admin"), Principal("acme", ("all", "eng"), user="alice")),
    ("key-app-a-delegates", _obo(groups=""), Principal("acme", (), user="alice")),
    ("key-app-a-delegates", {k.lower(): v for k, v in _obo(user="J%C3%BCrgen%2C%20Sr").items()},
     Principal("acme", ("eng",), user="Jürgen, Sr")),
], ids=["own-identity", "unrelated-headers", "plain-key-own-identity", "narrowed-to-the-keys-groups",
        "cannot-widen", "no-groups", "percent-encoded-lowercase-names"])
def test_a_delegating_key_acts_for_its_user_only_within_its_grant(key, headers, principal) -> None:
    got = _effective(key, headers)
    assert (got.user, got.tenant, got.groups) == (principal.user, principal.tenant, principal.groups)


@pytest.mark.parametrize("key, headers, error, message", [
    ("key-app-c-plain-01", _obo(), "DelegationRefused", "may not act on behalf of another user"),
    ("key-app-c-plain-01", {OBO_USER: "alice"}, "DelegationRefused", "may not act on behalf of another user"),
    ("key-app-a-delegates", _obo(tenant="globex"), "DelegationRefused", "only for users of its own tenant"),
    ("key-app-a-delegates", _obo(tenant=None), "DelegationRefused", "missing X-Agentfleet-On-Behalf-Of-Tenant"),
    ("key-app-a-delegates", _obo(groups=None), "DelegationRefused", "missing X-Agentfleet-On-Behalf-Of-Groups"),
    ("key-app-a-delegates", _obo(user=""), "DelegationRefused", "is empty"),
    ("key-app-a-delegates", {**_obo(), "X-Agentfleet-On-Behalf-Of-Role": "admin"}, "InvalidRequest",
     "unknown on-behalf-of header"),
    ("key-app-a-delegates", [*_obo().items(), (OBO_USER, "mallory")], "InvalidRequest", "more than once"),
    ("key-app-a-delegates", _obo(user="%FF"), "InvalidRequest", "not percent-encoded UTF-8"),
    ("key-app-nobody-0001", _obo(), "AuthenticationFailed", "invalid API key"),
], ids=["plain-key-refused", "plain-key-one-header-refused", "other-tenant", "no-tenant", "no-groups-header",
        "no-user", "unknown-header", "header-twice", "bad-encoding", "bad-key-is-401-first"])
def test_on_behalf_of_headers_outside_the_grant_are_refused(key, headers, error, message) -> None:
    class Multi:  # a request's headers: the same name may come twice
        def __init__(self, items):
            self._items = list(items.items()) if isinstance(items, dict) else list(items)

        def items(self):
            return self._items

    with pytest.raises(Exception) as err:
        _effective(key, Multi(headers))
    assert type(err.value).__name__ == error
    assert message in str(err.value)
    assert "globex" not in str(err.value) and key not in str(err.value)


def test_identity_applies_the_delegation_rules(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(DELEGATING)
    ident = Identity(path)
    assert ident.authenticate("Bearer key-app-a-delegates", _obo()) == Principal("acme", ("eng",), user="alice")
    assert ident.authenticate("Bearer key-app-a-delegates") == Principal("acme", ("all", "eng"), user="app-a")


def test_delegate_must_be_a_boolean() -> None:
    with pytest.raises(SpecError) as err:
        parse_keystore("key-app-a-delegates: {user: a, tenant: t, delegate: sometimes}\n", source="keys.yaml")
    assert "entry 1 (user a).delegate" in str(err.value)
