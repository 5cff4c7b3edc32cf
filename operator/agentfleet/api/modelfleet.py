"""ModelFleet: a vLLM serving fleet. Each replica is one tensor-parallel group (a StatefulSet pod with N GPUs);
replicas scale on goodput and queue depth read from Prometheus; a prefix- and session-aware router fronts it."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from ..names import API_VERSION
from .base import (
    DNS1123_LABEL, RFC1035_LABEL, CRDInfo, Condition, LocalRef, Model, PodOptions, PrinterColumn, Resource, Rule,
    SecretKeyRef, StatusModel,
)

__all__ = [
    "ModelSource", "GPUSpec", "ComputeResources", "EngineSpec", "AutoscalingSpec", "RouterSpec", "PricingSpec",
    "ModelFleetSpec", "ScalingDecision", "AutoscalerMemory", "ModelFleetStatus", "ModelFleet", "RouterPolicy",
    "ParallelismSpec", "RouterResources", "DrainSpec", "WeightCacheSpec", "PodOptions", "NetworkPolicySpec",
    "LoRAAdapter", "RESERVED_ENGINE_FLAGS", "EndpointPickerRef", "InferencePoolSpec", "EngineTelemetry",
    "RouterTelemetry",
]

RouterPolicy = Literal["prefix-aware", "session", "least-load", "round-robin"]

# vLLM flags that have a field of their own: in extraArgs they would change the GPU layout behind the renderer's
# back (the GPU request, the pods per replica), so they are rejected in favour of the field.
RESERVED_ENGINE_FLAGS = ("--pipeline-parallel-size", "--pipeline_parallel_size", "-pp",
                         "--tensor-parallel-size", "--tensor_parallel_size", "-tp",
                         "--otlp-traces-endpoint", "--collect-detailed-traces")


def _reserved_flag(arg: str) -> bool:
    return any(arg == f or arg.startswith(f + "=") for f in RESERVED_ENGINE_FLAGS)


_RESERVED_CEL = " || ".join(f"a == '{f}' || a.startsWith('{f}=')" for f in RESERVED_ENGINE_FLAGS)
# The effective tensor-parallel size and GPUs per replica, in CEL (the Python side: EngineSpec properties).
_TP_CEL = "(has(self.parallelism.tensor) ? self.parallelism.tensor : self.tensorParallelSize)"
_GPUS_CEL = f"(has(self.gpu.count) ? self.gpu.count : {_TP_CEL} * self.parallelism.pipeline)"


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
    count: int | None = Field(default=None, ge=1, le=512,
                              description="GPUs per replica; defaults to tensor x pipeline parallel size.")
    per_node: int | None = Field(
        default=None, ge=1, le=64,
        description="GPUs one node gives one pod (e.g. 8 on an 8-GPU node). A replica needing more is spread over "
                    "GPUs/perNode pods of a LeaderWorkerSet (needs the LeaderWorkerSet controller); unset: one pod "
                    "holds the whole replica.")


class ParallelismSpec(Model):
    """How one replica shards the model: GPUs per replica = tensor x pipeline."""

    tensor: int | None = Field(default=None, ge=1, le=64,
                               description="Tensor-parallel size; defaults to engine.tensorParallelSize.")
    pipeline: int = Field(default=1, ge=1, le=64, description="Pipeline-parallel size (stages, usually one per node).")


class DrainSpec(Model):
    """Scale-down and rollout without cutting streams: the pod leaves the Service and the router first (preStop),
    then vLLM stops taking requests and finishes the ones in flight (--shutdown-timeout, vLLM >= 0.18);
    terminationGracePeriodSeconds covers both."""

    pre_stop_seconds: int = Field(default=15, ge=0, le=600,
                                  description="Sleep before SIGTERM so routers and Services stop sending new work.")
    shutdown_timeout_seconds: int = Field(
        default=120, ge=0, le=3600,
        description="vLLM's --shutdown-timeout: how long in-flight requests may run after SIGTERM; 0 aborts them "
                    "(and leaves the flag out, for images older than vLLM 0.18).")


class WeightCacheSpec(Model):
    """Where downloaded weights (HF_HOME) live. EmptyDir: per pod, bounded by `size`, downloaded again after a
    restart. PerReplica: a PersistentVolumeClaim per replica (StatefulSet volumeClaimTemplate), kept across
    restarts (single-node replicas: a LeaderWorkerSet has no claim templates, its pods use EmptyDir). Shared: an
    existing claim (ReadWriteMany) named by claimName, mounted by every replica."""

    __rules__: ClassVar = (
        Rule("self.mode != 'Shared' || has(self.claimName)", "cache.claimName is required when mode is Shared",
             lambda s: s.mode != "Shared" or s.claim_name is not None, "claimName"),
        # A StatefulSet's volumeClaimTemplates cannot change: the apply would fail on every reconcile.
        Rule("self.mode == oldSelf.mode || (self.mode != 'PerReplica' && oldSelf.mode != 'PerReplica')",
             "cache.mode cannot change to or from PerReplica on an existing fleet (a StatefulSet's claim templates "
             "are immutable): create a new ModelFleet", None, "mode"),
        Rule("self.mode != 'PerReplica' || oldSelf.mode != 'PerReplica' || (self.size == oldSelf.size && "
             "has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || "
             "self.storageClassName == oldSelf.storageClassName))",
             "cache.size and cache.storageClassName cannot change on a PerReplica cache (a StatefulSet's claim "
             "templates are immutable): create a new ModelFleet", None, "size"),
    )

    mode: Literal["EmptyDir", "PerReplica", "Shared"] = "EmptyDir"
    size: str = Field(default="200Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)$",
                      description="The emptyDir sizeLimit, or the size of each per-replica claim.")
    storage_class_name: str | None = Field(default=None, description="PerReplica: the claims' StorageClass.")
    claim_name: str | None = Field(default=None, pattern=DNS1123_LABEL, description="Shared: the existing claim.")


class NetworkPolicySpec(Model):
    """Who may reach the engines and the router. Enabled: engines take traffic only from this fleet's router and
    engines, AgentApp runtimes, ingestion and evaluation pods of the namespace and Prometheus (pods labelled
    app.kubernetes.io/name=prometheus, any namespace); the router only from runtimes, ingestion, evaluation and
    Prometheus. `allowFrom` adds NetworkPolicy peers (e.g. an ingress controller) to both."""

    enabled: bool = True
    allow_from: list[dict[str, Any]] = Field(default_factory=list)


class LoRAAdapter(Model):
    name: str = Field(pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$", max_length=128,
                      description="The model name clients send to use this adapter.")
    uri: str = Field(
        pattern=r"^(hf://[^/\s]+/[^\s]+|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/[^\s]*)?|/[^\s]*)$",
        description="hf://ORG/ADAPTER, pvc://CLAIM/PATH (mounted read-only) or an absolute path in the image.")


class EndpointPickerRef(Model):
    """The Endpoint Picker (EPP) a Gateway API Inference Extension gateway asks, per request and over Envoy's
    ext_proc gRPC protocol, which engine pod to send it to: a Service in the fleet's namespace. agentfleet does not
    run one (see the README)."""

    name: str = Field(pattern=RFC1035_LABEL, max_length=63, description="The picker's Service.")
    port: int = Field(ge=1, le=65535, description="The Service port (not the target port) of its ext_proc server.")
    failure_mode: Literal["FailOpen", "FailClose"] = Field(
        default="FailClose",
        description="When the picker does not answer: FailOpen sends the request to an engine anyway, FailClose "
                    "drops it.")


class InferencePoolSpec(Model):
    """An InferencePool (inference.networking.k8s.io/v1, the Gateway API Inference Extension) selecting the engine
    pods that serve HTTP, so a conformant gateway can route to them with an HTTPRoute backendRef. Rendered only
    where the cluster serves the CRD; condition InferencePoolAvailable says whether it is."""

    enabled: bool = False
    endpoint_picker_ref: EndpointPickerRef | None = Field(
        default=None,
        description="Optional since the extension's v1.5.0 CRD (required before it: older CRDs refuse a pool "
                    "without one); without it the gateway implementation must pick endpoints itself.")


class ComputeResources(Model):
    cpu: str = Field(default="4", pattern=r"^[0-9]+(\.[0-9]+)?m?$")
    memory: str = Field(default="32Gi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$")


class RouterResources(Model):
    cpu: str = Field(default="250m", pattern=r"^[0-9]+(\.[0-9]+)?m?$", description="CPU request.")
    memory: str = Field(default="512Mi", pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|k|M|G|T)?$",
                        description="Memory request and limit.")


class EngineTelemetry(Model):
    """vLLM's own OpenTelemetry traces: a span per request, in the trace whose W3C traceparent the request carries
    (the runtime sends its chat span; the router passes the header through), so one trace shows a task from the
    runtime to the engine."""

    otlp_traces_endpoint: str = Field(
        pattern=r"^(grpc|https?)://\S+$",
        description="The collector's OTLP endpoint, e.g. grpc://otel-collector.observability:4317 (vLLM's "
                    "--otlp-traces-endpoint).")
    service_name: str | None = Field(default=None, max_length=253,
                                     description="OTEL_SERVICE_NAME of the engines; default <fleet>-engine.")
    collect_detailed_traces: Literal["model", "worker", "all"] | None = Field(
        default=None, description="vLLM's --collect-detailed-traces (adds per-step model timings; costs latency).")


class EngineSpec(Model):
    """The vLLM engine of one replica."""

    __rules__: ClassVar = (
        Rule("!has(self.parallelism.tensor) || self.tensorParallelSize == 1 || "
             "self.tensorParallelSize == self.parallelism.tensor",
             "set parallelism.tensor or tensorParallelSize (deprecated), not both to different values",
             lambda s: (s.parallelism.tensor is None or s.tensor_parallel_size == 1
                        or s.tensor_parallel_size == s.parallelism.tensor), "parallelism.tensor"),
        Rule(f"!has(self.gpu.count) || self.gpu.count >= {_TP_CEL} * self.parallelism.pipeline",
             "gpu.count must be at least tensorParallelSize (or parallelism.tensor) x parallelism.pipeline: one GPU "
             "per shard",
             lambda s: s.gpu.count is None or s.gpu.count >= s.tp * s.pp, "gpu.count"),
        Rule(f"!has(self.gpu.perNode) || {_GPUS_CEL} <= self.gpu.perNode || {_GPUS_CEL} % self.gpu.perNode == 0",
             "a replica spread over several nodes needs a GPU count (tensor x pipeline) that is a multiple of "
             "gpu.perNode",
             lambda s: (s.gpu.per_node is None or s.gpus <= s.gpu.per_node or s.gpus % s.gpu.per_node == 0),
             "gpu.perNode"),
        Rule(f"!has(self.extraArgs) || !self.extraArgs.exists(a, {_RESERVED_CEL})",
             "extraArgs must not set the tensor or pipeline parallel size: use parallelism.tensor and "
             "parallelism.pipeline (they size the GPU request and the pods of a replica)",
             lambda s: not any(_reserved_flag(a) for a in s.extra_args), "extraArgs"),
    )

    image: str | None = Field(default=None, description="vLLM image; defaults to the operator's pinned image.")
    tensor_parallel_size: int = Field(default=1, ge=1, le=16,
                                      description="Deprecated: parallelism.tensor. Kept for existing fleets; "
                                                  "when both are set they must agree.")
    parallelism: ParallelismSpec = Field(default_factory=ParallelismSpec)
    gpu: GPUSpec = Field(default_factory=GPUSpec)
    resources: ComputeResources = Field(default_factory=ComputeResources)
    enable_prefix_caching: bool = True
    max_num_seqs: int | None = Field(default=None, ge=1, le=4096)
    max_model_len: int | None = Field(default=None, ge=128)
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    # Bounded so that the API server's CEL cost estimate of the extraArgs rule stays within its budget.
    extra_args: list[Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=list, max_length=256, description="Passed to vLLM verbatim, after ours.")
    telemetry: EngineTelemetry | None = Field(default=None, description="vLLM's OpenTelemetry traces; off unset.")
    shm_size: str = Field(default="8Gi", pattern=r"^[0-9]+(Ki|Mi|Gi|Ti)$",
                          description="Size of the memory-backed /dev/shm (NCCL needs it for tensor parallelism).")
    startup_timeout_seconds: int = Field(default=1800, ge=60, le=86400,
                                         description="How long model download and loading may take.")
    progress_deadline_seconds: int = Field(
        default=600, ge=30, le=86400,
        description="How long an engine pod may stay crash-looping, failing to pull its image, unschedulable or "
                    "otherwise stuck before the fleet is Degraded with the pod's reason.")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Merged with pod.nodeSelector.")
    drain: DrainSpec = Field(default_factory=DrainSpec)
    cache: WeightCacheSpec = Field(default_factory=WeightCacheSpec)
    pod: PodOptions = Field(default_factory=PodOptions)

    @property
    def tp(self) -> int:
        return self.parallelism.tensor or self.tensor_parallel_size

    @property
    def pp(self) -> int:
        return self.parallelism.pipeline

    @property
    def gpus(self) -> int:
        """GPUs of one replica (all its pods together)."""
        return self.gpu.count or self.tp * self.pp

    @property
    def pods_per_replica(self) -> int:
        """1, or the LeaderWorkerSet group size when a replica needs more GPUs than one node gives."""
        per_node = self.gpu.per_node
        return 1 if per_node is None or self.gpus <= per_node else self.gpus // per_node

    @property
    def gpus_per_pod(self) -> int:
        return self.gpus // self.pods_per_replica


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
    pod_monitor_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Labels on the rendered PodMonitor, for a Prometheus whose podMonitorSelector wants them "
                    "(kube-prometheus-stack by default selects release: <its Helm release name>).")


class RouterTelemetry(Model):
    """The router's OpenTelemetry traces, the same shape as an AgentApp's spec.telemetry: a span per proxied request
    (`POST /v1/chat/completions`), a child of the caller's traceparent (the runtime's chat span), whose own
    traceparent goes to the engine. Attributes name the replica, the route reason and the attempts, never the prompt
    or the session id."""

    otlp_endpoint: str = Field(pattern=r"^https?://\S+$", description=(
        "OTLP/HTTP base URL of a collector (e.g. http://otel-collector.observability:4318); /v1/traces is "
        "appended."))
    service_name: str | None = Field(default=None, max_length=253,
                                     description="service.name of the router's spans (default: <fleet>-router).")
    sample_ratio: float = Field(default=1.0, ge=0, le=1, description=(
        "Share of new traces recorded; a caller's sampled traceparent is always followed."))


class RouterSpec(Model):
    policy: RouterPolicy = Field(default="prefix-aware",
                                 description="prefix-aware and session use consistent hashing with bounded load.")
    replicas: int = Field(default=1, ge=1, le=100)
    placement: Literal["auto", "local", "shared"] = Field(default="auto", description=(
        "How the router places a session that does not say where it lives (the AgentApp runtime's calls do): local "
        "(by the router's own counts; the best spread with one router), shared (by the hash ring only, so every "
        "router replica places it on the same engine), auto (shared when replicas > 1)."))
    fair_queue: bool = Field(default=False, description=(
        "Per-run fair queueing at saturation: each router lets at most engine.maxNumSeqs / replicas requests be in "
        "flight on an engine; the rest wait in the router, and a freed slot goes to the run with the fewest calls "
        "served, so a long task cannot starve short ones behind it. A low-priority request (x-agentfleet-priority: "
        "low, sent for a task its Budget degraded with degradeBy low-priority) waits behind every normal one."))
    fair_queue_order: Literal["least-served", "most-served"] = Field(default="least-served", description=(
        "With fairQueue, which waiting run a freed slot goes to: least-served (short runs first) or most-served "
        "(runs deep into their task first: a lower task p95 at some throughput cost, see the README)."))
    load_bound_factor: float = Field(default=1.25, ge=1, le=10,
                                     description="A replica takes at most this times the mean load (bounded loads).")
    prefix_tokens: int = Field(default=256, ge=16, le=32768,
                               description="Prompt length hashed for prefix affinity, past the shared system prompt.")
    resources: RouterResources = Field(default_factory=lambda: RouterResources())
    pod: PodOptions = Field(default_factory=PodOptions)
    telemetry: RouterTelemetry | None = Field(default=None, description="The router's OpenTelemetry traces; off unset.")


class PricingSpec(Model):
    """What this fleet costs, for the Budget to price calls with when it has no table entry of its own."""

    gpu_hour_usd: float | None = Field(default=None, ge=0)
    input_per_m_tokens_usd: float | None = Field(default=None, ge=0)
    output_per_m_tokens_usd: float | None = Field(default=None, ge=0)


class ModelFleetSpec(Model):
    __rules__: ClassVar = (
        Rule("!has(self.baseUrl) || !has(self.inferencePool) || !self.inferencePool.enabled",
             "inferencePool.enabled needs engines to select: a fleet with baseUrl runs none",
             lambda s: s.base_url is None or not s.inference_pool.enabled, "inferencePool.enabled"),
        Rule("!has(self.router) || !has(self.router.fairQueue) || !self.router.fairQueue || "
             "(has(self.engine) && has(self.engine.maxNumSeqs))",
             "router.fairQueue shares out the engines' batch slots: set engine.maxNumSeqs",
             lambda s: not s.router.fair_queue or s.engine.max_num_seqs is not None, "router.fairQueue"),
    )

    model: ModelSource
    engine: EngineSpec = Field(default_factory=EngineSpec)
    replicas: int = Field(default=1, ge=0, le=1000,
                          description="Written by the autoscaler through /scale when autoscaling is enabled.")
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    router: RouterSpec = Field(default_factory=RouterSpec)
    pricing: PricingSpec = Field(default_factory=PricingSpec)
    adapters: list[LoRAAdapter] = Field(
        default_factory=list, max_length=64,
        description="LoRA adapters loaded next to the base model (vLLM --enable-lora --lora-modules); clients "
                    "select one by sending its name as the model.")
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)
    inference_pool: InferencePoolSpec = Field(default_factory=InferencePoolSpec)
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
    gpus_per_replica: int | None = Field(default=None, description="tensor x pipeline (or gpu.count).")
    pods_per_replica: int | None = Field(default=None, description="1, or the LeaderWorkerSet group size.")
    workload: str | None = Field(default=None, description="StatefulSet or LeaderWorkerSet.")
    metrics_discovery: str | None = Field(default=None, description="PodMonitor or Annotations: how Prometheus "
                                                                   "finds the engines' /metrics.")
    adapters: list[str] = Field(default_factory=list, description="LoRA adapters the engines are started with.")
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
            PrinterColumn("GPUs", ".status.gpusPerReplica", "integer", priority=1, description="GPUs per replica."),
            PrinterColumn("Workload", ".status.workload", priority=1),
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
        return self.spec.engine.gpus


