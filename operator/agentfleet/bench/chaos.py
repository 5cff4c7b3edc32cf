"""`agentfleet bench chaos`: durable runs under faults, against real processes on 127.0.0.1. A redis-server (append
only, fsync always, so a restart loses nothing), three llm-d-inference-sim engines (echo mode) behind
`agentfleet router`, an MCP server whose one tool `record(key)` appends every call to a file, two `agentfleet serve`
replicas sharing one runtime.yaml (Redis ledger, a Budget with a cost limit) and a connection-level round-robin TCP
load balancer standing in for the Kubernetes Service (it skips a backend that refuses connections, as kube-proxy
does with readiness). The same workload runs twice: fault-free (the baseline), then while one replica is killed
with SIGKILL, one engine is killed and Redis is stopped and restarted. A run is an agentic task of `--calls` model
calls (10 to 30 by default, drawn per run, the same draws in both phases): its input is the JSON action that makes
the echoing model call `record` with the run's first step key, and each record() answers with the next step's call
(the last with the final answer), so every step's key is unique and a tool call that runs twice shows in the file.
Afterwards: runs lost, tool calls duplicated, overspend, reservations left, spent against the runs' reported
costs, and task p95 with faults over fault-free."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["add_bench_parsers", "run", "missing", "LoadBalancer", "Stack", "TERMINAL"]

KEY = "chaos-key-00000001"  # the API key every run is sent with (one principal: runs are owner-checked)
MCP_SERVER = "rec"
TOOL = f"{MCP_SERVER}__record"  # mcp_tools names a server's tool <server>__<tool>
TERMINAL = ("completed", "incomplete", "failed", "cancelled")
TARGET_P95_RATIO = 1.5
COST_LIMIT_USD = 5.0
PRICE_PER_M_USD = (1.0, 2.0)  # input, output
_REPO = Path(__file__).resolve().parents[3]
REDIS_INSTALLER = _REPO / "e2e" / "redis" / "install.sh"


# --- what is needed ---------------------------------------------------------------------------------------------

def redis_binary(*, install: bool = False) -> str | None:
    """redis-server on PATH; with `install`, Debian's package via e2e/redis/install.sh when it is missing."""
    found = shutil.which("redis-server")
    if found or not install or not REDIS_INSTALLER.exists():
        return found
    proc = subprocess.run(["bash", str(REDIS_INSTALLER)], capture_output=True, text=True, timeout=600)
    lines = proc.stdout.strip().splitlines()
    return lines[-1] if proc.returncode == 0 and lines else None


def missing(*, install: bool = False) -> str | None:
    """Why this bench cannot run here (None when it can): the simulator binary (or Go to build it) and redis-server."""
    from . import simulator

    if not simulator.binary(build=False).exists():
        if os.environ.get("AGENTFLEET_SIM_BIN"):
            return f"$AGENTFLEET_SIM_BIN names no file: {os.environ['AGENTFLEET_SIM_BIN']}"
        if not (shutil.which("go") and simulator.BUILD_SCRIPT.exists()):
            return (f"llm-d-inference-sim {simulator.SIM_VERSION} is not built and Go is not installed "
                    f"(e2e/sim/build.sh)")
    if redis_binary(install=install) is None:
        return f"redis-server is not installed ({REDIS_INSTALLER.relative_to(_REPO)} installs Debian's package)"
    return None


# --- the workload's shape --------------------------------------------------------------------------------------

def calls_range(text: str) -> tuple[int, int]:
    """"10-30" or "4": model calls per run, at least 2 (one tool call, then the answer)."""
    lo, sep, hi = str(text).partition("-")
    try:
        a, b = int(lo), int(hi if sep else lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--calls takes N or MIN-MAX model calls per run, not {text!r}") from None
    if not 2 <= a <= b <= 200:
        raise argparse.ArgumentTypeError(f"--calls {text}: need 2 <= MIN <= MAX <= 200 (a run is at least one tool "
                                         "call and the answer)")
    return a, b


def run_limits(max_calls: int) -> dict[str, Any]:
    """The AgentApp's loop limits, roomy enough that the longest run ends by its own answer: maxSteps counts
    model calls, each call resends the growing history (~300 + 60 tokens a step), ~2 s a step under faults."""
    return {"maxSteps": max_calls + 2, "maxTokens": 8000 + 4000 * max_calls,
            "deadlineSeconds": max(45, 4 * max_calls + 15), "toolTimeoutSeconds": 10}


def cost_limit_usd(max_calls: int) -> float:
    """A Budget limit no fault-free workload reaches (spent <= limit is an invariant; hitting it is not the test)."""
    return COST_LIMIT_USD * max(1, max_calls)


# --- processes --------------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes] | None, *, timeout_s: float = 10) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _kill9(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _wait_http(url: str, proc: subprocess.Popen[bytes], what: str, log: Path, *, deadline_s: float = 60,
               ok: tuple[int, ...] = (200,)) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status in ok:
                    return
        except urllib.error.HTTPError as e:
            if e.code in ok:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} did not answer {url} within {deadline_s:g}s: {_tail(log)}")


def _tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


@dataclass
class RedisServer:
    """A real redis-server that can be killed and started again on the same port and data directory."""

    binary: str
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, deadline_s: float = 20) -> None:
        log = self.workdir / "redis.log"
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.workdir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--protected-mode", "yes",
             "--logfile", str(log)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:  # readiness: a PING answered (after the AOF is loaded)
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {_tail(log)}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.5) as s:
                s.settimeout(0.5)
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise TimeoutError(f"redis-server did not answer PING on {self.port}: {_tail(log)}")

    def kill(self) -> None:
        _kill9(self.proc)

    def stop(self) -> None:
        _stop(self.proc)


