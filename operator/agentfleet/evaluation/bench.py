"""`agentfleet bench eval`: retrieval quality on the public pyfaq set (evaluation.pyfaq), every method measured in
one run on the same 175 queries, judgements and principals, each search filtered to what the case's principal may
read (the same access resolution as ingest: the corpus's `_access.yaml`, checked with `retrieval.may_read`):

- `bm25`: Okapi BM25 over whole passages (k1 0.9, b 0.4 as Pyserini/BEIR; Lucene's English stop words and
  Harman's S-stemmer: `retrieval.analysis`, the product's own analysis), in numpy, with nothing to install;
- `dense_exact`: exact cosine search with the product's embedder over whole passages (numpy brute force);
- `default`: the product's default retrieval (hybrid: filtered dense and BM25 searches over the indexed chunks,
  fused by `retrieval.fusion.weighted_fusion` with the fixed `DENSE_WEIGHT`), measured by running `agentfleet
  ingest` (the product defaults) and `agentfleet eval --retrieval-only --json` as a user would; its wall time is
  `retrieval_only_seconds`;
- `hybrid`: reciprocal-rank fusion (k 60) of bm25 and dense_exact, and `hybrid_weighted`: the same weighted fusion
  of min-max-normalised scores as the product, its dense weight chosen by two-fold cross-validation over the queries
  (never tuned on the queries it is scored on; each fold's weight and held-out scores are reported). A hybrid is
  called better only when it beats dense_exact (`hybrid_beats_dense`).

The index is cached under the work directory by a hash of the corpus files and of the product code that builds
it, so a rerun skips ingestion; passage embeddings for dense_exact are cached the same way."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence, TextIO

from ..retrieval.filters import Principal, stored_access
from ..retrieval.analysis import analyse, analyse_query, s_stem
from ..retrieval.fusion import DENSE_WEIGHT, RRF_K, rrf, weighted_fusion
from . import pyfaq
from .retrieval import FETCH_FACTOR, RetrievedChunk, may_read, principals_from_keys
from .retrieval import run as run_eval
from .suite import Suite, read_suite

if TYPE_CHECKING:  # numpy is imported where it is used, so `agentfleet --help` does not load it
    import numpy as np

__all__ = ["add_bench_parsers", "run_bench", "BM25", "analyse", "s_stem", "rrf", "weighted_fusion",
           "DEFAULT_WORK"]

DEFAULT_WORK = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "agentfleet" / "bench-eval"
K1, B = 0.9, 0.4
FUSION_DEPTH = 100   # candidates each ranker contributes to a fusion
# What decides the index's content besides the corpus: a change to any of these re-ingests.
_PRODUCT_CODE = ("ingest/access.py", "ingest/chunk.py", "ingest/corpus.py", "ingest/dedupe.py", "ingest/parse.py",
                 "ingest/pipeline.py", "retrieval/indexer.py", "retrieval/embedders.py", "retrieval/store.py",
                 "retrieval/cli.py", "retrieval/filters.py", "retrieval/analysis.py")


# --- BM25 and fusion (pure) -------------------------------------------------------------------------------------
class BM25:
    """Okapi BM25 over a fixed set of documents: score(q, d) = sum over the query's terms t (each occurrence) of
    idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * |d| / avgdl)), with Lucene's idf(t) = ln(1 + (N - df + 0.5) /
    (df + 0.5)); |d| counts the analysed terms."""

    def __init__(self, docs: Sequence[str], *, k1: float = K1, b: float = B) -> None:
        import numpy as np

        self.k1, self.b, self.n = k1, b, len(docs)
        terms = [analyse(d) for d in docs]
        lengths = np.array([len(t) for t in terms], dtype=np.float64)
        self.avgdl = float(lengths.mean()) if self.n and lengths.sum() else 1.0
        norm = k1 * (1.0 - b + b * lengths / self.avgdl)
        postings: dict[str, dict[int, int]] = {}
        for i, ts in enumerate(terms):
            for t in ts:
                row = postings.setdefault(t, {})
                row[i] = row.get(i, 0) + 1
        self.idf: dict[str, float] = {}
        self._postings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for t, row in postings.items():
            df = len(row)
            idf = math.log(1.0 + (self.n - df + 0.5) / (df + 0.5))
            idx = np.fromiter(row.keys(), dtype=np.int64, count=df)
            tf = np.fromiter(row.values(), dtype=np.float64, count=df)
            self.idf[t] = idf
            self._postings[t] = (idx, idf * tf * (k1 + 1.0) / (tf + norm[idx]))

    def scores(self, query: str) -> np.ndarray:
        import numpy as np

        out = np.zeros(self.n, dtype=np.float64)
        for t in analyse_query(query):
            hit = self._postings.get(t)
            if hit is not None:
                out[hit[0]] += hit[1]
        return out


# --- the run ----------------------------------------------------------------------------------------------------
@dataclass
class _Corpus:
    sources: list[str]
    texts: list[str]
    tenants: list[str]   # stored, encoded access fields (retrieval.filters)
    groups: list[str]


def _say(log: TextIO | None, msg: str) -> None:
    if log is not None:
        log.write(msg + "\n")
        log.flush()


def _load_corpus(root: Path) -> _Corpus:
    from ..ingest import load_corpus
    from ..ingest.corpus import SkippedDocument

    c = _Corpus([], [], [], [])
    for doc in load_corpus(root):
        if isinstance(doc, SkippedDocument):
            continue
        acc = stored_access(doc.access.tenant, doc.access.groups, public=doc.access.public)
        c.sources.append(doc.source)
        c.texts.append(doc.parsed.text.strip())
        c.tenants.append(acc.tenant)
        c.groups.append(acc.groups)
    return c


def _hash_tree(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _product_hash(embedder: str) -> str:
    pkg = Path(__file__).resolve().parents[1]
    h = hashlib.sha256(embedder.encode())
    for rel in _PRODUCT_CODE:
        h.update(rel.encode() + b"\0" + (pkg / rel).read_bytes())
    return h.hexdigest()


def _agentfleet(args: Sequence[str], *, log: TextIO | None, forward: bool = True) -> tuple[str, float]:
    """The product's command line in a child process, as a user runs it (milvus-lite locks its file per process);
    its stderr (progress) is copied to `log` line by line when `forward`. Returns its stdout and wall seconds."""
    cmd = [sys.executable, "-m", "agentfleet.cli", *args]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tail: list[str] = []

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            tail.append(line)
            del tail[:-40]
            if forward:
                _say(log, line.rstrip("\n"))

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    assert proc.stdout is not None
    out = proc.stdout.read()
    rc = proc.wait()
    t.join()
    seconds = time.perf_counter() - started
    if rc != 0:
        raise RuntimeError(f"agentfleet {args[0]} failed ({rc}): {''.join(tail)[-2000:]}")
    return out, seconds


def _ingest(corpus: Path, work: Path, embedder: str, log: TextIO | None) -> tuple[Path, bool]:
    """The milvus-lite file for this corpus and product code, ingested with the product defaults unless cached."""
    key = hashlib.sha256((_hash_tree(corpus) + _product_hash(embedder)).encode()).hexdigest()[:16]
    index = work / f"index-{key}.db"
    done = work / f"index-{key}.done"
    if done.is_file() and index.exists():
        return index, True
    for stale in work.glob("index-*"):
        if stale.is_file():
            stale.unlink()
        elif stale.is_dir():
            import shutil

            shutil.rmtree(stale)
    _say(log, f"ingesting {corpus} -> {index} (product defaults)")
    out, _ = _agentfleet(["ingest", "--source", str(corpus), "--index", str(index), "--embedder", embedder],
                         log=log)
    done.write_text(out)
    return index, False


def _passage_vectors(texts: Sequence[str], embedder: Any, work: Path, log: TextIO | None) -> np.ndarray:
    import numpy as np

    uniq = sorted(set(texts))
    h = hashlib.sha256(embedder.name.encode())
    for t in uniq:
        h.update(t.encode("utf-8", "surrogatepass") + b"\0")
    cache = work / f"passages-{h.hexdigest()[:16]}.npy"
    if cache.is_file():
        vecs = np.load(cache)
    else:
        for stale in work.glob("passages-*.npy"):
            stale.unlink()
        _say(log, f"embedding {len(uniq)} whole passages for exact dense search")
        vecs = np.zeros((len(uniq), embedder.dimension), dtype=np.float32)
        batch = 512
        for b in range(0, len(uniq), batch):
            vecs[b:b + batch] = embedder.embed(uniq[b:b + batch])
            _say(log, f"  {min(b + batch, len(uniq))}/{len(uniq)}")
        np.save(cache, vecs)
    row = {t: i for i, t in enumerate(uniq)}
    return vecs[[row[t] for t in texts]]


def _top(scores: np.ndarray, mask: np.ndarray, k: int) -> np.ndarray:
    import numpy as np

    s = np.where(mask, scores, -np.inf)
    k = min(k, int(mask.sum()))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    top = np.argpartition(-s, k - 1)[:k]
    return top[np.lexsort((top, -s[top]))]


def _method(report: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    r = report["retrieval"]
    return {"ndcg_at_10": r["ndcg_at_10"], "recall_at_10": r["recall_at_10"], "mrr": r["mrr"],
            "seconds": round(seconds, 3), "leaks": report["security"]["leaks"]}


def _subset(faq: pyfaq.PyFaq, queries: int, size: int | None) -> pyfaq.PyFaq:
    """The first `queries` queries by sha1 of their gold passage, and `size` passages in all (distractors chosen by
    sha1 as pyfaq does; None: every one), for quick runs and tests."""
    keep = sorted(faq.queries, key=lambda q: q.gold.sha1)[:queries]
    keep.sort(key=lambda q: q.id)
    distractors = list(faq.distractors)
    if size is not None:
        distractors = sorted(distractors, key=lambda p: p.sha1)[:max(0, size - len(keep))]
        distractors.sort(key=lambda p: p.path)
    return pyfaq.PyFaq(tuple(keep), tuple(distractors), faq.total_distractors)


def run_bench(*, docs: Path = pyfaq.DEFAULT_DOCS, size: int | None = None, queries: int | None = None,
              work: Path = DEFAULT_WORK, embedder: str = "all-minilm-l6-v2", log: TextIO | None = None,
              clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """size None: the full corpus. Raises pyfaq.DocsMissing when the documentation is not installed."""
    import numpy as np

    from ..retrieval.cache import normalise_query
    from ..retrieval.embedders import make_embedder

    faq = pyfaq.build(docs, size=size if queries is None else None)
    if queries is not None:
        faq = _subset(faq, queries, size)
    name = "pyfaq-full" if size is None else f"pyfaq-{faq.passages}"
    if queries is not None:
        name += f"-q{len(faq.queries)}"
    work = Path(work) / name
    work.mkdir(parents=True, exist_ok=True)
    counts = pyfaq.write(faq, work, name=name)
    corpus_dir, suite_path, keys_path = work / "corpus", work / "suite.yaml", work / "keys.yaml"

    t0 = clock()
    index, cached = _ingest(corpus_dir, work, embedder, log)
    ingest_s = clock() - t0

    suite: Suite = read_suite(str(suite_path))
    principals = principals_from_keys(keys_path.read_text("utf-8"), where=str(keys_path))
    corpus = _load_corpus(corpus_dir)
    n = len(corpus.sources)
    masks: dict[str, np.ndarray] = {}

    def mask_for(p: Principal) -> np.ndarray:
        if p.user not in masks:
            masks[p.user] = np.array([may_read(p, t, g) for t, g in zip(corpus.tenants, corpus.groups)], dtype=bool)
        return masks[p.user]

    def chunks(idx: Sequence[int], scores: Sequence[float]) -> list[RetrievedChunk]:
        return [RetrievedChunk(corpus.sources[i], corpus.sources[i], float(s), corpus.tenants[i], corpus.groups[i])
                for i, s in zip(idx, scores)]

    methods: dict[str, dict[str, Any]] = {}
    reports: dict[str, dict[str, Any]] = {}

    # (a) BM25
    t0 = clock()
    bm25 = BM25(corpus.texts)
    bm25_build_s = clock() - t0
    bm25_runs: dict[str, np.ndarray] = {}

    def bm25_search(q: str, p: Principal, k: int) -> list[RetrievedChunk]:
        s = bm25_runs[q] = bm25.scores(q)
        top = _top(s, mask_for(p), k)
        return chunks(top, s[top])

    t0 = clock()
    reports["bm25"] = run_eval(suite, principals, bm25_search)
    methods["bm25"] = {**_method(reports["bm25"], clock() - t0), "build_seconds": round(bm25_build_s, 3)}

    # (b) exact dense search over whole passages
    emb = make_embedder(embedder)
    t0 = clock()
    pvecs = _passage_vectors(corpus.texts, emb, work, log)
    embed_s = clock() - t0
    dense_runs: dict[str, np.ndarray] = {}

    def dense_search(q: str, p: Principal, k: int) -> list[RetrievedChunk]:
        s = dense_runs[q] = pvecs @ emb.embed([normalise_query(q)])[0]
        top = _top(s, mask_for(p), k)
        return chunks(top, s[top])

    t0 = clock()
    reports["dense_exact"] = run_eval(suite, principals, dense_search)
    methods["dense_exact"] = {**_method(reports["dense_exact"], clock() - t0),
                              "build_seconds": round(embed_s, 3)}

    # (d) hybrids over the same scores (the time is the fusion's own, on top of both rankers)
    def candidates(run: np.ndarray, p: Principal) -> dict[str, float]:
        top = _top(run, mask_for(p), FUSION_DEPTH)
        return {corpus.sources[i]: float(run[i]) for i in top}

    row_of = {s: i for i, s in enumerate(corpus.sources)}

    def fused(ranked: list[tuple[str, float]], k: int) -> list[RetrievedChunk]:
        idx = [row_of[d] for d, _ in ranked[:k]]
        return chunks(idx, [s for _, s in ranked[:k]])

    def rrf_search(q: str, p: Principal, k: int) -> list[RetrievedChunk]:
        runs = [candidates(bm25_runs[q], p), candidates(dense_runs[q], p)]
        return fused(rrf([list(r) for r in runs]), k)

    t0 = clock()
    reports["hybrid"] = run_eval(suite, principals, rrf_search)
    methods["hybrid"] = {**_method(reports["hybrid"], clock() - t0), "fusion": f"rrf k={RRF_K}"}

    def both(q: str, p: Principal) -> list[dict[str, float]]:
        return [candidates(bm25_runs[q], p), candidates(dense_runs[q], p)]

    methods["hybrid_weighted"] = _cross_validated_fusion(suite, principals, both, fused, clock)

    # (c) the product, as a user runs it
    out, retrieval_only_s = _agentfleet(["eval", "--suite", str(suite_path), "--index", str(index), "--keys",
                                         str(keys_path), "--retrieval-only", "--json", "--embedder", embedder],
                                        log=log, forward=False)
    reports["default"] = json.loads(out)
    methods["default"] = {**_method(reports["default"], retrieval_only_s),
                          "fusion": f"product hybrid: filtered dense + BM25 over chunks, min-max weighted, dense "
                                    f"weight {DENSE_WEIGHT}"}

    dense = methods["dense_exact"]
    best = max(methods.values(), key=lambda m: m["ndcg_at_10"])
    best_name = next(k for k, v in methods.items() if v is best)
    hybrids = {k: methods[k] for k in ("hybrid", "hybrid_weighted")}
    done = json.loads((work / f"{index.stem}.done").read_text() or "{}")
    return {
        "benchmark": "eval", "dataset": name, "embedder": embedder,
        "corpus": {"passages": counts["passages"], "queries": counts["questions"],
                   "documents_indexed": n, "permission_traps": counts["traps"],
                   "chunks": done.get("chunks"), "distractors_available": counts["distractors_available"]},
        "methods": {k: methods[k] for k in ("bm25", "dense_exact", "default", "hybrid", "hybrid_weighted")},
        "best": best_name,
        "default_vs_best": round(methods["default"]["ndcg_at_10"] / best["ndcg_at_10"], 4),
        "default_vs_dense_exact": {m: round(methods["default"][m] - dense[m], 4)
                                   for m in ("ndcg_at_10", "recall_at_10", "mrr")},
        "hybrid_beats_dense": any(h["ndcg_at_10"] > dense["ndcg_at_10"] and h["recall_at_10"] >= dense["recall_at_10"]
                                  for h in hybrids.values()),
        "retrieval_only_seconds": round(retrieval_only_s, 3),
        "ingest": {"cached": cached, "seconds": round(ingest_s, 3), "index": str(index)},
        "leaks": {k: m["leaks"] for k, m in methods.items()},
    }


def _cross_validated_fusion(suite: Suite, principals: Mapping[str, Principal], both: Callable,
                            fused: Callable, clock: Callable[[], float]) -> dict[str, Any]:
    """Weighted fusion w * dense + (1 - w) * bm25 (min-max normalised), w in 0, 0.05, ..., 1 chosen on one half of
    the queries (split by the parity of their position) and scored on the other; the two halves' cases together
    make the report, so no query is scored with a weight tuned on it."""
    from .retrieval import score_case, summarise

    t0 = clock()
    grid = [round(0.05 * i, 2) for i in range(21)]
    halves = [[c for i, c in enumerate(suite.cases) if i % 2 == h] for h in (0, 1)]

    def case_scores(case: Any, w: float) -> dict[str, Any]:
        p = principals[case.principal]
        ranked = weighted_fusion(candidates_of(case, p), (1.0 - w, w))
        return score_case(case, p, fused(ranked, 10 * FETCH_FACTOR))

    memo: dict[str, list[dict[str, float]]] = {}

    def candidates_of(case: Any, p: Principal) -> list[dict[str, float]]:
        if case.id not in memo:
            memo[case.id] = both(case.question, p)
        return memo[case.id]

    chosen, cases, folds = [], [], []
    for h in (0, 1):
        tune = halves[h]
        best_w = max(grid, key=lambda w: (sum(case_scores(c, w)["ndcg_at_10"] or 0.0 for c in tune), -abs(w - 0.5)))
        chosen.append(best_w)
        held_out = [case_scores(c, best_w) for c in halves[1 - h]]
        cases += held_out
        r = summarise(held_out)["retrieval"]
        folds.append({"tuned_on": f"half {h}", "dense_weight": best_w, "queries": len(held_out),
                      **{m: r[m] for m in ("ndcg_at_10", "recall_at_10", "mrr")}})
    report = summarise(cases)
    return {**_method(report, clock() - t0), "fusion": "min-max weighted, dense weight by 2-fold cross-validation",
            "dense_weights": chosen, "folds": folds}


# --- command line -----------------------------------------------------------------------------------------------
def add_bench_parsers(bench_sub: argparse._SubParsersAction) -> None:
    b = bench_sub.add_parser("eval", help="retrieval quality on pyfaq: BM25, exact dense, the product default and "
                                          "hybrid fusion, in one run on the same queries and principals")
    size = b.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="every passage (the default)")
    size.add_argument("--size", type=int, help="passages (gold first, then distractors by sha1; pyfaq-2k: 2500)")
    b.add_argument("--queries", type=int, default=None, help=argparse.SUPPRESS)  # a query subset for tests
    b.add_argument("--work", default=str(DEFAULT_WORK),
                   help="cache directory for the corpus, the index and passage embeddings (default: %(default)s)")
    b.add_argument("--docs", default=None, help="reStructuredText sources (default: what python3.11-doc installs)")
    b.add_argument("--embedder", default="all-minilm-l6-v2")
    b.add_argument("--json", action="store_true", help="print the report as one JSON object")
    b.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    docs = Path(args.docs) if args.docs else pyfaq.DEFAULT_DOCS
    try:
        report = run_bench(docs=docs, size=None if args.full else args.size, queries=args.queries,
                           work=Path(args.work), embedder=args.embedder, log=sys.stderr)
    except pyfaq.DocsMissing:
        print(f"error: the Python documentation sources are missing ({docs}/faq); install them with: "
              f"apt-get install {pyfaq.DEBIAN_PACKAGE}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        print(f"error: bench eval: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report))
        return 0
    c = report["corpus"]
    print(f"{report['dataset']}: {c['queries']} queries over {c['passages']} passages ({c['chunks']} chunks "
          f"indexed), embedder {report['embedder']}")
    print(f"{'method':<16} {'nDCG@10':>8} {'recall@10':>10} {'MRR':>7} {'seconds':>9} {'leaks':>6}")
    for k, m in report["methods"].items():
        print(f"{k:<16} {m['ndcg_at_10']:>8.3f} {m['recall_at_10']:>10.3f} {m['mrr']:>7.3f} {m['seconds']:>9.2f} "
              f"{m['leaks']:>6}")
    d = report["default_vs_dense_exact"]
    print(f"default vs best ({report['best']}): {report['default_vs_best']:.3f} x nDCG@10; default - dense_exact: "
          f"nDCG@10 {d['ndcg_at_10']:+.4f}, recall@10 {d['recall_at_10']:+.4f}; hybrid beats dense: "
          f"{report['hybrid_beats_dense']}; retrieval-only eval {report['retrieval_only_seconds']:.1f}s")
    return 0
