"""The app end to end on the public pyfaq set: the example AgentApp's runtime (its agent, budget, prompts and limits,
as `agentfleet up` plans them from examples/agentapp.yaml) pointed at a pyfaq index and key store, served with the
real local model (vLLM on CPU), and `agentfleet eval --url` over a deterministic sample of the pyfaq questions as
their principals. Prints the report's summary; the whole report lands in OUT/report.json and OUT/report.html.

    agentfleet eval prepare pyfaq --out D            # pyfaq-2k (needs Debian's python3.11-doc)
    python bench/pyfaq_app.py --dir D --cases 40 --out D/app-report

The index is built with `agentfleet ingest` when D/index.db is missing. Minutes on a CPU: each question is a real
agent task with a 270M model; use --cases to bound it."""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import yaml

from agentfleet.api.runtime_config import RuntimeConfig
from agentfleet.local import engine as eng
from agentfleet.local.plan import plan_up
from agentfleet.local.up import wait_http

REPO = Path(__file__).resolve().parents[1]
SYSTEM_PROMPT = ("You answer questions about Python from the documentation passages the retrieve tool returns, and "
                 "cite each passage you use. If the passages do not answer the question, say so; never guess.")


def _agentfleet(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentfleet.cli", *args], text=True, **kw)  # type: ignore[call-overload]


def sample_suite(suite_path: Path, n: int, out: Path) -> Path:
    """The n cases whose ids hash lowest (a fixed sample, the same on every machine), tolerances kept."""
    doc = yaml.safe_load(suite_path.read_text())
    cases = sorted(doc["cases"], key=lambda c: hashlib.sha1(c["id"].encode()).hexdigest())[:n]
    out.write_text(yaml.safe_dump({"tolerances": doc.get("tolerances") or {}, "cases": cases}, sort_keys=False))
    return out


def runtime_config(d: Path, run_dir: Path, engine_url: str) -> RuntimeConfig:
    """The example app's runtime configuration, with the pyfaq index, keys and a Python-docs system prompt."""
    docs = [x for x in yaml.safe_load_all((REPO / "examples" / "agentapp.yaml").read_text()) if x]
    plan = plan_up(docs, run_dir=run_dir)
    wire = plan.runtime.wire()
    wire["apiKeysFile"] = str(d / "keys.yaml")
    wire["index"]["uri"], wire["index"]["collection"] = str(d / "index.db"), "documents"
    wire["systemPrompt"] = SYSTEM_PROMPT
    for model in wire["models"].values():
        model["url"] = engine_url
    return RuntimeConfig.model_validate(wire)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, type=Path, help="an `agentfleet eval prepare pyfaq` directory")
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    d = args.dir.resolve()
    out = (args.out or d / "app-report").resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not (d / "index.db").exists():
        print(f"==> agentfleet ingest --source {d / 'corpus'} --index {d / 'index.db'}", file=sys.stderr)
        _agentfleet("ingest", "--source", str(d / "corpus"), "--index", str(d / "index.db"), check=True)
    suite = sample_suite(d / "suite.yaml", args.cases, out / "suite.yaml")
    engine_port, port = eng.free_port(), eng.free_port()
    config = runtime_config(d, out / "run", f"http://127.0.0.1:{engine_port}/v1")
    served = sorted({m.model for m in config.models.values()})
    (out / "runtime.yaml").write_text(yaml.safe_dump(config.wire(), sort_keys=True))
    engine = eng.start_engine(eng.prepare_model(), port=engine_port, served_model_name=served,
                              log_path=out / "engine.log")
    runtime = None
    try:
        print(f"==> engine ready after {engine.wait_ready(900):.0f}s", file=sys.stderr)
        runtime = subprocess.Popen([sys.executable, "-m", "agentfleet.cli", "serve", "--config",
                                    str(out / "runtime.yaml"), "--port", str(port), "--state-dir", str(out)],
                                   stdout=(out / "runtime.log").open("w"), stderr=subprocess.STDOUT)
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout_s=300, proc=runtime, log_path=out / "runtime.log",
                  what="the runtime")
        got = _agentfleet("eval", "--suite", str(suite), "--url", f"http://127.0.0.1:{port}", "--keys",
                          str(d / "keys.yaml"), "--corpus", str(d / "corpus"), "--index", str(d / "index.db"),
                          "--collection", "documents", "--concurrency", str(args.concurrency), "--report", str(out),
                          "--state", str(out / "state.jsonl"), "--json", stdout=subprocess.PIPE)
    finally:
        if runtime is not None:
            runtime.terminate()
            runtime.wait(30)
        engine.stop()
    report = json.loads(got.stdout)
    print(json.dumps({k: report[k] for k in ("retrieval", "answers", "tasks", "security")}, indent=1))
    return got.returncode


if __name__ == "__main__":
    sys.exit(main())
