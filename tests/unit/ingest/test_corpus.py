"""The source directory: formats, skip reasons, deterministic worker slices, ConfigMap materialisation."""

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings, strategies as st

from agentfleet.ingest import load_corpus, materialise_configmap, take_slice
from agentfleet.ingest.corpus import AccessDefaults, Document, SkippedDocument, list_files
from agentfleet.ingest.parse import ParseError, parse_file

ROOT = Path(__file__).resolve().parents[3]


def tiny_pdf(text: str) -> bytes:
    """A one-page PDF with `text` in Helvetica, xref offsets computed (no PDF writer needed)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
            b"/Resources << /Font << /F1 5 0 R >> >> >>",
            b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


@pytest.mark.parametrize("name,data,want_title,want_text,want_meta", [
    ("a.md", b"---\ntenant: t\ntitle: T\n---\n# H\nbody", "T", "# H\nbody", {"tenant": "t", "title": "T"}),
    ("b.md", b"# Heading\nbody", "Heading", "# Heading\nbody", {}),
    ("c.txt", b"plain text", "c", "plain text", {}),
    ("d.html", b"<html><head><title>Doc</title><meta name='tenant' content='t'></head><body><nav>menu</nav>"
               b"<h1>Top</h1><p>Para</p><script>x()</script><footer>foot</footer></body></html>",
     "Doc", "# Top\n\n\nPara", {"tenant": "t"}),
    ("e.pdf", tiny_pdf("Hello PDF world"), "e", "Hello PDF world", {}),
], ids=["md-front-matter", "md-heading-title", "txt", "html-boilerplate", "pdf"])
def test_parse_formats(name, data, want_title, want_text, want_meta):
    [doc] = parse_file(name, data)
    assert (doc.title, doc.meta) == (want_title, want_meta)
    assert " ".join(doc.text.split()) == " ".join(want_text.split())


def test_jsonl_records_are_documents():
    data = b'{"id": "r1", "text": "one", "tenant": "t"}\n\n{"content": "two", "title": "Two"}\n'
    docs = parse_file("d/x.jsonl", data)
    assert [(d.source, d.title, d.text, d.meta) for d in docs] == [
        ("d/x.jsonl#r1", "x r1", "one", {"id": "r1", "tenant": "t"}), ("d/x.jsonl#L3", "Two", "two", {"title": "Two"})]


@pytest.mark.parametrize("name,data", [
    ("x.jsonl", b"not json"), ("x.jsonl", b'{"id": 1}'), ("x.jsonl", b'{"id": 1, "text": "a"}\n{"id": 1, "text": "b"}'),
    ("x.md", b"---\n[unclosed\n---\nbody"), ("x.md", b"---\n- a list\n---\nbody"), ("x.pdf", b"%PDF-broken"),
    ("x.docx", b""),
], ids=["jsonl-syntax", "jsonl-no-text", "jsonl-dup-id", "bad-yaml", "front-matter-list", "bad-pdf", "unsupported"])
def test_parse_errors(name, data):
    with pytest.raises(ParseError):
        parse_file(name, data)


def test_load_corpus_reports_skips(tmp_path):
    (tmp_path / "ok.md").write_text("---\ntenant: a\n---\nbody")
    (tmp_path / "nometa.md").write_text("body")
    (tmp_path / "bad.jsonl").write_text("{")
    (tmp_path / "img.png").write_bytes(b"\x89PNG")
    (tmp_path / ".hidden.md").write_text("---\ntenant: a\n---\nx")
    (tmp_path / "..data").mkdir()
    (tmp_path / "..data" / "dup.md").write_text("---\ntenant: a\n---\nx")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "_access.yaml").write_text("{broken")
    (sub / "x.md").write_text("---\ntenant: a\n---\nbody")
    items = list(load_corpus(tmp_path))
    docs = {i.source for i in items if isinstance(i, Document)}
    skipped = {i.source: i for i in items if isinstance(i, SkippedDocument)}
    assert docs == {"ok.md"}
    assert set(skipped) == {"nometa.md", "bad.jsonl", "img.png", "sub/_access.yaml", "sub/x.md"}
    assert skipped["sub/_access.yaml"].is_document is False
    assert "no access metadata" in skipped["nometa.md"].reason
    public = list(load_corpus(tmp_path, defaults=AccessDefaults(allow_public=True)))
    assert any(isinstance(i, Document) and i.source == "nometa.md" and i.access.public for i in public)


@settings(max_examples=40, deadline=None)
@given(paths=st.lists(st.text(alphabet="abc/_.-é", min_size=1, max_size=12), unique=True, max_size=60),
       workers=st.integers(1, 9))
def test_worker_slices_partition_the_corpus(paths, workers):
    slices = [take_slice(paths, worker=i, workers=workers) for i in range(workers)]
    flat = [p for s in slices for p in s]
    assert sorted(flat) == sorted(paths)
    assert len(flat) == len(set(flat))
    assert slices == [take_slice(list(reversed(paths)), worker=i, workers=workers)[::-1] for i in range(workers)]


def test_take_slice_rejects_bad_index():
    with pytest.raises(ValueError):
        take_slice(["a"], worker=2, workers=2)


def test_materialise_example_configmap(tmp_path):
    docs = [d for d in yaml.safe_load_all((ROOT / "examples/agentapp.yaml").read_text()) if d]
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "agentfleet-demo-corpus")
    written = materialise_configmap(cm, tmp_path)
    assert {p.name for p in written} == set(cm["data"])
    items = list(load_corpus(tmp_path))
    assert not [i for i in items if isinstance(i, SkippedDocument)]
    by = {i.source: i.access for i in items}
    assert (by["security-incident-response.md"].tenant, by["security-incident-response.md"].groups) == \
        ("acme", ("eng",))
    assert (by["globex-handbook-vacation.md"].tenant, by["hr-salary-bands.md"].groups) == ("globex", ("hr",))


@pytest.mark.parametrize("key", ["../x", "a/b", "..", ""], ids=["parent", "slash", "dotdot", "empty"])
def test_materialise_refuses_paths(tmp_path, key):
    with pytest.raises(ValueError):
        materialise_configmap({"data": {key: "x"}}, tmp_path)


def test_materialise_binary_data(tmp_path):
    import base64
    materialise_configmap({"binaryData": {"a.pdf": base64.b64encode(b"%PDF").decode()}}, tmp_path)
    assert (tmp_path / "a.pdf").read_bytes() == b"%PDF"
    assert list_files(tmp_path) == ["a.pdf"]
    assert json.dumps(list_files(tmp_path))
