"""Clean text and cut it into overlapping, token-bounded chunks that stay inside one heading section (Markdown and
HTML) and prefer to end at a sentence or paragraph. Each chunk keeps its heading trail and its character offsets
into the cleaned document text.

Tokens are counted as words and punctuation marks (`\\w+|[^\\w\\s]`), deterministic and model-free, so chunk ids
do not change with the embedder. A WordPiece tokenizer (MiniLM's) yields ~1.1-1.3x as many tokens on English
prose: keep sizeTokens at or below ~200 for the built-in embedder, which reads at most 256 tokens. A word longer
than MAX_TOKEN_CHARS counts as several tokens and a chunk never spans more than MAX_CHUNK_CHARS characters, so
hostile text (one 70,000-character word) still yields chunks that fit the store's text field."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Chunk", "Section", "clean", "sections", "chunk_document", "count_tokens", "TOKEN", "MAX_TOKEN_CHARS",
           "MAX_CHUNK_CHARS"]

# No natural-language word is this long; a longer run of word characters (a base64 blob, an attack) is cut.
MAX_TOKEN_CHARS = 100
# The store's text field holds 65,535 (characters on milvus-lite, bytes on some Milvus versions): 16,000
# characters fit either way, even at 4 UTF-8 bytes each.
MAX_CHUNK_CHARS = 16_000
TOKEN = re.compile(r"\w{1,%d}|[^\w\s]" % MAX_TOKEN_CHARS)
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$")
_FENCE = re.compile(r"^(```|~~~)")
_BOILER = re.compile(r"^\s*(?:skip to (?:main )?content|back to top|cookie (?:settings|preferences)|"
                     r"all rights reserved\.?|table of contents)\s*$", re.I)


@dataclass(frozen=True)
class Section:
    trail: tuple[str, ...]
    start: int
    end: int


@dataclass(frozen=True)
class Chunk:
    text: str
    trail: tuple[str, ...]
    start: int  # character offsets into the cleaned document text
    end: int
    tokens: int


def count_tokens(text: str) -> int:
    return sum(1 for _ in TOKEN.finditer(text))


def clean(text: str) -> str:
    """Normalise line ends and whitespace, drop navigation boilerplate lines and runs of blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " ").replace("\t", "    ")
    text = text.replace("\x00", "")
    lines = []
    fenced = False
    for line in text.split("\n"):
        if _FENCE.match(line.strip()):
            fenced = not fenced
        line = line.rstrip()
        if not fenced:
            if _BOILER.match(line):
                continue
            # Collapse runs of spaces inside a line but keep its indentation (lists, code).
            indent = len(line) - len(line.lstrip(" "))
            line = " " * indent + re.sub(r" {2,}", " ", line.lstrip(" "))
        lines.append(line)
    out = "\n".join(lines)
    out = re.sub(r"\n{3,}", "\n\n", out)
    return out.strip()


def sections(text: str, *, heading_aware: bool) -> list[Section]:
    """Heading sections of cleaned text; a heading with no body joins the section after it."""
    if not heading_aware:
        return [Section((), 0, len(text))] if text else []
    out: list[Section] = []
    stack: list[tuple[int, str]] = []
    start, trail = 0, ()
    fenced = False
    pos = 0
    for line in text.split("\n"):
        if _FENCE.match(line.strip()):
            fenced = not fenced
        m = None if fenced else _HEADING.match(line)
        if m:
            if pos > start:
                out.append(Section(trail, start, pos))
            level = len(m.group(1))
            stack = [(lv, t) for lv, t in stack if lv < level] + [(level, m.group(2).strip())]
            start, trail = pos, tuple(t for _, t in stack)
        pos += len(line) + 1
    if len(text) > start:
        out.append(Section(trail, start, len(text)))
    merged: list[Section] = []
    carry: int | None = None
    for s in out:
        body = text[s.start:s.end].strip()
        is_heading_only = body.count("\n") == 0 and _HEADING.match(body) is not None
        if is_heading_only and s is not out[-1]:
            carry = s.start if carry is None else carry
            continue
        merged.append(Section(s.trail, s.start if carry is None else carry, s.end))
        carry = None
    return [s for s in merged if text[s.start:s.end].strip()]


def _cut(spans: list[tuple[int, int]], text: str, begin: int, limit: int) -> int:
    """Index one past the last token of a window starting at `begin`: the last sentence or line end in the final
    third of the window, else the hard limit. The window never spans more than MAX_CHUNK_CHARS characters."""
    end = min(begin + limit, len(spans))
    if spans[end - 1][1] - spans[begin][0] > MAX_CHUNK_CHARS:
        # Tokens are at most MAX_TOKEN_CHARS long, so the first one always fits; whitespace between tokens is
        # what can still be long (clean() keeps indentation).
        lo, hi = begin + 1, end
        while lo < hi:  # the largest end whose span fits
            mid = (lo + hi + 1) // 2
            if spans[mid - 1][1] - spans[begin][0] <= MAX_CHUNK_CHARS:
                lo = mid
            else:
                hi = mid - 1
        return lo
    if end == len(spans):
        return end
    floor = begin + max(1, (2 * limit) // 3)
    for i in range(end - 1, floor - 1, -1):
        tok_end = spans[i][1]
        nxt = spans[i + 1][0]
        if text[spans[i][0]:tok_end] in (".", "!", "?", ";", ":") or "\n" in text[tok_end:nxt]:
            return i + 1
    return end


def chunk_document(text: str, *, size_tokens: int, overlap_tokens: int, heading_aware: bool) -> list[Chunk]:
    """`text` is cleaned text (see `clean`). Windows of at most `size_tokens` tokens overlapping by
    `overlap_tokens`, never crossing a heading section when `heading_aware`."""
    if size_tokens < 1 or not 0 <= overlap_tokens < size_tokens:
        raise ValueError("need size_tokens >= 1 and 0 <= overlap_tokens < size_tokens")
    chunks: list[Chunk] = []
    for sec in sections(text, heading_aware=heading_aware):
        spans = [(m.start(), m.end()) for m in TOKEN.finditer(text, sec.start, sec.end)]
        if not spans:
            continue
        begin = 0
        while begin < len(spans):
            end = _cut(spans, text, begin, size_tokens)
            a, b = spans[begin][0], spans[end - 1][1]
            chunks.append(Chunk(text[a:b], sec.trail, a, b, end - begin))
            if end == len(spans):
                break
            begin = max(begin + 1, end - overlap_tokens)
    return chunks
