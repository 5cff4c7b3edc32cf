"""A real Kubernetes node on this machine, joined to an e2e control plane: containerd and runc (Debian's packages),
a CNI bridge (Debian's containernetworking-plugins), kubelet and kube-proxy built from the same k8s.io/kubernetes
module as the control plane (e2e/node/build.sh), and CoreDNS (built from its Go module) running as pods behind the
``kube-dns`` Service, as on any cluster.

What these machines need, and why (measured; facts.md):

* kubelet refuses cgroup v1 hosts unless ``failCgroupV1: false`` (this kernel mounts v1 controllers plus a cgroup2
  ``unified`` tree);
* runc cannot raise ``oom_score_adj`` below the host's (CAP_SYS_RESOURCE is not in the bounding set): containerd's
  ``restrict_oom_score_adj = true`` clamps it, or every sandbox fails with "can't get final child's PID from pipe";
* images come from local archives (``ctr images import``): nothing can be pulled here, so every container uses
  ``imagePullPolicy: IfNotPresent`` with a tag that is already imported;
* the API server must be reachable from pods: the control plane is started with ``pod_address`` (launcher.up), so
  the ``kubernetes`` Service (10.0.0.1) leads to this machine's own address, which its certificate names.

Traffic stays on this machine: pods live in network namespaces made here, on a bridge with no masquerading to the
outside, and CoreDNS answers only ``cluster.local`` (no upstream is configured).

    n = Node.start(kubeconfig=..., kubectl=..., archives=[...])   # Ready node, kube-proxy, CoreDNS
    ...
    n.stop()                                            # pods, containers, shims, iptables rules, bridge: all gone
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("AGENTFLEET_CACHE", Path.home() / ".cache" / "agentfleet"))
NODE_NAME = "agentfleet-node-0"
POD_CIDR = "10.244.0.0/24"
BRIDGE = "afnode0"
# Where CNI pins pod network namespaces (containerd 1.6: /var/run/netns, through the /var/run -> /run link).
NETNS = Path("/run/netns")
DNS_IP = "10.0.0.10"
PAUSE_IMAGE = "localhost/pause:local"
COREDNS_IMAGE = "localhost/coredns:local"
# Ports away from a real kubelet's defaults, on loopback where nothing else needs them.
KUBELET_PORT = 10350
KUBELET_HEALTHZ = 10348
PROXY_HEALTHZ = "127.0.0.1:10356"
PROXY_METRICS = "127.0.0.1:10349"


class NodeError(RuntimeError):
    pass


def host_address() -> str:
    """This machine's own non-loopback IPv4 address (no packet is sent: this only reads the route's source)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))
        return s.getsockname()[0]


# Debian package -> a file it installs (e2e/apt-install.sh installs what is missing, without starting services)
PACKAGES = {"containerd": "containerd", "runc": "runc", "containernetworking-plugins": "/usr/lib/cni/bridge",
            "iptables": "iptables", "busybox-static": "/bin/busybox", "ipset": "/usr/sbin/ipset"}


def ensure_packages() -> str | None:
    """Install the node's Debian packages where missing; None when all are there, else why not."""
    if os.geteuid() != 0:
        return "a real node needs root (containerd, runc, CNI and kubelet manage namespaces and cgroups)"
    for pkg, probe in PACKAGES.items():
        p = subprocess.run(["bash", str(HERE.parent / "apt-install.sh"), pkg, probe], capture_output=True,
                           text=True, timeout=900)
        if p.returncode != 0:
            return f"Debian package {pkg} could not be installed: {p.stderr.strip()[-300:]}"
    return missing()


def missing() -> str | None:
    """Why a real node cannot start here, or None."""
    if os.geteuid() != 0:
        return "a real node needs root (containerd, runc, CNI and kubelet manage namespaces and cgroups)"
    for tool, pkg in (("containerd", "containerd"), ("runc", "runc"), ("ctr", "containerd"),
                      ("iptables", "iptables")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {pkg})"
    if not Path("/usr/lib/cni/bridge").exists():
        return "the CNI plugins are not installed (Debian package containernetworking-plugins)"
    return None


def binaries() -> tuple[Path, Path, Path]:
    """(kubelet, kube-proxy, coredns), built once (e2e/node/build.sh)."""
    out = subprocess.run(["bash", str(HERE / "build.sh")], check=True, capture_output=True, text=True,
                         timeout=1800)
    kubelet, proxy, coredns = (Path(p) for p in out.stdout.split()[-3:])
    return kubelet, proxy, coredns


