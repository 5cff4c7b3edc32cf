"""Builders for the unit tier: small custom resources made from dicts through `agentfleet.api.parse` (the same
path the operator takes), pinned defaults, and readers for rendered manifests. Exposed as the `kit` fixture so
test modules never import this file by name."""

from __future__ import annotations

import copy
import re
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from agentfleet.api import AgentApp, Budget, ModelFleet, Resource, VectorIndex, parse
from agentfleet.api.base import MAX_NAME_LENGTH
from agentfleet.names import (
    API_VERSION, LABEL_COMPONENT, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME, LABEL_PART_OF, MANAGED_BY,
)
from agentfleet.render import Defaults
from agentfleet.state.redis import RedisStore
from agentfleet.state.sqlite import SqliteStore

NS = "team-a"
UID = "6f1c2a9e-0d3b-4c1e-9a7f-2b8d5e4c3a10"
# The longest name an owner may have (api.base.MAX_NAME_LENGTH): every child name must still fit in 63.
LONGEST_NAME = "n" * 38 + "-z"
assert len(LONGEST_NAME) == MAX_NAME_LENGTH, "the test tables' longest-name rows use this literal"
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
RECOMMENDED_LABELS = (LABEL_NAME, LABEL_INSTANCE, LABEL_COMPONENT, LABEL_MANAGED_BY, LABEL_PART_OF)
# A StatefulSet's pods carry `controller-revision-hash: <name>-<hash of up to 10>`, a label value of at most 63.
MAX_STATEFULSET_NAME = 52
# Labels an owner may put on itself; every child's metadata (never a pod template) must carry them.
OWNER_LABELS = {"team": "search", "cost-center": "c-42"}


