"""The vector store edge: the only module that imports pymilvus. One collection per VectorIndex, on milvus-lite
(a `*.db` file; the engine holds an exclusive file lock, so openers retry until a deadline) or any Milvus by URI.
Schema: content-hash id, vector, tenant (partition key) and groups in the encoded form of `filters`, the
document key, source path, title, heading trail and character offsets, and (collections created since hybrid
retrieval) the chunk's analysed terms (`analysis.terms`, which `upsert` adds to ingest's rows) with the BM25 sparse
vector the engine derives from them (a milvus BM25 `Function`). Search, dense or full-text, always goes through a
Principal's filter, and so does reading one document's chunks (`document_chunks`, behind the runtime's cited-source
route); `search_expr` and `search_text_expr` exist for benchmarks and administration only. Full-text
search uses the engine to find the readable chunks that hold a query term and scores them with statistics of what
the filter admits (`bm25`), never the engine's collection-wide ones."""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from .analysis import analyse_query, terms
from .bm25 import CorpusStats, corpus_stats, rank
from .filters import GROUPS_FIELD_MAX, TENANT_FIELD_MAX, Principal, for_principal

__all__ = ["Hit", "MilvusStore", "StoreError", "is_lite_uri", "row_problem", "OUTPUT_FIELDS", "BM25_FIELD",
           "VARCHAR_MAX", "MAX_DOCUMENT_CHUNKS"]

log = logging.getLogger(__name__)

OUTPUT_FIELDS = ["source", "title", "trail", "start", "end", "text"]
TEXT_MAX = 65535
# Unflushed rows search ~20x slower on milvus-lite (shared/facts.md): flush after every ingest.
LOCK_RETRY_S = 1.0
BM25_FIELD = "sparse"
TERMS_FIELD = "terms"   # analysis.terms(text), written by `upsert`: the BM25 function's input
# The engine's analyzer only splits the pre-analysed terms (analysis.py: stop words, stemming); k1 0.9, b 0.4 as
# Pyserini/BEIR.
BM25_ANALYZER = {"tokenizer": "standard"}
BM25_PARAMS = {"bm25_k1": 0.9, "bm25_b": 0.4}
# The readable corpus' statistics per filter, cached this long (a write through this store clears them; a write by
# another process shows after at most this long).
STATS_TTL_S = 60.0
_STATS_ENTRIES = 64


def bm25_pool(k: int) -> int:
    """How many of the engine's full-text candidates a search for k results re-scores."""
    return max(10 * k, 300)


_SAFE_ID = re.compile(r"[0-9A-Za-z_.:-]{1,64}")   # content-hash ids: safe inside a filter literal
_DOC_KEY = re.compile(r"[0-9a-f]{32}")  # ingest.pipeline.document_key: safe inside a filter literal
MAX_DOCUMENT_CHUNKS = 2000  # one document read back at most (a 64 MiB file cut at 512 tokens has more)


class _DropMvccNotice(logging.Filter):
    # milvus-lite has no server-side MVCC timestamp; pymilvus warns about it on every query iterator.
    def filter(self, record: logging.LogRecord) -> bool:
        return "mvccTs" not in record.getMessage()


logging.getLogger("pymilvus.client.iterator.query_iterator").addFilter(_DropMvccNotice())


class StoreError(RuntimeError):
    """The vector store cannot be reached or refused an operation."""


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    text: str
    source: str
    title: str
    trail: tuple[str, ...]
    start: int
    end: int

    def wire(self) -> dict[str, Any]:
        return {"id": self.id, "score": round(self.score, 6), "source": self.source, "title": self.title,
                "headings": list(self.trail), "start": self.start, "end": self.end, "text": self.text}


# The VARCHAR fields' max_length, as `ensure_collection` creates them (one fact, one place).
VARCHAR_MAX = {"id": 64, "tenant": TENANT_FIELD_MAX, "groups": GROUPS_FIELD_MAX, "doc": 64, "source": 4096,
               "title": 1024, "trail": 4096, "text": TEXT_MAX}


def row_problem(row: dict[str, Any]) -> str | None:
    """Why the collection would refuse `row` (a string field over its max_length), or None. Checked in UTF-8
    bytes, the stricter of the two counts (milvus-lite counts characters, Milvus servers have counted bytes)."""
    for name, limit in VARCHAR_MAX.items():
        value = row.get(name)
        if isinstance(value, str) and len(value.encode("utf-8", "surrogatepass")) > limit:
            return f"field {name} is {len(value.encode('utf-8', 'surrogatepass'))} bytes, over its {limit}"
    return None


def is_lite_uri(uri: str) -> bool:
    return "://" not in uri


