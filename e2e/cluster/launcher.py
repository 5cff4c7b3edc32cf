"""Launch a real Kubernetes control plane (kwokctl, binary runtime) for e2e tests.

Everything heavy lives outside the repository, under ``$AGENTFLEET_CACHE`` (default
``~/.cache/agentfleet``):

* ``k8s/<version>/bin/``  the binaries built by ``e2e/cluster/build.sh`` (once per version)
* ``go/``                 Go's module and build caches used by that build
* ``kwok/``               ``KWOK_WORKDIR``: one directory per running cluster (``clusters/<name>/``)

Public API::

    from e2e.cluster import launcher
    launcher.ensure_built()              # build (minutes, once) or no-op; returns the bin dir
    c = launcher.up("my-cluster")        # -> Cluster; c.kubeconfig, c.kubectl(...), c.env()
    launcher.down("my-cluster")
    launcher.kubectl_path()              # the built v1.35.x kubectl, not the system one

Only 127.0.0.1 is bound (except the API server of a cluster started with ``pod_address``, for the real-pod tier).
Authorization is Node,RBAC (kwokctl's default with the secure port).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Mapping, Sequence

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.sh"
DEFAULT_NAME = "agentfleet-e2e"
FAKE_NODE_NAME = "kwok-node-0"
FAKE_NODE_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}

BINARIES = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "etcd",
    "kwok",
    "kwokctl",
)
# binary -> (stamp file, version key in build.sh)
_STAMPS = {
    "kube-apiserver": ("kube-apiserver", "K8S_VERSION"),
    "kube-controller-manager": ("kube-controller-manager", "K8S_VERSION"),
    "kube-scheduler": ("kube-scheduler", "K8S_VERSION"),
    "kubectl": ("kubectl", "K8S_VERSION"),
    "etcd": ("etcd", "ETCD_VERSION"),
    "kwok": ("kwok", "KWOK_VERSION"),
    "kwokctl": ("kwok", "KWOK_VERSION"),
}


class ClusterError(RuntimeError):
    """The cluster could not be built, started or reached."""


def _log(msg: str) -> None:
    print(f"[e2e.cluster] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- versions and paths


def versions() -> dict[str, str]:
    """The pinned versions, read from the top of build.sh (the one place they are written)."""
    text = BUILD_SCRIPT.read_text()
    found = dict(re.findall(r"^([A-Z0-9_]+_VERSION)=(v[0-9][^\s#]*)", text, re.M))
    for key in ("K8S_VERSION", "ETCD_VERSION", "KWOK_VERSION"):
        if key not in found:
            raise ClusterError(f"{key} not found in {BUILD_SCRIPT}")
    return found


def cache_root() -> Path:
    env = os.environ.get("AGENTFLEET_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "agentfleet"


def bin_dir() -> Path:
    return cache_root() / "k8s" / versions()["K8S_VERSION"] / "bin"


def binary_path(name: str) -> Path:
    if name not in BINARIES:
        raise KeyError(name)
    return bin_dir() / name


def kubectl_path() -> Path:
    """The kubectl built from k8s.io/kubernetes (matching the API server), not Debian's."""
    return binary_path("kubectl")


def kwok_workdir() -> Path:
    """KWOK_WORKDIR: outside the repository (override with AGENTFLEET_KWOK_WORKDIR)."""
    env = os.environ.get("AGENTFLEET_KWOK_WORKDIR")
    return Path(env).expanduser() if env else cache_root() / "kwok"


def cluster_dir(name: str = DEFAULT_NAME) -> Path:
    return kwok_workdir() / "clusters" / name


def kubeconfig_path(name: str = DEFAULT_NAME) -> Path:
    return cluster_dir(name) / "kubeconfig.yaml"


# --------------------------------------------------------------------------- build


def is_built() -> bool:
    vers = versions()
    bdir = bin_dir()
    for name in BINARIES:
        stamp, key = _STAMPS[name]
        exe = bdir / name
        stamp_file = bdir / f".stamp-{stamp}"
        if not (exe.is_file() and os.access(exe, os.X_OK) and stamp_file.is_file()):
            return False
        if stamp_file.read_text().strip() != vers[key]:
            return False
    return True


def can_build() -> bool:
    """True when the binaries exist or Go is available to build them."""
    return is_built() or shutil.which("go") is not None


