"""What the e2e tier is made of: a kubectl bound to the suite's own cluster (and nothing else), the operator as a
subprocess under its ServiceAccount's token, a recorder of watch events, and the dump written on failure.

Imported by conftest.py and the test modules (pytest puts tests/e2e on sys.path)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from e2e.cluster import launcher  # noqa: E402

API = "agentfleet.io/v1alpha1"
EXAMPLE = ROOT / "examples" / "agentapp.yaml"
MANIFESTS = ROOT / "manifests"
OPERATOR_NS = "agentfleet-system"
OPERATOR_SA = "agentfleet-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}"
AGENTFLEET_KINDS = ("ModelFleet", "VectorIndex", "AgentApp", "Budget")

# Every namespaced kind the operator renders (render.CHILD_KINDS, without the optional Milvus operator's kind).
CHILD_KINDS: tuple[tuple[str, str], ...] = (
    ("apps/v1", "StatefulSet"), ("apps/v1", "Deployment"), ("v1", "Service"), ("v1", "ConfigMap"),
    ("v1", "ServiceAccount"), ("batch/v1", "Job"), ("policy/v1", "PodDisruptionBudget"),
    ("rbac.authorization.k8s.io/v1", "Role"), ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("v1", "PersistentVolumeClaim"), ("networking.k8s.io/v1", "NetworkPolicy"),
)
CR_KINDS: tuple[tuple[str, str], ...] = tuple((API, k) for k in AGENTFLEET_KINDS)


class ForeignKubeconfig(RuntimeError):
    """The e2e suite only ever talks to the cluster its launcher started."""


# --------------------------------------------------------------------------- the suite's own cluster only


def check_own_kubeconfig(path: str | os.PathLike, cluster_name: str) -> Path:
    """Return `path` if it is the launcher's kubeconfig of `cluster_name` and points at a local API server whose
    CA lives in that cluster's directory; raise ForeignKubeconfig otherwise (a user's KUBECONFIG, a kind or a
    production cluster must never receive the suite's deletes)."""
    path = Path(path)
    own = launcher.kubeconfig_path(cluster_name)
    if not path.is_file() or path.resolve() != own.resolve():
        raise ForeignKubeconfig(f"{path} is not the e2e cluster's kubeconfig ({own})")
    cfg = yaml.safe_load(path.read_text()) or {}
    clusters = cfg.get("clusters") or []
    if len(clusters) != 1:
        raise ForeignKubeconfig(f"{path}: expected exactly one cluster, found {len(clusters)}")
    c = clusters[0].get("cluster") or {}
    if not re.fullmatch(r"https://127\.0\.0\.1:\d+/?", str(c.get("server", ""))):
        raise ForeignKubeconfig(f"{path}: server {c.get('server')!r} is not a local API server")
    ca = Path(str(c.get("certificate-authority", "")))
    cdir = launcher.cluster_dir(cluster_name).resolve()
    if not ca.is_file() or cdir not in ca.resolve().parents:
        raise ForeignKubeconfig(f"{path}: CA {ca} is not the e2e cluster's own ({cdir})")
    return path


def server_and_ca(kubeconfig: Path) -> tuple[str, str]:
    c = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]
    return c["server"], c["certificate-authority"]


def token_kubeconfig(admin_kubeconfig: Path, token: str, out: Path, user: str) -> Path:
    """A kubeconfig with the same server and CA as the admin one and nothing but a bearer token as identity."""
    server, ca = server_and_ca(admin_kubeconfig)
    cfg = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "e2e", "user": user}}],
        "current-context": user,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(cfg))
    out.chmod(0o600)
    return out


