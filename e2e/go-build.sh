#!/usr/bin/env bash
# Build one Go command from the Go module proxy into the agentfleet cache, once per version: the recipe every
# e2e/<tool>/build.sh shares (a throwaway wrapper module + `go get` + `go build`; `go install ...@version` is
# refused here because the proxy will not list some modules' versions, see /work/shared/facts.md).
#
#   e2e/go-build.sh NAME VERSION PACKAGE BINARY [BUILD_TAGS] [--print-binary]
#
# Output: ${AGENTFLEET_CACHE:-$HOME/.cache/agentfleet}/NAME/VERSION/BINARY, printed on the last line. A second
# caller waits on a lock for the first one's build. Progress goes to stderr.
set -euo pipefail

NAME="$1" VERSION="$2" PKG="$3" BINARY="$4" TAGS="${5:-}" MODE="${6:-}"

CACHE_ROOT="${AGENTFLEET_CACHE:-$HOME/.cache/agentfleet}"
OUT_DIR="$CACHE_ROOT/$NAME/$VERSION"
BIN="$OUT_DIR/$BINARY"

if [[ "$MODE" == "--print-binary" ]]; then echo "$BIN"; exit 0; fi
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
echo "[$NAME-build] go get $PKG@$VERSION" >&2
go get "$PKG@$VERSION" >&2
echo "[$NAME-build] go build${TAGS:+ -tags $TAGS} (once per version; minutes on 2 cores)" >&2
go build -trimpath ${TAGS:+-tags "$TAGS"} -ldflags "-s -w" -o "$BIN.tmp" "$PKG" >&2
mv "$BIN.tmp" "$BIN"
echo "$BIN"
