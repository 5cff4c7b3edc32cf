"""`agentfleet eval`: the agent evaluation (every case through the app's runtime API as its principal, scored and
reported, optionally gated against a baseline), the retrieval-only evaluation, and `agentfleet eval prepare
pyfaq`: argparse wiring over runner, target, scoring, report, retrieval and pyfaq. Heavy modules are imported
inside the commands so `agentfleet --help` stays fast.

Exit codes: 0 ok; 1 a leak, a regression against --baseline (or, retrieval-only, an index that cannot be
searched); 2 a usage, suite or key problem (one line each); 3 the app could not be reached or started."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..api.agentapp import RETRIEVAL_MODES

__all__ = ["add_parsers", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_UNREACHABLE", "JUDGE_KEY_ENV"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
JUDGE_KEY_ENV = "AGENTFLEET_JUDGE_API_KEY"
ROLES = ("large", "small")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "eval", help="evaluate an AgentApp (answers, tasks, cost, leaks) or its retrieval alone; or prepare a "
                     "public evaluation set",
        description="agentfleet eval --suite FILE (-f APP.yaml | --url URL (--key KEY | --keys KEYS.yaml)) [--judge "
                    "ROLE|URL] [--report DIR] [--baseline REPORT.json] [--json]; agentfleet eval --suite FILE "
                    "--index URI --keys KEYS.yaml --retrieval-only; agentfleet eval prepare pyfaq --out DIR. "
                    "Exit 0 ok, 1 leaks or regressions, 2 usage/suite/key errors, 3 app unreachable.")
    e.add_argument("--suite", help="suite file (YAML, or JSONL for *.jsonl)")
    target = e.add_argument_group("the app (agent evaluation)")
    target.add_argument("-f", "--file", help="run this AgentApp YAML locally as `agentfleet up` does, evaluate it, "
                                             "stop it")
    target.add_argument("--app", help="the AgentApp in -f's file when it has several")
    target.add_argument("--run-dir", help="with -f: logs, keys, index and state (default: a temporary directory)")
    target.add_argument("--url", help="a running runtime (http://host:8080 or .../v1)")
    target.add_argument("--key", help="an API key: every case runs with it")
    target.add_argument("--keys", help="key store file: API key -> {user, tenant, groups}; each case runs with its "
                                       "principal's key")
    target.add_argument("--judge", help="LLM judge: large|small (the app's fleet, with -f) or an OpenAI-compatible "
                                        f"base URL (its key from ${JUDGE_KEY_ENV}); without one faithfulness is "
                                        "lexical")
    target.add_argument("--judge-model", help="the judge's model name (default: the first of GET /v1/models)")
    target.add_argument("--concurrency", type=int, default=4, help="cases in flight at once (default 4)")
    target.add_argument("--timeout", type=float, default=600.0, help="seconds per case before it is cancelled")
    target.add_argument("--report", metavar="DIR",
                        help="also write DIR/report.json and DIR/report.html (self-contained)")
    target.add_argument("--baseline", metavar="REPORT.json", help="print deltas; exit 1 when a metric regresses past "
                                                                  "the suite's tolerance")
    target.add_argument("--summary-file", metavar="PATH", help="write the status summary (JSON) here, whatever the "
                                                               "outcome")
    target.add_argument("--state", metavar="FILE", help="resume file (default .agentfleet-eval/<suite>-<hash>.jsonl)")
    target.add_argument("--fresh", action="store_true", help="ignore finished cases of an earlier run")
    target.add_argument("--corpus", metavar="DIR", help="the source directory behind the index: permissions and "
                                                        "forbidden texts for the leak check (-f knows it)")
    e.add_argument("--index", help="milvus-lite file (*.db) or Milvus URI (retrieval-only; with --url also the "
                                   "direct search as each principal)")
    e.add_argument("--collection", default="documents")
    e.add_argument("--retrieval-only", action="store_true",
                   help="measure retrieval against the index as each case's principal, no model involved")
    e.add_argument("--k", type=int, default=10, help="also report recall@k (recall@10 and nDCG@10 are always reported)")
    e.add_argument("--embedder", default="all-minilm-l6-v2", help="the embedder the index was built with")
    e.add_argument("--embedding-model")
    e.add_argument("--mode", choices=RETRIEVAL_MODES, default=None,
                   help="how the index is searched (retrieval-only, and the direct search with --url): hybrid "
                        "(dense + BM25: the default, as the runtime's), dense or bm25; with -f the app's "
                        "spec.index.mode")
    e.add_argument("--json", action="store_true", help="print the report as one JSON object")
    e.set_defaults(func=_cmd_eval)
    prep = e.add_subparsers(dest="eval_command", metavar="prepare")
    p = prep.add_parser("prepare", help="build a corpus, suite and key store from a public data set")
    p.add_argument("dataset", choices=["pyfaq"])
    p.add_argument("--out", required=True, help="directory for corpus/, suite.yaml and keys.yaml")
    p.add_argument("--full", action="store_true", help="every passage (pyfaq: ~8.2k) instead of pyfaq-2k's 2,500")
    p.add_argument("--docs", default=None, help="reStructuredText sources (default: what python3.11-doc installs)")
    p.add_argument("--size", type=int, default=None, help=argparse.SUPPRESS)  # smaller sets for tests
    p.set_defaults(func=_cmd_prepare)


def _err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from . import pyfaq

    docs = Path(args.docs) if args.docs else pyfaq.DEFAULT_DOCS
    size = None if args.full else (args.size or pyfaq.DEFAULT_SIZE)
    try:
        faq = pyfaq.build(docs, size=size)
    except pyfaq.DocsMissing:
        print(f"error: the Python documentation sources are missing ({docs}/faq); install them with: "
              f"apt-get install {pyfaq.DEBIAN_PACKAGE}", file=sys.stderr)
        return 2
    name = "pyfaq-full" if args.full else ("pyfaq-2k" if size == pyfaq.DEFAULT_SIZE else f"pyfaq-{size}")
    counts = pyfaq.write(faq, Path(args.out), name=name)
    out = Path(args.out)
    print(f"{name}: {counts['questions']} questions, {counts['passages']} passages "
          f"(+{counts['traps']} permission traps) in {out / 'corpus'}; next: agentfleet ingest --source "
          f"{out / 'corpus'} --index {out / 'index.db'} && agentfleet eval --suite {out / 'suite.yaml'} --index "
          f"{out / 'index.db'} --keys {out / 'keys.yaml'} --retrieval-only", file=sys.stderr)
    print(json.dumps({"name": name, **counts}))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    if args.retrieval_only:
        return _cmd_retrieval_only(args)
    return _cmd_agent(args)


# --- retrieval only -----------------------------------------------------------------------------------------------

def _cmd_retrieval_only(args: argparse.Namespace) -> int:
    missing = [f"--{n}" for n in ("suite", "index", "keys") if not getattr(args, n)]
    if missing:
        _err("error: retrieval-only evaluation: agentfleet eval --suite FILE --index URI --keys KEYS.yaml "
             f"--retrieval-only (missing {', '.join(missing)})")
        return EXIT_USAGE
    from ..retrieval.embedders import EmbedderError
    from ..retrieval.store import StoreError
    from . import retrieval
    from .suite import SuiteError, read_suite

    try:
        suite = read_suite(args.suite)
        principals = retrieval.principals_from_keys(Path(args.keys).read_text("utf-8"), where=args.keys)
    except SuiteError as err:
        for line in err.problems:
            _err(line)
        return EXIT_USAGE
    except OSError as err:
        _err(f"error: {args.keys}: cannot read: {err.strerror or err}")
        return EXIT_USAGE
    try:
        with retrieval.open_search(args.index, args.collection, embedder=args.embedder,
                                   embedding_model=args.embedding_model, mode=args.mode,
                                   token=os.environ.get("MILVUS_TOKEN")) as search:
            report = retrieval.run(suite, principals, search, k=args.k, log=sys.stderr)
            search_mode = getattr(search, "mode", args.mode)
    except retrieval.IndexMissing as err:
        _err(f"error: {err}")
        return EXIT_FAILED
    except SuiteError as err:
        for line in err.problems:
            _err(f"{args.suite}: {line}")
        return EXIT_USAGE
    except (EmbedderError, StoreError) as err:
        _err(f"error: eval {args.index}#{args.collection}: {err}")
        return EXIT_FAILED
    report["suite"], report["index"], report["embedder"] = args.suite, args.index, args.embedder
    report["retrieval"]["search_mode"] = search_mode
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        r, s = report["retrieval"], report["security"]
        for c in report["cases"]:
            print(f"{c['id']:>12} {c['principal']:>8} recall@10 {c['recall_at_10']} nDCG@10 {c['ndcg_at_10']} "
                  f"MRR {c['mrr']} leaks {len(c['leaks'])}")
        print(f"{len(report['cases'])} cases in {report['seconds']:.1f}s: recall@10 {r['recall_at_10']}, "
              f"nDCG@10 {r['ndcg_at_10']}, MRR {r['mrr']}; leaks {s['leaks']} ({search_mode} search)")
    if report["security"]["leaks"]:
        _err(f"FAIL: {report['security']['leaks']} leaked hit(s) in cases "
             f"{', '.join(report['security']['cases_with_leaks'])}: leaks must be 0")
        return EXIT_FAILED
    return EXIT_OK


# --- the agent evaluation -----------------------------------------------------------------------------------------

class _Usage(Exception):
    """Usage problems, one line each (exit 2)."""

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


class _Stop(Exception):
    """The evaluation cannot go on; `code` is the exit status, the message its one line."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _usage_problems(args: argparse.Namespace) -> list[str]:
    out = []
    if not args.suite:
        out.append("error: --suite FILE is required")
    if bool(args.file) == bool(args.url):
        out.append("error: give the app with -f APP.yaml (run it locally) or --url URL (a running runtime)")
    if args.url and not (args.key or args.keys):
        out.append("error: --url needs --key KEY or --keys KEYS.yaml (each case runs with its principal's key)")
    if args.file and (args.key or args.keys):
        out.append("error: with -f the keys come from the AgentApp's key Secret in the file: drop --key/--keys")
    if args.judge in ROLES and not args.file:
        out.append(f"error: --judge {args.judge}: a model role resolves only with -f APP.yaml; with --url give the "
                   "judge's OpenAI-compatible URL (and --judge-model)")
    if args.judge and args.judge not in ROLES and not args.judge.startswith(("http://", "https://")):
        out.append(f"error: --judge {args.judge!r}: expected large, small or an http(s) URL")
    if args.concurrency < 1:
        out.append("error: --concurrency must be at least 1")
    if args.timeout <= 0:
        out.append("error: --timeout must be positive")
    return out


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cmd_agent(args: argparse.Namespace) -> int:
    from .suite import SuiteError, read_suite

    problems = _usage_problems(args)
    if problems:
        for line in problems:
            _err(line)
        return EXIT_USAGE
    try:
        suite = read_suite(args.suite)
        suite_text = Path(args.suite).read_text("utf-8")
    except SuiteError as err:
        for line in err.problems:
            _err(line)
        return EXIT_USAGE
    summary_file = Path(args.summary_file) if args.summary_file else None
    try:
        report, regressions = _evaluate(args, suite, suite_text)
    except _Usage as err:
        for line in err.lines:
            _err(line)
        return EXIT_USAGE
    except _Stop as err:
        _err(f"error: {err}")
        return err.code
    except KeyboardInterrupt:
        _err("interrupted: finished cases are kept in the state file; run the same command again to resume")
        return 130
    from .report import summary_for_status, write_html

    if summary_file is not None:
        summary_file.parent.mkdir(parents=True, exist_ok=True)
        summary_file.write_text(json.dumps(summary_for_status(report), separators=(",", ":")))
    if args.report:
        _err(f"report: {write_html(report, Path(args.report))} (and report.json beside it)")
    if args.json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        _print_summary(report)
    code = EXIT_OK
    if report["security"]["leaks"]:
        _err(f"FAIL: {report['security']['leaks']} leak(s) in cases "
             f"{', '.join(report['security']['cases_with_leaks'])}: leaks must be 0")
        code = EXIT_FAILED
    if regressions:
        for r in regressions:
            _err(f"FAIL: {r['metric']} regressed: {r['baseline']} -> {r['current']} (delta {r['delta']:+g}, "
                 f"{r['better']} is better, tolerance {r['tolerance']:g})")
        code = EXIT_FAILED
    return code


