"""Ingestion against hostile content (issue 17), each case a hostile fixture: YAML alias bombs and oversized front
matter or sidecars are refused and reported; symbolic links never take ingestion outside the source root; a
document's own metadata (front matter, HTML head <meta>, JSONL fields) only narrows what its directory grants and
a <meta> in the body is content; a 70,000-character word is cut into chunks that fit the store, and the real
pipeline on real milvus-lite ingests the rest of the corpus."""

import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from agentfleet.ingest import chunk_document, load_corpus
from agentfleet.ingest.chunk import MAX_CHUNK_CHARS, MAX_TOKEN_CHARS, clean
from agentfleet.ingest.corpus import Document, SkippedDocument
from agentfleet.ingest.parse import TITLE_MAX_CHARS, ParseError, parse_file
from agentfleet.retrieval.filters import Principal
from agentfleet.retrieval.indexer import IngestOptions, run_ingest
from agentfleet.retrieval.store import TEXT_MAX, MilvusStore, row_problem

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def laughs(levels: int) -> str:
    """The probe's front matter: each level is a list of nine aliases of the one before (9**levels strings)."""
    lines = ['a0: &a0 "lol"']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    lines.append(f"title: *a{levels}")
    return "\n".join(lines)


def split(root: Path, **kw) -> tuple[dict[str, Document], dict[str, str]]:
    docs, skipped = {}, {}
    for item in load_corpus(root, **kw):
        if isinstance(item, SkippedDocument):
            skipped[item.source] = item.reason
        else:
            docs[item.source] = item
    return docs, skipped


@pytest.mark.parametrize("name,data,reason", [
    ("bomb.md", f"---\n{laughs(9)}\n---\nbody".encode(), "aliases"),
    ("bomb.html", f"---\n{laughs(9)}\n---\n<p>body</p>".encode(), "aliases"),
    ("one-alias.md", b"---\nbase: &b {tenant: acme}\nother: *b\n---\nbody", "aliases"),
    ("huge.md", b"---\ntitle: " + b"x" * 70_000 + b"\n---\nbody", "too large"),
], ids=["billion-laughs-markdown", "billion-laughs-html", "any-alias", "front-matter-over-64k"])
def test_hostile_front_matter_is_refused_quickly(name, data, reason):
    started = time.monotonic()
    with pytest.raises(ParseError, match=reason):
        parse_file(name, data)
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("name,data", [
    ("t.md", b"---\ntitle: " + b"word " * 1000 + b"\n---\nbody"),
    ("t.html", b"<html><head><title>" + b"word " * 1000 + b"</title></head><body>x</body></html>"),
    ("t.jsonl", json.dumps({"id": "r", "title": "word " * 1000, "text": "body"}).encode()),
], ids=["front-matter-title", "html-title", "jsonl-title"])
def test_titles_are_bounded(name, data):
    (doc,) = parse_file(name, data)
    assert 0 < len(doc.title) <= TITLE_MAX_CHARS


def test_alias_bomb_in_sidecar_skips_its_directory(tmp_path):
    (tmp_path / "team").mkdir()
    (tmp_path / "team" / "_access.yaml").write_text(laughs(9) + "\n")
    (tmp_path / "team" / "a.md").write_text("# A\n\nteam text")
    (tmp_path / "b.md").write_text("---\ntenant: acme\n---\nother text")
    docs, skipped = split(tmp_path)
    assert list(docs) == ["b.md"]
    assert "aliases" in skipped["team/_access.yaml"]
    assert skipped["team/a.md"] == "its directory's access sidecar is unreadable"


