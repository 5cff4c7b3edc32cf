#!/usr/bin/env bash
# Build a real Kubernetes control plane (plus etcd and kwok) from Go modules, once per version.
#
#   e2e/cluster/build.sh            # build whatever is missing, print the bin dir on the last line
#   e2e/cluster/build.sh --print-bin-dir
#
# Output: ${AGENTFLEET_CACHE:-$HOME/.cache/agentfleet}/k8s/<K8S_VERSION>/bin/
#   kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok kwokctl
# Go's module and build caches live under the same cache root, so rebuilds are quick.
# A cold build takes ~15-20 min on 2 vCPUs; a finished component is skipped (stamp file).
# Needs only Go (>= 1.26, the etcd module asks for it) and network access to the Go module proxy.
set -euo pipefail

# ---- pinned versions: the one place to change them ------------------------------------------------
K8S_VERSION=v1.35.4      # k8s.io/kubernetes (go.mod in this dir must require the same; staging = v0.35.4)
ETCD_VERSION=v3.6.16     # go.etcd.io/etcd/server/v3 (etcd/go.mod must require the same)
KWOK_VERSION=v0.8.0      # sigs.k8s.io/kwok (kwok, kwokctl)
# ---------------------------------------------------------------------------------------------------

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${AGENTFLEET_CACHE:-$HOME/.cache/agentfleet}"
BIN_DIR="$CACHE_ROOT/k8s/$K8S_VERSION/bin"

if [[ "${1:-}" == "--print-bin-dir" ]]; then
  echo "$BIN_DIR"
  exit 0
fi

export GOMODCACHE="$CACHE_ROOT/go/mod"
export GOCACHE="$CACHE_ROOT/go/build"
# -mod=mod: fill in go.sum if a fresh clone lacks anything; -modcacherw: the cache can be rm -rf'ed.
export GOFLAGS="-mod=mod -modcacherw -buildvcs=false"
export CGO_ENABLED=0
mkdir -p "$BIN_DIR" "$GOMODCACHE" "$GOCACHE"

log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

command -v go >/dev/null || { log "ERROR: go is not on PATH"; exit 1; }

# One build at a time per cache root (parallel test sessions may call this).
exec 9>"$CACHE_ROOT/k8s/$K8S_VERSION/.build.lock"
if command -v flock >/dev/null; then
  flock -n 9 || { log "another build holds the lock; waiting"; flock 9; }
fi

HEARTBEAT_PID=""
stop_heartbeat() { [[ -n "$HEARTBEAT_PID" ]] && kill "$HEARTBEAT_PID" 2>/dev/null; HEARTBEAT_PID=""; }
trap stop_heartbeat EXIT
start_heartbeat() {  # $1 = what, $2 = start epoch
  ( while sleep 60; do log "  ... still building $1 ($(( $(date +%s) - $2 ))s)"; done ) &
  HEARTBEAT_PID=$!
}

# build_step NAME STAMP_VALUE CMD...  -> runs CMD unless $BIN_DIR/.stamp-NAME holds STAMP_VALUE
stamp_ok() { [[ -f "$BIN_DIR/.stamp-$1" && "$(cat "$BIN_DIR/.stamp-$1")" == "$2" ]]; }

check_mod_version() {  # $1 = module dir, $2 = module path, $3 = expected version
  local got
  got="$(cd "$1" && go list -m -f '{{.Version}}' "$2")"
  if [[ "$got" != "$3" ]]; then
    log "ERROR: $1/go.mod requires $2 $got but build.sh pins $3; update go.mod (go get ...@version) or the pin"
    exit 1
  fi
}

TOTAL_START=$(date +%s)

# ---- Kubernetes: kube-apiserver, kube-controller-manager, kube-scheduler, kubectl -----------------
K8S_CMDS=(kube-apiserver kube-controller-manager kube-scheduler kubectl)
K8S_MINOR="${K8S_VERSION#v1.}"; K8S_MINOR="${K8S_MINOR%%.*}"
LDFLAGS="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  LDFLAGS+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$K8S_MINOR -X $p.gitTreeState=clean"
done
for cmd in "${K8S_CMDS[@]}"; do
  if stamp_ok "$cmd" "$K8S_VERSION" && [[ -x "$BIN_DIR/$cmd" ]]; then
    log "$cmd $K8S_VERSION: already built, skipping"
    continue
  fi
  check_mod_version "$HERE" k8s.io/kubernetes "$K8S_VERSION"
  t0=$(date +%s); log "$cmd $K8S_VERSION: building"
  start_heartbeat "$cmd" "$t0"
  (cd "$HERE" && go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$LDFLAGS" \
      -o "$BIN_DIR/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd")
  stop_heartbeat
  mv -f "$BIN_DIR/$cmd.tmp" "$BIN_DIR/$cmd"
  echo "$K8S_VERSION" > "$BIN_DIR/.stamp-$cmd"
  log "$cmd $K8S_VERSION: done in $(( $(date +%s) - t0 ))s"
done

# ---- etcd --------------------------------------------------------------------------------------------
if stamp_ok etcd "$ETCD_VERSION" && [[ -x "$BIN_DIR/etcd" ]]; then
  log "etcd $ETCD_VERSION: already built, skipping"
else
  check_mod_version "$HERE/etcd" go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
  t0=$(date +%s); log "etcd $ETCD_VERSION: building"
  start_heartbeat etcd "$t0"
  (cd "$HERE/etcd" && go build -trimpath -ldflags "-s -w" -o "$BIN_DIR/etcd.tmp" go.etcd.io/etcd/server/v3)
  stop_heartbeat
  mv -f "$BIN_DIR/etcd.tmp" "$BIN_DIR/etcd"
  echo "$ETCD_VERSION" > "$BIN_DIR/.stamp-etcd"
  log "etcd $ETCD_VERSION: done in $(( $(date +%s) - t0 ))s"
fi

# ---- kwok, kwokctl -----------------------------------------------------------------------------------
if stamp_ok kwok "$KWOK_VERSION" && [[ -x "$BIN_DIR/kwok" && -x "$BIN_DIR/kwokctl" ]]; then
  log "kwok+kwokctl $KWOK_VERSION: already built, skipping"
else
  t0=$(date +%s); log "kwok+kwokctl $KWOK_VERSION: building"
  start_heartbeat "kwok+kwokctl" "$t0"
  tmp="$BIN_DIR/.kwok.tmp"; rm -rf "$tmp"; mkdir -p "$tmp"
  # `go install pkg@version` uses kwok's own go.mod; -mod must not be set for it.
  (cd "$tmp" && GOFLAGS="-modcacherw -buildvcs=false" GOBIN="$tmp" go install -trimpath -ldflags "-s -w" \
      "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" "sigs.k8s.io/kwok/cmd/kwokctl@$KWOK_VERSION")
  stop_heartbeat
  mv -f "$tmp/kwok" "$tmp/kwokctl" "$BIN_DIR/"; rm -rf "$tmp"
  echo "$KWOK_VERSION" > "$BIN_DIR/.stamp-kwok"
  log "kwok+kwokctl $KWOK_VERSION: done in $(( $(date +%s) - t0 ))s"
fi

log "all binaries ready in $BIN_DIR (total $(( $(date +%s) - TOTAL_START ))s)"
echo "$BIN_DIR"
