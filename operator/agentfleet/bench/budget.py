"""`agentfleet bench budget`: what a Budget's `degradeAtPercent` buys, measured on and off in one run. Two
llm-d-inference-sim engines (echo mode) play a large and a small model, priced as a large and a small model are;
the real runtime (`agentfleet serve`, its own process, a fresh SQLite ledger per phase) serves an app whose Budget
has a small money limit. The same stream of tasks (one model call each) is sent until it is refused for good:
without the switch every task runs on the large model and the window ends in 429s; with it, the tasks admitted past
the line run on the small model, so the window serves more tasks before the first 429. Reported per phase: tasks
answered, on which model (from each answer's own per-model usage), when the first 429 came, spend and the limit."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["add_bench_parsers", "run"]

KEY = "bench-budget-key-0001"
LARGE = {"model": "big", "inputPerMTokensUsd": 10.0, "outputPerMTokensUsd": 30.0}
SMALL = {"model": "mini", "inputPerMTokensUsd": 0.5, "outputPerMTokensUsd": 1.5}


def add_bench_parsers(bench_sub: argparse._SubParsersAction) -> None:
    p = bench_sub.add_parser("budget", help="Budget degradeAtPercent on and off: tasks a money limit serves before "
                                            "the first 429, and on which model")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--limit-usd", type=float, default=1.0, help="the Budget's costUsd per window")
    p.add_argument("--degrade-at", type=int, default=80, help="degradeAtPercent of the 'on' phase")
    p.add_argument("--max-tasks", type=int, default=4000, help="stop a phase after this many tasks")
    p.add_argument("--concurrency", type=int, default=4)
    p.set_defaults(func=_cmd)


def _config(tmp: Path, urls: dict[str, str], *, limit_usd: float, degrade_at: int | None) -> Path:
    import yaml

    from ..api import parse
    from ..render.agentapp import runtime_config

    def res(kind: str, name: str, spec: dict[str, Any]) -> Any:
        return parse({"apiVersion": "agentfleet.io/v1alpha1", "kind": kind,
                      "metadata": {"name": name, "namespace": "bench"}, "spec": spec})

    app = res("AgentApp", "bench", {"fleets": {"large": "big", "small": "mini"}, "budgetRef": {"name": "bench"},
                                    "tools": {"builtin": ["calculator"]},
                                    "auth": {"apiKeysSecretRef": {"name": "k", "key": "keys.yaml"}},
                                    "limits": {"maxSteps": 2, "maxTokens": 4000, "deadlineSeconds": 30}})
    fleets = {name: res("ModelFleet", name, {"model": {"uri": f"hf://bench/{name}", "servedModelName": f"{name}-model"}})
              for name in ("big", "mini")}
    spec: dict[str, Any] = {"window": "day", "limits": {"costUsd": limit_usd}, "prices": [LARGE, SMALL],
                            "routing": {"policy": "large-only"}}
    if degrade_at is not None:
        spec["degradeAtPercent"] = degrade_at
    (tmp / "keys.yaml").write_text(yaml.safe_dump({KEY: {"user": "bench", "tenant": "bench", "groups": []}}))
    cfg = runtime_config(app, fleets=fleets, index=None, budget=res("Budget", "bench", spec), fleet_urls=urls,
                         keys_file=str(tmp / "keys.yaml"))
    path = tmp / "runtime.yaml"
    path.write_text(yaml.safe_dump(cfg.wire()))
    return path


async def _stream(url: str, *, max_tasks: int, concurrency: int) -> dict[str, Any]:
    """Send tasks until one is refused with 429 and no task is still running (or `max_tasks`)."""
    import aiohttp

    answer = json.dumps({"action": "final_answer", "answer": "The quarterly report is filed under finance/2026-q3 "
                                                             "and was approved on Monday."})
    out: dict[str, Any] = {"answered": 0, "on_large": 0, "on_small": 0, "rejected_429": 0, "errors": 0,
                           "first_429_after": None, "reported_cost_usd": 0.0}
    sent = 0
    refused = asyncio.Event()

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal sent
        while sent < max_tasks and not refused.is_set():
            sent += 1
            async with session.post(url + "/v1/chat/completions", json={"messages": [
                    {"role": "user", "content": answer}]}, headers={"Authorization": f"Bearer {KEY}"}) as r:
                body = await r.json(content_type=None)
            if r.status == 429:
                out["rejected_429"] += 1
                if out["first_429_after"] is None:
                    out["first_429_after"] = out["answered"]
                    out["first_429"] = ((body or {}).get("error") or {}).get("message")
                refused.set()
            elif r.status == 200:
                ext = body.get("agentfleet") or {}
                models = ext.get("models") or {}
                out["answered"] += 1
                out["on_large"] += int("big-model" in models)
                out["on_small"] += int("mini-model" in models)
                out["reported_cost_usd"] += float(ext.get("cost_usd") or 0)
            else:
                out["errors"] += 1

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    out["sent"] = sent
    out["reported_cost_usd"] = round(out["reported_cost_usd"], 6)
    return out


def _phase(tmp: Path, urls: dict[str, str], args: argparse.Namespace, degrade_at: int | None) -> dict[str, Any]:
    from .runtime import _wait_ready
    from .simulator import free_port

    cfg = _config(tmp, urls, limit_usd=args.limit_usd, degrade_at=degrade_at)
    port = free_port()
    rt = f"http://127.0.0.1:{port}"
    with open(tmp / "runtime.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "agentfleet.cli", "serve", "--config", str(cfg), "--host",
                                 "127.0.0.1", "--port", str(port), "--state-dir", str(tmp)], stdout=log,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            _wait_ready(rt, proc)
            out = asyncio.run(_stream(rt, max_tasks=args.max_tasks, concurrency=args.concurrency))
            out["spent_usd"] = _spent(cfg, tmp)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return {"degrade_at_percent": degrade_at, **out}


def _spent(cfg_path: Path, state_dir: Path) -> float:
    """The Budget's spend as the ledger holds it (the runtime's own wiring over the phase's SQLite file)."""
    import datetime as dt

    import yaml

    from ..api.runtime_config import RuntimeConfig
    from ..ledger import Account
    from ..runtime.serving import Runtime

    cfg = RuntimeConfig.model_validate(yaml.safe_load(cfg_path.read_text()))
    assert cfg.budget is not None
    ledger = Runtime.open_ledger(cfg, state_dir=state_dir)
    assert ledger is not None
    try:
        usage = ledger.usage(Account.for_budget(cfg.namespace, cfg.budget.name, cfg.budget.spec),
                             now=dt.datetime.now(dt.timezone.utc))
    finally:
        ledger.close()
    return usage.spent.micro_usd / 1e6


