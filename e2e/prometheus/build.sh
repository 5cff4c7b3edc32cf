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

exec "$(dirname "$0")/../go-build.sh" prometheus v0.305.0 github.com/prometheus/prometheus/cmd/prometheus prometheus "remove_all_sd,enable_kubernetes_sd" "$@"
