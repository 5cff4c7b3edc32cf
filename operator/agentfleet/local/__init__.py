"""`agentfleet up`: the same YAML run as local processes on one machine. So far the local model server: a real
vLLM on CPU in its own virtualenv (`install`, `layout`), a small model converted once from PyPI packages, and
the engine process (`engine`). Nothing here imports torch or vllm; the engine venv's python runs them."""

from __future__ import annotations

from .engine import (
    EngineFailed, EngineNotInstalled, EngineProcess, PrefixCacheCounters, chat_template_path, prefix_cache_counters,
    prepare_model, read_metrics, start_engine,
)
from .layout import Layout

__all__ = [
    "EngineFailed", "EngineNotInstalled", "EngineProcess", "PrefixCacheCounters", "chat_template_path",
    "prefix_cache_counters", "prepare_model", "read_metrics", "start_engine", "Layout",
]
