"""Profile card-fop-tls13: TLS 1.3 with only the two allowed suites, TLS 1.2 unchanged."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SERVER_NAME, ConfigFactory, TLSFiles
from tests.support.backends import ThreadedBackend
from tests.support.proxy import ProxyProcess, client_context, tls_connect


@pytest.fixture
def proxy13(tmp_path: Path, proxy_config: ConfigFactory, echo_backend: ThreadedBackend) -> Iterator[ProxyProcess]:
    config = proxy_config(echo_backend.address)
    config["tls"]["profile"] = "card-fop-tls13"
    with ProxyProcess(tmp_path, config) as running:
        yield running


def _s_client(port: int, *args: str) -> str:
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", SERVER_NAME, *args],
        input="", capture_output=True, text=True, timeout=30,
    )
    return result.stdout + result.stderr


def test_tls13_negotiated_by_default_client(proxy13: ProxyProcess, tls_files: TLSFiles) -> None:
    with tls_connect(proxy13.host, proxy13.port, client_context(tls_files.cafile), SERVER_NAME) as sock:
        assert sock.version() == "TLSv1.3"
        assert sock.cipher()[0] in {"TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"}
        sock.sendall(b"13")
        assert sock.recv(10) == b"13"


@pytest.mark.parametrize("suite", ["TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256"])
def test_allowed_tls13_suites(proxy13: ProxyProcess, suite: str) -> None:
    output = _s_client(proxy13.port, "-tls1_3", "-ciphersuites", suite)
    assert f"Cipher is {suite}" in output
    assert "TLSv1.3" in output


@pytest.mark.parametrize("suite", ["TLS_AES_256_GCM_SHA384", "TLS_AES_128_CCM_SHA256"])
def test_other_tls13_suites_refused(proxy13: ProxyProcess, suite: str) -> None:
    output = _s_client(proxy13.port, "-tls1_3", "-ciphersuites", suite)
    assert "Cipher is" not in output or "Cipher is (NONE)" in output
    assert "alert handshake failure" in output


def test_tls12_still_served_with_the_six(proxy13: ProxyProcess, tls_files: TLSFiles) -> None:
    ctx = client_context(tls_files.cafile, ciphers="ECDHE-RSA-CHACHA20-POLY1305", maximum_version=ssl.TLSVersion.TLSv1_2)
    with tls_connect(proxy13.host, proxy13.port, ctx, SERVER_NAME) as sock:
        assert sock.cipher()[0] == "ECDHE-RSA-CHACHA20-POLY1305"


def test_tls11_still_refused(proxy13: ProxyProcess) -> None:
    output = _s_client(proxy13.port, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert "alert protocol version" in output
