"""Chunking: token bounds, overlap, heading trails, offsets that point into the cleaned text, determinism."""

import pytest
from hypothesis import given, settings, strategies as st

from agentfleet.ingest.chunk import chunk_document, clean, count_tokens, sections

DOC = clean("""# Title

Intro paragraph with some words.

## Part A
Alpha sentence one. Alpha sentence two.

### Deep
Deep text here.

## Part B

## Part C
Charlie text.
""")


def test_heading_trails_and_offsets():
    chunks = chunk_document(DOC, size_tokens=100, overlap_tokens=10, heading_aware=True)
    assert [c.trail for c in chunks] == [("Title",), ("Title", "Part A"), ("Title", "Part A", "Deep"),
                                         ("Title", "Part C")]
    for c in chunks:
        assert DOC[c.start:c.end] == c.text
    # The empty "Part B" heading joins the section after it.
    assert chunks[-1].text.startswith("## Part B")


def test_not_heading_aware_is_one_section():
    assert [s.trail for s in sections(DOC, heading_aware=False)] == [()]


def test_headings_inside_code_fences_are_text():
    text = clean("# T\n\n```\n# not a heading\n```\nafter")
    assert [s.trail for s in sections(text, heading_aware=True)] == [("T",)]


@pytest.mark.parametrize("raw,want", [
    ("a\r\nb", "a\nb"), ("a\n\n\n\nb", "a\n\nb"), ("a   b", "a b"), ("  - item", "- item"),
    ("x\n  - item", "x\n  - item"), ("Skip to content\nbody", "body"), ("a\u00a0b\t", "a b"),
], ids=["crlf", "blank-runs", "space-runs", "strip-edges", "keep-indent", "boilerplate", "nbsp-tab"])
def test_clean(raw, want):
    assert clean(raw) == want


@settings(max_examples=60, deadline=None)
@given(words=st.lists(st.text(alphabet="abcdefghij .,\n#", min_size=1, max_size=12), min_size=0, max_size=300),
       size=st.integers(4, 60), overlap=st.integers(0, 30), heading_aware=st.booleans())
def test_chunks_cover_text_within_bounds(words, size, overlap, heading_aware):
    overlap = min(overlap, size - 1)
    text = clean(" ".join(words))
    chunks = chunk_document(text, size_tokens=size, overlap_tokens=overlap, heading_aware=heading_aware)
    assert chunks == chunk_document(text, size_tokens=size, overlap_tokens=overlap, heading_aware=heading_aware)
    covered = set()
    for c in chunks:
        assert text[c.start:c.end] == c.text
        assert 1 <= c.tokens <= size
        assert count_tokens(c.text) == c.tokens
        covered.update(range(c.start, c.end))
    # Every token of the text lands in some chunk.
    import re
    for m in re.finditer(r"\w+|[^\w\s]", text):
        assert m.start() in covered


def test_overlap_repeats_tail_tokens():
    text = " ".join(f"w{i}" for i in range(50))
    chunks = chunk_document(text, size_tokens=10, overlap_tokens=3, heading_aware=False)
    assert chunks[0].text.split()[-3:] == chunks[1].text.split()[:3]
    assert len(chunks) == 7


def test_invalid_sizes():
    with pytest.raises(ValueError):
        chunk_document("x", size_tokens=10, overlap_tokens=10, heading_aware=False)
