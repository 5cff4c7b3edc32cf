"""Fixtures for the e2e tier: a real kube-apiserver/scheduler/controller-manager (kwokctl, binary
runtime) with a fake 8-GPU kwok node. Built once per version by e2e/cluster/build.sh (cold: ~16+ min).

Env: AGENTFLEET_E2E_CLUSTER (cluster name, default agentfleet-e2e-pytest),
     AGENTFLEET_E2E_KEEP=1 (leave the cluster running afterwards; a cluster that was already
     running before the session is always reused and left running).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

_REPO_ROOT = Path(__file__).resolve().parents[2]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from e2e.cluster import launcher  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "e2e: needs a real Kubernetes control plane (e2e/cluster; slow first build)"
    )


@pytest.fixture(scope="session")
def k8s_cluster() -> launcher.Cluster:
    if not launcher.can_build():
        pytest.skip("Kubernetes binaries not built and Go not installed")
    name = os.environ.get("AGENTFLEET_E2E_CLUSTER", "agentfleet-e2e-pytest")
    with launcher.running_cluster(name) as cluster:
        yield cluster