def ensure_built(quiet: bool = False) -> Path:
    """Build the binaries with build.sh unless already built; return the bin dir.

    A cold build takes ~15-20 minutes on 2 vCPUs (progress goes to stderr); afterwards this is a
    few stat() calls.
    """
    if is_built():
        return bin_dir()
    if shutil.which("go") is None:
        raise ClusterError("Go is not installed: cannot build the Kubernetes binaries")
    _log(f"building Kubernetes binaries into {bin_dir()} (cold: ~15-20 min)")
    t0 = time.monotonic()
    out = subprocess.DEVNULL if quiet else None
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=out, stderr=out if quiet else None)
    if proc.returncode != 0 or not is_built():
        raise ClusterError(f"{BUILD_SCRIPT} failed (rc={proc.returncode})")
    _log(f"build finished in {time.monotonic() - t0:.0f}s")
    return bin_dir()


# --------------------------------------------------------------------------- cluster


@dataclasses.dataclass
class Cluster:
    name: str
    kubeconfig: Path
    bin_dir: Path
    workdir: Path
    created: bool = True  # False when up() found it already running and reused it

    @property
    def kubectl_path(self) -> Path:
        return self.bin_dir / "kubectl"

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment with KUBECONFIG set and the built binaries first on PATH."""
        env = dict(os.environ if base is None else base)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl against this cluster; returns text output."""
        return _kubectl(self.kubeconfig, list(args), input=input, check=check, timeout=timeout)

    def kubectl_json(self, *args: str, timeout: float = 60) -> dict:
        return json.loads(self.kubectl(*args, "-o", "json", timeout=timeout).stdout)

    def apply(self, manifest: str | dict | list, namespace: str | None = None) -> str:
        """kubectl apply -f - with YAML/JSON text or a dict (or list of dicts)."""
        if isinstance(manifest, list):
            manifest = {"apiVersion": "v1", "kind": "List", "items": manifest}
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        args = ["apply", "-f", "-"] + (["-n", namespace] if namespace else [])
        return self.kubectl(*args, input=text).stdout

    def ready(self) -> bool:
        return _readyz(self.kubeconfig)

    def add_fake_node(self, name: str = FAKE_NODE_NAME, **kwargs) -> str:
        return add_fake_node(self, name, **kwargs)