class Kubectl:
    """The built kubectl (v1.35, the API server's version) on the suite's cluster, optionally in one namespace.
    It always passes --kubeconfig, so a KUBECONFIG in the environment is never used."""

    def __init__(self, cluster: launcher.Cluster, namespace: str | None = None, kubeconfig: Path | None = None):
        self.cluster = cluster
        self.ns = namespace
        self.kubeconfig = Path(kubeconfig or cluster.kubeconfig)
        if kubeconfig is None:
            check_own_kubeconfig(self.kubeconfig, cluster.name)

    def __call__(self, *args: str, input: str | None = None, check: bool = True,
                 timeout: float = 60) -> subprocess.CompletedProcess[str]:
        ns = ["-n", self.ns] if self.ns else []
        cmd = [str(launcher.kubectl_path()), "--kubeconfig", str(self.kubeconfig), *ns, *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed (rc={proc.returncode}):\n{proc.stderr}")
        return proc

    def json(self, *args: str) -> dict:
        return json.loads(self(*args, "-o", "json").stdout)

    def get(self, kind: str, name: str) -> dict | None:
        out = self("get", kind, name, "-o", "json", check=False)
        if out.returncode != 0:
            if "NotFound" in out.stderr or "not found" in out.stderr:
                return None
            raise AssertionError(f"kubectl get {kind} {name}: {out.stderr}")
        return json.loads(out.stdout)

    def items(self, kind: str) -> list[dict]:
        return self.json("get", kind)["items"]

    def apply(self, *docs: dict, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self("apply", "-f", "-", input=yaml.safe_dump_all(docs), check=check)

    def condition(self, kind: str, name: str, type_: str = "Ready") -> dict | None:
        obj = self.get(kind, name) or {}
        return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)

    def in_ns(self, namespace: str | None) -> "Kubectl":
        k = Kubectl.__new__(Kubectl)
        k.cluster, k.ns, k.kubeconfig = self.cluster, namespace, self.kubeconfig
        return k


def post_json(url: str, body: dict, *, key: str | None = None, timeout: float = 60) -> tuple[int, dict]:
    """POST a JSON body; (status, JSON answer). An HTTP error answers (code, {"raw": text}); nothing answering
    (refused, reset) answers (0, {"raw": the error})."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, {"raw": err.read().decode(errors="replace")}
    except OSError as err:
        return 0, {"raw": repr(err)}


def wait_for(what: str, predicate: Callable[[], Any], *, timeout: float = 90, interval: float = 0.5) -> Any:
    """Poll until predicate() is truthy; fail naming the last value seen."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")
        time.sleep(interval)


def owned_by(obj: dict, kind: str, name: str) -> bool:
    return any(r["kind"] == kind and r["name"] == name and r.get("controller") and r.get("blockOwnerDeletion")
               for r in obj["metadata"].get("ownerReferences") or [])


# --------------------------------------------------------------------------- the example application


def example_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]


def example_crs() -> list[tuple[str, str]]:
    return [(d["kind"], d["metadata"]["name"]) for d in example_docs() if d["apiVersion"] == API]


def expected_children() -> dict[tuple[str, str], tuple[str, str]]:
    """(kind, name) -> (owner kind, owner name) of every child the example renders. The ingestion Job's name
    carries a hash of its spec: it is keyed by its prefix ('docs-ingest-')."""
    from agentfleet import render
    from agentfleet.api import parse

    objs = [parse({**d, "metadata": {**d["metadata"], "namespace": "x"}}) for d in example_docs()
            if d["apiVersion"] == API]
    related = {(o.kind, o.name): o for o in objs}
    out = {}
    for o in objs:
        for child in render.render(o, related=related, defaults=render.Defaults()):
            name = child["metadata"]["name"]
            if child["kind"] == "Job":
                name = name.rsplit("-", 1)[0] + "-"
            out[(child["kind"], name)] = (o.kind, o.name)
    return out


def child_key(kind: str, name: str) -> tuple[str, str]:
    return (kind, name.rsplit("-", 1)[0] + "-") if kind == "Job" else (kind, name)


def milvus_volume(namespace: str) -> dict:
    """A hostPath PersistentVolume pre-bound to the embedded Milvus StatefulSet's claim in `namespace` (there is
    no provisioner in the e2e cluster). Retain: without a hostPath provisioner, Delete would leave it Failed."""
    return {"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": f"e2e-{namespace}", "labels": {"agentfleet-e2e": "milvus"}},
            "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Retain",
                     "claimRef": {"namespace": namespace, "name": "data-docs-milvus-0"},
                     "hostPath": {"path": f"/tmp/agentfleet-e2e-pv/{namespace}"}}}


def state_volume(namespace: str, app: str = "assistant") -> dict:
    """A hostPath PersistentVolume pre-bound to an AgentApp's SQLite ledger claim (`<app>-state`)."""
    return {"apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": f"e2e-{namespace}-{app}-state", "labels": {"agentfleet-e2e": "state"}},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Retain",
                     "claimRef": {"namespace": namespace, "name": f"{app}-state"},
                     "hostPath": {"path": f"/tmp/agentfleet-e2e-pv/{namespace}-{app}-state"}}}