# --- the MCP tool whose calls are counted -----------------------------------------------------------------------

def serve_record(port: int, log_path: str, delay_s: float) -> None:
    """The MCP server (official `mcp` SDK, streamable HTTP): `record(key)` appends {"key", "t"} to `log_path`
    (fsynced, before it answers), then waits `delay_s` so a replica killed mid-call leaves it interrupted."""
    from mcp.server.mcpserver import MCPServer

    app = MCPServer("record")

    def append(line: str) -> None:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    @app.tool()
    async def record(key: str) -> str:
        """Record that the work named `key` was done (not idempotent: every call is one more record)."""
        await asyncio.to_thread(append, json.dumps({"key": key, "t": time.time()}))
        await asyncio.sleep(delay_s)
        # The echoing model answers with the last message: this observation is the run's next call, and after
        # its last one a sentence, which the model repeats as the answer (N tool calls, N + 1 model calls).
        nxt = next_step(key)
        if nxt is not None:
            return action_input(nxt)
        return json.dumps({"action": "final_answer", "answer": f"All {step_of(key)[1]} records of {run_key(key)} "
                                                                "are done."})

    app.run("streamable-http", host="127.0.0.1", port=port)


def step_key(run: str, n: int, of: int) -> str:
    """The key a run's n-th record() call carries (of `of`): unique per step, so a step run twice shows."""
    return f"{run}#{n}/{of}"


def run_key(key: str) -> str:
    return key.split("#", 1)[0]


def step_of(key: str) -> tuple[int, int]:
    try:
        n, of = key.split("#", 1)[1].split("/", 1)
        return int(n), int(of)
    except (IndexError, ValueError):
        return 1, 1


def next_step(key: str) -> str | None:
    n, of = step_of(key)
    return step_key(run_key(key), n + 1, of) if n < of else None


def read_records(path: Path) -> Counter[str]:
    calls: Counter[str] = Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError):
                calls[json.loads(line)["key"]] += 1
    return calls


# --- the Service: connection-level round robin ------------------------------------------------------------------

class LoadBalancer:
    """TCP proxy, one backend per client connection (kube-proxy's unit), round robin from a random start: strict
    round robin aliased with the client's regular polling (measured: one client's GETs reached the same replica
    124 times in a row), kube-proxy's iptables mode picks at random. A backend that refuses or does not accept
    within `connect_timeout_s` is skipped for this connection; when all do, the client's connection is closed (it
    sees a connection error and retries)."""

    def __init__(self, backends: list[tuple[str, int]], *, connect_timeout_s: float = 1.0, seed: int = 7):
        import random

        self.backends = list(backends)
        self.connect_timeout_s = connect_timeout_s
        self.skipped = 0
        self.refused_all = 0
        self._rng = random.Random(seed)
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        start = self._rng.randrange(len(self.backends))
        for i in range(len(self.backends)):
            host, port = self.backends[(start + i) % len(self.backends)]
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection(host, port), self.connect_timeout_s)
                break
            except (OSError, asyncio.TimeoutError):
                self.skipped += 1
        if upstream is None:
            self.refused_all += 1
            writer.close()
            return
        ureader, uwriter = upstream

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()

        tasks = [asyncio.ensure_future(pipe(reader, uwriter)), asyncio.ensure_future(pipe(ureader, writer))]
        try:
            # Either side closing ends the connection: HTTP clients do not half-close, and a killed backend's
            # reset must reach the client as a broken connection, not a hang.
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            for w in (uwriter, writer):
                with contextlib.suppress(Exception):
                    w.close()


# --- the stack --------------------------------------------------------------------------------------------------

