#!/usr/bin/env bash
# Build Jaeger v2 (an OpenTelemetry Collector distribution with an OTLP receiver, in-memory storage and the query
# API) from the Go module proxy, once per version. The tracing tests send the runtime's OTLP spans to it and read the
# span tree back from /api/traces.
#
#   e2e/jaeger/build.sh                  # build if missing; prints the binary's path on the last line
#   e2e/jaeger/build.sh --print-binary   # just the path
#
# The module's v1.X.Y tags carry the v2 binary (cmd/jaeger); v1.75.0 is Jaeger v2.12.0.
# Output: ${AGENTFLEET_CACHE:-$HOME/.cache/agentfleet}/jaeger/<VERSION>/jaeger
set -euo pipefail

exec "$(dirname "$0")/../go-build.sh" jaeger v1.75.0 github.com/jaegertracing/jaeger/cmd/jaeger jaeger "" "$@"
