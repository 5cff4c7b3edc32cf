"""What `agentfleet up` will start for a YAML file, decided before anything starts (pure): the local engine and
the names it serves, the fleets served elsewhere (`spec.baseUrl`), the index's corpus and milvus-lite file, the
key store, the keys of remote A2A sub-agents and the runtime configuration. A Secret the app references comes
from the file, as in a cluster (`stringData`, or base64 `data`); an a2a sub-agent's key may instead come from the
environment (`AGENTFLEET_A2A_KEY_<SUB_AGENT>`, names.a2a_key_env), so a real key need not be written into a YAML
file; the environment is a parameter, like everything else here. Every reason the file cannot run on one machine
is a SpecError naming the document, the field and the fix, raised before a single process is spawned."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .. import render
from ..api import AgentApp, Budget, ModelFleet, Resource, RuntimeConfig, VectorIndex, is_ours, parse
from ..errors import Problem, SpecError
from ..names import a2a_key_env

__all__ = ["LocalEngine", "LocalIndex", "UpPlan", "plan_up", "DEFAULT_ENGINE_PORT", "DEFAULT_RUNTIME_PORT"]

DEFAULT_ENGINE_PORT = 8001
DEFAULT_RUNTIME_PORT = 8080


@dataclass(frozen=True)
class LocalEngine:
    """One vLLM process on this machine. On a CPU machine every local fleet shares the one small model, served
    under each fleet's model name, so requests keep their names and prices."""

    port: int
    served_names: tuple[str, ...]
    fleets: tuple[str, ...]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


@dataclass(frozen=True)
class LocalIndex:
    index: VectorIndex
    corpus: dict[str, Any] = field(repr=False)  # the ConfigMap document holding the files
    db_path: Path = Path()

    @property
    def collection(self) -> str:
        return self.index.collection


@dataclass(frozen=True)
class UpPlan:
    run_dir: Path
    app: AgentApp
    engine: LocalEngine | None
    external: dict[str, str]
    index: LocalIndex | None
    keys_yaml: str = field(repr=False)
    keys_file: Path
    runtime: RuntimeConfig
    runtime_port: int
    config_file: Path
    a2a_keys: dict[str, str] = field(default_factory=dict, repr=False)  # a2a sub-agent -> this app's key there

    @property
    def a2a_keys_dir(self) -> Path:
        """Where the runtime reads the a2a sub-agents' keys (<dir>/<sub-agent>/key, as render mounts them)."""
        return self.run_dir / "a2a-keys"

    def describe(self) -> list[str]:
        """What will run, one line each, for the terminal."""
        out = []
        if self.engine:
            out.append(f"model server  vLLM (CPU) {self.engine.base_url} serving "
                       f"{', '.join(self.engine.served_names)} for fleet(s) {', '.join(self.engine.fleets)}")
        for fleet, url in self.external.items():
            out.append(f"model server  {fleet}: external {url}")
        if self.index:
            out.append(f"index         {self.index.index.name}: milvus-lite {self.index.db_path} "
                       f"(collection {self.collection_name()})")
        out.append(f"runtime       {self.app.name}: http://127.0.0.1:{self.runtime_port}/v1 (config {self.config_file})")
        if self.app.spec.evaluation is not None:
            # The in-cluster evaluation (a Job against the app's Service) has no local counterpart to start.
            out.append("evaluation    spec.evaluation is ignored locally: run `agentfleet eval --suite SUITE -f FILE`")
        return out

    def collection_name(self) -> str:
        return self.index.collection if self.index else ""


def _by_kind(objs: list[Resource], kind: str) -> list[Any]:
    return [o for o in objs if o.kind == kind]


def _plain(docs: list[Any], kind: str, name: str) -> dict[str, Any] | None:
    return next((d for d in docs if isinstance(d, dict) and d.get("kind") == kind
                 and (d.get("metadata") or {}).get("name") == name), None)


