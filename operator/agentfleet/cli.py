"""`agentfleet`: the command line. Each subcommand is a thin shell over a library call."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from . import __version__
from .bench import autoscale as bench_autoscale
from .bench import budget as bench_budget
from .bench import chaos as bench_chaos
from .bench import httpclient as bench_httpclient
from .bench import routing as bench_routing
from .bench import runtime as bench_runtime
from .evaluation import bench as bench_eval
from .evaluation import cli as evaluation_cli
from .local import cli as local_cli
from .retrieval import cli as retrieval_cli
from .router import command as router_command
from .runtime import cli as runtime_cli

__all__ = ["main", "load_documents"]


def load_documents(path: str) -> list[Any]:
    """Every YAML document in a file ('-' for stdin), empty ones dropped."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return [d for d in yaml.safe_load_all(text) if d is not None]


def _cmd_crds(args: argparse.Namespace) -> int:
    from . import crdgen

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, crd in crdgen.all_crds().items():
        (out / name).write_text(crdgen.dump(crd))
        print(out / name)
    return 0


def _label(path: str, index: int, doc: Any) -> str:
    from .api import describe

    return f"{path}: document {index + 1} ({describe(doc) if isinstance(doc, dict) else type(doc).__name__})"


def _cmd_validate(args: argparse.Namespace) -> int:
    from .api import parse
    from .errors import SpecError

    bad = checked = 0
    parsed: list[tuple[str, int, dict[str, Any], Any]] = []
    for path in args.file:
        try:
            docs = load_documents(path)
        except (OSError, yaml.YAMLError) as err:
            print(f"{path}: cannot read: {err}")
            bad += 1
            continue
        for i, doc in enumerate(docs):
            if not isinstance(doc, dict) or not str(doc.get("apiVersion", "")).startswith("agentfleet.io/"):
                continue
            checked += 1
            try:
                parsed.append((path, i, doc, parse(doc)))
            except SpecError as err:
                bad += 1
                for problem in err.problems:
                    print(f"{_label(path, i, doc)}: {problem}")
    bad += _cross_check(parsed)
    if bad:
        return 1
    print(f"{checked} agentfleet document(s) valid")
    return 0


def _cross_check(parsed: list[tuple[str, int, dict[str, Any], Any]]) -> int:
    """What only the documents together tell: a Budget price row that matches no fleet of the AgentApps (in these
    files) that reference the Budget is an error; a fleet they use with no price at all, or with no fair queue for
    a Budget that degrades by priority, is a warning. Returns
    the number of documents in error."""
    from .api import AgentApp, Budget, ModelFleet
    from .render import price_problems
    from .status import unqueued_fleets

    objs = [o for *_, o in parsed]
    bad = 0
    for path, i, doc, obj in parsed:
        if not isinstance(obj, Budget):
            continue
        apps = [o for o in objs if isinstance(o, AgentApp) and o.namespace == obj.namespace]
        fleets = {o.name: o for o in objs if isinstance(o, ModelFleet) and o.namespace == obj.namespace}
        problems = price_problems(obj, apps=apps, fleets=fleets)
        for p in problems:
            print(f"{_label(path, i, doc)}: {'' if p.is_error else 'warning: '}{p.path}: {p.message}")
        bad += any(p.is_error for p in problems)
        if unqueued := unqueued_fleets(obj, apps, fleets):
            print(f"{_label(path, i, doc)}: warning: spec.degradeBy: {unqueued}")
    return bad


def _cmd_render(args: argparse.Namespace) -> int:
    from . import render
    from .api import parse
    from .errors import AgentfleetError

    docs = load_documents(args.file)
    objs = []
    try:
        for doc in docs:
            if isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith("agentfleet.io/"):
                objs.append(parse(doc))
        related = {(o.kind, o.name): o for o in objs}
        out = []
        for obj in objs:
            out.extend(render.render(obj, related=related, defaults=render.Defaults()))
    except AgentfleetError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    sys.stdout.write(yaml.safe_dump_all(out, sort_keys=False, width=120))
    return 0


def _cmd_operator(args: argparse.Namespace) -> int:
    from .control import run
    from .render import Defaults

    defaults = Defaults(**{k: v for k, v in {"agentfleet_image": args.image, "vllm_image": args.vllm_image,
                                             "prometheus_url": args.prometheus_url}.items() if v})
    run(namespaces=args.namespace or (), standalone=args.standalone, liveness=args.liveness, defaults=defaults,
        verbose=args.verbose, log_format=args.log_format)
    return 0


_PLUGGED: list = [retrieval_cli, router_command, local_cli, runtime_cli, evaluation_cli]
"""Modules with `add_parsers(sub)`: top-level commands owned by other rooms (ingest, search, router, ...)."""
_BENCH_PLUGGED: list = [retrieval_cli, bench_routing, bench_httpclient, bench_autoscale, bench_runtime, bench_chaos,
                      bench_budget, bench_eval]
"""Modules with `add_bench_parsers(bench_sub)`: `agentfleet bench <name>` benchmarks (see bench/)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agentfleet", description=__doc__)
    p.add_argument("--version", action="version", version=f"agentfleet {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("crds", help="write the CustomResourceDefinitions generated from the API models")
    c.add_argument("--out", required=True, help="directory to write one YAML file per kind into")
    c.set_defaults(func=_cmd_crds)

    v = sub.add_parser("validate", help="check agentfleet documents against the API models")
    v.add_argument("-f", "--file", action="append", required=True, help="YAML file ('-' for stdin); repeatable")
    v.set_defaults(func=_cmd_validate)

    r = sub.add_parser("render", help="print the child manifests the operator would apply")
    r.add_argument("-f", "--file", required=True, help="YAML file with agentfleet resources ('-' for stdin)")
    r.set_defaults(func=_cmd_render)

    o = sub.add_parser("operator", help="run the operator (kopf) against the current kubeconfig or in-cluster")
    scope = o.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", help="watch only this namespace; repeatable")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (default)")
    o.add_argument("--standalone", action=argparse.BooleanOptionalAction, default=True,
                   help="run without kopf peering (one operator replica)")
    o.add_argument("--liveness", help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz")
    o.add_argument("--image", help="agentfleet image for routers, ingestion Jobs and runtimes")
    o.add_argument("--vllm-image", help="default vLLM image for ModelFleets")
    o.add_argument("--prometheus-url", help="Prometheus the autoscaler reads")
    o.add_argument("--log-format", choices=["full", "plain", "json"], default="full",
                   help="json: one structured event per line")
    o.add_argument("-v", "--verbose", action="store_true")
    o.set_defaults(func=_cmd_operator)

    # Commands owned by other rooms register themselves here (each module exposes add_parsers(sub)).
    for module in _PLUGGED:
        module.add_parsers(sub)
    if _BENCH_PLUGGED:
        b = sub.add_parser("bench", help="benchmarks that print a ratio against a baseline measured in the same run")
        bench_sub = b.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
        for module in _BENCH_PLUGGED:
            module.add_bench_parsers(bench_sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
