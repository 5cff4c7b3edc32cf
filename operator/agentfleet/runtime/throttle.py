"""Failed-authentication throttling, pure (time is a parameter): fixed one-minute windows counting failed
attempts per client address and per key prefix. An address over its limit gets 429 for every request until the
window ends, valid key or not, so a throttled client learns nothing about the keys it tries. A key prefix over its
limit is refused only from addresses that failed in this window: whoever guesses at one key is stopped, while its
owner (an address with no failures) keeps working, so the throttle cannot be used to lock a user out. Each limit
reports the first refusal of a window once (for one log line), and the tables are bounded so a flood of distinct
addresses cannot grow them without end. The prefix is kept only as a digest: nothing here holds a key."""

from __future__ import annotations

import hashlib
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

__all__ = ["FailedAuthThrottle", "Refusal", "key_prefix_digest", "client_address", "KEY_PREFIX_CHARS"]

KEY_PREFIX_CHARS = 8  # the key store's MIN_KEY_LENGTH: every valid key has this many characters
WINDOW_S = 60.0
MAX_TRACKED = 50_000  # per table; the oldest windows are dropped first

Limit = Literal["address", "key_prefix"]


@dataclass(frozen=True)
class Refusal:
    by: Limit
    retry_after_s: float
    is_first_in_window: bool  # log this one; the rest of the window is only counted


@dataclass
class _Window:
    start_s: float
    failures: int = 0
    is_reported: bool = False


def key_prefix_digest(key: str) -> str:
    """What identifies a key's prefix in memory and in logs: a short digest, never the characters."""
    return hashlib.sha256(key[:KEY_PREFIX_CHARS].encode("utf-8", "surrogatepass")).hexdigest()[:12]


def client_address(peer: str | None, forwarded_for: str | None, trusted: list[str]) -> str:
    """The client's address: the TCP peer, unless the peer is a trusted proxy (a CIDR in `trusted`); then the
    right-most X-Forwarded-For entry that is not itself a trusted proxy (entries further left are whatever the
    client chose to send, so they are never believed)."""
    nets = []
    for cidr in trusted:
        try:
            nets.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            continue

    def is_trusted(addr: str) -> bool:
        try:
            ip = ipaddress.ip_address(addr.strip())
        except ValueError:
            return False
        return any(ip in n for n in nets)

    addr = peer or "unknown"
    if not nets or not forwarded_for or not is_trusted(addr):
        return addr
    for hop in reversed([h.strip() for h in forwarded_for.split(",")][-32:]):
        if not hop:
            continue
        if not is_trusted(hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return addr  # a malformed hop: fall back to the proxy itself
        addr = hop
    return addr


class FailedAuthThrottle:
    def __init__(self, *, per_address_per_minute: int, per_key_prefix_per_minute: int,
                 window_s: float = WINDOW_S, max_tracked: int = MAX_TRACKED):
        self.limits: dict[Limit, int] = {"address": per_address_per_minute, "key_prefix": per_key_prefix_per_minute}
        self.window_s = window_s
        self.max_tracked = max_tracked
        self._tables: dict[Limit, OrderedDict[str, _Window]] = {"address": OrderedDict(), "key_prefix": OrderedDict()}

    def _window(self, by: Limit, who: str, now_s: float, *, create: bool) -> _Window | None:
        table = self._tables[by]
        w = table.get(who)
        if w is not None and now_s - w.start_s >= self.window_s:
            del table[who]
            w = None
        if w is None and create:
            w = table[who] = _Window(now_s)
            while len(table) > self.max_tracked:
                table.popitem(last=False)
        return w

    def _over(self, by: Limit, who: str | None, now_s: float) -> Refusal | None:
        if who is None or self.limits[by] <= 0:
            return None
        w = self._window(by, who, now_s, create=False)
        if w is None or w.failures < self.limits[by]:
            return None
        first = not w.is_reported
        w.is_reported = True
        return Refusal(by, max(w.start_s + self.window_s - now_s, 0.0), first)

    def check(self, address: str, prefix: str | None, now_s: float) -> Refusal | None:
        """Before authenticating: a refusal when this request must be answered 429 without looking at its key."""
        refused = self._over("address", address, now_s)
        if refused is not None:
            return refused
        if prefix is not None and self._window("address", address, now_s, create=False) is not None:
            return self._over("key_prefix", prefix, now_s)  # only addresses that failed in this window
        return None

    def failed(self, address: str, prefix: str | None, now_s: float) -> None:
        if not any(self.limits.values()):
            return
        # The address is counted even without its own limit: the prefix limit applies to addresses that failed.
        w = self._window("address", address, now_s, create=True)
        assert w is not None
        w.failures += 1
        if prefix is not None and self.limits["key_prefix"] > 0:
            w = self._window("key_prefix", prefix, now_s, create=True)
            assert w is not None
            w.failures += 1
