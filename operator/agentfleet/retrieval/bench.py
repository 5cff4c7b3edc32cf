"""`agentfleet bench retrieval`: a synthetic index (clustered unit vectors, tenants and groups like a real ACL'd
corpus) on milvus-lite, timed three ways (unfiltered, tenant only, tenant AND any-of groups) against exact numpy
brute force with the same filter in the same run, plus recall@10 of the filtered search against that brute
force and ingestion throughput (embedding measured on a sample with the built-in model, insert on all rows)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .filters import Principal, encode_name, for_principal, stored_access
from .store import MilvusStore

__all__ = ["run_bench"]

_WORDS = ("policy vacation release engineer forecast revenue salary incident robot fleet canary deploy "
          "expense hotel travel approval manager quarter budget carry leave days customer support network "
          "credential secret rotation firmware telemetry pager severity contract order margin payroll").split()


def _pct(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples) * 1000.0
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p95_ms": round(float(np.percentile(a, 95)), 2)}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def run_bench(*, chunks: int = 100_000, dim: int = 384, queries: int = 50, tenants: int = 10, groups: int = 12,
              embed_sample: int = 256, index: str | None = None, seed: int = 7, log: TextIO | None = None
              ) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    say = (lambda msg: (log.write(msg + "\n"), log.flush())) if log else (lambda msg: None)
    # Real embeddings cluster by topic; pure Gaussian noise would flatter nothing and mislead (facts.md).
    centroids = rng.standard_normal((max(16, chunks // 400), dim)).astype(np.float32)
    assign = rng.integers(0, len(centroids), chunks)
    vectors = _unit(centroids[assign] + 0.7 * rng.standard_normal((chunks, dim)).astype(np.float32))
    tenant_of = rng.integers(0, tenants, chunks)
    member = np.zeros((chunks, groups), dtype=bool)
    picks = np.argsort(rng.random((chunks, groups)), axis=1)[:, :2]
    member[np.arange(chunks)[:, None], picks] = True
    tenant_names = [f'tenant "{t}" | %_' for t in range(tenants)]  # hostile names cost nothing extra
    group_names = [f"group[{g}]' or 1==1" for g in range(groups)]

    tmp = None
    if index is None:
        tmp = tempfile.TemporaryDirectory(prefix="agentfleet-bench-")
        index = str(Path(tmp.name) / "bench.db")
    try:
        store = MilvusStore(index, "bench")
        store.drop()
        store.ensure_collection(dimension=dim, shards=2)
        say(f"inserting {chunks} chunks")
        t0 = time.perf_counter()
        for b in range(0, chunks, 2000):
            rows = []
            for i in range(b, min(b + 2000, chunks)):
                acc = stored_access(tenant_names[tenant_of[i]], [group_names[g] for g in np.flatnonzero(member[i])])
                rows.append({"id": f"{i:012x}", "vector": vectors[i].tolist(), "tenant": acc.tenant,
                             "groups": acc.groups, "doc": f"{i // 8:08x}", "source": f"doc{i // 8}.md",
                             "title": "t", "trail": "[]", "start": 0, "end": 0, "text": f"chunk {i}"})
            store.upsert(rows)
        store.flush()
        insert_s = time.perf_counter() - t0
        insert_rate = chunks / insert_s

        embed_rate = None
        if embed_sample > 0:
            from .embedders import LocalMiniLM

            emb = LocalMiniLM()
            passages = [" ".join(rng.choice(_WORDS, 100)) for _ in range(embed_sample)]
            emb.embed(passages[:8])
            t0 = time.perf_counter()
            emb.embed(passages)
            embed_rate = embed_sample / (time.perf_counter() - t0)

        qidx = rng.integers(0, chunks, queries)
        qvecs = _unit(vectors[qidx] + 0.5 * rng.standard_normal((queries, dim)).astype(np.float32))
        principals = []
        for _ in range(queries):
            t = int(rng.integers(0, tenants))
            gs = rng.choice(groups, 2, replace=False)
            principals.append((t, gs, Principal(tenant_names[t], tuple(group_names[g] for g in gs))))

        def timed(expr_of) -> tuple[list[float], list[list[str]]]:
            for q in range(min(3, queries)):  # warm-up
                store.search_expr([qvecs[q]], expr_of(q), k=10, fields=())
            lat, ids = [], []
            for q in range(queries):
                t0 = time.perf_counter()
                hits = store.search_expr([qvecs[q]], expr_of(q), k=10, fields=())[0]
                lat.append(time.perf_counter() - t0)
                ids.append([h.id for h in hits])
            return lat, ids

        say("searching")
        unf, _ = timed(lambda q: "")
        ten, _ = timed(lambda q: f'tenant == "{encode_name(principals[q][2].tenant)}"')
        acl, acl_ids = timed(lambda q: for_principal(principals[q][2]).expr)

        brute, recalls, permitted = [], [], []
        for q in range(queries):
            t, gs, _ = principals[q]
            t0 = time.perf_counter()
            mask = (tenant_of == t) & member[:, gs].any(axis=1)
            scores = vectors @ qvecs[q]
            scores[~mask] = -np.inf
            top = np.argpartition(-scores, 10)[:10]
            top = top[np.argsort(-scores[top])]
            brute.append(time.perf_counter() - t0)
            want = {f"{i:012x}" for i in top if np.isfinite(scores[i])}
            permitted.append(int(mask.sum()))
            recalls.append(len(want & set(acl_ids[q])) / max(1, len(want)))
            leaked = [i for i in acl_ids[q] if not mask[int(i, 16)]]
            if leaked:
                raise AssertionError(f"filtered search returned chunks outside the principal's access: {leaked}")
        store.close()
    finally:
        if tmp is not None:
            tmp.cleanup()

    report: dict[str, Any] = {
        "chunks": chunks, "dim": dim, "queries": queries, "index": "FLAT (milvus-lite)",
        "unfiltered": _pct(unf), "tenant_filtered": _pct(ten), "acl_filtered": _pct(acl), "bruteforce": _pct(brute),
        "recall_at_10": round(float(np.mean(recalls)), 4),
        "permitted_fraction": round(float(np.mean(permitted)) / chunks, 4),
        "insert_chunks_per_s": round(insert_rate, 1),
        "embed_chunks_per_s": round(embed_rate, 1) if embed_rate else None,
        # Embedding and inserting run one after the other in a worker: their times add up.
        "ingest_chunks_per_s": round(1.0 / (1.0 / insert_rate + 1.0 / embed_rate), 1) if embed_rate
        else round(insert_rate, 1),
    }
    report["filtered_over_unfiltered_p50"] = round(report["acl_filtered"]["p50_ms"]
                                                   / report["unfiltered"]["p50_ms"], 3)
    report["bruteforce_over_ours_p50"] = round(report["bruteforce"]["p50_ms"] / report["acl_filtered"]["p50_ms"], 3)
    return report