def merge(base: dict[str, Any], override: dict[str, Any] | None) -> dict[str, Any]:
    """`override` laid over `base`, recursively; a None value removes the key."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class Kit:
    ns = NS
    uid = UID
    longest_name = LONGEST_NAME
    dns1123 = DNS1123_LABEL
    dns1035 = DNS1035_LABEL
    merge = staticmethod(merge)
    owner_labels = OWNER_LABELS
    defaults = Defaults(agentfleet_image="registry.test/agentfleet:unit", vllm_image="registry.test/vllm:unit",
                        milvus_image="registry.test/milvus:unit", image_pull_policy="IfNotPresent")

    # --- resources -----------------------------------------------------------------------------------------
    @staticmethod
    def make(kind: str, name: str, spec: dict[str, Any], *, uid: str | None = UID, namespace: str = NS,
             generation: int | None = 1, annotations: dict[str, str] | None = None,
             labels: dict[str, str] | None = None, status: dict[str, Any] | None = None) -> Resource:
        meta: dict[str, Any] = {"name": name, "namespace": namespace}
        if uid is not None:
            meta["uid"] = uid
        if generation is not None:
            meta["generation"] = generation
        if annotations:
            meta["annotations"] = annotations
        if labels:
            meta["labels"] = labels
        doc: dict[str, Any] = {"apiVersion": API_VERSION, "kind": kind, "metadata": meta, "spec": spec}
        if status is not None:
            doc["status"] = status
        return parse(doc)

    def fleet(self, name: str = "llm", spec: dict[str, Any] | None = None, **meta: Any) -> ModelFleet:
        base = {"model": {"uri": "hf://acme/chat-7b"}}
        return self.make("ModelFleet", name, merge(base, spec), **meta)  # type: ignore[return-value]

    def index(self, name: str = "docs", spec: dict[str, Any] | None = None, **meta: Any) -> VectorIndex:
        base = {"source": {"configMap": {"name": "corpus"}}}
        return self.make("VectorIndex", name, merge(base, spec), **meta)  # type: ignore[return-value]

    def app(self, name: str = "assistant", spec: dict[str, Any] | None = None, **meta: Any) -> AgentApp:
        base = {"fleets": {"large": "large"}, "index": {"name": "docs"},
                "auth": {"apiKeysSecretRef": {"name": "api-keys", "key": "keys.yaml"}}}
        return self.make("AgentApp", name, merge(base, spec), **meta)  # type: ignore[return-value]

    def budget(self, name: str = "spend", spec: dict[str, Any] | None = None, **meta: Any) -> Budget:
        base = {"limits": {"costUsd": 5}}
        return self.make("Budget", name, merge(base, spec), **meta)  # type: ignore[return-value]

    @staticmethod
    def related(*objs: Resource) -> dict[tuple[str, str], Resource]:
        return {(o.kind, o.name): o for o in objs}

    # --- reading manifests ---------------------------------------------------------------------------------
    @staticmethod
    def one(children: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
        found = [c for c in children if c["kind"] == kind and (name is None or c["metadata"]["name"] == name)]
        assert len(found) == 1, f"expected one {kind} {name or ''}, got {[c['metadata']['name'] for c in found]}"
        return found[0]

    @staticmethod
    def container(manifest: dict[str, Any]) -> dict[str, Any]:
        containers = manifest["spec"]["template"]["spec"]["containers"]
        assert len(containers) == 1
        return containers[0]

    @staticmethod
    def flag(args: list[str], name: str) -> str | None:
        """The value following `name` in an argument list; None when the flag is absent."""
        if name not in args:
            return None
        assert args.count(name) == 1, f"{name} given {args.count(name)} times"
        return args[args.index(name) + 1]

    @staticmethod
    def volume(manifest: dict[str, Any], name: str) -> dict[str, Any] | None:
        return next((v for v in manifest["spec"]["template"]["spec"].get("volumes", []) if v["name"] == name), None)

    @staticmethod
    def mount(container: dict[str, Any], name: str) -> dict[str, Any] | None:
        return next((m for m in container.get("volumeMounts", []) if m["name"] == name), None)

    @staticmethod
    def env(container: dict[str, Any], name: str) -> dict[str, Any] | None:
        return next((e for e in container.get("env", []) if e["name"] == name), None)

    @staticmethod
    def child_problems(children: list[dict[str, Any]], owner: Resource) -> list[str]:
        """What every child of every kind must satisfy, as a list of violations (empty when all hold): its
        namespace, an RFC 1035 name that fits (a StatefulSet's leaves room for its revision label), the
        recommended labels plus the owner's own, the controller owner reference when the owner has a uid, and pod
        templates labelled with ours only (selector labels + managed-by + part-of), covering the selector."""
        problems = []
        for c in children:
            meta = c["metadata"]
            what = f"{c['kind']}/{meta['name']}"
            if meta.get("namespace") != owner.namespace:
                problems.append(f"{what}: namespace {meta.get('namespace')!r}")
            if not DNS1035_LABEL.match(meta["name"]) or len(meta["name"]) > 63:
                problems.append(f"{what}: name is not an RFC 1035 label of at most 63 characters")
            if c["kind"] == "StatefulSet" and len(meta["name"]) > MAX_STATEFULSET_NAME:
                problems.append(f"{what}: StatefulSet name longer than {MAX_STATEFULSET_NAME}")
            labels = meta.get("labels") or {}
            missing = [k for k in RECOMMENDED_LABELS if not labels.get(k)]
            if missing:
                problems.append(f"{what}: missing labels {missing}")
            if (labels.get(LABEL_INSTANCE), labels.get(LABEL_MANAGED_BY), labels.get(LABEL_PART_OF)) != (
                    owner.name, MANAGED_BY, owner.kind.lower()):
                problems.append(f"{what}: instance/managed-by/part-of labels {labels}")
            if not owner.metadata.labels.items() <= labels.items():
                problems.append(f"{what}: owner labels {owner.metadata.labels} not all in {labels}")
            if any(len(v) > 63 for v in labels.values()):
                problems.append(f"{what}: a label value is longer than 63")
            refs = meta.get("ownerReferences")
            if owner.metadata.uid:
                want = [{"apiVersion": owner.api_version, "kind": owner.kind, "name": owner.name,
                         "uid": owner.metadata.uid, "controller": True, "blockOwnerDeletion": True}]
                if refs != want:
                    problems.append(f"{what}: ownerReferences {refs}")
            elif refs is not None:
                problems.append(f"{what}: ownerReferences without an owner uid: {refs}")
            template = (c.get("spec") or {}).get("template")
            if template is not None:
                pod = template["metadata"]["labels"]
                want_pod = {LABEL_NAME: labels.get(LABEL_NAME), LABEL_INSTANCE: owner.name,
                            LABEL_COMPONENT: labels.get(LABEL_COMPONENT), LABEL_MANAGED_BY: MANAGED_BY,
                            LABEL_PART_OF: owner.kind.lower()}
                if pod != want_pod:
                    problems.append(f"{what}: pod template labels {pod}, want {want_pod}")
                selector = (c["spec"].get("selector") or {}).get("matchLabels")
                if selector is not None and not selector.items() <= pod.items():
                    problems.append(f"{what}: selector {selector} does not select its own pods {pod}")
        return problems

    @staticmethod
    def aliased(children: list[dict[str, Any]]) -> list[str]:
        """Paths of dicts and lists reachable twice from the rendered children (one object in two places)."""
        seen: dict[int, str] = {}
        out: list[str] = []

        def walk(node: Any, path: str) -> None:
            if not isinstance(node, (dict, list)):
                return
            if id(node) in seen:
                out.append(f"{path} is {seen[id(node)]}")
                return
            seen[id(node)] = path
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, value in items:
                walk(value, f"{path}.{key}")

        for c in children:
            walk(c, f"{c['kind']}/{c['metadata']['name']}")
        return out


@pytest.fixture(scope="session")
def kit() -> Kit:
    return Kit()

# --- durable state backends (agentfleet.state) -------------------------------------------------------------------
# Every test that takes `store_factory` runs once on SQLite (a temp file) and once on a real redis-server (Debian's
# package, installed by e2e/redis/install.sh when missing, started on a free 127.0.0.1 port with a temp dir; skipped
# with the installer's reason only when it cannot be installed). The ledger's and the runs' suites share them.

REPO = Path(__file__).resolve().parents[2]
INSTALLER = REPO / "e2e" / "redis" / "install.sh"


def _redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    proc = subprocess.run(["bash", str(INSTALLER)], capture_output=True, text=True, timeout=600)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        pytest.skip(f"redis-server unavailable: {INSTALLER.name} exited {proc.returncode}: "
                    f"{proc.stderr.strip().splitlines()[-1:] or 'no output'}")
    return lines[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = _redis_binary()
    workdir = tmp_path_factory.mktemp("redis")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(workdir), "--save", "",
         "--appendonly", "no", "--protected-mode", "yes", "--logfile", str(workdir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1)
    deadline = time.monotonic() + 20
    while True:  # a readiness poll of a real server, bounded by a deadline
        try:
            if client.ping():
                break
        except redis.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log = (workdir / "redis.log").read_text() if (workdir / "redis.log").exists() else ""
            pytest.fail(f"redis-server did not start on port {port}: {log[-500:]}")
        time.sleep(0.05)
    client.close()
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


StoreFactory = Callable[[], "SqliteStore | RedisStore"]


@pytest.fixture(params=["sqlite", "redis"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Makes stores that share one ledger (one file, or one Redis prefix): each is what one replica opens."""
    made: list[SqliteStore | RedisStore] = []
    if request.param == "sqlite":
        path = tmp_path / "ledger.db"

        def make() -> SqliteStore | RedisStore:
            made.append(SqliteStore(path))
            return made[-1]
    else:
        url = request.getfixturevalue("redis_url")
        prefix = f"test:{uuid.uuid4().hex}:"

        def make() -> SqliteStore | RedisStore:
            made.append(RedisStore(url, prefix=prefix))
            return made[-1]
    make.backend = request.param  # type: ignore[attr-defined]
    make.spec = str(path) if request.param == "sqlite" else (url, prefix)  # type: ignore[attr-defined]
    yield make
    for s in made:
        s.close()