@dataclass
class Stack:
    """Every process of the bench; `stop()` ends whatever was started."""

    workdir: Path
    lease_s: float
    max_calls: int = 4  # model calls of the longest run: the loop's limits are sized from it
    redis: RedisServer | None = None
    sims: Any = None
    router: subprocess.Popen[bytes] | None = None
    router_url: str = ""
    mcp: subprocess.Popen[bytes] | None = None
    mcp_url: str = ""
    records: Path = Path()
    config: Path = Path()
    replicas: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    replica_ports: dict[str, int] = field(default_factory=dict)

    def _log(self, name: str) -> Any:
        return open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child holds it; closed at exit

    def start(self, *, inter_token_ms: float, ttft_ms: float, tool_delay_s: float) -> None:
        from . import simulator

        redis_bin = redis_binary(install=True)
        if redis_bin is None:
            raise RuntimeError("redis-server is not installed")
        (self.workdir / "redis").mkdir(exist_ok=True)
        self.redis = RedisServer(redis_bin, _free_port(), self.workdir / "redis")
        self.redis.start()

        # Echo mode answers with the last user message: the run's JSON action. Per-token prefill and decode
        # timing make one model call last ~0.5-1 s, so a run lasts a few seconds and faults land mid-run.
        settings = simulator.SimSettings(prefill_ms_per_token=0.2, inter_token_ms=inter_token_ms, max_num_seqs=64,
                                         extra=("--mode", "echo", "--time-to-first-token", f"{ttft_ms:g}ms"))
        self.sims = simulator.start(3, settings, log_dir=self.workdir)

        port = _free_port()
        endpoints = ",".join(f"sim-{i}={u}" for i, u in enumerate(self.sims.urls))
        log = self.workdir / "router.log"
        self.router = subprocess.Popen(
            [sys.executable, "-m", "agentfleet.cli", "router", "--endpoints", endpoints, "--host", "127.0.0.1",
             "--port", str(port), "--health-interval", "1"], stdout=self._log("router"), stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        self.router_url = f"http://127.0.0.1:{port}"

        port = _free_port()
        self.records = self.workdir / "records.jsonl"
        self.mcp = subprocess.Popen(
            [sys.executable, "-m", "agentfleet.bench.chaos", "record-server", "--port", str(port), "--log",
             str(self.records), "--delay-s", f"{tool_delay_s:g}"], stdout=self._log("mcp"),
            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        self.mcp_url = f"http://127.0.0.1:{port}/mcp"
        _wait_http(self.router_url + "/readyz?upstreams=1", self.router, "agentfleet router", self.workdir / "router.log")
        # A plain GET is not an MCP request: any HTTP answer means it listens.
        _wait_http(self.mcp_url, self.mcp, "the MCP record server", self.workdir / "mcp.log",
                   ok=tuple(range(200, 600)))

        self.config = self.write_config()
        for name in ("rt-0", "rt-1"):
            self.start_replica(name)
        for name, proc in self.replicas.items():
            _wait_http(f"http://127.0.0.1:{self.replica_ports[name]}/readyz?upstreams=1", proc, f"runtime replica {name}",
                       self.workdir / f"{name}.log")

    def write_config(self) -> Path:
        import yaml

        from ..api import parse
        from ..render.agentapp import runtime_config

        def res(kind: str, name: str, spec: dict[str, Any]) -> Any:
            return parse({"apiVersion": "agentfleet.io/v1alpha1", "kind": kind,
                          "metadata": {"name": name, "namespace": "chaos"}, "spec": spec})

        assert self.redis is not None
        app = res("AgentApp", "chaos", {
            "fleets": {"large": "sim"}, "budgetRef": {"name": "chaos"},
            "tools": {"builtin": ["calculator"], "mcpServers": [{"name": MCP_SERVER, "url": self.mcp_url}]},
            "auth": {"apiKeysSecretRef": {"name": "k", "key": "keys.yaml"}},
            "ledger": {"backend": "redis", "redisUrl": self.redis.url},
            "limits": run_limits(self.max_calls)})
        fleet = res("ModelFleet", "sim", {"model": {"uri": "hf://bench/sim", "servedModelName": "sim-model"}})
        budget = res("Budget", "chaos", {"window": "day", "limits": {"costUsd": cost_limit_usd(self.max_calls)},
                                         "prices": [{"model": "sim", "inputPerMTokensUsd": PRICE_PER_M_USD[0],
                                                     "outputPerMTokensUsd": PRICE_PER_M_USD[1]}]})
        (self.workdir / "keys.yaml").write_text(yaml.safe_dump({KEY: {"user": "chaos", "tenant": "chaos",
                                                                      "groups": []}}))
        cfg = runtime_config(app, fleets={"sim": fleet}, index=None, budget=budget,
                             fleet_urls={"sim": self.router_url + "/v1"}, keys_file=str(self.workdir / "keys.yaml"))
        path = self.workdir / "runtime.yaml"
        path.write_text(yaml.safe_dump(cfg.wire()))
        return path

    def start_replica(self, name: str) -> None:
        assert self.redis is not None
        port = self.replica_ports.setdefault(name, _free_port())
        state = self.workdir / name
        state.mkdir(exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "AGENTFLEET_REPLICA": name,
               "AGENTFLEET_RUN_LEASE_S": f"{self.lease_s:g}", "AGENTFLEET_REDIS_URL": self.redis.url}
        self.replicas[name] = subprocess.Popen(
            [sys.executable, "-m", "agentfleet.cli", "serve", "--config", str(self.config), "--host", "127.0.0.1",
             "--port", str(port), "--state-dir", str(state)], stdout=self._log(name), stderr=subprocess.STDOUT,
            env=env, start_new_session=True)

    def ledger_usage(self, task_ids: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
        """The Budget's window read straight from the shared Redis, through the runtime's own ledger wiring; with
        `task_ids`, also each task's own spend (diagnostics: which run the ledger charged differently)."""
        import yaml

        from ..api.runtime_config import RuntimeConfig
        from ..ledger import Account
        from ..runtime.serving import Runtime

        cfg = RuntimeConfig.model_validate(yaml.safe_load(self.config.read_text()))
        assert cfg.budget is not None
        ledger = Runtime.open_ledger(cfg, state_dir=self.workdir)
        assert ledger is not None
        account = Account.for_budget(cfg.namespace, cfg.budget.name, cfg.budget.spec)
        try:
            usage = ledger.usage(account, now=dt.datetime.now(dt.timezone.utc))
            per_task = _task_spend(ledger, account.key, list(task_ids)) if task_ids else {}
        finally:
            ledger.close()
        return {"spent_micro_usd": usage.spent.micro_usd, "spent_tokens": usage.spent.tokens,
                "reserved_micro_usd": usage.reserved.micro_usd, "reserved_tokens": usage.reserved.tokens,
                "limit_micro_usd": usage.limits.micro_usd, "task_spent_micro_usd": per_task}

    def stop(self) -> None:
        for proc in self.replicas.values():
            _stop(proc)
        _stop(self.mcp)
        _stop(self.router)
        if self.sims is not None:
            self.sims.stop()
        if self.redis is not None:
            self.redis.stop()


def _task_spend(ledger: Any, account_key: str, task_ids: list[str]) -> dict[str, int]:
    """Each task's spend bucket (micro-USD) as the ledger keeps it; empty when the ledger's layout is not the one
    this reads (it names a private key, so it is a diagnostic, never an invariant)."""
    try:
        from ..ledger.book import _task_key
        from ..ledger.money import Amount
    except ImportError:
        return {}

    def fn(txn: Any) -> dict[str, int]:
        out = {}
        for t in task_ids:
            raw = txn.get(_task_key(account_key, t))
            if raw is not None:
                out[t] = Amount.from_wire(raw["spent"]).micro_usd
        return out

    try:
        return ledger.store.transact(fn, now_s=time.time())  # type: ignore[no-any-return]
    except Exception:  # noqa: BLE001 - diagnostics only
        return {}


# --- the client ---------------------------------------------------------------------------------------------------

@dataclass
class RunTrace:
    key: str
    phase: str
    started_s: float = 0.0
    ended_s: float | None = None
    ids: list[str] = field(default_factory=list)  # every run id the POSTs returned (one, when idempotent)
    post_statuses: list[int | str] = field(default_factory=list)
    last: dict[str, Any] | None = None  # the last run object read
    last_http: int | str | None = None
    not_found: int = 0  # GETs answered 404 (another replica did not know the run)
    rejected: dict[str, Any] | None = None  # a POST refused for good (4xx other than 429)
    repost: bool = False  # send the POST again once it succeeded, as a client whose response was lost does
    tool_calls: int = 1  # record() calls the run makes, one per step: it makes tool_calls + 1 model calls

    @property
    def input(self) -> str:
        return action_input(step_key(self.key, 1, self.tool_calls))

    @property
    def seconds(self) -> float | None:
        return None if self.ended_s is None else self.ended_s - self.started_s


@dataclass
class HttpStats:
    conn_errors: int = 0
    status: Counter[str] = field(default_factory=Counter)
    unavailable_with_retry_after: int = 0
    unavailable_without_retry_after: int = 0
    post_retries: int = 0

    def wire(self) -> dict[str, Any]:
        return {"connection_errors": self.conn_errors, "status": dict(sorted(self.status.items())),
                "503_with_retry_after": self.unavailable_with_retry_after,
                "503_without_retry_after": self.unavailable_without_retry_after, "post_retries": self.post_retries}


class Client:
    """What a well-behaved API client does: POST with an Idempotency-Key and retry it on a connection error,
    a 503 (after its Retry-After, capped) or a 429; retry GETs the same way."""

    RETRY_CAP_S = 2.0

    def __init__(self, session: Any, base: str, stats: HttpStats):
        self.session, self.base, self.stats = session, base, stats
        self.auth = {"Authorization": f"Bearer {KEY}"}

    async def call(self, method: str, path: str, *, body: Any = None, headers: dict[str, str] | None = None,
                   deadline: float) -> tuple[int | str, Any]:
        """(status, JSON body) of the first answer that is not a retryable failure, or ("timeout", None)."""
        import aiohttp

        attempt = 0
        while time.monotonic() < deadline:
            attempt += 1
            if attempt > 1 and method == "POST":
                self.stats.post_retries += 1
            try:
                async with self.session.request(method, self.base + path, json=body,
                                                headers={**self.auth, **(headers or {})}) as r:
                    text = await r.text()
                    self.stats.status[str(r.status)] += 1
                    retry_after = r.headers.get("Retry-After")
                    if r.status == 503:
                        if retry_after is None:
                            self.stats.unavailable_without_retry_after += 1
                        else:
                            self.stats.unavailable_with_retry_after += 1
                    if r.status in (429, 502, 503, 504):
                        await asyncio.sleep(min(_seconds(retry_after, 0.2), self.RETRY_CAP_S))
                        continue
                    try:
                        return r.status, json.loads(text)
                    except ValueError:
                        return r.status, text
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                self.stats.conn_errors += 1
                await asyncio.sleep(0.1)
        return "timeout", None


def _seconds(value: str | None, default: float) -> float:
    try:
        return max(float(value), 0.05) if value is not None else default
    except ValueError:
        return default


def action_input(key: str) -> str:
    return json.dumps({"action": TOOL, "arguments": {"key": key}})


async def drive(base: str, traces: list[RunTrace], *, concurrency: int, poll_s: float, run_timeout_s: float,
                stats: HttpStats) -> float:
    """Send every run (at most `concurrency` in flight), poll each to a terminal status; returns the wall time."""
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=15, sock_connect=2)
    # force_close: one request per connection, so the connection-level balancer spreads requests over replicas
    # (and a GET for a run lands on a replica other than its owner about half the time).
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(force_close=True, limit=0)) as session:
        client = Client(session, base, stats)
        queue: asyncio.Queue[RunTrace] = asyncio.Queue()
        for t in traces:
            queue.put_nowait(t)

        async def one(t: RunTrace) -> None:
            t.started_s = time.monotonic()
            deadline = t.started_s + run_timeout_s
            run_id = None
            while run_id is None and time.monotonic() < deadline:
                status, body = await client.call("POST", "/v1/runs", body={"input": t.input},
                                                 headers={"Idempotency-Key": t.key}, deadline=deadline)
                t.post_statuses.append(status)
                if status in (200, 202) and isinstance(body, dict) and body.get("id"):
                    run_id = body["id"]
                    t.ids.append(run_id)
                    t.last = body
                elif isinstance(status, int):
                    t.rejected = {"http": status, "body": body}
                    t.ended_s = time.monotonic()
                    return
            if run_id is not None and t.repost:
                # The client whose response was lost: the same POST again must name the same run (200), on
                # whichever replica the balancer picks.
                status, body = await client.call("POST", "/v1/runs", body={"input": t.input},
                                                 headers={"Idempotency-Key": t.key}, deadline=deadline)
                t.post_statuses.append(status)
                if isinstance(body, dict) and body.get("id"):
                    t.ids.append(body["id"])
            while run_id is not None and time.monotonic() < deadline:
                if t.last and t.last.get("status") in TERMINAL:
                    t.ended_s = time.monotonic()
                    return
                await asyncio.sleep(poll_s)
                status, body = await client.call("GET", f"/v1/runs/{run_id}", deadline=deadline)
                if status != "timeout":
                    t.last_http = status
                if status == 200 and isinstance(body, dict):
                    t.last = body
                elif status == 404:
                    t.not_found += 1

        async def worker() -> None:
            while not queue.empty():
                await one(queue.get_nowait())

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.monotonic() - t0


async def fetch_events(base: str, run_id: str, *, timeout_s: float = 3.0) -> list[Any] | str:
    """The run's events from the start (SSE), as far as they come within `timeout_s`."""
    import aiohttp

    out: list[Any] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as s:
            async with s.get(f"{base}/v1/runs/{run_id}/events?after=0",
                             headers={"Authorization": f"Bearer {KEY}"}) as r:
                if r.status != 200:
                    return f"HTTP {r.status}: {(await r.text())[:300]}"
                async for raw in r.content:
                    line = raw.decode(errors="replace").strip()
                    if line.startswith("data:"):
                        data = line[5:].strip()
                        with contextlib.suppress(ValueError):
                            data = json.loads(data)
                        out.append(data)
    except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as e:
        out.append(f"(stream ended: {type(e).__name__})")
    return out


# --- the two phases -------------------------------------------------------------------------------------------------

def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


async def _mid_tool_call(stack: Stack, traces: list[RunTrace], replica: str, within_s: float) -> str | None:
    """Wait (at most `within_s`) until `replica` is inside a record() call: a step key the MCP server has just
    recorded whose run that replica holds. The step's key, or None when none came."""
    by_key = {t.key: t for t in traces}
    try:
        offset = stack.records.stat().st_size
    except OSError:
        offset = 0
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        await asyncio.sleep(0.02)
        try:
            with open(stack.records, "rb") as f:
                f.seek(offset)
                fresh = f.read()
        except OSError:
            continue
        complete = fresh[: fresh.rfind(b"\n") + 1]
        offset += len(complete)
        for line in complete.splitlines():
            with contextlib.suppress(ValueError, KeyError):
                key = json.loads(line)["key"]
                t = by_key.get(run_key(key))
                if t is not None and (t.last or {}).get("replica") == replica:
                    return str(key)
    return None


async def _faults(stack: Stack, plan: list[tuple[float, str]], t0: float, log: list[dict[str, Any]],
                  redis_down_s: float, traces: list[RunTrace]) -> None:
    """Apply each (seconds after t0, fault) in order; blocking process calls run in a thread. The replica is
    killed while it is inside a tool call when one comes within 4 s of the planned time, so the takeover meets
    an interrupted, non-idempotent call."""
    killed_at = None
    for at, what in plan:
        if what == "restart redis" and killed_at is not None:
            # Not while the takeover is due: an outage on top of the lease measures the two faults at once.
            at = max(at, killed_at - t0 + stack.lease_s + 2.0)
        elif what == "kill engine sim-2" and killed_at is not None:
            at = max(at, killed_at - t0 + 1.0)  # the replica's kill may have waited for a tool call
        await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
        started = time.monotonic()
        extra: dict[str, Any] = {}
        if what == "kill -9 replica rt-1":
            extra["mid_tool_call"] = await _mid_tool_call(stack, traces, "rt-1", 4.0)
            # As the client last saw them (it polls every run): how many runs the kill leaves to a takeover.
            extra["runs_there"] = sum(1 for t in traces if (t.last or {}).get("replica") == "rt-1"
                                      and (t.last or {}).get("status") not in TERMINAL)
            started = killed_at = time.monotonic()
            await asyncio.to_thread(_kill9, stack.replicas["rt-1"])
        elif what == "kill engine sim-2":
            await asyncio.to_thread(_kill9, stack.sims.procs[2])
        elif what == "restart redis":
            assert stack.redis is not None
            await asyncio.to_thread(stack.redis.kill)
            await asyncio.sleep(redis_down_s)
            await asyncio.to_thread(stack.redis.start)
        log.append({"fault": what, "at_s": round(started - t0, 2), "took_s": round(time.monotonic() - started, 2),
                    **extra})


async def _phase(stack: Stack, lb_url: str, phase: str, args: argparse.Namespace,
                 plan: list[tuple[float, str]] | None) -> dict[str, Any]:
    lo, hi = args.calls
    rng = random.Random(args.seed)  # both phases draw the same lengths in the same order
    traces = [RunTrace(f"{phase}-{i:03d}", phase, repost=i % 4 == 0, tool_calls=rng.randint(lo, hi) - 1)
              for i in range(args.runs)]
    stats = HttpStats()
    faults: list[dict[str, Any]] = []
    t0 = time.monotonic()
    fault_task = (asyncio.ensure_future(_faults(stack, plan, t0, faults, args.redis_down_s, traces))
                  if plan else None)
    wall = await drive(lb_url, traces, concurrency=args.concurrency, poll_s=args.poll_s,
                       run_timeout_s=args.run_timeout_s, stats=stats)
    if fault_task is not None:
        await fault_task
    return {"traces": traces, "stats": stats, "faults": faults, "wall_s": wall, "t0": t0}


def _brief_step(s: dict[str, Any], *, cost: bool = False) -> dict[str, Any]:
    keys = ("n", "kind", "action", "error", "replica") + (("prompt_tokens", "completion_tokens", "cost_usd", "model")
                                                          if cost else ("arguments", "observation"))
    return {k: s.get(k) for k in keys if s.get(k) is not None}


def check(phases: dict[str, dict[str, Any]], records: Any, usage: dict[str, Any]) -> dict[str, Any]:
    """The invariants over every run of every phase; `problems` names each violation's run, step and state."""
    problems: list[dict[str, Any]] = []
    lost: list[str] = []
    statuses: Counter[str] = Counter()
    stop_reasons: Counter[str] = Counter()
    cost_micro = 0
    interrupted = 0
    takeovers = 0
    not_found = 0
    not_completed: list[dict[str, Any]] = []
    for phase in phases.values():
        for t in phase["traces"]:
            run = t.last or {}
            status = run.get("status")
            not_found += t.not_found
            if t.rejected is not None:
                statuses["rejected"] += 1
                http = t.rejected["http"]
                not_completed.append({"key": t.key, "status": f"rejected {http}",
                                      "reason": _reason(t.rejected.get("body"))})
                if http >= 500 or not _reason(t.rejected.get("body")):
                    # A refusal is fine when it says why (429 budget_exhausted); a 5xx other than 503 means the
                    # client cannot know whether to retry, and 503s are retried, so they never end up here.
                    problems.append({"invariant": "stated_reason" if http < 500 else "rejected_5xx",
                                     "key": t.key, "http": http, "body": t.rejected["body"]})
                continue
            if len(set(t.ids)) > 1:
                problems.append({"invariant": "idempotency", "key": t.key, "run_ids": sorted(set(t.ids)),
                                 "detail": "retries of one Idempotency-Key created more than one run"})
            elif t.repost and (len(t.post_statuses) < 2 or t.post_statuses[-1] != 200):
                problems.append({"invariant": "idempotency", "key": t.key, "post_statuses": t.post_statuses,
                                 "detail": "the same POST again did not answer 200 with the same run"})
            if status not in TERMINAL:
                lost.append(t.key)
                statuses["lost"] += 1
                problems.append({"invariant": "lost", "key": t.key, "run_id": run.get("id"),
                                 "last_status": status, "last_http": t.last_http, "gets_404": t.not_found,
                                 "replica": run.get("replica"), "takeovers": run.get("takeovers"),
                                 "steps": [_brief_step(s) for s in run.get("steps") or []]})
                continue
            statuses[status] += 1
            summary = run.get("agentfleet") or {}
            if status != "completed":
                not_completed.append({"key": t.key, "run_id": run.get("id"), "status": status,
                                      "reason": summary.get("stop_reason") or _reason(run),
                                      "detail": summary.get("detail")})
            stop_reasons[str(summary.get("stop_reason"))] += 1
            run_micro = round(float(summary.get("cost_usd") or 0) * 1e6)
            cost_micro += run_micro
            takeovers += int(run.get("takeovers") or 0)
            steps = run.get("steps") or []
            steps_micro = sum(round(float(st.get("cost_usd") or 0) * 1e6) for st in steps)
            ledger_micro = usage.get("task_spent_micro_usd", {}).get(str(summary.get("task_id")))
            if (ledger_micro is not None and ledger_micro != run_micro) or steps_micro != run_micro:
                problems.append({"invariant": "run_cost_mismatch", "key": t.key, "run_id": run.get("id"),
                                 "task_id": summary.get("task_id"), "run_cost_usd": run_micro / 1e6,
                                 "steps_cost_usd": steps_micro / 1e6,
                                 "ledger_task_spent_usd": None if ledger_micro is None else ledger_micro / 1e6,
                                 "replica": run.get("replica"), "takeovers": run.get("takeovers"),
                                 "steps": [_brief_step(st, cost=True) for st in steps]})
            interrupted += sum(1 for s in steps if "interrupt" in str(s.get("error") or "").lower())
            err = run.get("error") if isinstance(run.get("error"), dict) else {}
            if status != "completed" and not (summary.get("stop_reason") or _reason(run)):
                problems.append({"invariant": "stated_reason", "key": t.key, "run_id": run.get("id"),
                                 "status": status, "steps": [_brief_step(s) for s in steps]})
            elif err.get("code") == "internal_error":
                # "internal error" states nothing a client can act on: a bug, named in the replica's log.
                problems.append({"invariant": "internal_error", "key": t.key, "run_id": run.get("id"),
                                 "replica": run.get("replica"), "error": err,
                                 "steps": [_brief_step(s) for s in steps]})
            done = Counter(_tool_key(s) for s in steps if s.get("action") == TOOL and not s.get("error"))
            if any(n > 1 for n in done.values()):
                problems.append({"invariant": "tool_step_twice", "key": t.key, "run_id": run.get("id"),
                                 "steps": [_brief_step(s) for s in steps]})
            tried = {_tool_key(s) for s in steps if s.get("action") == TOOL}
            ran = {k: n for k, n in records.items() if run_key(k) == t.key}
            if set(ran) - tried:
                # The tool ran (the server recorded it) but the run shows no call of it, neither completed nor
                # interrupted: a takeover lost the step that was in flight.
                problems.append({"invariant": "tool_call_unaccounted", "key": t.key, "run_id": run.get("id"),
                                 "calls": ran, "steps": [_brief_step(s) for s in steps]})
            if status == "completed" and not ran:
                problems.append({"invariant": "tool_never_ran", "key": t.key, "run_id": run.get("id"),
                                 "steps": [_brief_step(s) for s in steps]})
    duplicated = {k: n for k, n in records.items() if n > 1}
    for k, n in sorted(duplicated.items()):
        problems.append({"invariant": "duplicated_tool_call", "key": k, "calls": n,
                         "run_ids": next((sorted(set(t.ids)) for p in phases.values() for t in p["traces"]
                                          if t.key == run_key(k)), [])})
    limit = usage.get("limit_micro_usd")
    spent = usage["spent_micro_usd"]
    overspend = max(0, spent - limit) if limit is not None else 0
    if overspend:
        problems.append({"invariant": "overspend", "spent_usd": spent / 1e6, "limit_usd": limit / 1e6})
    if usage["reserved_micro_usd"] or usage["reserved_tokens"]:
        problems.append({"invariant": "reservations_left", "reserved_usd": usage["reserved_micro_usd"] / 1e6,
                         "reserved_tokens": usage["reserved_tokens"]})
    if spent != cost_micro:
        problems.append({"invariant": "spent_equals_run_costs", "spent_usd": spent / 1e6,
                         "sum_of_run_costs_usd": cost_micro / 1e6, "difference_usd": (spent - cost_micro) / 1e6})
    return {"lost": len(lost), "duplicated_tool_calls": sum(n - 1 for n in duplicated.values()),
            "overspend_usd": overspend / 1e6,
            "reservations_left": {"usd": usage["reserved_micro_usd"] / 1e6, "tokens": usage["reserved_tokens"]},
            "spent_usd": spent / 1e6, "spent_tokens": usage["spent_tokens"],
            "limit_usd": None if limit is None else limit / 1e6, "sum_of_run_costs_usd": cost_micro / 1e6,
            "spent_equals_run_costs": spent == cost_micro, "statuses": dict(statuses),
            "stop_reasons": dict(stop_reasons), "interrupted_tool_calls": interrupted, "takeovers": takeovers,
            "gets_404": not_found, "not_completed": not_completed[:30], "problems": problems}


def _tool_key(step: dict[str, Any]) -> str | None:
    args = step.get("arguments")
    return args.get("key") if isinstance(args, dict) else None


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def _reason(obj: Any) -> str | None:
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return None


async def _run_async(args: argparse.Namespace, stack: Stack) -> dict[str, Any]:
    lb = LoadBalancer([("127.0.0.1", stack.replica_ports[n]) for n in ("rt-0", "rt-1")])
    lb_url = f"http://127.0.0.1:{await lb.start()}"
    try:
        base = await _phase(stack, lb_url, "base", args, None)
        # Faults land at fixed shares of the fault-free phase's duration (to its last terminal run, so a run
        # that never ends does not stretch it): mid-way through the same workload.
        ended = [t.ended_s for t in base["traces"] if t.ended_s is not None]
        w = (max(ended) - min(t.started_s for t in base["traces"])) if ended else base["wall_s"]
        plan = [(0.2 * w, "kill -9 replica rt-1"), (0.35 * w, "kill engine sim-2"), (0.5 * w, "restart redis")]
        faulted = await _phase(stack, lb_url, "chaos", args, plan)
        # Reservations of runs that ended are closed at once; give a takeover's reclaim one lease to land.
        phases = {"fault_free": base, "faults": faulted}
        tasks = [str(((t.last or {}).get("agentfleet") or {}).get("task_id")) for ph in phases.values()
                 for t in ph["traces"] if ((t.last or {}).get("agentfleet") or {}).get("task_id")]
        usage = await asyncio.to_thread(stack.ledger_usage, tasks)
        end = time.monotonic() + stack.lease_s + 2
        while (usage["reserved_micro_usd"] or usage["reserved_tokens"]) and time.monotonic() < end:
            await asyncio.sleep(0.5)
            usage = await asyncio.to_thread(stack.ledger_usage, tasks)
        records = read_records(stack.records)
        result = check(phases, records, usage)
        for p in result["problems"][: args.event_dumps]:
            if p.get("run_id"):
                p["events"] = await fetch_events(lb_url, p["run_id"])
        result["lb"] = {"skipped_backends": lb.skipped, "connections_refused": lb.refused_all}
    finally:
        await lb.close()
    p95 = {name: _pct([t.seconds for t in ph["traces"] if t.seconds is not None
                       and (t.last or {}).get("status") in TERMINAL], 0.95) for name, ph in phases.items()}
    ratio = (p95["faults"] / p95["fault_free"]) if p95["faults"] and p95["fault_free"] else None
    result["task_p95_s"] = {k: None if v is None else round(v, 3) for k, v in p95.items()}
    done = [t for t in phases["faults"]["traces"] if t.seconds is not None]
    moved = [t.seconds for t in done if int((t.last or {}).get("takeovers") or 0) > 0]
    stayed = [t.seconds for t in done if not int((t.last or {}).get("takeovers") or 0)]
    result["faults_task_s"] = {"taken_over": {"runs": len(moved), "p50": _round(_pct(moved, 0.5)),
                                              "p95": _round(_pct(moved, 0.95))},
                               "not_taken_over": {"runs": len(stayed), "p50": _round(_pct(stayed, 0.5)),
                                                  "p95": _round(_pct(stayed, 0.95))}}
    result["slowest_runs"] = [
        {"key": t.key, "seconds": _round(t.seconds), "started_at_s": _round(t.started_s - phases["faults"]["t0"]),
         "replica": (t.last or {}).get("replica"), "takeovers": (t.last or {}).get("takeovers"),
         "steps": [{k: st.get(k) for k in ("n", "kind", "seconds", "error") if st.get(k) is not None}
                   for st in (t.last or {}).get("steps") or []]}
        for t in sorted(done, key=lambda t: -(t.seconds or 0))[:5]]
    result["task_p95_ratio"] = None if ratio is None else round(ratio, 3)
    result["phases"] = {name: {"wall_s": round(ph["wall_s"], 2), "http": ph["stats"].wire(), "faults": ph["faults"],
                               "completed": sum(1 for t in ph["traces"]
                                                if (t.last or {}).get("status") == "completed")}
                        for name, ph in phases.items()}
    result["tool_calls_recorded"] = sum(records.values())
    # The run whose record() call the replica's death interrupted: how its steps show that call.
    mid = next((f.get("mid_tool_call") for f in faulted["faults"] if f.get("mid_tool_call")), None)
    trace = next((t for t in faulted["traces"] if mid and t.key == run_key(mid)), None)
    result["mid_tool_call_run"] = None if trace is None else {
        "key": mid, "run_id": (trace.last or {}).get("id"), "status": (trace.last or {}).get("status"),
        "takeovers": (trace.last or {}).get("takeovers"), "calls_recorded": records[mid],
        "record_steps": [_brief_step(st) for st in (trace.last or {}).get("steps") or []
                         if st.get("action") == TOOL and _tool_key(st) == mid]}
    return result


def run(args: argparse.Namespace) -> dict[str, Any]:
    reason = missing(install=True)
    if reason:
        raise RuntimeError(reason)
    t0 = time.monotonic()
    keep = Path(args.log_dir) if args.log_dir else None
    tmp = tempfile.TemporaryDirectory(prefix="agentfleet-bench-chaos-") if keep is None else None
    workdir = keep if keep is not None else Path(tmp.name)  # type: ignore[union-attr]
    workdir.mkdir(parents=True, exist_ok=True)
    if args.run_timeout_s is None:
        args.run_timeout_s = run_limits(args.calls[1])["deadlineSeconds"] + 20.0
    stack = Stack(workdir, lease_s=args.lease_s, max_calls=args.calls[1])
    try:
        stack.start(inter_token_ms=args.inter_token_ms, ttft_ms=args.ttft_ms, tool_delay_s=args.tool_delay_s)
        result = asyncio.run(_run_async(args, stack))
    finally:
        stack.stop()
        if tmp is not None:
            tmp.cleanup()
    targets = {"lost": 0, "duplicated_tool_calls": 0, "overspend_usd": 0.0, "reservations_left_usd": 0.0,
               "task_p95_ratio_max": TARGET_P95_RATIO}
    meets = {"lost": result["lost"] == 0, "duplicated_tool_calls": result["duplicated_tool_calls"] == 0,
             "overspend": result["overspend_usd"] == 0, "reservations_left": not any(
                 result["reservations_left"].values()),
             "spent_equals_run_costs": result["spent_equals_run_costs"],
             "task_p95_ratio": result["task_p95_ratio"] is not None and result["task_p95_ratio"] <= TARGET_P95_RATIO}
    return {"benchmark": "chaos", "runs_per_phase": args.runs, "concurrency": args.concurrency,
            **{k: v for k, v in result.items() if k != "problems"}, "targets": targets, "meets": meets,
            "meets_targets": all(meets.values()), "problems": result["problems"],
            "config": {"lease_s": args.lease_s, "redis_down_s": args.redis_down_s, "inter_token_ms": args.inter_token_ms,
                       "ttft_ms": args.ttft_ms, "tool_delay_s": args.tool_delay_s, "poll_s": args.poll_s,
                       "run_timeout_s": args.run_timeout_s, "calls": list(args.calls),
                       "seed": args.seed},
            "logs": str(keep) if keep is not None else None, "wall_s": round(time.monotonic() - t0, 1),
            "cpus": os.cpu_count()}


def _cmd(args: argparse.Namespace) -> int:
    out = run(args)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"chaos: {args.runs} runs per phase at concurrency {args.concurrency}, faults: "
          + ", ".join(f"{f['fault']} at {f['at_s']}s" for f in out["phases"]["faults"]["faults"]))
    for k in ("lost", "duplicated_tool_calls", "overspend_usd", "reservations_left", "spent_usd",
              "sum_of_run_costs_usd", "statuses", "stop_reasons", "interrupted_tool_calls", "takeovers",
              "task_p95_s", "task_p95_ratio"):
        print(f"  {k}: {out[k]}")
    for name, ph in out["phases"].items():
        print(f"  {name}: {ph}")
    for p in out["problems"]:
        print(f"  PROBLEM {json.dumps(p)[:600]}")
    print("targets met" if out["meets_targets"] else f"targets NOT met: {out['meets']}")
    return 0


