"""`agentfleet eval` (retrieval-only for now) and `agentfleet eval prepare pyfaq`: argparse wiring over suite,
pyfaq and retrieval. The store and embedder are imported inside the command so `agentfleet --help` stays fast."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("eval", help="evaluate retrieval for a suite's principals (retrieval-only), or prepare a "
                                    "public evaluation set",
                       description="agentfleet eval --suite FILE --index URI --keys KEYS.yaml --retrieval-only; "
                                   "agentfleet eval prepare pyfaq --out DIR")
    e.add_argument("--suite", help="suite file (YAML, or JSONL for *.jsonl)")
    e.add_argument("--index", help="milvus-lite file (*.db) or Milvus URI")
    e.add_argument("--collection", default="documents")
    e.add_argument("--keys", help="key store file: API key -> {user, tenant, groups}")
    e.add_argument("--retrieval-only", action="store_true",
                   help="measure retrieval against the index as each case's principal, no model involved")
    e.add_argument("--k", type=int, default=10, help="also report recall@k (recall@10 and nDCG@10 are always reported)")
    e.add_argument("--embedder", default="all-minilm-l6-v2", help="the embedder the index was built with")
    e.add_argument("--embedding-model")
    e.add_argument("--json", action="store_true", help="print the report as one JSON object")
    e.set_defaults(func=_cmd_eval)
    prep = e.add_subparsers(dest="eval_command", metavar="prepare")
    p = prep.add_parser("prepare", help="build a corpus, suite and key store from a public data set")
    p.add_argument("dataset", choices=["pyfaq"])
    p.add_argument("--out", required=True, help="directory for corpus/, suite.yaml and keys.yaml")
    p.add_argument("--full", action="store_true", help="every passage (pyfaq: ~8.2k) instead of pyfaq-2k's 2,500")
    p.add_argument("--docs", default=None, help="reStructuredText sources (default: what python3.11-doc installs)")
    p.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)  # smaller sets for tests
    p.set_defaults(func=_cmd_prepare)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from . import pyfaq

    docs = Path(args.docs) if args.docs else pyfaq.DEFAULT_DOCS
    size = None if args.full else (args.size or pyfaq.DEFAULT_SIZE)
    try:
        faq = pyfaq.build(docs, size=size)
    except pyfaq.DocsMissing:
        print(f"error: the Python documentation sources are missing ({docs}/faq); install them with: "
              f"apt-get install {pyfaq.DEBIAN_PACKAGE}", file=sys.stderr)
        return 2
    name = "pyfaq-full" if args.full else ("pyfaq-2k" if size == pyfaq.DEFAULT_SIZE else f"pyfaq-{size}")
    counts = pyfaq.write(faq, Path(args.out), name=name)
    out = Path(args.out)
    print(f"{name}: {counts['questions']} questions, {counts['passages']} passages "
          f"(+{counts['traps']} permission traps) in {out / 'corpus'}; next: agentfleet ingest --source "
          f"{out / 'corpus'} --index {out / 'index.db'} && agentfleet eval --suite {out / 'suite.yaml'} --index "
          f"{out / 'index.db'} --keys {out / 'keys.yaml'} --retrieval-only", file=sys.stderr)
    print(json.dumps({"name": name, **counts}))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    missing = [f"--{n}" for n in ("suite", "index", "keys") if not getattr(args, n)]
    if not args.retrieval_only or missing:
        print("error: only retrieval-only evaluation is available: agentfleet eval --suite FILE --index URI "
              "--keys KEYS.yaml --retrieval-only" + (f" (missing {', '.join(missing)})" if missing else ""),
              file=sys.stderr)
        return 2
    from ..retrieval.embedders import EmbedderError, make_embedder
    from ..retrieval.search import Retriever
    from ..retrieval.store import MilvusStore, StoreError
    from . import retrieval
    from .suite import SuiteError, read_suite

    try:
        suite = read_suite(args.suite)
        principals = retrieval.principals_from_keys(Path(args.keys).read_text("utf-8"), where=args.keys)
    except SuiteError as err:
        for line in err.problems:
            print(line, file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: {args.keys}: cannot read: {err.strerror or err}", file=sys.stderr)
        return 2
    try:
        store = MilvusStore(args.index, args.collection, token=os.environ.get("MILVUS_TOKEN"), lock_timeout_s=30)
        with store:
            if not store.exists():
                print(f"error: {args.index} has no collection {args.collection} (run agentfleet ingest first)",
                      file=sys.stderr)
                return 1
            retriever = Retriever(store, make_embedder(args.embedder, model=args.embedding_model))

            def search(question: str, principal, k: int) -> Sequence[retrieval.RetrievedChunk]:
                hits = retriever.search(question, principal, k=k)
                access = {row["id"]: row for row in store.client.get(
                    store.collection, ids=[h.id for h in hits], output_fields=["tenant", "groups"])} if hits else {}
                return [retrieval.RetrievedChunk(h.id, h.source, h.score, access.get(h.id, {}).get("tenant", ""),
                                                 access.get(h.id, {}).get("groups", "")) for h in hits]

            report = retrieval.run(suite, principals, search, k=args.k, log=sys.stderr)
    except SuiteError as err:
        for line in err.problems:
            print(f"{args.suite}: {line}", file=sys.stderr)
        return 2
    except (EmbedderError, StoreError) as err:
        print(f"error: eval {args.index}#{args.collection}: {err}", file=sys.stderr)
        return 1
    report["suite"], report["index"], report["embedder"] = args.suite, args.index, args.embedder
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        r, s = report["retrieval"], report["security"]
        for c in report["cases"]:
            print(f"{c['id']:>12} {c['principal']:>8} recall@10 {c['recall_at_10']} nDCG@10 {c['ndcg_at_10']} "
                  f"MRR {c['mrr']} leaks {len(c['leaks'])}")
        print(f"{len(report['cases'])} cases in {report['seconds']:.1f}s: recall@10 {r['recall_at_10']}, "
              f"nDCG@10 {r['ndcg_at_10']}, MRR {r['mrr']}; leaks {s['leaks']}")
    if report["security"]["leaks"]:
        print(f"FAIL: {report['security']['leaks']} leaked hit(s) in cases "
              f"{', '.join(report['security']['cases_with_leaks'])}: leaks must be 0", file=sys.stderr)
        return 1
    return 0