def _load_keys(args: argparse.Namespace, keys_yaml: str | None, where: str) -> tuple[dict[str, Any], str | None]:
    """(user -> (key, Principal), the single key when every case runs with one)."""
    from . import retrieval
    from .suite import SuiteError

    text = keys_yaml
    if args.keys:
        try:
            text = Path(args.keys).read_text("utf-8")
        except OSError as err:
            raise _Usage(f"error: {args.keys}: cannot read: {err.strerror or err}") from None
    if text is None:
        return {}, args.key
    try:
        return retrieval.keys_by_user(text, where=where), args.key
    except SuiteError as err:
        raise _Usage(*err.problems) from None


def _key_plan(suite: Any, users: dict[str, Any], single: str | None, where: str
              ) -> tuple[Callable[[Any], str], dict[str, Any], str]:
    """(case -> key, user -> Principal for scoring, a note for the report's meta)."""
    principals = {u: p for u, (_, p) in users.items()}
    if single is not None and not users:
        return (lambda _case: single), {}, ("single key (--key): every case ran with it; the key store is unknown, "
                                            "so the cases' principals and permissions were not checked")
    if single is not None:
        owner = next((u for u, (k, _) in users.items() if k == single), None)
        if owner is None:
            raise _Usage(f"error: --key is not in {where}")
        wrong = [c for c in suite.cases if c.principal != owner]
        if wrong:
            raise _Usage(*[f"error: case {c.id}: principal {c.principal!r}, but --key belongs to {owner!r}"
                           for c in wrong])
        return (lambda _case: single), {owner: principals[owner]}, f"single key (--key) of {owner}"
    missing = sorted({c.principal for c in suite.cases} - set(users))
    if missing:
        lines = [f"error: case {c.id}: principal: user {c.principal!r} has no key in {where}"
                 for c in suite.cases if c.principal in missing]
        raise _Usage(*lines, f"error: {len(missing)} user(s) without a key: {', '.join(missing)}")
    return (lambda case: users[case.principal][0]), principals, f"each case with its principal's key ({where})"


