"""The API key store, pure: YAML text (API key -> {user, tenant, groups, delegate}) -> a validated store that
turns an Authorization header into the caller: its Principal, and whether it may act on behalf of other users
(`delegate: true`, for another agent calling this app; the rules are delegation.py's). Keys are held only as
SHA-256 digests and matched with hmac.compare_digest; no error message, path or log line ever contains a key. The
Principal is the one retrieval filters on, so nothing after authentication (a request body, a tool argument, a
model's output) can widen it."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any, Collection, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import AuthenticationFailed, Problem, SpecError
from ..retrieval.filters import Principal

__all__ = ["KeyEntry", "KeyStore", "Caller", "parse_keystore", "bearer_key", "MIN_KEY_LENGTH"]

MIN_KEY_LENGTH = 8
_ABSENT = hashlib.sha256(b"agentfleet: no such key").digest()


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    user: str = Field(min_length=1)
    tenant: str = Field(min_length=1)
    groups: list[str] = Field(default_factory=list)
    delegate: bool = Field(default=False, description=(
        "This key belongs to another agent that may act on behalf of its users (on-behalf-of headers), narrowed "
        "to this entry's tenant and groups."))


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice (PyYAML would silently keep the last one)."""


def _mapping_unique(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for i, (key_node, _) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise SpecError("key store", [Problem(f"entry {i + 1} (line {key_node.start_mark.line + 1})",
                                                  "the same API key is listed twice")])
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_unique)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", errors="surrogatepass")).digest()


@dataclass(frozen=True)
class Caller:
    """An authenticated key: its own principal, and whether it may act on behalf of other users."""

    principal: Principal
    may_delegate: bool = False


@dataclass(frozen=True)
class _Known:
    digest: bytes
    caller: Caller


class KeyStore:
    def __init__(self, entries: Mapping[str, Principal], *, delegates: Collection[str] = ()):
        """`delegates`: the keys (of `entries`) that may act on behalf of other users."""
        self._by_digest = {_digest(k): _Known(_digest(k), Caller(p, k in delegates)) for k, p in entries.items()}

    def __len__(self) -> int:
        return len(self._by_digest)

    def _known(self, key: str) -> _Known:
        """The entry of a key. The dict is indexed by the digest (an attacker learns nothing from its timing: they
        cannot choose digests of keys they don't know); the final comparison is constant-time."""
        presented = _digest(key)
        known = self._by_digest.get(presented)
        if not hmac.compare_digest(known.digest if known else _ABSENT, presented) or known is None:
            raise AuthenticationFailed("invalid API key")
        return known

    def principal_for(self, key: str) -> Principal:
        """The principal a key authenticates."""
        return self._known(key).caller.principal

    def caller(self, authorization: str | None) -> Caller:
        """The key of an Authorization header, or AuthenticationFailed."""
        return self._known(bearer_key(authorization)).caller

    def authenticate(self, authorization: str | None) -> Principal:
        return self.caller(authorization).principal


def bearer_key(authorization: str | None) -> str:
    """The key of an `Authorization: Bearer <key>` header (the scheme is case-insensitive)."""
    if not authorization or not authorization.strip():
        raise AuthenticationFailed("missing API key: send the header `Authorization: Bearer <key>`")
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise AuthenticationFailed("malformed Authorization header: expected `Bearer <key>`")
    return key


def _problems(where: str, err: ValidationError) -> list[Problem]:
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        out.append(Problem(f"{where}.{loc}" if loc else where, e["msg"]))
    return out


def parse_keystore(text: str, *, source: str = "key store") -> KeyStore:
    """Validate every entry and report all bad ones at once, each named by its position and user (never by its
    key): `keys.yaml: entry 3 (user bob).groups: Input should be a valid list`."""
    try:
        doc = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except SpecError as e:
        raise SpecError(source, e.problems) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else ""
        raise SpecError(source, [Problem(where, f"not valid YAML: {getattr(e, 'problem', None) or e}")]) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise SpecError(source, [Problem("", "expected a mapping of API key -> {user, tenant, groups}")])
    problems: list[Problem] = []
    entries: dict[str, Principal] = {}
    delegates: set[str] = set()
    for i, (key, raw) in enumerate(doc.items(), start=1):
        user = raw.get("user") if isinstance(raw, dict) and isinstance(raw.get("user"), str) else None
        where = f"entry {i}" + (f" (user {user})" if user else "")
        if not isinstance(key, str):
            problems.append(Problem(where, "the API key must be a string (quote it in YAML)"))
            continue
        if len(key) < MIN_KEY_LENGTH or any(c.isspace() for c in key):
            problems.append(Problem(where, f"the API key must be at least {MIN_KEY_LENGTH} characters without "
                                           "whitespace"))
            continue
        try:
            entry = KeyEntry.model_validate(raw)
        except ValidationError as e:
            problems.extend(_problems(where, e))
            continue
        try:
            entries[key] = Principal(entry.tenant, tuple(entry.groups), user=entry.user)
        except (TypeError, ValueError) as e:
            problems.append(Problem(where, str(e)))
            continue
        if entry.delegate:
            delegates.add(key)
    if problems:
        raise SpecError(source, problems)
    return KeyStore(entries, delegates=delegates)
