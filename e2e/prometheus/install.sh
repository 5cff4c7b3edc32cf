#!/usr/bin/env bash
# Debian's `prometheus` (2.42 on Debian 12) for the e2e autoscale test; see e2e/apt-install.sh.
exec "$(dirname "$0")/../apt-install.sh" prometheus prometheus
