"""llm-d-inference-sim processes on 127.0.0.1 for benchmarks and e2e tests: find (or build, via
e2e/sim/build.sh) the binary, start N of them with the flags measured in facts.md, wait until they answer, stop
them. The simulator listens on all interfaces; we only ever send it traffic on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SIM_VERSION", "SimFleet", "SimSettings", "binary", "free_port", "running_fleet"]

SIM_VERSION = "v0.10.2"
_REPO = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = _REPO / "e2e" / "sim" / "build.sh"


def binary(*, build: bool = True) -> Path:
    """$AGENTFLEET_SIM_BIN, else the cached build (built now if missing and `build`)."""
    env = os.environ.get("AGENTFLEET_SIM_BIN")
    if env:
        return Path(env)
    cache = Path(os.environ.get("AGENTFLEET_CACHE", Path.home() / ".cache" / "agentfleet"))
    path = cache / "sim" / SIM_VERSION / "llm-d-inference-sim"
    if path.exists() or not build:
        return path
    if not BUILD_SCRIPT.exists() or shutil.which("go") is None:
        raise FileNotFoundError(f"{path} is missing and cannot be built (needs Go and {BUILD_SCRIPT})")
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, capture_output=True, text=True, timeout=1800)
    return Path(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class SimSettings:
    model: str = "sim-model"
    prefill_ms_per_token: float = 2.0
    inter_token_ms: float = 5.0
    max_num_seqs: int = 8
    kv_cache_blocks: int = 4096
    block_size: int = 16
    max_model_len: int = 8192  # the default 1024 answers longer prompts with a ~5 ms error chunk (facts.md)
    extra: tuple[str, ...] = ()

    def args(self, port: int) -> list[str]:
        return ["--model", self.model, "--force-dummy-tokenizer", "--port", str(port), "--enable-kvcache",
                "--kv-cache-size", str(self.kv_cache_blocks), "--block-size", str(self.block_size),
                "--prefill-time-per-token", f"{self.prefill_ms_per_token:g}ms",
                "--inter-token-latency", f"{self.inter_token_ms:g}ms", "--latency-calculator", "per-token",
                "--max-num-seqs", str(self.max_num_seqs), "--max-model-len", str(self.max_model_len),
                *self.extra]


@dataclass
class SimFleet:
    settings: SimSettings
    ports: list[int]
    procs: list[subprocess.Popen] = field(default_factory=list)
    log_dir: Path | None = None

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports]

    def stop(self, i: int | None = None) -> None:
        for j, p in enumerate(self.procs):
            if (i is None or i == j) and p.poll() is None:
                p.terminate()
        for j, p in enumerate(self.procs):
            if i is None or i == j:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()


    def restart(self, i: int, *, timeout_s: float = 30.0) -> None:
        """Stop replica i and start a fresh one on the same port: same address, empty KV cache, counters at 0
        (what a vLLM container restart looks like to a router)."""
        self.stop(i)
        self.procs[i] = _spawn(self.settings, self.ports[i], self.log_dir)
        _wait_ready(self.urls[i], self.procs[i], time.monotonic() + timeout_s)


def _spawn(settings: SimSettings, port: int, log_dir: Path | None) -> subprocess.Popen:
    env = {**os.environ, "POD_IP": "127.0.0.1"}  # --enable-kvcache refuses to start without it
    out = open(log_dir / f"sim-{port}.log", "ab") if log_dir else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen([str(binary()), *settings.args(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_ready(url: str, proc: subprocess.Popen, deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"simulator at {url} exited with {proc.returncode}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url + "/v1/models", timeout=1) as r:
                if r.status == 200:
                    return
        time.sleep(0.1)
    raise TimeoutError(f"simulator at {url} did not answer within the deadline")


def start(n: int, settings: SimSettings = SimSettings(), *, ports: Sequence[int] | None = None,
          log_dir: Path | None = None) -> SimFleet:
    binary()  # built once here, before any process starts
    fleet = SimFleet(settings, list(ports) if ports else [free_port() for _ in range(n)], log_dir=log_dir)
    try:
        for port in fleet.ports:
            fleet.procs.append(_spawn(settings, port, log_dir))
        deadline = time.monotonic() + 30
        for url, proc in zip(fleet.urls, fleet.procs):
            _wait_ready(url, proc, deadline)
    except BaseException:
        fleet.stop()
        raise
    return fleet


@contextlib.contextmanager
def running_fleet(n: int, settings: SimSettings = SimSettings(), **kwargs) -> Iterator[SimFleet]:
    fleet = start(n, settings, **kwargs)
    try:
        yield fleet
    finally:
        fleet.stop()
