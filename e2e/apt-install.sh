#!/usr/bin/env bash
# Install one Debian package for the test suite, idempotently: e2e/apt-install.sh PACKAGE BINARY.
# BINARY may instead be an absolute path (a file the package installs, e.g. for a doc package): `test -e` checks it.
# Packages of servers (prometheus, redis-server) would start a system service on install: a policy-rc.d that exits
# 101 forbids that (facts.md); it is removed again afterwards. Prints the binary's path on the last line; exits 3
# when it cannot install (not root and no sudo, no apt-get) so callers can skip with a reason.
set -euo pipefail
PKG="$1"; BIN="$2"
present() { if [[ "$BIN" == /* ]]; then test -e "$BIN" && echo "$BIN"; else command -v "$BIN"; fi; }
if present >/dev/null 2>&1; then present; exit 0; fi
SUDO=""
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "$BIN is not installed and this user cannot apt-get install $PKG" >&2; exit 3; fi
fi
command -v apt-get >/dev/null || { echo "no apt-get: install $PKG by hand" >&2; exit 3; }
# One apt at a time (dpkg's own lock fails instead of waiting).
exec 9>/tmp/agentfleet-apt-install.lock
flock 9
if present >/dev/null 2>&1; then present; exit 0; fi
CREATED_POLICY=0
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  CREATED_POLICY=1
fi
cleanup() { if [[ $CREATED_POLICY -eq 1 ]]; then $SUDO rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y --no-install-recommends "$PKG" >&2 || { $SUDO apt-get update >&2 && \
  $SUDO apt-get install -y --no-install-recommends "$PKG" >&2; }
present
