#!/usr/bin/env bash
# Debian's `redis-server` (7.0 on Debian 12) for the ledger's Redis backend tests; see e2e/apt-install.sh.
exec "$(dirname "$0")/../apt-install.sh" redis-server redis-server