def _wait(what: str, pred, timeout: float, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if pred():
                return
        time.sleep(interval)
    raise NodeError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class Node:
    kubeconfig: Path
    kubectl: Path
    work: Path
    address: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    # -- paths -----------------------------------------------------------------------------------------------
    @property
    def sock(self) -> Path:
        return self.work / "run" / "containerd.sock"

    def log(self, name: str) -> Path:
        return self.work / "logs" / f"{name}.log"

    def ctr(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(["ctr", "-a", str(self.sock), "-n", "k8s.io", *args], capture_output=True,
                              text=True, timeout=timeout)

    def kc(self, *args: str, input: str | None = None, check: bool = True,
           timeout: float = 60) -> subprocess.CompletedProcess:
        p = subprocess.run([str(self.kubectl), "--kubeconfig", str(self.kubeconfig), *args], input=input,
                           capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise NodeError(f"kubectl {' '.join(args)}: {p.stderr.strip()}")
        return p

    def tail(self, lines: int = 30) -> str:
        out = []
        for name in ("containerd", "kubelet", "kube-proxy"):
            f = self.log(name)
            if f.is_file():
                out.append(f"--- {name} ---\n" + "\n".join(f.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    # -- start -----------------------------------------------------------------------------------------------
    @classmethod
    def start(cls, *, kubeconfig: Path, kubectl: Path, archives: list[Path], work: Path | None = None,
              extended: dict[str, str] | None = None, timeout: float = 180) -> "Node":
        why = missing()
        if why:
            raise NodeError(why)
        kubelet, proxy, coredns = binaries()
        work = work or Path("/run/agentfleet-node")
        node = cls(kubeconfig=kubeconfig, kubectl=kubectl, work=work, address=host_address())
        node._clean_leftovers()
        for d in ("run", "logs", "cni", "kubelet", "state"):
            (work / d).mkdir(parents=True, exist_ok=True)
        try:
            node._start_containerd()
            from e2e.node import images

            node._import([images.pause(PAUSE_IMAGE), images.single_binary(COREDNS_IMAGE, coredns, "/coredns"),
                          *archives])
            node._start_kubelet(kubelet, timeout)
            if extended:
                node._advertise(extended)
            node._start_proxy(proxy)
            node._start_dns(timeout)
        except BaseException as e:
            tail = node.tail()
            node.stop()
            if isinstance(e, NodeError):
                raise NodeError(f"{e}\n{tail}") from e
            raise
        return node

    def _spawn(self, name: str, cmd: list[str]) -> None:
        fh = open(self.log(name), "ab")
        self.procs[name] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def _start_containerd(self) -> None:
        root = CACHE / "node" / "containerd"  # images and their snapshots outlive a run: imports are no-ops
        root.mkdir(parents=True, exist_ok=True)
        cni_conf = self.work / "cni" / "conf"
        cni_conf.mkdir(parents=True, exist_ok=True)
        (cni_conf / "10-agentfleet.conflist").write_text(json.dumps({
            "cniVersion": "0.4.0", "name": "agentfleet",
            "plugins": [{"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
                         "hairpinMode": True,
                         "ipam": {"type": "host-local", "dataDir": str(self.work / "cni" / "ipam"),
                                  "ranges": [[{"subnet": POD_CIDR}]], "routes": [{"dst": "0.0.0.0/0"}]}},
                        {"type": "portmap", "capabilities": {"portMappings": True}}]}))
        cfg = self.work / "containerd.toml"
        cfg.write_text(f"""\
version = 2
root = "{root}"
state = "{self.work / 'state'}"
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{shutil.which('runc')}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf}"
""")
        self._spawn("containerd", ["containerd", "--config", str(cfg)])
        _wait("containerd's socket", lambda: self.ctr("version", timeout=10).returncode == 0, 60)

    def _import(self, archives: list[Path]) -> None:
        """Import each archive unless this very archive (its name carries its content key) was the last one
        imported under its image reference: a rebuilt image under the same tag is imported again."""
        stamps = CACHE / "node" / "imported.json"
        done = json.loads(stamps.read_text()) if stamps.is_file() else {}
        have = set(self.ctr("images", "ls", "-q").stdout.split())
        for a in archives:
            meta = a.with_suffix(a.suffix + ".ref")
            ref = meta.read_text().strip() if meta.is_file() else str(a)
            if ref in have and done.get(ref) == a.name:
                continue
            p = self.ctr("images", "import", str(a), timeout=900)
            if p.returncode != 0:
                raise NodeError(f"ctr images import {a}: {p.stderr.strip()}")
            done[ref] = a.name
            stamps.write_text(json.dumps(done, indent=1, sort_keys=True))

    def _start_kubelet(self, kubelet: Path, timeout: float) -> None:
        cfg = self.work / "kubelet.yaml"
        resolv = self.work / "resolv.conf"
        resolv.write_text("")  # no upstream: pods resolve cluster.local only
        cfg.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.sock}",
            "address": self.address, "port": KUBELET_PORT, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": KUBELET_HEALTHZ,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                               "x509": {"clientCAFile": self._ca_file()}},
            "authorization": {"mode": "Webhook"},
            "clusterDNS": [DNS_IP], "clusterDomain": "cluster.local", "resolvConf": str(resolv),
            "podLogsDir": str(self.work / "logs" / "pods"), "maxPods": 30,
            "enforceNodeAllocatable": [], "evictionHard": {"memory.available": "100Mi"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "serializeImagePulls": False,
        }))
        self._spawn("kubelet", [str(kubelet), "--config", str(cfg), "--kubeconfig", str(self.kubeconfig),
                                "--root-dir", str(self.work / "kubelet"), "--cert-dir",
                                str(self.work / "kubelet" / "pki"), "--hostname-override", NODE_NAME,
                                "--node-ip", self.address, "--v", "1"])

        def ready() -> bool:
            p = self.kc("get", "node", NODE_NAME, "-o", "json", check=False)
            if p.returncode != 0:
                return False
            conds = json.loads(p.stdout)["status"].get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

        _wait(f"node {NODE_NAME} Ready", ready, timeout, interval=1)

    def _ca_file(self) -> str:
        cfg = json.loads(self.kc("config", "view", "--raw", "-o", "json").stdout)
        cluster = cfg["clusters"][0]["cluster"]
        if "certificate-authority" in cluster:
            return cluster["certificate-authority"]
        import base64

        ca = self.work / "ca.crt"
        ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        return str(ca)

    def _advertise(self, extended: dict[str, str]) -> None:
        """Extended resources (e.g. nvidia.com/gpu) the node reports, as a device plugin would."""
        patch = {"status": {"capacity": extended}}
        self.kc("patch", "node", NODE_NAME, "--subresource=status", "--type=merge", "-p", json.dumps(patch))

    def _start_proxy(self, proxy: Path) -> None:
        self._spawn("kube-proxy", [str(proxy), "--kubeconfig", str(self.kubeconfig), "--hostname-override",
                                   NODE_NAME, "--proxy-mode", "iptables", "--cluster-cidr", POD_CIDR,
                                   "--healthz-bind-address", PROXY_HEALTHZ, "--metrics-bind-address",
                                   PROXY_METRICS, "--conntrack-max-per-core", "0", "--v", "1"])
        import urllib.request

        _wait("kube-proxy healthz", lambda: urllib.request.urlopen(f"http://{PROXY_HEALTHZ}/healthz",
                                                                    timeout=2).status == 200, 60)

    def _start_dns(self, timeout: float) -> None:
        self.kc("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                         "items": coredns_manifests()}))
        _wait("CoreDNS ready", lambda: self.kc(
            "get", "deploy", "coredns", "-n", "kube-system", "-o", "jsonpath={.status.readyReplicas}",
            check=False).stdout.strip() == "1", timeout, interval=1)

    # -- stop ------------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop everything this node started and leave the host as it was: containers and shims, kubelet,
        kube-proxy's iptables rules, the CNI bridge, mounts under the work dir."""
        kubelet = self.procs.pop("kubelet", None)
        if kubelet:
            _terminate(kubelet)
        if self.sock.exists():
            for cid in self.ctr("tasks", "ls", "-q", timeout=30).stdout.split():
                self.ctr("tasks", "kill", "-s", "SIGKILL", cid, timeout=30)
            time.sleep(1)
            for cid in self.ctr("containers", "ls", "-q", timeout=30).stdout.split():
                self.ctr("tasks", "delete", "-f", cid, timeout=30)
                self.ctr("containers", "delete", cid, timeout=30)
        proxy = self.procs.pop("kube-proxy", None)
        if proxy:
            _terminate(proxy)
        for p in list(self.procs.values()):
            _terminate(p)
        self.procs.clear()
        self._clean_leftovers()

    def _clean_leftovers(self) -> None:
        """Whatever a node of this work dir left behind (also after a crash): processes, pod cgroups, iptables
        rules, the bridge, mounts, files."""
        marks = (str(self.work), f"--hostname-override {NODE_NAME}")
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit() or int(pid_dir.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                cmd = (pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if any(m in cmd for m in marks):
                    os.kill(int(pid_dir.name), signal.SIGKILL)
        _kill_cgroup_tree("kubepods")
        proxy = _bin_dir() / "kube-proxy"
        if proxy.exists():
            subprocess.run([str(proxy), "--cleanup", "--proxy-mode", "iptables"], capture_output=True, timeout=60)
        _drop_kube_chains()
        from e2e.node import netpol

        netpol.cleanup()
        for ns in NETNS.glob("cni-*"):  # pinned by CNI for sandboxes that were killed, not stopped
            subprocess.run(["umount", "-l", str(ns)], capture_output=True)
            ns.unlink(missing_ok=True)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
        if self.work.exists():
            mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
                      if line.split()[1].startswith(str(self.work))]
            for m in sorted(mounts, key=len, reverse=True):
                subprocess.run(["umount", "-l", m], capture_output=True)
            shutil.rmtree(self.work, ignore_errors=True)


def _drop_kube_chains() -> None:
    """Remove the KUBE-* chains the kubelet (KUBE-FIREWALL, canaries) and kube-proxy add, and the rules of the
    built-in chains that jump to them, from every table, IPv4 and IPv6: the host's own rules stay as they were."""
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("filter", "nat", "mangle"):
            p = subprocess.run([tool, "-w", "-t", table, "-S"], capture_output=True, text=True)
            if p.returncode != 0:
                continue
            rules = p.stdout.splitlines()
            for r in rules:
                parts = shlex.split(r)
                if parts[:1] == ["-A"] and not parts[1].startswith("KUBE-") and "-j" in parts and \
                        parts[parts.index("-j") + 1].startswith("KUBE-"):
                    subprocess.run([tool, "-w", "-t", table, "-D", *parts[1:]], capture_output=True)
            chains = [r.split()[1] for r in rules if r.startswith("-N KUBE-")]
            for c in chains:
                subprocess.run([tool, "-w", "-t", table, "-F", c], capture_output=True)
            for c in chains:
                subprocess.run([tool, "-w", "-t", table, "-X", c], capture_output=True)


def _kill_cgroup_tree(top: str) -> None:
    """SIGKILL every process in the ``top`` cgroup of each v1 controller (the kubelet's pods, cgroupfs driver) and
    remove the emptied groups, deepest first. Containers outlive a killed shim; this is what ends them."""
    root = Path("/sys/fs/cgroup")
    trees = [d / top for d in root.iterdir() if (d / top).is_dir()] if root.is_dir() else []
    for _ in range(3):
        alive = False
        for tree in trees:
            for procs in tree.rglob("cgroup.procs"):
                with contextlib.suppress(OSError):
                    for pid in procs.read_text().split():
                        alive = True
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
        if not alive:
            break
        time.sleep(0.5)
    for tree in trees:
        for d in sorted((p for p in tree.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            tree.rmdir()


def _bin_dir() -> Path:
    out = subprocess.run(["bash", str(HERE.parent / "cluster" / "build.sh"), "--print-bin-dir"],
                         capture_output=True, text=True)
    return Path(out.stdout.strip())


def _terminate(p: subprocess.Popen, timeout: float = 15) -> None:
    if p.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGTERM)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)


def coredns_manifests() -> list[dict]:
    """CoreDNS as clusters run it: a Deployment under a ServiceAccount that may list Services, EndpointSlices,
    Namespaces and Pods, answering cluster.local behind the kube-dns Service. No upstream (nothing to forward to).
    It listens on 1053 (the Service maps 53 to it): a non-root process cannot bind below 1024, and an image written
    as a plain tarball carries no file capability."""
    ns = "kube-system"
    labels = {"k8s-app": "kube-dns"}
    corefile = ".:1053 {\n    errors\n    health :8080\n    ready :8181\n"\
               "    kubernetes cluster.local in-addr.arpa ip6.arpa {\n       pods insecure\n       ttl 5\n    }\n"\
               "    cache 5\n    loop\n}\n"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "coredns", "namespace": ns}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "system:coredns"},
         "rules": [{"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"]},
                   {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                    "verbs": ["list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "system:coredns"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
         "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": ns}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns", "namespace": ns},
         "data": {"Corefile": corefile}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "coredns", "namespace": ns,
                                                                      "labels": labels},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "serviceAccountName": "coredns", "dnsPolicy": "Default",
                      "containers": [{
                          "name": "coredns", "image": COREDNS_IMAGE, "imagePullPolicy": "IfNotPresent",
                          "args": ["-conf", "/etc/coredns/Corefile"],
                          "ports": [{"containerPort": 1053, "protocol": "UDP", "name": "dns"},
                                    {"containerPort": 1053, "protocol": "TCP", "name": "dns-tcp"}],
                          "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
                          "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
                          "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True,
                                              "capabilities": {"drop": ["ALL"]},
                                              "seccompProfile": {"type": "RuntimeDefault"}}}],
                      "volumes": [{"name": "config", "configMap": {"name": "coredns"}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", "namespace": ns, "labels": labels},
         "spec": {"clusterIP": DNS_IP, "selector": labels,
                  "ports": [{"name": "dns", "port": 53, "targetPort": 1053, "protocol": "UDP"},
                            {"name": "dns-tcp", "port": 53, "targetPort": 1053, "protocol": "TCP"}]}},
    ]
