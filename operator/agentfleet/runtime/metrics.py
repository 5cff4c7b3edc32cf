"""The runtime's Prometheus metrics, named once here, on a registry of its own (several runtimes in one test
process never collide). Labels are bounded: route names, model names from the config, tenants from the key
store, stop reasons and error codes from fixed sets; never a user id, a task id or a query."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["RuntimeMetrics", "CONTENT_TYPE_LATEST"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class RuntimeMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.request_seconds = Histogram("agentfleet_runtime_request_seconds", "HTTP request latency.",
                                         ["route", "code"], buckets=_LATENCY_BUCKETS, registry=r)
        self.task_seconds = Histogram("agentfleet_runtime_task_seconds", "Agent task latency, by how it ended.",
                                      ["stop_reason"], buckets=_LATENCY_BUCKETS, registry=r)
        self.task_steps = Histogram("agentfleet_runtime_task_steps", "Model calls per task (sub-agents included).",
                                    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64), registry=r)
        self.tokens = Counter("agentfleet_runtime_tokens_total", "Tokens spent, by model, tenant and kind.",
                              ["model", "tenant", "kind"], registry=r)
        self.cost_usd = Counter("agentfleet_runtime_cost_usd_total", "Money spent, by model and tenant.",
                                ["model", "tenant"], registry=r)
        self.budget_remaining_usd = Gauge("agentfleet_runtime_budget_remaining_usd",
                                          "What the Budget's window still admits (-1: unlimited).", ["budget"],
                                          registry=r)
        self.budget_remaining_tokens = Gauge("agentfleet_runtime_budget_remaining_tokens",
                                             "Tokens the Budget's window still admits (-1: unlimited).", ["budget"],
                                             registry=r)
        self.retrieval_seconds = Histogram("agentfleet_runtime_retrieval_seconds", "Retrieve tool latency.",
                                           buckets=_LATENCY_BUCKETS, registry=r)
        self.retrieval_cache = Counter("agentfleet_runtime_retrieval_cache_total", "Retrieval cache lookups.",
                                       ["result"], registry=r)
        self.errors = Counter("agentfleet_runtime_errors_total", "Failures by reason (HTTP codes, stop reasons).",
                              ["reason"], registry=r)
        self.tasks_running = Gauge("agentfleet_runtime_tasks_running", "Agent tasks in progress.", registry=r)
        self.auth_failures = Counter("agentfleet_runtime_auth_failures_total",
                                     "Failed authentication, by why (missing, malformed, invalid key; "
                                     "delegation_refused: on-behalf-of headers the key may not send).", ["reason"],
                                     registry=r)
        self.auth_throttled = Counter("agentfleet_runtime_auth_throttled_total",
                                      "Requests refused (429) for too many failed authentications, by which limit.",
                                      ["by"], registry=r)
        self.caller_limited = Counter("agentfleet_runtime_caller_limited_total",
                                      "Runs refused (429) by a per-key or per-tenant limit, by which limit "
                                      "(key_concurrency, tenant_concurrency, key_rate, tenant_rate).", ["by"],
                                      registry=r)
        self.upstream_ready = Gauge("agentfleet_runtime_upstream_ready",
                                    "1 when the upstream answered the last readiness check (model_large, "
                                    "model_small, mcp_<server>, index); the replica stays ready either way.",
                                    ["upstream"], registry=r)

    def record_upstreams(self, ready: dict[str, bool]) -> None:
        for name, ok in ready.items():
            self.upstream_ready.labels(name).set(1.0 if ok else 0.0)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