def add_bench_parsers(bench_sub: argparse._SubParsersAction) -> None:
    p = bench_sub.add_parser("chaos", help="durable runs under faults: kill -9 a runtime replica, kill an engine, "
                                           "restart Redis; lost runs, duplicated tool calls, overspend, p95")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--runs", type=int, default=60, help="runs per phase (fault-free, then with faults)")
    p.add_argument("--concurrency", type=int, default=20)
    p.add_argument("--lease-s", type=float, default=3.0, help="AGENTFLEET_RUN_LEASE_S of the replicas")
    p.add_argument("--redis-down-s", type=float, default=4.0,
                   help="how long Redis stays down (longer than the lease: every lease lapses during it)")
    p.add_argument("--inter-token-ms", type=float, default=50.0, help="simulated decode time per token")
    p.add_argument("--ttft-ms", type=float, default=150.0, help="simulated time to first token")
    p.add_argument("--calls", type=calls_range, default="10-30",
                   help="model calls per run, N or MIN-MAX drawn per run (the same draw in both phases); every call "
                        "but the last asks for one record() tool call. Default: the agentic task of issue 12, 10 to 30 "
                        "sequential model calls plus tools")
    p.add_argument("--seed", type=int, default=12, help="seed of the per-run lengths")
    p.add_argument("--tool-delay-s", type=float, default=0.3, help="how long record() takes after recording")
    p.add_argument("--poll-s", type=float, default=0.3, help="GET /v1/runs/{id} interval")
    p.add_argument("--run-timeout-s", type=float, default=None,
                   help="a run not terminal this long after its first POST counts as lost (default: the AgentApp's "
                        "deadline plus 20 s)")
    p.add_argument("--event-dumps", type=int, default=5, help="attach the events of this many failing runs")
    p.add_argument("--log-dir", help="keep every process's log (and the records file) here")
    p.set_defaults(func=_cmd)


def _main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m agentfleet.bench.chaos")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record-server", help="the MCP server whose record(key) calls are counted")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--log", required=True)
    r.add_argument("--delay-s", type=float, default=1.0)
    a = p.parse_args(argv)
    serve_record(a.port, a.log, a.delay_s)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
