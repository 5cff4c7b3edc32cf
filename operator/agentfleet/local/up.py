"""`agentfleet up -f FILE`: the same YAML as local processes on one machine, no cluster. The plan (plan.py) is
decided first; then this supervisor writes the run directory (the key store, the runtime configuration, and each
remote A2A sub-agent's key where the runtime reads it, as a cluster mounts its Secret), starts the vLLM engine
(minutes on a CPU), ingests the VectorIndex's corpus into milvus-lite meanwhile with the very command its
Kubernetes Job runs, starts the runtime once both are ready, prints how to talk to it, and on Ctrl-C (or any
process dying) stops everything, newest first."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from .. import render
from ..ingest.corpus import materialise_configmap
from ..names import A2A_KEY_FILE, A2A_KEYS_DIR_ENV
from .plan import UpPlan

__all__ = ["run_up", "ingest_command", "UpFailed", "wait_http", "write_run_dir", "runtime_env"]


class UpFailed(RuntimeError):
    """A process did not start or died; the message names it and the tail of its log."""


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def ingest_command(plan: UpPlan, source_dir: Path) -> list[str]:
    """The VectorIndex Job's own argv (render.ingest_job), pointed at local paths: one code path for both."""
    assert plan.index is not None
    job = render.ingest_job(plan.index.index, render.Defaults())
    args = list(job["spec"]["template"]["spec"]["containers"][0]["args"])
    for flag, value in (("--source", str(source_dir)), ("--index", str(plan.index.db_path)), ("--workers", "1")):
        args[args.index(flag) + 1] = value
    return [sys.executable, "-m", "agentfleet.cli", "ingest", *args]


