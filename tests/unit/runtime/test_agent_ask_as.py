"""`agentfleet ask --as USER`: the user's key comes from a key store (--keys, $AGENTFLEET_KEYS, or the keys.yaml
`agentfleet up` writes under .agentfleet/<app>/); an unknown user is a clear error that names no key."""

import pytest

from agentfleet.runtime.cli import AskError, key_for_user

KEYS = ("demo-key-alice: {user: alice, tenant: acme, groups: [eng, all]}\n"
        "demo-key-bob: {user: bob, tenant: acme, groups: [finance, all]}\n")


def test_key_from_an_explicit_key_store(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(KEYS)
    assert key_for_user("bob", str(path)) == "demo-key-bob"


def test_key_from_the_run_directory_of_agentfleet_up(tmp_path):
    run = tmp_path / ".agentfleet" / "assistant"
    run.mkdir(parents=True)
    (run / "keys.yaml").write_text(KEYS)
    assert key_for_user("alice", None, cwd=tmp_path) == "demo-key-alice"


def test_unknown_user_names_the_users_not_the_keys(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(KEYS)
    with pytest.raises(AskError) as e:
        key_for_user("mallory", str(path))
    assert str(e.value) == f"unknown user 'mallory' in {path} (users there: alice, bob)"
    assert "demo-key" not in str(e.value)


def test_no_key_store_or_several_run_directories_is_an_error(tmp_path):
    with pytest.raises(AskError, match="--as needs a key store"):
        key_for_user("alice", None, cwd=tmp_path)
    for app in ("a", "b"):
        (tmp_path / ".agentfleet" / app).mkdir(parents=True)
        (tmp_path / ".agentfleet" / app / "keys.yaml").write_text(KEYS)
    with pytest.raises(AskError, match="several run directories"):
        key_for_user("alice", None, cwd=tmp_path)


def test_ask_cli_reports_an_unknown_user(tmp_path, capsys, monkeypatch):
    from agentfleet.cli import main

    path = tmp_path / "keys.yaml"
    path.write_text(KEYS)
    monkeypatch.setenv("AGENTFLEET_KEYS", str(path))
    assert main(["ask", "hi", "--as", "mallory", "--keys", str(path)]) == 2
    assert "unknown user 'mallory'" in capsys.readouterr().err
