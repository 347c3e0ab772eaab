#!/usr/bin/env bash
# Client certificates and PROXY protocol (tests/integration/test_proxy_protocol_peers.py,
# test_client_auth.py): HAProxy as a second real PROXY-protocol peer beside nginx (accept-proxy,
# fc_pp_authority) and as the reference for what send-proxy-v2-ssl-cn sends.
set -euo pipefail
apt-get install -y -qq --no-install-recommends haproxy >/dev/null
