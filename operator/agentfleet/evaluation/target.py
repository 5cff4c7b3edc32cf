"""What the evaluator knows about the app besides its HTTP API: the corpus (who may read each source, resolved by
the ingest pipeline's own access rules, the text of the sources a case forbids, and whether a permitted source
states a phrase too), the index searched directly as each case's principal, and, with `-f APP.yaml`, the app
itself, started on free ports exactly as `agentfleet up` starts it (local.plan + local.up in a background thread)
and stopped again before the direct search takes the index's file lock."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from ..ingest.access import Access
from ..ingest.corpus import AccessDefaults, Document, load_corpus, materialise_configmap
from ..retrieval.filters import Principal, stored_access
from .metrics import normalise_answer
from .retrieval import FETCH_FACTOR, Search, may_read
from .suite import Suite

__all__ = ["CorpusAccess", "LocalApp", "AppDidNotStart", "plan_local", "local_app", "is_held", "snapshot_index",
           "attach_direct", "free_port"]


@dataclass(frozen=True)
class CorpusAccess:
    """source -> who may read it and its text, for every document the ingest pipeline would index."""

    access: Mapping[str, Access]
    texts: Mapping[str, str]

    @classmethod
    def from_dir(cls, root: Path, defaults: AccessDefaults = AccessDefaults()) -> "CorpusAccess":
        access: dict[str, Access] = {}
        texts: dict[str, str] = {}
        for item in load_corpus(Path(root), defaults=defaults):
            if isinstance(item, Document):
                access[item.source] = item.access
                texts[item.source] = item.parsed.text
        return cls(access, texts)

    def _find(self, source: str, table: Mapping[str, Any]) -> Any:
        # A JSONL record `f.jsonl#3` falls back to its file, as the retrieval metrics do.
        return table.get(source, table.get(source.split("#", 1)[0]))

    def permitted(self, principal: Principal) -> Callable[[str], bool]:
        """Whether `principal` may read a source, by the stored access the pipeline gives it and the evaluator's
        own check (retrieval.may_read), not the search filter under test. A source the corpus does not hold was
        never indexed from it: not permitted."""

        def check(source: str) -> bool:
            acc: Access | None = self._find(source, self.access)
            if acc is None:
                return False
            stored = stored_access(acc.tenant, acc.groups, public=acc.public)
            return may_read(principal, stored.tenant, stored.groups)

        return check

    def forbidden_texts(self, sources: Sequence[str]) -> dict[str, str]:
        return {s: t for s in sources if (t := self._find(s, self.texts)) is not None}

    @functools.cached_property
    def _normalised(self) -> dict[str, str]:
        return {s: f" {' '.join(normalise_answer(t).split())} " for s, t in self.texts.items()}

    def readable(self, principal: Principal) -> Callable[[str], bool]:
        """Whether some document `principal` may read contains a normalised phrase (scoring's shingles): quoting
        text that a permitted document states too is no leak. Scans the corpus only for the rare phrase that an
        answer shares with a forbidden document."""
        texts: list[str] = []

        def check(phrase: str) -> bool:
            if not texts:
                permitted = self.permitted(principal)
                texts.extend(t for s, t in self._normalised.items() if permitted(s))
            needle = f" {phrase} "
            return any(needle in text for text in texts)

        return check


def attach_direct(traces: Sequence[dict[str, Any]], suite: Suite, principals: Mapping[str, Principal],
                  search: Search, *, k: int = 10) -> int:
    """Each case's question searched directly against the index as its principal, as `"direct"` in its trace
    (the hits with their stored access fields). Returns how many traces got one."""
    cases = {c.id: c for c in suite.cases}
    n = 0
    for trace in traces:
        case = cases.get(trace["case_id"])
        principal = principals.get(case.principal) if case else None
        if case is None or principal is None:
            continue
        hits = search(case.question, principal, max(k, 10) * FETCH_FACTOR)
        trace["direct"] = [{"id": h.id, "source": h.source, "score": h.score, "tenant": h.tenant,
                            "groups": h.groups} for h in hits]
        n += 1
    return n


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class AppDidNotStart(RuntimeError):
    """`agentfleet up` ended before the app was ready (it has said why)."""


@dataclass(frozen=True)
class LocalApp:
    plan: Any                    # local.plan.UpPlan
    base_url: str

    @property
    def keys_yaml(self) -> str:
        return str(self.plan.keys_yaml)

    def corpus(self) -> CorpusAccess | None:
        """The VectorIndex's ConfigMap as the pipeline sees it, with the index's access defaults."""
        if self.plan.index is None:
            return None
        source = self.plan.run_dir / "corpus"
        if not source.is_dir():
            materialise_configmap(self.plan.index.corpus, source)
        spec = self.plan.index.index.spec.access
        return CorpusAccess.from_dir(source, AccessDefaults(spec.default_tenant, tuple(spec.default_groups),
                                                            spec.allow_public))

    def judge_endpoint(self, role: str) -> tuple[str, str]:
        """(base URL, model) of the fleet that serves `role` for this app."""
        endpoint = self.plan.runtime.models.get(role)
        if endpoint is None:
            raise KeyError(role)
        return endpoint.url, endpoint.model

    def index(self) -> tuple[str, str, str, str] | None:
        """(milvus-lite file, collection, embedder, retrieval mode) once the app has stopped, as the runtime
        searched it."""
        conn = self.plan.runtime.index
        if conn is None:
            return None
        return conn.uri, conn.collection, conn.embedding_url or "all-minilm-l6-v2", conn.mode


def _quiet(say: Callable[[str], None]) -> Callable[[str], None]:
    """`agentfleet up`'s lines minus its how-to-talk-to-it hints (two-space indented) and blank lines."""

    def out(line: str) -> None:
        if line.strip() and not (line.startswith("  ") and not line.startswith("    ")):
            say(line)

    return out


def plan_local(docs: list[Any], *, run_dir: Path, app_name: str | None = None) -> Any:
    """`agentfleet up`'s plan for `docs` (local.plan.plan_up) on free ports. Raises errors.SpecError."""
    from ..local.plan import plan_up

    return plan_up(docs, run_dir=Path(run_dir).resolve(), app_name=app_name, engine_port=free_port(),
                   runtime_port=free_port(), env=dict(os.environ))


@contextlib.contextmanager
def local_app(plan: Any, *, say: Callable[[str], None] = print, poll_s: float = 0.5) -> Iterator[LocalApp]:
    """The planned app running on this machine exactly as `agentfleet up -f` runs it (local.up.run_up in a
    thread); stopped, every process it started gone, when the block ends, however it ends. AppDidNotStart when a
    process failed first (`say` has been given agentfleet up's reason)."""
    from ..local.up import run_up

    stop, ready = threading.Event(), threading.Event()
    outcome: dict[str, int] = {}

    def up() -> None:
        outcome["rc"] = run_up(plan, say=_quiet(say), stop=stop, on_ready=lambda _plan: ready.set())

    thread = threading.Thread(target=up, name="agentfleet-eval-up", daemon=True)
    thread.start()
    try:
        while not ready.wait(poll_s):
            if not thread.is_alive():
                raise AppDidNotStart(f"{plan.app.ref()} did not start (agentfleet up ended with {outcome.get('rc')})")
        yield LocalApp(plan, f"http://127.0.0.1:{plan.runtime_port}")
    finally:
        stop.set()
        thread.join()


def is_held(uri: str) -> bool:
    """Whether a milvus-lite data directory is open elsewhere (its LOCK is taken): opening it then fails or, in
    milvus-lite 3.2, hangs, so the evaluator searches a snapshot instead. Always False for a Milvus server URI."""
    lock = Path(uri) / "LOCK"
    if "://" in uri or not lock.is_file():
        return False
    try:
        import fcntl
    except ImportError:  # not Unix: let the store report it
        return False
    with lock.open("rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def snapshot_index(db_path: Path, into: Path) -> Path:
    """A copy of a milvus-lite data directory that a running runtime holds open (it only reads it), without its
    LOCK file, so this process can search the copy while the app still runs."""
    dest = Path(into) / db_path.name
    if db_path.is_dir():
        shutil.copytree(db_path, dest, ignore=shutil.ignore_patterns("LOCK"))
    else:
        shutil.copy2(db_path, dest)
    return dest