def wait_http(url: str, *, timeout_s: float, proc: subprocess.Popen[bytes], log_path: Path, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UpFailed(f"{what} exited with {proc.returncode}; last lines of {log_path}:\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:  # noqa: S310 - our own 127.0.0.1 process
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise UpFailed(f"{what} did not answer {url} within {timeout_s:.0f}s; last lines of {log_path}:\n"
                   f"{_tail(log_path)}")


def _spawn(cmd: list[str], log_path: Path, *, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    if proc.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def write_run_dir(plan: UpPlan) -> None:
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    (plan.run_dir / "logs").mkdir(exist_ok=True)
    plan.keys_file.write_text(plan.keys_yaml)
    plan.keys_file.chmod(0o600)  # API keys
    plan.config_file.write_text(yaml.safe_dump(plan.runtime.wire(), sort_keys=True))
    # This app's keys at its remote A2A sub-agents, laid out as render mounts their Secrets; rewritten whole, so
    # a sub-agent removed from the file leaves no key behind.
    shutil.rmtree(plan.a2a_keys_dir, ignore_errors=True)
    if plan.a2a_keys:
        plan.a2a_keys_dir.mkdir(mode=0o700)
    for name, key in plan.a2a_keys.items():
        path = plan.a2a_keys_dir / name / A2A_KEY_FILE
        path.parent.mkdir(mode=0o700)
        path.touch(mode=0o600)  # API keys, as keys.yaml
        path.write_text(key + "\n")


def runtime_env(plan: UpPlan, base: dict[str, str]) -> dict[str, str]:
    """The runtime process's environment: `base` (this process's), its state directory, and where it finds the
    a2a sub-agents' keys when the app has any."""
    env = {**base, "AGENTFLEET_STATE_DIR": str(plan.run_dir / "state")}
    if plan.a2a_keys:
        env[A2A_KEYS_DIR_ENV] = str(plan.a2a_keys_dir)
    return env


def run_up(plan: UpPlan, *, say: Callable[[str], None] = print, stop: threading.Event | None = None,
           engine_timeout_s: float = 900.0, runtime_timeout_s: float = 120.0,
           on_ready: Callable[[UpPlan], None] | None = None) -> int:
    """Start everything, block until `stop` is set (Ctrl-C sets it) or a process dies, then stop everything.
    Returns 0 after a requested stop, 1 when something failed."""
    from . import engine as eng

    stop = stop or threading.Event()
    busy = [f"{what} port {port}" for what, port in (("engine", plan.engine.port if plan.engine else None),
                                                        ("runtime", plan.runtime_port))
            if port is not None and not _port_is_free(port)]
    if busy:
        say(f"error: {' and '.join(busy)} already in use on 127.0.0.1 (choose others with --engine-port/--port)")
        return 1
    write_run_dir(plan)
    logs = plan.run_dir / "logs"
    engine: Any = None
    procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
    try:
        for line in plan.describe():
            say(f"    {line}")
        if plan.engine is not None:
            say("==> preparing the local model (cached after the first run)")
            model_dir = eng.prepare_model(log=say)
            say(f"==> starting vLLM on CPU at {plan.engine.base_url} (takes minutes on 2 cores)")
            engine = eng.start_engine(model_dir, port=plan.engine.port, served_model_name=plan.engine.served_names,
                                      log_path=logs / "engine.log")
        if plan.index is not None:
            source = plan.run_dir / "corpus"
            materialise_configmap(plan.index.corpus, source)
            say(f"==> ingesting {plan.index.index.name} into {plan.index.db_path}")
            plan.index.db_path.parent.mkdir(parents=True, exist_ok=True)
            log_path = logs / "ingest.log"
            proc = _spawn(ingest_command(plan, source), log_path)
            if proc.wait() != 0:
                raise UpFailed(f"ingestion failed ({proc.returncode}); last lines of {log_path}:\n{_tail(log_path)}")
            say(f"    {_tail(log_path, 1)}")
        if engine is not None:
            engine.wait_ready(engine_timeout_s, log=say)
        say(f"==> starting the runtime at http://127.0.0.1:{plan.runtime_port}")
        log_path = logs / "runtime.log"
        env = runtime_env(plan, dict(os.environ))
        runtime = _spawn([sys.executable, "-m", "agentfleet.cli", "serve", "--config", str(plan.config_file),
                          "--host", "127.0.0.1", "--port", str(plan.runtime_port),
                          "--state-dir", str(plan.run_dir / "state")], log_path, env=env)
        procs.append(("runtime", runtime, log_path))
        wait_http(f"http://127.0.0.1:{plan.runtime_port}/readyz?upstreams=1", timeout_s=runtime_timeout_s, proc=runtime,
                   log_path=log_path, what="the runtime")
        key = next(iter(yaml.safe_load(plan.keys_yaml) or {}), "KEY")
        say("")
        say(f"agentfleet is up: {plan.app.name} at http://127.0.0.1:{plan.runtime_port}/v1 (logs in {logs})")
        say(f"  agentfleet ask \"How many vacation days do I get?\" --key {key}")
        say(f"  curl -s http://127.0.0.1:{plan.runtime_port}/v1/chat/completions -H 'Authorization: Bearer {key}' "
            "-H 'Content-Type: application/json' -d '{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}'")
        say(f"  open http://127.0.0.1:{plan.runtime_port}/ in a browser; Ctrl-C stops everything")
        if on_ready:
            on_ready(plan)
        while not stop.wait(1.0):
            for name, proc, path in procs:
                if proc.poll() is not None:
                    raise UpFailed(f"{name} exited with {proc.returncode}; last lines of {path}:\n{_tail(path)}")
            if engine is not None and not engine.is_running():
                raise UpFailed(f"the engine exited; last lines of {engine.log_path}:\n{_tail(engine.log_path)}")
        say("==> stopping")
        return 0
    except (UpFailed, eng.EngineFailed, eng.EngineNotInstalled) as err:
        say(f"error: {err}")
        return 1
    finally:
        for _, proc, _ in reversed(procs):
            _stop(proc)
        if engine is not None:
            engine.stop()