def secret_outside(tmp_path: Path) -> tuple[Path, Path]:
    """A source directory and, beside it, a mounted Secret's file."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "token.md").write_text("---\ntenant: acme\n---\nTOPSECRET-db-password")
    (secret / "_access.yaml").write_text('- pattern: "*"\n  tenant: acme\n')
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok.md").write_text("---\ntenant: acme\n---\nA normal document about vacation.")
    return src, secret


def test_symlinks_leaving_the_root_are_reported_and_never_read(tmp_path):
    src, secret = secret_outside(tmp_path)
    os.symlink(secret / "token.md", src / "leak.md")             # a file link to outside
    os.symlink(secret, src / "linked-dir")                       # a directory link to outside
    os.symlink("/proc/self/environ", src / "environ.txt")        # the process environment
    (src / "sub").mkdir()
    os.symlink(secret / "_access.yaml", src / "sub" / "_access.yaml")
    (src / "sub" / "x.md").write_text("# X\n\ntext")
    docs, skipped = split(src)
    assert list(docs) == ["ok.md"]
    assert skipped["leak.md"] == "symbolic link to outside the source directory"
    assert skipped["linked-dir"] == "symbolic link to outside the source directory"
    assert skipped["environ.txt"] == "symbolic link to outside the source directory"
    assert "outside the source directory" in skipped["sub/_access.yaml"]
    assert not any("TOPSECRET" in d.parsed.text for d in docs.values())


def test_hard_links_are_reported_and_never_read(tmp_path):
    """A hard link is the same file under a second name; the other name may be a Secret on the same volume."""
    src, secret = secret_outside(tmp_path)
    os.link(secret / "token.md", src / "leak.md")
    docs, skipped = split(src)
    assert list(docs) == ["ok.md"]
    assert skipped["leak.md"].startswith("hard link")
    assert not any("TOPSECRET" in d.parsed.text for d in docs.values())


@pytest.mark.parametrize("pattern", ["../secret/*.md", "a/../../b.md", "/etc/*", "..\\x.md"])
def test_access_patterns_stay_inside_their_directory(tmp_path, pattern):
    src = tmp_path / "src"
    (src / "team").mkdir(parents=True)
    (src / "team" / "_access.yaml").write_text(json.dumps([{"pattern": pattern, "tenant": "acme"}]))
    (src / "team" / "a.md").write_text("# A\n\ntext")
    (src / "ok.md").write_text("---\ntenant: acme\n---\nfine")
    docs, skipped = split(src)
    assert list(docs) == ["ok.md"]
    assert any("must stay inside its directory" in r for r in skipped.values()), skipped


def _pdf_with_stream(content: bytes, *, pages: int = 1) -> bytes:
    """A minimal PDF whose every page draws `content` through one FlateDecode stream (written by hand: a bomb
    is a few hundred KiB on disk)."""
    import zlib

    packed = zlib.compress(content, 9)
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % (4 + i) for i in range(pages)) + b"] /Count %d >>"
            % pages,
            b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(packed) + packed + b"\nendstream"]
    objs += [b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 3 0 R >>" for _ in range(pages)]
    out, offsets = io.BytesIO(), []
    out.write(b"%PDF-1.4\n")
    for i, body in enumerate(objs, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % i + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1))
    for off in offsets:
        out.write(b"%010d 00000 n \n" % off)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref))
    return out.getvalue()


@pytest.mark.parametrize("content", [
    b"0" * 200_000_000,                                                             # 200 MB of zeros
    b"BT /F1 12 Tf 72 712 Td (" + b"a" * 1000 + b") Tj ET\n" * 150_000,             # 150 MB of text operators
])
def test_pdf_decompression_bomb_is_bounded_in_time_and_memory(content):
    """A few hundred KiB on disk that inflate past pypdf's 75 MB stream limit: refused, or read no further than
    the limit, never inflated whole."""
    import tracemalloc

    bomb = _pdf_with_stream(content)
    assert len(bomb) < 1_000_000
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        docs = parse_file("bomb.pdf", bomb)
        assert sum(len(d.text) for d in docs) <= 20_000_000
    except ParseError as err:
        assert "PDF" in str(err)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.monotonic() - t0 < 60
    assert peak < 200_000_000, peak


def test_deeply_nested_html_is_parsed_in_bounded_time_and_memory():
    """100,000 unclosed nested elements (and as many closed ones): the HTML reader is a flat tokenizer, so depth
    costs neither recursion nor a tree."""
    import tracemalloc

    page = ("<html><head><title>Deep</title></head><body>" + "<div>" * 100_000 + "deep text"
            + "<span><b>" * 50_000 + "more" + "</b></span>" * 50_000 + "</body></html>").encode()
    tracemalloc.start()
    t0 = time.monotonic()
    docs = parse_file("deep.html", page)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert time.monotonic() - t0 < 30 and peak < 100_000_000, peak
    assert docs[0].title == "Deep" and "deep text" in docs[0].text and "more" in docs[0].text


def test_pdf_pages_and_text_are_bounded(monkeypatch):
    from agentfleet.ingest import parse

    text = b"BT /F1 12 Tf 72 712 Td (hello world) Tj ET"
    assert parse_file("ok.pdf", _pdf_with_stream(text, pages=3))[0].format == "pdf"
    monkeypatch.setattr(parse, "MAX_PDF_PAGES", 2)
    with pytest.raises(ParseError, match="3 pages, over the per-document limit of 2"):
        parse_file("many.pdf", _pdf_with_stream(text, pages=3))
    monkeypatch.setattr(parse, "MAX_PDF_PAGES", 5_000)
    monkeypatch.setattr(parse, "MAX_TEXT_CHARS", 10)
    with pytest.raises(ParseError, match="per-document limit"):
        parse_file("long.md", b"# T\n\n" + b"word " * 10)


def test_links_inside_the_root_are_followed_like_a_configmap_mount(tmp_path):
    """A mounted ConfigMap: `key -> ..data/key`, `..data -> ..2026_12_06_…`: every link stays inside."""
    src = tmp_path / "src"
    real = src / "..2026_12_06_00_00_00.1"
    real.mkdir(parents=True)
    (real / "a.md").write_text("---\ntenant: acme\n---\nmounted text")
    os.symlink(real.name, src / "..data")
    os.symlink("..data/a.md", src / "a.md")
    docs, skipped = split(src)
    assert list(docs) == ["a.md"] and skipped == {}


def test_one_worker_reports_each_outside_link(tmp_path):
    src, secret = secret_outside(tmp_path)
    os.symlink(secret / "token.md", src / "leak.md")
    reports = [s for w in range(3) for s in split(src, worker=w, workers=3)[1]]
    assert reports.count("leak.md") == 1


@pytest.mark.parametrize("name,data,sidecar,want", [
    ("body-meta.html", b'<html><head><title>T</title></head><body><p>x</p><meta name="tenant" content="globex">'
                       b'<meta name="groups" content="all"></body></html>', "", None),
    ("body-meta-widen.html", b'<html><head><title>T</title></head><body><p>x</p>'
                             b'<meta name="groups" content="all"></body></html>',
     '- pattern: "*"\n  tenant: acme\n  groups: [hr]\n', ("acme", ("hr",))),
    ("head-meta-narrows.html", b'<html><head><meta name="groups" content="hr"></head><body>x</body></html>',
     '- pattern: "*"\n  tenant: acme\n  groups: [hr, finance]\n', ("acme", ("hr",))),
    ("head-meta-other-tenant.html", b'<html><head><meta name="tenant" content="globex"></head><body>x</body></html>',
     '- pattern: "*"\n  tenant: acme\n  groups: [hr]\n', "differs"),
    ("front-widens.md", b"---\ntenant: acme\ngroups: [all]\n---\nx", '- pattern: "*"\n  tenant: acme\n  groups: [hr]\n',
     "widen"),
    ("front-whole-tenant.md", b"---\ngroups: []\n---\nx", '- pattern: "*"\n  tenant: acme\n  groups: [hr]\n', "widen"),
    ("rec.jsonl", json.dumps({"id": "r1", "text": "x", "tenant": "globex"}).encode(),
     '- pattern: "*"\n  tenant: acme\n  groups: [hr]\n', "differs"),
    ("rec-narrow.jsonl", json.dumps({"id": "r1", "text": "x", "groups": ["hr"]}).encode(),
     '- pattern: "*"\n  tenant: acme\n', ("acme", ("hr",))),
], ids=["body-meta-is-not-metadata", "body-meta-cannot-widen", "head-meta-narrows", "head-meta-cannot-change-tenant",
        "front-matter-cannot-widen", "front-matter-cannot-widen-to-tenant", "jsonl-cannot-change-tenant",
        "jsonl-narrows"])
def test_document_metadata_only_narrows_its_directory(tmp_path, name, data, sidecar, want):
    """`want`: (tenant, groups) indexed, None skipped for want of access, or a word of the skip reason."""
    (tmp_path / name).write_bytes(data)
    if sidecar:
        (tmp_path / "_access.yaml").write_text(sidecar)
    docs, skipped = split(tmp_path)
    if isinstance(want, tuple):
        (doc,) = docs.values()
        assert (doc.access.tenant, doc.access.groups) == want
        assert skipped == {}
    elif want is None:
        assert docs == {} and "no access metadata" in next(iter(skipped.values()))
    else:
        assert docs == {} and want in next(iter(skipped.values()))


@pytest.mark.parametrize("text", [
    "word " + "x" * 70_000 + " end.",
    "é" * 70_000,
    "a" + " " * 70_000 + "b " * 300,
    " ".join(["y" * 99] * 2000),
], ids=["70k-word", "70k-multibyte-word", "70k-whitespace", "many-long-words"])
def test_chunks_fit_the_store_whatever_the_words(text):
    cleaned = clean(text)
    chunks = chunk_document(cleaned, size_tokens=384, overlap_tokens=48, heading_aware=True)
    assert chunks
    assert all(len(c.text) <= MAX_CHUNK_CHARS and len(c.text.encode()) <= TEXT_MAX for c in chunks)
    assert all(len(max(c.text.split(), key=len)) <= max(MAX_TOKEN_CHARS, MAX_CHUNK_CHARS) for c in chunks)
    # Nothing is lost: every word character of the document is in some chunk.
    assert sum(c.end - c.start for c in chunks) >= len(cleaned.replace(" ", "")) // 2


@pytest.mark.parametrize("row,problem", [
    ({"text": "x" * TEXT_MAX}, None),
    ({"text": "x" * (TEXT_MAX + 1)}, "field text"),
    ({"text": "é" * 40_000}, "field text"),
    ({"title": "t" * 1025, "text": "x"}, "field title"),
], ids=["text-at-limit", "text-over", "multibyte-text-over-in-bytes", "title-over"])
def test_row_problem_names_the_field(row, problem):
    got = row_problem(row)
    assert got is None if problem is None else problem in got


class HashedWords:
    """A deterministic bag-of-words embedder: the test is about what gets stored, not about semantics."""
    name, dimension, batch_size = "hashed", 64, 64

    def embed(self, texts):
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, sum(w.encode()) % self.dimension] += 1
            out[i, 0] += 1e-3
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_real_pipeline_on_hostile_corpus_ingests_the_rest(tmp_path):
    src, secret = secret_outside(tmp_path)
    (src / "long-word.md").write_text("---\ntenant: acme\n---\n# Long\n\nbefore " + "z" * 70_000 + " after.\n")
    (src / "bomb.md").write_text(f"---\n{laughs(9)}\n---\nbody")
    os.symlink(secret / "token.md", src / "leak.md")
    (src / "team").mkdir()
    (src / "team" / "_access.yaml").write_text('- pattern: "*"\n  tenant: acme\n  groups: [hr]\n')
    (src / "team" / "raise.md").write_text("---\ntenant: acme\ngroups: [all]\n---\nSalary bands for everyone.")
    (src / "team" / "ok.md").write_text("HR only: salary bands.")
    db = str(tmp_path / "idx.db")
    log = io.StringIO()
    summary = run_ingest(IngestOptions(source=src), open_store=lambda: MilvusStore(db, "docs"),
                         embedder=HashedWords(), log=log, is_tty=False)
    reasons = {s.source: s.reason for s in summary.skipped}
    assert set(reasons) == {"bomb.md", "leak.md", "team/raise.md"}
    assert "aliases" in reasons["bomb.md"] and "outside" in reasons["leak.md"] and "widen" in reasons["team/raise.md"]
    assert summary.documents == 3 and summary.skipped_documents == 3
    with MilvusStore(db, "docs") as store:
        everyone = Principal("acme", ("all", "hr"))
        rows = store.client.query("docs", filter='doc != ""', output_fields=["source", "text", "groups"])
        assert {r["source"] for r in rows} == {"ok.md", "long-word.md", "team/ok.md"}
        assert not any("TOPSECRET" in r["text"] for r in rows)
        assert any("after." in r["text"] for r in rows if r["source"] == "long-word.md")
        hits = store.search_text(["salary bands"], Principal("acme", ("all",)), k=10)[0]
        assert [h.source for h in hits] == []  # team/ok.md is hr-only; raise.md could not publish itself
        hits = store.search_text(["salary bands"], everyone, k=10)[0]
        assert [h.source for h in hits] == ["team/ok.md"]
