"""Property tests against a real milvus-lite: random corpora with hostile tenant and group names, random
principals. No hit is ever outside the principal's access; with k at least the number of permitted chunks every
permitted chunk comes back (the filter runs inside the search, not after it); a permitted chunk's own vector finds
it first. The same for the BM25 full-text search and the hybrid Retriever (both of its searches are filtered)."""

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from agentfleet.retrieval.filters import Principal, stored_access
from agentfleet.retrieval.search import Retriever
from agentfleet.retrieval.store import MilvusStore

NAMES = ['acme', 'globex', '"', "'", "%", "_", "|", "*", "a|b", "a", "b", "[x]", '" or 1==1 or "', "é", "😀", "",
         "ACME", "%|61|%", "\\"]
name = st.sampled_from(NAMES)
DIM = 8
_seq = itertools.count()


class _Fixed:
    """An embedder that embeds every query as the vector it was given."""
    name, dimension = "fixed", DIM

    def __init__(self, vector):
        self.vector = vector

    def embed(self, texts):
        return [self.vector.tolist() for _ in texts]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = MilvusStore(str(tmp_path_factory.mktemp("lite") / "acl.db"), "unused")
    yield s
    s.close()


def _permitted(row, principal):
    tenant, groups, public = row
    if public:
        return True
    return tenant == principal.tenant and (not groups or bool(set(groups) & set(principal.groups)))


corpus = st.lists(st.tuples(name, st.lists(name, max_size=3, unique=True), st.booleans().map(lambda b: b and False)
                            | st.just(False)), min_size=1, max_size=25)
principals = st.lists(st.tuples(name, st.lists(name, max_size=3, unique=True)), min_size=1, max_size=4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=corpus, asks=principals, public=st.lists(st.integers(0, 24), max_size=2), seed=st.integers(0, 2**16))
def test_search_respects_access(store, rows, asks, public, seed):
    rows = [(t, g, i in public) for i, (t, g, _) in enumerate(rows)]
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((len(rows), DIM)).astype(np.float32)
    store.collection = f"c{next(_seq)}"
    store._loaded = False
    store.ensure_collection(dimension=DIM, shards=2)
    data = []
    for i, (tenant, groups, is_public) in enumerate(rows):
        acc = stored_access(None if is_public else tenant, groups, public=is_public)
        data.append({"id": f"r{i}", "vector": vecs[i].tolist(), "tenant": acc.tenant, "groups": acc.groups,
                     "doc": f"d{i}", "source": f"s{i}", "title": "", "trail": "[]", "start": 0, "end": 0,
                     "text": f"common word{i}"})
    store.upsert(data)
    store.flush()
    for tenant, groups in asks:
        p = Principal(tenant, tuple(groups))
        allowed = {f"r{i}" for i, row in enumerate(rows) if _permitted(row, p)}
        q = rng.standard_normal(DIM).astype(np.float32)
        hybrid = Retriever(store, _Fixed(q))
        assert hybrid.mode == "hybrid"
        for k in (1, 3, len(rows)):
            got = [h.id for h in store.search([q], p, k=k)[0]]
            assert set(got) <= allowed, (p, set(got) - allowed)
            assert len(got) == min(k, len(allowed))
            for text in ("common", "common word0 word1 word2"):  # every row matches "common"
                got = [h.id for h in store.search_text([text], p, k=k)[0]]
                assert set(got) <= allowed, (p, set(got) - allowed)
                assert len(got) == min(k, len(allowed))
                got = [h.id for h in hybrid.search(text, p, k=k)]
                assert set(got) <= allowed, (p, set(got) - allowed)
                assert len(got) == min(k, len(allowed)) and len(set(got)) == len(got)
        for rid in sorted(allowed)[:3]:
            i = int(rid[1:])
            top = store.search([vecs[i]], p, k=1)[0]
            assert top and top[0].id == rid or np.allclose(top[0].score, 1.0, atol=1e-4)
    store.drop()
