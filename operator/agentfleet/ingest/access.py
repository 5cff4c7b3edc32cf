"""Who may read a document, resolved from (in order) its own front matter, the `_access.yaml` sidecar of the
nearest directory at or above it that has a matching pattern, then the VectorIndex's access defaults. A sidecar is
a YAML list of `{pattern, tenant, groups}`; patterns are globs relative to the sidecar's directory (`**` crosses
directories, `*` does not; a pattern without `/` matches a file name at any depth, as in .gitignore); the first
matching entry of the nearest sidecar with a match wins. Nothing resolvable means skipped, never public,
unless the spec says `allowPublic`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePosixPath
from typing import Any, Mapping, Sequence

__all__ = ["Access", "AccessRule", "AccessError", "resolve_access", "parse_sidecar", "parse_access_fields",
           "glob_match", "SIDECAR"]

SIDECAR = "_access.yaml"


class AccessError(ValueError):
    """Access metadata that is present but malformed: the document is skipped and the reason reported."""


@dataclass(frozen=True)
class Access:
    tenant: str | None
    groups: tuple[str, ...]
    public: bool = False
    origin: str = ""  # "front matter", "<dir>/_access.yaml", "defaults", "public default"


@dataclass(frozen=True)
class AccessRule:
    pattern: str
    tenant: str | None
    groups: tuple[str, ...] | None


def _names(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        # `groups: eng` is a common slip for `groups: [eng]`; one name is unambiguous.
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise AccessError(f"{what} must be a list of strings, got {value!r}")


def parse_access_fields(meta: Mapping[str, Any], where: str) -> tuple[str | None, tuple[str, ...] | None]:
    """(tenant, groups) from a front-matter or sidecar mapping; None where the key is absent."""
    tenant = meta.get("tenant")
    if tenant is not None and not isinstance(tenant, str):
        # YAML turns `tenant: 2024` or `tenant: yes` into non-strings; refuse rather than guess.
        raise AccessError(f"{where}: tenant must be a string, got {tenant!r}")
    groups = _names(meta["groups"], f"{where}: groups") if "groups" in meta else None
    return tenant, groups


def parse_sidecar(data: Any, where: str) -> list[AccessRule]:
    if data is None:
        return []
    if not isinstance(data, list):
        raise AccessError(f"{where}: expected a list of {{pattern, tenant, groups}}")
    rules = []
    for i, entry in enumerate(data):
        if not isinstance(entry, Mapping) or not isinstance(entry.get("pattern"), str):
            raise AccessError(f"{where}: entry {i + 1} needs a string 'pattern'")
        tenant, groups = parse_access_fields(entry, f"{where}: entry {i + 1}")
        rules.append(AccessRule(entry["pattern"], tenant, groups))
    return rules


@lru_cache(maxsize=1024)
def _glob_regex(pattern: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        out.append({"*": "[^/]*", "?": "[^/]"}.get(ch, re.escape(ch)))
        i += 1
    return re.compile("".join(out) + r"\Z")


def glob_match(pattern: str, relpath: str) -> bool:
    """Like .gitignore: a pattern without `/` matches a file name at any depth; with one, the relative path."""
    pattern = pattern[2:] if pattern.startswith("./") else pattern
    if "/" not in pattern:
        relpath = relpath.rsplit("/", 1)[-1]
    return _glob_regex(pattern).match(relpath) is not None


def _nearest_rule(relpath: str, sidecars: Mapping[str, Sequence[AccessRule]]) -> tuple[AccessRule | None, str]:
    parts = PurePosixPath(relpath).parts
    for depth in range(len(parts) - 1, -1, -1):
        directory = "/".join(parts[:depth])
        below = "/".join(parts[depth:])
        for rule in sidecars.get(directory) or ():
            if glob_match(rule.pattern, below):
                return rule, f"{directory + '/' if directory else ''}{SIDECAR}"
    return None, ""


def resolve_access(relpath: str, front_matter: Mapping[str, Any] | None,
                   sidecars: Mapping[str, Sequence[AccessRule]], *, default_tenant: str | None = None,
                   default_groups: Sequence[str] = (), allow_public: bool = False) -> Access | None:
    """`sidecars` maps a directory (relative, "" for the root) to its parsed rules. Front matter beats a sidecar;
    the nearest directory with a matching rule beats those above it, and only that one rule is used. Front matter
    that names groups but no tenant takes the tenant from the rule or the defaults. A tenant without groups means
    every member of the tenant. None: skip the document."""
    tenant: str | None = None
    groups: tuple[str, ...] | None = None
    origin = ""
    if front_matter:
        tenant, groups = parse_access_fields(front_matter, "front matter")
        if tenant is not None or groups is not None:
            origin = "front matter"
    if tenant is None or groups is None:
        rule, where = _nearest_rule(relpath, sidecars)
        if rule is not None:
            if tenant is None:
                tenant = rule.tenant
                if groups is None:
                    groups = rule.groups
            elif groups is None and rule.tenant in (None, tenant):
                # Groups named for another tenant never carry over to this one.
                groups = rule.groups
            origin = origin or where
    if tenant is None and default_tenant is not None:
        tenant = default_tenant
        if groups is None:
            groups = tuple(default_groups)
        origin = origin or "defaults"
    if tenant is None:
        if allow_public and groups is None:
            return Access(None, (), public=True, origin="public default")
        return None
    return Access(tenant, tuple(groups or ()), origin=origin)