def _secret_value(docs: list[Any], name: str, key: str) -> str | None:
    """A key of a Secret in the file: `stringData`, else base64 `data` (a Secret as a cluster prints it)."""
    secret = _plain(docs, "Secret", name) or {}
    value = (secret.get("stringData") or {}).get(key)
    if value is None and (secret.get("data") or {}).get(key) is not None:
        try:
            value = base64.b64decode(str(secret["data"][key]), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
    return None if value is None else str(value)


def _a2a_keys(app: AgentApp, docs: list[Any], env: Mapping[str, str]) -> dict[str, str]:
    """This app's key at each remote A2A sub-agent: the environment variable, else the Secret in the file. What
    a cluster mounts from the Secret, `up` writes where the runtime reads it (up.write_run_dir)."""
    keys, problems = {}, []
    for i, sub in enumerate(app.spec.sub_agents):
        if sub.a2a is None:
            continue
        ref, var = sub.a2a.key_secret_ref, a2a_key_env(sub.name)
        path = f"spec.subAgents[{i}].a2a.keySecretRef"
        value = env.get(var) or _secret_value(docs, ref.name, ref.key)
        if value is None:
            problems.append(Problem(path, (
                f"sub-agent {sub.name} calls {sub.a2a.url} with this app's API key there, the Secret {ref.name} key "
                f"{ref.key!r}, which `agentfleet up` cannot find: set the environment variable {var} to the key, or "
                f"add the Secret {ref.name} with stringData.{ref.key} to the file")))
            continue
        key = value.strip()
        if not key or any(c.isspace() or ord(c) < 0x20 for c in key):
            source = f"${var}" if env.get(var) else f"Secret {ref.name} key {ref.key!r}"
            problems.append(Problem(path, f"sub-agent {sub.name}: the key in {source} is empty or not one token"))
            continue
        keys[sub.name] = key
    if problems:
        raise SpecError(app.ref(), problems)
    return keys


def plan_up(docs: list[Any], *, run_dir: Path, app_name: str | None = None, engine_port: int = DEFAULT_ENGINE_PORT,
            runtime_port: int = DEFAULT_RUNTIME_PORT, env: Mapping[str, str] | None = None) -> UpPlan:
    """`env`: the environment `agentfleet up` runs in (a2a sub-agents' keys may come from it); None is empty."""
    objs = [parse(d) for d in docs if is_ours(d)]
    apps: list[AgentApp] = _by_kind(objs, "AgentApp")
    if app_name:
        apps = [a for a in apps if a.name == app_name]
    if len(apps) != 1:
        names = ", ".join(a.name for a in _by_kind(objs, "AgentApp")) or "none"
        why = f"no AgentApp named {app_name!r}" if app_name else f"expected one AgentApp, found {names}"
        raise SpecError("file", [Problem("kind", f"{why} (choose one with --app)")])
    app = apps[0]
    related = {(o.kind, o.name): o for o in objs}
    missing = render.missing_references(app, related)
    if missing:
        raise SpecError(app.ref(), [Problem("spec", f"references {', '.join(missing)}, which the file does not "
                                                    "define")])
    fleets: dict[str, ModelFleet] = {n: related[("ModelFleet", n)] for n in app.fleet_names}  # type: ignore[misc]
    external = {n: f.spec.base_url for n, f in fleets.items() if f.spec.base_url}
    local = [f for n, f in fleets.items() if n not in external]
    engine = None
    if local:
        names = tuple(dict.fromkeys(f.served_model_name for f in local))
        engine = LocalEngine(port=engine_port, served_names=names, fleets=tuple(f.name for f in local))
    urls = {**external, **{f.name: engine.base_url for f in local}} if engine else dict(external)

    auth = app.spec.auth.api_keys_secret_ref
    secret = _plain(docs, "Secret", auth.name)
    keys_yaml = ((secret or {}).get("stringData") or {}).get(auth.key)
    if keys_yaml is None:
        raise SpecError(app.ref(), [Problem("spec.auth.apiKeysSecretRef", (
            f"Secret {auth.name} with stringData key {auth.key!r} must be in the file: `agentfleet up` reads the "
            "API keys from it"))])
    a2a_keys = _a2a_keys(app, docs, env or {})

    local_index = None
    index: VectorIndex | None = related.get(("VectorIndex", app.spec.index.name)) if app.spec.index else None  # type: ignore[assignment]
    if index is not None:
        src = index.spec.source
        if src.config_map is None:
            raise SpecError(index.ref(), [Problem("spec.source", (
                "on one machine the corpus comes from a ConfigMap in the same file; "
                "persistentVolumeClaim and url sources need a cluster"))])
        corpus = _plain(docs, "ConfigMap", src.config_map.name)
        if corpus is None:
            raise SpecError(index.ref(), [Problem("spec.source.configMap.name",
                                                  f"ConfigMap {src.config_map.name} is not in the file")])
        local_index = LocalIndex(index=index, corpus=corpus,
                                 db_path=run_dir / "index" / f"{index.collection}.db")

    budget: Budget | None = related.get(("Budget", app.spec.budget_ref.name)) if app.spec.budget_ref else None  # type: ignore[assignment]
    keys_file = run_dir / "keys.yaml"
    cfg = render.runtime_config(app, fleets=fleets, index=index, budget=budget, fleet_urls=urls,
                                keys_file=str(keys_file))
    if cfg.index is not None and local_index is not None:
        cfg = cfg.model_copy(update={"index": cfg.index.model_copy(update={"uri": str(local_index.db_path)})})
    cfg = cfg.model_copy(update={"ledger": cfg.ledger.model_copy(update={"backend": "sqlite"})})
    return UpPlan(run_dir=run_dir, app=app, engine=engine, external=external, index=local_index,
                  keys_yaml=keys_yaml, keys_file=keys_file, runtime=cfg, runtime_port=runtime_port,
                  config_file=run_dir / "runtime.yaml", a2a_keys=a2a_keys)
