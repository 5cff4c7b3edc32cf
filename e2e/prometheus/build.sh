#!/usr/bin/env bash
# Build Prometheus from the Go module proxy, once per version, with only the discovery the e2e autoscale test uses
# (kubernetes_sd_configs, which the Prometheus Operator generates from a PodMonitor; Debian's package leaves
# Kubernetes discovery out). 3.5.0 is the newest release the Prometheus Operator v0.85.0 lists as compatible.
#
#   e2e/prometheus/build.sh                  # build if missing; prints the binary's path on the last line
#   e2e/prometheus/build.sh --print-binary   # just the path
#
# Output: ${AGENTFLEET_CACHE:-$HOME/.cache/agentfleet}/prometheus/<VERSION>/prometheus (~2 min cold on 2 cores)
set -euo pipefail

VERSION=v0.305.0   # Prometheus 3.5.0 (the module's v0.3XX.Y is Prometheus 3.XX.Y)
PKG=github.com/prometheus/prometheus/cmd/prometheus

CACHE_ROOT="${AGENTFLEET_CACHE:-$HOME/.cache/agentfleet}"
OUT_DIR="$CACHE_ROOT/prometheus/$VERSION"
BIN="$OUT_DIR/prometheus"

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
echo "[prometheus-build] go get $PKG@$VERSION" >&2
go get "$PKG@$VERSION" >&2
echo "[prometheus-build] go build (Kubernetes discovery only; a couple of minutes on 2 cores, once)" >&2
go build -trimpath -tags "remove_all_sd,enable_kubernetes_sd" -ldflags "-s -w" -o "$BIN.tmp" "$PKG" >&2
mv "$BIN.tmp" "$BIN"
echo "$BIN"
