"""A URL source (`s3://bucket/prefix`, `gs://bucket/prefix`, `https://host/doc.md`, `https://host/corpus.tar.gz`)
as a plan: which listed objects worker i of P fetches, under which relative path, and what is reported instead of
fetched. Worker i takes the same slice a directory source gives it (`corpus.slice_of` on the relative path) plus
every `_access.yaml` sidecar, so access resolves exactly as it does for a mounted directory. Pure: listing and
fetching are `agentfleet.retrieval.remote`'s."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Iterable

from .access import SIDECAR
from .corpus import SkippedDocument, slice_of
from .parse import FORMATS

__all__ = ["SourceURL", "RemoteObject", "FetchPlan", "FetchLimits", "SourceURLError", "parse_source_url",
           "relative_path", "plan_fetch", "is_url", "ARCHIVE_SUFFIXES", "archive_member_path", "BROKEN_SIDECAR"]

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
# Written in place of a sidecar that could not be fetched: it does not parse, so its directory is skipped. Leaving
# the sidecar out instead would silently widen access to the parent's rules or the defaults.
BROKEN_SIDECAR = b"sidecar-not-fetched: over the per-object size limit\n"


class SourceURLError(ValueError):
    """A source URL that names nothing we can read."""


@dataclass(frozen=True)
class FetchLimits:
    """Bounds on what one worker writes to its temporary directory (an emptyDir in the Job)."""

    max_object_bytes: int = 64 * 1024 * 1024
    max_total_bytes: int = 4 * 1024 * 1024 * 1024
    timeout_s: float = 60.0  # per request (connect and each read)
    max_objects: int = 1_000_000


@dataclass(frozen=True)
class SourceURL:
    url: str
    scheme: str        # s3 | gs | https | http
    bucket: str        # bucket (s3, gs) or host[:port] (http)
    prefix: str        # key prefix ("" or ending in "/") for s3/gs; the path for http

    @property
    def is_archive(self) -> bool:
        return self.scheme in ("http", "https") and self.prefix.lower().endswith(ARCHIVE_SUFFIXES)


@dataclass(frozen=True)
class RemoteObject:
    key: str
    size: int | None = None


@dataclass
class FetchPlan:
    fetch: list[tuple[str, str]] = field(default_factory=list)  # (key, relative path)
    skipped: list[SkippedDocument] = field(default_factory=list)
    broken_sidecars: list[str] = field(default_factory=list)  # written as BROKEN_SIDECAR, never left out
    listed: int = 0


def is_url(source: str) -> bool:
    return "://" in source


def parse_source_url(url: str) -> SourceURL:
    # Split by hand (scheme://netloc/path?query#fragment): this room stays free of urllib, an I/O package.
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("s3", "gs", "http", "https"):
        raise SourceURLError(f"{url}: unsupported scheme {scheme!r} (use s3://, gs://, https://)")
    rest, has_fragment, _ = rest.partition("#")
    rest, has_query, _ = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    path = slash + path
    if not netloc:
        raise SourceURLError(f"{url}: no {'host' if scheme.startswith('http') else 'bucket'}")
    if scheme in ("s3", "gs"):
        if has_query or has_fragment:
            raise SourceURLError(f"{url}: a bucket URL takes no query or fragment")
        prefix = path.lstrip("/")
        # `s3://b/docs` and `s3://b/docs/` both mean the objects under docs/ (never docs-old/...).
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return SourceURL(url, scheme, netloc, prefix)
    path = path or "/"
    name = path.rsplit("/", 1)[-1].lower()
    if not name.endswith(ARCHIVE_SUFFIXES) and "." + name.rsplit(".", 1)[-1] not in FORMATS:
        raise SourceURLError(
            f"{url}: an http(s) source is one document ({', '.join(sorted(FORMATS))}) or an archive "
            f"({', '.join(ARCHIVE_SUFFIXES)}) of a source directory")
    return SourceURL(url, scheme, netloc, path)


def relative_path(key: str, prefix: str) -> str | None:
    """The path of an object below the prefix, or None when it is not a plain file we may write: directory
    markers, hidden entries (as a directory walk skips them) and anything that could leave the directory."""
    if not key.startswith(prefix):
        return None
    rel = key[len(prefix):]
    if not rel or rel.endswith("/") or "\\" in rel or "\x00" in rel:
        return None
    parts = rel.split("/")
    if any(p in ("", ".", "..") or p.startswith(".") for p in parts):
        return None
    return str(PurePosixPath(*parts))


def archive_member_path(name: str) -> str | None:
    """The path of an archive member inside the source directory, or None when it must not be extracted."""
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    if name.startswith("/"):
        return None
    return relative_path(name, "")


def plan_fetch(objects: Iterable[RemoteObject], *, prefix: str, worker: int, workers: int,
               limits: FetchLimits = FetchLimits()) -> FetchPlan:
    """Worker `worker`'s objects and every sidecar, in key order. An object over the size limit or of an unsupported
    format is reported as skipped (a too-large sidecar skips its directory: it could narrow access, so it is never
    ignored)."""
    if workers < 1 or not 0 <= worker < workers:
        raise ValueError(f"worker index {worker} is outside 0..{workers - 1}")
    plan = FetchPlan()
    for obj in sorted(objects, key=lambda o: o.key):
        plan.listed += 1
        rel = relative_path(obj.key, prefix)
        if rel is None:
            continue
        is_sidecar = rel.rsplit("/", 1)[-1] == SIDECAR
        if not is_sidecar and slice_of(rel, workers) != worker:
            continue
        if not is_sidecar:
            name = rel.rsplit("/", 1)[-1]
            ext = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
            if ext not in FORMATS:
                # Reported as a directory source reports it, without spending the bandwidth.
                plan.skipped.append(SkippedDocument(rel, f"unsupported format {ext or '(no extension)'}"))
                continue
        if obj.size is not None and obj.size > limits.max_object_bytes:
            plan.skipped.append(SkippedDocument(
                rel, f"{obj.size} bytes is over the per-object limit of {limits.max_object_bytes}",
                is_document=not is_sidecar))
            if is_sidecar:
                plan.broken_sidecars.append(rel)
            continue
        plan.fetch.append((obj.key, rel))
    return plan
