"""The server's TLS 1.2 session-ID cache: bounded, and never resuming a session on a certificate
of another name."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

from cryptography import x509

from fopproxy.certs import load_certificate_set
from fopproxy.policy import PROFILES, select_suites
from fopproxy.sources import CertificateSource
from fopproxy.tls import SESSION_CACHE_SIZE, build_context, limit_session_cache
from tests.conftest import SERVER_NAME, TLSFiles
from tests.support.memtls import handshake_in_memory
from tests.support.pki import CA
from tests.support.proxy import client_context


def _clean_session(server: ssl.SSLContext, client: ssl.SSLContext) -> None:
    """One full handshake and a close_notify exchange, in memory: OpenSSL caches such sessions."""
    pair = handshake_in_memory(server, client)
    for side, deliver in ((pair.server, pair.to_client), (pair.client, pair.to_server)):
        with contextlib.suppress(ssl.SSLWantReadError):
            side.unwrap()
        deliver()


def test_session_cache_is_bounded(tls_files: TLSFiles) -> None:
    """1.5 x SESSION_CACHE_SIZE clean sessions leave at most SESSION_CACHE_SIZE cached."""
    selection = select_suites(PROFILES["card-fop"], ())
    server = build_context(selection, [(str(tls_files.ecdsa.cert), str(tls_files.ecdsa.key), None)])
    assert limit_session_cache(server) == SESSION_CACHE_SIZE
    client = client_context(tls_files.cafile)
    for _ in range(SESSION_CACHE_SIZE * 3 // 2):
        _clean_session(server, client)
    cached = server.session_stats()["number"]
    print(f"{SESSION_CACHE_SIZE * 3 // 2} clean sessions: {cached} cached (bound {SESSION_CACHE_SIZE})")
    assert SESSION_CACHE_SIZE // 2 < cached <= SESSION_CACHE_SIZE


def _resume(server: ssl.SSLContext, client: ssl.SSLContext, name: str, session: ssl.SSLSession | None = None) -> tuple[ssl.SSLSession | None, bool, int]:
    """One TLS 1.2 handshake for `name` (offering `session`) and a clean close, in memory:
    (the session, whether it was resumed, the serial of the certificate the client holds)."""
    bios = [ssl.MemoryBIO() for _ in range(4)]
    server_side = server.wrap_bio(bios[0], bios[1], server_side=True)
    client_side = client.wrap_bio(bios[2], bios[3], server_hostname=name, session=session)
    for _ in range(6):
        for side in (client_side, server_side):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        bios[0].write(bios[3].read())
        bios[2].write(bios[1].read())
    for side, (source, sink) in ((server_side, (bios[1], bios[2])), (client_side, (bios[3], bios[0]))):
        with contextlib.suppress(ssl.SSLWantReadError):
            side.unwrap()
        sink.write(source.read())
    der = client_side.getpeercert(binary_form=True)
    assert der is not None
    return client_side.session, client_side.session_reused, x509.load_der_x509_certificate(der).serial_number


def test_tls12_session_is_not_resumed_across_certificates_of_different_names(tmp_path: Path, ca: CA) -> None:
    """Two ECDSA certificates, SNI picks one: a session made for other.example.test is not
    resumed for api.example.test (OpenSSL would resume it with other's certificate otherwise)."""
    api = ca.write(tmp_path, "api", [SERVER_NAME], "ecdsa")
    other = ca.write(tmp_path, "other", [SERVER_NAME, "other.example.test"], "ecdsa")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    selection = select_suites(PROFILES["card-fop"], ())
    served = load_certificate_set(
        [CertificateSource(api.cert, api.key), CertificateSource(other.cert, other.key)], SERVER_NAME, selection
    )
    client = client_context(tmp_path / "ca.pem", maximum_version=ssl.TLSVersion.TLSv1_2)
    session, _, serial = _resume(served.context, client, "other.example.test")
    assert serial == other.serial
    _, reused, serial = _resume(served.context, client, SERVER_NAME, session)
    assert (reused, serial) == (False, api.serial)


def test_tls12_session_resumes_for_one_certificate_set_and_never_after_a_reload(tmp_path: Path, ca: CA) -> None:
    """The usual ECDSA + RSA pair: the same name resumes (so the test above can see a resumption);
    a set rebuilt from other certificates (a reload) does not resume the old session."""
    first = ca.write(tmp_path, "first", [SERVER_NAME], "ecdsa")
    second = ca.write(tmp_path, "second", [SERVER_NAME], "ecdsa")
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    selection = select_suites(PROFILES["card-fop"], ())
    old = load_certificate_set([CertificateSource(first.cert, first.key)], SERVER_NAME, selection)
    new = load_certificate_set([CertificateSource(second.cert, second.key)], SERVER_NAME, selection)
    client = client_context(tmp_path / "ca.pem", maximum_version=ssl.TLSVersion.TLSv1_2)
    session, _, _ = _resume(old.context, client, SERVER_NAME)
    assert _resume(old.context, client, SERVER_NAME, session)[1] is True
    _, reused, serial = _resume(new.context, client, SERVER_NAME, session)
    assert (reused, serial) == (False, second.serial)
