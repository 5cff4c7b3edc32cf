"""Detects what the cluster offers a ModelFleet, through the API: is the Prometheus Operator's PodMonitor kind
served, is LeaderWorkerSet's, is the Gateway API Inference Extension's InferencePool, and how many GPUs of each
extended resource the largest node can give one pod. Remembered for a minute per client, so that a reconcile does
not rediscover the API (a kind that is absent costs a full discovery each time it is looked up)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from ..errors import UpstreamError
from ..render.cluster import INFERENCE_POOL, LEADER_WORKER_SET, POD_MONITOR, Capabilities
from .kube import Kube

__all__ = ["capabilities", "gpu_allocatable", "CACHE_S"]

log = logging.getLogger(__name__)

CACHE_S = 60.0
# Extended resources that are accelerators (what a ModelFleet may request as engine.gpu.resourceName).
_ACCELERATOR_HINTS = ("gpu", "neuron", "tpu", "accelerator")
_lock = threading.Lock()
_cache: dict[int, tuple[float, Capabilities]] = {}


def _quantity(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def gpu_allocatable(nodes: list[dict[str, Any]]) -> dict[str, int]:
    """Extended accelerator resource -> the most allocatable on one schedulable node."""
    out: dict[str, int] = {}
    for node in nodes:
        if (node.get("spec") or {}).get("unschedulable"):
            continue
        for name, value in ((node.get("status") or {}).get("allocatable") or {}).items():
            if "/" in name and any(h in name.split("/", 1)[1] for h in _ACCELERATOR_HINTS):
                out[name] = max(out.get(name, 0), _quantity(value))
    return out


def _served(kube: Kube, api_version: str, kind: str) -> bool:
    try:
        kube.resource(api_version, kind)
        return True
    except UpstreamError:
        return False


def capabilities(kube: Kube, *, now: float | None = None) -> Capabilities:
    t = time.monotonic() if now is None else now
    with _lock:
        hit = _cache.get(id(kube))
        if hit is not None and t - hit[0] < CACHE_S:
            return hit[1]
    try:
        nodes: dict[str, int] | None = gpu_allocatable(kube.list("v1", "Node", None))
    except Exception as err:  # noqa: BLE001 - no permission to list nodes: GPUs per node stay unknown
        log.info("cannot list nodes (GPU capacity unknown): %s", err)
        nodes = None
    caps = Capabilities(pod_monitor=_served(kube, *POD_MONITOR), leader_worker_set=_served(kube, *LEADER_WORKER_SET),
                        inference_pool=_served(kube, *INFERENCE_POOL), gpu_allocatable=nodes)
    with _lock:
        _cache[id(kube)] = (t, caps)
    return caps
