#!/usr/bin/env bash
# Regenerates deploy/docker/constraints.txt: the exact versions the container image installs.
# Resolves pyproject.toml's dependencies in a fresh virtualenv of the image's Python (3.11),
# binary wheels only (the image has no compiler), and freezes the result. Run from the repository
# root after changing dependencies in pyproject.toml, then rebuild the image:
#
#   bash deploy/docker/lock.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
python="${PYTHON:-python3}"
"$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), "use Python 3.11, as the image"'
venv="$(mktemp -d)"
trap 'rm -rf "$venv"' EXIT
"$python" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check --only-binary=:all: .
{
  echo "# Pinned runtime dependencies of the fopproxy container image."
  echo "# Generated from pyproject.toml by deploy/docker/lock.sh; do not edit by hand."
  "$venv/bin/pip" freeze --exclude fopproxy | LC_ALL=C sort
} > deploy/docker/constraints.txt
echo "wrote deploy/docker/constraints.txt"
