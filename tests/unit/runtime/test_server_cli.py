"""`agentfleet serve` and `agentfleet ask` as processes, the way a pod and a user run them: the server reads the
runtime.yaml the operator renders, the client prints the streamed answer, the steps, tokens and cost."""

import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from agentfleet.bench.simulator import SimSettings, free_port, running_fleet
from runtime_kit import ALICE, final, make_config, needs_sim

pytestmark = needs_sim


@pytest.fixture()
def server(tmp_path):
    with running_fleet(1, SimSettings(extra=("--mode", "echo"))) as fleet:
        cfg = make_config(tmp_path, large_url=fleet.urls[0] + "/v1")
        path = tmp_path / "runtime.yaml"
        path.write_text(yaml.safe_dump(cfg.wire()))
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "agentfleet.cli", "serve", "--config", str(path), "--host",
                                 "127.0.0.1", "--port", str(port), "--state-dir", str(tmp_path)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:  # poll readiness with a deadline
            assert proc.poll() is None, proc.stdout.read().decode()
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, "the runtime did not become ready"
                time.sleep(0.1)
        try:
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _ask(url, question, key):
    return subprocess.run([sys.executable, "-m", "agentfleet.cli", "ask", question, "--key", key, "--url", url],
                          capture_output=True, text=True, timeout=60)


def test_ask_prints_answer_steps_tokens_and_cost(server):
    out = _ask(server, final("Twenty-five days of vacation."), ALICE)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "Twenty-five days of vacation."
    assert lines[-1].startswith("-- answered; 1 steps; ") and "tokens" in lines[-1] and "$0.000000" in lines[-1]
    assert lines[-1].endswith("models: sim-model")
    assert "step 1 assistant plan [large] final_answer" in out.stderr


def test_ask_with_a_bad_key_says_why(server):
    out = _ask(server, "hi", "wrong-key-0000")
    assert out.returncode == 1
    assert out.stderr.strip() == "error: HTTP 401 invalid_api_key: invalid API key"


def test_serve_refuses_an_invalid_config(tmp_path):
    bad = tmp_path / "runtime.yaml"
    bad.write_text("app: x\n")
    out = subprocess.run([sys.executable, "-m", "agentfleet.cli", "serve", "--config", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert out.stderr.startswith(f"error: {bad}: invalid runtime configuration:")
    assert "Traceback" not in out.stderr


def test_ask_prints_each_citation_as_a_link():
    from agentfleet.runtime.cli import citation_line

    base = "http://127.0.0.1:8080/"
    assert citation_line({"n": 1, "title": "Vacation", "source": "hr/vacation.md",
                          "url": "/v1/sources/d-3f2a"}, base) == "[1] Vacation (http://127.0.0.1:8080/v1/sources/d-3f2a)"
    assert citation_line({"n": 2, "title": "", "source": "https://wiki.example/pto",
                          "url": "https://wiki.example/pto"}, base) == "[2] https://wiki.example/pto (https://wiki.example/pto)"
    assert citation_line({"n": 3, "title": "Old", "source": "old.md"}, base) == "[3] Old (old.md)"
