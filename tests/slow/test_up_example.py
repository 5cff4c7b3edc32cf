"""`agentfleet up -f examples/agentapp.yaml` end to end, as a user runs it: the real vLLM on CPU (Gemma 3 270M base
under both fleet names), milvus-lite with the example corpus, the runtime; then `agentfleet ask --as USER` for the
demo principals, and Ctrl-C. What must hold with a 270M base model: the answer is grounded in the passages the
caller may read (retrieve-first), the task ends with an answer instead of spinning to maxSteps, nobody gets a
document outside their tenant and groups, /readyz is 200, and SIGINT leaves no process behind. The answers are
printed (pytest -s) so a run records what the model actually said."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from agentfleet.local import engine as eng
from agentfleet.local.install import is_engine_installed
from agentfleet.local.layout import Layout

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
UP_TIMEOUT_S = 900  # engine start ~1 min on 2 cores; more when other suites share the CPU
ASK_TIMEOUT_S = 300
# Text only the hr-salary-bands.md document holds (acme, hr): alice (eng) and bob (finance) must never see it.
SALARY_TEXT = ("95,000", "120,000", "145,000", "180,000", "220,000", "265,000", "VP of People", "Staff Engineer")
ACME_ONLY = ("handbook-", "eng-", "finance-", "hr-", "security-", "faq-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _ask(url: str, keys: Path, user: str, question: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "agentfleet.cli", "ask", question, "--as", user, "--keys", str(keys),
                          "--url", url, "--json", "--timeout", str(ASK_TIMEOUT_S)],
                         capture_output=True, text=True, timeout=ASK_TIMEOUT_S + 30)
    assert out.returncode in (0, 3), out.stdout + out.stderr
    text, _, summary = out.stdout.rpartition("\n{")  # the streamed answer, then the JSON summary
    result = json.loads("{" + summary)
    result["answer"] = text.strip()
    print(f"\n--- {user}: {question}\n{out.stderr.strip()}\nanswer: {result['answer']!r}\n"
          f"stop: {result['stop_reason']} {result['detail']}; citations: "
          f"{[c['source'] for c in result['citations']]}; {result['seconds']}s")
    return result


def test_up_example_answers_grounded_and_stops_cleanly(tmp_path: Path) -> None:
    if not is_engine_installed(Layout.default()):
        pytest.skip("the local model server is not installed: run scripts/install-local-model")
    port, engine_port = eng.free_port(), eng.free_port()
    run_dir = tmp_path / "run"
    log = (tmp_path / "up.out").open("w+")
    up = subprocess.Popen([sys.executable, "-m", "agentfleet.cli", "up", "-f", str(REPO / "examples" / "agentapp.yaml"),
                           "--run-dir", str(run_dir), "--port", str(port), "--engine-port", str(engine_port)],
                          stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + UP_TIMEOUT_S
        while "agentfleet is up" not in Path(log.name).read_text():  # a poll of its output, with a deadline
            assert up.poll() is None, Path(log.name).read_text()
            assert time.monotonic() < deadline, Path(log.name).read_text()
            time.sleep(1)
        engine_pid = int(next(line for line in Path(run_dir / "logs" / "engine.log").read_text().splitlines()
                              if "pid=" in line).split("pid=")[1].split(")")[0])
        # vLLM forks an engine-core process into the engine's process group (its own session).
        group = [int(p) for p in subprocess.run(["pgrep", "-g", str(engine_pid)], capture_output=True,
                                                 text=True).stdout.split()]
        assert engine_pid in group, group
        with urllib.request.urlopen(url + "/readyz", timeout=10) as r:
            assert r.status == 200, r.read()
        keys = run_dir / "keys.yaml"

        alice = _ask(url, keys, "alice", "How many vacation days do I get?")
        assert alice["stop_reason"] == "answered", alice
        sources = [c["source"] for c in alice["citations"]]
        assert "handbook-vacation.md" in sources
        assert "25" in alice["answer"], alice["answer"]  # the corpus: 25 days (globex's 30 must not appear)
        assert "30 days" not in alice["answer"]
        assert alice["steps"] <= 8

        for user in ("alice", "bob"):
            res = _ask(url, keys, user, "What are the engineering salary bands?")
            assert "hr-salary-bands.md" not in [c["source"] for c in res["citations"]]
            assert not any(t in res["answer"] for t in SALARY_TEXT), res["answer"]

        gina = _ask(url, keys, "gina", "How many vacation days do I get?")
        gsources = [c["source"] for c in gina["citations"]]
        assert gsources and all(s.startswith("globex-") for s in gsources), gsources
        assert not any(s.startswith(ACME_ONLY) for s in gsources)
        assert "25 days" not in gina["answer"]
    finally:
        up.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            rc = up.wait(timeout=90)
        except subprocess.TimeoutExpired:
            up.kill()
            raise
        out = Path(log.name).read_text()
        log.close()
    assert rc == 0, out
    assert "==> stopping" in out
    gone_by = time.monotonic() + 30
    while _alive(engine_pid) and time.monotonic() < gone_by:
        time.sleep(0.5)
    assert not _alive(engine_pid), f"the engine (pid {engine_pid}) outlived Ctrl-C"
    assert not [p for p in group if _alive(p)], f"engine processes outlived Ctrl-C: {group}"
    left = subprocess.run(["pgrep", "-f", str(run_dir)], capture_output=True, text=True).stdout.split()
    assert not left, f"processes still running for {run_dir}: {left}"
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/readyz", timeout=3)
