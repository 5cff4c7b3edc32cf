"""Near-duplicate chunk removal: MinHash over word 5-shingles with banded candidates, verified by exact Jaccard.
Only chunks readable by exactly the same principals are compared, so dropping a duplicate never takes a passage
away from anyone. The first chunk in input order survives, so the result is deterministic."""

from __future__ import annotations

import re
import zlib
from typing import Hashable, Sequence

import numpy as np

__all__ = ["dedupe_chunks", "shingles", "jaccard"]

_WORD = re.compile(r"\w+")
_PERMS = 64
_BANDS = 16  # 16 bands x 4 rows: pairs above ~0.6 Jaccard become candidates; exact Jaccard decides
_PRIME = np.uint64((1 << 61) - 1)
_rng = np.random.default_rng(20240611)
_A = _rng.integers(1, 1 << 31, size=_PERMS, dtype=np.uint64)
_B = _rng.integers(0, 1 << 31, size=_PERMS, dtype=np.uint64)


def shingles(text: str, n: int = 5) -> frozenset[int]:
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return frozenset([zlib.crc32(" ".join(words).encode())])
    return frozenset(zlib.crc32(" ".join(words[i:i + n]).encode()) for i in range(len(words) - n + 1))


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _signature(sh: frozenset[int]) -> np.ndarray:
    x = np.fromiter(sh, dtype=np.uint64, count=len(sh))
    return ((np.outer(_A, x) + _B[:, None]) % _PRIME).min(axis=1)


def dedupe_chunks(texts: Sequence[str], groups: Sequence[Hashable], *, threshold: float) -> list[int]:
    """Indexes of the chunks to keep. `groups[i]` is chunk i's access signature; threshold is Jaccard in (0, 1]:
    1.0 drops only exact (whitespace- and case-insensitive) duplicates."""
    keep: list[int] = []
    exact: dict[tuple[Hashable, str], int] = {}
    buckets: dict[tuple[Hashable, int, bytes], list[int]] = {}
    sets: dict[int, frozenset[int]] = {}
    rows = _PERMS // _BANDS
    for i, text in enumerate(texts):
        norm = " ".join(_WORD.findall(text.lower()))
        key = (groups[i], norm)
        if key in exact:
            continue
        exact[key] = i
        if threshold >= 1.0:
            keep.append(i)
            continue
        sh = shingles(text)
        sig = _signature(sh)
        bands = [(groups[i], b, sig[b * rows:(b + 1) * rows].tobytes()) for b in range(_BANDS)]
        candidates = {j for band in bands for j in buckets.get(band, ())}
        if any(jaccard(sh, sets[j]) >= threshold for j in candidates):
            continue
        sets[i] = sh
        for band in bands:
            buckets.setdefault(band, []).append(i)
        keep.append(i)
    return keep
