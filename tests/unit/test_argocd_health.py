"""manifests/argocd/health.lua run by a real Lua interpreter on Budget statuses that status.budget() computes: an
exhausted Budget, a price row naming no fleet and apps that cannot share the counter show Degraded in Argo CD
(former bug: every Budget was Healthy, whatever it had spent)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agentfleet import render, status

REPO = Path(__file__).resolve().parents[2]
HEALTH = REPO / "manifests" / "argocd" / "health.lua"
NOW = dt.datetime(2025, 3, 14, 10, 0, tzinfo=dt.timezone.utc)
TODAY = "2025-03-14T00:00:00Z"


@pytest.fixture(scope="module")
def lua() -> str:
    """A Lua interpreter (Argo CD runs health checks in gopher-lua, Lua 5.1 semantics; the script uses nothing
    newer): Debian's lua5.4, installed by e2e/apt-install.sh when missing; skipped with its reason otherwise."""
    found = next((p for p in (shutil.which(n) for n in ("lua5.4", "lua5.3", "lua5.1", "lua")) if p), None)
    if found:
        return found
    proc = subprocess.run(["bash", str(REPO / "e2e" / "apt-install.sh"), "lua5.4", "lua5.4"], capture_output=True,
                          text=True, timeout=600)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        pytest.skip(f"no Lua interpreter: apt-install.sh exited {proc.returncode}: {proc.stderr.strip()[-200:]}")
    return lines[-1]


def _lua(value: Any) -> str:
    """A JSON-like value as a Lua table constructor (Argo CD hands the script the object the same way)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{json.dumps(k)}] = {_lua(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "{" + ", ".join(_lua(v) for v in value) + "}"
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def health(lua: str, obj: dict[str, Any]) -> tuple[str, str]:
    script = (f"obj = {_lua(obj)}\nlocal hs = (function()\n{HEALTH.read_text()}\nend)()\n"
              "io.write(hs.status, '\\t', hs.message or '')")
    out = subprocess.run([lua, "-"], input=script, capture_output=True, text=True, timeout=30, check=True)
    state, _, message = out.stdout.partition("\t")
    return state, message


def _budget(kit, spec: dict[str, Any], published: dict[str, Any], **status_args: Any) -> dict[str, Any]:
    b = kit.budget("spend", spec, status=published, generation=2)
    out = status.budget(b, now=NOW, **status_args)
    return {"apiVersion": "agentfleet.io/v1alpha1", "kind": "Budget", "metadata": {"name": "spend", "generation": 2},
            "spec": spec, "status": {**published, **{k: v for k, v in out.items() if v is not None}}}


def _prices(kit, prices: list[dict[str, Any]]) -> list[render.PriceProblem]:
    b = kit.budget("spend", {"prices": prices})
    app = kit.app("assistant", {"budgetRef": {"name": "spend"}})
    return render.price_problems(b, apps=[app], fleets={"large": kit.fleet("large")})


ROW = {"inputPerMTokensUsd": 1, "outputPerMTokensUsd": 2}


@pytest.mark.parametrize(
    "spec, published, extra, expected, message",
    [
        pytest.param({"limits": {"costUsd": 5}}, {"windowStart": TODAY, "spentUsd": 1.0}, {}, "Healthy",
                     "within budget", id="within-budget"),
        pytest.param({"limits": {"costUsd": 5}}, {"windowStart": TODAY, "spentUsd": 5.0}, {}, "Degraded",
                     "money exhausted for this day", id="exhausted"),
        pytest.param({"limits": {"costUsd": 5}}, {"windowStart": "2025-03-13T00:00:00Z", "spentUsd": 5.0}, {},
                     "Healthy", "within budget", id="exhausted-yesterday"),
        pytest.param({"limits": {"costUsd": 5}}, {}, {"prices": "typo"}, "Degraded", "spec.prices[0].model",
                     id="price-row-names-no-fleet"),
        pytest.param({"limits": {"costUsd": 5}}, {}, {"prices": "none"}, "Healthy", "within budget",
                     id="unpriced-fleet-is-only-a-warning"),
        pytest.param({"limits": {"costUsd": 5}}, {}, {"unshared": "apps a, b keep their own SQLite ledgers"},
                     "Degraded", "their own SQLite", id="ledger-not-shared"),
    ],
)
def test_budget_health_in_argo_cd(kit, lua, spec, published, extra, expected, message):
    args = dict(extra)
    if args.get("prices") == "typo":
        args["prices"] = _prices(kit, [{"model": "lrage", **ROW}])
    elif args.get("prices") == "none":
        args["prices"] = _prices(kit, [])
        assert [p.reason for p in args["prices"]] == ["FleetUnpriced"]
    state, text = health(lua, _budget(kit, spec, published, **args))

    assert state == expected
    assert message in text
