"""`agentfleet ingest`, `agentfleet search` and `agentfleet bench retrieval`: argparse wiring over indexer,
search and bench. pymilvus and onnxruntime are imported inside the commands so `agentfleet --help` stays fast."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..api.agentapp import RETRIEVAL_MODES

__all__ = ["add_parsers", "add_bench_parsers", "TERMINATION_LOG", "DEFAULT_COLLECTION"]

TERMINATION_LOG = "/dev/termination-log"
DEFAULT_COLLECTION = "documents"
TOKEN_ENV = "MILVUS_TOKEN"  # render.vectorindex.MILVUS_TOKEN_ENV


def add_parsers(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser("ingest", help="ingest a directory or URL of documents into a vector index (one worker's "
                                      "slice)")
    src = i.add_mutually_exclusive_group(required=True)
    src.add_argument("--source", help="directory of .md/.txt/.html/.pdf/.jsonl files (a mounted ConfigMap or PVC), "
                                      "or a URL: s3://bucket/prefix, gs://bucket/prefix, https://host/doc.md, "
                                      "https://host/corpus.tar.gz (.tgz, .tar, .zip)")
    src.add_argument("--configmap", metavar="FILE[:NAME]",
                     help="YAML file holding a ConfigMap whose keys are the corpus files (first ConfigMap "
                          "unless NAME is given), e.g. examples/agentapp.yaml")
    i.add_argument("--index", required=True, help="milvus-lite file (*.db) or Milvus URI (http://host:19530)")
    i.add_argument("--collection", default=DEFAULT_COLLECTION)
    i.add_argument("--workers", type=int, default=1, help="P: how many workers share the corpus")
    i.add_argument("--worker-index", type=int, default=None,
                   help="this worker's index in 0..P-1 (default: $JOB_COMPLETION_INDEX, else 0)")
    i.add_argument("--shards", type=int, default=1, help="shards of the collection when it is created")
    i.add_argument("--chunk-tokens", type=int, default=384)
    i.add_argument("--chunk-overlap", type=int, default=48)
    i.add_argument("--no-heading-aware", dest="heading_aware", action="store_false")
    i.add_argument("--dedupe-threshold", type=float, default=0.95,
                   help="Jaccard similarity (word 5-shingles) above which a chunk is a near-duplicate")
    i.add_argument("--embedder", default="all-minilm-l6-v2",
                   help="built-in model name or an OpenAI-compatible base URL ending in /v1")
    i.add_argument("--embedding-model", help="model name sent to an OpenAI-compatible endpoint")
    i.add_argument("--batch-size", type=int, default=64)
    i.add_argument("--access", default="{}",
                   help='access defaults as JSON: {"defaultTenant", "defaultGroups", "allowPublic"}')
    i.add_argument("--keep-missing", dest="remove_missing", action="store_false",
                   help="keep chunks of documents that left this worker's slice of the source")
    u = i.add_argument_group("URL sources")
    u.add_argument("--endpoint-url", default=None,
                   help="S3-compatible (or GCS) API endpoint; default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, "
                        "STORAGE_EMULATOR_HOST, else the cloud's own")
    u.add_argument("--region", default=None, help="S3 region (default: AWS_REGION / the profile's)")
    u.add_argument("--max-object-mb", type=float, default=64,
                   help="objects larger than this are reported as skipped, not fetched")
    u.add_argument("--max-total-mb", type=float, default=4096,
                   help="this worker's total download (the Job's /tmp emptyDir); over it, ingestion fails")
    u.add_argument("--fetch-timeout-s", type=float, default=60, help="connect and read timeout of each request")
    i.add_argument("--wait-for-store", type=float, default=0, metavar="SECONDS",
                   help="poll a Milvus URI until it answers, up to SECONDS, before ingesting (a store that is "
                        "still starting does not use up the Job's retries)")
    i.set_defaults(func=_cmd_ingest)

    s = sub.add_parser("search", help="search a vector index as a principal (tenant + groups)")
    s.add_argument("query")
    s.add_argument("--index", required=True)
    s.add_argument("--collection", default=DEFAULT_COLLECTION)
    s.add_argument("--tenant", required=True)
    s.add_argument("--groups", default="", help="comma-separated group names")
    s.add_argument("--group", action="append", default=[], help="one group name (may contain commas); repeatable")
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--embedder", default="all-minilm-l6-v2")
    s.add_argument("--embedding-model")
    s.add_argument("--mode", choices=RETRIEVAL_MODES, default=None,
                   help="hybrid: dense + BM25 fused (default); dense: vector search only; bm25: full-text only")
    s.add_argument("--json", action="store_true", help="print a JSON list of hits")
    s.set_defaults(func=_cmd_search)

    d = sub.add_parser("drop-collection", help="drop a collection (what deleting a VectorIndex does to an "
                                               "external Milvus when its deletionPolicy is Delete)")
    d.add_argument("--index", required=True, help="milvus-lite file (*.db) or Milvus URI")
    d.add_argument("--collection", required=True)
    d.set_defaults(func=_cmd_drop)



def add_bench_parsers(bench_sub: argparse._SubParsersAction) -> None:
    b = bench_sub.add_parser("retrieval", help="filtered vs unfiltered search latency, recall@10 against exact "
                                               "brute force, ingest throughput")
    b.add_argument("--chunks", type=int, default=100_000)
    b.add_argument("--dim", type=int, default=384)
    b.add_argument("--queries", type=int, default=50)
    b.add_argument("--tenants", type=int, default=10)
    b.add_argument("--groups", type=int, default=12)
    b.add_argument("--embed-sample", type=int, default=256,
                   help="passages embedded with the built-in model to measure its throughput (0: skip)")
    b.add_argument("--index", help="milvus-lite file to build (default: a temporary one)")
    b.add_argument("--seed", type=int, default=7)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=_cmd_bench)


def _configmap_dir(spec: str, into: Path) -> Path:
    import yaml

    path, _, name = spec.partition(":")
    from ..ingest import materialise_configmap

    docs = [d for d in yaml.safe_load_all(Path(path).read_text("utf-8")) if isinstance(d, dict)]
    cms = [d for d in docs if d.get("kind") == "ConfigMap" and (not name or d["metadata"].get("name") == name)]
    if not cms:
        raise SystemExit(f"error: {path}: no ConfigMap{' named ' + name if name else ''}")
    materialise_configmap(cms[0], into)
    return into


def _write_termination(line: str) -> None:
    path = os.environ.get("AGENTFLEET_TERMINATION_LOG", TERMINATION_LOG)
    try:
        with open(path, "w") as fh:
            fh.write(line)
    except OSError:
        pass  # not in a pod (or not writable): stdout carries the summary


def _cmd_ingest(args: argparse.Namespace) -> int:
    from ..ingest.corpus import AccessDefaults
    from ..ingest.remote import FetchLimits, is_url
    from .embedders import EmbedderError, make_embedder
    from .indexer import IngestOptions, run_ingest, wait_for_store
    from .store import MilvusStore, StoreError, is_lite_uri

    worker = args.worker_index if args.worker_index is not None else int(os.environ.get("JOB_COMPLETION_INDEX",
                                                                                          "0"))
    if not 0 <= worker < args.workers:
        print(f"error: --worker-index {worker} is outside 0..{args.workers - 1}", file=sys.stderr)
        return 2
    try:
        access = AccessDefaults.from_wire(json.loads(args.access))
    except (ValueError, AttributeError) as err:
        print(f"error: --access is not a JSON object of access defaults: {err}", file=sys.stderr)
        return 2
    token = os.environ.get(TOKEN_ENV)
    if args.wait_for_store > 0 and not is_lite_uri(args.index):
        try:
            wait_for_store(lambda: _probe_store(args.index, args.collection, token), deadline_s=args.wait_for_store,
                           log=sys.stderr, what=f"Milvus at {args.index}")
        except StoreError as err:
            print(f"error: ingest -> {args.index}#{args.collection} (worker {worker}/{args.workers}): {err}",
                  file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory(prefix="agentfleet-corpus-") as tmp:
        skipped: tuple = ()
        if args.source and is_url(args.source):
            from .remote import SourceError, fetch_source

            limits = FetchLimits(max_object_bytes=int(args.max_object_mb * 2**20),
                                 max_total_bytes=int(args.max_total_mb * 2**20), timeout_s=args.fetch_timeout_s)
            try:
                fetched = fetch_source(args.source, Path(tmp), worker=worker, workers=args.workers, limits=limits,
                                       endpoint_url=args.endpoint_url, region=args.region)
            except SourceError as err:
                print(f"error: ingest {args.source} (worker {worker}/{args.workers}): {err}", file=sys.stderr)
                return 1
            print(f"worker {worker}/{args.workers}: fetched {fetched.fetched} objects ({fetched.bytes} bytes) "
                  f"from {args.source}", file=sys.stderr)
            source, skipped = fetched.root, tuple(fetched.skipped)
        else:
            source = Path(args.source) if args.source else _configmap_dir(args.configmap, Path(tmp))
        if not source.is_dir():
            print(f"error: --source {source} is not a directory (nor an s3://, gs:// or https:// URL)",
                  file=sys.stderr)
            return 2
        opts = IngestOptions(source=source, worker=worker, workers=args.workers, shards=args.shards,
                             size_tokens=args.chunk_tokens, overlap_tokens=args.chunk_overlap,
                             heading_aware=args.heading_aware, dedupe_threshold=args.dedupe_threshold,
                             access=access, remove_missing=args.remove_missing, skipped=skipped)
        try:
            embedder = make_embedder(args.embedder, batch_size=args.batch_size, model=args.embedding_model)
            summary = run_ingest(opts, open_store=lambda: MilvusStore(args.index, args.collection, token=token),
                                 embedder=embedder, log=sys.stderr)
        except (EmbedderError, StoreError, ValueError) as err:
            print(f"error: ingest {args.source or source} -> {args.index}#{args.collection} "
                  f"(worker {worker}/{args.workers}): {err}", file=sys.stderr)
            return 1
    print(f"worker {worker}/{args.workers}: {summary.documents} documents, {summary.chunks} chunks "
          f"({summary.embedded} embedded, {summary.deleted} deleted, {summary.duplicates_dropped} duplicates "
          f"dropped), {summary.skipped_documents} skipped, {summary.seconds:.1f}s", file=sys.stderr)
    line = json.dumps(summary.wire(), separators=(",", ":"))
    print(line, flush=True)
    _write_termination(line)
    return 0


def _probe_store(uri: str, collection: str, token: str | None) -> None:
    """One short try to reach a Milvus server; any failure is a StoreError to retry."""
    from pymilvus.exceptions import MilvusException

    from .store import MilvusStore, StoreError

    try:
        with MilvusStore(uri, collection, token=token, timeout_s=10) as store:
            store.exists()
    except MilvusException as err:
        raise StoreError(str(err)) from None


def _principal_groups(args: argparse.Namespace) -> tuple[str, ...]:
    return tuple([g for g in args.groups.split(",") if g] + list(args.group))


def _cmd_search(args: argparse.Namespace) -> int:
    from .embedders import EmbedderError, make_embedder
    from .filters import Principal
    from .search import Retriever
    from .store import MilvusStore, StoreError

    principal = Principal(args.tenant, _principal_groups(args))
    try:
        store = MilvusStore(args.index, args.collection, token=os.environ.get(TOKEN_ENV), lock_timeout_s=30)
        with store:
            if not store.exists():
                print(f"error: {args.index} has no collection {args.collection}", file=sys.stderr)
                return 1
            hits = Retriever(store, make_embedder(args.embedder, model=args.embedding_model),
                             mode=args.mode).search(args.query, principal, k=args.k)
    except (EmbedderError, StoreError) as err:
        print(f"error: search {args.index}#{args.collection}: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([h.wire() for h in hits], ensure_ascii=False))
        return 0
    for n, h in enumerate(hits, 1):
        where = " > ".join(h.trail) or h.title
        snippet = " ".join(h.text.split())[:160]
        print(f"{n:2d}. {h.score:.3f} {h.source} [{where}] {snippet}")
    if not hits:
        print("no results this principal may read")
    return 0


def _cmd_drop(args: argparse.Namespace) -> int:
    from .store import MilvusStore, StoreError

    try:
        with MilvusStore(args.index, args.collection, token=os.environ.get(TOKEN_ENV), lock_timeout_s=60) as store:
            existed = store.exists()
            if existed:
                store.drop()
    except StoreError as err:
        print(f"error: drop {args.index}#{args.collection}: {err}", file=sys.stderr)
        return 1
    print(f"{'dropped' if existed else 'no'} collection {args.collection} in {args.index}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    report: dict[str, Any] = run_bench(chunks=args.chunks, dim=args.dim, queries=args.queries,
                                       tenants=args.tenants, groups=args.groups, embed_sample=args.embed_sample,
                                       index=args.index, seed=args.seed, log=sys.stderr)
    if args.json:
        print(json.dumps(report))
    else:
        print(json.dumps(report, indent=2))
    return 0
