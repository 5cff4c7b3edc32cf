"""manifests/argocd/health.lua, run by real Lua interpreters (5.1: Argo CD's gopher-lua semantics, and 5.4), on
ModelFleet statuses that status.modelfleet() computes: a crash-looping, image-pull-failing or unschedulable engine
past its deadline, a replica that fits no node and a missing LeaderWorkerSet are Degraded in Argo CD (before:
Progressing forever); one still starting is Progressing; a serving fleet is Healthy."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from agentfleet import status
from agentfleet.render.cluster import Capabilities
from test_status_modelfleet import NOW, NO_GPU_FIT, pod, workload

HEALTH = Path(__file__).resolve().parents[2] / "manifests" / "argocd" / "health.lua"
LUAS = [p for p in (shutil.which(n) for n in ("lua5.1", "lua5.4")) if p]
pytestmark = pytest.mark.skipif(not LUAS, reason="no lua5.1 or lua5.4 (apt-get install lua5.1 lua5.4)")


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


@pytest.mark.parametrize("lua", LUAS, ids=[p.rsplit("/", 1)[-1] for p in LUAS])
@pytest.mark.parametrize(
    "engine, pods, sts, caps, state, in_message",
    [
        pytest.param({}, [pod(waiting="CrashLoopBackOff", age_s=900)], workload(1, 0), None, "Degraded",
                     "CrashLoopBackOff", id="crash-loop"),
        pytest.param({}, [pod(waiting="ImagePullBackOff", age_s=900)], workload(1, 0), None, "Degraded",
                     "ImagePullBackOff", id="image-pull"),
        pytest.param({}, [pod(unschedulable=NO_GPU_FIT, age_s=900)], workload(1, 0), None, "Degraded",
                     "Insufficient nvidia.com/gpu", id="unschedulable"),
        pytest.param({}, [pod(waiting="CrashLoopBackOff", age_s=60)], workload(1, 0), None, "Progressing",
                     "Degraded after", id="before-deadline"),
        pytest.param({"parallelism": {"tensor": 16}}, [], None, Capabilities(gpu_allocatable={"nvidia.com/gpu": 8}),
                     "Degraded", "largest node offers 8", id="does-not-fit"),
        pytest.param({"parallelism": {"tensor": 16}, "gpu": {"perNode": 8}}, [], None, Capabilities(), "Degraded",
                     "LeaderWorkerSet", id="lws-missing"),
        pytest.param({}, [pod(ready=True)], workload(1, 1), None, "Healthy", "1 of 1", id="serving"),
    ],
)
def test_argocd_health_of_a_modelfleet(kit, lua, engine, pods, sts, caps, state, in_message):
    fleet = kit.fleet("llm", {"engine": engine}, generation=3)
    st = status.modelfleet(fleet, statefulset=sts, router=workload(1, 1), now=NOW, pods=pods, capabilities=caps)
    obj = {"apiVersion": "agentfleet.io/v1alpha1", "kind": "ModelFleet",
           "metadata": {"name": "llm", "generation": 3}, "status": st}

    got, message = health(lua, obj)
    assert got == state
    assert in_message in message
