"""Metric functions against hand-computed tables and against trec_eval (pytrec_eval) as an oracle."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentfleet.evaluation.metrics import (
    exact_match, mean, ndcg_at, normalise_answer, recall_at, reciprocal_rank, token_f1,
)

L2 = math.log2


@pytest.mark.parametrize("ranking, qrels, k, recall, ndcg10, mrr", [
    (["a", "b", "c"], {"a": 1}, 10, 1.0, 1.0, 1.0),
    (["x", "a"], {"a": 1}, 10, 1.0, (1 / L2(3)) / 1.0, 0.5),
    (["x", "y"], {"a": 1}, 10, 0.0, 0.0, 0.0),
    (["x", "a"], {"a": 1, "b": 1}, 1, 0.0, (1 / L2(3)) / (1 + 1 / L2(3)), 0.5),
    # graded: ideal = [3, 2]; dcg = 2/log2(2) + 3/log2(3)
    (["b", "a"], {"a": 3, "b": 2, "c": 0}, 10, 1.0, (2 + 3 / L2(3)) / (3 + 2 / L2(3)), 1.0),
    # a judged-0 document is not relevant: first relevant at rank 3
    (["c", "x", "a"], {"a": 2, "c": 0}, 2, 0.0, (2 / L2(4)) / 2, 1 / 3),
    # nothing relevant: undefined, left out of means (trec_eval's behaviour)
    (["a"], {"a": 0}, 10, None, None, None),
    ([], {"a": 1}, 10, 0.0, 0.0, 0.0),
], ids=["first", "second", "miss", "cut-at-k", "graded-swapped", "judged-zero", "no-relevant", "empty-ranking"])
def test_ranking_metrics_match_hand_computed(ranking, qrels, k, recall, ndcg10, mrr):
    assert recall_at(ranking, qrels, k) == pytest.approx(recall) if recall is not None else \
        recall_at(ranking, qrels, k) is None
    got = ndcg_at(ranking, qrels, 10)
    assert (got is None) if ndcg10 is None else got == pytest.approx(ndcg10, abs=1e-12)
    got = reciprocal_rank(ranking, qrels)
    assert (got is None) if mrr is None else got == pytest.approx(mrr, abs=1e-12)


def test_ndcg_cuts_the_ideal_ranking_at_k():
    qrels = {f"d{i}": 1 for i in range(12)}
    assert ndcg_at([f"d{i}" for i in range(10)], qrels, 10) == pytest.approx(1.0)


def test_a_ranking_with_duplicates_is_refused():
    with pytest.raises(ValueError, match="once"):
        recall_at(["a", "a"], {"a": 1}, 10)


def test_mean_ignores_undefined_values():
    assert mean([1.0, None, 0.0]) == 0.5
    assert mean([None]) is None


@pytest.mark.parametrize("text, normalised", [
    ("The Cat!", "cat"), ("  an  apple, a day ", "apple day"), ("Theory", "theory"), ("", ""),
], ids=["article-punct", "spaces", "article-prefix-kept", "empty"])
def test_normalise_answer_is_squad_normalisation(text, normalised):
    assert normalise_answer(text) == normalised


@pytest.mark.parametrize("prediction, reference, em, f1", [
    ("The Eiffel Tower", "eiffel tower", 1.0, 1.0),
    ("Eiffel Tower in Paris", "the Eiffel Tower", 0.0, 2 * (2 / 4) * 1.0 / (2 / 4 + 1.0)),
    ("paris paris", "paris", 0.0, 2 * 0.5 * 1.0 / 1.5),
    ("london", "paris", 0.0, 0.0),
    ("", "", 1.0, 1.0),
    ("the", "paris", 0.0, 0.0),
], ids=["exact", "partial", "repeated-token", "disjoint", "both-empty", "only-article"])
def test_exact_match_and_token_f1(prediction, reference, em, f1):
    assert exact_match(prediction, reference) == em
    assert token_f1(prediction, reference) == pytest.approx(f1, abs=1e-12)


# --- oracle: trec_eval through pytrec_eval ----------------------------------------------------------------------
pytrec_eval = pytest.importorskip("pytrec_eval")

DOCS = [f"d{i:02d}" for i in range(30)]


@st.composite
def judged_run(draw):
    qrels = draw(st.dictionaries(st.sampled_from(DOCS), st.integers(0, 3), min_size=1, max_size=15))
    ranking = draw(st.lists(st.sampled_from(DOCS), unique=True, min_size=0, max_size=25))
    return ranking, qrels


@settings(max_examples=300, deadline=None)
@given(judged_run())
def test_metrics_agree_with_trec_eval(case):
    ranking, qrels = case
    if not any(g >= 1 for g in qrels.values()):
        assert recall_at(ranking, qrels, 10) is None and ndcg_at(ranking, qrels) is None
        return
    # Strictly decreasing scores: trec_eval orders by score, so the order is ours.
    run = {"q": {d: float(len(ranking) - i) for i, d in enumerate(ranking)}}
    if not ranking:
        run = {"q": {"unjudged-filler": 0.0}}
    ev = pytrec_eval.RelevanceEvaluator({"q": qrels}, {"recall.5,10", "ndcg_cut.10", "recip_rank"})
    oracle = ev.evaluate(run)["q"]
    assert recall_at(ranking, qrels, 10) == pytest.approx(oracle["recall_10"], abs=1e-9)
    assert recall_at(ranking, qrels, 5) == pytest.approx(oracle["recall_5"], abs=1e-9)
    assert ndcg_at(ranking, qrels, 10) == pytest.approx(oracle["ndcg_cut_10"], abs=1e-9)
    assert reciprocal_rank(ranking, qrels) == pytest.approx(oracle["recip_rank"], abs=1e-9)
