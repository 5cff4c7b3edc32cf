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

exec "$(dirname "$0")/../go-build.sh" prometheus-operator v0.85.0 github.com/prometheus-operator/prometheus-operator/cmd/operator operator "" "$@"
