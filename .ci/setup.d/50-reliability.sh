#!/usr/bin/env bash
# The network-fault tests (tests/reliability/test_network_faults.py): ip netns and tc (iproute2)
# and nft (nftables) inside a namespace the test creates; they skip where not root.
set -euo pipefail
apt-get install -y -qq --no-install-recommends iproute2 nftables >/dev/null
