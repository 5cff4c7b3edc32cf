"""ingest.remote: a URL source as a plan. Worker i of P fetches exactly the slice a directory source gives it plus
every `_access.yaml`; hidden, escaping and directory-marker keys are never written; an object over the size
limit is reported (a too-large sidecar skips its directory rather than widening access)."""

from __future__ import annotations

import pytest

from agentfleet.ingest import take_slice
from agentfleet.ingest.remote import (
    FetchLimits, RemoteObject, SourceURLError, archive_member_path, parse_source_url, plan_fetch, relative_path,
)


@pytest.mark.parametrize(
    "url, scheme, bucket, prefix, is_archive",
    [
        pytest.param("s3://docs-bucket", "s3", "docs-bucket", "", False, id="s3-bucket-root"),
        pytest.param("s3://docs-bucket/hr", "s3", "docs-bucket", "hr/", False, id="s3-prefix-gets-slash"),
        pytest.param("s3://docs-bucket/hr/", "s3", "docs-bucket", "hr/", False, id="s3-prefix-with-slash"),
        pytest.param("gs://b/a/b", "gs", "b", "a/b/", False, id="gs-prefix"),
        pytest.param("https://x.example/handbook.md", "https", "x.example", "/handbook.md", False, id="https-doc"),
        pytest.param("https://x.example/c/corpus.tar.gz", "https", "x.example", "/c/corpus.tar.gz", True,
                     id="https-archive"),
        pytest.param("http://files.ns.svc:8080/all.zip", "http", "files.ns.svc:8080", "/all.zip", True,
                     id="http-zip"),
    ],
)
def test_parse_source_url(url, scheme, bucket, prefix, is_archive):
    src = parse_source_url(url)
    assert (src.url, src.scheme, src.bucket, src.prefix, src.is_archive) == (url, scheme, bucket, prefix,
                                                                             is_archive)


@pytest.mark.parametrize(
    "url, message",
    [
        pytest.param("ftp://host/x.md", "unsupported scheme", id="ftp"),
        pytest.param("s3:///prefix", "no bucket", id="s3-no-bucket"),
        pytest.param("https://host/page", "one document", id="https-no-format"),
        pytest.param("https://host/", "one document", id="https-directory"),
        pytest.param("s3://b/p?versionId=1", "no query", id="s3-query"),
    ],
)
def test_parse_source_url_refuses(url, message):
    with pytest.raises(SourceURLError, match=message) as err:
        parse_source_url(url)
    assert url in str(err.value)


@pytest.mark.parametrize(
    "key, prefix, rel",
    [
        pytest.param("docs/a.md", "docs/", "a.md", id="below-prefix"),
        pytest.param("docs/sub/b.md", "docs/", "sub/b.md", id="nested"),
        pytest.param("docs-old/a.md", "docs/", None, id="sibling-prefix"),
        pytest.param("docs/", "docs/", None, id="the-prefix-itself"),
        pytest.param("docs/sub/", "docs/", None, id="directory-marker"),
        pytest.param("docs/.hidden.md", "docs/", None, id="hidden-file"),
        pytest.param("docs/.git/x.md", "docs/", None, id="hidden-dir"),
        pytest.param("docs/../etc/passwd", "docs/", None, id="dot-dot"),
        pytest.param("docs//a.md", "docs/", None, id="empty-segment"),
        pytest.param("docs/a\\..\\b.md", "docs/", None, id="backslash"),
    ],
)
def test_relative_path(key, prefix, rel):
    assert relative_path(key, prefix) == rel


@pytest.mark.parametrize(
    "name, rel",
    [
        pytest.param("./corpus/a.md", "corpus/a.md", id="dot-slash"),
        pytest.param("/etc/passwd", None, id="absolute"),
        pytest.param("../../x.md", None, id="escaping"),
        pytest.param("a\\..\\..\\x.md", None, id="windows-escaping"),
    ],
)
def test_archive_member_path(name, rel):
    assert archive_member_path(name) == rel


KEYS = [f"p/{d}/doc{i}.md" for d in ("eng", "hr", "ops") for i in range(12)] + [
    "p/_access.yaml", "p/eng/_access.yaml", "p/hr/_access.yaml"]


@pytest.mark.parametrize("workers", [1, 2, 3, 7], ids=lambda p: f"P={p}")
def test_every_worker_gets_its_directory_slice_and_every_sidecar(workers):
    rels = [k[2:] for k in KEYS]
    docs = [r for r in rels if not r.endswith("_access.yaml")]
    seen: list[str] = []
    for worker in range(workers):
        plan = plan_fetch([RemoteObject(k, 10) for k in KEYS], prefix="p/", worker=worker, workers=workers)
        got = [rel for _, rel in plan.fetch]
        assert sorted(r for r in got if r.endswith("_access.yaml")) == sorted(
            r for r in rels if r.endswith("_access.yaml"))
        mine = [r for r in got if not r.endswith("_access.yaml")]
        assert mine == take_slice(sorted(docs), worker=worker, workers=workers)
        assert all(key == "p/" + rel for key, rel in plan.fetch)
        assert plan.skipped == [] and plan.broken_sidecars == [] and plan.listed == len(KEYS)
        seen += mine
    assert sorted(seen) == sorted(docs), "the workers together fetch every document exactly once"


@pytest.mark.parametrize(
    "objects, fetched, skipped, broken",
    [
        pytest.param([("a.md", 100)], ["a.md"], [], [], id="at-the-limit"),
        pytest.param([("a.md", 101)], [], [("a.md", "over the per-object limit of 100", True)], [],
                     id="over-the-limit"),
        pytest.param([("a.md", None)], ["a.md"], [], [], id="unknown-size-is-bounded-while-streaming"),
        pytest.param([("x/_access.yaml", 500), ("x/a.md", 5)], ["x/a.md"],
                     [("x/_access.yaml", "over the per-object limit of 100", False)], ["x/_access.yaml"],
                     id="too-large-sidecar-breaks-its-directory"),
        pytest.param([("logo.png", 5)], [], [("logo.png", "unsupported format .png", True)], [],
                     id="unsupported-format-not-fetched"),
        pytest.param([("Makefile", 5)], [], [("Makefile", "unsupported format (no extension)", True)], [],
                     id="no-extension"),
    ],
)
def test_plan_limits_and_formats(objects, fetched, skipped, broken):
    plan = plan_fetch([RemoteObject(k, s) for k, s in objects], prefix="", worker=0, workers=1,
                      limits=FetchLimits(max_object_bytes=100))
    assert [rel for _, rel in plan.fetch] == fetched
    assert [(s.source, s.reason.split(" bytes is ")[-1] if "bytes" in s.reason else s.reason, s.is_document)
            for s in plan.skipped] == [(src, why, is_doc) for src, why, is_doc in skipped]
    assert plan.broken_sidecars == broken


def test_plan_refuses_a_worker_outside_the_job():
    with pytest.raises(ValueError, match="outside 0..1"):
        plan_fetch([], prefix="", worker=2, workers=2)
