"""Failed-authentication throttling: the pure limiter (time is a parameter) and the client address behind trusted
proxies as tables, then the runtime itself: 429 with Retry-After once a client address or a key prefix is over
its limit, valid keys from other clients (and the owner of an attacked key) still served, the refusals counted
in /metrics and logged once per window without the key, limits from the AgentApp spec."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agentfleet.runtime.throttle import FailedAuthThrottle, client_address, key_prefix_digest
from runtime_kit import ALICE, final, make_config, scripted, serve


def _replay(throttle: FailedAuthThrottle, events: list[tuple[float, str, str | None, bool]]) -> list[str]:
    """Each event: (time, address, prefix, is_valid_key) -> what the server would answer."""
    out = []
    for now, address, prefix, is_valid in events:
        refused = throttle.check(address, prefix, now)
        if refused is not None:
            out.append(f"429/{refused.by}/{refused.retry_after_s:g}{'/log' if refused.is_first_in_window else ''}")
        elif is_valid:
            out.append("200")
        else:
            throttle.failed(address, prefix, now)
            out.append("401")
    return out


@pytest.mark.parametrize("limits, events, expected", [
    ((2, 0), [(0, "a", "p", False), (1, "a", "p", False), (2, "a", "p", False), (3, "a", "p", False)],
     ["401", "401", "429/address/58/log", "429/address/57"]),
    ((2, 0), [(0, "a", "p", False), (1, "a", "p", False), (2, "a", "k", True), (3, "b", "k", True)],
     ["401", "401", "429/address/58/log", "200"]),
    ((2, 0), [(0, "a", "p", False), (1, "a", "p", False), (60, "a", "p", False), (61, "a", "k", True)],
     ["401", "401", "401", "200"]),
    ((0, 2), [(0, "a", "p", False), (0, "b", "p", False), (1, "a", "p", False), (1, "c", "p", True),
              (2, "c", "p", False), (3, "c", "p", True)],
     ["401", "401", "429/key_prefix/59/log", "200", "401", "429/key_prefix/57"]),
    ((0, 0), [(0, "a", "p", False)] * 5, ["401"] * 5),
    ((1, 0), [(0, "a", None, False), (1, "a", None, False)], ["401", "429/address/59/log"]),
], ids=["address-over-limit", "address-blocks-valid-keys-from-it-only", "window-ends", "prefix-only-for-failed-addresses",
        "limits-off", "missing-key-counts"])
def test_failed_auth_throttle(limits: tuple[int, int], events: list[tuple[float, str, str | None, bool]],
                              expected: list[str]) -> None:
    throttle = FailedAuthThrottle(per_address_per_minute=limits[0], per_key_prefix_per_minute=limits[1])
    assert _replay(throttle, events) == expected


def test_throttle_tables_are_bounded() -> None:
    throttle = FailedAuthThrottle(per_address_per_minute=5, per_key_prefix_per_minute=5, max_tracked=100)
    for i in range(10_000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}", f"p{i}", 0.0)
    assert all(len(t) == 100 for t in throttle._tables.values())


@pytest.mark.parametrize("peer, forwarded, trusted, expected", [
    ("10.1.2.3", "203.0.113.9", [], "10.1.2.3"),
    ("10.1.2.3", "203.0.113.9", ["10.0.0.0/8"], "203.0.113.9"),
    ("10.1.2.3", "198.51.100.1, 203.0.113.9", ["10.0.0.0/8"], "203.0.113.9"),
    ("10.1.2.3", "203.0.113.9, 10.9.9.9", ["10.0.0.0/8"], "203.0.113.9"),
    ("192.0.2.7", "203.0.113.9", ["10.0.0.0/8"], "192.0.2.7"),
    ("10.1.2.3", "not-an-ip", ["10.0.0.0/8"], "10.1.2.3"),
    ("10.1.2.3", "", ["10.0.0.0/8"], "10.1.2.3"),
    (None, None, [], "unknown"),
], ids=["untrusted-by-default", "trusted-proxy", "rightmost-untrusted-hop", "skips-trusted-hops",
        "peer-not-a-proxy", "malformed-hop", "empty-header", "no-peer"])
def test_client_address(peer: str | None, forwarded: str | None, trusted: list[str], expected: str) -> None:
    assert client_address(peer, forwarded, trusted) == expected


def test_runtime_throttles_failed_auth_per_address_and_key_prefix(tmp_path, caplog) -> None:
    auth = {"apiKeysSecretRef": {"name": "keys", "key": "keys.yaml"}, "trustedProxies": ["127.0.0.1/32"],
            "failedAttempts": {"perAddressPerMinute": 3, "perKeyPrefixPerMinute": 4}}

    async def go():
        async with scripted(lambda b, h: final("ok")) as m:
            cfg = make_config(tmp_path, large_url=m.url, app={"auth": auth})
            async with serve(cfg, tmp_path) as s:
                def chat(key: str, address: str):
                    return s.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, key,
                                  headers={"X-Forwarded-For": address})

                attacker = [await chat("key-wrong-0000", "203.0.113.9") for _ in range(5)]
                attacker_valid = await chat(ALICE, "203.0.113.9")
                other = await chat(ALICE, "198.51.100.1")
                # Guessing at alice's key prefix from two fresh addresses: the prefix goes over its limit (4) ...
                guesses = [await chat(ALICE[:8] + f"-guess-{i}", f"192.0.2.{i % 2 + 1}") for i in range(5)]
                owner = await chat(ALICE, "192.0.2.200")  # ... and alice, who never failed, is still served
                async with s.session.post(s.url + "/v1/chat/completions", json={"messages": []},
                                          headers={"Authorization": "Bearer key-wrong-0000",
                                                   "X-Forwarded-For": "203.0.113.9"}) as r:
                    retry_after = r.headers.get("Retry-After")
                metrics = (await s.get("/metrics", key=None))[1]
                return attacker, attacker_valid, other, guesses, owner, retry_after, metrics

    with caplog.at_level(logging.WARNING, logger="agentfleet.runtime"):
        attacker, attacker_valid, other, guesses, owner, retry_after, metrics = asyncio.run(go())
    assert [s for s, _ in attacker] == [401, 401, 401, 429, 429]
    assert attacker[3][1]["error"]["code"] == "too_many_failed_attempts"
    assert attacker_valid[0] == 429  # a throttled client learns nothing about the keys it tries
    assert other[0] == 200 and owner[0] == 200
    assert [s for s, _ in guesses] == [401, 401, 401, 401, 429]
    assert retry_after is not None and 1 <= int(retry_after) <= 60
    assert 'agentfleet_runtime_auth_failures_total{reason="invalid"} 7.0' in metrics
    assert 'agentfleet_runtime_auth_throttled_total{by="address"} 4.0' in metrics
    assert 'agentfleet_runtime_auth_throttled_total{by="key_prefix"} 1.0' in metrics
    logged = [r.getMessage() for r in caplog.records if "over the limit" in r.getMessage()]
    assert len(logged) == 2  # once per window per limit
    assert not any(secret in line for line in logged for secret in (ALICE, ALICE[:8], "key-wrong"))
    assert key_prefix_digest(ALICE) in logged[1]
