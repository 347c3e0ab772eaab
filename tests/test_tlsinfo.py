"""Which certificate the proxy served on a connection (for PROXY v2's SIG_ALG and KEY_ALG)."""

from __future__ import annotations

import contextlib
import ssl
from pathlib import Path

import pytest

from fopproxy.tlsinfo import served_certificate
from tests.support.pki import CA


@pytest.mark.parametrize(
    ("version", "suite", "expected"),
    [
        (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-GCM-SHA256", ("RSA-SHA256", "RSA2048")),
        (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256", ("ecdsa-with-SHA256", "EC256")),
    ],
)
def test_the_certificate_the_suite_picked(tmp_path: Path, version: ssl.TLSVersion, suite: str, expected: tuple[str, str]) -> None:
    """With an ECDSA and an RSA certificate on one context, the one OpenSSL served is named, in
    HAProxy's words (OpenSSL short names; an RSA CA signs the RSA leaf, an ECDSA CA the other)."""
    ecdsa = CA("ecdsa CA").write(tmp_path, "ecdsa", ["api.example.test"], "ecdsa")
    rsa = CA("rsa CA", key_type="rsa").write(tmp_path, "rsa", ["api.example.test"], "rsa")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(ecdsa.cert, ecdsa.key)
    server.load_cert_chain(rsa.cert, rsa.key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.minimum_version = client.maximum_version = version
    client.set_ciphers(suite)
    bios = [ssl.MemoryBIO() for _ in range(4)]
    ours = server.wrap_bio(bios[0], bios[1], server_side=True)
    theirs = client.wrap_bio(bios[2], bios[3])
    for _ in range(5):
        for side in (theirs, ours):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        bios[0].write(bios[3].read())
        bios[2].write(bios[1].read())
    assert ours.cipher()[0] == suite  # type: ignore[index]
    assert served_certificate(ours._sslobj) == expected  # type: ignore[attr-defined]


def test_anything_else_is_unknown() -> None:
    """Not an `_ssl._SSLSocket`: nothing guessed."""
    assert served_certificate(object()) == (None, None)
