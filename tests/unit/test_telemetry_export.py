"""What the OpenTelemetry exporters send, caught by a plain OTLP/HTTP receiver on 127.0.0.1: with metrics (the
runtime) a span goes to /v1/traces and the GenAI metrics to /v1/metrics at shutdown; without (the router, which
records no GenAI metrics) only /v1/traces is ever called, so a collector gets no empty metric batches."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest

from agentfleet.telemetry import TelemetrySettings, start


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[str]]]:
    paths: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            paths.append(self.path)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", paths
    finally:
        server.shutdown()


@pytest.mark.parametrize(("metrics", "expected"), [(True, ["/v1/metrics", "/v1/traces"]), (False, ["/v1/traces"])],
                         ids=["runtime", "router"])
def test_metrics_are_exported_only_where_they_are_recorded(receiver: tuple[str, list[str]], metrics: bool,
                                                           expected: list[str]) -> None:
    url, paths = receiver
    tel = start(TelemetrySettings(otlp_endpoint=url, service_name="t", metrics=metrics, metric_interval_s=3600))
    with tel.span("chat m", {"gen_ai.operation.name": "chat"}):
        pass
    tel.record_chat(model="m", response_model="m", input_tokens=3, output_tokens=2, duration_s=0.1)
    tel.shutdown()
    assert sorted(set(paths)) == expected
