#!/usr/bin/env bash
# Install Debian's `redis-server` (7.0 on Debian 12) for the ledger's Redis backend tests, idempotently.
# The package would start a system service on install: a policy-rc.d that exits 101 forbids that (as for
# e2e/prometheus/install.sh); it is removed again afterwards. Prints the binary's path on the last line; exits 3
# when it cannot install (not root and no sudo, no apt-get) so callers can skip with a reason.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then command -v redis-server; exit 0; fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "redis-server is not installed and this user cannot apt-get install it" >&2; exit 3; fi
fi
command -v apt-get >/dev/null || { echo "no apt-get: install redis-server by hand" >&2; exit 3; }
exec 9>/tmp/agentfleet-redis-install.lock
flock 9
if command -v redis-server >/dev/null 2>&1; then command -v redis-server; exit 0; fi
CREATED_POLICY=0
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  CREATED_POLICY=1
fi
cleanup() { if [[ $CREATED_POLICY -eq 1 ]]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y --no-install-recommends redis-server >&2 || { $SUDO apt-get update >&2 && \
  $SUDO apt-get install -y --no-install-recommends redis-server >&2; }
command -v redis-server
