"""control.cluster.gpu_allocatable: the largest allocatable count of each accelerator resource over the
schedulable nodes (what status compares one replica's pod against: ReplicaDoesNotFit)."""

from __future__ import annotations

import pytest

from agentfleet.control.cluster import gpu_allocatable


def node(allocatable: dict[str, str], *, unschedulable: bool = False) -> dict:
    return {"spec": {"unschedulable": True} if unschedulable else {}, "status": {"allocatable": allocatable}}


@pytest.mark.parametrize(
    "nodes, expected",
    [
        pytest.param([], {}, id="no-nodes"),
        pytest.param([node({"cpu": "16", "memory": "64Gi"})], {}, id="cpu-only"),
        pytest.param([node({"nvidia.com/gpu": "8"}), node({"nvidia.com/gpu": "4"})], {"nvidia.com/gpu": 8},
                     id="largest-wins"),
        pytest.param([node({"nvidia.com/gpu": "8"}, unschedulable=True), node({"nvidia.com/gpu": "2"})],
                     {"nvidia.com/gpu": 2}, id="cordoned-node-ignored"),
        pytest.param([node({"amd.com/gpu": "8", "aws.amazon.com/neuron": "16", "example.com/fpga": "1"})],
                     {"amd.com/gpu": 8, "aws.amazon.com/neuron": 16}, id="other-accelerators"),
        pytest.param([node({"nvidia.com/gpu": "0"})], {"nvidia.com/gpu": 0}, id="device-plugin-without-devices"),
    ],
)
def test_gpu_allocatable(nodes, expected):
    assert gpu_allocatable(nodes) == expected
