"""`agentfleet ingest` and `agentfleet search` end to end on a temporary directory with every format, the real
embedder and a real milvus-lite file: the summary contract, re-run idempotency, changed and deleted documents,
revoked access, and P workers indexing the corpus exactly once."""

import json
from pathlib import Path

import pytest

from agentfleet.retrieval import cli as retrieval_cli


def main(argv):
    """The `agentfleet ingest|search` commands as registered in agentfleet.cli, without other rooms' commands."""
    import argparse

    parser = argparse.ArgumentParser(prog="agentfleet")
    retrieval_cli.add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


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


def corpus(root: Path) -> None:
    (root / "docs").mkdir(parents=True)
    (root / "_access.yaml").write_text('- pattern: "notes.txt"\n  tenant: acme\n  groups: [eng]\n'
                                       '- pattern: "*.pdf"\n  tenant: "ac\\"me"\n  groups: ["%_|"]\n')
    (root / "vacation.md").write_text("---\ntenant: acme\ngroups: [all]\n---\n# Vacation\n\nEmployees get "
                                      "25 days of paid vacation per year.\n\n## Carry-over\nFive days carry over.")
    (root / "notes.txt").write_text("The on-call engineer acknowledges a page within five minutes.")
    (root / "docs" / "page.html").write_text("<html><head><title>Salary</title></head><body><h1>Bands</h1>"
                                             "<p>Engineer salary bands are restricted to HR.</p></body></html>")
    (root / "docs" / "_access.yaml").write_text('- pattern: "*"\n  tenant: acme\n  groups: [hr]\n')
    (root / "report.pdf").write_bytes(tiny_pdf("Quarterly revenue forecast is confidential"))
    (root / "records.jsonl").write_text(json.dumps({"id": "g1", "text": "Globex vacation is thirty days.",
                                                    "tenant": "globex", "groups": ["all"]}) + "\n")
    (root / "orphan.md").write_text("No access metadata here.")


def ingest(capsys, src, db, *extra):
    assert main(["ingest", "--source", str(src), "--index", str(db), "--collection", "c",
                 "--chunk-tokens", "64", "--chunk-overlap", "8", *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def search(capsys, db, query, tenant, groups, k=10, *extra):
    assert main(["search", query, "--index", str(db), "--collection", "c", "--tenant", tenant, "--groups",
                 ",".join(groups), "--k", str(k), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_ingest_search_rerun_change_and_workers(tmp_path, capsys, monkeypatch):
    src, db = tmp_path / "src", tmp_path / "ix.db"
    corpus(src)
    term = tmp_path / "termination-log"
    monkeypatch.setenv("AGENTFLEET_TERMINATION_LOG", str(term))
    first = ingest(capsys, src, db)
    assert {k: first[k] for k in ("documents", "chunks", "skippedDocuments")} == \
        {"documents": 5, "chunks": 6, "skippedDocuments": 1}
    assert json.loads(term.read_text()) == first

    hits = search(capsys, db, "how many vacation days", "acme", ["all"])
    assert {h["source"] for h in hits} == {"vacation.md"}
    assert {"source", "text", "score", "headings", "start", "end"} <= set(hits[0])
    assert {h["source"] for h in search(capsys, db, "salary", "acme", ["hr"])} == {"docs/page.html"}
    assert {h["source"] for h in search(capsys, db, "revenue", 'ac"me', ["%_|"])} == {"report.pdf"}
    assert {h["source"] for h in search(capsys, db, "vacation", "globex", ["all"])} == {"records.jsonl#g1"}
    assert search(capsys, db, "vacation", "acme", []) == []
    # --mode: BM25 alone finds only chunks that share a term with the query; dense always ranks every permitted
    # chunk; hybrid (the default) ranks what either finds.
    everything = ("acme", ["eng", "all", "hr"])
    assert search(capsys, db, "zyxwvut", *everything, 10, "--mode", "bm25") == []
    dense = search(capsys, db, "zyxwvut", *everything, 10, "--mode", "dense")
    assert {h["source"] for h in dense} == {"vacation.md", "notes.txt", "docs/page.html"}
    assert {h["source"] for h in search(capsys, db, "vacation days", *everything, 10, "--mode", "bm25")} == \
        {"vacation.md"}
    assert len(search(capsys, db, "vacation days", *everything)) == len(dense)
    assert {h["source"] for h in search(capsys, db, "anything", "acme", ["eng", "all", "hr"])} == \
        {"vacation.md", "notes.txt", "docs/page.html"}

    again = ingest(capsys, src, db)
    assert (again["chunks"], again["embedded"], again["deleted"]) == (6, 0, 0)

    # A changed document replaces its chunks; a deleted one disappears; removed access metadata revokes access.
    (src / "vacation.md").write_text("---\ntenant: acme\ngroups: [all]\n---\n# Vacation\n\nEmployees get "
                                     "30 days of paid vacation per year.")
    (src / "records.jsonl").unlink()
    (src / "docs" / "_access.yaml").unlink()
    changed = ingest(capsys, src, db)
    assert (changed["documents"], changed["skippedDocuments"], changed["embedded"]) == (3, 2, 1)
    assert changed["deleted"] == 2 + 1 + 1
    texts = [h["text"] for h in search(capsys, db, "vacation", "acme", ["all", "eng", "hr"])]
    assert any("30 days" in t for t in texts) and not any("25 days" in t for t in texts)
    assert search(capsys, db, "vacation", "globex", ["all"]) == []
    assert search(capsys, db, "salary", "acme", ["hr"]) == []

    # P workers over a fresh index: together exactly the corpus, each document once.
    corpus(tmp_path / "src2")
    db2 = tmp_path / "workers.db"
    parts = [ingest(capsys, tmp_path / "src2", db2, "--workers", "3", "--worker-index", str(i)) for i in range(3)]
    assert sum(p["documents"] for p in parts) == 5 and sum(p["chunks"] for p in parts) == 6
    assert sum(p["skippedDocuments"] for p in parts) == 1
    from agentfleet.retrieval.store import MilvusStore
    with MilvusStore(str(db2), "c") as s:
        assert s.count() == 6


def test_ingest_worker_index_from_job_env(tmp_path, capsys, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "5")
    assert main(["ingest", "--source", str(src), "--index", str(tmp_path / "x.db"), "--workers", "2"]) == 2
    assert "outside 0..1" in capsys.readouterr().err


def test_search_missing_collection(tmp_path, capsys):
    assert main(["search", "q", "--index", str(tmp_path / "none.db"), "--tenant", "a"]) == 1
    assert "no collection" in capsys.readouterr().err
