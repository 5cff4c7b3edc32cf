"""One document -> the chunks to store: clean, chunk, and give each chunk a content-derived id. The id hashes the
source path, the access it was indexed with, the chunk text, its occurrence number and the context embedded with
it (title and heading trail), so re-running ingestion upserts the same rows, a chunk with different access is a
different row, and a changed document (or a changed title: the stored vector embeds it) yields a new id set (the
store deletes the ids it no longer plans)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

from .access import Access
from .chunk import chunk_document, clean
from .corpus import Document

__all__ = ["PlannedChunk", "plan_document", "document_key", "access_signature"]

HEADING_FORMATS = ("markdown", "html")


@dataclass(frozen=True)
class PlannedChunk:
    id: str
    doc_key: str
    source: str
    title: str
    trail: tuple[str, ...]
    start: int
    end: int
    text: str
    access: Access
    embed_title: bool = True   # False when the title is only the file name (parse.ParsedDocument.title_from_name)

    @property
    def context(self) -> str:
        """The title and heading trail that give a short chunk its context: a title that is only a file name is
        left out (pyfaq: embedding `0003` above every passage cost 0.018 nDCG@10; see evaluation/bench.py)."""
        return " > ".join(dict.fromkeys(((self.title,) if self.embed_title else ()) + self.trail))

    @property
    def embed_text(self) -> str:
        """What the embedder reads: the context, a blank line, the chunk."""
        head = self.context
        return f"{head}\n\n{self.text}" if head else self.text


def document_key(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def access_signature(access: Access) -> str:
    return json.dumps([access.public, access.tenant, sorted(set(access.groups))], ensure_ascii=True)


def plan_document(doc: Document, *, size_tokens: int, overlap_tokens: int, heading_aware: bool = True
                  ) -> list[PlannedChunk]:
    parsed = doc.parsed
    text = clean(parsed.text)
    chunks = chunk_document(text, size_tokens=size_tokens, overlap_tokens=overlap_tokens,
                            heading_aware=heading_aware and parsed.format in HEADING_FORMATS)
    key = document_key(parsed.source)
    sig = access_signature(doc.access)
    seen: dict[str, int] = {}
    out = []
    embed_title = not parsed.title_from_name
    for c in chunks:
        n = seen[c.text] = seen.get(c.text, -1) + 1
        planned = PlannedChunk("", key, parsed.source, parsed.title, c.trail, c.start, c.end, c.text, doc.access,
                               embed_title)
        digest = hashlib.sha256(json.dumps([parsed.source, sig, c.text, n, planned.context],
                                           ensure_ascii=True).encode()).hexdigest()
        out.append(dataclasses.replace(planned, id=digest[:32]))
    return out
