"""Agent-mode evaluation's driver: every case asked through the runtime's real API (`POST /v1/runs`, then
`GET /v1/runs/{id}` until it ends) with the key of the case's principal, at bounded concurrency, each finished
run's trace appended to a state file so a rerun pays for nothing twice. Transport failures, timeouts and HTTP
errors land in the case's trace (status "error" or "failed"), never in a traceback; only a runtime that cannot be
reached at all or a key it refuses stops the evaluation, before any case runs (`preflight`)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Sequence, TextIO

import aiohttp

from .suite import Case

__all__ = ["Unreachable", "KeyRejected", "StateFile", "Progress", "CaseRun", "default_state_path", "normalise_base_url",
           "preflight", "run_case", "run_cases", "FINISHED", "POLL_START_S", "POLL_MAX_S", "MAX_429_RETRIES"]

FINISHED = ("completed", "incomplete", "failed")   # a rerun skips these; "error" cases run again
POLL_START_S = 0.2
POLL_MAX_S = 2.0
POLL_GROWTH = 1.5
MAX_429_RETRIES = 5
MAX_RETRY_AFTER_S = 60.0
MAX_POLL_FAILURES = 5          # consecutive failed polls before a run counts as lost
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=10)
PREFLIGHT_RUN_ID = "run-agentfleet-eval-preflight"


class Unreachable(Exception):
    """The runtime does not answer at all (nothing was run)."""


class KeyRejected(Exception):
    """The runtime refused a key (401): `users` names whose."""

    def __init__(self, users: Sequence[str], message: str) -> None:
        super().__init__(message)
        self.users = list(users)


def normalise_base_url(url: str) -> str:
    """The runtime's root: `http://h:8080`, `http://h:8080/` and `http://h:8080/v1` all name the same app."""
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


def default_state_path(suite_path: str | Path, suite_text: str, target: str, *, cwd: Path | None = None) -> Path:
    """`.agentfleet-eval/<suite stem>-<hash of the suite's text and the target>.jsonl`: another suite version or
    another app gets another file, so a resume never mixes them."""
    digest = hashlib.sha256(suite_text.encode("utf-8") + b"\0" + target.encode("utf-8")).hexdigest()[:12]
    return (cwd or Path.cwd()) / ".agentfleet-eval" / f"{Path(suite_path).stem}-{digest}.jsonl"


class StateFile:
    """One JSON line per finished case, appended as each case ends (a crash loses at most the line being
    written; a torn last line is ignored on load). The last line for a case wins."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def load(self, case_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Finished traces of these cases (completed, incomplete or failed); "error" ones will run again."""
        wanted = set(case_ids)
        out: dict[str, dict[str, Any]] = {}
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            try:
                trace = json.loads(line)
            except ValueError:
                continue
            if isinstance(trace, dict) and trace.get("case_id") in wanted:
                if trace.get("status") in FINISHED:
                    out[trace["case_id"]] = trace
                else:
                    out.pop(trace["case_id"], None)
        return out

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def append(self, trace: Mapping[str, Any]) -> None:
        line = json.dumps(trace, ensure_ascii=False, separators=(",", ":")) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()


