"""The security boundary of retrieval: who may read a chunk (`stored_access`) and the one filter expression that
says so inside the vector search (`for_principal`). Nothing else builds a permission filter.

Representation, chosen by measurement (shared/facts.md and `agentfleet bench retrieval`): on milvus-lite an ARRAY
or JSON `*_contains_any` filter costs 20-30x an unfiltered search, while scalar VARCHAR shapes filter as fast as the
tenant key. So a chunk stores its tenant as a VARCHAR partition key and its groups as one delimited VARCHAR, and
the filter is `tenant in [...] and (groups like "%|g1|%" or ...)`. Milvus string literals and LIKE patterns would
otherwise need escaping (quotes, backslashes, `%`, `_`, the delimiter) that a single mistake turns into a widened
filter, and milvus-lite 3.2 ignores pymilvus expression templates (`filter_params`). Instead every tenant and
group name is stored and compared as the lowercase hex of its UTF-8 bytes: the literals we emit contain only
`[0-9a-f|%*]`, so no name, however hostile, can reach the expression grammar. `*` is never a hex digit: it marks
"every member of the tenant" (a document with a tenant and no groups) and, as a tenant, a public document (only
indexed when a VectorIndex sets `access.allowPublic`). Names are compared exactly (no case folding or Unicode
normalisation): `Eng` and `eng` are different groups."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

__all__ = ["Principal", "Filter", "StoredAccess", "for_principal", "stored_access", "encode_name",
           "decode_name", "groups_signature", "WILDCARD", "MAX_NAME_BYTES", "MAX_GROUPS"]

WILDCARD = "*"
# Bounds keep the stored VARCHARs inside their declared max_length (store.py): hex doubles the bytes.
MAX_NAME_BYTES = 255
MAX_GROUPS = 64
GROUPS_FIELD_MAX = MAX_GROUPS * (2 * MAX_NAME_BYTES + 1) + 1
TENANT_FIELD_MAX = 2 * MAX_NAME_BYTES


def encode_name(name: str) -> str:
    """A tenant or group name as an alphabet-safe token: lowercase hex of its UTF-8 bytes."""
    if not isinstance(name, str):
        raise TypeError(f"access names are strings, got {type(name).__name__}")
    raw = name.encode("utf-8", errors="surrogatepass")
    if len(raw) > MAX_NAME_BYTES:
        raise ValueError(f"access name longer than {MAX_NAME_BYTES} bytes: {name[:40]!r}...")
    return raw.hex()


def decode_name(token: str) -> str:
    return bytes.fromhex(token).decode("utf-8", errors="surrogatepass")


def _unique(names: Iterable[str]) -> tuple[str, ...]:
    out = tuple(sorted(set(names)))
    if len(out) > MAX_GROUPS:
        raise ValueError(f"at most {MAX_GROUPS} groups, got {len(out)}")
    return out


@dataclass(frozen=True)
class Principal:
    """Who is asking: one tenant and the groups they belong to. Built only from an authenticated identity (the
    runtime's key store); `user` names the caller for logs and usage and never takes part in a filter."""

    tenant: str
    groups: tuple[str, ...] = ()
    user: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.groups, str):
            raise TypeError("groups is a collection of names, not one string")
        object.__setattr__(self, "groups", _unique(self.groups))
        encode_name(self.tenant)
        for g in self.groups:
            encode_name(g)


@dataclass(frozen=True)
class Filter:
    """A Milvus boolean expression; `params` stays empty (milvus-lite does not apply expression templates)."""

    expr: str
    params: dict[str, object]


@dataclass(frozen=True)
class StoredAccess:
    """The access fields of one stored chunk, already encoded."""

    tenant: str
    groups: str


def stored_access(tenant: str | None, groups: Iterable[str], *, public: bool = False) -> StoredAccess:
    """Who may read a chunk. `public` (tenant None) is readable by every principal; a tenant without groups by
    every member of that tenant."""
    if public:
        if tenant is not None:
            raise ValueError("a public document has no tenant")
        return StoredAccess(WILDCARD, f"|{WILDCARD}|")
    if tenant is None:
        raise ValueError("a document needs a tenant unless it is public")
    names = _unique(groups)
    tokens = [encode_name(g) for g in names] or [WILDCARD]
    return StoredAccess(encode_name(tenant), "|" + "|".join(tokens) + "|")


def for_principal(principal: Principal) -> Filter:
    """tenant AND any-of groups, as evaluated inside the search. Public and tenant-wide chunks match through the
    `*` token; a principal with no groups sees only those."""
    if not isinstance(principal, Principal):
        raise TypeError("for_principal takes a Principal")
    tenant = encode_name(principal.tenant)
    tokens = [encode_name(g) for g in principal.groups] + [WILDCARD]
    groups = " or ".join(f'groups like "%|{t}|%"' for t in tokens)
    return Filter(expr=f'tenant in ["{tenant}", "{WILDCARD}"] and ({groups})', params={})


def groups_signature(principal: Principal) -> str:
    """A stable digest of (tenant, groups) for cache keys: different permissions never share a key."""
    h = hashlib.sha256()
    h.update(encode_name(principal.tenant).encode())
    for g in principal.groups:
        h.update(b"|" + encode_name(g).encode())
    return h.hexdigest()
