"""Run one container of a rendered pod as a host process, with the container's exact command, args, env and mounts.

What a kubelet would do, done by hand where a pod cannot run: every volume of the pod spec is materialised from the
rendered objects (ConfigMap and Secret data, projected service-account tokens, downward-API fields, emptyDirs) into
a directory of the test, and the process is started in a private mount namespace (`unshare --mount`) in which each
directory is bind-mounted at the container's exact `mountPath` (read-only where the mount says so). Paths therefore
stay exactly as rendered, in args and inside config files alike. Only three things are substituted, each through an
explicit map that the caller passes and this module asserts is complete:

* `ports`: every containerPort -> a free host port (all processes share the host's network namespace). Applied to
  the values of args and env that spell a container port; a containerPort missing from the map fails.
* `services`: `host.ns.svc:port` (cluster DNS plus kube-proxy) -> the address of the process standing in for the
  Service. Applied to args, env and the materialised files; a `*.svc` address left unmapped fails.
* `field_values`: downward-API `fieldRef` values (metadata.name, ...): a pod would get them from the kubelet.

A mount point missing on the host is made inside an overlay of its top-level directory (/etc, /var, /run) that only
the namespace sees; a missing top-level directory itself (/data) is created on the host, empty, and left there.
The container's securityContext is applied where it can be: readOnlyRootFilesystem (the namespace's / is remounted
read-only, volumes keep their own mode), capabilities.drop [ALL] and allowPrivilegeEscalation false (setpriv). The
process still runs as UID 0, not the image's UID 10001: the image's Python is this checkout's virtualenv (the
`agentfleet` console script on PATH), whose interpreter lives under /root (mode 0700).
"""

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

# `[scheme://]name.namespace.svc[.cluster.local]:port`; the stand-in replaces the whole match.
SVC_ADDRESS = re.compile(r"(?:[a-z]+://)?\b([a-z0-9]([-a-z0-9]*[a-z0-9])?\.[a-z0-9]([-a-z0-9]*[a-z0-9])?\.svc"
                         r"(\.cluster\.local)?:\d+)")

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

Objects = Mapping[tuple[str, str], dict]  # (kind, name) -> rendered or applied object


class PodSpecError(AssertionError):
    """The rendered container cannot be run as rendered (a volume, a reference or an address is unresolved)."""


def find(objects: list[dict], kind: str, name: str) -> dict:
    for o in objects:
        if o["kind"] == kind and o["metadata"]["name"] == name:
            return o
    raise PodSpecError(f"{kind}/{name} is not among the rendered objects")


