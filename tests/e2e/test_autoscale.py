"""Autoscaling end to end: a ModelFleet on the real control plane (kwok makes its pods Ready), its replicas'
metrics served by llm-d-inference-sim processes on 127.0.0.1 and scraped every second by Debian's Prometheus
(labelled as the fleet's pods), the operator's autoscaler timer reading Prometheus. Load rises -> spec.replicas
(through /scale) and the StatefulSet grow and status.lastScale says why; load stops -> after the stabilisation
window it scales back down one step at a time."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from e2e_kit import wait_for

from agentfleet.bench import simulator

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
FLEET = "scaler"


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    try:
        out = subprocess.run(["bash", str(REPO / "e2e" / "prometheus" / "install.sh")], capture_output=True,
                             text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"cannot install Debian's prometheus: {err}")
    if out.returncode != 0:
        pytest.skip(f"cannot install Debian's prometheus (exit {out.returncode}): {out.stderr[-500:]}")
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def sim_fleet():
    try:
        simulator.binary()
    except (FileNotFoundError, subprocess.CalledProcessError) as err:
        pytest.skip(f"llm-d-inference-sim unavailable: {err}")
    # One slot per replica and slow decoding: a handful of concurrent requests makes a queue.
    settings = simulator.SimSettings(max_num_seqs=1, inter_token_ms=50, prefill_ms_per_token=1)
    with simulator.running_fleet(3, settings) as sims:
        yield sims


@contextlib.contextmanager
def running_prometheus(binary: str, workdir: Path, namespace: str, targets: list[str]):
    port = simulator.free_port()
    static = [{"targets": [t.removeprefix("http://")],
               "labels": {"namespace": namespace, "pod": f"{FLEET}-engine-{i}"}} for i, t in enumerate(targets)]
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": "vllm", "static_configs": static}]}
    cfg = workdir / "prometheus.yml"
    cfg.write_text(json.dumps(config))  # JSON is YAML
    log = open(workdir / "prometheus.log", "wb")
    proc = subprocess.Popen([binary, f"--config.file={cfg}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url + "/-/ready", timeout=1) as r:
                    return r.status == 200
            return False
        wait_for("prometheus ready", up, timeout=60)
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()
        log.close()


class Load:
    """Concurrent requests to replica 0 until stopped (threads: the test itself stays synchronous)."""

    def __init__(self, url: str, concurrency: int):
        self.url, self.stop, self.sent = url, threading.Event(), 0
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(concurrency)]

    def _loop(self) -> None:
        body = json.dumps({"model": "sim-model", "prompt": "hello there", "max_tokens": 40,
                           "ignore_eos": True}).encode()
        while not self.stop.is_set():
            req = urllib.request.Request(self.url + "/v1/completions", data=body,
                                         headers={"content-type": "application/json"})
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(req, timeout=60) as r:
                    r.read()
            self.sent += 1

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(70)


def fleet_doc(prometheus_url: str) -> dict:
    return {"apiVersion": "agentfleet.io/v1alpha1", "kind": "ModelFleet", "metadata": {"name": FLEET},
            "spec": {"model": {"uri": "hf://example/sim-model", "servedModelName": "sim-model"},
                     "replicas": 1,
                     "engine": {"maxNumSeqs": 1, "gpu": {"count": 1}, "resources": {"cpu": "1", "memory": "1Gi"}},
                     "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "targetQueuePerReplica": 2,
                                     "intervalSeconds": 5, "scaleDownStabilizationSeconds": 20,
                                     "scaleDownStepSeconds": 5, "prometheusUrl": prometheus_url}}}


def test_fleet_scales_up_under_load_and_down_after_window(operator, ns, prometheus_binary, sim_fleet,
                                                          tmp_path):
    with running_prometheus(prometheus_binary, tmp_path, ns.ns, sim_fleet.urls) as prom_url:
        ns.apply(fleet_doc(prom_url))
        wait_for("one ready replica", lambda: ((ns.get("StatefulSet", f"{FLEET}-engine") or {})
                                               .get("status", {}).get("readyReplicas") == 1), timeout=120)

        with Load(sim_fleet.urls[0], concurrency=8):
            up = wait_for("a scale-up recorded in status", lambda: (
                (ns.get("ModelFleet", FLEET) or {}).get("status", {}).get("lastScale") or {}
            ).get("toReplicas", 0) >= 2 and ns.get("ModelFleet", FLEET), timeout=150)
            last = up["status"]["lastScale"]
            assert last["fromReplicas"] == 1 and up["spec"]["replicas"] == last["toReplicas"]
            assert last["reason"].split(":")[0] in ("QueueAboveTarget", "UtilizationAboveTarget", "SLOMiss")
            assert up["status"]["queueDepth"] is not None
            wait_for("the StatefulSet to follow spec.replicas", lambda: (
                ns.get("StatefulSet", f"{FLEET}-engine") or {}).get("spec", {}).get("replicas", 0) >= 2, timeout=60)
            managed = ns.json("get", "modelfleet", FLEET, "--show-managed-fields")["metadata"]["managedFields"]
            assert any(m["manager"] == "agentfleet-autoscaler" and m.get("subresource") == "scale" for m in managed)

        down = wait_for("scale-down to minReplicas after the window", lambda: (
            (f := ns.get("ModelFleet", FLEET) or {}).get("spec", {}).get("replicas") == 1 and f), timeout=240)
        last = down["status"]["lastScale"]
        assert last["reason"].startswith("ScaleDownAfterStabilization") and last["toReplicas"] == 1
        assert down["status"]["autoscaler"]["lastReason"] in (
            "ScaleDownAfterStabilization", "WithinTarget", "ScaleDownPending")
