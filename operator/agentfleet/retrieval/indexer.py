"""`agentfleet ingest` as a library call: worker i's slice of the source -> planned chunks (ingest) -> near-dup
removal -> embed only what the store lacks -> delete what a document no longer has -> upsert -> flush -> a
summary. milvus-lite allows one process per file, so the store is opened twice, briefly: to read which chunk
ids exist, and to write; embedding (the slow part) runs with the file unlocked so P workers overlap there."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from ..ingest import dedupe_chunks, load_corpus, plan_document
from ..ingest.corpus import AccessDefaults, Document, SkippedDocument, slice_of
from ..ingest.pipeline import PlannedChunk, access_signature, document_key
from .embedders import Embedder
from .filters import stored_access
from .progress import Progress
from .store import VARCHAR_MAX, MilvusStore, StoreError, row_problem

__all__ = ["IngestOptions", "IngestSummary", "run_ingest", "rows_for", "wait_for_store"]


@dataclass(frozen=True)
class IngestOptions:
    source: Path
    worker: int = 0
    workers: int = 1
    shards: int = 1
    size_tokens: int = 384
    overlap_tokens: int = 48
    heading_aware: bool = True
    dedupe_threshold: float = 0.95
    access: AccessDefaults = AccessDefaults()
    remove_missing: bool = True
    # Reported by the source before the pipeline saw it (a URL source's objects over the size limit, unsupported
    # formats it did not fetch).
    skipped: tuple[SkippedDocument, ...] = ()


@dataclass
class IngestSummary:
    documents: int = 0
    chunks: int = 0
    skipped_documents: int = 0
    duplicates_dropped: int = 0
    embedded: int = 0
    deleted: int = 0
    seconds: float = 0.0
    skipped: list[SkippedDocument] = field(default_factory=list)

    def wire(self) -> dict[str, Any]:
        """The worker's report; the operator sums documents, chunks and skippedDocuments into status."""
        return {"documents": self.documents, "chunks": self.chunks, "skippedDocuments": self.skipped_documents,
                "duplicatesDropped": self.duplicates_dropped, "embedded": self.embedded, "deleted": self.deleted,
                "seconds": round(self.seconds, 2)}


def rows_for(chunks: list[PlannedChunk], vectors: Any) -> list[dict[str, Any]]:
    rows = []
    for c, v in zip(chunks, vectors):
        acc = stored_access(c.access.tenant, c.access.groups, public=c.access.public)
        rows.append({"id": c.id, "vector": [float(x) for x in v], "tenant": acc.tenant, "groups": acc.groups,
                     "doc": c.doc_key, "source": _clip(c.source, VARCHAR_MAX["source"]),
                     "title": _clip(c.title, VARCHAR_MAX["title"]),
                     "trail": _clip(json.dumps(list(c.trail), ensure_ascii=False), VARCHAR_MAX["trail"]),
                     "start": c.start, "end": c.end, "text": c.text})
    return rows


def _clip(value: str, limit_bytes: int) -> str:
    """`value` cut to at most `limit_bytes` UTF-8 bytes, on a character boundary (display fields only)."""
    data = value.encode("utf-8", "surrogatepass")
    return value if len(data) <= limit_bytes else data[:limit_bytes].decode("utf-8", "ignore")


def run_ingest(opts: IngestOptions, *, open_store: Callable[[], MilvusStore], embedder: Embedder,
               log: TextIO, is_tty: bool | None = None, clock: Callable[[], float] = time.monotonic
               ) -> IngestSummary:
    started = clock()
    summary = IngestSummary()
    docs: list[Document] = []
    for item in opts.skipped:
        summary.skipped.append(item)
        summary.skipped_documents += int(item.is_document)
        log.write(f"skipped {item.source}: {item.reason}\n")
    for item in load_corpus(opts.source, worker=opts.worker, workers=opts.workers, defaults=opts.access):
        if isinstance(item, SkippedDocument):
            summary.skipped.append(item)
            summary.skipped_documents += int(item.is_document)
            log.write(f"skipped {item.source}: {item.reason}\n")
        else:
            docs.append(item)
    planned: list[PlannedChunk] = []
    for doc in docs:
        planned.extend(plan_document(doc, size_tokens=opts.size_tokens, overlap_tokens=opts.overlap_tokens,
                                     heading_aware=opts.heading_aware))
    keep = dedupe_chunks([c.text for c in planned], [access_signature(c.access) for c in planned],
                         threshold=opts.dedupe_threshold)
    summary.duplicates_dropped = len(planned) - len(keep)
    planned = [planned[i] for i in keep]
    summary.documents = len({c.doc_key for c in planned})
    summary.chunks = len(planned)
    doc_keys = sorted({document_key(d.source) for d in docs})

    with open_store() as store:
        store.ensure_collection(dimension=embedder.dimension, shards=opts.shards)
        existing = store.ids_by_document(doc_keys)
        gone: set[str] = set()
        if opts.remove_missing:
            # Documents of this worker's slice that are stored but no longer indexable: deleted from the source,
            # or now skipped (access metadata removed must revoke access, not freeze the old one).
            present = set(doc_keys)
            for key, source in store.documents().items():
                path = source.split("#", 1)[0]
                if key not in present and slice_of(path, opts.workers) == opts.worker:
                    gone.add(key)
            if gone:
                for ids in store.ids_by_document(sorted(gone)).values():
                    existing.setdefault("", set()).update(ids)
    have = set().union(*existing.values()) if existing else set()
    want = {c.id for c in planned}
    todo = [c for c in planned if c.id not in have]
    stale = have - want

    vectors = []
    bar = Progress("embedding", len(todo), stream=log, is_tty=is_tty, clock=clock)
    batch = getattr(embedder, "batch_size", 64)
    for b in range(0, len(todo), batch):
        part = todo[b:b + batch]
        vectors.extend(embedder.embed([c.embed_text for c in part]))
        bar.advance(len(part))
    if todo:
        bar.close()
    summary.embedded = len(todo)

    if todo or stale:
        with open_store() as store:
            store.ensure_collection(dimension=embedder.dimension, shards=opts.shards)
            summary.deleted = store.delete_ids(stale)
            rows = rows_for(todo, vectors)
            fit = []
            for row in rows:
                reason = row_problem(row)
                if reason is None:
                    fit.append(row)
                    continue
                # One chunk the store cannot take must not end the ingest: report it, index the rest.
                item = SkippedDocument(f"{row['source']} (chunk {row['id']})", reason, is_document=False)
                summary.skipped.append(item)
                summary.chunks -= 1
                log.write(f"skipped {item.source}: {item.reason}\n")
            for b in range(0, len(fit), 1000):
                store.upsert(fit[b:b + 1000])
            store.flush()
    summary.seconds = clock() - started
    return summary


def wait_for_store(probe: Callable[[], None], *, deadline_s: float, log: TextIO,
                   clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                   what: str = "the vector store") -> None:
    """Call `probe` (which raises StoreError while the store does not answer) until it passes: a Milvus that the
    operator created a moment ago can take minutes, and the Job's few retries must not be spent on it. Raises
    the last StoreError, naming the deadline, when the next try would pass it."""
    started = clock()
    delay = 2.0
    while True:
        try:
            probe()
            return
        except StoreError as err:
            waited = clock() - started
            if waited + delay > deadline_s:
                raise StoreError(f"{what} did not answer within {deadline_s:.0f}s: {err}") from None
            log.write(f"waiting for {what} ({waited:.0f}s of {deadline_s:.0f}s): {err}\n")
            sleep(delay)
            delay = min(delay * 2, 30.0)
