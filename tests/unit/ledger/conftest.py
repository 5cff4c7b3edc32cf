"""Ledger backends for the behavioural suite: every test that takes `ledger` runs once on SQLite (a temp file) and
once on a real redis-server (Debian's package, installed by e2e/redis/install.sh when missing, started on a free
127.0.0.1 port with a temp dir; skipped with the installer's reason only when it cannot be installed)."""

from __future__ import annotations

import datetime as dt
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator

import pytest

from agentfleet.ledger import Ledger
from agentfleet.ledger.redis_store import RedisStore
from agentfleet.ledger.sqlite_store import SqliteStore

REPO = Path(__file__).resolve().parents[3]
INSTALLER = REPO / "e2e" / "redis" / "install.sh"
T0 = dt.datetime(2025, 3, 10, 12, 0, tzinfo=dt.timezone.utc)  # a Monday, mid-month, mid-day


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


@pytest.fixture
def ledger(store_factory: StoreFactory) -> Iterator[Ledger]:
    led = Ledger(store_factory(), hold_ttl_s=600)
    yield led


@pytest.fixture
def t0() -> dt.datetime:
    return T0
