#!/usr/bin/env bash
# The metrics tests: a real Prometheus server scrapes fopproxy, and promtool (shipped in the same
# Debian package) checks the exposition, the alert rules and their unit tests.
set -euo pipefail
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package's service is not wanted on a CI machine: the tests start their own server.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl stop prometheus || true
fi
command -v promtool >/dev/null
