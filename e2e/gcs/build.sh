#!/usr/bin/env bash
# Build fake-gcs-server (a third-party Google Cloud Storage emulator: the JSON API, in Go) from the Go module
# proxy, once per version. The gs:// ingestion tests run it on 127.0.0.1 when it is built (they fall back to an
# in-test stand-in of the JSON API otherwise).
#
#   e2e/gcs/build.sh                  # build if missing; prints the binary's path on the last line
#   e2e/gcs/build.sh --print-binary   # just the path
#
# Same recipe as e2e/sim/build.sh: a throwaway wrapper module + `go get` + `go build`.
# Output: ${AGENTFLEET_CACHE:-$HOME/.cache/agentfleet}/gcs/<VERSION>/fake-gcs-server
set -euo pipefail

GCS_VERSION=v1.56.1
GCS_PKG=github.com/fsouza/fake-gcs-server

CACHE_ROOT="${AGENTFLEET_CACHE:-$HOME/.cache/agentfleet}"
OUT_DIR="$CACHE_ROOT/gcs/$GCS_VERSION"
BIN="$OUT_DIR/fake-gcs-server"

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
echo "[gcs-build] go get $GCS_PKG@$GCS_VERSION" >&2
go get "$GCS_PKG@$GCS_VERSION" >&2
echo "[gcs-build] go build" >&2
go build -trimpath -ldflags "-s -w" -o "$BIN.tmp" "$GCS_PKG" >&2
mv "$BIN.tmp" "$BIN"
echo "$BIN"