class Progress:
    """`[12/30] q7 alice completed 8.1s $0.0012` per finished case: plain lines when the stream is not a
    terminal, one bar rewritten in place when it is."""

    def __init__(self, total: int, *, done: int = 0, stream: TextIO | None = None, is_tty: bool | None = None,
                 width: int = 24) -> None:
        self.total, self.done = total, done
        self.stream = stream if stream is not None else sys.stderr
        self.is_tty = self.stream.isatty() if is_tty is None else is_tty
        self.width = width

    def line(self, trace: Mapping[str, Any]) -> str:
        summary = trace.get("agentfleet") or {}
        cost = summary.get("cost_usd")
        out = (f"[{self.done}/{self.total}] {trace['case_id']} {trace.get('principal', '')} {trace['status']} "
               f"{trace.get('latency_s', 0.0):.1f}s")
        if cost is not None:
            out += f" ${cost:.4f}"
        if trace["status"] == "error" and trace.get("error"):
            out += f" ({(trace['error'] or {}).get('message', '')[:80]})"
        return out

    def update(self, trace: Mapping[str, Any]) -> None:
        self.done += 1
        text = self.line(trace)
        if self.is_tty:
            filled = round(self.width * self.done / max(self.total, 1))
            self.stream.write(f"\r\x1b[K[{'#' * filled}{'.' * (self.width - filled)}] {text}")
            if self.done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _retry_after_s(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 1.0
    except ValueError:
        return 1.0  # an HTTP date: rare from our runtime; a short wait is enough to try again


async def _read(resp: aiohttp.ClientResponse) -> Any:
    text = await resp.text()
    try:
        return json.loads(text)
    except ValueError:
        return {"error": {"message": text[:500] or resp.reason or "", "code": str(resp.status)}}


def _error_of(body: Any, status: int | None) -> dict[str, Any]:
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return err
    return {"message": str(err or body)[:500], "code": str(status)}


def _new_trace(case: Case) -> dict[str, Any]:
    return {"case_id": case.id, "principal": case.principal, "status": "error", "http_status": None, "answer": "",
            "error": None, "latency_s": 0.0, "agentfleet": None, "steps": []}


async def preflight(session: aiohttp.ClientSession, base: str, keys: Mapping[str, str]) -> None:
    """Before anything is paid for: the runtime answers (else Unreachable) and takes every key (else KeyRejected,
    naming the users). A run id nobody has is asked for: 404 with a good key, 401 with a bad one."""
    try:
        async with session.get(f"{base}/healthz", timeout=REQUEST_TIMEOUT) as r:
            if r.status != 200:
                raise Unreachable(f"{base}/healthz answered {r.status}: is this an agentfleet runtime?")
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
        raise Unreachable(f"cannot reach the runtime at {base}: {err or type(err).__name__}") from None
    refused: list[str] = []
    message = ""
    by_key: dict[str, list[str]] = {}
    for user, key in keys.items():
        by_key.setdefault(key, []).append(user)
    for key, users in by_key.items():
        try:
            async with session.get(f"{base}/v1/runs/{PREFLIGHT_RUN_ID}", headers={"Authorization": f"Bearer {key}"},
                                   timeout=REQUEST_TIMEOUT) as r:
                if r.status == 401:
                    refused += users
                    message = _error_of(await _read(r), 401).get("message", "")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
            raise Unreachable(f"cannot reach the runtime at {base}: {err or type(err).__name__}") from None
    if refused:
        raise KeyRejected(sorted(refused), message)


async def run_case(session: aiohttp.ClientSession, base: str, case: Case, key: str, *, timeout_s: float = 600.0,
                   clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> dict[str, Any]:
    """One case through `POST /v1/runs` and polling `GET /v1/runs/{id}` (0.2 s growing to 2 s). A 429 waits
    its Retry-After and tries again (bounded); a run still going at `timeout_s` is cancelled (DELETE)."""
    trace = _new_trace(case)
    started = clock()
    deadline = started + timeout_s
    headers = {"Authorization": f"Bearer {key}"}

    def done(status: str, **fields: Any) -> dict[str, Any]:
        trace.update(fields, status=status, latency_s=round(clock() - started, 3))
        return trace

    body: Any = None
    status = 0
    for attempt in range(MAX_429_RETRIES + 1):
        try:
            async with session.post(f"{base}/v1/runs", json={"input": case.question}, headers=headers,
                                    timeout=REQUEST_TIMEOUT) as r:
                status, body, retry_after = r.status, await _read(r), r.headers.get("Retry-After")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
            return done("error", error={"message": f"cannot reach {base}: {err or type(err).__name__}",
                                        "code": "unreachable"})
        if status != 429 or attempt == MAX_429_RETRIES:
            break
        wait_s = min(_retry_after_s(retry_after), MAX_RETRY_AFTER_S)
        if clock() + wait_s >= deadline:
            break
        await sleep(wait_s)
    if status != 202:
        # A refused request (400, 401, 403, 404) is the app's answer to this case; 429 after our retries and
        # 5xx are transient: "error", so a rerun tries again.
        kind = "failed" if 400 <= status < 500 and status != 429 else "error"
        return done(kind, http_status=status, error=_error_of(body, status))
    trace["http_status"] = status
    run_id = body.get("id") if isinstance(body, dict) else None
    if not run_id:
        return done("error", error={"message": f"POST /v1/runs answered 202 without a run id: {str(body)[:200]}",
                                    "code": "bad_response"})
    trace["run_id"] = run_id
    interval, failures = POLL_START_S, 0
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            await _cancel(session, base, run_id, headers)
            return done("error", error={"message": f"run {run_id} did not finish within {timeout_s:g}s; cancelled",
                                        "code": "timeout"})
        await sleep(min(interval, remaining))
        interval = min(interval * POLL_GROWTH, POLL_MAX_S)
        try:
            async with session.get(f"{base}/v1/runs/{run_id}", headers=headers, timeout=REQUEST_TIMEOUT) as r:
                got_status, got = r.status, await _read(r)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as err:
            got_status, got = 0, {"error": {"message": f"cannot reach {base}: {err or type(err).__name__}",
                                            "code": "unreachable"}}
        if got_status == 200 and isinstance(got, dict):
            failures = 0
            if got.get("status") in ("queued", "running"):
                continue
            break
        if got_status == 404:  # the replica restarted or forgot the run (runs live in memory)
            return done("error", error={"message": f"the runtime no longer knows run {run_id}", "code": "run_lost"})
        failures += 1
        if failures >= MAX_POLL_FAILURES:
            await _cancel(session, base, run_id, headers)
            return done("error", error=_error_of(got, got_status or None))
    run_status = got.get("status")
    fields = {"answer": got.get("answer") or "", "agentfleet": got.get("agentfleet"), "steps": got.get("steps") or [],
              "error": got.get("error")}
    if run_status in FINISHED:
        return done(run_status, **fields)
    return done("error", **{**fields, "error": got.get("error") or {"message": f"the run ended {run_status}",
                                                                       "code": str(run_status)}})


async def _cancel(session: aiohttp.ClientSession, base: str, run_id: str, headers: Mapping[str, str]) -> None:
    try:
        async with session.delete(f"{base}/v1/runs/{run_id}", headers=headers, timeout=REQUEST_TIMEOUT):
            pass
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        pass  # the run is abandoned either way; its caps end it on the server


@dataclass
class CaseRun:
    """What run_cases needs besides the cases: where, with which key, how many at once, how long each."""

    base_url: str
    key_for: Callable[[Case], str]
    concurrency: int = 4
    timeout_s: float = 600.0
    on_trace: Callable[[dict[str, Any]], None] | None = None   # called (in a thread) as each case ends
    progress: Progress | None = None


async def run_cases(cases: Sequence[Case], opts: CaseRun, *, check_first: bool = True) -> list[dict[str, Any]]:
    """Run these cases, at most `opts.concurrency` at once; traces in the cases' order. With `check_first` the
    runtime and every key are checked before any case runs (Unreachable, KeyRejected)."""
    base = normalise_base_url(opts.base_url)
    gate = asyncio.Semaphore(max(1, opts.concurrency))
    async with aiohttp.ClientSession() as session:
        if check_first:
            keys = {c.principal: opts.key_for(c) for c in cases}
            await preflight(session, base, keys)

        async def one(case: Case) -> dict[str, Any]:
            async with gate:
                trace = await run_case(session, base, case, opts.key_for(case), timeout_s=opts.timeout_s)
            if opts.on_trace is not None:
                await asyncio.to_thread(opts.on_trace, trace)
            if opts.progress is not None:
                opts.progress.update(trace)
            return trace

        return list(await asyncio.gather(*(one(c) for c in cases)))
