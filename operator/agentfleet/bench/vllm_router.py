"""The vLLM project's own router (`vllm-router` on PyPI, Rust) as the peer in `agentfleet bench routing`: install
the pinned release into its own virtual environment under the agentfleet cache (the product's dependencies stay
clean), and start it in front of a list of replicas. Its `consistent_hash` policy keys on the `X-Session-ID`
header; readiness is its `/health` (facts.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["VERSION", "POLICIES", "ensure_installed", "command"]

VERSION = "0.1.17"
# The policies that run on a plain replica list (kv_aware needs KV events, sticky_least_loaded is also offered).
POLICIES = ("consistent_hash", "round_robin", "power_of_two", "cache_aware", "sticky_least_loaded", "random")


def _venv() -> Path:
    cache = Path(os.environ.get("AGENTFLEET_CACHE", Path.home() / ".cache" / "agentfleet"))
    return cache / "vllm-router" / VERSION


def ensure_installed(progress: Callable[[str], None] = lambda _: None) -> tuple[Path | None, str]:
    """(the vllm-router executable, "") once installed, or (None, why not) when pip could not get it."""
    venv = _venv()
    exe = venv / "bin" / "vllm-router"
    if exe.exists():
        return exe, ""
    progress(f"installing vllm-router=={VERSION} into {venv} (once; about 15 s)")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                        f"vllm-router=={VERSION}"], check=True, capture_output=True, text=True, timeout=600)
    except subprocess.CalledProcessError as err:
        tail = ((err.stderr or "") if isinstance(err.stderr, str) else "").strip().splitlines()[-1:] or ["?"]
        return None, f"pip could not install vllm-router=={VERSION}: {tail[0]}"
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, f"pip could not install vllm-router=={VERSION}: {err}"
    if not exe.exists():
        return None, f"vllm-router=={VERSION} installed but {exe} is missing"
    progress(f"vllm-router=={VERSION} installed")
    return exe, ""


def command(exe: Path, *, policy: str, port: int, metrics_port: int, worker_urls: Sequence[str]) -> list[str]:
    # Its Prometheus exporter otherwise binds 29000 and panics when another router (or run) holds it.
    return [str(exe), "--host", "127.0.0.1", "--port", str(port), "--policy", policy, "--log-level", "warning",
            "--prometheus-host", "127.0.0.1", "--prometheus-port", str(metrics_port), "--worker-urls", *worker_urls]
