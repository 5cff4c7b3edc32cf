"""`agentfleet up`: argparse wiring over plan.plan_up and up.run_up."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    u = sub.add_parser("up", help="run an AgentApp YAML on this machine: vLLM on CPU, milvus-lite, the runtime")
    u.add_argument("-f", "--file", required=True, help="YAML with the AgentApp and everything it references")
    u.add_argument("--app", help="the AgentApp to run when the file has several")
    u.add_argument("--run-dir", help="logs, keys, index and state (default: .agentfleet/<app>)")
    u.add_argument("--port", type=int, default=8080, help="the runtime's port on 127.0.0.1")
    u.add_argument("--engine-port", type=int, default=8001, help="the local vLLM engine's port on 127.0.0.1")
    u.set_defaults(func=_cmd_up)


def _cmd_up(args: argparse.Namespace) -> int:
    import yaml

    from ..errors import SpecError
    from .plan import plan_up
    from .up import run_up

    try:
        with open(args.file) as fh:
            docs = [d for d in yaml.safe_load_all(fh) if d is not None]
    except (OSError, yaml.YAMLError) as err:
        print(f"{args.file}: cannot read: {err}", file=sys.stderr)
        return 1
    try:
        env = dict(os.environ)  # an a2a sub-agent's key may come from AGENTFLEET_A2A_KEY_<SUB_AGENT>
        probe = plan_up(docs, run_dir=Path("."), app_name=args.app, env=env)
        run_dir = Path(args.run_dir) if args.run_dir else Path(".agentfleet") / probe.app.name
        plan = plan_up(docs, run_dir=run_dir.resolve(), app_name=args.app, engine_port=args.engine_port,
                       runtime_port=args.port, env=env)
    except SpecError as err:
        for problem in err.problems:
            print(f"{args.file}: {err.ref}: {problem}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"==> agentfleet up: {plan.app.ref()} from {args.file}")
    return run_up(plan, stop=stop)
