"""The autoscaler's series selector matches what each discovery path produces (issue 13: on kube-prometheus-stack
every window was MetricsMissing). Target labels as the Prometheus Operator writes them for a PodMonitor
(namespace, pod, container, endpoint = the port name, job = <namespace>/<PodMonitor>) and as the usual
annotation-driven kubernetes_sd job relabels them (namespace, pod): the selector must take the serving engine pods
of this fleet, and nothing else."""

from __future__ import annotations

import re

import pytest

from agentfleet.control.autoscaler import fleet_selector
from agentfleet.names import engine_name


def matches(selector: str, labels: dict[str, str]) -> bool:
    """PromQL label matchers (= and =~, anchored like Prometheus' RE2 matchers) against one series' labels."""
    for name, op, value in re.findall(r'(\w+)(=~|=)"([^"]*)"', selector):
        got = labels.get(name, "")
        if op == "=" and got != value:
            return False
        if op == "=~" and re.fullmatch(value, got) is None:
            return False
    return True


def pod_monitor_target(namespace: str, pod: str) -> dict[str, str]:
    return {"namespace": namespace, "pod": pod, "container": "vllm", "endpoint": "http",
            "job": f"{namespace}/{engine_name('llm')}", "instance": "10.0.0.7:8000"}


def annotation_target(namespace: str, pod: str) -> dict[str, str]:
    return {"namespace": namespace, "pod": pod, "job": "kubernetes-pods", "instance": "10.0.0.7:8000"}


@pytest.mark.parametrize("target", [pod_monitor_target, annotation_target], ids=["podmonitor", "annotations"])
@pytest.mark.parametrize(
    "namespace, pod, selected",
    [
        pytest.param("team-a", "llm-engine-0", True, id="statefulset-pod"),
        pytest.param("team-a", "llm-engine-12", True, id="statefulset-pod-12"),
        pytest.param("team-a", "llm-engine-3-1", False, id="leaderworkerset-worker"),
        pytest.param("team-b", "llm-engine-0", False, id="same-name-other-namespace"),
        pytest.param("team-a", "llm-router-7d9f-abcde", False, id="router"),
        pytest.param("team-a", "llm-big-engine-0", False, id="other-fleet"),
    ],
)
def test_selector_takes_this_fleets_serving_pods(kit, target, namespace, pod, selected):
    fleet = kit.fleet("llm", namespace="team-a")
    assert matches(fleet_selector(fleet), target(namespace, pod)) is selected
