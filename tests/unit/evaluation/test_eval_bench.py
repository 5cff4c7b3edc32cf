"""`agentfleet bench eval`: BM25 and the fusions against hand-computed tables, and the benchmark end to end on a
small subset of the real pyfaq set (the product's ingest and retrieval-only eval in child processes, milvus-lite,
the built-in embedder). No timing is asserted."""

from __future__ import annotations

import json
import math

import pytest

from agentfleet import cli
from agentfleet.evaluation import pyfaq
from agentfleet.evaluation.bench import BM25, analyse, rrf, s_stem, weighted_fusion


@pytest.mark.parametrize("word,stem", [("cats", "cat"), ("queries", "query"), ("movies", "movy"), ("glasses", "glasse"),
                                       ("does", "doe"), ("bus", "bus"), ("class", "class"), ("aies", "aie"),
                                       ("toes", "toe"), ("s", "s"), ("python", "python")])
def test_s_stemmer_applies_harmans_first_matching_rule(word, stem):
    assert s_stem(word) == stem


def test_analyser_lowercases_drops_lucene_stop_words_and_stems():
    assert analyse("The Cats are running, and flies!") == ["cat", "running", "fly"]


def test_bm25_matches_a_hand_computed_table():
    # N = 3, |d| = 3, 2, 1, avgdl = 2, k1 = 0.9, b = 0.4: K(d) = 0.9 * (0.6 + 0.2 |d|) = 1.08, 0.9, 0.72
    # idf(cat) = ln(1 + 2.5 / 1.5) = 0.980829, idf(dog) = ln(1 + 1.5 / 2.5) = 0.470004
    bm = BM25(["cat cat dog", "dog bird", "fish"], k1=0.9, b=0.4)
    assert bm.avgdl == 2.0
    assert bm.idf["cat"] == pytest.approx(math.log(1 + 2.5 / 1.5))
    table = {
        "cat": [0.980829 * 2 * 1.9 / (2 + 1.08), 0.0, 0.0],              # 1.210113
        "dog": [0.470004 * 1.9 / (1 + 1.08), 0.470004 * 1.9 / (1 + 0.9), 0.0],   # 0.429330, 0.470004
        "cats and dogs": [1.210113 + 0.429330, 0.470004, 0.0],
        "the fish": [0.0, 0.0, math.log(1 + 2.5 / 1.5) * 1.9 / (1 + 0.72)],
        "unicorn": [0.0, 0.0, 0.0],
    }
    for query, want in table.items():
        assert list(bm.scores(query)) == pytest.approx(want, abs=1e-5), query
    assert list(bm.scores("cat cat")) == pytest.approx([2 * 1.210113, 0, 0], abs=1e-5)   # each occurrence counts


def test_rrf_matches_a_hand_computed_table():
    fused = rrf([["a", "b", "c"], ["b", "d", "a"]], k=60)
    want = [("b", 1 / 62 + 1 / 61), ("a", 1 / 61 + 1 / 63), ("d", 1 / 62), ("c", 1 / 63)]
    assert [d for d, _ in fused] == [d for d, _ in want]
    assert [s for _, s in fused] == pytest.approx([s for _, s in want])
    assert rrf([["x", "y"], ["y", "x"]], k=60) == [("x", pytest.approx(1 / 61 + 1 / 62)),
                                                   ("y", pytest.approx(1 / 61 + 1 / 62))]   # tie: first seen


def test_weighted_fusion_min_max_normalises_each_run():
    fused = weighted_fusion([{"a": 1.0, "b": 3.0, "c": 2.0}, {"b": 0.5, "d": 1.0}], (0.5, 0.5))
    assert fused == [("b", 0.5), ("d", 0.5), ("c", 0.25), ("a", 0.0)]
    assert weighted_fusion([{"a": 1.0}, {}], (0.3, 0.7)) == [("a", 0.3)]


@pytest.fixture(scope="module")
def real_docs():
    if not (pyfaq.DEFAULT_DOCS / "faq" / "general.rst.txt").is_file():
        pytest.skip(f"the real pyfaq documentation is not installed ({pyfaq.DEFAULT_DOCS}; apt-get install "
                    f"{pyfaq.DEBIAN_PACKAGE})")
    return pyfaq.DEFAULT_DOCS


def test_bench_eval_runs_every_method_on_a_small_subset_and_reports_the_schema(real_docs, tmp_path, capsys):
    argv = ["bench", "eval", "--size", "60", "--queries", "12", "--work", str(tmp_path), "--json"]
    assert cli.main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["corpus"]["passages"] == 60 and first["corpus"]["queries"] == 12
    assert first["corpus"]["documents_indexed"] == 60 + 2 * 12   # every passage plus two permission traps each
    assert set(first["methods"]) == {"bm25", "dense_exact", "default", "hybrid", "hybrid_weighted"}
    for name, m in first["methods"].items():
        assert set(m) >= {"ndcg_at_10", "recall_at_10", "mrr", "seconds", "leaks"}, name
        assert 0.0 <= m["ndcg_at_10"] <= 1.0 and 0.0 <= m["recall_at_10"] <= 1.0 and 0.0 <= m["mrr"] <= 1.0
        assert m["leaks"] == 0, name
    assert first["methods"]["dense_exact"]["recall_at_10"] >= 0.8   # 60 passages: the gold one is easy to find
    assert first["default_vs_best"] == pytest.approx(
        first["methods"]["default"]["ndcg_at_10"] / max(m["ndcg_at_10"] for m in first["methods"].values()),
        abs=1e-3)
    assert isinstance(first["hybrid_beats_dense"], bool) and first["retrieval_only_seconds"] > 0
    folds = first["methods"]["hybrid_weighted"]["folds"]   # each fold: the weight tuned on one half, scored on the other
    assert [f["dense_weight"] for f in folds] == first["methods"]["hybrid_weighted"]["dense_weights"]
    assert sum(f["queries"] for f in folds) == 12
    assert "hybrid" in first["methods"]["default"]["fusion"]   # the product's default retrieval is the hybrid
    assert first["ingest"]["cached"] is False

    assert cli.main(argv) == 0                      # the rerun reuses the index and the passage vectors
    again = json.loads(capsys.readouterr().out)
    assert again["ingest"]["cached"] is True
    assert again["methods"]["default"]["ndcg_at_10"] == first["methods"]["default"]["ndcg_at_10"]
    assert again["methods"]["dense_exact"]["ndcg_at_10"] == first["methods"]["dense_exact"]["ndcg_at_10"]