def _kubectl(
    kubeconfig: Path,
    args: Sequence[str],
    input: str | None = None,
    check: bool = True,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    cmd = [str(kubectl_path()), "--kubeconfig", str(kubeconfig), *args]
    proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise ClusterError(
            f"kubectl {' '.join(args)} failed (rc={proc.returncode}):\n{proc.stderr.strip()}"
        )
    return proc


def _readyz(kubeconfig: Path) -> bool:
    if not kubeconfig.is_file():
        return False
    try:
        proc = _kubectl(
            kubeconfig, ["get", "--raw", "/readyz", "--request-timeout=5s"], check=False, timeout=15
        )
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0 and proc.stdout.strip() == "ok"


def _kwok_env() -> dict[str, str]:
    # kwokctl reads KWOK_* variables as overrides of the config file: drop any stray ones.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KWOK_")}
    env["KWOK_WORKDIR"] = str(kwok_workdir())
    # kwokctl adds each cluster's context to $KUBECONFIG (default ~/.kube/config) and leaves it there after the
    # cluster is gone: a later run's client that falls back to the default file then talks to a dead cluster.
    # Every cluster has its own kubeconfig in its directory; kwokctl's merged copy goes to a scratch file.
    env["KUBECONFIG"] = str(kwok_workdir() / "kwokctl-merged.kubeconfig")
    env["PATH"] = f"{bin_dir()}{os.pathsep}{env.get('PATH', '')}"
    return env


def _kwokctl(args: Sequence[str], log_file: Path | None = None, timeout: float = 300) -> int:
    cmd = [str(binary_path("kwokctl")), *args]
    if log_file is None:
        return subprocess.run(
            cmd, env=_kwok_env(), stdin=subprocess.DEVNULL, timeout=timeout,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ).returncode
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as fh:
        # A file, not a pipe: the components kwokctl forks must not hold our pipe open. A new
        # session: Ctrl-C in the caller's terminal must not kill the cluster's processes.
        return subprocess.run(
            cmd, env=_kwok_env(), stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
            timeout=timeout, start_new_session=True,
        ).returncode


def kwokctl_config(name: str = DEFAULT_NAME, *, pod_address: str | None = None) -> str:
    """The KwokctlConfiguration used by up(): binary runtime, local binaries only, 127.0.0.1.

    With ``pod_address`` (this machine's own non-loopback address) the API server alone also listens there and
    advertises it, with that address and the first Service IP (10.0.0.1, the ``kubernetes`` Service) in its
    certificate: what real pods on a real node need to reach it through the ``kubernetes`` Service (the real-pod
    tier, e2e/node); it reaches the kubelet by the node's InternalIP with kwokctl's admin certificate. Every other
    component stays on 127.0.0.1, and no kwok controller runs (the node is real).
    """
    vers = versions()
    b = bin_dir()
    q = json.dumps  # JSON strings are valid YAML scalars
    extra = ""
    if pod_address:
        pki = cluster_dir(name) / "pki"  # kwokctl's own: the admin cert also authenticates to the kubelet
        # No kwok controller: it would manage the real node's pods too (it does manage all nodes here), deleting
        # terminating pods at once and writing their status.
        extra = f"""\
  disable: ["kwok-controller"]
  kubeApiserverCertSANs: [{q(pod_address)}, "10.0.0.1"]
componentsPatches:
- name: kube-apiserver
  extraArgs:
  - key: bind-address
    value: "0.0.0.0"
  - key: kubelet-preferred-address-types
    value: "InternalIP"
  - key: kubelet-client-certificate
    value: {q(str(pki / "admin.crt"))}
  - key: kubelet-client-key
    value: {q(str(pki / "admin.key"))}
  - key: advertise-address
    value: {q(pod_address)}
"""
    return f"""\
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  runtime: binary
  kubeVersion: {q(vers["K8S_VERSION"])}
  bindAddress: 127.0.0.1
  securePort: true
  kubeAuthorization: true
  kubeAdmission: true
  quietPull: true
  kubeApiserverBinary: {q(str(b / "kube-apiserver"))}
  kubeControllerManagerBinary: {q(str(b / "kube-controller-manager"))}
  kubeSchedulerBinary: {q(str(b / "kube-scheduler"))}
  kubectlBinary: {q(str(b / "kubectl"))}
  etcdBinary: {q(str(b / "etcd"))}
  kwokControllerBinary: {q(str(b / "kwok"))}
{extra}"""


def _log_dir() -> Path:
    return kwok_workdir() / "logs"


def cluster_logs(name: str = DEFAULT_NAME, lines: int = 40) -> str:
    """The tail of every component log of the cluster, plus kwokctl's own output."""
    parts = []
    files = sorted((cluster_dir(name) / "logs").glob("*.log"))
    files.append(_log_dir() / f"{name}.kwokctl.log")
    for f in files:
        if not f.is_file():
            continue
        tail = f.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"----- {f} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "\n".join(parts) or f"(no logs under {cluster_dir(name)})"


def _wait(what: str, pred, deadline: float, interval: float = 0.5) -> bool:
    while True:
        try:
            if pred():
                return True
        except (ClusterError, subprocess.TimeoutExpired):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def exists(name: str = DEFAULT_NAME) -> bool:
    return (cluster_dir(name) / "kwok.yaml").is_file() or kubeconfig_path(name).is_file()


def _cluster(name: str, created: bool) -> Cluster:
    return Cluster(
        name=name,
        kubeconfig=kubeconfig_path(name),
        bin_dir=bin_dir(),
        workdir=cluster_dir(name),
        created=created,
    )


def up(
    name: str = DEFAULT_NAME,
    *,
    timeout: float = 120,
    reuse: bool = True,
    fake_node: bool = True,
    fake_node_taint: bool = False,
    pod_address: str | None = None,
) -> Cluster:
    """Create (or reuse) a cluster and return it once it is usable.

    Builds the binaries first if needed. Gates on ``/readyz`` and on the ``default``
    ServiceAccount, then creates the fake GPU node (``FAKE_NODE_NAME``, untainted unless
    ``fake_node_taint``) unless ``fake_node`` is False. With ``reuse`` a healthy cluster of that
    name is returned as is (``created=False``);
    otherwise, or when it is unhealthy, it is deleted and created afresh.
    """
    ensure_built()
    if exists(name):
        if reuse and _readyz(kubeconfig_path(name)):
            _log(f"reusing running cluster {name!r}")
            cluster = _cluster(name, created=False)
            if fake_node:
                add_fake_node(cluster, taint=fake_node_taint)
            return cluster
        _log(f"cluster {name!r} exists but is not healthy (or reuse=False): recreating")
        down(name)

    t0 = time.monotonic()
    cfg = kwok_workdir() / "configs" / f"{name}.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(kwokctl_config(name, pod_address=pod_address))
    log_file = _log_dir() / f"{name}.kwokctl.log"
    log_file.unlink(missing_ok=True)
    _log(f"creating cluster {name!r} (KWOK_WORKDIR={kwok_workdir()})")
    rc = _kwokctl(
        ["create", "cluster", "--name", name, "--config", str(cfg), "--timeout", f"{int(timeout)}s"],
        log_file=log_file,
        timeout=timeout + 60,
    )
    cluster = _cluster(name, created=True)
    deadline = time.monotonic() + timeout

    def fail(why: str) -> ClusterError:
        logs = cluster_logs(name)  # part of the exception message (pytest and the CLI show it)
        with contextlib.suppress(Exception):
            down(name)
        return ClusterError(f"cluster {name!r}: {why}\n{logs}")

    if rc != 0:
        raise fail(f"kwokctl create cluster exited {rc}")
    # kwokctl exits 0 even when the API server never came up: gate on /readyz ourselves.
    if not _wait("readyz", lambda: _readyz(cluster.kubeconfig), deadline):
        raise fail(f"/readyz not ok within {timeout:.0f}s")
    t_ready = time.monotonic() - t0
    if not _wait(
        "default sa",
        lambda: _kubectl(cluster.kubeconfig, ["get", "serviceaccount", "default", "-n", "default"],
                         check=False).returncode == 0,
        deadline,
    ):
        raise fail(f"ServiceAccount default/default missing after {timeout:.0f}s")
    if fake_node:
        try:
            add_fake_node(cluster, deadline=deadline, taint=fake_node_taint)
        except ClusterError as e:
            raise fail(str(e)) from e
    _log(f"cluster {name!r} up: readyz after {t_ready:.1f}s, usable after "
         f"{time.monotonic() - t0:.1f}s; KUBECONFIG={cluster.kubeconfig}")
    return cluster


def fake_node_manifest(
    name: str = FAKE_NODE_NAME,
    *,
    cpu: str = "32",
    memory: str = "256Gi",
    pods: str = "110",
    gpus: str | int = "8",
    labels: Mapping[str, str] | None = None,
    taint: bool = False,
) -> dict:
    """A kwok fake Node. Untainted by default, so that workloads schedule on it without tolerating kwok;
    ``taint=True`` adds kwok's usual ``kwok.x-k8s.io/node=fake:NoSchedule``."""
    resources = {"cpu": cpu, "memory": memory, "pods": pods, "nvidia.com/gpu": str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/role": "agent",
                "node-role.kubernetes.io/agent": "",
                **(labels or {}),
            },
        },
        "spec": {"taints": [FAKE_NODE_TAINT] if taint else []},
        "status": {"allocatable": dict(resources), "capacity": dict(resources)},
    }


