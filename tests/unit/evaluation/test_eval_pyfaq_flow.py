"""`agentfleet eval prepare pyfaq` on a small generated documentation tree, then `agentfleet ingest` and
`agentfleet eval --retrieval-only` end to end with the built-in embedder and milvus-lite; and the same evaluation
failing when retrieval is broken (permission filter removed, embedder swapped for random vectors)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from agentfleet import cli
from agentfleet.evaluation import pyfaq
from agentfleet.retrieval.filters import Filter

QUESTIONS = {
    "How do I sort a list of dictionaries by a key?":
        "Use the built-in sorted function with a key argument, for example sorted(rows, key=lambda r: r['age']). "
        "The operator module's itemgetter is a faster key function for dictionaries.",
    "Why does my recursive function raise RecursionError?":
        "Python limits recursion depth to protect the C stack. Each nested call uses a frame; when the limit set "
        "by sys.setrecursionlimit is exceeded a RecursionError is raised. Rewrite deep recursion as a loop.",
    "How can I read a file line by line without loading it into memory?":
        "Iterate over the open file object: for line in open(path) reads one line at a time, buffered, so even "
        "a file of many gigabytes never has to fit into memory at once.",
    "What is the global interpreter lock and does it stop threads running in parallel?":
        "The GIL is a mutex in CPython that lets only one thread execute Python bytecode at a time. Threads still "
        "help with blocking input and output; use multiprocessing for CPU-bound parallel work.",
    "How do I convert a string to a number?":
        "Call int('42') for integers or float('3.5') for floating point numbers; int accepts an optional base "
        "such as int('ff', 16). Invalid text raises ValueError.",
    "How do I copy an object in Python?":
        "Use copy.copy for a shallow copy and copy.deepcopy for a deep copy that also copies nested containers. "
        "Lists can also be copied with slicing: new = old[:].",
}
VOCAB = ("socket bind port address packet buffer stream codec unicode locale calendar weekday decimal rounding "
         "fraction tkinter widget canvas button curses terminal window pixel zipfile archive member compress "
         "sqlite cursor commit rollback schema email header mime boundary audio wave frame channel turtle pen "
         "colour angle heap queue priority bisect insort array typecode struct pack unpack endian mmap page "
         "signal handler alarm timer syslog facility severity grp passwd shadow termios tty baud parity").split()


def heading(title: str, char: str = "=") -> str:
    return f"{title}\n{char * len(title)}\n"


def fake_docs(root: Path, distractors: int = 80) -> Path:
    src = root / "_sources"
    (src / "faq").mkdir(parents=True)
    (src / "library").mkdir()
    faq = [heading("General Python FAQ", "*"), ".. contents::\n"]
    for q, a in QUESTIONS.items():
        faq += [heading(q, "-"), a + "\n"]
    faq += [heading("A heading that is not a question", "-"), "Some words that are not an answer at all here.\n",
            heading("Too short?", "-"), "Yes.\n"]
    (src / "faq" / "general.rst.txt").write_text("\n".join(faq))
    (src / "faq" / "index.rst.txt").write_text(heading("FAQ index?") + "\nthe index is not a question set at all\n")
    rng = random.Random(7)
    for n in range(distractors // 4):
        parts = [heading(f"module{n} --- tools")]
        for s in range(4):
            parts += [heading(f"Section {s}", "-"), " ".join(rng.choice(VOCAB) for _ in range(40)) + ".\n"]
        (src / "library" / f"module{n}.rst.txt").write_text("\n".join(parts))
    (src / "glossary.rst.txt").write_text(heading("Glossary") + "\n" + "lambda: an anonymous inline function "
                                          "consisting of a single expression evaluated when it is called.\n")
    return src


def run_cli(argv, capsys):
    rc = cli.main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("pyfaq")
    docs = fake_docs(base)
    out = base / "set"
    assert cli.main(["eval", "prepare", "pyfaq", "--out", str(out), "--docs", str(docs), "--size", "60"]) == 0
    index = out / "index.db"
    assert cli.main(["ingest", "--source", str(out / "corpus"), "--index", str(index)]) == 0
    return out, index


def eval_argv(out: Path, index: Path) -> list[str]:
    return ["eval", "--suite", str(out / "suite.yaml"), "--index", str(index), "--keys", str(out / "keys.yaml"),
            "--retrieval-only", "--json"]


def test_prepare_writes_an_ingestable_corpus_suite_and_keys(prepared):
    out, _ = prepared
    suite = __import__("yaml").safe_load((out / "suite.yaml").read_text())
    questions = [c["question"] for c in suite["cases"]]
    assert questions == list(QUESTIONS)            # '?' headings with >= 3 words of body, index skipped
    case = suite["cases"][0]
    assert case["relevant"] == {"faq/general/0001.txt": 1}
    assert case["forbidden"] == ["contoso/faq/general/0001.txt", "staff/faq/general/0001.txt"]
    assert (out / "corpus" / "faq/general/0001.txt").read_text().startswith("Use the built-in sorted")
    assert "How do I sort" not in (out / "corpus" / "faq/general/0001.txt").read_text()   # no titles
    keys = __import__("yaml").safe_load((out / "keys.yaml").read_text())
    assert {e["user"] for e in keys.values()} >= {c["principal"] for c in suite["cases"]}
    assert len(list((out / "corpus" / "docs").rglob("*.txt"))) == 60 - len(QUESTIONS)


def test_prepare_picks_distractors_by_sha1_and_is_deterministic(tmp_path):
    docs = fake_docs(tmp_path)
    a, b = pyfaq.build(docs, size=30), pyfaq.build(docs, size=30)
    assert a == b
    every = pyfaq.build(docs, size=None)
    assert len(every.distractors) == every.total_distractors == 81
    want = sorted(every.distractors, key=lambda p: p.sha1)[:30 - len(QUESTIONS)]
    assert {p.id for p in a.distractors} == {p.id for p in want}


def test_prepare_names_the_package_when_docs_are_missing(tmp_path, capsys):
    rc, out, err = run_cli(["eval", "prepare", "pyfaq", "--out", str(tmp_path / "o"), "--docs",
                            str(tmp_path / "none")], capsys)
    assert rc == 2
    assert "apt-get install python3.11-doc" in err
    assert not (tmp_path / "o").exists()


def test_retrieval_only_eval_reports_metrics_and_no_leaks(prepared, capsys):
    out, index = prepared
    rc, stdout, err = run_cli(eval_argv(out, index), capsys)
    assert rc == 0, err
    report = json.loads(stdout)
    assert report["mode"] == "retrieval-only" and "answers" not in report and "tasks" not in report
    assert report["retrieval"]["search_mode"] == "hybrid"      # the runtime's default
    assert report["security"] == {"leaks": 0, "cases_with_leaks": []}
    assert report["retrieval"]["recall_at_10"] == 1.0
    assert report["retrieval"]["ndcg_at_10"] >= 0.9
    assert report["retrieval"]["mrr"] >= 0.9
    assert len(report["cases"]) == len(QUESTIONS)
    assert all(c["leaks"] == [] and len(c["retrieved"]) == 10 for c in report["cases"])
    assert "eval: 6/6 cases" in err


def test_removing_the_permission_filter_makes_leaks_fail_the_eval(prepared, capsys, monkeypatch):
    out, index = prepared
    import agentfleet.retrieval.store as store

    monkeypatch.setattr(store, "for_principal", lambda principal: Filter('tenant != ""', {}))
    rc, stdout, err = run_cli(eval_argv(out, index), capsys)
    report = json.loads(stdout)
    assert rc == 1
    assert report["security"]["leaks"] > 0
    assert set(report["security"]["cases_with_leaks"]) == {c["id"] for c in report["cases"]}
    reasons = {leak["reason"] for c in report["cases"] for leak in c["leaks"]}
    assert "forbidden source; outside the principal's permissions" in reasons
    assert "leaks must be 0" in err


class RandomVectors:
    name, dimension, batch_size = "random", 384, 64

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)

    def embed(self, texts):
        x = self.rng.standard_normal((len(texts), self.dimension)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_random_vector_embedder_collapses_the_metrics(prepared, capsys, monkeypatch):
    out, index = prepared
    # The embedder alone (--mode dense): the default hybrid's BM25 half carries a broken embedder (below).
    rc, stdout, _ = run_cli(eval_argv(out, index) + ["--mode", "dense"], capsys)
    good = json.loads(stdout)["retrieval"]
    assert good["search_mode"] == "dense"
    import agentfleet.retrieval.embedders as embedders

    monkeypatch.setattr(embedders, "make_embedder", lambda *a, **kw: RandomVectors())
    rc, stdout, _ = run_cli(eval_argv(out, index) + ["--mode", "dense"], capsys)
    bad = json.loads(stdout)["retrieval"]
    assert rc == 0   # no leak: the filter still holds
    assert bad["ndcg_at_10"] < good["ndcg_at_10"] - 0.4
    assert bad["mrr"] < good["mrr"] - 0.4
    # BM25 alone never calls the embedder, and hybrid (the default) keeps part of what dense search lost.
    rc, stdout, _ = run_cli(eval_argv(out, index) + ["--mode", "bm25"], capsys)
    bm25 = json.loads(stdout)["retrieval"]
    rc, stdout, _ = run_cli(eval_argv(out, index), capsys)
    hybrid = json.loads(stdout)["retrieval"]
    assert bm25["search_mode"] == "bm25" and hybrid["search_mode"] == "hybrid"
    assert bm25["ndcg_at_10"] > bad["ndcg_at_10"] + 0.3
    assert hybrid["ndcg_at_10"] > bad["ndcg_at_10"] + 0.2


def test_a_principal_missing_from_the_keys_is_a_usage_error(prepared, capsys, tmp_path):
    out, index = prepared
    keys = tmp_path / "keys.yaml"
    keys.write_text("k-123456789: {user: zed, tenant: python}\n")
    rc, _, err = run_cli(eval_argv(out, index)[:-4] + ["--keys", str(keys), "--retrieval-only", "--json"], capsys)
    assert rc == 2
    assert "principal: user 'alice' is not in the key store" in err or "user 'bob'" in err
