#!/usr/bin/env bash
# Build llm-d-inference-sim (the third-party vLLM simulator) from the Go module proxy, once per version.
#
#   e2e/sim/build.sh                  # build if missing; prints the binary's path on the last line
#   e2e/sim/build.sh --print-binary   # just the path
#
# `go install ...@v0.10.2` fails here (the proxy refuses the module's version list, which go install reads for
# deprecation; see /work/shared/facts.md), so: a throwaway wrapper module + `go get` + `go build`.
# Output: ${AGENTFLEET_CACHE:-$HOME/.cache/agentfleet}/sim/<SIM_VERSION>/llm-d-inference-sim  (~54 MB, pure Go)
# Cold: ~3.5 min on 2 vCPUs; then a no-op.
set -euo pipefail

SIM_VERSION=v0.10.2
SIM_PKG=github.com/llm-d/llm-d-inference-sim/cmd/llm-d-inference-sim

CACHE_ROOT="${AGENTFLEET_CACHE:-$HOME/.cache/agentfleet}"
OUT_DIR="$CACHE_ROOT/sim/$SIM_VERSION"
BIN="$OUT_DIR/llm-d-inference-sim"

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
echo "[sim-build] go get $SIM_PKG@$SIM_VERSION" >&2
go get "$SIM_PKG@$SIM_VERSION" >&2
echo "[sim-build] go build" >&2
go build -trimpath -ldflags "-s -w" -o "$BIN.tmp" "$SIM_PKG" >&2
mv "$BIN.tmp" "$BIN"
echo "$BIN"