def pod_template(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def _data(obj: dict) -> dict[str, bytes]:
    """ConfigMap data/binaryData or Secret data/stringData as bytes."""
    out: dict[str, bytes] = {}
    if obj["kind"] == "Secret":
        out.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
        out.update({k: v.encode() for k, v in (obj.get("stringData") or {}).items()})
    else:
        out.update({k: v.encode() for k, v in (obj.get("data") or {}).items()})
        out.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
    return out


def _write_items(dest: Path, data: dict[str, bytes], items: list[dict] | None, what: str) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    chosen = [(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]
    for key, path in chosen:
        if key not in data:
            raise PodSpecError(f"{what}: key {key!r} is not in its data ({sorted(data)})")
        f = dest / path
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data[key])


@dataclass
class Materialised:
    mounts: list[tuple[Path, str, bool]]  # (host dir or file, mountPath, readOnly)
    env: dict[str, str]
    argv: list[str]
    ports: dict[int, int]


@dataclass
class PodProcess:
    """A container of a rendered pod, materialised and runnable."""

    container: dict
    pod: dict
    objects: Objects
    workdir: Path
    field_values: Mapping[str, str] = field(default_factory=dict)
    ports: Mapping[int, int] = field(default_factory=dict)
    services: Mapping[str, str] = field(default_factory=dict)
    tokens: Mapping[str, str] = field(default_factory=dict)  # serviceAccountName -> token for projected volumes
    extra_env: Mapping[str, str] = field(default_factory=dict)
    namespace: str = ""
    # Host paths a substitution points at (a stand-in's data file) that must stay visible inside the namespace.
    extra_binds: tuple[Path, ...] = ()
    proc: subprocess.Popen | None = None

    # ------------------------------------------------------------------ substitution
    def _subst(self, text: str, where: str) -> str:
        def repl(m: re.Match[str]) -> str:
            addr = m.group(1)
            if addr not in self.services:
                raise PodSpecError(f"{where}: Service address {addr} has no stand-in (services map: "
                                   f"{sorted(self.services)})")
            return self.services[addr]
        return SVC_ADDRESS.sub(repl, text)

    def _port(self, value: str) -> str:
        return str(self.ports[int(value)]) if value.isdigit() and int(value) in self.ports else value

    def _url_port(self, arg: str) -> str:
        """A listen address inside an argument (`--liveness=http://0.0.0.0:8080/healthz`): its container port."""
        return re.sub(r"(://(?:0\.0\.0\.0|127\.0\.0\.1|localhost|\[::\]):)(\d+)",
                      lambda m: m.group(1) + self._port(m.group(2)), arg)

    # ------------------------------------------------------------------ volumes
    def _volume(self, vol: dict, dest: Path) -> None:
        name = vol["name"]
        ns = self.namespace
        if "emptyDir" in vol or "persistentVolumeClaim" in vol:
            dest.mkdir(parents=True, exist_ok=True)
        elif "configMap" in vol:
            cm = self.objects.get(("ConfigMap", vol["configMap"]["name"]))
            if cm is None:
                raise PodSpecError(f"volume {name}: ConfigMap {vol['configMap']['name']} is not available")
            _write_items(dest, _data(cm), vol["configMap"].get("items"), f"volume {name}")
        elif "secret" in vol:
            s = self.objects.get(("Secret", vol["secret"]["secretName"]))
            if s is None:
                raise PodSpecError(f"volume {name}: Secret {vol['secret']['secretName']} is not available")
            _write_items(dest, _data(s), vol["secret"].get("items"), f"volume {name}")
        elif "projected" in vol:
            dest.mkdir(parents=True, exist_ok=True)
            for src in vol["projected"]["sources"]:
                if "serviceAccountToken" in src:
                    sa = self.pod.get("serviceAccountName", "default")
                    if sa not in self.tokens:
                        raise PodSpecError(f"volume {name}: no token for ServiceAccount {sa}")
                    (dest / src["serviceAccountToken"]["path"]).write_text(self.tokens[sa])
                elif "configMap" in src:
                    cm = self.objects.get(("ConfigMap", src["configMap"]["name"]))
                    if cm is None:
                        raise PodSpecError(f"volume {name}: ConfigMap {src['configMap']['name']} is not available")
                    _write_items(dest, _data(cm), src["configMap"].get("items"), f"volume {name}")
                elif "downwardAPI" in src:
                    for item in src["downwardAPI"]["items"]:
                        (dest / item["path"]).write_text(self._field(item["fieldRef"]["fieldPath"], ns))
                else:
                    raise PodSpecError(f"volume {name}: projected source {sorted(src)} is not supported")
        else:
            raise PodSpecError(f"volume {name}: type {sorted(k for k in vol if k != 'name')} is not supported")

    def _field(self, path: str, namespace: str) -> str:
        if path == "metadata.namespace" and namespace:
            return namespace
        if path not in self.field_values:
            raise PodSpecError(f"fieldRef {path} has no test value")
        return self.field_values[path]

    # ------------------------------------------------------------------ env
    def _env(self) -> dict[str, str]:
        c, ns = self.container, self.namespace
        env: dict[str, str] = {}
        for src in c.get("envFrom") or []:
            ref = src.get("configMapRef") or src.get("secretRef")
            kind = "ConfigMap" if "configMapRef" in src else "Secret"
            obj = self.objects.get((kind, ref["name"]))
            if obj is None:
                raise PodSpecError(f"envFrom: {kind} {ref['name']} is not available")
            env.update({src.get("prefix", "") + k: v.decode() for k, v in _data(obj).items()})
        for e in c.get("env") or []:
            if "value" in e:
                env[e["name"]] = e["value"]
                continue
            vf = e["valueFrom"]
            if "fieldRef" in vf:
                env[e["name"]] = self._field(vf["fieldRef"]["fieldPath"], ns)
            elif "configMapKeyRef" in vf or "secretKeyRef" in vf:
                kind = "ConfigMap" if "configMapKeyRef" in vf else "Secret"
                ref = vf.get("configMapKeyRef") or vf.get("secretKeyRef")
                obj = self.objects.get((kind, ref["name"]))
                data = _data(obj) if obj is not None else {}
                if ref["key"] not in data:
                    raise PodSpecError(f"env {e['name']}: {kind} {ref['name']} key {ref['key']} is not available")
                env[e["name"]] = data[ref["key"]].decode()
            else:
                raise PodSpecError(f"env {e['name']}: valueFrom {sorted(vf)} is not supported")
        return {k: self._subst(self._port(v), f"env {k}") for k, v in env.items()}

    # ------------------------------------------------------------------ assembly
    def materialise(self) -> Materialised:
        c = self.container
        container_ports = {p["containerPort"] for p in c.get("ports") or []}
        if missing := container_ports - set(self.ports):
            raise PodSpecError(f"container {c['name']}: containerPorts {sorted(missing)} have no host port")
        volumes = {v["name"]: v for v in self.pod.get("volumes") or []}
        mounts: list[tuple[Path, str, bool]] = []
        for i, m in enumerate(c.get("volumeMounts") or []):
            if m["name"] not in volumes:
                raise PodSpecError(f"volumeMount {m['mountPath']}: volume {m['name']} is not in the pod")
            src = self.workdir / "volumes" / f"{i}-{m['name']}"
            if not src.exists():
                self._volume(volumes[m["name"]], src)
            if m.get("subPath"):
                src = src / m["subPath"]
            mounts.append((src, m["mountPath"], bool(m.get("readOnly"))))
        # The ServiceAccount admission plugin's automount, as a pod gets it unless the pod opts out.
        if self.pod.get("automountServiceAccountToken", True) and not any(
                mp == SERVICE_ACCOUNT_DIR for _, mp, _ in mounts):
            src = self.workdir / "volumes" / "kube-api-access-auto"
            self._volume({"name": "kube-api-access-auto", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
            ]}}, src)
            mounts.append((src, SERVICE_ACCOUNT_DIR, True))
        # Files may name Service addresses (a config file): the stand-ins apply there as they do to args.
        for src, mount_path, _ in mounts:
            for f in ([src] if src.is_file() else src.rglob("*")):
                if f.is_file():
                    try:
                        text = f.read_text()
                    except UnicodeDecodeError:
                        continue
                    new = self._subst(text, f"{mount_path}/{f.relative_to(src) if f != src else ''}")
                    if new != text:
                        f.write_text(new)
        argv = [*(c.get("command") or []), *(c.get("args") or [])]
        if not argv:
            raise PodSpecError(f"container {c['name']}: no command (the image's entry point would run)")
        # An absolute path in an argument must lie under a mount: the image holds nothing else of ours.
        mount_paths = [mp for _, mp, _ in mounts]
        for a in argv[1:]:
            for p in re.findall(r"(?<![\w:/])(/[\w./-]+)", a):
                if not any(p == mp or p.startswith(mp.rstrip("/") + "/") for mp in mount_paths):
                    raise PodSpecError(f"container {c['name']}: argument path {p} is not under any volumeMount "
                                       f"({mount_paths})")
        out_args = []
        for i, a in enumerate(argv):
            is_port = i > 0 and argv[i - 1] in ("--port", "--metrics-port")
            a = self._port(a) if is_port else self._url_port(a)
            out_args.append(self._subst(a, f"argv[{i}]"))
        return Materialised(mounts=mounts, env=self._env(), argv=out_args, ports=dict(self.ports))

    @staticmethod
    def _image_paths(m: Materialised) -> list[Path]:
        """What the image carries at fixed paths and the test has at its own: the virtualenv holding the entry
        points (and their interpreter) and the source tree an editable install imports from. Kept visible when a
        volume's mountPath would hide them (a clone under /tmp, where the pod mounts its own /tmp)."""
        def under(path: str, top: str) -> bool:
            return path == top or path.startswith(top.rstrip("/") + "/")

        shadowing = [os.path.realpath(mp) for _, mp, _ in m.mounts]
        repo, venv = os.path.realpath(Path(__file__).resolve().parents[2]), os.path.realpath(sys.prefix)
        wanted = [repo] if under(venv, repo) else [venv, repo]   # a venv inside the tree comes back with it
        return [Path(p) for p in wanted if any(under(p, mp) for mp in shadowing)]

    def _script(self, m: Materialised, home: Path) -> str:
        """Shell run by `unshare --mount --propagation private`: make mount points, bind, drop to the command."""
        lines = ["set -eu"]
        # Host directories that must stay visible (a stand-in's data, HOME) may lie under /tmp, which the pod's own
        # /tmp hides: hold each open before the mounts and bind it back through its descriptor afterwards.
        keep = [*self.extra_binds, home, *self._image_paths(m)]
        if len(keep) > 5:  # descriptors 5..9: what sh's `exec N<` takes
            raise PodSpecError(f"at most 5 paths kept visible, got {len(keep)}")
        for fd, p in enumerate(keep, start=5):
            lines.append(f"exec {fd}<{shlex.quote(str(p))}")
        overlays: set[str] = set()
        for _, mp, _ in m.mounts:
            real = os.path.realpath(mp)
            anc = real
            while not os.path.exists(anc):
                anc = os.path.dirname(anc)
            if anc != real:
                top = "/" + real.strip("/").split("/")[0]
                if top == "/":
                    raise PodSpecError(f"mountPath {mp}: cannot mount over /")
                if not os.path.isdir(top):
                    # An overlay of / would hide every other mount: a missing top-level directory (/data) is
                    # made on the host, once and empty; what is made and mounted below it stays in the namespace.
                    os.makedirs(top, exist_ok=True)
                overlays.add(top)
        for i, top in enumerate(sorted(overlays)):
            up, wk = self.workdir / "overlay" / f"up{i}", self.workdir / "overlay" / f"work{i}"
            up.mkdir(parents=True, exist_ok=True)
            wk.mkdir(parents=True, exist_ok=True)
            lines.append(f"mount -t overlay overlay -o lowerdir={top},upperdir={up},workdir={wk} {top}")
        # /tmp last: the sources of the other mounts may live under /tmp.
        for src, mp, ro in sorted(m.mounts, key=lambda t: os.path.realpath(t[1]) == "/tmp"):
            q, qs = shlex.quote(mp), shlex.quote(str(src))
            lines.append(f"mkdir -p {q}" if src.is_dir() else f"mkdir -p $(dirname {q}) && touch {q}")
            lines.append(f"mount --bind {qs} {q}")
            if ro:
                lines.append(f"mount -o remount,bind,ro {q}")
        # The image's WORKDIR and HOME (/home/agentfleet) stand in as a directory of the test, kept visible.
        for fd, p in enumerate(keep, start=5):
            # --no-canonicalize: mount(8) would resolve the descriptor's path again, now inside the pod's /tmp.
            q = shlex.quote(str(p))
            lines.append(f"mkdir -p {q} && mount --no-canonicalize --bind /proc/self/fd/{fd} {q} && exec {fd}<&-")
        sc = self.container.get("securityContext") or {}
        if sc.get("readOnlyRootFilesystem"):
            # The container's root filesystem read-only; its volumes (mounted above) keep their own mode. The
            # image's HOME is part of that root filesystem: read-only too.
            lines.append("mount -o remount,bind,ro /")
            lines.append(f"mount -o remount,bind,ro {shlex.quote(str(home))}")
        lines.append('cd "$AGENTFLEET_POD_WORKDIR"')
        # capabilities.drop [ALL] and allowPrivilegeEscalation false, as runc applies them (still UID 0, see above).
        drop = [c.upper() for c in (sc.get("capabilities") or {}).get("drop") or []]
        priv = []
        if "ALL" in drop:
            priv += ["--bounding-set", "-all", "--inh-caps", "-all"]
        if sc.get("allowPrivilegeEscalation") is False:
            priv.append("--no-new-privs")
        lines.append(f'exec setpriv {" ".join(priv)} -- "$@"' if priv else 'exec "$@"')
        return "\n".join(lines)

    def start(self, log: Path, venv_bin: Path) -> Materialised:
        m = self.materialise()
        if shutil.which("unshare") is None:
            raise PodSpecError("unshare (util-linux) is needed for the container's mount namespace")
        home = self.workdir / "home"
        home.mkdir(parents=True, exist_ok=True)
        env = {"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "PYTHONUNBUFFERED": "1",
               "PYTHONDONTWRITEBYTECODE": "1", "AGENTFLEET_POD_WORKDIR": str(home), **self.extra_env, **m.env}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", self._script(m, home), "pod",
                 *m.argv], env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        return m

    def wait_http(self, url: str, log: Path, *, timeout_s: float, ok: Callable[[int], bool] = lambda s: s == 200
                  ) -> None:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.container['name']} exited with {self.proc.returncode} before {url} "
                                     f"answered:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if ok(r.status):
                        return
                    last = f"{r.status}"
            except urllib.error.HTTPError as err:
                last = f"{err.code} {err.read()[:300]!r}"
            except (urllib.error.URLError, OSError) as err:
                last = str(err)
            time.sleep(0.3)
        raise AssertionError(f"{url} not ready within {timeout_s}s (last: {last}):\n{log.read_text()[-3000:]}")

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(5)
