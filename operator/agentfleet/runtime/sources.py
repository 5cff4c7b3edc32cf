"""Cited sources, pure: the link a citation carries (`url`) and what `GET /v1/sources/{doc_id}` answers. A document
is named by ingest's document key (`ingest.pipeline.document_key`: hex of a hash of its source path, stored on every
chunk as `doc`), so the route takes no path that needs escaping and a filter literal can hold it. A citation links

- to its source itself when that is an http(s) URL,
- to the VectorIndex's source URL when that is one http(s) document (not an archive; no query, fragment or
  credentials, which could be a signed URL's secret),
- else to the runtime's own route, a path relative to the app (`/v1/sources/<doc>`), which answers the caller
  with the chunks of that document their principal may read (the retrieval filter, in the store), and for a
  document they may read nothing of the same 404 as for no document;
- a remote A2A sub-agent's citation keeps the remote's link only when it is an absolute http(s) URL (a path is
  the remote app's route, which this app's callers hold no key for).

A link is never anything but an http(s) URL or that relative path, so no `javascript:` source reaches a page as
a link."""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

from ..ingest.pipeline import document_key
from ..ingest.remote import SourceURLError, parse_source_url

__all__ = ["SOURCES_PATH", "REMOTE_PREFIX", "is_http_url", "is_document_id", "document_id", "source_path",
           "document_url", "linked", "source_view", "source_text", "prefers_text"]

SOURCES_PATH = "/v1/sources"
REMOTE_PREFIX = "a2a:"  # the id prefix of a citation from a remote A2A sub-agent (agent._renumber)
_DOC_ID = re.compile(r"[0-9a-f]{32}")
_UNSAFE = re.compile(r"[\x00-\x20\x7f\\]")
# scheme://authority[rest]; split by hand: this room is pure, and a browser ignores no character left here.
_HTTP = re.compile(r"(?i:https?)://([^/?#]*)(.*)", re.S)


def is_http_url(value: Any) -> bool:
    """An absolute http(s) URL with a host and nothing a browser would reinterpret (whitespace, control
    characters, backslashes)."""
    if not isinstance(value, str) or len(value) > 4096 or _UNSAFE.search(value):
        return False
    m = _HTTP.fullmatch(value)
    return m is not None and bool(m[1].rsplit("@", 1)[-1].split(":", 1)[0])  # a host (an [IPv6] one too)


def is_document_id(value: str) -> bool:
    return bool(_DOC_ID.fullmatch(value))


def document_id(source: str) -> str:
    return document_key(source)


def source_path(source: str) -> str:
    """The runtime's route for a document, relative to the app."""
    return f"{SOURCES_PATH}/{document_id(source)}"


def document_url(index_source_url: str | None) -> str | None:
    """The one document a VectorIndex's URL source is, when that URL may be shown to its readers."""
    if not is_http_url(index_source_url):
        return None
    assert index_source_url is not None
    try:
        src = parse_source_url(index_source_url)
    except SourceURLError:
        return None
    m = _HTTP.fullmatch(index_source_url)
    if src.is_archive or m is None or "@" in m[1] or "?" in m[2] or "#" in m[2]:
        return None
    return index_source_url


def _link(citation: Mapping[str, Any], *, index_document_url: str | None) -> str | None:
    url, source = citation.get("url"), str(citation.get("source") or "")
    if str(citation.get("id", "")).startswith(REMOTE_PREFIX):
        return url if is_http_url(url) else None
    if is_http_url(source):
        return source
    return index_document_url or source_path(source)


def linked(citations: Iterable[Mapping[str, Any]], *, index_document_url: str | None = None
           ) -> list[dict[str, Any]]:
    """The citations of an answer, each with its `url` (None: no link)."""
    return [{**c, "url": _link(c, index_document_url=index_document_url)} for c in citations]


def source_view(doc_id: str, hits: Sequence[Any], *, index_document_url: str | None, truncated: bool
                ) -> dict[str, Any]:
    """The JSON answer: the readable chunks of one document in document order (character offsets into the
    cleaned text, as ingest cut them), and where the document itself lives when that is an http(s) URL."""
    first = hits[0]
    url = first.source if is_http_url(first.source) else index_document_url
    return {"object": "agentfleet.source", "id": doc_id, "source": first.source, "title": first.title,
            "url": url, "truncated": truncated,
            "chunks": [{"id": h.id, "headings": list(h.trail), "start": h.start, "end": h.end, "text": h.text}
                       for h in hits]}


def source_text(hits: Sequence[Any]) -> str:
    """The readable text of a document: its chunks joined at their offsets (overlapping chunks share text, which
    appears once); a gap between chunks is a blank line."""
    out: list[str] = []
    end = None
    for h in sorted(hits, key=lambda h: (h.start, h.end)):
        if end is not None and h.start <= end:
            out.append(h.text[max(end - h.start, 0):] if h.end > end else "")
        else:
            if out:
                out.append("\n\n")
            out.append(h.text)
        end = h.end if end is None else max(end, h.end)
    return "".join(out)


def prefers_text(accept: str | None) -> bool:
    """text/plain when the caller asks for it and not for JSON (a browser's default Accept gets JSON)."""
    kinds = [part.split(";", 1)[0].strip().lower() for part in (accept or "").split(",")]
    return "text/plain" in kinds and "application/json" not in kinds