def _before_429(phase: dict[str, Any]) -> int:
    return int(phase["answered"] if phase["first_429_after"] is None else phase["first_429_after"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from .simulator import SimSettings, running_fleet

    def sim(model: str) -> SimSettings:
        return SimSettings(model=model, prefill_ms_per_token=0.01, inter_token_ms=0.5, max_num_seqs=64,
                           extra=("--mode", "echo"))

    with running_fleet(1, sim("big-model")) as big, running_fleet(1, sim("mini-model")) as mini:
        urls = {"big": big.urls[0] + "/v1", "mini": mini.urls[0] + "/v1"}
        phases = {}
        for name, at in (("off", None), ("on", args.degrade_at)):
            with tempfile.TemporaryDirectory(prefix=f"agentfleet-bench-budget-{name}-") as tmp:
                phases[name] = _phase(Path(tmp), urls, args, at)
    off, on = phases["off"], phases["on"]
    return {"benchmark": "budget", "limit_usd": args.limit_usd, "prices": {"large": LARGE, "small": SMALL},
            "phases": phases,
            # Tasks answered before the window first refused one, on over off; a phase that reached --max-tasks
            # without a 429 counts every task it sent (the ratio is then a lower bound, and says so).
            "answered_before_first_429_ratio": (round(_before_429(on) / _before_429(off), 2)
                                                if _before_429(off) else None),
            "ratio_is_lower_bound": on["first_429_after"] is None,
            "never_over_limit": all(p["spent_usd"] <= args.limit_usd for p in phases.values()),
            "cpus": os.cpu_count()}


def _cmd(args: argparse.Namespace) -> int:
    out = run(args)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"Budget costUsd {out['limit_usd']:g}: the same task stream with degradeAtPercent off and on")
    for name, p in out["phases"].items():
        print(f"  {name:>3}: {p['answered']} answered ({p['on_large']} large, {p['on_small']} small), first 429 "
              f"after {p['first_429_after']} tasks, spent ${p['spent_usd']:.4f}")
    at_least = "at least " if out["ratio_is_lower_bound"] else ""
    print(f"tasks before the first 429, on/off: {at_least}{out['answered_before_first_429_ratio']}x; spend never "
          f"over the limit: {out['never_over_limit']}")
    return 0
