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

exec "$(dirname "$0")/../go-build.sh" gcs v1.56.1 github.com/fsouza/fake-gcs-server fake-gcs-server "" "$@"
