#!/usr/bin/env bash
# Real TLS peers for the core tests: openssl s_client and curl. python3-venv: .ci/run installs
# the package into virtualenvs (Debian's python3 refuses pip outside one, PEP 668), and Debian
# ships ensurepip, which `python3 -m venv` needs, separately: python3.X-venv for each python3.X.
set -euo pipefail
apt-get install -y -qq --no-install-recommends openssl curl ca-certificates python3-venv >/dev/null
for python in /usr/bin/python3.[0-9]*; do
  case "$python" in *-config|*m) continue ;; esac
  package="$(basename "$python")-venv"
  if apt-cache show "$package" >/dev/null 2>&1; then
    apt-get install -y -qq --no-install-recommends "$package" >/dev/null
  fi
done
