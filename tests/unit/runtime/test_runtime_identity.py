"""API key -> Principal: the key store's validation, lookup and reload (pure parsing; the file edge on tmp_path)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agentfleet.errors import AuthenticationFailed, SpecError
from agentfleet.retrieval.filters import Principal, for_principal
from agentfleet.runtime.identity import Identity, load_keystore
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
