"""The slow tier's real local model server: one vLLM-on-CPU engine (Gemma 3 270M, float32) started once per
session for every test under tests/slow/ (engine start takes minutes on 2 cores). `scripts/install-local-model`
installs it; without it these tests skip and say so. The engine's log is kept under the session's tmp dir and its
path printed if it fails to start."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from agentfleet.local import engine as eng
from agentfleet.local.install import is_engine_installed
from agentfleet.local.layout import Layout

SERVED_MODEL_NAME = "gemma-3-270m"
ENGINE_START_TIMEOUT_S = 900  # measured 55 s (eager) on a 2-vCPU machine; other suites may share the CPU


@pytest.fixture(scope="session")
def local_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[eng.EngineProcess]:
    layout = Layout.default()
    if not is_engine_installed(layout):
        pytest.skip(f"the local model server is not installed at {layout.venv}: run scripts/install-local-model")
    t0 = time.monotonic()
    model_dir = eng.prepare_model(layout=layout)  # instant when the installer already converted it
    log_path = tmp_path_factory.mktemp("engine") / "vllm.log"
    engine = eng.start_engine(model_dir, port=eng.free_port(), served_model_name=SERVED_MODEL_NAME,
                              max_model_len=4096, log_path=log_path, layout=layout)
    try:
        start_s = engine.wait_ready(ENGINE_START_TIMEOUT_S)
        print(f"\nlocal engine ready in {start_s:.0f}s (prepare + start {time.monotonic() - t0:.0f}s); log {log_path}")
        yield engine
    finally:
        engine.stop()
