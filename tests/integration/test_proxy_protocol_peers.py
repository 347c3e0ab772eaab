"""Our PROXY headers as nginx and HAProxy read them: real peers, not our own parser."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fopproxy.proxyproto import TLSDetails, header
from tests.conftest import SERVER_NAME, ConfigFactory, TLSFiles
from tests.support.backends import free_port
from tests.support.clientpki import ClientCert, issue_client
from tests.support.pki import CA
from tests.support.ppbackends import (
    HAPROXY,
    HAProxyBackend,
    NginxProxyProtocolBackend,
    ProxyHttpBackend,
    http_get_answer,
)
from tests.support.proxy import (
    ProxyProcess,
    client_context,
    stop_process,
    tls_connect,
    wait_for_port,
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


# ---- through the real proxy ---------------------------------------------------------------------


def _get_through_proxy(proxy: ProxyProcess, tls_files: TLSFiles, cert: ClientCert | None = None,
                       **settings: Any) -> tuple[int, str]:
    """(the client's own source port, the backend's answer body) for one GET via the proxy."""
    ctx = client_context(tls_files.cafile, **settings)
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    port = raw.getsockname()[1]
    with ctx.wrap_socket(raw, server_hostname=SERVER_NAME) as sock:
        return port, http_get_answer(sock)  # type: ignore[arg-type]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_nginx_behind_fopproxy_sees_the_real_client(
    tmp_path: Path, version: str, proxy_config: ConfigFactory, tls_files: TLSFiles
) -> None:
    """fopproxy -> nginx (`listen ... proxy_protocol`): nginx's $proxy_protocol_addr/port and
    $remote_addr (realip) are the TLS client's address and port, its server address the proxy's."""
    with NginxProxyProtocolBackend(tmp_path / "nginx") as nginx:
        config = proxy_config(nginx.address, proxy_protocol=version)
        with ProxyProcess(tmp_path, config) as proxy:
            port, answer = _get_through_proxy(proxy, tls_files)
    assert answer.split() == ["127.0.0.1", str(port), "127.0.0.1", str(proxy.port), "127.0.0.1"]


@pytest.mark.skipif(HAPROXY is None, reason="haproxy not installed (.ci/setup.d/60-clientauth.sh)")
def test_v2_ssl_tlvs_match_what_haproxy_sends(
    tmp_path: Path, proxy_config: ConfigFactory, tls_files: TLSFiles
) -> None:
    """The same client (certificate, suite, SNI) through HAProxy (`send-proxy-v2-ssl-cn` with
    cipher, cert-sig, cert-key, authority) and through fopproxy: the backend reads the same
    AUTHORITY and SSL TLVs from both."""
    clients_ca = CA("clients CA")
    (tmp_path / "clients.pem").write_bytes(clients_ca.cert_pem)
    google = issue_client(clients_ca, tmp_path, "google", cn="payments.google.com")
    combined = tmp_path / "haproxy-server.pem"
    combined.write_bytes(tls_files.ecdsa.cert_pem + tls_files.ecdsa.key_pem)
    settings = {"ciphers": "ECDHE-ECDSA-AES128-GCM-SHA256", "maximum_version": ssl.TLSVersion.TLSv1_2}
    with ProxyHttpBackend() as backend:
        front = free_port()
        conf = tmp_path / "haproxy.cfg"
        conf.write_text(f"""
global
  log stderr local0 warning
defaults
  mode tcp
  timeout connect 2s
  timeout client 10s
  timeout server 10s
frontend tls
  bind 127.0.0.1:{front} ssl crt {combined} ca-file {tmp_path / "clients.pem"} verify required
  default_backend plain
backend plain
  server s1 {backend.address} send-proxy-v2-ssl-cn proxy-v2-options ssl-cipher,cert-sig,cert-key,authority
""")
        assert HAPROXY is not None
        haproxy = subprocess.Popen([HAPROXY, "-f", str(conf), "-db"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_port("127.0.0.1", front, proc=haproxy)  # type: ignore[arg-type]
            ctx = client_context(tls_files.cafile, **settings)
            ctx.load_cert_chain(str(google.cert), str(google.key))
            with tls_connect("127.0.0.1", front, ctx, SERVER_NAME) as sock:
                theirs = json.loads(http_get_answer(sock))  # type: ignore[arg-type]
        finally:
            stop_process(haproxy)
        config = proxy_config(backend.address, proxy_protocol="v2")
        config["tls"] = {
            "certificates": [{"cert": str(tls_files.ecdsa.cert), "key": str(tls_files.ecdsa.key)}],
            "client_auth": {"mode": "require", "ca": str(tmp_path / "clients.pem")},
        }
        with ProxyProcess(tmp_path, config) as proxy:
            _port, answer = _get_through_proxy(proxy, tls_files, google, **settings)
        ours = json.loads(answer)
    assert ours["authority"] == theirs["authority"] == SERVER_NAME
    assert ours["ssl"] == theirs["ssl"]
    assert ours["ssl"]["cn"] == "payments.google.com" and ours["ssl"]["key_alg"] == "EC256"
