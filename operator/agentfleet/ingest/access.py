"""Who may read a document: the `_access.yaml` sidecar of the nearest directory at or above it that has a matching
pattern grants access (then the VectorIndex's access defaults); the document's own metadata may only narrow that
grant, never widen it or change its tenant (see `resolve_access`). A sidecar is
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
        pattern = entry["pattern"]
        if pattern.startswith("/") or ".." in pattern.replace("\\", "/").split("/"):
            raise AccessError(f"{where}: entry {i + 1}: pattern {pattern!r} must stay inside its directory "
                              f"(no '..' segment or leading '/')")
        tenant, groups = parse_access_fields(entry, f"{where}: entry {i + 1}")
        rules.append(AccessRule(pattern, tenant, groups))
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
    """`sidecars` maps a directory (relative, "" for the root) to its parsed rules. The grant is the nearest
    directory's matching rule (only that one rule), its missing tenant or groups filled from the defaults; the
    document's own metadata (front matter, HTML head <meta>, JSONL fields) may only narrow the grant: the same
    tenant, and groups that are a subset of the granted groups (a grant without groups is the whole tenant, so
    any groups narrow it). Metadata that would widen the grant or move the document to another tenant raises
    AccessError (the document is skipped and reported), so whoever can add a file to a folder cannot publish it
    beyond what the folder's owner granted. Only where nothing grants a tenant does the document's own tenant
    count (a self-described corpus). A tenant without groups means every member of the tenant. None: skip."""
    doc_tenant: str | None = None
    doc_groups: tuple[str, ...] | None = None
    if front_matter:
        doc_tenant, doc_groups = parse_access_fields(front_matter, "front matter")
    rule, where = _nearest_rule(relpath, sidecars)
    tenant = rule.tenant if rule else None
    groups = rule.groups if rule else None
    origin = where if rule else ""
    if tenant is None and default_tenant is not None:
        tenant = default_tenant
        if groups is None:
            groups = tuple(default_groups)
        origin = origin or "defaults"
    if tenant is None:
        # Nothing grants a tenant: the document describes itself, under the rule's groups when one matched.
        if doc_tenant is None:
            if allow_public and doc_groups is None and groups is None:
                return Access(None, (), public=True, origin="public default")
            return None
        if groups and doc_groups is not None and not set(doc_groups) <= set(groups):
            raise AccessError(f"front matter groups {list(doc_groups)} widen {where or 'the grant'}'s "
                              f"{list(groups)}")
        return Access(doc_tenant, tuple(doc_groups if doc_groups is not None else groups or ()),
                      origin="front matter")
    if doc_tenant is not None and doc_tenant != tenant:
        raise AccessError(f"front matter tenant {doc_tenant!r} differs from {origin}'s {tenant!r}: a document "
                          f"cannot move itself to another tenant")
    granted = tuple(groups or ())
    if doc_groups is not None:
        if granted and (not doc_groups or not set(doc_groups) <= set(granted)):
            # A grant with groups is read by members of those groups; no groups would be the whole tenant.
            raise AccessError(f"front matter groups {list(doc_groups) or '(whole tenant)'} widen {origin}'s "
                              f"{list(granted)}: a document may only narrow its directory's access")
        return Access(tenant, doc_groups, origin="front matter")
    return Access(tenant, granted, origin=origin)
