"""vLLM's Prometheus metric names, once, in every spelling we accept. vLLM renamed
`vllm:gpu_cache_usage_perc` to `vllm:kv_cache_usage_perc` (V1 engine), prometheus_client adds `_total` to
counters while llm-d-inference-sim v0.10.2 exports them without it (facts.md), so readers of metrics (the
router's least-loaded fallback, the autoscaler's PromQL) take the first spelling present."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = [
    "WAITING", "RUNNING", "KV_CACHE_USAGE", "PREFIX_CACHE_HITS", "PREFIX_CACHE_QUERIES", "TTFT_HISTOGRAM",
    "E2E_LATENCY_HISTOGRAM", "REQUEST_SUCCESS", "GENERATION_TOKENS", "first_present", "promql_name_regex",
]

# Each tuple: the current spelling first, then the older ones.
WAITING = ("vllm:num_requests_waiting",)
RUNNING = ("vllm:num_requests_running",)
KV_CACHE_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
PREFIX_CACHE_HITS = ("vllm:prefix_cache_hits_total", "vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits_total",
                     "vllm:gpu_prefix_cache_hits")
PREFIX_CACHE_QUERIES = ("vllm:prefix_cache_queries_total", "vllm:prefix_cache_queries",
                        "vllm:gpu_prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries")
REQUEST_SUCCESS = ("vllm:request_success_total", "vllm:request_success")
GENERATION_TOKENS = ("vllm:generation_tokens_total", "vllm:generation_tokens")
# Histograms: the base name; series are <name>_bucket / _sum / _count.
TTFT_HISTOGRAM = "vllm:time_to_first_token_seconds"
E2E_LATENCY_HISTOGRAM = "vllm:e2e_request_latency_seconds"


def first_present(samples: Mapping[str, float], names: tuple[str, ...]) -> float | None:
    """The value under the first spelling `samples` has, or None when it has none of them."""
    for name in names:
        if name in samples:
            return samples[name]
    return None


def promql_name_regex(names: tuple[str, ...]) -> str:
    """A `__name__=~"..."` regex matching every spelling (':' and '_' need no escaping in RE2)."""
    return "|".join(names)
