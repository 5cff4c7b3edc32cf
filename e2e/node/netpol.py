"""NetworkPolicy enforcement for the real node: kube-router's network policy controller (iptables and ipset),
built from its Go module and run beside kube-proxy as a node process, with the flags of the project's own
firewall-only DaemonSet (daemonset/kube-router-firewall-daemonset.yaml: ``--run-router=false --run-firewall=true
--run-service-proxy=false``).

Why this one: kube-network-policies (sigs.k8s.io, what kind ships) was tried first and cannot run on this kernel:
it judges packets through nftables' native ``queue`` expression, which the kernel lacks ("add rule ... queue num 98":
No such file or directory; iptables' NFQUEUE target works). kube-router v2.1.0 is the one version the Go proxy
serves; the advisory reported for it (GHSA-phqm-jgc3-qf8g) is in its service proxy, which is not run here.

    binary()                    # built once per version
    start(node)                 # spawn it, wait until it has written its chains
    cleanup()                   # its iptables chains and ipsets, also after a crash
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
VERSION = "v2.1.0"
MODULE = "github.com/cloudnativelabs/kube-router/v2"
HEALTHZ = "127.0.0.1:20244"  # its default health port; kube-router binds it on all addresses
FIREWALL_ARGS = ["--run-router=false", "--run-firewall=true", "--run-service-proxy=false"]


def binary() -> Path:
    """The ``kube-router`` command (about 3 min on 2 cores, once)."""
    out = subprocess.run(["bash", str(HERE.parent / "go-build.sh"), "kube-router", VERSION,
                          f"{MODULE}/cmd/kube-router", "kube-router"], check=True, capture_output=True, text=True,
                         timeout=2400)
    return Path(out.stdout.split()[-1])


def missing() -> str | None:
    for tool in ("ipset", "iptables-save", "iptables-restore"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian packages ipset, iptables)"
    return None


def start(node, timeout: float = 90) -> None:
    """Run the controller for ``node`` (its kubeconfig, its node name) and wait until it answers /healthz and its
    filter chains exist."""
    why = missing()
    if why:
        raise RuntimeError(why)
    from e2e.node.node import NODE_NAME

    node._spawn("kube-router", [str(binary()), *FIREWALL_ARGS, "--kubeconfig", str(node.kubeconfig),
                                "--hostname-override", NODE_NAME, "--health-port", HEALTHZ.rsplit(":", 1)[1],
                                "--v", "1"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.procs["kube-router"].poll() is not None:
            break
        if _healthy() and "KUBE-ROUTER-FORWARD" in _chains():
            return
        time.sleep(1)
    raise TimeoutError(f"kube-router's network policy controller not up after {timeout:.0f}s:\n"
                       + "\n".join(node.log("kube-router").read_text(errors="replace").splitlines()[-30:]))


def _healthy() -> bool:
    try:
        return urllib.request.urlopen(f"http://{HEALTHZ}/healthz", timeout=2).status == 200
    except OSError:
        return False


def _chains() -> str:
    return subprocess.run(["iptables", "-w", "-S"], capture_output=True, text=True).stdout


def cleanup() -> None:
    """Its chains go with the node's KUBE-* chains (node._drop_kube_chains); this removes its ipsets after."""
    if shutil.which("ipset") is None:
        return
    names = subprocess.run(["ipset", "list", "-n"], capture_output=True, text=True).stdout.split()
    for name in names:
        if name.startswith(("KUBE-", "kube-router", "inet6:KUBE-")):
            subprocess.run(["ipset", "destroy", name], capture_output=True)
