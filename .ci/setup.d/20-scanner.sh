#!/usr/bin/env bash
# An independent TLS scanner for the compliance tests: sslyze, in a venv of its own because it
# pins its own cryptography/nassl versions (tests find it via FOPPROXY_SSLYZE or this path).
set -euo pipefail
apt-get install -y -qq --no-install-recommends python3-venv >/dev/null 2>&1 || true
if [ ! -x /opt/fopproxy-sslyze/bin/sslyze ]; then
  python3 -m venv /opt/fopproxy-sslyze
  /opt/fopproxy-sslyze/bin/pip install -q sslyze
fi
