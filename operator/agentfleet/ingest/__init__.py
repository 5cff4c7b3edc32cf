"""Ingestion as pure steps: read a source directory into documents (Markdown, text, HTML, PDF, JSONL), resolve
who may read each one, clean, chunk (token-aware, heading-aware) and drop near-duplicates. Embedding and the
vector store are edges that live in `agentfleet.retrieval`."""

from .access import Access, AccessRule, resolve_access
from .chunk import Chunk, chunk_document, count_tokens
from .corpus import Document, SkippedDocument, load_corpus, materialise_configmap, take_slice
from .dedupe import dedupe_chunks
from .pipeline import PlannedChunk, plan_document

__all__ = ["Access", "AccessRule", "resolve_access", "Chunk", "chunk_document", "count_tokens", "Document",
           "SkippedDocument", "load_corpus", "materialise_configmap", "take_slice", "dedupe_chunks",
           "PlannedChunk", "plan_document"]
