#!/usr/bin/env bash
# The network-fault tests (tests/reliability/test_network_faults.py): ip netns and tc (iproute2)
# and nft (nftables) inside a namespace the test creates; they skip where not root. strace: the
# accept-error tests (test_accept_errors.py) make the proxy's accept4 fail through it.
set -euo pipefail
apt-get install -y -qq --no-install-recommends iproute2 nftables strace >/dev/null
