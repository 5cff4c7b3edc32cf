#!/usr/bin/env bash
# Build the Prometheus Operator (its controller binary) from the Go module proxy, once per version, for the e2e
# autoscale test: it turns the PodMonitor the operator renders into Prometheus's scrape configuration, the real
# discovery path of kube-prometheus-stack. The same version's CRDs are what the API tier dry-runs against.
#
#   e2e/prometheus-operator/build.sh                  # build if missing; prints the binary's path on the last line
#   e2e/prometheus-operator/build.sh --print-binary   # just the path
#
# Output: ${AGENTFLEET_CACHE:-$HOME/.cache/agentfleet}/prometheus-operator/<VERSION>/operator
set -euo pipefail

VERSION=v0.85.0
MODULE=github.com/prometheus-operator/prometheus-operator
PKG=$MODULE/cmd/operator

CACHE_ROOT="${AGENTFLEET_CACHE:-$HOME/.cache/agentfleet}"
OUT_DIR="$CACHE_ROOT/prometheus-operator/$VERSION"
BIN="$OUT_DIR/operator"

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
echo "[prometheus-operator-build] go get $PKG@$VERSION" >&2
go get "$PKG@$VERSION" >&2
echo "[prometheus-operator-build] go build (a few minutes on 2 cores, once)" >&2
go build -trimpath -ldflags "-s -w" -o "$BIN.tmp" "$PKG" >&2
mv "$BIN.tmp" "$BIN"
echo "$BIN"
