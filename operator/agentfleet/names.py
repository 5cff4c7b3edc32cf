"""Every name that crosses a process boundary lives here once: the API group and version, the finalizer,
the field manager, the label keys and the names of the children each resource owns."""

from __future__ import annotations

__all__ = [
    "GROUP", "VERSION", "API_VERSION", "CATEGORY", "FINALIZER", "FIELD_MANAGER", "SCALER_FIELD_MANAGER",
    "ANNOTATION_PREFIX", "CONFIG_HASH_ANNOTATION", "SPEC_HASH_LABEL", "MANAGED_BY", "LABEL_NAME", "LABEL_INSTANCE",
    "LABEL_COMPONENT", "LABEL_MANAGED_BY", "LABEL_PART_OF", "ENGINE_PORT", "ROUTER_PORT", "RUNTIME_PORT",
    "RUNTIME_METRICS_PORT", "RUNTIME_METRICS_PORT_ENV",
    "engine_name", "router_name", "fleet_url", "milvus_uri", "ingest_job_name",
    "milvus_name", "app_config_name", "REDIS_URL_ENV", "RUNTIME_PRE_STOP_S", "RUNTIME_SHUTDOWN_TIMEOUT_S",
    "RUNTIME_REPLICA_ENV", "SERVICE_ACCOUNT_DIR", "app_state_claim_name",
    "app_budget_role_name", "MCP_HEADERS_DIR", "MCP_HEADERS_DIR_ENV", "A2A_KEYS_DIR", "A2A_KEYS_DIR_ENV",
    "A2A_KEY_FILE", "a2a_key_env",
]

GROUP = "agentfleet.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "agentfleet"

# kopf persistence: set once in the operator's on.startup; changing either makes kopf re-handle every object.
ANNOTATION_PREFIX = GROUP
FINALIZER = f"{GROUP}/finalizer"

# One field manager for everything the reconciler applies; the autoscaler writes spec.replicas under its own.
FIELD_MANAGER = "agentfleet"
SCALER_FIELD_MANAGER = "agentfleet-autoscaler"

CONFIG_HASH_ANNOTATION = f"{GROUP}/config-hash"
SPEC_HASH_LABEL = f"{GROUP}/spec-hash"

MANAGED_BY = "agentfleet"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_PART_OF = "app.kubernetes.io/part-of"

ENGINE_PORT = 8000
ROUTER_PORT = 8000
RUNTIME_PORT = 8080
# The runtime's /metrics listens here, not on the serving port: per-tenant usage and Budget gauges are for
# Prometheus, not for every client that can reach the Service.
RUNTIME_METRICS_PORT = 9090
RUNTIME_METRICS_PORT_ENV = "AGENTFLEET_METRICS_PORT"

# The runtime reads the ledger's Redis URL from this variable when its configuration carries none (an AgentApp's
# ledger.redisUrlSecretRef is rendered into it).
REDIS_URL_ENV = "AGENTFLEET_REDIS_URL"
# Where a pod's service-account token, CA and namespace are mounted (the runtime publishes its Budget's spend).
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# An MCP server's `headersSecretRef` is mounted at <MCP_HEADERS_DIR>/<server name>/, one file per header (the
# Secret's key is the header name); the runtime reads the directory from MCP_HEADERS_DIR_ENV when it is set.
MCP_HEADERS_DIR = "/etc/agentfleet/mcp-headers"
MCP_HEADERS_DIR_ENV = "AGENTFLEET_MCP_HEADERS_DIR"
# An a2a sub-agent's `keySecretRef` (this app's API key at the remote agent) is mounted as the file
# <A2A_KEYS_DIR>/<sub-agent name>/key (a directory mount, so a rotated Secret reaches the pod); the runtime reads
# the directory from A2A_KEYS_DIR_ENV when it is set.
A2A_KEYS_DIR = "/etc/agentfleet/a2a-keys"
A2A_KEYS_DIR_ENV = "AGENTFLEET_A2A_KEYS_DIR"
A2A_KEY_FILE = "key"


def a2a_key_env(sub_agent: str) -> str:
    """`agentfleet up`: the environment variable that may hold an a2a sub-agent's key instead of its Secret."""
    return "AGENTFLEET_A2A_KEY_" + sub_agent.upper().replace("-", "_")


def app_state_claim_name(app: str) -> str:
    """The PersistentVolumeClaim of an AgentApp's SQLite ledger."""
    return f"{app}-state"


def app_budget_role_name(app: str) -> str:
    """The Role (and RoleBinding) letting an AgentApp's runtime patch its Budget's status."""
    return f"{app}-budget-status"


def engine_name(fleet: str) -> str:
    """The vLLM StatefulSet of a ModelFleet and its headless Service."""
    return f"{fleet}-engine"


def router_name(fleet: str) -> str:
    """The router Deployment of a ModelFleet (and its ServiceAccount and Role)."""
    return f"{fleet}-router"


def fleet_url(fleet: str, namespace: str) -> str:
    """The OpenAI-compatible base URL of a ModelFleet inside the cluster: its router's Service."""
    return f"http://{router_name(fleet)}.{namespace}.svc:{ROUTER_PORT}/v1"


def ingest_job_name(index: str, spec_hash: str) -> str:
    """A Job cannot change in place, so its name carries the hash of what it ingests."""
    return f"{index}-ingest-{spec_hash}"


def milvus_name(index: str) -> str:
    """The Milvus resource (Milvus operator) of a managed VectorIndex; the operator names its Service
    `<name>-milvus`, and an embedded index's own Milvus pod and Service use that same name."""
    return index


def milvus_uri(index: str, namespace: str) -> str:
    return f"http://{milvus_name(index)}-milvus.{namespace}.svc:19530"


def app_config_name(app: str) -> str:
    """The ConfigMap holding an AgentApp's rendered runtime configuration."""
    return f"{app}-config"

# The runtime on SIGTERM: the pod leaves its Service during the preStop sleep, then runs are handed to another
# replica at once and chat completions in flight get the shutdown timeout; the grace period covers both.
RUNTIME_PRE_STOP_S = 5
RUNTIME_SHUTDOWN_TIMEOUT_S = 25
RUNTIME_REPLICA_ENV = "AGENTFLEET_REPLICA"
