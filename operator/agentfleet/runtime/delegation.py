"""Delegation, pure: another agent (an AgentApp calling this one as its a2a sub-agent) authenticates with its own
API key and names its end user in X-Agentfleet-On-Behalf-Of-User / -Tenant / -Groups (percent-encoded UTF-8,
groups comma-separated). Only a key its key store marks `delegate: true` may send them, and only within its own
grant: the tenant must be the key's, and the groups are the asserted ones that the key also holds, so a
delegation narrows and never widens (and composes: A -> B -> C narrows at each hop). Headers from any other key
are refused (403), not ignored: a caller that believes it acts for someone must learn that it does not. The
effective principal is derived in one place (server._principal through Identity), so every authenticated
endpoint applies the same rule."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote

from ..errors import DelegationRefused, InvalidRequest
from ..retrieval.filters import Principal
from .keystore import Caller

__all__ = ["delegated_principal", "on_behalf_of_headers", "ON_BEHALF_OF_USER", "ON_BEHALF_OF_TENANT",
           "ON_BEHALF_OF_GROUPS"]

ON_BEHALF_OF_USER = "X-Agentfleet-On-Behalf-Of-User"
ON_BEHALF_OF_TENANT = "X-Agentfleet-On-Behalf-Of-Tenant"
ON_BEHALF_OF_GROUPS = "X-Agentfleet-On-Behalf-Of-Groups"
_OBO_PREFIX = "x-agentfleet-on-behalf-of-"
_OBO = {h.lower(): h for h in (ON_BEHALF_OF_USER, ON_BEHALF_OF_TENANT, ON_BEHALF_OF_GROUPS)}


def on_behalf_of_headers(principal: Principal) -> dict[str, str]:
    """The end user, as a delegating caller sends them: percent-encoded UTF-8 (nothing left unescaped, so a comma
    or a non-ASCII name stays one token), groups joined by commas."""
    return {ON_BEHALF_OF_USER: quote(principal.user or "", safe=""),
            ON_BEHALF_OF_TENANT: quote(principal.tenant, safe=""),
            ON_BEHALF_OF_GROUPS: ",".join(quote(g, safe="") for g in principal.groups)}


def _asserted(headers: Any) -> dict[str, str] | None:
    """The on-behalf-of headers of a request (None: it sent none). `headers` is a Mapping or a multidict; a header
    sent twice, or one of this family we do not know, is an error rather than a guess."""
    items = headers.items() if headers is not None else ()
    out: dict[str, str] = {}
    for name, value in items:
        low = name.lower()
        if not low.startswith(_OBO_PREFIX):
            continue
        if low not in _OBO:
            raise InvalidRequest(f"unknown on-behalf-of header {name[:80]}: send {', '.join(_OBO.values())}")
        if low in out:
            raise InvalidRequest(f"{_OBO[low]} was sent more than once", param=_OBO[low])
        out[low] = value
    return out or None


def _decoded(value: str, header: str) -> str:
    try:
        return unquote(value.strip(), errors="strict")
    except UnicodeDecodeError:
        raise InvalidRequest(f"{header} is not percent-encoded UTF-8", param=header) from None


def delegated_principal(caller: Caller, headers: Any) -> Principal:
    """The effective principal of a request authenticated as `caller`: the key's own without on-behalf-of
    headers; with them (a delegating key only) the asserted user, in the key's tenant, with the asserted groups
    that the key also holds."""
    asserted = _asserted(headers)
    key = caller.principal
    if asserted is None:
        return key
    if not caller.may_delegate:
        raise DelegationRefused("this API key may not act on behalf of another user (on-behalf-of headers need a "
                                "key marked delegate: true in the key store)")
    missing = [h for low, h in _OBO.items() if low not in asserted]
    if missing:
        raise DelegationRefused(f"on-behalf-of needs all three headers; missing {', '.join(missing)}")
    user = _decoded(asserted[ON_BEHALF_OF_USER.lower()], ON_BEHALF_OF_USER)
    tenant = _decoded(asserted[ON_BEHALF_OF_TENANT.lower()], ON_BEHALF_OF_TENANT)
    raw_groups = asserted[ON_BEHALF_OF_GROUPS.lower()].strip()
    groups = [_decoded(g, ON_BEHALF_OF_GROUPS) for g in raw_groups.split(",")] if raw_groups else []
    if not user:
        raise DelegationRefused(f"{ON_BEHALF_OF_USER} is empty: a delegation names the user it acts for")
    if tenant != key.tenant:  # the tenant is not named back: a caller probing learns nothing but "no"
        raise DelegationRefused("this API key may act only for users of its own tenant")
    held = set(key.groups)
    try:
        return Principal(key.tenant, tuple(g for g in groups if g in held), user=user)
    except (TypeError, ValueError) as e:
        raise InvalidRequest(f"{ON_BEHALF_OF_GROUPS}: {e}", param=ON_BEHALF_OF_GROUPS) from None
