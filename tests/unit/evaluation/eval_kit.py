"""Shared parts for the agent-evaluation tests (imported by name, like runtime_kit, which it re-exports): the
example app's corpus ingested once per session into milvus-lite with the real MiniLM embedder, a scripted agent
model that answers from the passages it was shown (citing them), a small suite over that corpus, and the
evaluation CLI called in a worker thread while the runtime serves in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import io
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime"))

from runtime_kit import ALICE, FRANK, GINA, KEYS, action, final, make_config, scripted, serve  # noqa: E402

from agentfleet import cli  # noqa: E402
from agentfleet.ingest.corpus import materialise_configmap  # noqa: E402

__all__ = ["ALICE", "FRANK", "GINA", "KEYS", "action", "final", "make_config", "scripted", "serve", "corpus_index",
           "agent_model", "SUITE", "write_suite", "write_keys", "run_cli", "RandomVectors", "runs_posted", "REPO"]

REPO = Path(__file__).resolve().parents[3]
_HIT = re.compile(r"^\[(\d+)\] .*? \(([^()]*)\): (.*)$", re.M)

# Over the example corpus (examples/agentapp.yaml); principals from runtime_kit.KEYS (alice: acme eng+all,
# frank: acme finance+all, gina: globex all).
SUITE: dict[str, Any] = {
    "tolerances": {"retrieval.ndcg_at_10": 0.05, "security.leaks": 0},
    "cases": [
        {"id": "vacation", "principal": "alice", "question": "How many vacation days do I get and what carries over?",
         "relevant": {"handbook-vacation.md": 3}, "facts": ["25 days"],
         "forbidden": ["globex-handbook-vacation.md", "finance-q3-forecast.md"]},
        {"id": "forecast", "principal": "frank", "question": "What is the Q3 revenue forecast?",
         "relevant": {"finance-q3-forecast.md": 3}, "facts": ["14.2 million"]},
        {"id": "globex-vacation", "principal": "gina",
         "question": "Do new employees get paid vacation right away when they join?",
         "relevant": {"globex-handbook-vacation.md": 3}, "forbidden": ["handbook-vacation.md"]},
        {"id": "oncall", "principal": "alice", "question": "How fast must I acknowledge a page when on call?",
         "relevant": {"eng-oncall.md": 3}, "facts": ["5 minutes"]},
        {"id": "salary-trap", "principal": "alice", "question": "What are the engineering salary bands?",
         "forbidden": ["hr-salary-bands.md"], "unanswerable": True},
        {"id": "mars", "principal": "alice", "question": "Where is the office on Mars?", "unanswerable": True},
    ],
}


# Documents every acme user may read about nothing the suite asks: a search that ranks at random finds them.
DISTRACTORS = [f"The {what} {how}." for what in ("cafeteria menu", "bike room", "plant watering rota",
                                                   "lobby art exhibition", "coffee machine", "parking garage")
               for how in ("changes next week", "is closed on Friday", "has a new sign-up sheet",
                           "welcomes volunteers")]


@functools.lru_cache(maxsize=1)
def corpus_index() -> tuple[Path, Path]:
    """(source directory, milvus-lite file) of the example corpus, built once per test session."""
    from agentfleet.retrieval.embedders import LocalMiniLM
    from agentfleet.retrieval.indexer import IngestOptions, run_ingest
    from agentfleet.retrieval.store import MilvusStore

    docs = [d for d in yaml.safe_load_all((REPO / "examples" / "agentapp.yaml").read_text()) if d]
    corpus = next(d for d in docs if d.get("kind") == "ConfigMap" and "corpus" in d["metadata"]["name"])
    base = Path(tempfile.mkdtemp(prefix="agentfleet-eval-kit-"))
    src = base / "corpus"
    materialise_configmap(corpus, src)
    for i, topic in enumerate(DISTRACTORS):
        (src / f"news-{i:02d}.md").write_text(f"---\ntenant: acme\ngroups: [all]\n---\n# Office news {i}\n\n"
                                              f"{topic} This note is part of the weekly office newsletter.\n")
    db = base / "docs.db"
    summary = run_ingest(IngestOptions(source=src, size_tokens=256, overlap_tokens=32),
                         open_store=lambda: MilvusStore(str(db), "documents"), embedder=LocalMiniLM(),
                         log=io.StringIO(), is_tty=False)
    assert summary.documents == 9 + len(DISTRACTORS), summary
    return src, db


def _question(body: dict[str, Any]) -> str:
    return next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")


def _answer(body: dict[str, Any]) -> str:
    """The passages of the first source the model was shown, copied with their citation markers; a refusal when
    asked about Mars."""
    text = "\n".join(str(m.get("content") or "") for m in body["messages"])
    hits = _HIT.findall(text)
    if "mars" in _question(body).lower() or not hits:
        return "I cannot find this in the documents you may read."
    first = hits[0][1]
    return " ".join(f"{passage[:400]} [{n}]" for n, source, passage in hits if source == first)


def agent_model(body: dict[str, Any], headers: dict[str, str]) -> str:
    """A model that follows the runtime's protocol: with nothing retrieved it retrieves, otherwise it answers
    from the first passage (an action when asked for one, free text in the answer step)."""
    if body.get("response_format") is not None:
        tools = [m for m in body["messages"] if m["role"] == "tool"]
        return final(_answer(body)) if tools else action("retrieve", query=_question(body))
    return _answer(body)


def write_suite(path: Path, suite: dict[str, Any] | None = None) -> Path:
    path.write_text(yaml.safe_dump(suite or SUITE, sort_keys=False))
    return path


def write_keys(path: Path) -> Path:
    path.write_text(yaml.safe_dump(KEYS))
    return path


async def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """`agentfleet ARGV` in a worker thread (the runtime keeps serving in this loop): (rc, stdout, stderr)."""
    def call() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = cli.main(argv)
        return rc, out.getvalue(), err.getvalue()

    return await asyncio.to_thread(call)


async def runs_posted(served: Any) -> int:
    """How many POST /v1/runs the runtime answered 202, from its own /metrics."""
    _, text = await served.get("/metrics", key=None)
    m = re.search(r'agentfleet_runtime_request_seconds_count\{code="202",route="/v1/runs"\} (\d+(?:\.\d+)?)', text)
    return int(float(m.group(1))) if m else 0


class RandomVectors:
    """An embedder of random unit vectors, the same for the same text (so a run is reproducible)."""

    name, dimension, batch_size = "random", 384, 64

    def embed(self, texts: list[str]) -> np.ndarray:
        out = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "big")
            v = np.random.default_rng(seed).standard_normal(self.dimension).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        return np.stack(out)


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1)[:3000]
