"""The pyfaq evaluation set (shared/facts.md): Python's FAQ as queries over the CPython documentation that Debian's
`python3.11-doc` installs (PSF licence; nothing is downloaded). Queries are the FAQ section headings that end in
`?` with a body of >= 3 words; each query's gold passage is that body, heading removed. Distractors are the
sections of the other documentation trees, split on blank lines into <= 160-word chunks (< 12 words dropped),
without titles, which would leak the question. pyfaq-2k keeps the 175 gold passages and the distractors whose
sha1(id) sorts first; `full` keeps all of them.

`build` plans the set (pure apart from reading the docs); `write` lays it out as an ingestable source directory:
every passage a `.txt` file under an `_access.yaml` sidecar (tenant `python`: gold in group `faq`, distractors in
group `docs`), plus two kinds of permission trap, extra to the counted passages: a copy of every gold passage in
tenant `contoso` (another tenant) and in tenant `python` group `staff` (a group no asking user has). Each case
lists its two copies as `forbidden`, so a retrieval without its permission filter retrieves them and leaks."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

__all__ = ["DEBIAN_PACKAGE", "DEFAULT_DOCS", "DocsMissing", "Passage", "Query", "PyFaq", "build", "write",
           "sections", "split_passages", "suite_document", "DEFAULT_SIZE", "USERS"]

DEBIAN_PACKAGE = "python3.11-doc"
DEFAULT_DOCS = Path("/usr/share/doc/python3.11/html/_sources")
DEFAULT_SIZE = 2500
DISTRACTOR_TREES = ("tutorial", "howto", "library", "reference", "using", "extending", "installing")
MAX_WORDS, MIN_WORDS, MIN_ANSWER_WORDS = 160, 12, 3
TENANT, OTHER_TENANT = "python", "contoso"
GOLD_GROUP, DOCS_GROUP, STAFF_GROUP = "faq", "docs", "staff"
# key -> user entry of keys.yaml. Keys are fixed so suites and keys files stay byte-identical across runs; they
# guard a local evaluation index, not a service.
USERS = {
    "eval-alice-0000000001": {"user": "alice", "tenant": TENANT, "groups": [GOLD_GROUP, DOCS_GROUP]},
    "eval-bob-00000000002": {"user": "bob", "tenant": TENANT, "groups": [DOCS_GROUP, GOLD_GROUP, "support"]},
    "eval-carol-000000003": {"user": "carol", "tenant": OTHER_TENANT, "groups": []},
    "eval-sam-00000000004": {"user": "sam", "tenant": TENANT, "groups": [STAFF_GROUP]},
}
ASKING_USERS = ("alice", "bob")

_ADORNMENT = re.compile(r"""^([=\-~^"'`*+#<>_:.!$%&,;/?@\\|])\1{2,}\s*$""")


class DocsMissing(FileNotFoundError):
    """The documentation sources are not installed."""


@dataclass(frozen=True)
class Passage:
    id: str          # "<doc path>#<n>": stable across runs
    path: str        # where it is written under corpus/
    text: str

    @property
    def sha1(self) -> str:
        return hashlib.sha1(self.id.encode()).hexdigest()


@dataclass(frozen=True)
class Query:
    id: str
    question: str
    gold: Passage


@dataclass(frozen=True)
class PyFaq:
    queries: tuple[Query, ...]
    distractors: tuple[Passage, ...]   # the chosen ones
    total_distractors: int

    @property
    def passages(self) -> int:
        return len(self.queries) + len(self.distractors)


def sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) of each reStructuredText section, in order; text before the first heading has heading ""."""
    lines = text.splitlines()
    heads: list[tuple[int, int, str]] = []   # (first line of the heading block, first body line, title)
    i = 0
    while i < len(lines) - 1:
        title, under = lines[i], lines[i + 1]
        if title.strip() and not title[0].isspace() and not _ADORNMENT.match(title) and _ADORNMENT.match(under) \
                and len(under.rstrip()) >= len(title.rstrip()) - 1:
            start = i - 1 if i > 0 and _ADORNMENT.match(lines[i - 1]) else i   # an overline belongs to it
            heads.append((start, i + 2, title.strip()))
            i += 2
            continue
        i += 1
    out: list[tuple[str, str]] = []
    if not heads or heads[0][0] > 0:
        out.append(("", "\n".join(lines[:heads[0][0] if heads else len(lines)])))
    for n, (_, body_from, title) in enumerate(heads):
        body_to = heads[n + 1][0] if n + 1 < len(heads) else len(lines)
        out.append((title, "\n".join(lines[body_from:body_to])))
    return out


def _words(text: str) -> int:
    return len(text.split())


def split_passages(body: str) -> list[str]:
    """A section body as <= 160-word chunks: paragraphs (split on blank lines) packed greedily, a longer paragraph
    cut by words; chunks under 12 words dropped."""
    chunks: list[str] = []
    cur: list[str] = []
    cur_words = 0
    for para in re.split(r"\n\s*\n", body):
        para = para.strip("\n")
        n = _words(para)
        if not n:
            continue
        if n > MAX_WORDS:
            if cur:
                chunks.append("\n\n".join(cur))
                cur, cur_words = [], 0
            words = para.split()
            chunks += [" ".join(words[j:j + MAX_WORDS]) for j in range(0, len(words), MAX_WORDS)]
            continue
        if cur_words + n > MAX_WORDS:
            chunks.append("\n\n".join(cur))
            cur, cur_words = [], 0
        cur.append(para)
        cur_words += n
    if cur:
        chunks.append("\n\n".join(cur))
    return [c for c in chunks if _words(c) >= MIN_WORDS]


def _doc_files(root: Path, tree: str) -> Iterator[Path]:
    yield from sorted((root / tree).rglob("*.rst.txt"))


def _stem(rel: str) -> str:
    return rel.removesuffix(".rst.txt")


def build(docs: Path = DEFAULT_DOCS, *, size: int | None = DEFAULT_SIZE) -> PyFaq:
    """The query set and passages; `size` None keeps every distractor."""
    docs = Path(docs)
    if not (docs / "faq").is_dir():
        raise DocsMissing(str(docs))
    queries: list[Query] = []
    for f in _doc_files(docs, "faq"):
        rel = f.relative_to(docs).as_posix()
        if rel == "faq/index.rst.txt":
            continue
        for n, (head, body) in enumerate(sections(f.read_text("utf-8"))):
            body = body.strip("\n")
            if head.endswith("?") and _words(body) >= MIN_ANSWER_WORDS:
                pid = f"{rel}#{n}"
                gold = Passage(pid, f"faq/{_stem(rel).removeprefix('faq/')}/{n:04d}.txt", body)
                queries.append(Query(f"pyfaq-{len(queries) + 1:03d}", head, gold))
    files = [f for tree in DISTRACTOR_TREES for f in _doc_files(docs, tree)]
    if (docs / "glossary.rst.txt").is_file():
        files.append(docs / "glossary.rst.txt")
    distractors: list[Passage] = []
    for f in files:
        rel = f.relative_to(docs).as_posix()
        k = 0
        for _, body in sections(f.read_text("utf-8")):
            for chunk in split_passages(body):
                distractors.append(Passage(f"{rel}#{k}", f"docs/{_stem(rel)}/{k:04d}.txt", chunk))
                k += 1
    total = len(distractors)
    if size is not None:
        keep = max(0, size - len(queries))
        distractors = sorted(distractors, key=lambda p: p.sha1)[:keep]
        distractors.sort(key=lambda p: p.path)
    return PyFaq(tuple(queries), tuple(distractors), total)


def _access() -> list[dict[str, object]]:
    return [
        {"pattern": "faq/**", "tenant": TENANT, "groups": [GOLD_GROUP]},
        {"pattern": "docs/**", "tenant": TENANT, "groups": [DOCS_GROUP]},
        {"pattern": "staff/**", "tenant": TENANT, "groups": [STAFF_GROUP]},
        {"pattern": "contoso/**", "tenant": OTHER_TENANT},
    ]


def _principal_for(query: Query) -> str:
    return ASKING_USERS[int(query.gold.sha1[:8], 16) % len(ASKING_USERS)]


def suite_document(faq: PyFaq) -> dict[str, object]:
    cases = []
    for q in faq.queries:
        cases.append({
            "id": q.id, "principal": _principal_for(q), "question": q.question,
            "reference": " ".join(q.gold.text.split()),
            "relevant": {q.gold.path: 1},
            "forbidden": [f"contoso/{q.gold.path}", f"staff/{q.gold.path}"],
        })
    return {"tolerances": {"retrieval.recall_at_10": 0.02, "retrieval.ndcg_at_10": 0.02, "retrieval.mrr": 0.02,
                           "security.leaks": 0},
            "cases": cases}


def write(faq: PyFaq, out: Path, *, name: str) -> dict[str, int]:
    """Write corpus/, suite.yaml and keys.yaml under `out`; corpus/ is replaced so a rerun leaves no stale file."""
    out = Path(out)
    corpus = out / "corpus"
    if corpus.exists():
        import shutil

        shutil.rmtree(corpus)
    corpus.mkdir(parents=True)
    (corpus / "_access.yaml").write_text(yaml.safe_dump(_access(), sort_keys=False))

    def put(rel: str, text: str) -> None:
        p = corpus / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text + "\n", "utf-8")

    for q in faq.queries:
        put(q.gold.path, q.gold.text)
        put(f"contoso/{q.gold.path}", q.gold.text)
        put(f"staff/{q.gold.path}", q.gold.text)
    for p in faq.distractors:
        put(p.path, p.text)
    header = (f"# {name}: {len(faq.queries)} questions from Python's FAQ over {faq.passages} passages "
              f"(agentfleet eval prepare pyfaq; docs from Debian's {DEBIAN_PACKAGE}, PSF licence)\n")
    (out / "suite.yaml").write_text(header + yaml.safe_dump(suite_document(faq), sort_keys=False,
                                                            allow_unicode=True, width=120))
    (out / "keys.yaml").write_text("# API key -> user; the evaluation's principals (see corpus/_access.yaml)\n"
                                   + yaml.safe_dump(USERS, sort_keys=False))
    return {"questions": len(faq.queries), "passages": faq.passages, "distractors": len(faq.distractors),
            "distractors_available": faq.total_distractors, "traps": 2 * len(faq.queries)}
