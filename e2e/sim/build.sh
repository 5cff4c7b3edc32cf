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

exec "$(dirname "$0")/../go-build.sh" sim v0.10.2 github.com/llm-d/llm-d-inference-sim/cmd/llm-d-inference-sim llm-d-inference-sim "" "$@"