class MilvusStore:
    def __init__(self, uri: str, collection: str, *, token: str | None = None, lock_timeout_s: float = 1800.0,
                 timeout_s: float = 60.0, stats_ttl_s: float = STATS_TTL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        self.uri, self.collection, self.timeout_s = uri, collection, timeout_s
        self.is_lite = is_lite_uri(uri)
        deadline = time.monotonic() + lock_timeout_s
        while True:
            try:
                self.client = MilvusClient(uri=uri, token=token or "", timeout=timeout_s)
                break
            except MilvusException as err:
                # milvus-lite: another worker holds the file lock; wait for it (ingest writes are short).
                if not self.is_lite or time.monotonic() >= deadline:
                    raise StoreError(f"cannot open {uri}: {err}") from err
                time.sleep(LOCK_RETRY_S)
        self._loaded = False
        self._full_text: bool | None = None
        self.stats_ttl_s, self._clock = stats_ttl_s, clock
        self._stats: dict[str, tuple[float, CorpusStats]] = {}   # filter -> (expires, stats of what it admits)

    # --- lifecycle ------------------------------------------------------------------------------------------
    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing a dead client is not an error worth surfacing
            pass

    def __enter__(self) -> "MilvusStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exists(self) -> bool:
        return bool(self.client.has_collection(self.collection))

    def ensure_collection(self, *, dimension: int, shards: int = 1) -> bool:
        """Create the collection when missing; True when created. An existing one must have `dimension`."""
        from pymilvus import DataType, MilvusClient

        if self.exists():
            desc = self.client.describe_collection(self.collection)
            for f in desc.get("fields", []):
                if f.get("name") == "vector":
                    have = int((f.get("params") or {}).get("dim", dimension))
                    if have != dimension:
                        raise StoreError(f"collection {self.collection} has {have}-d vectors; the embedder "
                                         f"gives {dimension}-d (drop the collection or change the embedder)")
            return False
        from pymilvus import Function, FunctionType

        s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        s.add_field("id", DataType.VARCHAR, is_primary=True, max_length=VARCHAR_MAX["id"])
        s.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
        s.add_field("tenant", DataType.VARCHAR, max_length=TENANT_FIELD_MAX, is_partition_key=True)
        s.add_field("groups", DataType.VARCHAR, max_length=GROUPS_FIELD_MAX)
        s.add_field("doc", DataType.VARCHAR, max_length=VARCHAR_MAX["doc"])
        s.add_field("source", DataType.VARCHAR, max_length=VARCHAR_MAX["source"])
        s.add_field("title", DataType.VARCHAR, max_length=VARCHAR_MAX["title"])
        s.add_field("trail", DataType.VARCHAR, max_length=VARCHAR_MAX["trail"])
        s.add_field("start", DataType.INT64)
        s.add_field("end", DataType.INT64)
        s.add_field("text", DataType.VARCHAR, max_length=TEXT_MAX)
        s.add_field(TERMS_FIELD, DataType.VARCHAR, max_length=TEXT_MAX, enable_analyzer=True,
                    analyzer_params=BM25_ANALYZER)
        s.add_field(BM25_FIELD, DataType.SPARSE_FLOAT_VECTOR)
        s.add_function(Function(name="terms_bm25", function_type=FunctionType.BM25, input_field_names=[TERMS_FIELD],
                                output_field_names=[BM25_FIELD]))
        ip = self.client.prepare_index_params()
        if self.is_lite:
            # Exact search: on milvus-lite HNSW/IVF cost ~64 ms at 100k rows anyway (facts.md), FLAT gives recall 1.
            ip.add_index("vector", index_type="FLAT", metric_type="COSINE")
        else:
            ip.add_index("vector", index_type="HNSW", metric_type="COSINE", params={"M": 16, "efConstruction": 200})
            ip.add_index("tenant", index_type="INVERTED")
            ip.add_index("doc", index_type="INVERTED")
        ip.add_index(BM25_FIELD, index_type="SPARSE_INVERTED_INDEX", metric_type="BM25", params=dict(BM25_PARAMS))
        from pymilvus.exceptions import MilvusException

        try:
            self.client.create_collection(self.collection, schema=s, index_params=ip, num_shards=shards,
                                          consistency_level="Strong")
        except MilvusException:
            self._full_text = None
            if self.exists():  # P workers race to create it on a shared Milvus: one wins, all go on
                return False
            raise
        self._full_text = None
        return True

    @property
    def full_text(self) -> bool:
        """Whether the collection has the BM25 field (created by this version); older collections search dense
        only until they are re-created (drop and re-ingest)."""
        if self._full_text is None:
            desc = self.client.describe_collection(self.collection)
            names = {f.get("name") for f in desc.get("fields", [])}
            self._full_text = BM25_FIELD in names and TERMS_FIELD in names
            if not self._full_text:
                log.info("collection %s has no BM25 field (created before hybrid retrieval): dense search only; "
                         "drop it and re-ingest for hybrid", self.collection)
        return self._full_text

    def drop(self) -> None:
        if self.exists():
            self.client.drop_collection(self.collection)
        self._full_text = None
        self._stats.clear()

    def load(self) -> None:
        if self._loaded:
            return
        from pymilvus.exceptions import MilvusException

        # milvus-lite 3.2.2 writes a flushed segment's index file in the background; a load right after flush
        # can read it half-written ("file seems not fully written"). Retry briefly.
        for attempt in range(20):
            try:
                self.client.load_collection(self.collection)
                break
            except MilvusException as err:
                if not self.is_lite or attempt == 19 or "not fully written" not in str(err) and \
                        "No data left" not in str(err):
                    raise
                time.sleep(0.1 * (attempt + 1))
        self._loaded = True

    def flush(self) -> None:
        """Seal growing segments and reload, so searches take the fast path."""
        self._stats.clear()
        self.client.flush(self.collection)
        if self.is_lite:
            self.client.release_collection(self.collection)
            self._loaded = False
        self.load()

    # --- writes ---------------------------------------------------------------------------------------------
    def ids_by_document(self, doc_keys: Sequence[str]) -> dict[str, set[str]]:
        """The stored chunk ids of each document key (keys are hex: safe inside a filter literal)."""
        self.load()
        out: dict[str, set[str]] = {k: set() for k in doc_keys}
        for i in range(0, len(doc_keys), 200):
            batch = list(doc_keys[i:i + 200])
            assert all(k.isalnum() for k in batch)
            literal = ", ".join(f'"{k}"' for k in batch)
            for row in self._query_all(f"doc in [{literal}]", ["doc"]):
                out[row["doc"]].add(row["id"])
        return out

    def documents(self) -> dict[str, str]:
        """doc key -> source path of every document in the collection."""
        self.load()
        return {row["doc"]: row["source"] for row in self._query_all('doc != ""', ["doc", "source"])}

    def _query_all(self, expr: str, fields: list[str]) -> Iterable[dict[str, Any]]:
        it = self.client.query_iterator(self.collection, batch_size=4096, filter=expr, output_fields=fields)
        try:
            while True:
                rows = it.next()
                if not rows:
                    return
                yield from rows
        finally:
            it.close()

    def delete_ids(self, ids: Iterable[str]) -> int:
        ids = sorted(ids)
        self._stats.clear()
        for i in range(0, len(ids), 1000):
            self.client.delete(self.collection, ids=ids[i:i + 1000])
        return len(ids)

    def upsert(self, rows: Sequence[dict[str, Any]]) -> None:
        """Rows as ingest makes them; a collection with full-text search also gets each row's analysed terms.
        Raises StoreError when the engine refuses the batch."""
        if rows:
            from pymilvus.exceptions import MilvusException

            if self.full_text:
                rows = [{**r, TERMS_FIELD: terms(r["text"])[:TEXT_MAX]} for r in rows]
            self._stats.clear()
            try:
                self.client.upsert(self.collection, list(rows))
            except MilvusException as err:
                # Ingest checks rows first (`row_problem`); what is left is the engine's reason, named.
                raise StoreError(f"upsert refused: {getattr(err, 'message', None) or err}") from err

    def count(self) -> int:
        self.load()
        res = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"]) if res else 0

    # --- reads ----------------------------------------------------------------------------------------------
    def search(self, vectors: Sequence[Sequence[float]], principal: Principal, *, k: int = 10) -> list[list[Hit]]:
        """Top-k hits per query vector among the chunks `principal` may read; the permission filter runs inside
        the vector search, so k permitted chunks come back whenever k exist."""
        return self.search_expr(vectors, for_principal(principal).expr, k=k)

    def search_text(self, queries: Sequence[str], principal: Principal, *, k: int = 10) -> list[list[Hit]]:
        """Top-k BM25 hits (over the analysed terms) per query text among the chunks `principal` may read (the
        filter runs inside the full-text search, as in `search`); a hit's score is its BM25 score with IDF and
        average length counted over the chunks `principal` may read, so no other chunk moves it. Needs
        `full_text`."""
        return self.search_text_expr(queries, for_principal(principal).expr, k=k)

    def document_chunks(self, doc_key: str, principal: Principal, *, limit: int = MAX_DOCUMENT_CHUNKS
                        ) -> list[Hit]:
        """The chunks of one document (its ingest document key) that `principal` may read, in document order,
        at most `limit`: the same filter as `search`, inside the query, so a chunk the principal may not read never
        leaves the store, and a document it may read nothing of is no chunks, as one that does not exist."""
        if not _DOC_KEY.fullmatch(doc_key):
            return []
        self.load()
        expr = f'doc == "{doc_key}" and ({for_principal(principal).expr})'
        rows = self.client.query(self.collection, filter=expr, output_fields=["id", *OUTPUT_FIELDS], limit=limit)
        hits = [_hit({"id": r["id"], "entity": r}, 0.0) for r in rows]
        return sorted(hits, key=lambda h: (h.start, h.end, h.id))

    def search_expr(self, vectors: Sequence[Sequence[float]], expr: str, *, k: int = 10,
                    fields: Sequence[str] = OUTPUT_FIELDS) -> list[list[Hit]]:
        """Benchmarks and administration only: no permission filter is added."""
        self.load()
        params: dict[str, Any] = {"metric_type": "COSINE"}
        if not self.is_lite:
            params["params"] = {"ef": max(64, 4 * k)}
        res = self.client.search(self.collection, data=[list(map(float, v)) for v in vectors], filter=expr,
                                 limit=k, output_fields=list(fields), search_params=params, anns_field="vector")
        return [[_hit(h, float(h.get("distance", 0.0))) for h in per_query] for per_query in res]

    def search_text_expr(self, queries: Sequence[str], expr: str, *, k: int = 10,
                         fields: Sequence[str] = OUTPUT_FIELDS) -> list[list[Hit]]:
        """Benchmarks and administration only: no permission filter is added. BM25 statistics are those of the
        chunks `expr` admits."""
        if not self.full_text:
            raise StoreError(f"collection {self.collection} has no BM25 field (re-create it for full-text search)")
        self.load()
        analysed = [analyse_query(q) for q in queries]
        asked = [i for i, t in enumerate(analysed) if t]   # only stop words: nothing can match
        out: list[list[Hit]] = [[] for _ in queries]
        if not asked:
            return out
        stats = self._corpus_stats(expr)
        # The engine's BM25 search, filtered, proposes the candidates (admitted chunks only); its scores, from
        # collection-wide statistics, are dropped and the candidates re-scored with the admitted chunks' statistics.
        # Reading every admitted match instead (exact candidates too) cost ~250 ms a query on pyfaq, where a median
        # query matches 3,500 of 9,192 readable chunks.
        res = self.client.search(self.collection, data=[" ".join(analysed[i]) for i in asked], anns_field=BM25_FIELD,
                                 filter=expr, limit=bm25_pool(k), output_fields=[TERMS_FIELD],
                                 search_params={"metric_type": "BM25"})
        k1, b = BM25_PARAMS["bm25_k1"], BM25_PARAMS["bm25_b"]
        for i, matches in zip(asked, res):
            docs = {str(h.get("id")): (h.get("entity") or {}).get(TERMS_FIELD) or "" for h in matches}
            ranked = rank(analysed[i], docs, stats, k1=k1, b=b)[:k]
            rows = self._rows([cid for cid, _ in ranked], expr, fields)
            out[i] = [_hit({"id": cid, "entity": rows[cid]}, score) for cid, score in ranked if cid in rows]
        return out

    def _corpus_stats(self, expr: str) -> CorpusStats:
        """Size and mean analysed length of what `expr` admits, cached for `stats_ttl_s`."""
        now = self._clock()
        cached = self._stats.get(expr)
        if cached is not None and cached[0] > now:
            return cached[1]
        rows = self._query_all(expr or 'id != ""', [TERMS_FIELD])
        stats = corpus_stats(r.get(TERMS_FIELD) or "" for r in rows)
        if len(self._stats) >= _STATS_ENTRIES:
            self._stats.pop(next(iter(self._stats)))
        self._stats[expr] = (now + self.stats_ttl_s, stats)
        return stats

    def _rows(self, ids: Sequence[str], expr: str, fields: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The stored fields of `ids` that `expr` still admits."""
        if not ids:
            return {}
        unsafe = [i for i in ids if not _SAFE_ID.fullmatch(i)]
        if unsafe:
            raise StoreError(f"collection {self.collection} holds a chunk id that is not a content hash: "
                             f"{unsafe[0][:80]!r}")
        literal = ", ".join(f'"{i}"' for i in ids)
        where = f"id in [{literal}]" + (f" and ({expr})" if expr else "")
        rows = self.client.query(self.collection, filter=where, output_fields=list(fields))
        return {str(r["id"]): r for r in rows}


def _hit(h: dict[str, Any], score: float) -> Hit:
    e = h.get("entity") or {}
    trail = e.get("trail")
    return Hit(str(h.get("id")), score, e.get("text", ""), e.get("source", ""), e.get("title", ""),
               tuple(json.loads(trail)) if trail else (), int(e.get("start", 0)), int(e.get("end", 0)))
