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

VERSION=v1.75.0
PKG=github.com/jaegertracing/jaeger/cmd/jaeger

CACHE_ROOT="${AGENTFLEET_CACHE:-$HOME/.cache/agentfleet}"
OUT_DIR="$CACHE_ROOT/jaeger/$VERSION"
BIN="$OUT_DIR/jaeger"

if [[ "${1:-}" == "--print-binary" ]]; then echo "$BIN"; exit 0; fi
if [[ -x "$BIN" ]]; then echo "$BIN"; exit 0; fi

command -v go >/dev/null || { echo "ERROR: go is not on PATH" >&2; exit 1; }
mkdir -p "$OUT_DIR"
export GOMODCACHE="$CACHE_ROOT/go/mod" GOCACHE="$CACHE_ROOT/go/build"
export GOFLAGS="-modcacherw -buildvcs=false" CGO_ENABLED=0
mkdir -p "$GOMODCACHE" "$GOCACHE"

exec 9>"$OUT_DIR/.build.lock"
if command -v flock >/dev/null; then flock 9; fi
if [[ -x "$BIN" ]]; then echo "$BIN"; exit 0; fi   # built by whoever held the lock

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
go mod init wrapper >/dev/null 2>&1
echo "[jaeger-build] go get $PKG@$VERSION" >&2
go get "$PKG@$VERSION" >&2
echo "[jaeger-build] go build (several minutes on 2 cores, once)" >&2
go build -trimpath -ldflags "-s -w" -o "$BIN.tmp" "$PKG" >&2
mv "$BIN.tmp" "$BIN"
echo "$BIN"
