#!/usr/bin/env bash
# nginx (the Debian package) as a TLS server that `fopproxy scan` did not write, for
# tests/integration/test_scan.py; openssl for signing the SHA-1 test certificate.
# The tests start their own nginx on loopback; keep the package's service from starting on :80.
set -euo pipefail
if ! command -v nginx >/dev/null; then
  policy=/usr/sbin/policy-rc.d
  created=no
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created=yes
  fi
  apt-get install -y -qq --no-install-recommends nginx openssl >/dev/null
  if [ "$created" = yes ]; then rm -f "$policy"; fi
fi
