#!/usr/bin/env bash
# Real TLS peers for the core tests: openssl s_client and curl.
set -euo pipefail
apt-get install -y -qq --no-install-recommends openssl curl ca-certificates >/dev/null
