"""python -m e2e.cluster up|down|kubeconfig|status|env|build [--name NAME]"""

from __future__ import annotations

import argparse
import json
import shlex
import sys

from . import launcher


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e2e.cluster", description=__doc__)
    p.add_argument("command", choices=["up", "down", "kubeconfig", "status", "env", "build"])
    p.add_argument("--name", default=launcher.DEFAULT_NAME, help="cluster name (%(default)s)")
    p.add_argument("--timeout", type=float, default=120, help="up: readiness deadline, seconds")
    p.add_argument("--recreate", action="store_true", help="up: delete a running one first")
    p.add_argument("--no-fake-node", action="store_true", help="up: do not create the GPU node")
    p.add_argument("--fake-node-taint", action="store_true",
                   help="up: give the GPU node kwok's NoSchedule taint (workloads must tolerate it)")
    a = p.parse_args(argv)

    try:
        if a.command == "build":
            print(launcher.ensure_built())
        elif a.command == "up":
            c = launcher.up(a.name, timeout=a.timeout, reuse=not a.recreate,
                            fake_node=not a.no_fake_node, fake_node_taint=a.fake_node_taint)
            print(c.kubeconfig)
            print(f"# eval \"$(python -m e2e.cluster env --name {a.name})\"  # KUBECONFIG and PATH",
                  file=sys.stderr)
        elif a.command == "down":
            launcher.down(a.name)
        elif a.command == "kubeconfig":
            path = launcher.kubeconfig_path(a.name)
            if not path.is_file():
                print(f"cluster {a.name!r} does not exist", file=sys.stderr)
                return 1
            print(path)
        elif a.command == "env":
            print(f"export KUBECONFIG={shlex.quote(str(launcher.kubeconfig_path(a.name)))}")
            print(f"export PATH={shlex.quote(str(launcher.bin_dir()))}:\"$PATH\"")
        elif a.command == "status":
            info = launcher.status(a.name)
            print(json.dumps(info, indent=2))
            return 0 if info["ready"] else 3
    except launcher.ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
