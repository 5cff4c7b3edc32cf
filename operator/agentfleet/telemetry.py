"""OpenTelemetry traces and metrics with the GenAI semantic conventions: the one module that imports
`opentelemetry`, and only when telemetry is on. Everything else holds a `Telemetry` and calls `span()`,
`inject()`, `incoming()` and `record_chat()` on it; `DISABLED` (the default everywhere) answers each with a
shared no-op object, so with telemetry off no span is made and the SDK is never imported.

Span names, operation names and attributes follow the GenAI conventions (semantic-conventions v1.37 and later,
https://opentelemetry.io/docs/specs/semconv/gen-ai/): `invoke_agent {agent}`, `chat {model}` (gen_ai.request.model,
gen_ai.usage.input_tokens / output_tokens, gen_ai.response.finish_reasons), `execute_tool {tool}`
(gen_ai.tool.name, gen_ai.tool.call.id, gen_ai.tool.type); the metrics `gen_ai.client.token.usage` and
`gen_ai.client.operation.duration`; the router's span follows the HTTP server conventions (`POST
/v1/chat/completions`, http.request.method, http.route, http.response.status_code); what the conventions have no
name for is `agentfleet.*` (cost, budget, retrieval counts, the replica a request was routed to). Privacy rule:
attributes carry names, counts, ids and money — never a prompt, a completion, a tool's arguments or result, a
passage's text, or the principal's user and groups."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, MutableMapping

__all__ = ["Telemetry", "DISABLED", "TelemetrySettings", "start", "PROVIDER", "TOKEN_USAGE", "OPERATION_DURATION"]

PROVIDER = "vllm"  # gen_ai.provider.name: every ModelFleet serves vLLM (a custom value, as the conventions allow)
TOKEN_USAGE = "gen_ai.client.token.usage"
OPERATION_DURATION = "gen_ai.client.operation.duration"
# The bucket boundaries the GenAI metric conventions advise.
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)


class _NoSpan:
    """The span (and its context manager) when telemetry is off: every call does nothing."""

    __slots__ = ()

    def __enter__(self) -> _NoSpan:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        pass

    def update_name(self, name: str) -> None:
        pass


_NO_SPAN = _NoSpan()


class Telemetry:
    """Telemetry switched off. `start()` returns the live kind; both answer the same calls."""

    is_enabled = False

    def span(self, name: str, attributes: Mapping[str, Any] | None = None, *, kind: str = "internal") -> Any:
        """A context manager opening a child of the current span; it yields the span (set_attribute(s))."""
        return _NO_SPAN

    def current_span(self) -> Any:
        return _NO_SPAN

    def set_error(self, span: Any, error_type: str) -> None:
        """Mark `span` failed (error.type and an error status) without an exception passing through it."""

    def inject(self, headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
        """`headers` with the current span's W3C `traceparent` (and `tracestate`) added."""
        return headers

    def incoming(self, headers: Mapping[str, str]) -> Any:
        """A context manager making the caller's `traceparent` (when it sent one) the parent of spans opened in it."""
        return _NO_SPAN

    def record_chat(self, *, model: str, response_model: str, input_tokens: int, output_tokens: int,
                    duration_s: float, error_type: str | None = None) -> None:
        pass

    def shutdown(self) -> None:
        pass


DISABLED = Telemetry()


@dataclass(frozen=True)
class TelemetrySettings:
    otlp_endpoint: str  # the collector's OTLP/HTTP base URL: /v1/traces and /v1/metrics are appended
    service_name: str
    sample_ratio: float = 1.0
    resource: Mapping[str, str] | None = None  # more resource attributes (service.namespace, ...)
    metric_interval_s: float = 30.0
    metrics: bool = True  # the GenAI metrics; a process that records none (the router) exports none


def _error_type(e: BaseException) -> str:
    # A stop of the agent loop carries its reason (deadline, max_steps, ...); anything else its class name.
    reason = getattr(e, "reason", None)
    return reason if isinstance(reason, str) and reason else type(e).__name__


