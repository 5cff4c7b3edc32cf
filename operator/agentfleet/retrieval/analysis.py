"""Text analysis for BM25 (pure), one implementation for the product's full-text search and the bench's BM25:
lower-cased `\\w+` tokens, Lucene's English stop words dropped (EnglishAnalyzer.ENGLISH_STOP_WORDS_SET, as
Pyserini's default analyzer), Harman's S-stemmer. The store indexes `terms(text)` in a BM25 field and searches it with
`terms(query)`: the analysis runs here, not in the engine, because milvus-lite's analyzer has no stemmer (on pyfaq the
stemmer is worth +0.016 nDCG@10 to the hybrid)."""

from __future__ import annotations

import re

__all__ = ["STOP_WORDS", "s_stem", "analyse", "terms"]

STOP_WORDS = frozenset("a an and are as at be but by for if in into is it no not of on or such that the their "
                       "then there these they this to was will with".split())
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


def analyse(text: str) -> list[str]:
    """Lower-cased word tokens, stop words dropped, S-stemmed."""
    return [s_stem(w) for w in _WORD.findall(text.lower()) if w not in STOP_WORDS]


def terms(text: str) -> str:
    """The analysed terms joined by spaces: what the engine's BM25 function indexes (its own analyzer then only
    splits on the spaces)."""
    return " ".join(analyse(text))
