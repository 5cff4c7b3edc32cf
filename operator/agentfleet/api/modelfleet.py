"""ModelFleet: a vLLM serving fleet. Each replica is one tensor-parallel group (a StatefulSet pod with N GPUs);
replicas scale on goodput and queue depth read from Prometheus; a prefix- and session-aware router fronts it."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ..names import API_VERSION
from .base import (
    CRDInfo, Condition, Model, PrinterColumn, Resource, Rule, SecretKeyRef, StatusModel,
)

__all__ = [
    "ModelSource", "GPUSpec", "ComputeResources", "EngineSpec", "AutoscalingSpec", "RouterSpec", "PricingSpec",
    "ModelFleetSpec", "ScalingDecision", "AutoscalerMemory", "ModelFleetStatus", "ModelFleet", "RouterPolicy",
]

RouterPolicy = Literal["prefix-aware", "session", "least-load", "round-robin"]


class ModelSource(Model):
    """Where the weights come from, in the URL forms KubeAI and KServe users know."""

    uri: str = Field(
        pattern=r"^(hf://[^/\s]+/[^\s]+|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^\s]*)?|s3://[^\s]+|gs://[^\s]+)$",
        description="hf://ORG/MODEL, pvc://CLAIM/PATH, s3://BUCKET/PATH or gs://BUCKET/PATH.",
    )
    served_model_name: str | None = Field(
        default=None, min_length=1, max_length=128,
        description="The model name clients send; defaults to the ModelFleet's name.")
    revision: str | None = Field(default=None, description="A Hugging Face revision (branch, tag or commit).")
    token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding HF_TOKEN (hf://) or object-store credentials.")


class GPUSpec(Model):
    resource_name: str = Field(default="nvidia.com/gpu", min_length=1,
                               description="Extended resource name of the accelerator.")
    count: int | None = Field(default=None, ge=1, le=64,
                              description="GPUs per replica; defaults to tensorParallelSize.")


class ComputeResources(Model):
    cpu: str = Field(default="4", pattern=r"^[0-9]+(\.[0-9]+)?m?$")
    memory: str = Field(default="32Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")


class EngineSpec(Model):
    """The vLLM engine of one replica."""

    __rules__: ClassVar = (
        Rule("!has(self.gpu.count) || self.gpu.count >= self.tensorParallelSize",
             "gpu.count must be at least tensorParallelSize (one GPU per tensor-parallel shard)",
             lambda s: s.gpu.count is None or s.gpu.count >= s.tensor_parallel_size, "gpu.count"),
    )

    image: str | None = Field(default=None, description="vLLM image; defaults to the operator's pinned image.")
    tensor_parallel_size: int = Field(default=1, ge=1, le=16, description="GPUs one replica shards the model over.")
    gpu: GPUSpec = Field(default_factory=GPUSpec)
    resources: ComputeResources = Field(default_factory=ComputeResources)
    enable_prefix_caching: bool = True
    max_num_seqs: int | None = Field(default=None, ge=1, le=4096)
    max_model_len: int | None = Field(default=None, ge=128)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    extra_args: list[str] = Field(default_factory=list, description="Passed to vLLM verbatim, after ours.")
    shm_size: str = Field(default="8Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)$",
                          description="Size of the memory-backed /dev/shm (NCCL needs it for tensor parallelism).")
    startup_timeout_seconds: int = Field(default=1800, ge=60, le=86400,
                                         description="How long model download and loading may take.")
    node_selector: dict[str, str] = Field(default_factory=dict)


class AutoscalingSpec(Model):
    """Scale on goodput and queue depth from Prometheus, never on CPU."""

    __rules__: ClassVar = (
        Rule("self.minReplicas <= self.maxReplicas", "minReplicas must be less than or equal to maxReplicas",
             lambda s: s.min_replicas <= s.max_replicas, "minReplicas"),
    )

    enabled: bool = True
    min_replicas: int = Field(default=1, ge=0, le=1000)
    max_replicas: int = Field(default=4, ge=1, le=1000)
    target_queue_per_replica: float = Field(default=4.0, gt=0,
                                            description="Waiting requests per replica above which it scales up.")
    ttft_p95_slo_seconds: float = Field(default=2.0, gt=0, description="Time-to-first-token SLO (p95).")
    latency_slo_seconds: float | None = Field(default=None, gt=0, description="End-to-end request latency SLO (p95).")
    goodput_target: float = Field(default=0.95, gt=0, le=1,
                                  description="Share of requests that must meet the SLO; below it, scale up.")
    interval_seconds: int = Field(default=15, ge=5, le=600)
    scale_up_stabilization_seconds: int = Field(default=0, ge=0, le=3600)
    scale_down_stabilization_seconds: int = Field(default=300, ge=0, le=86400)
    scale_down_step_seconds: int = Field(default=15, ge=0, le=3600,
                                         description="Once the window allows: at most one replica fewer this often.")
    max_scale_up_factor: float = Field(default=2.0, ge=1, le=10, description="At most x this many replicas per step.")
    target_utilization: float = Field(default=0.75, gt=0, le=1,
                                      description="Size the fleet so demand (arrival rate x time a request holds a "
                                                  "slot) fills this share of its maxNumSeqs slots.")
    replica_startup_seconds: int = Field(default=60, ge=0, le=3600,
                                         description="Scale-up to ready (image pull, weights, warm-up): the horizon "
                                                     "of the predictive headroom for rising demand; 0 disables it.")
    prometheus_url: str | None = Field(default=None, description="Defaults to the operator's --prometheus-url.")


class RouterSpec(Model):
    policy: RouterPolicy = Field(default="prefix-aware",
                                 description="prefix-aware and session use consistent hashing with bounded load.")
    replicas: int = Field(default=1, ge=1, le=100)
    load_bound_factor: float = Field(default=1.25, ge=1, le=10,
                                     description="A replica takes at most this times the mean load (bounded loads).")
    prefix_tokens: int = Field(default=256, ge=16, le=32768,
                               description="Prompt length hashed for prefix affinity, past the shared system prompt.")


class PricingSpec(Model):
    """What this fleet costs, for the Budget to price calls with when it has no table entry of its own."""

    gpu_hour_usd: float | None = Field(default=None, ge=0)
    input_per_m_tokens_usd: float | None = Field(default=None, ge=0)
    output_per_m_tokens_usd: float | None = Field(default=None, ge=0)


class ModelFleetSpec(Model):
    model: ModelSource
    engine: EngineSpec = Field(default_factory=EngineSpec)
    replicas: int = Field(default=1, ge=0, le=1000,
                          description="Written by the autoscaler through /scale when autoscaling is enabled.")
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    router: RouterSpec = Field(default_factory=RouterSpec)
    pricing: PricingSpec = Field(default_factory=PricingSpec)
    base_url: str | None = Field(
        default=None, pattern=r"^https?://\S+$",
        description="An OpenAI-compatible server (ending in /v1) that already serves this model, e.g. a GPU box "
                    "or a hosted API: agentfleet then runs no engine or router for this fleet, in a cluster or "
                    "under `agentfleet up`, and calls this URL.")


class ScalingDecision(StatusModel):
    from_replicas: int
    to_replicas: int
    reason: str
    time: str


class AutoscalerMemory(StatusModel):
    """What the autoscaler must remember across operator restarts (so a restart never scales down at once)."""

    window: list[dict[str, float]] = Field(default_factory=list,
                                           description="The last few metric windows, newest last.")
    below_target_since: str | None = Field(default=None, description="Start of the current run of recommendations "
                                                                     "below the current count (scale-down).")
    peaks: list[dict[str, float]] = Field(default_factory=list,
                                          description="The scale-down window's recommendations as a sliding maximum "
                                                      "({t, replicas}, oldest first).")
    last_sample: dict[str, float] | None = Field(default=None, description="{t, waiting, demand, demandBefore} "
                                                                           "of the last complete window (trends).")
    above_target_since: str | None = Field(default=None, description="Start of the current pressure run.")
    last_scale_time: str | None = None
    last_evaluated: str | None = None
    last_reason: str | None = Field(default=None, description="Why the last evaluation did (or did not) scale.")
    last_message: str | None = None


class ModelFleetStatus(StatusModel):
    observed_generation: int | None = None
    replicas: int = 0
    ready_replicas: int = 0
    selector: str | None = Field(default=None, description="Label selector of the replicas (for /scale and HPA).")
    endpoint: str | None = None
    served_model_name: str | None = None
    queue_depth: float | None = None
    goodput: float | None = Field(default=None, description="Requests per second completed within the SLO.")
    ttft_p95_seconds: float | None = None
    running_requests: float | None = None
    goodput_fraction: float | None = Field(default=None, description="Share of requests within the SLO.")
    last_scale: ScalingDecision | None = None
    autoscaler: AutoscalerMemory | None = None
    conditions: list[Condition] = Field(default_factory=list)


class ModelFleet(Resource):
    __crd__: ClassVar = CRDInfo(
        kind="ModelFleet", plural="modelfleets", short_names=("fleet", "mf"), scale=True,
        columns=(
            PrinterColumn("Ready", ".status.readyReplicas", "integer"),
            PrinterColumn("Desired", ".spec.replicas", "integer"),
            PrinterColumn("Model", ".status.servedModelName"),
            PrinterColumn("TP", ".spec.engine.tensorParallelSize", "integer"),
            PrinterColumn("Queue", ".status.queueDepth", "number"),
            PrinterColumn("Goodput", ".status.goodput", "number"),
            PrinterColumn("Status", '.status.conditions[?(@.type=="Ready")].reason'),
            PrinterColumn("Last-Scale", ".status.lastScale.reason", priority=1),
            PrinterColumn("Age", ".metadata.creationTimestamp", "date"),
        ),
    )

    api_version: Literal[API_VERSION] = API_VERSION  # type: ignore[valid-type]
    kind: Literal["ModelFleet"] = "ModelFleet"
    spec: ModelFleetSpec
    status: ModelFleetStatus = Field(default_factory=ModelFleetStatus)

    @property
    def served_model_name(self) -> str:
        return self.spec.model.served_model_name or self.name

    @property
    def gpus_per_replica(self) -> int:
        return self.spec.engine.gpu.count or self.spec.engine.tensor_parallel_size


