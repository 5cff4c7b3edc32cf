#!/usr/bin/env bash
# Build what a real node needs beside the control plane, once per version: kubelet and kube-proxy from the same
# k8s.io/kubernetes module as e2e/cluster (its go.mod, so one version everywhere) and CoreDNS from its Go module.
#
#   e2e/node/build.sh            # build what is missing; prints the three binaries' paths, one per line
#
# Output: ${AGENTFLEET_CACHE:-$HOME/.cache/agentfleet}/k8s/<K8S_VERSION>/bin/{kubelet,kube-proxy} and
# .../coredns/<COREDNS_VERSION>/coredns. Cold on 2 vCPUs: about 1 min each for kubelet and kube-proxy once the
# control plane's build cache is warm, about 2 min for CoreDNS; then a no-op.
set -euo pipefail
COREDNS_VERSION=v1.15.0
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CLUSTER="$HERE/../cluster"
CACHE_ROOT="${AGENTFLEET_CACHE:-$HOME/.cache/agentfleet}"
K8S_VERSION="$(sed -n 's/^K8S_VERSION=\([^ ]*\).*/\1/p' "$CLUSTER/build.sh")"
BIN_DIR="$("$CLUSTER/build.sh" --print-bin-dir)"
export GOMODCACHE="$CACHE_ROOT/go/mod" GOCACHE="$CACHE_ROOT/go/build"
export GOFLAGS="-mod=mod -modcacherw -buildvcs=false" CGO_ENABLED=0
log() { printf '[node-build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
command -v go >/dev/null || { log "ERROR: go is not on PATH"; exit 1; }
mkdir -p "$BIN_DIR"
exec 9>"$BIN_DIR/.node-build.lock"
flock 9
K8S_MINOR="${K8S_VERSION#v1.}"; K8S_MINOR="${K8S_MINOR%%.*}"
LDFLAGS="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  LDFLAGS+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$K8S_MINOR -X $p.gitTreeState=clean"
done
for cmd in kubelet kube-proxy; do
  if [[ -x "$BIN_DIR/$cmd" && "$(cat "$BIN_DIR/.stamp-$cmd" 2>/dev/null)" == "$K8S_VERSION" ]]; then continue; fi
  t0=$(date +%s); log "$cmd $K8S_VERSION: building"
  (cd "$CLUSTER" && go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$LDFLAGS" \
      -o "$BIN_DIR/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd")
  mv -f "$BIN_DIR/$cmd.tmp" "$BIN_DIR/$cmd"
  echo "$K8S_VERSION" > "$BIN_DIR/.stamp-$cmd"
  log "$cmd: done in $(( $(date +%s) - t0 ))s"
done
COREDNS="$(bash "$HERE/../go-build.sh" coredns "$COREDNS_VERSION" github.com/coredns/coredns coredns | tail -1)"
echo "$BIN_DIR/kubelet"
echo "$BIN_DIR/kube-proxy"
echo "$COREDNS"
