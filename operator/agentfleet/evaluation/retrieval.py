"""Retrieval-only evaluation: each case's question searched as that case's principal, scored against its
judgements, and every hit checked for leaks. `score_case` and `summarise` are pure; `run` drives any search
function; `open_search` makes one from the product's Retriever over a MilvusStore (the retrieval-only CLI, and
agent mode's direct search as each case's principal); `keys_by_user` reads a key store. The leak check re-derives
permission from the stored access fields independently of `retrieval.filters.for_principal`, so a broken filter
cannot hide its own leaks."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence, TextIO

import yaml

from ..retrieval.filters import WILDCARD, Principal, encode_name
from .metrics import mean, ndcg_at, recall_at, reciprocal_rank
from .suite import Case, Suite, SuiteError

__all__ = ["RetrievedChunk", "score_case", "summarise", "run", "may_read", "principals_from_keys", "keys_by_user",
           "open_search", "IndexMissing", "Search", "MODE", "FETCH_FACTOR"]

MODE = "retrieval-only"
# Chunks fetched per document slot: a long document can fill several of the top k chunks, and metrics rank
# documents, so max(k, 10) * FETCH_FACTOR chunks are deduplicated by source and cut at max(k, 10) documents.
FETCH_FACTOR = 3


@dataclass(frozen=True)
class RetrievedChunk:
    id: str
    source: str
    score: float
    tenant: str   # the stored, encoded access fields (retrieval.filters)
    groups: str


def may_read(principal: Principal, tenant: str, groups: str) -> bool:
    """Whether `principal` may read a chunk stored with these encoded access fields: its tenant (or public) and
    one of its groups (or the whole tenant)."""
    if tenant not in (encode_name(principal.tenant), WILDCARD):
        return False
    stored = {g for g in groups.split("|") if g}
    return WILDCARD in stored or any(encode_name(g) in stored for g in principal.groups)


def _document(source: str, judged: Mapping[str, int] | Sequence[str]) -> str:
    """The judged name a source answers to: itself, else its file (a JSONL record `f.jsonl#3` counts for `f.jsonl`)."""
    if source in judged:
        return source
    base = source.split("#", 1)[0]
    return base if base in judged else source


def score_case(case: Case, principal: Principal, chunks: Sequence[RetrievedChunk], *, k: int = 10
               ) -> dict[str, Any]:
    judged = {**case.relevant, **{f: 0 for f in case.forbidden}}
    ranking: list[str] = []
    for c in chunks:
        doc = _document(c.source, judged)
        if doc not in ranking:
            ranking.append(doc)
    ranking = ranking[:max(k, 10)]   # nDCG@10 and recall@10 are always reported
    leaks = []
    for c in chunks:
        reasons = []
        if _document(c.source, case.forbidden) in case.forbidden:
            reasons.append("forbidden source")
        if not may_read(principal, c.tenant, c.groups):
            reasons.append("outside the principal's permissions")
        if reasons:
            leaks.append({"source": c.source, "chunk": c.id, "reason": "; ".join(reasons)})
    return {"id": case.id, "principal": case.principal, "question": case.question,
            "retrieved": ranking,
            "recall_at_10": recall_at(ranking, case.relevant, 10),
            f"recall_at_{k}": recall_at(ranking, case.relevant, k),
            "ndcg_at_10": ndcg_at(ranking, case.relevant, 10),
            "mrr": reciprocal_rank(ranking, case.relevant),
            "leaks": leaks}


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 6)


def summarise(cases: Sequence[dict[str, Any]], *, k: int = 10, seconds: float = 0.0) -> dict[str, Any]:
    """The report: top-level `retrieval` and `security` as in issue 8's schema; `answers` and `tasks` need the
    agent and are absent in this mode."""
    scored = [c for c in cases if c["recall_at_10"] is not None]
    return {
        "mode": MODE,
        "note": "retrieval measured directly against the index as each case's principal; the answers and tasks "
                "sections need the agent (`agentfleet eval -f APP.yaml`) and are absent",
        "k": k,
        "retrieval": {"recall_at_10": _round(mean([c["recall_at_10"] for c in cases])),
                      f"recall_at_{k}": _round(mean([c[f"recall_at_{k}"] for c in cases])),
                      "ndcg_at_10": _round(mean([c["ndcg_at_10"] for c in cases])),
                      "mrr": _round(mean([c["mrr"] for c in cases])),
                      "cases_scored": len(scored)},
        "security": {"leaks": sum(len(c["leaks"]) for c in cases),
                     "cases_with_leaks": [c["id"] for c in cases if c["leaks"]]},
        "seconds": round(seconds, 3),
        "cases": [{**c, **{m: _round(c[m]) for m in ("recall_at_10", f"recall_at_{k}", "ndcg_at_10", "mrr")}}
                  for c in cases],
    }


def keys_by_user(text: str, *, where: str = "keys.yaml") -> dict[str, tuple[str, Principal]]:
    """user -> (API key, Principal) from a key store file (API key -> {user, tenant, groups}); a user with several
    keys keeps the first. Keys never appear in errors."""
    from ..runtime.keystore import KeyEntry

    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise SuiteError([f"{where}: expected a mapping of API key -> {{user, tenant, groups}}"])
    out: dict[str, tuple[str, Principal]] = {}
    problems = []
    for i, (key, raw) in enumerate(data.items(), 1):
        try:
            entry = KeyEntry.model_validate(raw)
        except Exception as err:  # pydantic's ValidationError; reported per entry, never with the key
            problems.append(f"{where}: entry {i}: {str(err).splitlines()[-1].strip()}")
            continue
        out.setdefault(entry.user, (str(key), Principal(entry.tenant, tuple(entry.groups), user=entry.user)))
    if problems:
        raise SuiteError(problems)
    return out


def principals_from_keys(text: str, *, where: str = "keys.yaml") -> dict[str, Principal]:
    """user -> Principal from a key store file (API key -> {user, tenant, groups}); keys never appear in errors."""
    return {user: principal for user, (_, principal) in keys_by_user(text, where=where).items()}


Search = Callable[[str, Principal, int], Sequence[RetrievedChunk]]


def run(suite: Suite, principals: Mapping[str, Principal], search: Search, *, k: int = 10,
        log: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    missing = sorted({c.principal for c in suite.cases} - set(principals))
    if missing:
        raise SuiteError([f"case {c.id}: principal: user {c.principal!r} is not in the key store"
                          for c in suite.cases if c.principal in missing])
    started = clock()
    cases = []
    for n, case in enumerate(suite.cases, 1):
        principal = principals[case.principal]
        cases.append(score_case(case, principal, search(case.question, principal, max(k, 10) * FETCH_FACTOR), k=k))
        if log is not None and (n % 25 == 0 or n == len(suite.cases)):
            log.write(f"eval: {n}/{len(suite.cases)} cases ({clock() - started:.1f}s)\n")
            log.flush()
    return summarise(cases, k=k, seconds=clock() - started)


class IndexMissing(RuntimeError):
    """The index has no such collection (nothing ingested yet)."""


@contextlib.contextmanager
def open_search(index: str, collection: str, *, embedder: str = "all-minilm-l6-v2",
                embedding_model: str | None = None, mode: str | None = None, token: str | None = None,
                lock_timeout_s: float = 30) -> Iterator[Search]:
    """A `Search` over an index with the product's own Retriever (embedder, permission filter inside the vector
    search), each hit carrying its stored access fields for the independent leak check. Raises IndexMissing,
    retrieval.store.StoreError or retrieval.embedders.EmbedderError."""
    from ..retrieval.embedders import make_embedder
    from ..retrieval.search import Retriever
    from ..retrieval.store import MilvusStore

    store = MilvusStore(index, collection, token=token, lock_timeout_s=lock_timeout_s)
    with store:
        if not store.exists():
            raise IndexMissing(f"{index} has no collection {collection} (run agentfleet ingest first)")
        retriever = Retriever(store, make_embedder(embedder, model=embedding_model), mode=mode)  # type: ignore[arg-type]

        def search(question: str, principal: Principal, k: int) -> Sequence[RetrievedChunk]:
            hits = retriever.search(question, principal, k=k)
            access = {row["id"]: row for row in store.client.get(
                store.collection, ids=[h.id for h in hits], output_fields=["tenant", "groups"])} if hits else {}
            return [RetrievedChunk(h.id, h.source, h.score, access.get(h.id, {}).get("tenant", ""),
                                   access.get(h.id, {}).get("groups", "")) for h in hits]

        search.mode = retriever.mode  # type: ignore[attr-defined]  # what ran: hybrid falls back to dense
        yield search
