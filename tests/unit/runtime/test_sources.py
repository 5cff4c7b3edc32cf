"""Cited sources, pure (runtime/sources.py): where a citation links, which index URL may be shown as a link, how a
document's readable chunks read as text, and what counts as an http(s) URL."""

from __future__ import annotations

import pytest

from agentfleet.ingest.pipeline import document_key
from agentfleet.retrieval.store import Hit
from agentfleet.runtime.sources import document_url, is_http_url, linked, prefers_text, source_text

DOC = "handbook/vacation.md"
ROUTE = f"/v1/sources/{document_key(DOC)}"
JS = "javascript:alert(1)//a.md"


@pytest.mark.parametrize("citation, index_url, url", [
    ({"id": "c1", "source": DOC}, None, ROUTE),
    ({"id": "c1", "source": DOC}, "https://docs.example.com/handbook.md", "https://docs.example.com/handbook.md"),
    ({"id": "c1", "source": "https://docs.example.com/a.md"}, None, "https://docs.example.com/a.md"),
    ({"id": "c1", "source": JS}, None, f"/v1/sources/{document_key(JS)}"),
    ({"id": "c1", "source": DOC, "url": "javascript:alert(1)"}, None, ROUTE),
    ({"id": "a2a:team_b:c9", "source": DOC, "url": "https://b.example/doc.md"}, None, "https://b.example/doc.md"),
    ({"id": "a2a:team_b:c9", "source": DOC, "url": "/v1/sources/abc"}, None, None),
    ({"id": "a2a:team_b:c9", "source": DOC, "url": "javascript:alert(1)"}, None, None),
    ({"id": "a2a:team_b:c9", "source": "https://b.example/doc.md"}, None, None),
], ids=["local-path", "index-is-one-url-document", "source-is-a-url", "javascript-source-gets-the-route",
        "a-local-url-field-is-recomputed", "remote-https", "remote-path-is-not-ours", "remote-javascript",
        "remote-without-url"])
def test_a_citation_links_to_a_url_or_this_runtimes_route_and_nothing_else(citation, index_url, url):
    [got] = linked([citation], index_document_url=index_url)
    assert got == {**citation, "url": url}


@pytest.mark.parametrize("source_url, shown", [
    ("https://docs.example.com/handbook.md", "https://docs.example.com/handbook.md"),
    ("http://docs.internal:8080/handbook.md", "http://docs.internal:8080/handbook.md"),
    ("https://docs.example.com/corpus.tar.gz", None),
    ("https://docs.example.com/handbook.md?X-Amz-Signature=abc", None),
    ("https://user:secret@docs.example.com/handbook.md", None),
    ("https://docs.example.com/handbook.md#top", None),
    ("s3://bucket/docs/", None),
    ("https://docs.example.com/page.exe", None),
    (None, None),
], ids=["https-document", "http-document", "archive", "signed-query", "credentials", "fragment", "bucket",
        "not-a-document", "no-url"])
def test_only_a_plain_http_url_of_one_document_is_shown_as_the_link(source_url, shown):
    assert document_url(source_url) == shown


def _hit(start: int, text: str) -> Hit:
    return Hit(id=f"c{start}", score=0.0, text=text, source=DOC, title="t", trail=(), start=start,
               end=start + len(text))


@pytest.mark.parametrize("hits, text", [
    ([_hit(0, "one two three"), _hit(8, "three four")], "one two three four"),
    ([_hit(8, "three four"), _hit(0, "one two three")], "one two three four"),
    ([_hit(0, "one two"), _hit(20, "nine ten")], "one two\n\nnine ten"),
    ([_hit(0, "one two three four"), _hit(4, "two")], "one two three four"),
    ([_hit(0, "alone")], "alone"),
], ids=["overlap-once", "any-order", "gap-is-a-blank-line", "contained", "one-chunk"])
def test_a_documents_readable_text_joins_its_chunks_at_their_offsets(hits, text):
    assert source_text(hits) == text


@pytest.mark.parametrize("accept, is_text", [
    ("text/plain", True), ("text/plain; charset=utf-8", True), ("application/json", False),
    ("text/plain, application/json", False), ("*/*", False), (None, False),
    ("text/html,application/xhtml+xml,*/*;q=0.8", False),
], ids=["text", "text-charset", "json", "both", "any", "none", "browser"])
def test_text_only_when_asked_for_and_json_is_not(accept, is_text):
    assert prefers_text(accept) is is_text


@pytest.mark.parametrize("value, ok", [
    ("https://docs.example.com/a", True), ("HTTP://docs.example.com", True), ("https://[::1]:8443/a", True),
    ("javascript:alert(1)", False), ("data:text/html,x", False), ("//docs.example.com/a", False),
    ("/v1/sources/x", False), ("https:///a", False), ("https://:443/a", False), (" https://a.example", False),
    ("https://a.example/\\x", False), ("https://a.example/a b", False), ("https://a.example/\x00", False),
    (None, False), (42, False),
], ids=["https", "upper-case-scheme", "ipv6", "javascript", "data", "scheme-relative", "path", "no-host",
        "port-only", "leading-space", "backslash", "space", "control", "none", "not-a-string"])
def test_an_http_url_is_absolute_with_a_host_and_nothing_a_browser_reinterprets(value, ok):
    assert is_http_url(value) is ok