def apply_example(k: Kubectl) -> list[tuple[str, str]]:
    k.in_ns(None).apply(milvus_volume(k.ns))
    k.in_ns(None).apply(state_volume(k.ns))
    k("apply", "-f", str(EXAMPLE))
    return example_crs()


def wait_example_ready(k: Kubectl, timeout: int = 120) -> None:
    names = [f"{kind.lower()}/{name}" for kind, name in example_crs()]
    k("wait", "--for=condition=Ready", *names, f"--timeout={timeout}s", timeout=timeout + 10)


# --------------------------------------------------------------------------- the operator, as deployed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OperatorProcess:
    """`agentfleet operator --all-namespaces --standalone` as a local subprocess whose only credential is a token
    of the agentfleet-operator ServiceAccount, so every API call it makes is authorised by manifests/rbac.yaml.
    Its output (kopf's JSON log) goes to one file across restarts; each start writes a marker line first."""

    def __init__(self, cluster: launcher.Cluster, workdir: Path):
        self.cluster = cluster
        self.workdir = workdir
        self.log_path = workdir / "operator.log"
        self.kubeconfig = workdir / "operator-sa.kubeconfig"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.mark = 0  # log offset of the current run

    def _write_kubeconfig(self) -> None:
        k = Kubectl(self.cluster)
        token = k("create", "token", OPERATOR_SA, "-n", OPERATOR_NS, "--duration=2h").stdout.strip()
        token_kubeconfig(self.cluster.kubeconfig, token, self.kubeconfig, OPERATOR_SA)

    def env(self) -> dict[str, str]:
        # Not in a pod: without KUBERNETES_SERVICE_HOST/PORT the client's load_incluster_config fails and the
        # SA kubeconfig below is the only credential left. No admin KUBECONFIG leaks in from the caller.
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_") and k != "KUBECONFIG"}
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self, timeout: float = 60) -> None:
        assert self.proc is None or self.proc.poll() is not None, "operator already running"
        if not self.kubeconfig.is_file():
            self._write_kubeconfig()
        self.starts += 1
        port = _free_port()
        self.liveness = f"http://127.0.0.1:{port}/healthz"
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as fh:
            fh.write(f"===== e2e: operator start #{self.starts} =====\n")
            self.mark = fh.tell()
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agentfleet.cli", "operator", "--all-namespaces", "--standalone",
                 f"--liveness={self.liveness}", "--log-format=json"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                cwd=self.workdir, start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.liveness, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"operator not live within {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Signal our own process (by pid) and wait for it; SIGKILL if it does not stop in time."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def kill(self) -> int | None:
        return self.stop(signal.SIGKILL)

    def restart(self, sig: int = signal.SIGTERM) -> None:
        self.stop(sig)
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self, since: int = 0) -> str:
        if not self.log_path.is_file():
            return ""
        with open(self.log_path, "rb") as fh:
            fh.seek(since)
            return fh.read().decode(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def records(self, since: int = 0) -> list[dict]:
        """kopf's JSON log lines (anything else, e.g. a traceback, is skipped)."""
        out = []
        for line in self.log_text(since).splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def mentions(self, name: str, since: int = 0) -> list[str]:
        return [line for line in self.log_text(since).splitlines() if name in line]


# --------------------------------------------------------------------------- watch recording


@dataclass
class WatchEvent:
    seq: int
    t: float
    type: str  # LISTED (already there when recording began), ADDED, MODIFIED, DELETED
    kind: str
    name: str
    uid: str
    resource_version: str
    obj: dict = field(repr=False)


class WatchRecorder:
    """Lists, then watches, the given kinds in one namespace (admin credentials, python client), and records every
    event in arrival order. `start()` returns once each kind is listed: nothing that happens afterwards is missed
    (each watch resumes from its list's resourceVersion)."""

    def __init__(self, kubeconfig: Path, namespace: str, kinds: Iterable[tuple[str, str]]):
        from kubernetes import client, config
        from kubernetes.dynamic import DynamicClient

        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        cfg.connection_pool_maxsize = 32  # one long-lived watch per kind
        self.dyn = DynamicClient(client.ApiClient(configuration=cfg))
        self.ns = namespace
        self.kinds = list(kinds)
        self.events: list[WatchEvent] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _record(self, type_: str, kind: str, obj: dict) -> None:
        meta = obj.get("metadata") or {}
        with self._lock:
            self.events.append(WatchEvent(len(self.events), time.monotonic(), type_, kind, meta.get("name", ""),
                                          meta.get("uid", ""), meta.get("resourceVersion", ""), obj))

    def _run(self, api_version: str, kind: str, listed: threading.Event) -> None:
        from kubernetes import watch

        try:
            res = self.dyn.resources.get(api_version=api_version, kind=kind)
            lst = res.get(namespace=self.ns).to_dict()
            for item in lst.get("items") or []:
                self._record("LISTED", kind, item)
            rv = lst["metadata"]["resourceVersion"]
        except Exception as err:  # noqa: BLE001 - reported by check()
            self.errors.append(f"{kind}: list: {err}")
            listed.set()
            return
        listed.set()
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for ev in self.dyn.watch(res, namespace=self.ns, resource_version=rv, timeout=2, watcher=w):
                    raw = ev["raw_object"]
                    if ev["type"] == "ERROR":
                        self.errors.append(f"{kind}: watch error: {raw}")
                        self._stop.set()
                        break
                    if ev["type"] == "BOOKMARK":
                        continue
                    rv = raw["metadata"]["resourceVersion"]
                    self._record(ev["type"], kind, raw)
                    if self._stop.is_set():
                        break
            except Exception as err:  # noqa: BLE001
                if not self._stop.is_set():
                    self.errors.append(f"{kind}: watch: {err}")
                    time.sleep(0.5)
            finally:
                w.stop()

    def start(self) -> "WatchRecorder":
        flags = []
        for api_version, kind in self.kinds:
            listed = threading.Event()
            t = threading.Thread(target=self._run, args=(api_version, kind, listed), daemon=True,
                                 name=f"watch-{kind}")
            t.start()
            self._threads.append(t)
            flags.append(listed)
        for f in flags:
            if not f.wait(30):
                raise RuntimeError("watch recorder: listing timed out")
        assert not self.errors, self.errors
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def __enter__(self) -> "WatchRecorder":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self) -> list[WatchEvent]:
        with self._lock:
            return list(self.events)

    def since(self, seq: int) -> list[WatchEvent]:
        return [e for e in self.snapshot() if e.seq >= seq]

    def quiet_for(self, seconds: float, timeout: float = 60) -> int:
        """Wait until no event has arrived for `seconds`; return the sequence number the quiet period ends at."""
        deadline = time.monotonic() + timeout
        while True:
            evs = self.snapshot()
            last = evs[-1].t if evs else 0.0
            if time.monotonic() - last >= seconds:
                return len(evs)
            if time.monotonic() > deadline:
                tail = [(e.type, e.kind, e.name) for e in evs[-10:]]
                raise AssertionError(f"objects never settled for {seconds}s within {timeout:.0f}s: {tail}")
            time.sleep(0.2)


