#!/usr/bin/env bash
# Deployment tests (tests/deploy): a private dockerd and debootstrap for the container test,
# systemd-analyze for the unit, promtool for the alert rules, and the CRD schemas of
# prometheus-operator and cert-manager (npm @kubernetes-models) for the custom resources.
# kubernetes-validate, kubectl (kustomize) and hadolint come from PyPI with the deploy extra
# (.ci/run installs it into the virtualenv that runs tests/deploy).
set -euo pipefail
apt-get install -y -qq --no-install-recommends docker.io debootstrap systemd prometheus tar >/dev/null
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
crd_dir="${FOPPROXY_CRD_VALIDATE:-/opt/fopproxy-crd-validate}"
if [ ! -d "$crd_dir/node_modules/@kubernetes-models/prometheus-operator" ] \
   || [ ! -d "$crd_dir/node_modules/@kubernetes-models/cert-manager" ]; then
  mkdir -p "$crd_dir"
  npm install --prefix "$crd_dir" --no-audit --no-fund --silent \
    @kubernetes-models/prometheus-operator@6.0.0 @kubernetes-models/cert-manager@4.4.4
fi
