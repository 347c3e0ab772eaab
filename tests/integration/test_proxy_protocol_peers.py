"""Our PROXY headers as nginx and HAProxy read them: real peers, not our own parser."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from fopproxy.proxyproto import TLSDetails, header
from tests.support.ppbackends import (
    HAPROXY,
    HAProxyBackend,
    NginxProxyProtocolBackend,
    http_get_answer,
)

CLIENTS = {
    "tcp4": (("192.0.2.10", 40123), ("198.51.100.1", 8443)),
    "tcp6": (("2001:db8::10", 40123, 0, 0), ("2001:db8::1", 8443, 0, 0)),
}


def ask(address: tuple[str, int], prefix: bytes) -> str:
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(prefix)
        return http_get_answer(sock)


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("family", sorted(CLIENTS))
def test_nginx_reads_the_client_address(tmp_path: Path, version: str, family: str) -> None:
    """nginx's `listen ... proxy_protocol` takes the client's address and port from our header,
    and with realip, $remote_addr is the client (what access logs and allow rules use)."""
    src, dst = CLIENTS[family]
    raw = header(version, src, dst, TLSDetails(version="TLSv1.2", sni="api.example.com"))  # type: ignore[arg-type]
    with NginxProxyProtocolBackend(tmp_path / "nginx") as nginx:
        answer = ask(("127.0.0.1", nginx.port), raw)
    assert answer.split() == [str(src[0]), str(src[1]), str(dst[0]), str(dst[1]), str(src[0])]


@pytest.mark.skipif(HAPROXY is None, reason="haproxy not installed (.ci/setup.d/60-clientauth.sh)")
@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("family", sorted(CLIENTS))
def test_haproxy_reads_address_and_authority(tmp_path: Path, version: str, family: str) -> None:
    """HAProxy's `accept-proxy` reads the addresses, and in v2 the AUTHORITY TLV (our SNI)."""
    src, dst = CLIENTS[family]
    tls = TLSDetails(version="TLSv1.2", cipher="ECDHE-ECDSA-AES128-GCM-SHA256", sni="api.example.com",
                     cert_conn=True, verified=True, cn="payments.google.com")
    with HAProxyBackend(tmp_path / "haproxy") as haproxy:
        answer = ask(("127.0.0.1", haproxy.port), header(version, src, dst, tls))  # type: ignore[arg-type]
    expected = [str(src[0]), str(src[1]), str(dst[0]), str(dst[1])]
    if version == "v2":
        expected.append("api.example.com")
    assert answer.split() == expected