def _judge_from_url(url: str, model: str | None) -> Any:
    from .judge import Judge

    key = os.environ.get(JUDGE_KEY_ENV)
    if model is None:
        model = _first_model(url, key)
    return Judge(url, model, api_key=key)


def _first_model(url: str, key: str | None) -> str:
    import urllib.error
    import urllib.request

    base = url.rstrip("/")
    base = base.removesuffix("/chat/completions")
    models_url = base + ("/models" if base.endswith("/v1") else "/v1/models")
    req = urllib.request.Request(models_url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - the URL the user named
            data = json.loads(resp.read())
        return str(data["data"][0]["id"])
    except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as err:
        raise _Usage(f"error: --judge {url}: cannot list its models at {models_url} ({getattr(err, 'reason', err)}); "
                     "name one with --judge-model") from None


def _evaluate(args: argparse.Namespace, suite: Any, suite_text: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run, score and report; the report and the regressions against --baseline."""
    from .report import build_report, compare
    from .runner import StateFile, default_state_path

    baseline = None
    if args.baseline:
        try:
            baseline = json.loads(Path(args.baseline).read_text("utf-8"))
        except (OSError, ValueError) as err:
            raise _Usage(f"error: --baseline {args.baseline}: cannot read a report: {err}") from None
    # With a judge, each answer is also compared with the baseline's answer to the same case (both orders).
    args.baseline_answers = ({c["id"]: c.get("answer") or "" for c in baseline.get("cases", [])
                              if isinstance(c, dict) and "id" in c} if baseline is not None and args.judge else None)
    started, t0 = _now(), time.monotonic()
    if args.file:
        docs, target_id = _read_app_file(args.file)
        run_dir_ctx = (tempfile.TemporaryDirectory(prefix="agentfleet-eval-") if not args.run_dir
                       else _Keep(Path(args.run_dir)))
    else:
        docs, target_id = None, args.url.rstrip("/")
        run_dir_ctx = _Keep(None)
    state = StateFile(Path(args.state) if args.state else default_state_path(args.suite, suite_text, target_id))
    with run_dir_ctx as run_dir:
        plan = _plan(args, docs, Path(run_dir)) if docs is not None else None
        keys_where = (f"{args.file}: Secret {plan.app.spec.auth.api_keys_secret_ref.name}" if plan is not None
                      else (args.keys or "--key"))
        users, single = _load_keys(args, plan.keys_yaml if plan is not None else None, keys_where)
        key_for, principals, key_note = _key_plan(suite, users, single, keys_where)
        if args.fresh:
            _forget(state)
        done = _load_state(state, [c.id for c in suite.cases])
        todo = [c for c in suite.cases if c.id not in done]
        if done:
            _err(f"resuming: {len(done)} of {len(suite.cases)} cases already done ({state.path}; --fresh runs them "
                 "again)")
        meta: dict[str, Any] = {"suite": str(args.suite), "target": args.file or target_id, "started": started,
                                "concurrency": args.concurrency, "timeout_s": args.timeout, "keys": key_note,
                                "resumed": len(done), "ran": len(todo), "state": str(state.path)}
        if plan is not None:
            results, judge, corpus, direct_note = _run_local(args, plan, suite, todo, done, key_for, principals,
                                                             state)
            meta.update(app=plan.app.ref(), url=f"http://127.0.0.1:{plan.runtime_port}")
        else:
            judge = _judge_from_url(args.judge, args.judge_model) if args.judge else None
            traces = _run_cases(args.url, todo, done, key_for, state, args)
            _check_reached(traces, suite, target_id)
            corpus = _corpus_from_dir(args.corpus) if args.corpus else None
            direct_note = _direct_from_index(args, traces, suite, principals) if args.index else "no index given"
            results = _score(suite, traces, judge=judge, corpus=corpus, principals=principals, k=args.k,
                   baseline_answers=getattr(args, "baseline_answers", None))
    meta.update({"direct_retrieval": direct_note,
                 "permissions": ("from the corpus: every retrieved or cited source checked against the principal's "
                                 "access" if corpus is not None and principals else
                                 "unknown (no corpus or key store): only the suite's `forbidden` sources count as "
                                 "leaks"),
                 "finished": _now(), "seconds": round(time.monotonic() - t0, 3)})
    report = build_report(suite, results, meta=meta, judge=judge)
    regressions: list[dict[str, Any]] = []
    if baseline is not None:
        deltas, regressions = compare(report, baseline, suite.tolerances)
        _print_deltas(deltas, args.baseline)
    return report, regressions


class _Keep:
    """A run directory the user chose (or none): nothing to clean up."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def __enter__(self) -> str:
        return str(self.path or ".")

    def __exit__(self, *exc: object) -> None:
        return None


def _read_app_file(path: str) -> tuple[list[Any], str]:
    import hashlib

    import yaml

    try:
        text = Path(path).read_text("utf-8")
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except (OSError, yaml.YAMLError) as err:
        raise _Usage(f"error: {path}: cannot read: {err}") from None
    # The resume file follows the app's content, not the random ports it runs on.
    return docs, f"file:{Path(path).resolve()}#{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _plan(args: argparse.Namespace, docs: list[Any], run_dir: Path) -> Any:
    from ..errors import SpecError
    from .target import plan_local

    try:
        return plan_local(docs, run_dir=run_dir, app_name=args.app)
    except SpecError as err:
        raise _Usage(*[f"{args.file}: {err.ref}: {p}" for p in err.problems]) from None


def _forget(state: Any) -> None:
    try:
        state.clear()
    except OSError as err:
        _err(f"warning: cannot remove {state.path}: {err.strerror or err}")


def _load_state(state: Any, ids: list[str]) -> dict[str, dict[str, Any]]:
    try:
        return dict(state.load(ids))
    except OSError as err:
        _err(f"warning: cannot read {state.path} ({err.strerror or err}): running every case")
        return {}


def _saver(state: Any) -> Callable[[dict[str, Any]], None]:
    broken: list[str] = []

    def save(trace: dict[str, Any]) -> None:
        if broken:
            return
        try:
            state.append(trace)
        except OSError as err:  # a read-only working directory must not stop the evaluation
            broken.append(str(err))
            _err(f"warning: cannot write {state.path} ({err.strerror or err}): this run cannot be resumed")

    return save


def _run_cases(base_url: str, todo: Sequence[Any], done: dict[str, dict[str, Any]], key_for: Callable[[Any], str],
               state: Any, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    from .runner import CaseRun, KeyRejected, Progress, Unreachable, run_cases

    traces = dict(done)
    if not todo:
        return traces
    progress = Progress(len(todo) + len(done), done=len(done))
    opts = CaseRun(base_url, key_for, concurrency=args.concurrency, timeout_s=args.timeout, on_trace=_saver(state),
                   progress=progress)
    try:
        for trace in asyncio.run(run_cases(todo, opts)):
            traces[trace["case_id"]] = trace
    except Unreachable as err:
        raise _Stop(EXIT_UNREACHABLE, str(err)) from None
    except KeyRejected as err:
        raise _Stop(EXIT_USAGE, f"the runtime at {base_url} refused the key of {', '.join(err.users)} (401"
                                f"{': ' + str(err) if str(err) else ''}); check --key/--keys") from None
    return traces


def _check_reached(traces: dict[str, dict[str, Any]], suite: Any, target: str) -> None:
    ordered = [traces[c.id] for c in suite.cases]
    if all(t["status"] == "error" and (t.get("error") or {}).get("code") == "unreachable" for t in ordered):
        raise _Stop(EXIT_UNREACHABLE, f"no case reached the runtime at {target}: "
                                      f"{(ordered[0].get('error') or {}).get('message', '')}")


def _run_local(args: argparse.Namespace, plan: Any, suite: Any, todo: Sequence[Any], done: dict[str, dict[str, Any]],
               key_for: Callable[[Any], str], principals: dict[str, Any], state: Any
               ) -> tuple[list[dict[str, Any]], Any, Any, str]:
    """With -f: start the app, run the cases, stop it, then search its index directly (once the runtime released
    it) and score. A judge served by the app's own local engine must score while the engine runs: then the direct
    search reads a snapshot of the index (see _direct) and scoring happens before the stop."""
    from .target import AppDidNotStart, local_app

    judge = None
    needs_engine = (args.judge in ROLES and plan.engine is not None
                    and plan.runtime.models[args.judge].fleet in plan.engine.fleets)
    try:
        with local_app(plan, say=_err) as app:
            corpus = _corpus_from_dir(args.corpus) if args.corpus else app.corpus()
            if args.judge in ROLES:
                url, model = app.judge_endpoint(args.judge)
                judge = _judge_from_url(url, args.judge_model or model)
            elif args.judge:
                judge = _judge_from_url(args.judge, args.judge_model)
            traces = _run_cases(app.base_url, todo, done, key_for, state, args)
            _check_reached(traces, suite, app.base_url)
            if needs_engine:
                index = app.index()
                note = _direct(traces, suite, principals, *index) if index is not None else "the app has no index"
                return (_score(suite, traces, judge=judge, corpus=corpus, principals=principals, k=args.k,
                   baseline_answers=getattr(args, "baseline_answers", None)), judge,
                        corpus, note)
    except AppDidNotStart as err:
        raise _Stop(EXIT_UNREACHABLE, str(err)) from None
    index = app.index()
    note = _direct(traces, suite, principals, *index) if index is not None else "the app has no index"
    return _score(suite, traces, judge=judge, corpus=corpus, principals=principals, k=args.k,
                   baseline_answers=getattr(args, "baseline_answers", None)), judge, corpus, note


def _direct(traces: dict[str, dict[str, Any]], suite: Any, principals: dict[str, Any], uri: str, collection: str,
            embedder: str, mode: str | None, embedding_model: str | None = None) -> str:
    """Attach each case's direct search to its trace; a note for the report's meta. A milvus-lite index that a
    running runtime holds open is searched through a snapshot (the runtime only reads it)."""
    from ..retrieval.embedders import EmbedderError
    from ..retrieval.store import StoreError
    from . import retrieval
    from .target import attach_direct, is_held, snapshot_index

    if not principals:
        return "skipped: the cases' principals are unknown (single key)"
    with tempfile.TemporaryDirectory(prefix="agentfleet-eval-index-") as tmp:
        path, how = uri, ""
        if is_held(uri):
            path, how = str(snapshot_index(Path(uri), Path(tmp))), " (a snapshot: a running process holds it open)"
        try:
            with retrieval.open_search(path, collection, embedder=embedder, embedding_model=embedding_model,
                                       mode=mode, token=os.environ.get("MILVUS_TOKEN")) as search:
                n = attach_direct(list(traces.values()), suite, principals, search)
        except (retrieval.IndexMissing, StoreError, EmbedderError) as err:
            _err(f"warning: direct retrieval skipped: {err}")
            return f"skipped: {err}"
    return f"{n} case(s) searched directly in {uri}#{collection}{how} as their principal"


def _direct_from_index(args: argparse.Namespace, traces: dict[str, dict[str, Any]], suite: Any,
                       principals: dict[str, Any]) -> str:
    return _direct(traces, suite, principals, args.index, args.collection, args.embedder, args.mode,
                   args.embedding_model)


def _corpus_from_dir(path: str) -> Any:
    from .target import CorpusAccess

    if not Path(path).is_dir():
        raise _Usage(f"error: --corpus {path}: not a directory")
    return CorpusAccess.from_dir(Path(path))


def _score(suite: Any, traces: dict[str, dict[str, Any]], *, judge: Any, corpus: Any, principals: dict[str, Any],
           k: int, baseline_answers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Each case's result (scoring.score_case), in suite order, with the permissions and forbidden texts the
    corpus gives for its principal; with a judge and a baseline, the judge's pairwise verdict (both orders) of
    the baseline's answer (a) against this run's (b)."""
    from .judge import JudgeError
    from .scoring import score_case

    out = []
    for case in suite.cases:
        principal = principals.get(case.principal)
        permitted = corpus.permitted(principal) if corpus is not None and principal is not None else None
        texts = corpus.forbidden_texts(case.forbidden) if corpus is not None else None
        readable = corpus.readable(principal) if corpus is not None and principal is not None else None
        result = score_case(case, traces[case.id], judge=judge, permitted=permitted, forbidden_texts=texts,
                            readable=readable, k=k)
        before = (baseline_answers or {}).get(case.id)
        if judge is not None and before and result.get("answer"):
            try:
                result["pairwise"] = {"a": "baseline", "b": "current",
                                      **judge.pairwise(case.question, before, result["answer"])}
            except JudgeError as err:
                result["pairwise"] = {"a": "baseline", "b": "current", "error": str(err)}
        out.append(result)
    return out


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _print_summary(report: dict[str, Any]) -> None:
    wid = max((len(c["id"]) for c in report["cases"]), default=0)
    wp = max((len(c["principal"]) for c in report["cases"]), default=0)
    for c in report["cases"]:
        t, a, r = c["task"], c["answers"], c["retrieval"]
        cost = f"${t['cost_usd']:.4f}" if t.get("cost_usd") is not None else "-"
        line = (f"{c['id']:<{wid}} {c['principal']:<{wp}} {c['status']:<10} {'PASS' if c['passed'] else 'FAIL'} "
                f"correct {_fmt(a.get('correctness'))} faithful {_fmt(a.get('faithfulness'))} "
                f"nDCG@10 {_fmt(r.get('ndcg_at_10'))} steps {_fmt(t.get('steps'))} {cost} "
                f"{_fmt(t.get('latency_s'), 1)}s leaks {len(c['leaks'])}")
        if c["failures"]:
            line += f"  ({c['failures'][0]})"
        print(line)
    r, a, t, s = report["retrieval"], report["answers"], report["tasks"], report["security"]
    print(f"{t['cases']} cases: success {_fmt(t['success_rate'])} ({t['solved']} solved), "
          f"cost ${t['cost_usd_total']:.4f} (${_fmt(t['cost_per_solved_task_usd'], 4)} per solved task), "
          f"latency p50 {_fmt(t['latency_p50_s'], 1)}s p95 {_fmt(t['latency_p95_s'], 1)}s, errors {t['errors']}")
    print(f"retrieval: recall@10 {_fmt(r['recall_at_10'])}, nDCG@10 {_fmt(r['ndcg_at_10'])}, MRR {_fmt(r['mrr'])}"
          + (f"; direct nDCG@10 {_fmt(r['direct']['ndcg_at_10'])}" if r.get("direct") else ""))
    print(f"answers: correctness {_fmt(a['correctness'])}, faithfulness {_fmt(a['faithfulness'])} "
          f"({report['meta'].get('faithfulness_method', 'lexical')}), citation precision "
          f"{_fmt(a['citation_precision'])}, refusal accuracy {_fmt(a['refusal_accuracy'])}; leaks {s['leaks']}")


def _print_deltas(deltas: Sequence[dict[str, Any]], where: str) -> None:
    _err(f"against {where}:")
    for d in deltas:
        if d["delta"] is None:
            continue
        mark = "REGRESSION" if d["regression"] else ""
        _err(f"  {d['metric']:<32} {d['baseline']!s:>10} -> {d['current']!s:<10} {d['delta']:+.4f} {mark}".rstrip())
