"""The command line as a user runs it: exit codes and the lines they read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agentfleet.cli import main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "agentapp.yaml"

BAD = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: not-ours}
---
apiVersion: agentfleet.io/v1alpha1
kind: ModelFleet
metadata: {name: llama, namespace: prod}
spec:
  model: {uri: "hf://meta-llama/Llama-3.1-8B-Instruct"}
  autoscaling: {minReplicas: 5, maxReplicas: 3}
  router: {policy: random}
---
apiVersion: agentfleet.io/v1alpha1
kind: Budget
metadata: {name: b}
spec:
  limits: {costUsd: -1}
"""


def test_validate_accepts_the_example(capsys):
    assert main(["validate", "-f", str(EXAMPLE)]) == 0
    assert "valid" in capsys.readouterr().out


def test_validate_reports_one_line_per_problem(tmp_path, capsys):
    f = tmp_path / "bad.yaml"
    f.write_text(BAD)
    assert main(["validate", "-f", str(f)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [
        f"{f}: document 2 (ModelFleet prod/llama): spec.autoscaling.minReplicas: "
        "minReplicas must be less than or equal to maxReplicas",
        f"{f}: document 2 (ModelFleet prod/llama): spec.router.policy: Input should be 'prefix-aware', 'session', "
        "'least-load' or 'round-robin', got 'random'",
        f"{f}: document 3 (Budget default/b): spec.limits.costUsd: Input should be greater than or equal to 0",
    ]


def _example_with_prices(prices):
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    budget = next(d for d in docs if d["kind"] == "Budget")
    budget["spec"]["prices"] = prices
    return docs, budget["metadata"]["name"]


def test_validate_rejects_a_price_row_that_matches_no_fleet(tmp_path, capsys):
    """Former bug: a row naming no fleet (a typo) was ignored and the fleet it meant ran at its own price or free."""
    docs, name = _example_with_prices([
        {"model": "small", "inputPerMTokensUsd": 0.02, "outputPerMTokensUsd": 0.04},
        {"model": "lrage", "inputPerMTokensUsd": 0.6, "outputPerMTokensUsd": 1.2}])
    f = tmp_path / "app.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    assert main(["validate", "-f", str(f)]) == 1
    lines = capsys.readouterr().out.strip().splitlines()
    index = next(i for i, d in enumerate(docs) if d["kind"] == "Budget") + 1
    assert lines[0].startswith(f"{f}: document {index} (Budget default/{name}): spec.prices[1].model: 'lrage' "
                               "matches no fleet of the apps using this Budget (AgentApp assistant)")
    assert "large, small" in lines[0] and "qwen2.5-32b-instruct" in lines[0]
    assert len(lines) == 1  # `large` lost its row but has spec.pricing of its own: no warning


def test_validate_warns_about_a_fleet_priced_nowhere_but_accepts_it(tmp_path, capsys):
    docs, _ = _example_with_prices([{"model": "small", "inputPerMTokensUsd": 0.02, "outputPerMTokensUsd": 0.04}])
    next(d for d in docs if d["kind"] == "ModelFleet" and d["metadata"]["name"] == "large")["spec"].pop("pricing")
    f = tmp_path / "app.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    assert main(["validate", "-f", str(f)]) == 0
    out = capsys.readouterr().out
    assert "warning: spec.prices: ModelFleet large (AgentApp assistant, large) has no price row" in out
    assert "document(s) valid" in out


def test_validate_warns_when_a_budgets_low_band_has_no_fair_queue(tmp_path, capsys):
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    budget = next(d for d in docs if d["kind"] == "Budget")
    budget["spec"].update(onExhausted="reject", degradeBy="low-priority")
    f = tmp_path / "app.yaml"
    f.write_text(yaml.safe_dump_all(docs))
    assert main(["validate", "-f", str(f)]) == 0
    out = capsys.readouterr().out
    assert "warning: spec.degradeBy: degradeBy low-priority: ModelFleets large, small have router.fairQueue off" in out
    for d in docs:
        if d["kind"] == "ModelFleet":
            d["spec"].setdefault("engine", {}).setdefault("maxNumSeqs", 64)
            d["spec"].setdefault("router", {})["fairQueue"] = True
    f.write_text(yaml.safe_dump_all(docs))
    assert main(["validate", "-f", str(f)]) == 0
    assert "degradeBy" not in capsys.readouterr().out


def test_validate_reports_unreadable_yaml(tmp_path, capsys):
    f = tmp_path / "broken.yaml"
    f.write_text("kind: [unclosed\n")
    assert main(["validate", "-f", str(f)]) == 1
    assert "cannot read" in capsys.readouterr().out


def test_render_prints_every_child_of_the_example(capsys):
    assert main(["render", "-f", str(EXAMPLE)]) == 0
    children = list(yaml.safe_load_all(capsys.readouterr().out))
    kinds = {(c["kind"], c["metadata"]["name"]) for c in children}
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    fleets = [d["metadata"]["name"] for d in docs if d["kind"] == "ModelFleet"]
    apps = [d["metadata"]["name"] for d in docs if d["kind"] == "AgentApp"]
    for f in fleets:
        assert ("StatefulSet", f"{f}-engine") in kinds
        assert ("Deployment", f"{f}-router") in kinds
    for a in apps:
        assert ("Deployment", a) in kinds
        assert ("ConfigMap", f"{a}-config") in kinds
    assert any(k == "Job" for k, _ in kinds)


def test_render_names_a_missing_reference(tmp_path, capsys):
    f = tmp_path / "app.yaml"
    f.write_text(yaml.safe_dump({
        "apiVersion": "agentfleet.io/v1alpha1", "kind": "AgentApp", "metadata": {"name": "a"},
        "spec": {"fleets": {"large": "nope"}, "tools": {"builtin": []},
                 "auth": {"apiKeysSecretRef": {"name": "k", "key": "keys.yaml"}}}}))
    assert main(["render", "-f", str(f)]) == 1
    assert "AgentApp default/a: waiting for ModelFleet/nope" in capsys.readouterr().err


def test_crds_command_writes_what_is_committed(tmp_path):
    assert main(["crds", "--out", str(tmp_path)]) == 0
    for f in (ROOT / "crds").glob("agentfleet.io_*.yaml"):
        assert (tmp_path / f.name).read_text() == f.read_text()


@pytest.mark.parametrize("argv", [["--version"], ["validate", "--help"]], ids=["version", "help"])
def test_console_script_is_installed(argv):
    out = subprocess.run([Path(sys.executable).parent / "agentfleet", *argv], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()
