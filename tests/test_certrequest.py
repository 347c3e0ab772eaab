"""scan's client-certificate probe: the request and the CA names it carries, from a real server."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from fopproxy.compliance.certrequest import name_from_der, probe_client_auth
from fopproxy.peerverify import name_client_cas
from tests.support.pki import CA


@pytest.mark.parametrize(
    "attributes",
    [
        [[(NameOID.COMMON_NAME, "fopproxy test CA")]],
        [[(NameOID.COUNTRY_NAME, "US")], [(NameOID.ORGANIZATION_NAME, "Google Trust Services LLC")],
         [(NameOID.COMMON_NAME, "GTS CA 1C3")]],
        [[(NameOID.ORGANIZATION_NAME, "A, B + C")], [(NameOID.COMMON_NAME, " spaced #1 ")]],
        [[(NameOID.ORGANIZATIONAL_UNIT_NAME, "pay"), (NameOID.COMMON_NAME, "multi")]],
        [[(NameOID.DOMAIN_COMPONENT, "example")], [(NameOID.EMAIL_ADDRESS, "ca@example.com")],
         [(NameOID.COMMON_NAME, "Zürich CA")]],
    ],
)
def test_name_from_der_matches_cryptography(attributes: list[list[tuple[x509.ObjectIdentifier, str]]]) -> None:
    """Our small DER reader prints a Name exactly as cryptography's RFC 4514 printer does."""
    name = x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(o, v) for o, v in rdn]) for rdn in attributes])
    assert name_from_der(name.public_bytes()) == name.rfc4514_string()


@contextlib.contextmanager
def tls_server(ctx: ssl.SSLContext) -> Iterator[int]:
    """A Python ssl server on loopback that handshakes and answers each connection with "ok"."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.settimeout(5)
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not)
        listener.close()
        thread.join(5)


def server_context(tmp_path: Path, mode: ssl.VerifyMode, cas: list[CA], name: bool) -> ssl.SSLContext:
    pair = CA("server CA").write(tmp_path, "server", ["api.example.com"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pair.cert, pair.key)
    if mode != ssl.CERT_NONE:
        pem = "".join(ca.cert.public_bytes(serialization.Encoding.PEM).decode() for ca in cas)
        ctx.load_verify_locations(cadata=pem)
        ctx.verify_mode = mode
        if name:
            assert name_client_cas(ctx, pem)
    return ctx


def test_required_with_named_cas(tmp_path: Path) -> None:
    """CERT_REQUIRED with two CAs named: `required`, both names in the file's order."""
    cas = [CA("clients CA old"), CA("clients CA new")]
    with tls_server(server_context(tmp_path, ssl.CERT_REQUIRED, cas, name=True)) as port:
        probe = probe_client_auth("127.0.0.1", port, "api.example.com", 5)
    assert probe.state == "required"
    assert probe.ca_names == ("CN=clients CA old", "CN=clients CA new")


def test_optional_and_unnamed(tmp_path: Path) -> None:
    """CERT_OPTIONAL without name_client_cas: `optional`, and Python's ssl names no CA."""
    with tls_server(server_context(tmp_path, ssl.CERT_OPTIONAL, [CA()], name=False)) as port:
        probe = probe_client_auth("127.0.0.1", port, "api.example.com", 5)
    assert (probe.state, probe.ca_names) == ("optional", ())


def test_not_requested(tmp_path: Path) -> None:
    """A server that asks for nothing."""
    with tls_server(server_context(tmp_path, ssl.CERT_NONE, [], name=False)) as port:
        probe = probe_client_auth("127.0.0.1", port, "api.example.com", 5)
    assert probe.state == "not_requested"


def test_tls13_only_server_is_unknown(tmp_path: Path) -> None:
    """TLS 1.3 encrypts the request: said plainly, not guessed."""
    ctx = server_context(tmp_path, ssl.CERT_REQUIRED, [CA()], name=True)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    with tls_server(ctx) as port:
        probe = probe_client_auth("127.0.0.1", port, "api.example.com", 5)
    assert probe.state == "unknown"
    assert "TLS 1.3" in probe.detail
