"""Client certificates in http mode: only a certificate TLS verified becomes an RFC 9440 header."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from fopproxy.http.clientcert import chain_of, client_cert_headers, subject_of
from tests.conftest import SERVER_NAME
from tests.support.memtls import handshake_in_memory
from tests.support.pki import CA


def _contexts(tmp_path: Path, ca: CA, *, require: bool) -> tuple[ssl.SSLContext, ssl.SSLContext, bytes]:
    server_pair = ca.write(tmp_path, "server", [SERVER_NAME])
    client_pair = ca.write(tmp_path, "client", [], cn="partner-client.example")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(server_pair.cert, server_pair.key)
    if require:
        server.verify_mode = ssl.CERT_REQUIRED
        server.load_verify_locations(tmp_path / "ca.pem")
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(tmp_path / "ca.pem")
    client.load_cert_chain(client_pair.cert, client_pair.key)
    leaf = x509.load_pem_x509_certificates(client_pair.cert_pem)[0].public_bytes(Encoding.DER)
    return server, client, leaf


def test_verified_client_certificate_becomes_client_cert_header(tmp_path: Path, ca: CA) -> None:
    """A real (in-memory) handshake with a required client certificate yields its DER leaf."""
    server, client, leaf = _contexts(tmp_path, ca, require=True)
    pair = handshake_in_memory(server, client)
    chain = chain_of(pair.server)
    assert chain[0] == leaf
    header = client_cert_headers(chain)
    assert header.startswith(b"Client-Cert: :" + base64.b64encode(leaf) + b":\r\n")
    if len(chain) > 1:  # Python 3.13+: the verified chain, the CA included
        assert b"Client-Cert-Chain: :" in header
    assert subject_of(chain) == "CN=partner-client.example"


def test_unverified_certificate_is_never_passed_on(tmp_path: Path, ca: CA) -> None:
    """A server context that did not ask for a certificate gives no chain, so no header."""
    server, client, _ = _contexts(tmp_path, ca, require=False)
    pair = handshake_in_memory(server, client)
    assert chain_of(pair.server) == ()
    assert client_cert_headers(()) == b""
    assert subject_of(()) == "-"


def test_chain_header_lists_the_rest_in_order() -> None:
    header = client_cert_headers((b"leaf", b"inter", b"root"))
    assert header == b"Client-Cert: :bGVhZg==:\r\nClient-Cert-Chain: :aW50ZXI=:, :cm9vdA==:\r\n"
