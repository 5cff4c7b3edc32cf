"""What the cluster offers beyond core Kubernetes, as `control/` detected it through the API: the Prometheus
Operator's PodMonitor, the LeaderWorkerSet controller, the Gateway API Inference Extension's InferencePool, and
how many GPUs of each resource the largest node can give one pod. The renderer chooses children from it; status
says what is missing. Pure data: no cluster access."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Capabilities", "POD_MONITOR", "LEADER_WORKER_SET", "INFERENCE_POOL"]

# (apiVersion, kind) of the optional third-party kinds a ModelFleet may render.
POD_MONITOR = ("monitoring.coreos.com/v1", "PodMonitor")
LEADER_WORKER_SET = ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet")
INFERENCE_POOL = ("inference.networking.k8s.io/v1", "InferencePool")


class Capabilities(BaseModel):
    """None / False mean "not there" (or not known: an offline `agentfleet render` knows nothing, and renders
    what a plain cluster takes)."""

    model_config = ConfigDict(frozen=True)

    pod_monitor: bool = False
    leader_worker_set: bool = False
    inference_pool: bool = False
    # Extended resource name -> the most allocatable on one node; None: nodes were not read.
    gpu_allocatable: dict[str, int] | None = None

    def gpus_per_node(self, resource_name: str) -> int | None:
        if self.gpu_allocatable is None:
            return None
        return self.gpu_allocatable.get(resource_name, 0)