def add_fake_node(
    cluster: Cluster,
    name: str = FAKE_NODE_NAME,
    *,
    deadline: float | None = None,
    **kwargs,
) -> str:
    """Create a kwok-managed fake Node (8 GPUs by default) and wait until it is Ready."""
    cluster.apply(fake_node_manifest(name, **kwargs))
    deadline = deadline if deadline is not None else time.monotonic() + 60

    def node_ready() -> bool:
        node = cluster.kubectl_json("get", "node", name)
        conds = node.get("status", {}).get("conditions") or []
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)

    if not _wait(f"node {name}", node_ready, deadline):
        raise ClusterError(f"fake node {name} not Ready in time")
    return name


def down(name: str = DEFAULT_NAME) -> None:
    """Delete the cluster (stops its processes, removes its directory). No-op if absent."""
    if not exists(name) and not cluster_dir(name).exists():
        return
    if binary_path("kwokctl").is_file():
        _kwokctl(["delete", "cluster", "--name", name],
                 log_file=_log_dir() / f"{name}.kwokctl.log", timeout=120)
    shutil.rmtree(cluster_dir(name), ignore_errors=True)
    _log(f"cluster {name!r} deleted")


def status(name: str = DEFAULT_NAME) -> dict:
    """A JSON-able summary: versions, whether built, whether the cluster exists and is ready."""
    built = is_built()
    info = {
        "versions": versions(),
        "bin_dir": str(bin_dir()),
        "built": built,
        "kwok_workdir": str(kwok_workdir()),
        "name": name,
        "exists": exists(name),
        "kubeconfig": str(kubeconfig_path(name)),
        "ready": built and _readyz(kubeconfig_path(name)),
    }
    if info["ready"]:
        proc = _kubectl(kubeconfig_path(name), ["get", "nodes", "-o", "name"], check=False)
        info["nodes"] = proc.stdout.split()
    return info


@contextlib.contextmanager
def running_cluster(
    name: str = DEFAULT_NAME, *, keep: bool | None = None, **up_kwargs
) -> Iterator[Cluster]:
    """Context manager / fixture helper: up() on entry, down() on exit.

    A cluster that was already running (``created=False``) is left running, and so is every
    cluster when ``keep`` is true (default: env ``AGENTFLEET_E2E_KEEP=1``). Use in a
    session-scoped pytest fixture::

        @pytest.fixture(scope="session")
        def k8s_cluster():
            with launcher.running_cluster("agentfleet-e2e") as c:
                yield c
    """
    if keep is None:
        keep = os.environ.get("AGENTFLEET_E2E_KEEP", "") not in ("", "0", "false")
    c = up(name, **up_kwargs)
    try:
        yield c
    finally:
        if c.created and not keep:
            down(name)