# --------------------------------------------------------------------------- the failure dump


def dump(k: Kubectl, namespaces: Iterable[str], operator: OperatorProcess | None, out_dir: Path) -> str:
    """CRs, children, events (per namespace) and the operator log, written under out_dir; returns a summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    parts: list[str] = []

    def grab(name: str, *args: str, ns: str | None = None) -> None:
        try:
            proc = k.in_ns(ns)(*args, check=False, timeout=30)
            text = proc.stdout + (f"\n(stderr) {proc.stderr}" if proc.returncode else "")
        except Exception as err:  # noqa: BLE001 - a dump never raises
            text = f"(failed: {err})"
        (out_dir / name).write_text(text)
        parts.append(f"----- {name}\n{text.strip()[-6000:]}")

    grab("nodes.txt", "get", "nodes", "-o", "wide")
    for ns in namespaces:
        grab(f"{ns}.crs.yaml", "get", "agentfleet", "-o", "yaml", ns=ns)
        grab(f"{ns}.objects.txt", "get", "agentfleet,all,cm,pvc,pdb,sa,role,rolebinding", "-o", "wide", ns=ns)
        grab(f"{ns}.events.txt", "get", "events", "--sort-by=.lastTimestamp", ns=ns)
    if operator is not None:
        (out_dir / "operator.log").write_text(operator.log_text())
        tail = "\n".join(line[:400] for line in operator.log_tail(60).splitlines())
        parts.append(f"----- operator log (last 60 lines; full: {operator.log_path})\n{tail}")
    return f"dumped to {out_dir}\n" + "\n".join(parts)
