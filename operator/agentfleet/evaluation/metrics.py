"""Scoring, pure: ranking metrics as trec_eval and BEIR define them (recall@k, nDCG@k with graded gains and a log2
discount, reciprocal rank) and SQuAD's answer metrics (normalised exact match, token F1). A ranking is a sequence
of document ids, best first, without duplicates; judgements (qrels) map a document id to a relevance grade, where a
grade >= 1 counts as relevant and unjudged documents count 0. Tests hold every function to pytrec_eval (trec_eval
itself) on random rankings."""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Mapping, Sequence

__all__ = ["recall_at", "ndcg_at", "reciprocal_rank", "normalise_answer", "exact_match", "token_f1", "mean"]


def _check(ranking: Sequence[str]) -> None:
    if len(set(ranking)) != len(ranking):
        raise ValueError("a ranking lists each document once")


def recall_at(ranking: Sequence[str], qrels: Mapping[str, int], k: int) -> float | None:
    """Share of the relevant documents (grade >= 1) found in the top k; None when nothing is judged relevant
    (trec_eval leaves such a query out of the mean)."""
    _check(ranking)
    relevant = {d for d, g in qrels.items() if g >= 1}
    if not relevant:
        return None
    return sum(1 for d in ranking[:k] if d in relevant) / len(relevant)


def ndcg_at(ranking: Sequence[str], qrels: Mapping[str, int], k: int = 10) -> float | None:
    """trec_eval's ndcg_cut_k, which BEIR reports: gain = grade (linear), discount log2(rank + 1), the ideal
    ranking being every judged document sorted by grade, cut at k. None when no document has a positive grade."""
    _check(ranking)
    ideal = sorted((g for g in qrels.values() if g > 0), reverse=True)[:k]
    if not ideal:
        return None
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    dcg = sum(max(qrels.get(d, 0), 0) / math.log2(i + 2) for i, d in enumerate(ranking[:k]))
    return dcg / idcg


def reciprocal_rank(ranking: Sequence[str], qrels: Mapping[str, int], k: int | None = None) -> float | None:
    """1 / rank of the first relevant document in the top k (all of the ranking when k is None), else 0."""
    _check(ranking)
    if not any(g >= 1 for g in qrels.values()):
        return None
    for i, d in enumerate(ranking if k is None else ranking[:k]):
        if qrels.get(d, 0) >= 1:
            return 1.0 / (i + 1)
    return 0.0


def mean(values: Sequence[float | None]) -> float | None:
    """Mean over the defined values (None: the metric does not apply to that case); None when none is."""
    got = [v for v in values if v is not None]
    return sum(got) / len(got) if got else None


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalise_answer(text: str) -> str:
    """SQuAD v1.1's normalisation: lower case, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalise_answer(prediction) == normalise_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token F1 over normalised tokens (a bag: repeated tokens count as often as both sides have them);
    two empty answers agree (1.0), one empty answer scores 0."""
    pred, ref = normalise_answer(prediction).split(), normalise_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)
