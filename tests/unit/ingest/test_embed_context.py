"""What the embedder reads for a chunk: a title that came with the document (front matter, a heading, <title>, a
JSONL field) is embedded above the chunk; a title that is only the file name or record id is shown but not
embedded (on pyfaq, embedding `0003` above every passage cost 0.018 nDCG@10). The chunk id follows the embedded
context, so a changed title re-embeds."""

from __future__ import annotations

import pytest

from agentfleet.ingest.access import Access
from agentfleet.ingest.corpus import Document
from agentfleet.ingest.parse import parse_file
from agentfleet.ingest.pipeline import plan_document

ACCESS = Access(tenant="t", groups=("g",))
BODY = "Python's FAQ answers the questions people ask most often about the language and its tools."


def planned(name: str, data: bytes):
    docs = parse_file(name, data)
    return [c for d in docs for c in plan_document(Document(d, ACCESS), size_tokens=384, overlap_tokens=48)]


@pytest.mark.parametrize("name,data,embedded", [
    ("faq/0003.txt", BODY.encode(), BODY),
    ("notes.md", BODY.encode(), BODY),
    ("r.jsonl", b'{"id": "7", "text": "' + BODY.encode() + b'"}\n', BODY),
    ("p.html", b"<html><body><p>" + BODY.encode() + b"</p></body></html>", BODY),
    ("t.txt", b"---\ntitle: Python FAQ\n---\n" + BODY.encode(), "Python FAQ\n\n" + BODY),
    ("h.md", b"# Python FAQ\n\n" + BODY.encode(), "Python FAQ\n\n# Python FAQ\n\n" + BODY),
    ("r2.jsonl", b'{"id": "7", "title": "Python FAQ", "text": "' + BODY.encode() + b'"}\n', "Python FAQ\n\n" + BODY),
    ("t.html", b"<html><head><title>Python FAQ</title></head><body><p>" + BODY.encode() + b"</p></body></html>",
     "Python FAQ\n\n" + BODY),
], ids=["txt", "md-no-heading", "jsonl-no-title", "html-no-title", "front-matter", "heading", "jsonl-title",
        "html-title"])
def test_only_a_real_title_is_embedded(name, data, embedded):
    (chunk,) = planned(name, data)
    assert chunk.embed_text.strip() == embedded
    assert chunk.title   # the file name still names the document for people


def test_file_name_titles_are_flagged_and_kept_for_display():
    (doc,) = parse_file("faq/0003.txt", BODY.encode())
    assert (doc.title, doc.title_from_name) == ("0003", True)
    (doc,) = parse_file("faq/0003.md", b"# Why?\n\n" + BODY.encode())
    assert (doc.title, doc.title_from_name) == ("Why?", False)


def test_a_changed_title_changes_the_chunk_id_and_the_same_input_keeps_it():
    a = planned("t.txt", b"---\ntitle: A\n---\n" + BODY.encode())[0]
    b = planned("t.txt", b"---\ntitle: B\n---\n" + BODY.encode())[0]
    assert a.text == b.text and a.id != b.id
    assert planned("t.txt", b"---\ntitle: A\n---\n" + BODY.encode())[0].id == a.id