class _Live(Telemetry):
    is_enabled = True

    def __init__(self, settings: TelemetrySettings):
        from opentelemetry import context, trace
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        base = settings.otlp_endpoint.rstrip("/")
        resource = Resource.create({"service.name": settings.service_name, **(settings.resource or {})})
        # Providers of our own, not the process-wide globals: two runtimes in one process (tests) stay apart.
        self.tracer_provider = TracerProvider(
            resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
        self.tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=base + "/v1/traces")))
        self.meter_provider = MeterProvider(resource=resource, metric_readers=[PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=base + "/v1/metrics"),
            export_interval_millis=settings.metric_interval_s * 1000)]) if settings.metrics else None
        self.tracer = self.tracer_provider.get_tracer("agentfleet")
        if self.meter_provider is None:
            from opentelemetry.metrics import NoOpMeterProvider

            meter = NoOpMeterProvider().get_meter("agentfleet")
        else:
            meter = self.meter_provider.get_meter("agentfleet")
        self.token_usage = meter.create_histogram(
            TOKEN_USAGE, unit="{token}", description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=list(_TOKEN_BUCKETS))
        self.duration = meter.create_histogram(
            OPERATION_DURATION, unit="s", description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=list(_DURATION_BUCKETS))
        self._trace, self._context, self._status = trace, context, (Status, StatusCode)
        self._kinds = {"internal": SpanKind.INTERNAL, "client": SpanKind.CLIENT, "server": SpanKind.SERVER}
        self._propagator = TraceContextTextMapPropagator()

    @contextlib.contextmanager
    def span(self, name: str, attributes: Mapping[str, Any] | None = None, *,  # type: ignore[override]
             kind: str = "internal") -> Iterator[Any]:
        with self.tracer.start_as_current_span(name, kind=self._kinds[kind], attributes=attributes,
                                               record_exception=False, set_status_on_exception=False) as s:
            try:
                yield s
            except BaseException as e:
                status, code = self._status
                s.set_attribute("error.type", _error_type(e))
                if isinstance(e, Exception):  # not a cancellation (the client went away)
                    s.set_status(status(code.ERROR, _error_type(e)))
                raise

    def current_span(self) -> Any:
        return self._trace.get_current_span()

    def set_error(self, span: Any, error_type: str) -> None:
        status, code = self._status
        span.set_attribute("error.type", error_type)
        span.set_status(status(code.ERROR, error_type))

    def inject(self, headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
        self._propagator.inject(headers)
        return headers

    @contextlib.contextmanager
    def incoming(self, headers: Mapping[str, str]) -> Iterator[None]:  # type: ignore[override]
        if "traceparent" not in headers:
            yield None
            return
        token = self._context.attach(self._propagator.extract(headers))
        try:
            yield None
        finally:
            self._context.detach(token)

    def record_chat(self, *, model: str, response_model: str, input_tokens: int, output_tokens: int,
                    duration_s: float, error_type: str | None = None) -> None:
        attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": PROVIDER, "gen_ai.request.model": model}
        if response_model:
            attrs["gen_ai.response.model"] = response_model
        if error_type:
            attrs["error.type"] = error_type
        self.duration.record(duration_s, attrs)
        if input_tokens:
            self.token_usage.record(input_tokens, {**attrs, "gen_ai.token.type": "input"})
        if output_tokens:
            self.token_usage.record(output_tokens, {**attrs, "gen_ai.token.type": "output"})

    def shutdown(self) -> None:
        # Flushes what is batched; bounded so a collector that is down does not hold up a pod's exit.
        self.tracer_provider.force_flush(timeout_millis=5000)
        self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown(timeout_millis=5000)


def start(settings: TelemetrySettings | None) -> Telemetry:
    """Live telemetry exporting to `settings.otlp_endpoint`, or DISABLED when there are no settings. Other
    exporter options (headers, timeouts, certificates) come from the standard OTEL_EXPORTER_OTLP_* variables,
    which the SDK's exporters read themselves."""
    return DISABLED if settings is None else _Live(settings)
