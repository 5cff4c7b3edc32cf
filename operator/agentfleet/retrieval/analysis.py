"""Text analysis for BM25 (pure), one implementation for the product's full-text search and the bench's BM25:
lower-cased `\\w+` tokens, Lucene's English stop words dropped (EnglishAnalyzer.ENGLISH_STOP_WORDS_SET, as
Pyserini's default analyzer), Harman's S-stemmer. The store indexes `terms(text)` in a BM25 field and searches it with
`query_terms(query)`: the analysis runs here, not in the engine, because milvus-lite's analyzer has no stemmer (on
pyfaq the stemmer is worth +0.016 nDCG@10 to the hybrid). A query also drops the scaffolding of a question
(QUESTION_WORDS: question words, pronouns, auxiliaries, "many", "get"): in "How many vacation days do I get?" the
rare words "do", "I" and "get" otherwise outweigh "vacation" on a small corpus, and an office FAQ full of "do I"
outranks the vacation policy."""

from __future__ import annotations

import re

__all__ = ["STOP_WORDS", "QUESTION_WORDS", "s_stem", "analyse", "terms", "query_terms", "analyse_query"]

STOP_WORDS = frozenset("a an and are as at be but by for if in into is it no not of on or such that the their "
                       "then there these they this to was will with".split())
QUESTION_WORDS = frozenset("what which who whom whose when where why how i me my mine we us our you your he him his she her "
                           "its them do does did done can could would should shall may might must have has had am "
                           "were been being many much get gets got".split())
_QUERY_DROP = STOP_WORDS | QUESTION_WORDS
_WORD = re.compile(r"\w+")


def s_stem(word: str) -> str:
    """Harman's S-stemmer (1991): the first rule that applies of ies -> y, es -> e, s -> ''."""
    if word.endswith("ies") and not word.endswith(("eies", "aies")) and len(word) > 3:
        return word[:-3] + "y"
    if word.endswith("es") and not word.endswith(("aes", "ees", "oes")) and len(word) > 2:
        return word[:-1]
    if word.endswith("s") and not word.endswith(("us", "ss")) and len(word) > 1:
        return word[:-1]
    return word


def analyse(text: str, drop: frozenset[str] = STOP_WORDS) -> list[str]:
    """Lower-cased word tokens, the `drop` words (stop words) dropped, S-stemmed."""
    return [s_stem(w) for w in _WORD.findall(text.lower()) if w not in drop]


def terms(text: str) -> str:
    """The analysed terms joined by spaces: what the engine's BM25 function indexes (its own analyzer then only
    splits on the spaces)."""
    return " ".join(analyse(text))


def analyse_query(text: str) -> list[str]:
    """A query's terms: `analyse`, then the question's scaffolding (QUESTION_WORDS) dropped; a query that is nothing
    but scaffolding keeps its analysed terms."""
    return analyse(text, _QUERY_DROP) or analyse(text)


def query_terms(text: str) -> str:
    """A query's terms joined by spaces (what the engine's BM25 search is given)."""
    return " ".join(analyse_query(text))
